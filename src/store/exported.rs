//! What `sparky migrate-store` carries from the SQLite store to PostgreSQL: the accounts (users
//! with their API tokens), a conversation with everything in it (its turns included), a share
//! link, a node, an edge, a blob, a piece of its bytes, its text, a file ([`Exported`]), and
//! what a copy counts ([`CopyReport`]). Both stores reach these types here, and `copy.rs` joins them.
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
    /// Files.
    pub files: u64,
    /// The bytes of the files, each blob counted once.
    pub file_bytes: u64,
    /// User accounts.
    pub users: u64,
    /// Their API tokens.
    pub tokens: u64,
    /// Share links.
    pub shares: u64,
}

/// One thing read from the SQLite store for the copy.
#[derive(Debug)]
pub(super) enum Exported {
    /// Every user account with its API tokens (first of all).
    Accounts(Box<ExportedAccounts>),
    /// A share link and its frozen copy.
    Share(ExportedShare),
    /// A conversation and everything in it.
    Conversation(Box<ExportedConversation>),
    /// A node of the graph (all come before the first edge).
    Node(ExportedNode),
    /// An edge of the graph.
    Edge(ExportedEdge),
    /// A blob (all of them after the graph, each before its pieces, its text and its files).
    Blob(ExportedBlob),
    /// A piece of the last blob's bytes, in order.
    Piece(ExportedPiece),
    /// The last blob's text.
    Text(Box<ExportedText>),
    /// A file, over a blob exported before it.
    File(ExportedFile),
}

/// The user accounts as the SQLite store holds them: their ids are their principals
/// (`user:<id>`), kept as they are. Sign-ins are not carried: everyone signs in again.
#[derive(Debug, Default)]
pub(super) struct ExportedAccounts {
    /// By id.
    pub(super) users: Vec<ExportedUser>,
    /// By user, then id.
    pub(super) tokens: Vec<ExportedToken>,
    /// The highest user id ever given (a removed user's included), so that none is given
    /// again.
    pub(super) highest_id: i64,
}

/// A user account.
#[derive(Debug)]
pub(super) struct ExportedUser {
    pub(super) id: i64,
    pub(super) name: String,
    /// Its Argon2id hash, as it is.
    pub(super) password_hash: String,
    pub(super) admin: bool,
    pub(super) created_at: i64,
    pub(super) daily_turns: Option<i64>,
    pub(super) daily_tokens: Option<i64>,
}

/// A user's API token: its id and its secret's SHA-256, never the secret.
#[derive(Debug)]
pub(super) struct ExportedToken {
    pub(super) id: String,
    pub(super) user_id: i64,
    pub(super) name: String,
    pub(super) secret_sha256: String,
    pub(super) created_at: i64,
    pub(super) last_used: Option<i64>,
}

/// A share link: its id (the URL's), owner, conversation, title and frozen copy.
#[derive(Debug)]
pub(super) struct ExportedShare {
    pub(super) id: String,
    pub(super) owner: String,
    pub(super) session_id: String,
    pub(super) title: Option<String>,
    pub(super) copy: String,
    pub(super) created_at: i64,
}

/// A complete blob as the SQLite store holds it (one being written is not copied).
#[derive(Debug)]
pub(super) struct ExportedBlob {
    /// Its key in the SQLite store: the files and pieces name it.
    pub(super) key: i64,
    pub(super) owner: String,
    pub(super) sha256: String,
    pub(super) size: i64,
    pub(super) created_at: i64,
}

/// One piece of a blob's bytes.
#[derive(Debug)]
pub(super) struct ExportedPiece {
    pub(super) blob: i64,
    pub(super) n: i64,
    pub(super) data: Vec<u8>,
}

/// A blob's text: its state and its chunks with their vectors.
#[derive(Debug, Default)]
pub(super) struct ExportedText {
    pub(super) blob: i64,
    pub(super) owner: String,
    pub(super) state: String,
    pub(super) note: Option<String>,
    pub(super) chunks: i64,
    pub(super) chars: i64,
    /// `(n, label, text)`, by number.
    pub(super) text_chunks: Vec<(i64, String, String)>,
    /// `(n, model, vector)`.
    pub(super) vectors: Vec<(i64, String, Vec<u8>)>,
}

/// A file as the SQLite store holds it, with the conversations that use it.
#[derive(Debug)]
pub(super) struct ExportedFile {
    pub(super) id: String,
    pub(super) owner: String,
    pub(super) blob: i64,
    pub(super) name: String,
    pub(super) content_type: String,
    pub(super) created_at: i64,
    /// The ids of the conversations that use it.
    pub(super) uses: Vec<String>,
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
