//! The persistent store: what it holds and the traits the rest of the server uses.
//!
//! - [`ConversationStore`]: conversations (sessions), their events, messages and notes, written
//!   in batches by the journal and read back lazily, one conversation at a time, by the session
//!   manager, the replay of a connection and the HTTP API.
//! - [`GraphStore`]: the knowledge graph, every node owned by one principal.
//! - [`FileStore`] (`files.rs`): files, their bytes in pieces, the conversations that use them,
//!   and their text.
//! - [`ShareStore`] (`shares.rs`): share links, frozen read-only copies of conversations.
//! - [`AccountStore`] (`accounts.rs`): user accounts, their sign-ins and API tokens;
//!   [`UsageStore`] (`usage.rs`): each principal's turns and model tokens per day, and users'
//!   daily limits.
//! - [`Cluster`] (`cluster.rs`): leases and signals between instances sharing one store.
//!
//! What is stored is decided once, in `plan/`: the rows a journal batch writes, the queries each
//! read runs and their order, the graph's and the files' operations. The traits are implemented
//! there, once, for every backend. `sqlite/` (one SQLite file) and `postgres/` (a PostgreSQL database) only
//! supply what differs between the two SQL dialects (statement text, binding values, reading
//! rows), connect, migrate their schema, and do what is theirs alone: FTS5 or `tsvector`
//! search, SQLite's progress handler or `statement_timeout`, the size cap, and PostgreSQL's
//! pool, leases, `NOTIFY` and exactly-once `COMMIT` retry. `exported.rs` holds what `sparky
//! migrate-store` carries from one to the other, and `copy.rs` joins the two. How values are
//! spelled (the words a search keeps, labels, titles, a stored message) is `plan/values.rs`, so
//! that both stores agree. This is the only module that runs SQL.
//!
//! Reading order: this file, `plan/mod.rs` (the seam, and why it is shaped so), `plan/batch.rs`,
//! `plan/conversations.rs`, `plan/graph.rs`, `plan/files.rs`, then a dialect's `db.rs` and
//! `mod.rs`.
//!
//! Depends on: `common::error`, `common::protocol`, `model`.

mod accounts;
mod cluster;
mod copy;
mod exported;
mod files;
mod hnsw;
mod mcp_auth;
mod plan;
mod postgres;
mod shares;
mod sqlite;
#[cfg(test)]
pub(crate) mod tests;
mod tree;
mod usage;

use std::sync::Arc;

use serde_json::Value;

use crate::common::error::Result;
use crate::common::protocol::{SessionId, Usage};
use crate::model::ChatMessage;

pub use accounts::{AccountStore, ApiToken, User, UserSummary};
pub use cluster::{Cluster, LEASE_TTL, Notice, Signal, Solo};
pub use copy::copy_sqlite_to_postgres;
pub use exported::CopyReport;
pub use files::{
    BLOB_CHUNK, FileStore, NewChunk, NewFile, StoredFile, TextChunk, TextState, Upload,
    UploadLimits, safe_name,
};
pub use mcp_auth::{McpAuthStore, StoredGrant};
pub use postgres::{POSTGRES_SCHEMA_VERSION, PostgresStore};
pub use shares::{Share, ShareStore};
pub use sqlite::{BackupReport, DATABASE_FILE, SqliteStore, fts_queries};
pub use tree::{TreeTurn, TurnTree};
pub use usage::{
    DAY_SECONDS, DayUsage, LimitChange, Limits, Reached, TurnCount, USAGE_KEPT_DAYS, UsageStore,
    UsageSummary, day_of,
};

/// How long one full-text search may run by default (`--search-budget`).
pub const DEFAULT_SEARCH_BUDGET: std::time::Duration = std::time::Duration::from_millis(200);

/// Words of a search or memory lookup kept at most (after dropping stopwords and repeats);
/// later ones are dropped. Each word is one more posting list to merge and rank.
pub const MAX_SEARCH_WORDS: usize = 16;

/// The SQLite schema version this build writes. A store with a higher one was written by a
/// newer Sparky and is refused. (PostgreSQL's is [`POSTGRES_SCHEMA_VERSION`].)
pub const SCHEMA_VERSION: i64 = 11;

/// The owner of everything when the server requires no token.
pub const LOCAL_OWNER: &str = "local";

/// One write to the store. The journal applies a batch of them in one transaction; every op
/// is built in `session/persist.rs`.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteOp {
    /// A new conversation.
    CreateSession {
        /// Its id.
        id: SessionId,
        /// The principal that owns it.
        owner: String,
        /// The client's label for its user.
        user_id: Option<String>,
        /// Its system prompt.
        personality: Option<String>,
        /// The model it chose; `None` for the server's default.
        model: Option<String>,
    },
    /// An event, by number.
    Event {
        /// Its conversation.
        session: SessionId,
        /// Its `seq`.
        seq: u64,
        /// The frame as sent.
        body: Arc<str>,
        /// What the event changes about its turn, so that a restart needs no JSON parsing.
        turn: TurnMark,
        /// Text that `GET /api/conversations?q=` searches (user messages and answers).
        search_text: Option<String>,
    },
    /// Conversation messages appended, numbered from `first`.
    Messages {
        /// The conversation.
        session: SessionId,
        /// The number of the first message.
        first: u64,
        /// The turn they belong to (`0`: the history a conversation was seeded with).
        turn: u64,
        /// The messages.
        messages: Vec<ChatMessage>,
    },
    /// A note of the conversation's short-term knowledge.
    Note {
        /// The conversation.
        session: SessionId,
        /// The note.
        text: String,
    },
    /// A new title, when `owner` owns the conversation.
    Rename {
        /// The conversation.
        session: SessionId,
        /// Who asks.
        owner: String,
        /// The title.
        title: String,
    },
    /// Streamed frames for the other instances sharing the store, told in order with the
    /// batch's events (`Signal::Stream`); nothing is written.
    Relay {
        /// The conversation.
        session: SessionId,
        /// The signal's detail: the frames and the event they follow.
        detail: String,
    },
    /// The times and the model an imported conversation keeps from its export, set once the
    /// rest of the batch is written (so that the batch's own time does not replace them).
    KeepDates {
        /// The conversation.
        session: SessionId,
        /// Unix seconds it was created, when the export says.
        created_at: Option<i64>,
        /// Unix seconds it was last active, when the export says.
        updated_at: Option<i64>,
        /// The model it used, when the export says.
        model: Option<String>,
        /// `(turn, unix seconds it started)` for the turns whose time the export gives.
        turns: Vec<(u64, i64)>,
    },
    /// The conversation and every row that belongs to it.
    DeleteSession {
        /// The conversation.
        session: SessionId,
    },
}

impl WriteOp {
    /// The conversation the write is for.
    pub fn session(&self) -> &SessionId {
        match self {
            WriteOp::CreateSession { id, .. } => id,
            WriteOp::Event { session, .. }
            | WriteOp::Messages { session, .. }
            | WriteOp::Note { session, .. }
            | WriteOp::Rename { session, .. }
            | WriteOp::Relay { session, .. }
            | WriteOp::KeepDates { session, .. }
            | WriteOp::DeleteSession { session } => session,
        }
    }

    /// True for a write that adds nothing, or no more than a title: a deletion, a rename, or
    /// streamed frames relayed (which write nothing).
    /// A store lets a batch of only these through past its size cap, so that deleting is how
    /// a full store makes room.
    pub fn only_removes(batch: &[WriteOp]) -> bool {
        batch.iter().all(|op| {
            matches!(
                op,
                WriteOp::DeleteSession { .. } | WriteOp::Rename { .. } | WriteOp::Relay { .. }
            )
        })
    }
}

/// What an event does to its conversation's turn bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TurnMark {
    /// Nothing: an event inside a turn, or one that concerns no turn.
    #[default]
    None,
    /// A `user_message` opened turn `turn_id` with this text, after `parent`; it is the leaf
    /// now.
    Opened {
        /// The turn.
        turn_id: u64,
        /// The user's text.
        text: String,
        /// The turn it follows (`0`: the start).
        parent: u64,
        /// The `client_id` of the frame that started it.
        client_id: Option<String>,
    },
    /// The frame closed the open turn; a `message` adds the tokens its turn used to the
    /// conversation's totals.
    Closed {
        /// The turn's tokens (zero when the model did not say, or the turn did not answer).
        usage: Usage,
        /// How it closed.
        closing: Closing,
        /// True when the model rejected the history before this turn, which it no longer sees.
        reset: bool,
    },
    /// A `branch` event: the current path now ends at `leaf`.
    Branch {
        /// The new leaf.
        leaf: u64,
    },
}

/// How a turn closed (PROTOCOL.md section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// With its answer, a `message`.
    Message,
    /// With a turn `error`.
    Error,
    /// With `status` `cancelled`.
    Cancelled,
}

impl Closing {
    /// The name the turns API gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Closing::Message => "message",
            Closing::Error => "error",
            Closing::Cancelled => "cancelled",
        }
    }

    /// The closing a stored name means.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "message" => Some(Closing::Message),
            "error" => Some(Closing::Error),
            "cancelled" => Some(Closing::Cancelled),
            _ => None,
        }
    }
}

/// A conversation as the store holds it: what a session needs to come back to life.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredConversation {
    /// Its id.
    pub id: SessionId,
    /// The principal that owns it.
    pub owner: String,
    /// The client's label for its user.
    pub user_id: Option<String>,
    /// Its system prompt.
    pub personality: Option<String>,
    /// The model it chose; `None` for the server's default.
    pub model: Option<String>,
    /// The `seq` of its newest event (0 before the first).
    pub last_seq: u64,
    /// Its turns, and the leaf of its current path.
    pub tree: TurnTree,
    /// The turn that was open when the server stopped, and its user's text.
    pub open_turn: Option<(u64, String)>,
    /// The number the next message gets (one more than the highest stored).
    pub next_message: u64,
    /// The newest part of the current path's conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Its notes, oldest first.
    pub notes: Vec<String>,
    /// Its newest events, `(seq, body)`, oldest first.
    pub tail: Vec<(u64, String)>,
}

/// One conversation in `GET /api/conversations`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationSummary {
    /// Its id.
    pub id: SessionId,
    /// Its title: the first user message, cut to 80 characters, until renamed.
    pub title: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of its last event.
    pub updated_at: i64,
    /// Turns so far.
    pub turns: u64,
    /// The model it chose; `None` for the server's default.
    pub model: Option<String>,
    /// The tokens its answered turns used, summed from each closing `message`'s usage.
    pub usage: Usage,
    /// True when the store holds a turn of it open: one running (on any instance sharing the
    /// store), or one a stop cut off that nobody has closed yet.
    pub open: bool,
}

/// One turn in `GET /api/conversations/{id}/turns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnSummary {
    /// Its id.
    pub turn_id: u64,
    /// The turn it follows (`0`: the start).
    pub parent: u64,
    /// The user's text.
    pub text: String,
    /// The files its user message carried.
    pub attachments: Vec<crate::common::protocol::Attachment>,
    /// Unix seconds.
    pub created_at: i64,
    /// How it closed; `None` while it runs.
    pub closing: Option<Closing>,
}

/// A conversation's tree as `GET /api/conversations/{id}/turns` gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnsPage {
    /// The last turn of the current path (`0`: none).
    pub leaf: u64,
    /// Every turn, oldest first.
    pub turns: Vec<TurnSummary>,
}

/// How much one page of a conversation's events for the API holds at most: `limit` events,
/// and no more than `max_bytes` of their bodies once it holds one (a page is never empty for
/// lack of room, or a client could not page past a large event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSize {
    /// Events.
    pub limit: usize,
    /// Bytes of bodies.
    pub max_bytes: usize,
}

impl PageSize {
    /// True when a page holding `events` events of `bytes` bytes takes no more.
    fn full(self, events: usize, bytes: usize) -> bool {
        events >= self.limit || bytes >= self.max_bytes
    }
}

/// Events read for a replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventPage {
    /// `(seq, body)`, oldest first.
    pub events: Vec<(u64, String)>,
    /// The oldest `seq` the store still holds for the conversation (events before it were
    /// removed by retention).
    pub first_seq: u64,
}

/// Conversations: written in batches through the journal, read one at a time.
pub trait ConversationStore: Send + Sync {
    /// Applies a batch of writes atomically. A write for a conversation the store does not hold
    /// (deleted meanwhile) is skipped.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the batch could not be written; nothing of it is
    /// then kept.
    fn apply(&self, batch: &[WriteOp]) -> Result<()>;

    /// The conversation `id` with its newest `tail` events and at most `messages` messages,
    /// or `None` when the store does not hold it.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    fn load(
        &self,
        id: &SessionId,
        tail: usize,
        messages: usize,
    ) -> Result<Option<StoredConversation>>;

    /// Events of `id` with `seq` in `after + 1 ..= up_to`, oldest first, stopping after
    /// `max_bytes` of bodies (at least one event is returned when there is one).
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    fn events(&self, id: &SessionId, after: u64, up_to: u64, max_bytes: usize)
    -> Result<EventPage>;

    /// The newest events of `id` with `seq < before` (all when `None`), as many as one page of
    /// `size` holds (counted from the newest), oldest first, when `owner` owns it; `None` when
    /// it does not exist or is someone else's.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    fn events_before(
        &self,
        owner: &str,
        id: &SessionId,
        before: Option<u64>,
        size: PageSize,
    ) -> Result<Option<Vec<String>>>;

    /// The newest `limit` messages of conversation `id` that belong to the turns `path`
    /// (sorted; `0` for the seeded history), oldest first: what the model sees on a path.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    fn path_messages(&self, id: &SessionId, path: &[u64], limit: usize)
    -> Result<Vec<ChatMessage>>;

    /// The user's text of turn `turn` of conversation `id`, or `None` when it has no such turn.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    fn turn_text(&self, id: &SessionId, turn: u64) -> Result<Option<String>>;

    /// The tree of `owner`'s conversation `id`, or `None` when it does not exist or is someone
    /// else's.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    fn turns(&self, owner: &str, id: &SessionId) -> Result<Option<TurnsPage>>;

    /// The events of turn `turn` of `owner`'s conversation `id` with `seq > after`, oldest
    /// first, as many as one page of `size` holds; `None` when the conversation does not
    /// exist, is someone else's, or has no such turn.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    fn turn_events(
        &self,
        owner: &str,
        id: &SessionId,
        turn: u64,
        after: u64,
        size: PageSize,
    ) -> Result<Option<Vec<String>>>;

    /// `owner`'s conversations, most recently active first; with `query`, only those whose
    /// title, or one of whose user messages or answers, has all its words (bounded like
    /// [`GraphStore::search`]).
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    fn list(
        &self,
        owner: &str,
        query: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>>;

    /// One of `owner`'s conversations, or `None`.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    fn summary(&self, owner: &str, id: &SessionId) -> Result<Option<ConversationSummary>>;

    /// Conversations with no event for longer than `idle`, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    fn idle(&self, idle: std::time::Duration, limit: usize) -> Result<Vec<SessionId>>;

    /// How many conversations `owner` has.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    fn count(&self, owner: &str) -> Result<u64>;

    /// Caps the size of the store at about `bytes` (`None`: no cap but the disk's). Past it, a
    /// write fails as it would on a full disk.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the cap cannot be set.
    fn set_size_limit(&self, bytes: Option<u64>) -> Result<()>;

    /// Gives every conversation of `old` to `new`, and returns how many there were. Start-up
    /// uses it, before the journal starts, to move owners from a fingerprint an earlier version
    /// stored to the current one.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be written.
    fn reassign_owner(&self, old: &str, new: &str) -> Result<u64>;

    /// What the store is and whether it can reach its data now, for `/healthz` and `/metrics`.
    /// A store that lost its database may try it again here, bounded by its connect timeout.
    fn status(&self) -> StoreStatus;
}

/// What a store says about itself: its kind, whether it can reach its data, and its pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// False while the database cannot be reached (the last attempt to connect failed).
    pub reachable: bool,
    /// The connection pool, for a store that has one.
    pub pool: Option<PoolStatus>,
}

/// The figures of a connection pool, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections the pool may hold (`--store-pool`), besides the writer's own.
    pub size: u64,
    /// Connections open now, in use or idle.
    pub open: u64,
    /// Connections lent out now.
    pub in_use: u64,
    /// Threads waiting for a connection now.
    pub waiting: u64,
    /// Connections lent since start.
    pub checkouts_total: u64,
    /// Checkouts that had to wait for a connection to come back.
    pub waits_total: u64,
    /// Checkouts that gave up waiting.
    pub timeouts_total: u64,
    /// Connections opened since start (the writer's included).
    pub connects_total: u64,
    /// Attempts to connect that failed.
    pub connect_failures_total: u64,
}

/// A node of the knowledge graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Its id.
    pub id: i64,
    /// What kind of thing it is (`fact` for what `remember` stores).
    pub kind: String,
    /// A short name.
    pub label: String,
    /// The text.
    pub content: String,
    /// Free-form JSON properties.
    pub properties: Value,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Node {
    /// A node just stored as `id`, created and updated at `now`.
    pub fn created(
        id: i64,
        kind: &str,
        label: &str,
        content: &str,
        properties: &Value,
        now: i64,
    ) -> Self {
        Node {
            id,
            kind: kind.to_owned(),
            label: label.to_owned(),
            content: content.to_owned(),
            properties: properties.clone(),
            created_at: now,
            updated_at: now,
        }
    }
}

/// What [`GraphStore::edit`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Edited {
    /// The node, as it is now.
    Changed(Node),
    /// The owner has no such node.
    Missing,
    /// Nothing: the owner has this other fact with that content already.
    Duplicate(Node),
}

/// A typed edge between two nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    /// Its id.
    pub id: i64,
    /// Where it starts.
    pub source: i64,
    /// Where it ends.
    pub target: i64,
    /// The relation, e.g. `likes`.
    pub kind: String,
    /// Free-form JSON properties.
    pub properties: Value,
}

/// A node with the edges that touch it and the nodes at their other ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbourhood {
    /// The node.
    pub node: Node,
    /// Each edge and the node at its other end.
    pub neighbours: Vec<(Edge, Node)>,
}

/// The knowledge graph. Every call names the principal (`owner`) it acts for, and sees and
/// changes only that principal's nodes.
pub trait GraphStore: Send + Sync {
    /// Stores a fact as a `fact` node, unless `owner` has the same fact already (an upsert:
    /// two calls at once store it once). Returns the node and whether it is new.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] on a database failure.
    fn remember(&self, owner: &str, content: &str) -> Result<(Node, bool)>;

    /// `owner`'s nodes that best match `query` (BM25 over label and content), best first;
    /// with `kind`, only nodes of that kind. A store may bound the work: keep only the first
    /// words of `query`, and stop a search that runs past its time budget, answering with
    /// what it found so far (possibly nothing) rather than an error.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] on a database failure.
    fn search(
        &self,
        owner: &str,
        query: &str,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Node>>;

    /// `owner`'s nodes, newest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] on a database failure.
    fn recent(&self, owner: &str, kind: Option<&str>, limit: usize) -> Result<Vec<Node>>;

    /// Adds a node owned by `owner`.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] on a database failure.
    fn add_node(
        &self,
        owner: &str,
        kind: &str,
        label: &str,
        content: &str,
        properties: &Value,
    ) -> Result<Node>;

    /// Adds an edge between two of `owner`'s nodes, or returns the one that already joins them
    /// with the same kind.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when a node is not `owner`'s, or on a database failure.
    fn add_edge(
        &self,
        owner: &str,
        source: i64,
        target: i64,
        kind: &str,
        properties: &Value,
    ) -> Result<Edge>;

    /// One of `owner`'s nodes and its neighbours, or `None`.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] on a database failure.
    fn get(&self, owner: &str, id: i64) -> Result<Option<Neighbourhood>>;

    /// Gives one of `owner`'s nodes the content `content` (a fact's label follows it; another
    /// node keeps its label) and drops its embeddings, so that semantic memory embeds it again.
    /// A fact is not given the content of another of `owner`'s facts: each is stored once.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] on a database failure.
    fn edit(&self, owner: &str, id: i64, content: &str) -> Result<Edited>;

    /// Deletes one of `owner`'s nodes and its edges; false when `owner` has no such node.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] on a database failure.
    fn delete(&self, owner: &str, id: i64) -> Result<bool>;

    /// How many nodes the graph holds, all owners together (a cheap way to skip a lookup).
    fn node_count(&self) -> u64;

    /// Nodes (any owner's) that have no embedding by `model` yet, oldest first, at most
    /// `limit`: `(id, the text to embed)`. Semantic memory's background worker embeds them.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] on a database failure.
    fn unembedded(&self, model: &str, limit: usize) -> Result<Vec<(i64, String)>>;

    /// Stores each node's unit vector by `model` (replacing any earlier one), under the node's
    /// owner. A node deleted meanwhile is skipped.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] on a database failure.
    fn store_embeddings(&self, model: &str, vectors: &[(i64, Vec<f32>)]) -> Result<()>;

    /// `owner`'s nodes whose `model` vectors are nearest to the unit vector `query` (cosine
    /// similarity), best first, at most `limit`, with their similarity; with `kind`, only nodes
    /// of that kind. Up to a thousand vectors the store reads them all (brute force); past that
    /// it searches a copy kept in memory, a graph (HNSW) from 20,000 on, which may miss a few
    /// of the exact best (recall@10 ≥ 0.95 in the tests); every node answered is read back
    /// from the store under `owner` and scored from its stored vector.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] on a database failure.
    fn nearest(
        &self,
        owner: &str,
        model: &str,
        query: &[f32],
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Node, f32)>>;

    /// Gives every node of `old` to `new`, and returns how many there were (the counterpart of
    /// [`ConversationStore::reassign_owner`] for the graph).
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] on a database failure.
    fn reassign_nodes(&self, old: &str, new: &str) -> Result<u64>;
}
