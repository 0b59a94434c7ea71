//! The persistent store: the `Store` trait, and `SqliteStore`, its SQLite implementation. It
//! holds the shared knowledge graph (nodes, typed edges, full-text search) and what makes
//! sessions durable (session rows, conversation messages, notes, the event log).
//!
//! The only file that issues SQL. Depends on `model` (for `ChatMessage`), `protocol` and
//! `error`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::model::{ChatMessage, Role, ToolCall};
use crate::protocol::SessionId;

/// The schema version this build writes. A store with a higher one was written by a newer
/// Sparky and is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "sparky.db";

/// Longest label made from a fact's first words.
const LABEL_CHARS: usize = 60;

/// One write to the store. The journal applies a batch of them in one transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteOp {
    /// A new session.
    CreateSession {
        /// Its id.
        id: SessionId,
        /// The client's label for its user.
        user_id: Option<String>,
        /// Its system prompt.
        personality: Option<String>,
        /// The fingerprint of the principal that owns it, when tokens are required.
        owner: Option<String>,
    },
    /// An event, by number.
    Event {
        /// Its session.
        session: SessionId,
        /// Its `seq`.
        seq: u64,
        /// The frame as sent.
        body: Arc<str>,
    },
    /// Forget events numbered below `below`.
    TrimEvents {
        /// The session.
        session: SessionId,
        /// The first `seq` kept.
        below: u64,
    },
    /// Conversation messages appended, numbered from `first`.
    Messages {
        /// The session.
        session: SessionId,
        /// The number of the first message.
        first: u64,
        /// The messages.
        messages: Vec<ChatMessage>,
    },
    /// Forget conversation messages numbered below `below`.
    TrimMessages {
        /// The session.
        session: SessionId,
        /// The first number kept.
        below: u64,
    },
    /// A session note.
    Note {
        /// The session.
        session: SessionId,
        /// The note.
        text: String,
    },
    /// The session and everything that belongs to it.
    DeleteSession {
        /// The session.
        session: SessionId,
    },
}

/// A session as the store holds it, for loading at start.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSession {
    /// Its id.
    pub id: SessionId,
    /// The client's label for its user.
    pub user_id: Option<String>,
    /// Its system prompt.
    pub personality: Option<String>,
    /// The fingerprint of its owner, when it has one.
    pub owner: Option<String>,
    /// How long ago it last had activity.
    pub idle_for: Duration,
    /// The number of the first of `messages`.
    pub first_message: u64,
    /// Its conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Its notes, oldest first.
    pub notes: Vec<String>,
    /// Its retained events, `(seq, body)`, oldest first.
    pub events: Vec<(u64, String)>,
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

/// What a server needs from its storage. Implemented by [`SqliteStore`]; a server-grade database
/// can implement it too without touching the bot or the server.
pub trait Store: Send + Sync {
    /// Applies a batch of writes atomically.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the batch could not be written; nothing of it is then kept.
    fn apply(&self, batch: &[WriteOp]) -> Result<()>;

    /// Deletes sessions idle for longer than `timeout` and returns the rest.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store cannot be read.
    fn load_sessions(&self, timeout: Duration) -> Result<Vec<StoredSession>>;

    /// Stores a fact as a `fact` node, unless the same fact is already there. Returns the node
    /// and whether it is new.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on a database failure.
    fn remember(&self, content: &str) -> Result<(Node, bool)>;

    /// The nodes that best match `query` (BM25 over label and content), best first; with
    /// `kind`, only nodes of that kind.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on a database failure.
    fn search(&self, query: &str, kind: Option<&str>, limit: usize) -> Result<Vec<Node>>;

    /// Adds a node.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on a database failure.
    fn add_node(&self, kind: &str, label: &str, content: &str, properties: &Value) -> Result<Node>;

    /// Adds an edge, or returns the one that already joins the same nodes with the same kind.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when a node does not exist, or on a database failure.
    fn add_edge(&self, source: i64, target: i64, kind: &str, properties: &Value) -> Result<Edge>;

    /// A node and its neighbours, or `None`.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on a database failure.
    fn get(&self, id: i64) -> Result<Option<Neighbourhood>>;

    /// Deletes a node and its edges; false when there was no such node.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on a database failure.
    fn delete(&self, id: i64) -> Result<bool>;

    /// How many nodes the graph holds.
    fn node_count(&self) -> u64;
}

/// The SQLite store: one file in the data directory, in WAL mode.
///
/// It keeps two connections: one for the journal's batches and one for the knowledge graph's
/// reads and writes from tools. Each is behind its own lock, held for one statement or one
/// transaction. A lock file keeps a second server off the same directory.
#[derive(Debug)]
pub struct SqliteStore {
    journal: Mutex<JournalConnection>,
    graph: Mutex<Connection>,
    /// Nodes in the graph, kept beside the table so that a turn can skip the memory lookup on
    /// an empty graph without a query.
    nodes: AtomicU64,
    /// Held (and locked) for as long as the store is open.
    _lock: Option<File>,
    path: Option<PathBuf>,
}

fn store_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{context}: {e}"))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`, takes the directory's lock, and migrates
    /// the schema to [`SCHEMA_VERSION`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`] with a message for the operator when the directory cannot be created,
    /// another server holds it, the file is not a database, or its schema is newer than this
    /// build.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            store_error(
                &format!("cannot create data directory {}", dir.display()),
                e,
            )
        })?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| store_error(&format!("cannot open {}", lock_path.display()), e))?;
        if lock.try_lock().is_err() {
            return Err(Error::Store(format!(
                "data directory {} is in use by another running sparky",
                dir.display()
            )));
        }
        let path = dir.join(DATABASE_FILE);
        let journal = open_connection(&path)?;
        migrate(&journal, &path)?;
        let graph = open_connection(&path)?;
        let nodes = count_nodes(&graph)?;
        Ok(SqliteStore {
            journal: Mutex::new(JournalConnection::new(journal)),
            graph: Mutex::new(graph),
            nodes: AtomicU64::new(nodes),
            _lock: Some(lock),
            path: Some(path),
        })
    }

    /// A store that lives in memory and is gone with the process.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if SQLite cannot start.
    pub fn in_memory() -> Result<Self> {
        let open = || -> Result<Connection> {
            let connection = Connection::open_in_memory().map_err(|e| store_error("open", e))?;
            migrate(&connection, Path::new(":memory:"))?;
            Ok(connection)
        };
        Ok(SqliteStore {
            journal: Mutex::new(JournalConnection::new(open()?)),
            graph: Mutex::new(open()?),
            nodes: AtomicU64::new(0),
            _lock: None,
            path: None,
        })
    }

    /// The database file, when on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// Rows appended between two compaction steps.
const COMPACTION_EVERY: usize = 4_096;

/// Rows (by rowid) one compaction step looks at, per table.
const COMPACTION_ROWS: i64 = 16_384;

/// Seconds between two writes of one session's `last_active`.
const TOUCH_SECONDS: i64 = 30;

/// What the journal's connection keeps between batches.
///
/// Session data is written append-only (events, messages and notes have no index), so a batch
/// touches a few pages at the end of each table rather than one page per session. Trimming only
/// moves a session's low-water mark (`first_seq`, `first_message`); the rows below it, and those
/// of deleted sessions, are removed by compaction: a full pass at start, and a step over the
/// next stretch of rowids after every `COMPACTION_EVERY` appended rows, cycling through the
/// tables.
#[derive(Debug)]
struct JournalConnection {
    connection: Connection,
    /// Session id to its integer key.
    keys: HashMap<SessionId, i64>,
    /// When each session's `last_active` was last written.
    touched: HashMap<i64, i64>,
    compaction: Compaction,
}

impl JournalConnection {
    fn new(connection: Connection) -> Self {
        JournalConnection {
            connection,
            keys: HashMap::new(),
            touched: HashMap::new(),
            compaction: Compaction::default(),
        }
    }
}

/// Statements that remove what no session needs any more, over whole tables.
const COMPACT_ALL: [&str; 3] = [
    "DELETE FROM events WHERE NOT EXISTS (SELECT 1 FROM sessions s \
     WHERE s.key = events.session_key AND events.seq >= s.first_seq)",
    "DELETE FROM messages WHERE NOT EXISTS (SELECT 1 FROM sessions s \
     WHERE s.key = messages.session_key AND messages.idx >= s.first_message)",
    "DELETE FROM notes WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.key = notes.session_key)",
];

/// Where incremental compaction goes on from.
#[derive(Debug, Default)]
struct Compaction {
    /// Rows appended since the last step.
    owed: usize,
    /// The next rowid to look at, per table of `COMPACT_ALL`.
    cursors: [i64; 3],
}

impl Compaction {
    /// Removes dead rows among the next `COMPACTION_ROWS` rowids of each table, wrapping around
    /// at the end.
    fn step(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<()> {
        for (sql, cursor) in COMPACT_ALL.iter().zip(self.cursors.iter_mut()) {
            let ranged = format!("{sql} AND rowid >= ?1 AND rowid < ?2");
            let end = *cursor + COMPACTION_ROWS;
            tx.prepare_cached(&ranged)
                .and_then(|mut s| s.execute(params![*cursor, end]))
                .map_err(|e| store_error("compact", e))?;
            let table = sql.split_whitespace().nth(2).unwrap_or("events");
            let last: i64 = tx
                .query_row(
                    &format!("SELECT COALESCE(MAX(rowid), 0) FROM {table}"),
                    [],
                    |row| row.get(0),
                )
                .map_err(|e| store_error("compact", e))?;
            *cursor = if end > last { 0 } else { end };
        }
        Ok(())
    }
}

fn count_nodes(connection: &Connection) -> Result<u64> {
    connection
        .query_row("SELECT count(*) FROM nodes", [], |row| row.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
        .map_err(|e| store_error("count nodes", e))
}

fn open_connection(path: &Path) -> Result<Connection> {
    let context = format!("cannot open database {}", path.display());
    let connection = Connection::open(path).map_err(|e| store_error(&context, e))?;
    connection
        .busy_timeout(Duration::from_secs(5))
        .map_err(|e| store_error(&context, e))?;
    // WAL lets the graph read while the journal writes; NORMAL syncs at checkpoints, so a
    // committed transaction survives a crash of the process (not of the machine's power).
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(|e| store_error(&context, e))?;
    Ok(connection)
}

/// The schema, one entry per version; entry `n` migrates from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE sessions (
    key INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    user_id TEXT,
    personality TEXT,
    owner TEXT,
    created_at INTEGER NOT NULL,
    last_active INTEGER NOT NULL,
    first_seq INTEGER NOT NULL DEFAULT 1,
    first_message INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE events (
    session_key INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE messages (
    session_key INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    tool_calls TEXT,
    tool_call_id TEXT,
    is_error INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE notes (
    session_key INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE TABLE nodes (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    label TEXT NOT NULL,
    content TEXT NOT NULL,
    properties TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX nodes_kind_content ON nodes (kind, content);
CREATE TABLE edges (
    id INTEGER PRIMARY KEY,
    source INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    target INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    properties TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    UNIQUE (source, target, kind)
);
CREATE INDEX edges_target ON edges (target);
CREATE VIRTUAL TABLE nodes_fts USING fts5 (
    label, content, content = 'nodes', content_rowid = 'id', tokenize = 'porter unicode61'
);
CREATE TRIGGER nodes_after_insert AFTER INSERT ON nodes BEGIN
    INSERT INTO nodes_fts (rowid, label, content) VALUES (new.id, new.label, new.content);
END;
CREATE TRIGGER nodes_after_delete AFTER DELETE ON nodes BEGIN
    INSERT INTO nodes_fts (nodes_fts, rowid, label, content)
        VALUES ('delete', old.id, old.label, old.content);
END;
CREATE TRIGGER nodes_after_update AFTER UPDATE ON nodes BEGIN
    INSERT INTO nodes_fts (nodes_fts, rowid, label, content)
        VALUES ('delete', old.id, old.label, old.content);
    INSERT INTO nodes_fts (rowid, label, content) VALUES (new.id, new.label, new.content);
END;
"#];

fn migrate(connection: &Connection, path: &Path) -> Result<()> {
    let context = format!("database {}", path.display());
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| {
            store_error(
                &format!("{context} cannot be read (is it a Sparky database?)"),
                e,
            )
        })?;
    if version > SCHEMA_VERSION {
        return Err(Error::Store(format!(
            "{context} has schema version {version}, newer than this build's {SCHEMA_VERSION}; \
             run a newer sparky or point --data-dir elsewhere"
        )));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let to = from as i64 + 1;
        connection
            .execute_batch(&format!("BEGIN; {sql} PRAGMA user_version = {to}; COMMIT;"))
            .map_err(|e| store_error(&format!("{context}: migration to version {to} failed"), e))?;
        log::info!("store: {context} migrated to schema version {to}");
    }
    Ok(())
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn role_from(name: &str) -> Role {
    match name {
        "system" => Role::System,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        _ => Role::User,
    }
}

fn calls_to_json(calls: &[ToolCall]) -> Option<String> {
    (!calls.is_empty()).then(|| {
        Value::Array(
            calls
                .iter()
                .map(|c| json!({"id": c.id, "name": c.name, "args": c.args}))
                .collect(),
        )
        .to_string()
    })
}

fn calls_from_json(text: Option<String>) -> Vec<ToolCall> {
    let Some(Ok(Value::Array(items))) = text.map(|t| serde_json::from_str::<Value>(&t)) else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| ToolCall {
            id: item["id"].as_str().unwrap_or_default().to_owned(),
            name: item["name"].as_str().unwrap_or_default().to_owned(),
            args: item["args"].clone(),
        })
        .collect()
}

fn node_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Node> {
    let properties: String = row.get(4)?;
    Ok(Node {
        id: row.get(0)?,
        kind: row.get(1)?,
        label: row.get(2)?,
        content: row.get(3)?,
        properties: serde_json::from_str(&properties).unwrap_or(Value::Null),
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
    })
}

const NODE_COLUMNS: &str = "id, kind, label, content, properties, created_at, updated_at";

fn get_node(connection: &Connection, id: i64) -> rusqlite::Result<Option<Node>> {
    connection
        .prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1"))?
        .query_row([id], node_from_row)
        .optional()
}

/// Common words that say nothing about what to look for.
const STOPWORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from",
    "how", "i", "in", "is", "it", "me", "my", "of", "on", "or", "tell", "that", "the", "this",
    "to", "was", "what", "when", "where", "which", "who", "why", "with", "you", "your",
];

/// The words of free text as quoted FTS5 terms (so that no input is a syntax error), without
/// stopwords unless nothing else is left.
fn fts_terms(text: &str) -> Vec<String> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .take(32)
        .collect();
    let meaningful: Vec<&String> = words
        .iter()
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect();
    let chosen: Vec<&String> = if meaningful.is_empty() {
        words.iter().collect()
    } else {
        meaningful
    };
    chosen
        .into_iter()
        .map(|word| format!("\"{word}\""))
        .collect()
}

/// FTS5 queries for free text, most selective first: nodes with every word, then (when there
/// are several words) nodes with any of them. BM25 ranks within each.
pub fn fts_queries(text: &str) -> Vec<String> {
    let terms = fts_terms(text);
    match terms.len() {
        0 => Vec::new(),
        1 => terms,
        _ => vec![terms.join(" AND "), terms.join(" OR ")],
    }
}

/// A fact's label: its first words, cut at a word boundary.
fn label_for(content: &str) -> String {
    let flat: String = content.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= LABEL_CHARS {
        return flat;
    }
    let cut: String = flat.chars().take(LABEL_CHARS).collect();
    let cut = cut.rsplit_once(' ').map_or(cut.as_str(), |(head, _)| head);
    format!("{cut}…")
}

impl Store for SqliteStore {
    fn apply(&self, batch: &[WriteOp]) -> Result<()> {
        let mut guard = self.journal.lock();
        let JournalConnection {
            connection,
            keys,
            touched,
            compaction,
        } = &mut *guard;
        let tx = connection
            .transaction()
            .map_err(|e| store_error("begin", e))?;
        let now = unix_now();
        let mut appended = 0;
        for op in batch {
            let session = match op {
                WriteOp::CreateSession { id, .. } => id,
                WriteOp::Event { session, .. }
                | WriteOp::TrimEvents { session, .. }
                | WriteOp::Messages { session, .. }
                | WriteOp::TrimMessages { session, .. }
                | WriteOp::Note { session, .. }
                | WriteOp::DeleteSession { session } => session,
            };
            if let WriteOp::CreateSession {
                id,
                user_id,
                personality,
                owner,
            } = op
            {
                tx.prepare_cached(
                    "INSERT INTO sessions (id, user_id, personality, owner, created_at, last_active) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                )
                .and_then(|mut s| s.execute(params![id.as_str(), user_id, personality, owner, now]))
                .map_err(|e| store_error("create session", e))?;
                keys.insert(id.clone(), tx.last_insert_rowid());
                touched.insert(tx.last_insert_rowid(), now);
                continue;
            }
            let key = match keys.get(session) {
                Some(&key) => key,
                None => {
                    let found: Option<i64> = tx
                        .query_row(
                            "SELECT key FROM sessions WHERE id = ?1",
                            [session.as_str()],
                            |row| row.get(0),
                        )
                        .optional()
                        .map_err(|e| store_error("find session", e))?;
                    // A write for a session the store does not hold (deleted, or its creation
                    // failed) is skipped rather than failing the whole batch.
                    let Some(key) = found else {
                        continue;
                    };
                    keys.insert(session.clone(), key);
                    key
                }
            };
            let result = match op {
                WriteOp::CreateSession { .. } => Ok(0),
                WriteOp::Event { seq, body, .. } => {
                    appended += 1;
                    tx.prepare_cached(
                        "INSERT INTO events (session_key, seq, body) VALUES (?1, ?2, ?3)",
                    )
                    .and_then(|mut s| s.execute(params![key, *seq as i64, &**body]))
                }
                WriteOp::TrimEvents { below, .. } => tx
                    .prepare_cached("UPDATE sessions SET first_seq = ?2 WHERE key = ?1")
                    .and_then(|mut s| s.execute(params![key, *below as i64])),
                WriteOp::Messages {
                    first, messages, ..
                } => {
                    let mut result = Ok(0);
                    for (i, message) in messages.iter().enumerate() {
                        appended += 1;
                        result = tx
                            .prepare_cached(
                                "INSERT INTO messages \
                                 (session_key, idx, role, content, tool_calls, tool_call_id, is_error) \
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                            )
                            .and_then(|mut s| {
                                s.execute(params![
                                    key,
                                    (*first + i as u64) as i64,
                                    role_name(message.role),
                                    message.content,
                                    calls_to_json(&message.tool_calls),
                                    message.tool_call_id,
                                    message.is_error,
                                ])
                            });
                        if result.is_err() {
                            break;
                        }
                    }
                    result
                }
                WriteOp::TrimMessages { below, .. } => tx
                    .prepare_cached("UPDATE sessions SET first_message = ?2 WHERE key = ?1")
                    .and_then(|mut s| s.execute(params![key, *below as i64])),
                WriteOp::Note { text, .. } => tx
                    .prepare_cached("INSERT INTO notes (session_key, text) VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(params![key, text])),
                WriteOp::DeleteSession { session } => {
                    keys.remove(session);
                    touched.remove(&key);
                    // Its events, messages and notes go with the next compaction passes.
                    tx.execute("DELETE FROM sessions WHERE key = ?1", [key])
                }
            };
            result.map_err(|e| store_error("write", e))?;
            // `last_active` needs only minute precision (it is for expiry after a restart), so
            // it is written at most every TOUCH_SECONDS per session.
            if matches!(op, WriteOp::Event { .. })
                && touched.get(&key).is_none_or(|at| now - at >= TOUCH_SECONDS)
            {
                touched.insert(key, now);
                tx.prepare_cached("UPDATE sessions SET last_active = ?2 WHERE key = ?1")
                    .and_then(|mut s| s.execute(params![key, now]))
                    .map_err(|e| store_error("write", e))?;
            }
        }
        compaction.owed += appended;
        if compaction.owed >= COMPACTION_EVERY {
            compaction.owed = 0;
            compaction.step(&tx)?;
        }
        tx.commit().map_err(|e| store_error("commit", e))
    }

    fn load_sessions(&self, timeout: Duration) -> Result<Vec<StoredSession>> {
        let mut guard = self.journal.lock();
        let JournalConnection {
            connection,
            keys,
            touched,
            ..
        } = &mut *guard;
        let now = unix_now();
        let cutoff = now.saturating_sub(timeout.as_secs() as i64);
        let tx = connection
            .transaction()
            .map_err(|e| store_error("begin", e))?;
        let expired = tx
            .execute("DELETE FROM sessions WHERE last_active < ?1", [cutoff])
            .map_err(|e| store_error("expire", e))?;
        if expired > 0 {
            log::info!("store: deleted {expired} expired sessions");
        }
        // A full compaction: everything of deleted sessions, and what trimming left behind.
        for sql in COMPACT_ALL {
            tx.execute(sql, []).map_err(|e| store_error("compact", e))?;
        }
        type Row = (
            i64,
            String,
            Option<String>,
            Option<String>,
            i64,
            i64,
            Option<String>,
        );
        let rows: Vec<Row> = tx
            .prepare(
                "SELECT key, id, user_id, personality, last_active, first_message, owner FROM sessions",
            )
            .and_then(|mut s| {
                s.query_map([], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                    ))
                })?
                .collect()
            })
            .map_err(|e| store_error("load sessions", e))?;
        let mut sessions: HashMap<i64, StoredSession> = HashMap::with_capacity(rows.len());
        for (key, id, user_id, personality, last_active, first_message, owner) in rows {
            let Some(session_id) = SessionId::parse(&id) else {
                log::warn!("store: skipping session with malformed id {id:?}");
                continue;
            };
            keys.insert(session_id.clone(), key);
            touched.insert(key, last_active);
            sessions.insert(
                key,
                StoredSession {
                    id: session_id,
                    user_id,
                    personality,
                    owner,
                    idle_for: Duration::from_secs(now.saturating_sub(last_active).max(0) as u64),
                    first_message: first_message.max(0) as u64,
                    messages: Vec::new(),
                    notes: Vec::new(),
                    events: Vec::new(),
                },
            );
        }
        tx.prepare("SELECT session_key, seq, body FROM events ORDER BY rowid")
            .and_then(|mut s| {
                let mut rows = s.query([])?;
                while let Some(row) = rows.next()? {
                    if let Some(session) = sessions.get_mut(&row.get::<_, i64>(0)?) {
                        session
                            .events
                            .push((row.get::<_, i64>(1)? as u64, row.get(2)?));
                    }
                }
                Ok(())
            })
            .map_err(|e| store_error("load events", e))?;
        tx.prepare(
            "SELECT session_key, role, content, tool_calls, tool_call_id, is_error FROM messages \
             ORDER BY rowid",
        )
        .and_then(|mut s| {
            let mut rows = s.query([])?;
            while let Some(row) = rows.next()? {
                if let Some(session) = sessions.get_mut(&row.get::<_, i64>(0)?) {
                    let role: String = row.get(1)?;
                    session.messages.push(ChatMessage {
                        role: role_from(&role),
                        content: row.get(2)?,
                        tool_calls: calls_from_json(row.get(3)?),
                        tool_call_id: row.get(4)?,
                        is_error: row.get(5)?,
                    });
                }
            }
            Ok(())
        })
        .map_err(|e| store_error("load messages", e))?;
        tx.prepare("SELECT session_key, text FROM notes ORDER BY rowid")
            .and_then(|mut s| {
                let mut rows = s.query([])?;
                while let Some(row) = rows.next()? {
                    if let Some(session) = sessions.get_mut(&row.get::<_, i64>(0)?) {
                        session.notes.push(row.get(1)?);
                    }
                }
                Ok(())
            })
            .map_err(|e| store_error("load notes", e))?;
        tx.commit().map_err(|e| store_error("commit", e))?;
        Ok(sessions.into_values().collect())
    }

    fn remember(&self, content: &str) -> Result<(Node, bool)> {
        let connection = self.graph.lock();
        let existing = connection
            .prepare_cached(&format!(
                "SELECT {NODE_COLUMNS} FROM nodes WHERE kind = 'fact' AND content = ?1"
            ))
            .and_then(|mut s| s.query_row([content], node_from_row).optional())
            .map_err(|e| store_error("remember", e))?;
        if let Some(node) = existing {
            return Ok((node, false));
        }
        drop(connection);
        let node = self.add_node("fact", &label_for(content), content, &json!({}))?;
        Ok((node, true))
    }

    fn search(&self, query: &str, kind: Option<&str>, limit: usize) -> Result<Vec<Node>> {
        let connection = self.graph.lock();
        let mut found: Vec<Node> = Vec::new();
        for fts in fts_queries(query) {
            if found.len() >= limit {
                break;
            }
            // Ask for enough to fill up after dropping what the stricter query found already.
            let nodes: Vec<Node> = connection
                .prepare_cached(
                    "SELECT n.id, n.kind, n.label, n.content, n.properties, n.created_at, n.updated_at \
                     FROM nodes_fts JOIN nodes n ON n.id = nodes_fts.rowid \
                     WHERE nodes_fts MATCH ?1 AND (?2 IS NULL OR n.kind = ?2) \
                     ORDER BY bm25(nodes_fts) LIMIT ?3",
                )
                .and_then(|mut s| s.query_map(params![fts, kind, limit as i64], node_from_row)?.collect())
                .map_err(|e| store_error("search", e))?;
            for node in nodes {
                if found.len() < limit && !found.iter().any(|known| known.id == node.id) {
                    found.push(node);
                }
            }
        }
        Ok(found)
    }

    fn add_node(&self, kind: &str, label: &str, content: &str, properties: &Value) -> Result<Node> {
        let connection = self.graph.lock();
        let now = unix_now();
        connection
            .prepare_cached(
                "INSERT INTO nodes (kind, label, content, properties, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )
            .and_then(|mut s| s.execute(params![kind, label, content, properties.to_string(), now]))
            .map_err(|e| store_error("add node", e))?;
        self.nodes.fetch_add(1, Ordering::Relaxed);
        let id = connection.last_insert_rowid();
        Ok(Node {
            id,
            kind: kind.to_owned(),
            label: label.to_owned(),
            content: content.to_owned(),
            properties: properties.clone(),
            created_at: now,
            updated_at: now,
        })
    }

    fn add_edge(&self, source: i64, target: i64, kind: &str, properties: &Value) -> Result<Edge> {
        let connection = self.graph.lock();
        for id in [source, target] {
            if get_node(&connection, id)
                .map_err(|e| store_error("add edge", e))?
                .is_none()
            {
                return Err(Error::Store(format!("there is no node #{id}")));
            }
        }
        connection
            .prepare_cached(
                "INSERT INTO edges (source, target, kind, properties, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (source, target, kind) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![source, target, kind, properties.to_string(), unix_now()]))
            .map_err(|e| store_error("add edge", e))?;
        connection
            .prepare_cached(
                "SELECT id, properties FROM edges WHERE source = ?1 AND target = ?2 AND kind = ?3",
            )
            .and_then(|mut s| {
                s.query_row(params![source, target, kind], |row| {
                    let properties: String = row.get(1)?;
                    Ok(Edge {
                        id: row.get(0)?,
                        source,
                        target,
                        kind: kind.to_owned(),
                        properties: serde_json::from_str(&properties).unwrap_or(Value::Null),
                    })
                })
            })
            .map_err(|e| store_error("add edge", e))
    }

    fn get(&self, id: i64) -> Result<Option<Neighbourhood>> {
        let connection = self.graph.lock();
        let Some(node) = get_node(&connection, id).map_err(|e| store_error("get", e))? else {
            return Ok(None);
        };
        let edges: Vec<Edge> = connection
            .prepare_cached(
                "SELECT id, source, target, kind, properties FROM edges WHERE source = ?1 OR target = ?1 ORDER BY id",
            )
            .and_then(|mut s| {
                s.query_map([id], |row| {
                    let properties: String = row.get(4)?;
                    Ok(Edge {
                        id: row.get(0)?,
                        source: row.get(1)?,
                        target: row.get(2)?,
                        kind: row.get(3)?,
                        properties: serde_json::from_str(&properties).unwrap_or(Value::Null),
                    })
                })?
                .collect()
            })
            .map_err(|e| store_error("get", e))?;
        let mut neighbours = Vec::with_capacity(edges.len());
        for edge in edges {
            let other = if edge.source == id {
                edge.target
            } else {
                edge.source
            };
            if let Some(node) = get_node(&connection, other).map_err(|e| store_error("get", e))? {
                neighbours.push((edge, node));
            }
        }
        Ok(Some(Neighbourhood { node, neighbours }))
    }

    fn delete(&self, id: i64) -> Result<bool> {
        let connection = self.graph.lock();
        let deleted = connection
            .execute("DELETE FROM nodes WHERE id = ?1", [id])
            .map(|n| n > 0)
            .map_err(|e| store_error("delete", e))?;
        if deleted {
            self.nodes.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(deleted)
    }

    fn node_count(&self) -> u64 {
        self.nodes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sparky-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn id(byte: u8) -> SessionId {
        SessionId::from_random_bytes([byte; 16])
    }

    #[test]
    fn remember_dedups_and_search_ranks() {
        let store = SqliteStore::in_memory().unwrap();
        let (cats, new) = store.remember("Cats purr when they are content").unwrap();
        assert!(new);
        let (again, new) = store.remember("Cats purr when they are content").unwrap();
        assert!(!new);
        assert_eq!(again.id, cats.id);
        store.remember("Dogs bark at the mail carrier").unwrap();
        store.remember("Some cats hate water").unwrap();
        let hits = store.search("why do cats purr?", None, 5).unwrap();
        assert_eq!(hits[0].id, cats.id);
        assert_eq!(hits.len(), 2);
        assert!(store.search("!!!", None, 5).unwrap().is_empty());
        assert!(
            store
                .search("\"unbalanced AND (", None, 5)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn edges_join_nodes_and_go_with_them() {
        let store = SqliteStore::in_memory().unwrap();
        let ann = store
            .add_node("person", "Ann", "Ann Smith", &json!({"age": 30}))
            .unwrap();
        let tea = store
            .add_node("thing", "tea", "green tea", &json!({}))
            .unwrap();
        let likes = store.add_edge(ann.id, tea.id, "likes", &json!({})).unwrap();
        assert_eq!(
            store
                .add_edge(ann.id, tea.id, "likes", &json!({}))
                .unwrap()
                .id,
            likes.id
        );
        assert!(store.add_edge(ann.id, 999, "likes", &json!({})).is_err());
        let around = store.get(tea.id).unwrap().unwrap();
        assert_eq!(around.neighbours.len(), 1);
        assert_eq!(around.neighbours[0].1.label, "Ann");
        assert!(store.delete(ann.id).unwrap());
        assert!(!store.delete(ann.id).unwrap());
        assert!(store.get(tea.id).unwrap().unwrap().neighbours.is_empty());
        assert!(store.search("Ann", None, 5).unwrap().is_empty());
    }

    #[test]
    fn sessions_round_trip_and_expire() {
        let dir = temp_dir("round-trip");
        let store = SqliteStore::open(&dir).unwrap();
        let message = ChatMessage::tool_calls(
            "",
            vec![ToolCall {
                id: "c".into(),
                name: "clock".into(),
                args: json!({}),
            }],
        );
        store
            .apply(&[
                WriteOp::CreateSession {
                    id: id(1),
                    user_id: Some("ann".into()),
                    personality: None,
                    owner: None,
                },
                WriteOp::Event {
                    session: id(1),
                    seq: 1,
                    body: "one".into(),
                },
                WriteOp::Event {
                    session: id(1),
                    seq: 2,
                    body: "two".into(),
                },
                WriteOp::TrimEvents {
                    session: id(1),
                    below: 2,
                },
                WriteOp::Messages {
                    session: id(1),
                    first: 0,
                    messages: vec![message.clone()],
                },
                WriteOp::Note {
                    session: id(1),
                    text: "n1".into(),
                },
                WriteOp::Note {
                    session: id(1),
                    text: "n2".into(),
                },
                WriteOp::CreateSession {
                    id: id(2),
                    user_id: None,
                    personality: None,
                    owner: None,
                },
                WriteOp::DeleteSession { session: id(2) },
            ])
            .unwrap();
        drop(store);
        let store = SqliteStore::open(&dir).unwrap();
        let sessions = store.load_sessions(Duration::from_secs(3600)).unwrap();
        assert_eq!(sessions.len(), 1);
        let session = &sessions[0];
        assert_eq!(session.user_id.as_deref(), Some("ann"));
        assert_eq!(session.events, [(2, "two".to_owned())]);
        assert_eq!(session.messages, [message]);
        assert_eq!(session.notes, ["n1", "n2"]);
    }

    #[test]
    fn compaction_removes_trimmed_and_deleted_rows_as_it_goes() {
        let dir = temp_dir("compaction");
        let store = SqliteStore::open(&dir).unwrap();
        store.load_sessions(Duration::from_secs(3600)).unwrap();
        let (kept, gone) = (id(3), id(4));
        store
            .apply(&[
                WriteOp::CreateSession {
                    id: kept.clone(),
                    user_id: None,
                    personality: None,
                    owner: None,
                },
                WriteOp::CreateSession {
                    id: gone.clone(),
                    user_id: None,
                    personality: None,
                    owner: None,
                },
            ])
            .unwrap();
        for seq in 1..=3 * COMPACTION_EVERY as u64 {
            let mut batch = vec![
                WriteOp::Event {
                    session: kept.clone(),
                    seq,
                    body: "k".into(),
                },
                WriteOp::Event {
                    session: gone.clone(),
                    seq,
                    body: "g".into(),
                },
            ];
            if seq % 100 == 0 {
                batch.push(WriteOp::TrimEvents {
                    session: kept.clone(),
                    below: seq - 50,
                });
            }
            store.apply(&batch).unwrap();
        }
        store
            .apply(&[WriteOp::DeleteSession { session: gone }])
            .unwrap();
        let rows = |store: &SqliteStore| -> i64 {
            let guard = store.journal.lock();
            guard
                .connection
                .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                .unwrap()
        };
        // Steps ran along the way: far fewer rows than were written.
        assert!(
            rows(&store) < 4 * COMPACTION_EVERY as i64,
            "{}",
            rows(&store)
        );
        drop(store);
        let store = SqliteStore::open(&dir).unwrap();
        let sessions = store.load_sessions(Duration::from_secs(3600)).unwrap();
        assert_eq!(sessions.len(), 1);
        let seqs: Vec<u64> = sessions[0].events.iter().map(|(seq, _)| *seq).collect();
        let last = 3 * COMPACTION_EVERY as u64;
        let first = last / 100 * 100 - 50;
        assert_eq!(seqs, (first..=last).collect::<Vec<_>>());
        assert_eq!(rows(&store), seqs.len() as i64);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = temp_dir("locked");
        let _first = SqliteStore::open(&dir).unwrap();
        let second = SqliteStore::open(&dir).unwrap_err().to_string();
        assert!(
            second.contains("in use by another running sparky"),
            "{second}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(DATABASE_FILE), vec![0x42; 8192]).unwrap();
        let error = SqliteStore::open(&dir).unwrap_err().to_string();
        assert!(error.contains("sparky.db"), "{error}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = temp_dir("newer");
        drop(SqliteStore::open(&dir).unwrap());
        let connection = Connection::open(dir.join(DATABASE_FILE)).unwrap();
        connection
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        drop(connection);
        let error = SqliteStore::open(&dir).unwrap_err().to_string();
        assert!(error.contains("newer than this build"), "{error}");
    }

    #[test]
    fn labels_are_cut_at_a_word() {
        assert_eq!(label_for("short  fact"), "short fact");
        let long = "word ".repeat(30);
        let label = label_for(&long);
        assert!(label.ends_with('…') && label.chars().count() <= LABEL_CHARS + 1);
    }
}
