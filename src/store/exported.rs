//! What `sparky migrate-store` carries from the SQLite store to PostgreSQL: a conversation with
//! everything in it (its turns included), a node, an edge ([`Exported`]), and what a copy counts
//! ([`CopyReport`]). Both stores reach these types here, and `copy.rs` joins them.
//!
//! Depends on: `model`.

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
    pub(super) leaf: i64,
    pub(super) model: Option<String>,
    pub(super) prompt_tokens: i64,
    pub(super) completion_tokens: i64,
    /// `(seq, body, search text)`, by `seq`.
    pub(super) events: Vec<(i64, String, Option<String>)>,
    /// `(number, turn, message)`, by number.
    pub(super) messages: Vec<(i64, i64, ChatMessage)>,
    /// By id.
    pub(super) turn_rows: Vec<ExportedTurn>,
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

/// A turn as the SQLite store holds it.
#[derive(Debug, Default)]
pub(super) struct ExportedTurn {
    pub(super) turn_id: i64,
    pub(super) parent: i64,
    pub(super) client_id: Option<String>,
    pub(super) opened_seq: i64,
    pub(super) closed_seq: Option<i64>,
    pub(super) closing: Option<String>,
    pub(super) reset: bool,
    pub(super) created_at: i64,
}
