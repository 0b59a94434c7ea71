//! What `sparky migrate-store` reads out of the SQLite store: `Exported` conversations, nodes
//! and edges, as the SQLite store holds them. Plain data, so that the reading side
//! (`sqlite.rs`) and the writing side (`copy.rs`, `postgres/import.rs`) need not know each other.
//!
//! Depends on: `model`.

use crate::model::ChatMessage;

/// One thing read from the SQLite store for the copy.
#[derive(Debug)]
pub(crate) enum Exported {
    /// A conversation and everything in it.
    Conversation(Box<ExportedConversation>),
    /// A node of the graph (all come before the first edge).
    Node(ExportedNode),
    /// An edge of the graph.
    Edge(ExportedEdge),
}

/// A conversation as the SQLite store holds it.
#[derive(Debug, Default)]
pub(crate) struct ExportedConversation {
    pub(crate) id: String,
    pub(crate) owner: String,
    pub(crate) user_id: Option<String>,
    pub(crate) personality: Option<String>,
    pub(crate) title: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) last_seq: i64,
    pub(crate) turns: i64,
    pub(crate) open_turn: Option<i64>,
    pub(crate) open_text: Option<String>,
    pub(crate) first_seq: i64,
    pub(crate) first_message: i64,
    pub(crate) model: Option<String>,
    pub(crate) prompt_tokens: i64,
    pub(crate) completion_tokens: i64,
    /// `(seq, body, search text)`, by `seq`.
    pub(crate) events: Vec<(i64, String, Option<String>)>,
    /// `(number, message)`, by number.
    pub(crate) messages: Vec<(i64, ChatMessage)>,
    /// Oldest first.
    pub(crate) notes: Vec<String>,
}

/// A node as the SQLite store holds it.
#[derive(Debug)]
pub(crate) struct ExportedNode {
    pub(crate) id: i64,
    pub(crate) owner: String,
    pub(crate) kind: String,
    pub(crate) label: String,
    pub(crate) content: String,
    pub(crate) properties: serde_json::Value,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

/// An edge as the SQLite store holds it.
#[derive(Debug)]
pub(crate) struct ExportedEdge {
    pub(crate) source: i64,
    pub(crate) target: i64,
    pub(crate) kind: String,
    pub(crate) properties: serde_json::Value,
    pub(crate) created_at: i64,
}
