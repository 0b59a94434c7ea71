//! Discovery, as MCP's authorization spec orders it: the protected resource's metadata
//! (RFC 9728) at the URL a 401's `WWW-Authenticate: Bearer resource_metadata="…"` names, else
//! at `/.well-known/oauth-protected-resource` inserted before the server's path, then at its
//! origin's root; then its authorization server's metadata (RFC 8414's
//! `/.well-known/oauth-authorization-server`, else OpenID's `/.well-known/openid-configuration`,
//! path-inserted and path-appended as the spec lists them). A server without resource
//! metadata (MCP 2025-03-26) has its authorization server at its own origin.
//!
//! Depends on: `tools::mcp::oauth::error`, `tools::mcp::oauth::http`.

use oauth2::url::Url;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use ureq::Agent;

use super::error::OAuthError;
use super::http::get_json;

/// What a 401's `WWW-Authenticate` header told us.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// The protected resource metadata URL (`resource_metadata`).
    pub(crate) resource_metadata: Option<String>,
    /// The scope the server asks for (`scope`).
    pub(crate) scope: Option<String>,
}

/// Reads a `WWW-Authenticate` header's `Bearer` parameters.
pub(crate) fn parse_challenge(header: &str) -> Challenge {
    let mut challenge = Challenge::default();
    let Some(start) = header.to_ascii_lowercase().find("bearer") else {
        return challenge;
    };
    let mut rest = &header[start + "bearer".len()..];
    loop {
        rest = rest.trim_start_matches([' ', ',', '\t']);
        let Some(eq) = rest.find('=') else {
            break;
        };
        let name = rest[..eq].trim().to_ascii_lowercase();
        rest = &rest[eq + 1..];
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            value = quoted[..end].to_owned();
            rest = quoted.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find([',', ' ']).unwrap_or(rest.len());
            value = rest[..end].to_owned();
            rest = &rest[end..];
        }
        match name.as_str() {
            "resource_metadata" => challenge.resource_metadata = Some(value),
            "scope" => challenge.scope = Some(value),
            _ => {}
        }
    }
    challenge
}

/// A protected resource's metadata (RFC 9728), the fields we use.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct ResourceMetadata {
    /// The resource's identifier, for the `resource` parameter (RFC 8707).
    #[serde(default)]
    pub(crate) resource: Option<String>,
    /// Its authorization servers' issuers.
    #[serde(default)]
    pub(crate) authorization_servers: Vec<String>,
    /// The scopes it knows.
    #[serde(default)]
    pub(crate) scopes_supported: Vec<String>,
}

/// An authorization server's metadata (RFC 8414 or OpenID), the fields we use.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct ServerMetadata {
    /// Its issuer.
    #[serde(default)]
    pub(crate) issuer: Option<String>,
    /// Where a person is sent to sign in.
    pub(crate) authorization_endpoint: String,
    /// Where codes and refresh tokens are exchanged.
    pub(crate) token_endpoint: String,
    /// Dynamic client registration (RFC 7591), when it offers it.
    #[serde(default)]
    pub(crate) registration_endpoint: Option<String>,
    /// The PKCE methods it supports; MCP requires `S256`.
    #[serde(default)]
    pub(crate) code_challenge_methods_supported: Vec<String>,
    /// True when it accepts a Client ID Metadata Document's URL as a `client_id`.
    #[serde(default)]
    pub(crate) client_id_metadata_document_supported: bool,
}

/// Everything discovery found for one server.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct Discovered {
    /// The `resource` indicator to ask tokens for (RFC 8707).
    pub(crate) resource: String,
    /// The authorization server's metadata.
    pub(crate) server: ServerMetadata,
    /// The scope to ask for: the challenge's, else the resource's, else none.
    pub(crate) scope: Option<String>,
}

/// The URLs of `server_url`'s protected resource metadata, in the order the spec tries them.
pub(crate) fn resource_metadata_urls(server_url: &Url) -> Vec<Url> {
    let mut urls = Vec::new();
    let path = server_url.path().trim_end_matches('/');
    let mut url = server_url.clone();
    url.set_query(None);
    url.set_fragment(None);
    if !path.is_empty() {
        url.set_path(&format!("/.well-known/oauth-protected-resource{path}"));
        urls.push(url.clone());
    }
    url.set_path("/.well-known/oauth-protected-resource");
    urls.push(url);
    urls
}

/// The URLs of an issuer's authorization server metadata, in the order the spec tries them.
pub(crate) fn server_metadata_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut url = issuer.clone();
    url.set_query(None);
    url.set_fragment(None);
    let at = |path: String| {
        let mut url = url.clone();
        url.set_path(&path);
        url
    };
    if path.is_empty() {
        vec![
            at("/.well-known/oauth-authorization-server".into()),
            at("/.well-known/openid-configuration".into()),
        ]
    } else {
        vec![
            at(format!("/.well-known/oauth-authorization-server{path}")),
            at(format!("/.well-known/openid-configuration{path}")),
            at(format!("{path}/.well-known/openid-configuration")),
        ]
    }
}

/// The canonical resource identifier of `server_url` (RFC 8707 as MCP spells it): scheme, host,
/// port and path, without a fragment or query, without a trailing slash.
pub(crate) fn canonical_resource(server_url: &Url) -> String {
    let mut url = server_url.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.as_str().trim_end_matches('/').to_owned()
}

/// Finds `server_url`'s authorization server, given what its 401 said.
///
/// # Errors
///
/// [`OAuthError::Discovery`] when no metadata could be found or read.
pub(crate) fn discover(
    agent: &Agent,
    server_url: &str,
    challenge: &Challenge,
) -> Result<Discovered, OAuthError> {
    let url = Url::parse(server_url)
        .map_err(|e| OAuthError::Discovery(format!("the server's url {server_url:?}: {e}")))?;
    let mut candidates = Vec::new();
    if let Some(named) = &challenge.resource_metadata {
        match Url::parse(named) {
            Ok(named) => candidates.push(named),
            Err(e) => log::warn!("mcp oauth: ignoring resource_metadata {named:?}: {e}"),
        }
    }
    candidates.extend(resource_metadata_urls(&url));
    let found = candidates.iter().find_map(|candidate| {
        let value = get_json(agent, candidate.as_str()).ok()?;
        let metadata: ResourceMetadata = serde_json::from_value(value).ok()?;
        Some(metadata)
    });
    let resource_metadata = found.unwrap_or_default();
    // RFC 9728 section 3.3: the metadata must be for this server (its URL, or a prefix of it).
    let own = canonical_resource(&url);
    if let Some(resource) = &resource_metadata.resource
        && !own.starts_with(resource.trim_end_matches('/'))
    {
        return Err(OAuthError::Discovery(format!(
            "its protected resource metadata is for {resource:?}, not {own:?}"
        )));
    }
    let issuer = match resource_metadata.authorization_servers.first() {
        Some(issuer) => Url::parse(issuer)
            .map_err(|e| OAuthError::Discovery(format!("authorization server {issuer:?}: {e}")))?,
        // No protected resource metadata: the server's own origin (MCP 2025-03-26).
        None => {
            let mut origin = url.clone();
            origin.set_path("/");
            origin.set_query(None);
            origin
        }
    };
    let mut failures = Vec::new();
    let mut server = None;
    for candidate in server_metadata_urls(&issuer) {
        match get_json(agent, candidate.as_str()).and_then(read_server_metadata) {
            Ok(found) => {
                server = Some(found);
                break;
            }
            Err(e) => failures.push(format!("{candidate}: {e}")),
        }
    }
    let Some(server) = server else {
        return Err(OAuthError::Discovery(format!(
            "no authorization server metadata for {issuer} ({})",
            failures.join("; ")
        )));
    };
    for endpoint in [
        Some(&server.authorization_endpoint),
        Some(&server.token_endpoint),
        server.registration_endpoint.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        check_endpoint(endpoint)?;
    }
    if let Some(named) = &server.issuer
        && named.trim_end_matches('/') != issuer.as_str().trim_end_matches('/')
    {
        log::warn!("mcp oauth: {issuer} names itself {named:?} in its metadata");
    }
    if !server.code_challenge_methods_supported.is_empty()
        && !server
            .code_challenge_methods_supported
            .iter()
            .any(|m| m == "S256")
    {
        return Err(OAuthError::Discovery(format!(
            "{issuer} does not support PKCE with S256, which MCP requires"
        )));
    }
    let scope = challenge.scope.clone().or_else(|| {
        (!resource_metadata.scopes_supported.is_empty())
            .then(|| resource_metadata.scopes_supported.join(" "))
    });
    Ok(Discovered {
        resource: resource_metadata.resource.unwrap_or(own),
        server,
        scope,
    })
}

/// An endpoint a browser is sent to or a token goes to must be `https` (OAuth 2.1), or `http`
/// on a loopback host (a server on this machine): never another scheme, which a page could
/// be made to run (`javascript:`).
///
/// # Errors
///
/// [`OAuthError::Discovery`] for any other URL.
pub(crate) fn check_endpoint(endpoint: &str) -> Result<(), OAuthError> {
    let url = Url::parse(endpoint)
        .map_err(|e| OAuthError::Discovery(format!("the endpoint {endpoint:?}: {e}")))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(OAuthError::Discovery(format!(
            "the endpoint {endpoint:?} is not https (nor http on this machine)"
        ))),
    }
}

/// Reads authorization server metadata from its JSON.
fn read_server_metadata(value: Value) -> Result<ServerMetadata, OAuthError> {
    serde_json::from_value(value).map_err(|e| OAuthError::Discovery(format!("unreadable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_names_the_metadata_and_the_scope() {
        let challenge = parse_challenge(
            "Bearer error=\"invalid_token\", resource_metadata=\"http://h:1/.well-known/\
             oauth-protected-resource/mcp\", scope=\"a b\"",
        );
        assert_eq!(
            challenge.resource_metadata.as_deref(),
            Some("http://h:1/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(challenge.scope.as_deref(), Some("a b"));
        assert_eq!(parse_challenge("Basic realm=x"), Challenge::default());
        assert_eq!(
            parse_challenge("Bearer resource_metadata=http://x/m")
                .resource_metadata
                .as_deref(),
            Some("http://x/m")
        );
    }

    #[test]
    fn endpoints_are_https_or_on_this_machine() {
        assert!(check_endpoint("https://auth.example/authorize").is_ok());
        assert!(check_endpoint("http://localhost:3001/authorize").is_ok());
        assert!(check_endpoint("http://127.0.0.1:1/token").is_ok());
        assert!(check_endpoint("http://auth.example/authorize").is_err());
        assert!(check_endpoint("javascript:alert(1)").is_err());
        assert!(check_endpoint("not a url").is_err());
    }

    #[test]
    fn well_known_urls_are_inserted_before_the_path_then_at_the_root() {
        let url = Url::parse("https://h.example:8443/v1/mcp?x=1").unwrap();
        let urls: Vec<String> = resource_metadata_urls(&url)
            .iter()
            .map(Url::to_string)
            .collect();
        assert_eq!(
            urls,
            [
                "https://h.example:8443/.well-known/oauth-protected-resource/v1/mcp",
                "https://h.example:8443/.well-known/oauth-protected-resource"
            ]
        );
        let issuer = Url::parse("https://auth.example/tenant").unwrap();
        let urls: Vec<String> = server_metadata_urls(&issuer)
            .iter()
            .map(Url::to_string)
            .collect();
        assert_eq!(
            urls,
            [
                "https://auth.example/.well-known/oauth-authorization-server/tenant",
                "https://auth.example/.well-known/openid-configuration/tenant",
                "https://auth.example/tenant/.well-known/openid-configuration"
            ]
        );
        assert_eq!(canonical_resource(&url), "https://h.example:8443/v1/mcp");
    }
}
