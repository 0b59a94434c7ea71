//! The authorization code flow, through the `oauth2` crate: the authorization URL (PKCE S256,
//! a random `state`, the `resource` indicator of RFC 8707 and the scope), the code exchange,
//! and the refresh (with the same `resource`), each a token request sent by our blocking agent.
//! A token request the authorization server refuses (`invalid_grant` and the like) is
//! [`OAuthError::Refused`]: the grant is gone and a person must sign in again.
//!
//! Depends on: `tools::mcp::oauth::error`, `tools::mcp::oauth::grant`, `tools::mcp::oauth::http`, `tools::mcp::oauth::registration`.

use std::time::{SystemTime, UNIX_EPOCH};

use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenResponse};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError,
    Scope, TokenResponse, TokenUrl,
};
use ureq::Agent;

use super::error::OAuthError;
use super::grant::Grant;
use super::http::send;
use super::registration::Client;

/// A client configured with its token endpoint and redirect URI.
type Configured = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    BasicTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// What one sign-in asks of the authorization server.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    /// Where a person signs in.
    pub(crate) authorization_endpoint: &'a str,
    /// Where the code is exchanged.
    pub(crate) token_endpoint: &'a str,
    /// The client.
    pub(crate) client: &'a Client,
    /// The `resource` indicator.
    pub(crate) resource: &'a str,
    /// The scope, if any.
    pub(crate) scope: Option<&'a str>,
}

/// A started sign-in: the URL a person opens, its `state` and the PKCE verifier (secret).
pub(crate) struct Started {
    /// The authorization URL.
    pub(crate) url: String,
    /// The `state` it carries.
    pub(crate) state: String,
    /// The PKCE code verifier, for the exchange.
    pub(crate) verifier: String,
}

fn oauth_client(
    authorization_endpoint: &str,
    token_endpoint: &str,
    client: &Client,
) -> Result<Configured, OAuthError> {
    let bad = |what: &str, e: oauth2::url::ParseError| {
        OAuthError::Discovery(format!("the {what} is not a URL: {e}"))
    };
    let mut configured = BasicClient::new(ClientId::new(client.id.clone()))
        .set_auth_uri(
            AuthUrl::new(authorization_endpoint.to_owned())
                .map_err(|e| bad("authorization endpoint", e))?,
        )
        .set_token_uri(
            TokenUrl::new(token_endpoint.to_owned()).map_err(|e| bad("token endpoint", e))?,
        )
        .set_redirect_uri(
            RedirectUrl::new(client.redirect_uri.clone()).map_err(|e| bad("redirect URI", e))?,
        )
        .set_auth_type(AuthType::RequestBody);
    if let Some(secret) = &client.secret {
        configured = configured.set_client_secret(ClientSecret::new(secret.clone()));
    }
    Ok(configured)
}

/// Starts a sign-in: the authorization URL with PKCE (S256), `state`, `resource` and scope.
///
/// # Errors
///
/// [`OAuthError::Discovery`] when an endpoint is not a URL.
pub(crate) fn start(request: &Request<'_>) -> Result<Started, OAuthError> {
    let client = oauth_client(
        request.authorization_endpoint,
        request.token_endpoint,
        request.client,
    )?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut authorize = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_extra_param("resource", request.resource);
    if let Some(scope) = request.scope.filter(|s| !s.trim().is_empty()) {
        authorize = authorize.add_scopes(scope.split_whitespace().map(|s| Scope::new(s.into())));
    }
    let (url, state) = authorize.url();
    Ok(Started {
        url: url.to_string(),
        state: state.secret().clone(),
        verifier: verifier.secret().clone(),
    })
}

/// Exchanges a code for tokens.
///
/// # Errors
///
/// [`OAuthError::Refused`] when the server refuses the code, [`OAuthError::Http`] when it
/// cannot be reached or its answer is unreadable.
pub(crate) fn exchange(
    agent: &Agent,
    request: &Request<'_>,
    server_url: &str,
    code: &str,
    verifier: &str,
) -> Result<Grant, OAuthError> {
    let client = oauth_client(
        request.authorization_endpoint,
        request.token_endpoint,
        request.client,
    )?;
    let http = |r| send(agent, r);
    let answer = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
        .add_extra_param("resource", request.resource)
        .request(&http)
        .map_err(token_error)?;
    Ok(grant_from(
        &answer,
        Grant {
            server_url: server_url.to_owned(),
            resource: request.resource.to_owned(),
            token_endpoint: request.token_endpoint.to_owned(),
            client: request.client.clone(),
            access_token: String::new(),
            refresh_token: None,
            expires_at: None,
            lifetime: None,
            scope: request.scope.map(str::to_owned),
        },
    ))
}

/// Refreshes `grant` with its refresh token; the answer's refresh token replaces it when the
/// server rotates them.
///
/// # Errors
///
/// [`OAuthError::Refused`] when the server refuses the refresh token (or there is none),
/// [`OAuthError::Http`] when it cannot be reached.
pub(crate) fn refresh(agent: &Agent, grant: &Grant) -> Result<Grant, OAuthError> {
    let Some(refresh_token) = &grant.refresh_token else {
        return Err(OAuthError::Refused("it gave no refresh token".into()));
    };
    // The authorization endpoint is not used by a refresh.
    let client = oauth_client(&grant.token_endpoint, &grant.token_endpoint, &grant.client)?;
    let http = |r| send(agent, r);
    let refresh_token = RefreshToken::new(refresh_token.clone());
    let answer = client
        .exchange_refresh_token(&refresh_token)
        .add_extra_param("resource", &grant.resource)
        .request(&http)
        .map_err(token_error)?;
    Ok(grant_from(&answer, grant.clone()))
}

/// `base` with the tokens of `answer`.
fn grant_from(answer: &BasicTokenResponse, mut base: Grant) -> Grant {
    base.access_token = answer.access_token().secret().clone();
    if let Some(refresh) = answer.refresh_token() {
        base.refresh_token = Some(refresh.secret().clone());
    }
    let lifetime = answer
        .expires_in()
        .map(|within| within.as_secs().min(i64::MAX as u64 / 2) as i64);
    base.lifetime = lifetime;
    base.expires_at = lifetime.map(|within| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        now.saturating_add(within)
    });
    base
}

fn token_error<E: std::error::Error>(
    e: RequestTokenError<E, oauth2::basic::BasicErrorResponse>,
) -> OAuthError {
    match e {
        RequestTokenError::ServerResponse(refused) => {
            let mut text = refused.error().to_string();
            if let Some(description) = refused.error_description() {
                text = format!("{text}: {description}");
            }
            // Only these say the grant or the client is no good; others may pass.
            match refused.error() {
                BasicErrorResponseType::InvalidGrant
                | BasicErrorResponseType::InvalidClient
                | BasicErrorResponseType::UnauthorizedClient
                | BasicErrorResponseType::UnsupportedGrantType => OAuthError::Refused(text),
                _ => OAuthError::Http(text),
            }
        }
        RequestTokenError::Request(e) => OAuthError::Http(e.to_string()),
        RequestTokenError::Parse(e, _) => OAuthError::Http(format!("an unreadable answer: {e}")),
        RequestTokenError::Other(detail) => OAuthError::Http(detail),
    }
}
