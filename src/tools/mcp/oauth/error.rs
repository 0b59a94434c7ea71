//! `OAuthError`: why signing in to an MCP server, or keeping its token fresh, failed.
//!
//! Depends on: `common::error`.

use std::fmt;

use crate::common::error::Error;

/// Why signing in to an MCP server, or refreshing its token, failed. The `Display` text is
/// short and lowercase, and never holds a token.
#[derive(Debug)]
pub enum OAuthError {
    /// Its metadata (protected resource or authorization server) could not be found or read.
    Discovery(String),
    /// No client could be registered with its authorization server.
    Registration(String),
    /// The authorization server refused the code or the refresh token (`invalid_grant` and
    /// the like): a person must sign in again.
    Refused(String),
    /// The authorization server could not be reached, or answered with something unreadable.
    Http(String),
    /// The sign-in is unknown, used already or expired (the `state` of a callback).
    UnknownSignIn,
    /// No server of that name, or it is not an HTTP server.
    UnknownServer(String),
    /// The store failed.
    Store(Error),
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OAuthError::Discovery(detail) => write!(f, "oauth discovery failed: {detail}"),
            OAuthError::Registration(detail) => write!(f, "no oauth client: {detail}"),
            OAuthError::Refused(detail) => write!(f, "the authorization server refused: {detail}"),
            OAuthError::Http(detail) => write!(f, "the authorization server failed: {detail}"),
            OAuthError::UnknownSignIn => write!(f, "this sign-in is unknown, used or expired"),
            OAuthError::UnknownServer(name) => write!(f, "no MCP url server named {name:?}"),
            OAuthError::Store(e) => write!(f, "the store failed: {e}"),
        }
    }
}

impl std::error::Error for OAuthError {}

impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        OAuthError::Store(e)
    }
}
