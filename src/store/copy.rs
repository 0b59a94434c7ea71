//! `sparky migrate-store`: copies everything a SQLite data directory holds into an empty
//! PostgreSQL database, in one transaction: user accounts with their ids, password hashes,
//! admin flags and daily quotas, and their API tokens (hashes; sign-ins are not copied, so
//! everyone signs in again), conversations with their owners, titles and times, share links
//! with their ids and frozen copies,
//! every event (with the text the conversation search looks at), messages, notes, and the
//! knowledge graph's nodes and edges with their ids, and every file (its bytes a piece at a
//! time, its text and vectors, the conversations that use it). The turns table PostgreSQL keeps
//! is filled from the events. Either all of it is copied or nothing is. What travels between the two
//! (`Exported`) is defined in `exported.rs`, which both stores can reach.
//!
//! Depends on: `common::error`, `store::exported`, `store::postgres`, `store::sqlite`.

use super::exported::{CopyReport, Exported};
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use crate::common::error::Result;

/// Copies every account, conversation and share link, the whole knowledge graph and every file
/// of `from` into `to`, which must hold no conversations, nodes, files, users or shares yet. `progress` hears about each conversation copied.
///
/// # Errors
///
/// [`crate::common::error::Error::Store`] when `to` is not empty, either store fails, or the copy
/// cannot be committed; nothing is then kept in `to`.
pub fn copy_sqlite_to_postgres(
    from: &SqliteStore,
    to: &PostgresStore,
    progress: &mut dyn FnMut(&CopyReport),
) -> Result<CopyReport> {
    to.import(&mut |import| {
        from.export(&mut |item| {
            import.add(item)?;
            if matches!(item, Exported::Conversation(_)) {
                progress(import.report());
            }
            Ok(())
        })
    })
}
