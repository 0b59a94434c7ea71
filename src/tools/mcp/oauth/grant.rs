//! [`Grant`]: what a sign-in won, as `store/mcp_auth.rs` keeps it (JSON text): the tokens,
//! when the access token expires, and what a refresh needs (the token endpoint, the client,
//! the resource). It holds live tokens: its `Debug` leaves them out, and it is never logged.
//!
//! Depends on: `tools::mcp::oauth::registration`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::registration::Client;

/// How long before its expiry an access token is refreshed, in seconds, at most: a token that
/// lives less than twice that is refreshed halfway through its life instead (a token of 60 s
/// or less would otherwise count as expiring from the start, and every request refresh it).
pub const REFRESH_AHEAD_SECONDS: i64 = 60;

/// What a sign-in won, and what refreshing it needs.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The MCP server's URL it was won for; a grant for another URL is not used.
    pub(crate) server_url: String,
    /// The `resource` indicator it was asked for (RFC 8707).
    pub(crate) resource: String,
    /// Where it is refreshed.
    pub(crate) token_endpoint: String,
    /// The client it was issued to.
    pub(crate) client: Client,
    /// The access token.
    pub(crate) access_token: String,
    /// The refresh token, when the server gave one.
    #[serde(default)]
    pub(crate) refresh_token: Option<String>,
    /// Unix seconds when the access token expires, when the server said.
    #[serde(default)]
    pub(crate) expires_at: Option<i64>,
    /// How long the access token lived when it was issued (`expires_in`), in seconds.
    #[serde(default)]
    pub(crate) lifetime: Option<i64>,
    /// The scope asked for.
    #[serde(default)]
    pub(crate) scope: Option<String>,
}

impl Grant {
    /// True when the access token expires within [`REFRESH_AHEAD_SECONDS`] of `now`, or
    /// within half its lifetime when that is less.
    pub(crate) fn expiring(&self, now: i64) -> bool {
        let ahead = self.lifetime.map_or(REFRESH_AHEAD_SECONDS, |lifetime| {
            (lifetime / 2).clamp(0, REFRESH_AHEAD_SECONDS)
        });
        self.expires_at.is_some_and(|at| at <= now + ahead)
    }
}

impl fmt::Debug for Grant {
    /// The tokens are left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("server_url", &self.server_url)
            .field("resource", &self.resource)
            .field("client", &self.client)
            .field("refreshable", &self.refresh_token.is_some())
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}
