//! `SqliteStore`: both store traits over one SQLite file in WAL mode (or a private in-memory
//! database for `--in-memory`).
//!
//! One writer connection, behind a mutex, takes the journal's batches and the graph's writes.
//! A small pool of reader connections serves everything else (loading a conversation, replay,
//! the API, graph searches): WAL lets them read while the writer writes, so a slow search never
//! holds up a commit or another reader. A full-text search keeps at most [`super::MAX_SEARCH_WORDS`]
//! words and runs within a time budget (SQLite's progress handler interrupts it), so that no
//! search holds a reader for long: one that runs out returns what it found so far.

pub(super) mod schema;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::Value;

use self::schema::migrate;
use super::copy::{Exported, ExportedConversation, ExportedEdge, ExportedNode};
use super::{
    ConversationStore, ConversationSummary, DEFAULT_SEARCH_BUDGET, EMBEDDED_TEXT, Edge, EventPage,
    GraphStore, Neighbourhood, Node, StoreStatus, StoredConversation, TITLE_CHARS, TurnMark,
    WriteOp, best, calls_from_json, calls_to_json, cut, label_for, messages_from_newest, role_from,
    role_name, search_words, stored_similarity, unix_now, vector_bytes,
};
use crate::error::{Error, Result};
use crate::model::ChatMessage;
use crate::protocol::{SessionId, Usage};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "sparky.db";

/// Reader connections in the pool.
const READERS: usize = 4;

/// SQLite virtual-machine instructions between two looks at a search's clock: a few
/// microseconds of work, so a search overruns its budget by little, and the clock costs
/// nothing measurable.
const PROGRESS_OPS: i32 = 1000;

/// The SQLite store. See the module documentation for its connections.
#[derive(Debug)]
pub struct SqliteStore {
    writer: Mutex<Writer>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// How long a full-text search may run, in microseconds.
    search_budget_micros: AtomicU64,
    /// Nodes in the graph, kept beside the table so that a turn can skip the memory lookup on
    /// an empty graph without a query.
    nodes: AtomicU64,
    /// Held (and locked) for as long as the store is open.
    _lock: Option<File>,
    path: Option<PathBuf>,
}

/// The writer connection and what it remembers between batches.
#[derive(Debug)]
struct Writer {
    connection: Connection,
    /// Conversation id to its integer key.
    keys: HashMap<SessionId, i64>,
}

/// `duration` in whole microseconds, saturating.
fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// True when `e` is a statement stopped by the progress handler: a search out of time.
fn interrupted(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted)
}

fn store_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{context}: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`, takes the directory's lock, and migrates
    /// the schema to [`super::SCHEMA_VERSION`].
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
        let name = path.to_string_lossy().into_owned();
        let mut store = Self::connect(&name, &format!("database {}", path.display()))?;
        store._lock = Some(lock);
        store.path = Some(path);
        Ok(store)
    }

    /// What [`open`](Self::open) would find in `dir`, without changing anything: for
    /// `sparky check`. Says whether the database is new, current, or to be migrated.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] with the reason `open` would fail: the directory cannot be written,
    /// another server holds it, the file is not a database, or its schema is newer than this
    /// build.
    pub fn inspect(dir: &Path) -> Result<String> {
        let probe = dir.join(".sparky-check");
        let existed = dir.exists();
        let writable = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&probe, b""));
        let _ = std::fs::remove_file(&probe);
        if !existed {
            let _ = std::fs::remove_dir(dir);
        }
        writable.map_err(|e| store_error(&format!("{} is not writable", dir.display()), e))?;
        if let Ok(lock) = File::open(dir.join("LOCK"))
            && lock.try_lock().is_err()
        {
            return Err(Error::Store(format!(
                "{} is in use by another running sparky",
                dir.display()
            )));
        }
        let path = dir.join(DATABASE_FILE);
        if !path.exists() {
            return Ok(format!(
                "{} is new; the store will be created",
                dir.display()
            ));
        }
        let connection = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| store_error(&format!("cannot open {}", path.display()), e))?;
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| store_error(&format!("{} is not a Sparky database", path.display()), e))?;
        match version {
            v if v > super::SCHEMA_VERSION => Err(Error::Store(format!(
                "{} has schema version {v}, newer than this build's {}",
                path.display(),
                super::SCHEMA_VERSION
            ))),
            v if v < super::SCHEMA_VERSION => Ok(format!(
                "{}: schema version {v}, migrated to {} at start",
                path.display(),
                super::SCHEMA_VERSION
            )),
            v => Ok(format!("{}: schema version {v}", path.display())),
        }
    }

    /// A store that lives in memory and is gone with the process. Its connections share one
    /// private database (SQLite's `memdb` VFS), so it behaves like the file store.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if SQLite cannot start.
    pub fn in_memory() -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("file:/sparky-{}-{n}?vfs=memdb", std::process::id());
        Self::connect(&name, "in-memory database")
    }

    fn connect(name: &str, context: &str) -> Result<Self> {
        let mut writer = open_connection(name, context)?;
        migrate(&mut writer, context)?;
        let readers = (0..READERS)
            .map(|_| open_connection(name, context).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let nodes = writer
            .query_row("SELECT count(*) FROM nodes", [], |row| row.get::<_, i64>(0))
            .map_err(|e| store_error("count nodes", e))?;
        Ok(SqliteStore {
            writer: Mutex::new(Writer {
                connection: writer,
                keys: HashMap::new(),
            }),
            readers,
            next_reader: AtomicUsize::new(0),
            search_budget_micros: AtomicU64::new(micros(DEFAULT_SEARCH_BUDGET)),
            nodes: AtomicU64::new(nodes.max(0) as u64),
            _lock: None,
            path: None,
        })
    }

    /// The database file, when on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Gives every full-text search from now on `budget` to run (default
    /// [`DEFAULT_SEARCH_BUDGET`]): graph searches, memory lookups and the conversation search.
    /// A search that runs out is interrupted and returns what it had found, which may be
    /// nothing; it is not an error.
    pub fn set_search_budget(&self, budget: Duration) {
        self.search_budget_micros
            .store(micros(budget), Ordering::Relaxed);
    }

    /// A reader connection: a free one if there is one, else it waits for one. The guard is
    /// held for one query.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let count = self.readers.len();
        let free = (0..count).find_map(|i| self.readers[(start + i) % count].try_lock());
        match free {
            Some(connection) => connection,
            None => self.readers[start % count].lock(),
        }
    }

    /// `owner`'s conversations with every word of `text` in one message, most recently active
    /// first, within the search budget (an empty list when it runs out).
    fn search_conversations(
        &self,
        owner: &str,
        text: &str,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>> {
        let Some(fts) = fts_queries(text).into_iter().next() else {
            return Ok(Vec::new());
        };
        self.read_searching("search conversations", |connection| {
            let rows = (|| -> rusqlite::Result<Vec<Option<ConversationSummary>>> {
                connection
                    .prepare_cached(&format!(
                        "SELECT {SUMMARY_COLUMNS} FROM sessions WHERE owner = ?1 AND key IN \
                         (SELECT session_key FROM event_text WHERE event_text MATCH ?2) \
                         ORDER BY updated_at DESC, key DESC LIMIT ?3"
                    ))?
                    .query_map(params![owner, fts, limit as i64], summary_from_row)?
                    .collect()
            })();
            match rows {
                Ok(rows) => Ok(rows.into_iter().flatten().collect()),
                Err(e) if interrupted(&e) => {
                    log::debug!("store: a conversation search ran out of time");
                    Ok(Vec::new())
                }
                Err(e) => Err(e),
            }
        })
    }

    /// Runs `query` on a reader connection.
    fn read<T>(
        &self,
        what: &str,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        query(&self.reader()).map_err(|e| store_error(what, e))
    }

    /// Runs a full-text `search` on a reader connection within the search budget: SQLite's
    /// progress handler interrupts it once the budget has passed, and every statement it runs
    /// from then on fails with [`interrupted`] errors, which `search` turns into a shorter
    /// answer.
    fn read_searching<T>(
        &self,
        what: &str,
        search: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let budget = Duration::from_micros(self.search_budget_micros.load(Ordering::Relaxed));
        let deadline = Instant::now() + budget;
        let mut connection = self.reader();
        connection
            .progress_handler(PROGRESS_OPS, Some(move || Instant::now() >= deadline))
            .map_err(|e| store_error(what, e))?;
        let result = search(&connection);
        // The connection goes back to the pool without a handler, for queries with no budget.
        let cleared = connection.progress_handler(0, None::<fn() -> bool>);
        let value = result.map_err(|e| store_error(what, e))?;
        cleared.map_err(|e| store_error(what, e))?;
        Ok(value)
    }

    /// Reads everything the store holds for `sparky migrate-store`, handing each conversation,
    /// then each node, then each edge to `sink`, on one reader connection.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store cannot be read, or what `sink` returns.
    pub(super) fn export(&self, sink: &mut dyn FnMut(&Exported) -> Result<()>) -> Result<()> {
        let connection = self.reader();
        let failed = |e: rusqlite::Error| store_error("read for the copy", e);
        let keys: Vec<i64> = connection
            .prepare("SELECT key FROM sessions ORDER BY key")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(failed)?;
        for key in keys {
            let conversation = export_conversation(&connection, key).map_err(failed)?;
            sink(&Exported::Conversation(Box::new(conversation)))?;
        }
        let nodes: Vec<ExportedNode> = connection
            .prepare(
                "SELECT id, owner, kind, label, content, properties, created_at, updated_at \
                 FROM nodes ORDER BY id",
            )
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| {
                        let properties: String = row.get(5)?;
                        Ok(ExportedNode {
                            id: row.get(0)?,
                            owner: row.get(1)?,
                            kind: row.get(2)?,
                            label: row.get(3)?,
                            content: row.get(4)?,
                            properties: serde_json::from_str(&properties).unwrap_or(Value::Null),
                            created_at: row.get(6)?,
                            updated_at: row.get(7)?,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(failed)?;
        for node in nodes {
            sink(&Exported::Node(node))?;
        }
        let edges: Vec<ExportedEdge> = connection
            .prepare("SELECT source, target, kind, properties, created_at FROM edges ORDER BY id")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| {
                        let properties: String = row.get(3)?;
                        Ok(ExportedEdge {
                            source: row.get(0)?,
                            target: row.get(1)?,
                            kind: row.get(2)?,
                            properties: serde_json::from_str(&properties).unwrap_or(Value::Null),
                            created_at: row.get(4)?,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(failed)?;
        for edge in edges {
            sink(&Exported::Edge(edge))?;
        }
        Ok(())
    }

    /// Runs `write` on the writer connection.
    fn write<T>(
        &self,
        what: &str,
        write: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let writer = self.writer.lock();
        write(&writer.connection).map_err(|e| store_error(what, e))
    }
}

/// One conversation and everything in it, for the copy.
fn export_conversation(
    connection: &Connection,
    key: i64,
) -> rusqlite::Result<ExportedConversation> {
    let mut conversation = connection.query_row(
        "SELECT id, owner, user_id, personality, title, created_at, updated_at, last_seq, \
         turns, open_turn, open_text, first_seq, first_message, model, prompt_tokens, \
         completion_tokens FROM sessions WHERE key = ?1",
        [key],
        |row| {
            Ok(ExportedConversation {
                id: row.get(0)?,
                owner: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                user_id: row.get(2)?,
                personality: row.get(3)?,
                title: row.get(4)?,
                created_at: row.get(5)?,
                updated_at: row.get(6)?,
                last_seq: row.get(7)?,
                turns: row.get(8)?,
                open_turn: row.get(9)?,
                open_text: row.get(10)?,
                first_seq: row.get(11)?,
                first_message: row.get(12)?,
                model: row.get(13)?,
                prompt_tokens: row.get(14)?,
                completion_tokens: row.get(15)?,
                ..ExportedConversation::default()
            })
        },
    )?;
    conversation.events = connection
        .prepare(
            "SELECT e.seq, e.body, t.text FROM events e \
             LEFT JOIN event_text t ON t.rowid = e.rowid \
             WHERE e.session_key = ?1 ORDER BY e.seq",
        )?
        .query_map([key], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    conversation.messages = connection
        .prepare(
            "SELECT idx, role, content, tool_calls, tool_call_id, is_error FROM messages \
             WHERE session_key = ?1 ORDER BY idx",
        )?
        .query_map([key], |row| {
            let role: String = row.get(1)?;
            Ok((
                row.get(0)?,
                ChatMessage {
                    role: role_from(&role),
                    content: row.get(2)?,
                    tool_calls: calls_from_json(row.get(3)?),
                    tool_call_id: row.get(4)?,
                    is_error: row.get(5)?,
                    images: Vec::new(),
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    conversation.notes = connection
        .prepare("SELECT text FROM notes WHERE session_key = ?1 ORDER BY rowid")?
        .query_map([key], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(conversation)
}

fn open_connection(name: &str, context: &str) -> Result<Connection> {
    let connection = Connection::open_with_flags(
        name,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| store_error(&format!("cannot open {context}"), e))?;
    connection
        .busy_timeout(Duration::from_secs(5))
        .map_err(|e| store_error(context, e))?;
    // WAL lets readers read while the writer writes; NORMAL syncs at checkpoints, so a
    // committed transaction survives a crash of the process (not of the machine's power). The
    // in-memory database ignores the journal mode.
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(|e| store_error(context, e))?;
    Ok(connection)
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

fn get_node(connection: &Connection, owner: &str, id: i64) -> rusqlite::Result<Option<Node>> {
    connection
        .prepare_cached(&format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1 AND owner = ?2"
        ))?
        .query_row(params![id, owner], node_from_row)
        .optional()
}

fn summary_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<ConversationSummary>> {
    let id: String = row.get(0)?;
    Ok(SessionId::parse(&id).map(|id| ConversationSummary {
        id,
        title: row.get(1).ok().flatten(),
        created_at: row.get(2).unwrap_or(0),
        updated_at: row.get(3).unwrap_or(0),
        turns: row.get::<_, i64>(4).unwrap_or(0).max(0) as u64,
        model: row.get(5).ok().flatten(),
        usage: Usage {
            prompt_tokens: row.get::<_, i64>(6).unwrap_or(0).max(0) as u64,
            completion_tokens: row.get::<_, i64>(7).unwrap_or(0).max(0) as u64,
        },
        open: row.get::<_, bool>(8).unwrap_or(false),
    }))
}

const SUMMARY_COLUMNS: &str = "id, title, created_at, updated_at, turns, model, prompt_tokens, \
     completion_tokens, open_turn IS NOT NULL";

/// The words of free text as quoted FTS5 terms (see [`search_words`]), so that no input is a
/// syntax error.
fn fts_terms(text: &str) -> Vec<String> {
    search_words(text)
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

/// Adds to `found`, best first, `owner`'s nodes (of `kind`, when given) that match the FTS5
/// query `fts` and are not in it yet, until it holds `limit`.
///
/// Ranking reads the full-text index alone; a node's row is read only for the best-ranked
/// candidates, one at a time, until enough belong to `owner`. Joining `nodes` in the ranking
/// query instead would read every matching row, and `owner` sits after `content` in the row
/// (version 2 added it), so checking it walks every page of a long fact.
fn add_matches(
    connection: &Connection,
    fts: &str,
    owner: &str,
    kind: Option<&str>,
    limit: usize,
    found: &mut Vec<Node>,
) -> rusqlite::Result<()> {
    let mut ranked = connection.prepare_cached(
        "SELECT rowid FROM nodes_fts WHERE nodes_fts MATCH ?1 ORDER BY bm25(nodes_fts)",
    )?;
    let mut candidate = connection.prepare_cached(&format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1 AND owner = ?2 \
         AND (?3 IS NULL OR kind = ?3)"
    ))?;
    let mut ids = ranked.query([fts])?;
    while found.len() < limit {
        let Some(row) = ids.next()? else {
            break;
        };
        let id: i64 = row.get(0)?;
        if found.iter().any(|known| known.id == id) {
            continue;
        }
        if let Some(node) = candidate
            .query_row(params![id, owner, kind], node_from_row)
            .optional()?
        {
            found.push(node);
        }
    }
    Ok(())
}

/// What a batch changes in one session row, gathered so that each row is updated once.
#[derive(Default)]
struct RowUpdate {
    last_seq: u64,
    /// The highest turn opened.
    turns: u64,
    /// `Some(None)`: the open turn closed; `Some(Some(..))`: a turn opened.
    open: Option<Option<(u64, String)>>,
    /// The first turn opened in the batch: a title, when the row has none yet.
    title: Option<String>,
    /// Tokens the turns closed in the batch used.
    usage: Usage,
}

/// The integer key of a conversation, or `None` when the store does not hold it.
fn session_key(
    keys: &mut HashMap<SessionId, i64>,
    tx: &rusqlite::Transaction<'_>,
    id: &SessionId,
) -> rusqlite::Result<Option<i64>> {
    if let Some(&key) = keys.get(id) {
        return Ok(Some(key));
    }
    let found: Option<i64> = tx
        .prepare_cached("SELECT key FROM sessions WHERE id = ?1")?
        .query_row([id.as_str()], |row| row.get(0))
        .optional()?;
    if let Some(key) = found {
        keys.insert(id.clone(), key);
    }
    Ok(found)
}

impl Writer {
    fn apply(&mut self, batch: &[WriteOp]) -> rusqlite::Result<()> {
        let Writer { connection, keys } = self;
        let tx = connection.transaction()?;
        let now = unix_now();
        let mut rows: HashMap<i64, RowUpdate> = HashMap::new();
        for op in batch {
            match op {
                WriteOp::CreateSession {
                    id,
                    owner,
                    user_id,
                    personality,
                    model,
                } => {
                    tx.prepare_cached(
                        "INSERT INTO sessions \
                         (id, owner, user_id, personality, model, created_at, updated_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    )?
                    .execute(params![
                        id.as_str(),
                        owner,
                        user_id,
                        personality,
                        model,
                        now
                    ])?;
                    keys.insert(id.clone(), tx.last_insert_rowid());
                }
                WriteOp::Event {
                    session,
                    seq,
                    body,
                    turn,
                    search_text,
                } => {
                    // A write for a conversation the store does not hold (deleted meanwhile)
                    // is skipped rather than failing the whole batch; so are the others below.
                    let Some(key) = session_key(keys, &tx, session)? else {
                        continue;
                    };
                    tx.prepare_cached(
                        "INSERT INTO events (session_key, seq, body) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![key, *seq as i64, &**body])?;
                    if let Some(text) = search_text {
                        let rowid = tx.last_insert_rowid();
                        tx.prepare_cached(
                            "INSERT INTO event_text (rowid, text, session_key) VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![rowid, text, key])?;
                    }
                    let row = rows.entry(key).or_default();
                    row.last_seq = row.last_seq.max(*seq);
                    match turn {
                        TurnMark::None => {}
                        TurnMark::Opened { turn_id, text } => {
                            row.open = Some(Some((*turn_id, text.clone())));
                            row.turns = row.turns.max(*turn_id);
                            row.title.get_or_insert_with(|| cut(text, TITLE_CHARS));
                        }
                        TurnMark::Closed { usage } => {
                            row.open = Some(None);
                            row.usage = row.usage.plus(*usage);
                        }
                    }
                }
                WriteOp::Messages {
                    session,
                    first,
                    messages,
                } => {
                    let Some(key) = session_key(keys, &tx, session)? else {
                        continue;
                    };
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO messages \
                         (session_key, idx, role, content, tool_calls, tool_call_id, is_error) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?;
                    for (i, message) in messages.iter().enumerate() {
                        insert.execute(params![
                            key,
                            (*first + i as u64) as i64,
                            role_name(message.role),
                            message.content,
                            calls_to_json(&message.tool_calls),
                            message.tool_call_id,
                            message.is_error,
                        ])?;
                    }
                }
                WriteOp::TrimMessages { session, below } => {
                    if let Some(key) = session_key(keys, &tx, session)? {
                        tx.prepare_cached("UPDATE sessions SET first_message = ?2 WHERE key = ?1")?
                            .execute(params![key, *below as i64])?;
                    }
                }
                WriteOp::Note { session, text } => {
                    if let Some(key) = session_key(keys, &tx, session)? {
                        tx.prepare_cached("INSERT INTO notes (session_key, text) VALUES (?1, ?2)")?
                            .execute(params![key, text])?;
                    }
                }
                WriteOp::Rename {
                    session,
                    owner,
                    title,
                } => {
                    tx.prepare_cached(
                        "UPDATE sessions SET title = ?3 WHERE id = ?1 AND owner = ?2",
                    )?
                    .execute(params![session.as_str(), owner, title])?;
                }
                WriteOp::DeleteSession { session } => {
                    let Some(key) = session_key(keys, &tx, session)? else {
                        continue;
                    };
                    rows.remove(&key);
                    keys.remove(session);
                    tx.execute(
                        "DELETE FROM event_text WHERE rowid IN \
                         (SELECT rowid FROM events WHERE session_key = ?1)",
                        [key],
                    )?;
                    for table in ["events", "messages", "notes"] {
                        tx.execute(
                            &format!("DELETE FROM {table} WHERE session_key = ?1"),
                            [key],
                        )?;
                    }
                    tx.execute("DELETE FROM sessions WHERE key = ?1", [key])?;
                }
            }
        }
        for (key, row) in rows {
            tx.prepare_cached(
                "UPDATE sessions SET last_seq = MAX(last_seq, ?2), turns = MAX(turns, ?3), \
                 updated_at = ?4, prompt_tokens = prompt_tokens + ?5, \
                 completion_tokens = completion_tokens + ?6 WHERE key = ?1",
            )?
            .execute(params![
                key,
                row.last_seq as i64,
                row.turns as i64,
                now,
                i64::try_from(row.usage.prompt_tokens).unwrap_or(i64::MAX),
                i64::try_from(row.usage.completion_tokens).unwrap_or(i64::MAX),
            ])?;
            match row.open {
                None => {}
                Some(None) => {
                    tx.prepare_cached(
                        "UPDATE sessions SET open_turn = NULL, open_text = NULL WHERE key = ?1",
                    )?
                    .execute([key])?;
                }
                Some(Some((turn, text))) => {
                    tx.prepare_cached(
                        "UPDATE sessions SET open_turn = ?2, open_text = ?3 WHERE key = ?1",
                    )?
                    .execute(params![key, turn as i64, text])?;
                }
            }
            if let Some(title) = row.title {
                tx.prepare_cached(
                    "UPDATE sessions SET title = ?2 WHERE key = ?1 AND title IS NULL",
                )?
                .execute(params![key, title])?;
            }
        }
        tx.commit()
    }
}

impl ConversationStore for SqliteStore {
    fn apply(&self, batch: &[WriteOp]) -> Result<()> {
        self.writer
            .lock()
            .apply(batch)
            .map_err(|e| store_error("write", e))
    }

    fn load(
        &self,
        id: &SessionId,
        tail: usize,
        messages: usize,
    ) -> Result<Option<StoredConversation>> {
        self.read("load conversation", |connection| {
            let tx = connection.unchecked_transaction()?;
            type Row = (
                i64,
                String,
                Option<String>,
                Option<String>,
                i64,
                i64,
                Option<i64>,
                Option<String>,
                i64,
                Option<String>,
            );
            let row: Option<Row> = tx
                .prepare_cached(
                    "SELECT key, owner, user_id, personality, last_seq, turns, open_turn, \
                     open_text, first_message, model FROM sessions WHERE id = ?1",
                )?
                .query_row([id.as_str()], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                        row.get(7)?,
                        row.get(8)?,
                        row.get(9)?,
                    ))
                })
                .optional()?;
            let Some((key, owner, user_id, personality, last_seq, turns, open, text, first, model)) =
                row
            else {
                return Ok(None);
            };
            let loaded: Vec<(u64, ChatMessage)> = tx
                .prepare_cached(
                    "SELECT idx, role, content, tool_calls, tool_call_id, is_error FROM messages \
                     WHERE session_key = ?1 AND idx >= ?2 ORDER BY idx DESC LIMIT ?3",
                )?
                .query_map(params![key, first, messages as i64], |row| {
                    let role: String = row.get(1)?;
                    Ok((
                        row.get::<_, i64>(0)?.max(0) as u64,
                        ChatMessage {
                            role: role_from(&role),
                            content: row.get(2)?,
                            tool_calls: calls_from_json(row.get(3)?),
                            tool_call_id: row.get(4)?,
                            is_error: row.get(5)?,
                            images: Vec::new(),
                        },
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let (first_message, messages) = messages_from_newest(loaded, first);
            let notes = tx
                .prepare_cached("SELECT text FROM notes WHERE session_key = ?1 ORDER BY rowid")?
                .query_map([key], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut events: Vec<(u64, String)> = tx
                .prepare_cached(
                    "SELECT seq, body FROM events WHERE session_key = ?1 ORDER BY seq DESC LIMIT ?2",
                )?
                .query_map(params![key, tail as i64], |row| {
                    Ok((row.get::<_, i64>(0)?.max(0) as u64, row.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            events.reverse();
            Ok(Some(StoredConversation {
                id: id.clone(),
                owner,
                user_id,
                personality,
                model,
                last_seq: last_seq.max(0) as u64,
                turns: turns.max(0) as u64,
                open_turn: open.map(|turn| (turn.max(0) as u64, text.unwrap_or_default())),
                first_message,
                messages,
                notes,
                tail: events,
            }))
        })
    }

    fn events(
        &self,
        id: &SessionId,
        after: u64,
        up_to: u64,
        max_bytes: usize,
    ) -> Result<EventPage> {
        self.read("read events", |connection| {
            let tx = connection.unchecked_transaction()?;
            let Some((key, first_seq)) = tx
                .prepare_cached("SELECT key, first_seq FROM sessions WHERE id = ?1")?
                .query_row([id.as_str()], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })
                .optional()?
            else {
                return Ok(EventPage::default());
            };
            let mut statement = tx.prepare_cached(
                "SELECT seq, body FROM events WHERE session_key = ?1 AND seq > ?2 AND seq <= ?3 \
                 ORDER BY seq",
            )?;
            let mut rows = statement.query(params![key, after as i64, up_to as i64])?;
            let mut events = Vec::new();
            let mut bytes = 0;
            while bytes < max_bytes {
                let Some(row) = rows.next()? else {
                    break;
                };
                let body: String = row.get(1)?;
                bytes += body.len();
                events.push((row.get::<_, i64>(0)?.max(0) as u64, body));
            }
            Ok(EventPage {
                events,
                first_seq: first_seq.max(1) as u64,
            })
        })
    }

    fn events_before(
        &self,
        owner: &str,
        id: &SessionId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Option<Vec<String>>> {
        self.read("read events", |connection| {
            let tx = connection.unchecked_transaction()?;
            let Some(key) = tx
                .prepare_cached("SELECT key FROM sessions WHERE id = ?1 AND owner = ?2")?
                .query_row(params![id.as_str(), owner], |row| row.get::<_, i64>(0))
                .optional()?
            else {
                return Ok(None);
            };
            let before = before.map_or(i64::MAX, |seq| i64::try_from(seq).unwrap_or(i64::MAX));
            let mut bodies: Vec<String> = tx
                .prepare_cached(
                    "SELECT body FROM events WHERE session_key = ?1 AND seq < ?2 \
                     ORDER BY seq DESC LIMIT ?3",
                )?
                .query_map(params![key, before, limit as i64], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            bodies.reverse();
            Ok(Some(bodies))
        })
    }

    fn list(
        &self,
        owner: &str,
        query: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>> {
        if let Some(text) = query {
            return self.search_conversations(owner, text, limit);
        }
        self.read("list conversations", |connection| {
            let rows: Vec<Option<ConversationSummary>> = connection
                .prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM sessions WHERE owner = ?1 \
                     ORDER BY updated_at DESC, key DESC LIMIT ?2"
                ))?
                .query_map(params![owner, limit as i64], summary_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows.into_iter().flatten().collect())
        })
    }

    fn summary(&self, owner: &str, id: &SessionId) -> Result<Option<ConversationSummary>> {
        self.read("read conversation", |connection| {
            Ok(connection
                .prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM sessions WHERE id = ?1 AND owner = ?2"
                ))?
                .query_row(params![id.as_str(), owner], summary_from_row)
                .optional()?
                .flatten())
        })
    }

    fn idle(&self, idle: Duration, limit: usize) -> Result<Vec<SessionId>> {
        let cutoff = unix_now().saturating_sub(i64::try_from(idle.as_secs()).unwrap_or(i64::MAX));
        self.read("find idle conversations", |connection| {
            let ids: Vec<String> = connection
                .prepare_cached("SELECT id FROM sessions WHERE updated_at < ?1 LIMIT ?2")?
                .query_map(params![cutoff, limit as i64], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(ids.iter().filter_map(|id| SessionId::parse(id)).collect())
        })
    }

    fn count(&self, owner: &str) -> Result<u64> {
        self.read("count conversations", |connection| {
            connection
                .prepare_cached("SELECT count(*) FROM sessions WHERE owner = ?1")?
                .query_row([owner], |row| row.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
        })
    }

    fn set_size_limit(&self, bytes: Option<u64>) -> Result<()> {
        self.write("set the size limit", |connection| {
            let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
            // SQLite's own ceiling when there is no cap; a cap below the file's size keeps the
            // file's size (SQLite never truncates here).
            let pages = bytes.map_or(MAX_PAGES, |bytes| {
                (i64::try_from(bytes).unwrap_or(i64::MAX) / page_size.max(1)).clamp(1, MAX_PAGES)
            });
            connection.pragma_update(None, "max_page_count", pages)
        })
    }

    fn reassign_owner(&self, old: &str, new: &str) -> Result<u64> {
        self.write("reassign conversations", |connection| {
            connection
                .execute(
                    "UPDATE sessions SET owner = ?2 WHERE owner = ?1",
                    params![old, new],
                )
                .map(|n| n as u64)
        })
    }

    /// A file on the local disk is always there to reach; a full disk shows as the journal
    /// failing instead.
    fn status(&self) -> StoreStatus {
        StoreStatus {
            backend: "sqlite",
            reachable: true,
            pool: None,
        }
    }
}

/// SQLite's largest `max_page_count`.
const MAX_PAGES: i64 = 4_294_967_294;

impl GraphStore for SqliteStore {
    fn remember(&self, owner: &str, content: &str) -> Result<(Node, bool)> {
        let now = unix_now();
        let label = label_for(content);
        let (id, new) = self.write("remember", |connection| {
            // One statement: SQLite runs it atomically, so two calls at once store one fact.
            let inserted = connection
                .prepare_cached(
                    "INSERT INTO nodes (owner, kind, label, content, properties, created_at, updated_at) \
                     SELECT ?1, 'fact', ?2, ?3, '{}', ?4, ?4 WHERE NOT EXISTS \
                     (SELECT 1 FROM nodes WHERE owner = ?1 AND kind = 'fact' AND content = ?3)",
                )?
                .execute(params![owner, label, content, now])?;
            if inserted == 1 {
                return Ok((connection.last_insert_rowid(), true));
            }
            let id = connection
                .prepare_cached(
                    "SELECT id FROM nodes WHERE owner = ?1 AND kind = 'fact' AND content = ?2",
                )?
                .query_row(params![owner, content], |row| row.get(0))?;
            Ok((id, false))
        })?;
        if new {
            self.nodes.fetch_add(1, Ordering::Relaxed);
        }
        let node = self
            .write("remember", |connection| get_node(connection, owner, id))?
            .ok_or_else(|| Error::Store(format!("fact #{id} vanished")))?;
        Ok((node, new))
    }

    fn search(
        &self,
        owner: &str,
        query: &str,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Node>> {
        let terms = fts_queries(query);
        self.read_searching("search", |connection| {
            let mut found: Vec<Node> = Vec::new();
            for fts in terms {
                if found.len() >= limit {
                    break;
                }
                match add_matches(connection, &fts, owner, kind, limit, &mut found) {
                    Ok(()) => {}
                    Err(e) if interrupted(&e) => {
                        log::debug!(
                            "graph: a search ran out of time; answering with {} nodes",
                            found.len()
                        );
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(found)
        })
    }

    fn recent(&self, owner: &str, kind: Option<&str>, limit: usize) -> Result<Vec<Node>> {
        self.read("list nodes", |connection| {
            connection
                .prepare_cached(&format!(
                    "SELECT {NODE_COLUMNS} FROM nodes WHERE owner = ?1 AND (?2 IS NULL OR kind = ?2) \
                     ORDER BY id DESC LIMIT ?3"
                ))?
                .query_map(params![owner, kind, limit as i64], node_from_row)?
                .collect()
        })
    }

    fn add_node(
        &self,
        owner: &str,
        kind: &str,
        label: &str,
        content: &str,
        properties: &Value,
    ) -> Result<Node> {
        let now = unix_now();
        let id = self.write("add node", |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO nodes (owner, kind, label, content, properties, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                )?
                .execute(params![owner, kind, label, content, properties.to_string(), now])?;
            Ok(connection.last_insert_rowid())
        })?;
        self.nodes.fetch_add(1, Ordering::Relaxed);
        Ok(Node::created(id, kind, label, content, properties, now))
    }

    fn add_edge(
        &self,
        owner: &str,
        source: i64,
        target: i64,
        kind: &str,
        properties: &Value,
    ) -> Result<Edge> {
        let writer = self.writer.lock();
        let connection = &writer.connection;
        for id in [source, target] {
            if get_node(connection, owner, id)
                .map_err(|e| store_error("add edge", e))?
                .is_none()
            {
                return Err(Error::Store(format!("there is no node #{id}")));
            }
        }
        let edge = (|| {
            connection
                .prepare_cached(
                    "INSERT INTO edges (source, target, kind, properties, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (source, target, kind) DO NOTHING",
                )?
                .execute(params![
                    source,
                    target,
                    kind,
                    properties.to_string(),
                    unix_now()
                ])?;
            connection
                .prepare_cached(
                    "SELECT id, properties FROM edges WHERE source = ?1 AND target = ?2 AND kind = ?3",
                )?
                .query_row(params![source, target, kind], |row| {
                    let properties: String = row.get(1)?;
                    Ok(Edge {
                        id: row.get(0)?,
                        source,
                        target,
                        kind: kind.to_owned(),
                        properties: serde_json::from_str(&properties).unwrap_or(Value::Null),
                    })
                })
        })();
        edge.map_err(|e| store_error("add edge", e))
    }

    fn get(&self, owner: &str, id: i64) -> Result<Option<Neighbourhood>> {
        self.read("get", |connection| {
            let Some(node) = get_node(connection, owner, id)? else {
                return Ok(None);
            };
            let edges: Vec<Edge> = connection
                .prepare_cached(
                    "SELECT id, source, target, kind, properties FROM edges \
                     WHERE source = ?1 OR target = ?1 ORDER BY id",
                )?
                .query_map([id], |row| {
                    let properties: String = row.get(4)?;
                    Ok(Edge {
                        id: row.get(0)?,
                        source: row.get(1)?,
                        target: row.get(2)?,
                        kind: row.get(3)?,
                        properties: serde_json::from_str(&properties).unwrap_or(Value::Null),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut neighbours = Vec::with_capacity(edges.len());
            for edge in edges {
                let other = if edge.source == id {
                    edge.target
                } else {
                    edge.source
                };
                if let Some(node) = get_node(connection, owner, other)? {
                    neighbours.push((edge, node));
                }
            }
            Ok(Some(Neighbourhood { node, neighbours }))
        })
    }

    fn delete(&self, owner: &str, id: i64) -> Result<bool> {
        let deleted = self.write("delete", |connection| {
            connection
                .execute(
                    "DELETE FROM nodes WHERE id = ?1 AND owner = ?2",
                    params![id, owner],
                )
                .map(|n| n > 0)
        })?;
        if deleted {
            self.nodes.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(deleted)
    }

    fn node_count(&self) -> u64 {
        self.nodes.load(Ordering::Relaxed)
    }

    fn reassign_nodes(&self, old: &str, new: &str) -> Result<u64> {
        self.write("reassign nodes", |connection| {
            connection.execute(
                "UPDATE embeddings SET owner = ?2 WHERE owner = ?1",
                params![old, new],
            )?;
            connection
                .execute(
                    "UPDATE nodes SET owner = ?2 WHERE owner = ?1",
                    params![old, new],
                )
                .map(|n| n as u64)
        })
    }

    fn unembedded(&self, model: &str, limit: usize) -> Result<Vec<(i64, String)>> {
        self.read("find facts to embed", |connection| {
            connection
                .prepare_cached(&format!(
                    "SELECT id, {EMBEDDED_TEXT} FROM nodes WHERE NOT EXISTS \
                     (SELECT 1 FROM embeddings e WHERE e.node_id = nodes.id AND e.model = ?1) \
                     ORDER BY id LIMIT ?2"
                ))?
                .query_map(params![model, limit as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect()
        })
    }

    fn store_embeddings(&self, model: &str, vectors: &[(i64, Vec<f32>)]) -> Result<()> {
        self.write("store embeddings", |connection| {
            let tx = connection.unchecked_transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR REPLACE INTO embeddings (node_id, owner, model, vector) \
                     SELECT id, owner, ?2, ?3 FROM nodes WHERE id = ?1",
                )?;
                for (id, vector) in vectors {
                    insert.execute(params![id, model, vector_bytes(vector)])?;
                }
            }
            tx.commit()
        })
    }

    fn nearest(
        &self,
        owner: &str,
        model: &str,
        query: &[f32],
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Node, f32)>> {
        self.read("semantic search", |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT e.node_id, e.vector FROM embeddings e JOIN nodes n ON n.id = e.node_id \
                 WHERE e.owner = ?1 AND e.model = ?2 AND (?3 IS NULL OR n.kind = ?3)",
            )?;
            let mut rows = statement.query(params![owner, model, kind])?;
            let mut scored: Vec<(i64, f32)> = Vec::new();
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                if let Some(similarity) = stored_similarity(query, row.get_ref(1)?.as_blob()?) {
                    scored.push((id, similarity));
                }
            }
            let mut found = Vec::new();
            for (id, similarity) in best(scored.into_iter(), limit) {
                if let Some(node) = get_node(connection, owner, id)? {
                    found.push((node, similarity));
                }
            }
            Ok(found)
        })
    }
}

#[cfg(test)]
impl SqliteStore {
    /// Rows in `table`, for tests.
    pub(super) fn count_rows(&self, table: &str) -> i64 {
        self.read("count", |c| {
            c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        })
        .unwrap_or(-1)
    }

    /// Reader connections, for tests.
    pub(super) fn reader_count(&self) -> usize {
        self.readers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SCHEMA_VERSION;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sparky-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_locked_corrupt_or_newer_directory_is_refused() {
        let dir = temp_dir("locked");
        let first = SqliteStore::open(&dir).unwrap();
        let second = SqliteStore::open(&dir).unwrap_err().to_string();
        assert!(
            second.contains("in use by another running sparky"),
            "{second}"
        );
        drop(first);
        let connection = Connection::open(dir.join(DATABASE_FILE)).unwrap();
        connection
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(connection);
        let newer = SqliteStore::open(&dir).unwrap_err().to_string();
        assert!(newer.contains("newer than this build"), "{newer}");
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(DATABASE_FILE), vec![0x42; 8192]).unwrap();
        let corrupt = SqliteStore::open(&dir).unwrap_err().to_string();
        assert!(corrupt.contains("sparky.db"), "{corrupt}");
    }

    #[test]
    fn search_words_are_quoted_fts5_terms() {
        assert_eq!(
            fts_terms("what is the what"),
            ["\"what\"", "\"is\"", "\"the\""]
        );
        assert_eq!(
            fts_queries("otters rivers"),
            ["\"otters\" AND \"rivers\"", "\"otters\" OR \"rivers\""]
        );
        assert!(fts_terms("  ...  ").is_empty());
    }
}
