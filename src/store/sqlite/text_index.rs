//! `TextIndex`: the conversation search's full-text index (`event_text`), filled behind the
//! commits instead of in them.
//!
//! Put into FTS5 by each turn's commit, a turn's two texts cost five pages of the commit's
//! fourteen (a new segment, its structure record, the content, the document sizes, the
//! segment index) and a third of a turn's time at one client. So a batch stores each event's
//! search text in its own row (`events.search_text`), and the index takes what it lacks in
//! larger steps, each one transaction on the writer over [`CHUNK_ROWS`] event rowids: it
//! indexes the texts, clears them from their events, and moves `text_index.indexed_to` on.
//! A step is taken:
//! - by the `checkpoint` thread, off the path of any turn, once [`DUE_TEXTS`] texts wait, or
//!   when commits are few (its one-second wake);
//! - before a conversation search, so that it never misses what was just said (an export
//!   reads each text where it waits);
//! - at start, for what a crash left.
//!
//! Every event up to `indexed_to` is indexed, and every one above it is not. A deletion keeps
//! that true when it takes the newest events away, and with them rowids SQLite will hand out
//! again (`indexed_to` goes back to the newest event that stays: see `db.rs`).
//!
//! Depends on nothing in the crate.

use std::sync::atomic::{AtomicUsize, Ordering};

use rusqlite::Connection;

/// Event rowids one step covers: a step holds the writer for about a millisecond.
const CHUNK_ROWS: i64 = 512;

/// Texts waiting past which the `checkpoint` thread indexes them at its next wake (a store
/// without that thread: the batch that passes it).
pub(super) const DUE_TEXTS: usize = 1024;

/// The indexed part and the newest event.
const BOUNDS: &str = "SELECT indexed_to, (SELECT coalesce(max(rowid), 0) FROM events) \
     FROM text_index";

/// The texts of events `?1 < rowid <= ?2` into the index, under their conversation owner's
/// token.
const INDEX: &str = "INSERT INTO event_text (rowid, text, owner_token, session_key) \
     SELECT e.rowid, e.search_text, 'o' || hex(s.owner), e.session_key \
     FROM events e JOIN sessions s ON s.key = e.session_key \
     WHERE e.rowid > ?1 AND e.rowid <= ?2 AND e.search_text IS NOT NULL";

/// The same texts, which the index now keeps, out of their events.
const CLEAR: &str = "UPDATE events SET search_text = NULL \
     WHERE rowid > ?1 AND rowid <= ?2 AND search_text IS NOT NULL";

/// How far the index goes.
const MOVE: &str = "UPDATE text_index SET indexed_to = ?1";

/// What this process committed that the index does not have yet.
#[derive(Debug, Default)]
pub(super) struct TextIndex {
    /// Texts committed since the index last caught up (a crash's are found at start).
    waiting: AtomicUsize,
}

impl TextIndex {
    /// A batch with `texts` search texts was committed.
    pub(super) fn committed(&self, texts: usize) {
        if texts > 0 {
            self.waiting.fetch_add(texts, Ordering::Relaxed);
        }
    }

    /// Texts committed and not indexed yet.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A step failed: something is left, whatever the count said (at start, what a crash
    /// left), so that the next search tries again.
    pub(super) fn behind(&self) {
        self.waiting.fetch_max(1, Ordering::Relaxed);
    }

    /// Every text committed is indexed now: told by the writer's holder once the last step
    /// committed (no batch lands meanwhile).
    pub(super) fn caught_up(&self) {
        self.waiting.store(0, Ordering::Relaxed);
    }

    /// One step, in the writer's transaction `tx`: indexes the next [`CHUNK_ROWS`] events.
    /// Returns true when more are left.
    ///
    /// # Errors
    ///
    /// SQLite's.
    pub(super) fn step(&self, tx: &Connection) -> rusqlite::Result<bool> {
        let (from, newest): (i64, i64) =
            tx.query_row(BOUNDS, [], |row| Ok((row.get(0)?, row.get(1)?)))?;
        if from >= newest {
            return Ok(false);
        }
        let to = newest.min(from.saturating_add(CHUNK_ROWS));
        tx.prepare_cached(INDEX)?.execute([from, to])?;
        tx.prepare_cached(CLEAR)?.execute([from, to])?;
        tx.prepare_cached(MOVE)?.execute([to])?;
        Ok(to < newest)
    }
}
