//! What `sparky migrate-store` carries from the SQLite store to PostgreSQL: a conversation with
//! everything in it, a node, an edge ([`Exported`]), and the turns PostgreSQL keeps a table of,
//! read from a conversation's events ([`turns_of`]), and what a copy counts ([`CopyReport`]). Both stores reach these types here, and
//! `copy.rs` joins them.
//!
//! Depends on: `common::protocol`, `model`.

use std::collections::HashMap;

use crate::common::protocol::{ServerEnvelope, ServerFrame};
use crate::model::ChatMessage;

/// What [`super::copy_sqlite_to_postgres`] copied.
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

/// One thing read from the SQLite store for the copy.
#[derive(Debug)]
pub(super) enum Exported {
    /// A conversation and everything in it.
    Conversation(Box<ExportedConversation>),
    /// A node of the graph (all come before the first edge).
    Node(ExportedNode),
    /// An edge of the graph.
    Edge(ExportedEdge),
}

/// A conversation as the SQLite store holds it.
#[derive(Debug, Default)]
pub(super) struct ExportedConversation {
    pub(super) id: String,
    pub(super) owner: String,
    pub(super) user_id: Option<String>,
    pub(super) personality: Option<String>,
    pub(super) title: Option<String>,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    pub(super) last_seq: i64,
    pub(super) turns: i64,
    pub(super) open_turn: Option<i64>,
    pub(super) open_text: Option<String>,
    pub(super) first_seq: i64,
    pub(super) first_message: i64,
    pub(super) model: Option<String>,
    pub(super) prompt_tokens: i64,
    pub(super) completion_tokens: i64,
    /// `(seq, body, search text)`, by `seq`.
    pub(super) events: Vec<(i64, String, Option<String>)>,
    /// `(number, message)`, by number.
    pub(super) messages: Vec<(i64, ChatMessage)>,
    /// Oldest first.
    pub(super) notes: Vec<String>,
}

/// A node as the SQLite store holds it.
#[derive(Debug)]
pub(super) struct ExportedNode {
    pub(super) id: i64,
    pub(super) owner: String,
    pub(super) kind: String,
    pub(super) label: String,
    pub(super) content: String,
    pub(super) properties: serde_json::Value,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
}

/// An edge as the SQLite store holds it.
#[derive(Debug)]
pub(super) struct ExportedEdge {
    pub(super) source: i64,
    pub(super) target: i64,
    pub(super) kind: String,
    pub(super) properties: serde_json::Value,
    pub(super) created_at: i64,
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
