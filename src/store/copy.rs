//! `sparky migrate-store`: copies everything a SQLite data directory holds into an empty
//! PostgreSQL database, in one transaction: conversations with their owners, titles and times,
//! every event (with the text the conversation search looks at), messages, notes, and the
//! knowledge graph's nodes and edges with their ids. The turns table PostgreSQL keeps is filled
//! from the events. Either all of it is copied or nothing is.
//!
//! Depends on: `common::error`, `common::protocol`, `store::export`, `store::postgres`, `store::sqlite`.

use std::collections::HashMap;

use super::export::Exported;
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use crate::common::error::Result;
use crate::common::protocol::{ServerEnvelope, ServerFrame};

/// What [`copy_sqlite_to_postgres`] copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Conversations.
    pub conversations: u64,
    /// Events, all conversations together.
    pub events: u64,
    /// Messages the model sees (and those it no longer sees but the store kept).
    pub messages: u64,
    /// Notes.
    pub notes: u64,
    /// Nodes of the knowledge graph.
    pub nodes: u64,
    /// Edges of the knowledge graph.
    pub edges: u64,
}

/// Copies every conversation and the whole knowledge graph of `from` into `to`, which must hold
/// neither conversations nor nodes yet. `progress` hears about each conversation copied.
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

/// A turn found in a conversation's events: `(turn_id, opened at seq, closed at seq)`.
pub(super) type TurnSpan = (i64, i64, Option<i64>);

/// The turns a conversation's events open and close, read from the frames themselves (SQLite
/// keeps no table of them). An event that is not a frame is skipped.
pub(super) fn turns_of(events: &[(i64, String, Option<String>)]) -> Vec<TurnSpan> {
    let mut turns: Vec<TurnSpan> = Vec::new();
    let mut index: HashMap<i64, usize> = HashMap::new();
    for (seq, body, _) in events {
        let Ok(envelope) = serde_json::from_str::<ServerEnvelope>(body) else {
            continue;
        };
        let Some(turn) = envelope.frame.turn_id() else {
            continue;
        };
        let turn = i64::try_from(turn.0).unwrap_or(i64::MAX);
        if matches!(envelope.frame, ServerFrame::UserMessage { .. }) {
            index.entry(turn).or_insert_with(|| {
                turns.push((turn, *seq, None));
                turns.len() - 1
            });
        } else if envelope.frame.closes_turn()
            && let Some(&at) = index.get(&turn)
            && turns[at].2.is_none()
        {
            turns[at].2 = Some(*seq);
        }
    }
    turns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_read_from_the_frames() {
        let events = [
            r#"{"type":"user_message","data":{"turn_id":1,"text":"hi"},"seq":1}"#,
            r#"{"type":"thought","data":{"turn_id":1,"text":"hm"},"seq":2}"#,
            r#"{"type":"message","data":{"turn_id":1,"text":"You said: hi"},"seq":3}"#,
            "not a frame",
            r#"{"type":"user_message","data":{"turn_id":2,"text":"cut"},"seq":5}"#,
        ];
        let events: Vec<_> = events
            .iter()
            .enumerate()
            .map(|(i, body)| (i as i64 + 1, (*body).to_owned(), None))
            .collect();
        assert_eq!(turns_of(&events), [(1, 1, Some(3)), (2, 5, None)]);
    }
}
