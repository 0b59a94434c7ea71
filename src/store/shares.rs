//! Share links as the store keeps them: a frozen, read-only copy of a conversation's current
//! path (`POST /api/conversations/{id}/share`), readable by whoever holds its id, 128 random
//! bits, until its owner revokes it. The copy is JSON text the API wrote; the store keeps it
//! as it is and never reads inside it.
//!
//! Depends on: `common::error`, `common::protocol`.

use crate::common::error::Result;
use crate::common::protocol::SessionId;

/// A stored share link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// Its id: 32 hex characters from a cryptographic random source.
    pub id: String,
    /// The principal that made it.
    pub owner: String,
    /// The conversation it was copied from.
    pub conversation: String,
    /// The conversation's title when it was made.
    pub title: Option<String>,
    /// The frozen copy, JSON text (empty in a list, which does not read it).
    pub copy: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// What the store does with share links. Every read but [`ShareStore::share`] is scoped to an
/// owner; a link that is not the owner's is not there.
pub trait ShareStore: Send + Sync {
    /// Stores a new link to `copy` (JSON text) of `owner`'s conversation `conversation`, under
    /// a fresh random id.
    ///
    /// # Errors
    ///
    /// `Error::Store` when it cannot be written (the store is full, or cannot be reached).
    fn create_share(
        &self,
        owner: &str,
        conversation: &SessionId,
        title: Option<&str>,
        copy: &str,
    ) -> Result<Share>;

    /// The link `id`, with its copy, whoever owns it; `None` when there is none (revoked).
    ///
    /// # Errors
    ///
    /// `Error::Store` when it cannot be read.
    fn share(&self, id: &str) -> Result<Option<Share>>;

    /// `owner`'s links, newest first, without their copies.
    ///
    /// # Errors
    ///
    /// `Error::Store` when they cannot be read.
    fn shares(&self, owner: &str) -> Result<Vec<Share>>;

    /// Revokes `owner`'s link `id`: `false` when `owner` has no such link.
    ///
    /// # Errors
    ///
    /// `Error::Store` when it cannot be deleted.
    fn delete_share(&self, owner: &str, id: &str) -> Result<bool>;
}
