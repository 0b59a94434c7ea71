//! What an OAuth-protected MCP server granted, as the store keeps it: one row per configured
//! server name, holding the grant as JSON text that `tools/mcp/oauth/` writes and reads (the
//! store never looks inside it), a version bumped by every write, and a refresh lease, so
//! that of every thread on every instance sharing the store, one refreshes a server's token
//! at a time; and the sign-ins waiting for their callback, taken once by whichever instance
//! the callback reaches. The grant holds live tokens: it is never logged, and nothing here implements
//! `Debug` over it.
//!
//! Depends on: `common::error`.

use std::fmt;

use crate::common::error::Result;

/// A server's grant as stored.
pub struct StoredGrant {
    /// The grant, JSON text (tokens inside: never log it).
    pub grant: String,
    /// Bumped by every write: a refresh claims the version it read.
    pub version: i64,
    /// Unix seconds until which a refresh holds the lease, if one does.
    pub refreshing_until: Option<i64>,
}

impl fmt::Debug for StoredGrant {
    /// The grant itself is left out: it holds tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredGrant")
            .field("version", &self.version)
            .field("refreshing_until", &self.refreshing_until)
            .finish_non_exhaustive()
    }
}

/// The grants of OAuth-protected MCP servers, shared by every instance on the store.
/// Implemented once for both stores (`plan/mcp_auth.rs`).
pub trait McpAuthStore: Send + Sync {
    /// The grant stored for `server`, if any.
    ///
    /// # Errors
    ///
    /// The store's.
    fn mcp_grant(&self, server: &str) -> Result<Option<StoredGrant>>;

    /// Stores `grant` as `server`'s (replacing any), frees its refresh lease, and returns the
    /// new version.
    ///
    /// # Errors
    ///
    /// The store's.
    fn put_mcp_grant(&self, server: &str, grant: &str) -> Result<i64>;

    /// Takes `server`'s refresh lease until `until` (Unix seconds), when its grant is still at
    /// `version` and no lease is held past `now`. False when another holder has it or the
    /// grant has changed since it was read.
    ///
    /// # Errors
    ///
    /// The store's.
    fn claim_mcp_refresh(&self, server: &str, version: i64, now: i64, until: i64) -> Result<bool>;

    /// Frees `server`'s refresh lease without changing its grant.
    ///
    /// # Errors
    ///
    /// The store's.
    fn release_mcp_refresh(&self, server: &str) -> Result<()>;

    /// Keeps a sign-in waiting for its callback under its `state` (JSON text with its PKCE
    /// verifier: never log it), so that the callback may reach any instance; forgets those
    /// made before `expired_before` (Unix seconds).
    ///
    /// # Errors
    ///
    /// The store's.
    fn put_mcp_sign_in(
        &self,
        state: &str,
        server: &str,
        sign_in: &str,
        expired_before: i64,
    ) -> Result<()>;

    /// Takes the sign-in kept under `state` (once: it is gone after), when it was made at or
    /// after `not_before`: its server and its JSON text.
    ///
    /// # Errors
    ///
    /// The store's.
    fn take_mcp_sign_in(&self, state: &str, not_before: i64) -> Result<Option<(String, String)>>;

    /// Forgets `server`'s grant. False when there was none.
    ///
    /// # Errors
    ///
    /// The store's.
    fn forget_mcp_grant(&self, server: &str) -> Result<bool>;
}
