//! Which client Sparky is to an authorization server, in the order MCP's 2025-11-25 spec
//! prefers: a `client_id` (and secret) from the server's config entry; else a Client ID
//! Metadata Document, when the server supports them and Sparky has a public `https` URL
//! (the document is served at `/api/mcp/oauth/client.json`); else dynamic registration
//! (RFC 7591) as a public client (`token_endpoint_auth_method: none`) for the one redirect URI
//! this sign-in uses.
//!
//! Depends on: `tools::mcp::oauth::discovery`, `tools::mcp::oauth::error`, `tools::mcp::oauth::http`.

use serde::{Deserialize, Serialize};
use serde_json::json;
use ureq::Agent;

use super::discovery::ServerMetadata;
use super::error::OAuthError;
use super::http::post_json;

/// The path, under the public URL, of Sparky's Client ID Metadata Document.
pub const CLIENT_DOCUMENT_PATH: &str = "/api/mcp/oauth/client.json";

/// The path, under the public URL, where an authorization server sends the browser back.
pub const CALLBACK_PATH: &str = "/api/mcp/oauth/callback";

/// The client name Sparky registers under.
const CLIENT_NAME: &str = "Sparky";

/// A client as the authorization server knows it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Client {
    /// Its `client_id`.
    pub(crate) id: String,
    /// Its secret, for a confidential client (sent in the token request's body).
    #[serde(default)]
    pub(crate) secret: Option<String>,
    /// The redirect URI it was registered with (dynamic registration), or the one used.
    pub(crate) redirect_uri: String,
    /// How it came to be: `config`, `metadata-document` or `registered`.
    pub(crate) how: String,
}

impl std::fmt::Debug for Client {
    /// The secret is left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("redirect_uri", &self.redirect_uri)
            .field("how", &self.how)
            .finish_non_exhaustive()
    }
}

/// A client from a server's config entry (`"oauth": {"client_id", "client_secret", "scope"}`).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ConfiguredClient {
    /// The `client_id` registered by hand with the server's authorization server.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Its secret, for a confidential client.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// The scope to ask for, instead of the one the server names.
    #[serde(default)]
    pub scope: Option<String>,
}

impl std::fmt::Debug for ConfiguredClient {
    /// The secret is left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredClient")
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The client to sign in with, redirecting to `redirect_uri`; `public_url` is Sparky's own
/// (`--public-url`), for a metadata document.
///
/// # Errors
///
/// [`OAuthError::Registration`] when the server offers no way Sparky can use.
pub(crate) fn client_for(
    agent: &Agent,
    server: &ServerMetadata,
    configured: &ConfiguredClient,
    redirect_uri: &str,
    public_url: Option<&str>,
) -> Result<Client, OAuthError> {
    if let Some(id) = &configured.client_id {
        return Ok(Client {
            id: id.clone(),
            secret: configured.client_secret.clone(),
            redirect_uri: redirect_uri.to_owned(),
            how: "config".into(),
        });
    }
    let public = public_url
        .map(|url| url.trim_end_matches('/'))
        .filter(|url| url.starts_with("https://"));
    if server.client_id_metadata_document_supported
        && let Some(public) = public
        && redirect_uri.starts_with(public)
    {
        return Ok(Client {
            id: format!("{public}{CLIENT_DOCUMENT_PATH}"),
            secret: None,
            redirect_uri: redirect_uri.to_owned(),
            how: "metadata-document".into(),
        });
    }
    let Some(endpoint) = &server.registration_endpoint else {
        return Err(OAuthError::Registration(
            "the authorization server has no registration endpoint and takes no client \
             metadata document from here: put \"oauth\": {\"client_id\": …} in the server's \
             config entry"
                .into(),
        ));
    };
    let answer = post_json(
        agent,
        endpoint,
        &json!({
            "client_name": CLIENT_NAME,
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }),
    )
    .map_err(|e| OAuthError::Registration(e.to_string()))?;
    let Some(id) = answer["client_id"].as_str() else {
        return Err(OAuthError::Registration(
            "the registration answer has no client_id".into(),
        ));
    };
    Ok(Client {
        id: id.to_owned(),
        secret: answer["client_secret"].as_str().map(str::to_owned),
        redirect_uri: redirect_uri.to_owned(),
        how: "registered".into(),
    })
}

/// Sparky's Client ID Metadata Document, for `public_url` (served at [`CLIENT_DOCUMENT_PATH`]).
pub fn client_document(public_url: &str) -> serde_json::Value {
    let public = public_url.trim_end_matches('/');
    json!({
        "client_id": format!("{public}{CLIENT_DOCUMENT_PATH}"),
        "client_name": CLIENT_NAME,
        "client_uri": public,
        "redirect_uris": [format!("{public}{CALLBACK_PATH}")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
}
