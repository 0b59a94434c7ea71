//! The outbound HTTP of signing in: one blocking ureq agent (no redirects followed, so that
//! metadata cannot send a token request elsewhere; bounded timeouts), JSON GETs and POSTs for
//! discovery and registration, and [`send`], which carries the `oauth2` crate's requests.
//!
//! Depends on: `tools::mcp::oauth::error`.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;
use ureq::Agent;

use super::error::OAuthError;

/// How long any one request to an authorization server may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The largest answer read from an authorization server.
const MAX_BODY: u64 = 1 << 20;

/// An agent for authorization servers: statuses are answers, redirects are not followed.
pub(crate) fn agent() -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(TIMEOUT))
        .user_agent(concat!("sparky/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// GETs `url` and reads its JSON answer.
///
/// # Errors
///
/// [`OAuthError::Http`] when it cannot be reached, answers with an error status or not JSON.
pub(crate) fn get_json(agent: &Agent, url: &str) -> Result<Value, OAuthError> {
    let response = agent
        .get(url)
        .header("accept", "application/json")
        .call()
        .map_err(|e| OAuthError::Http(format!("{url}: {e}")))?;
    read_json(url, response)
}

/// POSTs `body` as JSON to `url` and reads its JSON answer.
///
/// # Errors
///
/// As [`get_json`].
pub(crate) fn post_json(agent: &Agent, url: &str, body: &Value) -> Result<Value, OAuthError> {
    let response = agent
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .send(body.to_string().as_bytes())
        .map_err(|e| OAuthError::Http(format!("{url}: {e}")))?;
    read_json(url, response)
}

fn read_json(url: &str, response: ureq::http::Response<ureq::Body>) -> Result<Value, OAuthError> {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(MAX_BODY)
        .read_to_end(&mut body)
        .map_err(|e| OAuthError::Http(format!("{url}: {e}")))?;
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.chars().take(300).collect();
        return Err(OAuthError::Http(format!(
            "{url} answered HTTP {status}: {text}"
        )));
    }
    serde_json::from_slice(&body).map_err(|e| OAuthError::Http(format!("{url}: not JSON: {e}")))
}

/// Sends one of the `oauth2` crate's requests (a token request) with `agent`.
///
/// # Errors
///
/// ureq's, when it cannot be sent or its answer read.
pub(crate) fn send(
    agent: &Agent,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, ureq::Error> {
    let response = agent.run(request)?;
    let (parts, body) = response.into_parts();
    let mut bytes = Vec::new();
    body.into_reader()
        .take(MAX_BODY)
        .read_to_end(&mut bytes)
        .map_err(ureq::Error::Io)?;
    Ok(oauth2::HttpResponse::from_parts(parts, bytes))
}

/// POSTs an `initialize` without a token to the MCP server at `url`, and returns its 401's
/// `WWW-Authenticate` header, when it answers 401 with one (for a sign-in started before any
/// connection saw the challenge).
pub(crate) fn probe(agent: &Agent, url: &str) -> Option<String> {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "sparky", "version": env!("CARGO_PKG_VERSION")}}
    });
    let response = agent
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .send(body.to_string().as_bytes())
        .ok()?;
    if response.status().as_u16() != 401 {
        return None;
    }
    response
        .headers()
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}
