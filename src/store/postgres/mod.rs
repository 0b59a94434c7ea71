//! `PostgresStore`: both store traits over a PostgreSQL database (`--store postgres://…`).
//!
//! One writer connection, behind a mutex, takes the journal's batches, as SQLite's writer does.
//! A pool of `--store-pool` connections ([`pool`]) serves everything else: loading a
//! conversation, replay, the API, graph searches and graph writes. Several instances may share
//! the database: `cluster.rs` implements [`super::Cluster`] (leases and `LISTEN`/`NOTIFY`) on
//! one more connection, and a batch that writes events or deletes a conversation notifies the
//! other instances in its own transaction, so that the signal goes out exactly when the rows
//! are visible.
//!
//! A batch is one transaction of three round trips whatever its size: the rows of every table,
//! and every session row touched, go in as arrays (`unnest`) in one statement. When the
//! connection drops during a `COMMIT`, the writer asks the database on its next try whether
//! that transaction committed (`pg_xact_status`), so that a retried batch is written exactly
//! once. Every other failure leaves nothing of the batch, and the journal retries it.
//!
//! Searches use PostgreSQL's full-text search (`tsvector`, GIN indexes, `ts_rank_cd`), keep the
//! same words as SQLite's ([`super::search_words`]), and run within the search budget through
//! `statement_timeout`: a search out of time answers with what it found.
//!
//! Depends on: `common::config`, `common::error`, `common::protocol`, `model`, `store`, `store::cluster`, `store::postgres::pool`.

mod cluster;
mod import;
mod pool;
pub(super) mod schema;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postgres::error::SqlState;
use postgres::{Row, Transaction};
use serde_json::Value;
use sha2::{Digest, Sha256};

use self::pool::{Connection, Connector, Pool, broken, describe, prepared};
use super::cluster::payload;
use super::{
    ConversationStore, ConversationSummary, DEFAULT_SEARCH_BUDGET, Edge, EventPage, GraphStore,
    LEASE_TTL, Neighbourhood, Node, Signal, StoreStatus, StoredConversation, TITLE_CHARS, TurnMark,
    WriteOp, best, calls_from_json, calls_to_json, cut, label_for, messages_from_newest, role_from,
    role_name, search_words, stored_similarity, unix_now, vector_bytes,
};
use crate::common::config::redact_url;
use crate::common::error::{Error, Result};
use crate::common::protocol::{SessionId, Usage};
use crate::model::ChatMessage;

pub use schema::POSTGRES_SCHEMA_VERSION;

/// How long a measure of the database's size is trusted when a size cap is set.
const SIZE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Characters of a message indexed for the conversation search at most: a `tsvector` holds at
/// most 1 MiB, and a batch that failed on one would be retried for ever.
const SEARCH_TEXT_CHARS: i64 = 100_000;

/// The PostgreSQL store. See the module documentation for its connections.
#[derive(Debug)]
pub struct PostgresStore {
    pool: Pool,
    writer: Mutex<Writer>,
    /// This instance's name in leases and signals: random, drawn at start.
    instance: String,
    /// The connection that `LISTEN`s for other instances' signals; `None` until the first
    /// [`super::Cluster::wait`], and again once it broke.
    listener: Mutex<Option<Connection>>,
    /// How long a full-text search may run, in microseconds.
    search_budget_micros: AtomicU64,
    /// Nodes in the graph, counted at open and kept beside the table, so that a turn can skip
    /// the memory lookup on an empty graph without a query.
    nodes: AtomicU64,
    /// The size cap (`--max-store-mib`) and the last measure of the database's size.
    size: Mutex<SizeCap>,
}

#[derive(Debug, Default)]
struct SizeCap {
    limit: Option<u64>,
    measured: Option<(Instant, u64)>,
}

/// The writer connection and what it remembers between batches.
#[derive(Debug, Default)]
struct Writer {
    /// `None` until connected, and again once the connection broke.
    connection: Option<Connection>,
    memory: WriterMemory,
}

/// What the writer remembers between batches.
#[derive(Debug, Default)]
struct WriterMemory {
    /// Conversation id to its integer key.
    keys: HashMap<SessionId, i64>,
    /// A batch whose `COMMIT` was cut off with the connection, and its transaction id: it may
    /// or may not have been committed.
    uncertain: Option<(String, Vec<WriteOp>)>,
    /// This instance's name: a conversation it creates is leased to it.
    instance: String,
}

fn store_error(what: &str, e: &postgres::Error) -> Error {
    Error::Store(format!("{what}: {}", describe(e)))
}

/// True when `e` is a statement stopped by `statement_timeout`: a search out of time.
fn timed_out(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::QUERY_CANCELED)
}

/// `n` as PostgreSQL's `bigint`, saturating.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `n` read from a `bigint`; never negative.
fn small(n: i64) -> u64 {
    n.max(0) as u64
}

/// The `tsquery` lexeme that stands for `owner` in each node's search vector, quoted. User
/// words are letters and digits only, so none of them can name an owner.
fn owner_lexeme(owner: &str) -> String {
    format!("'@{}'", owner.replace('\\', "\\\\").replace('\'', "''"))
}

/// The text-search queries for free text, most selective first: every word, then (when there
/// are several) any of them; each word quoted, for `to_tsquery('sparky_english', …)`.
fn tsqueries(text: &str) -> Vec<String> {
    let words: Vec<String> = search_words(text)
        .into_iter()
        .map(|word| format!("'{word}'"))
        .collect();
    match words.len() {
        0 => Vec::new(),
        1 => words,
        _ => vec![words.join(" & "), words.join(" | ")],
    }
}

/// The budget left before `deadline`, in whole milliseconds (at least one), or `None` when
/// none is left. `statement_timeout` counts milliseconds, and zero would mean no limit.
fn remaining_millis(deadline: Instant) -> Option<String> {
    let left = deadline.checked_duration_since(Instant::now())?;
    if left.is_zero() {
        return None;
    }
    Some(format!("{}ms", left.as_millis().max(1)))
}

fn node_from_row(row: &Row) -> Result<Node, postgres::Error> {
    Ok(Node {
        id: row.try_get(0)?,
        kind: row.try_get(1)?,
        label: row.try_get(2)?,
        content: row.try_get(3)?,
        properties: row.try_get(4)?,
        created_at: row.try_get(5)?,
        updated_at: row.try_get(6)?,
    })
}

fn edge_from_row(row: &Row) -> Result<Edge, postgres::Error> {
    Ok(Edge {
        id: row.try_get(0)?,
        source: row.try_get(1)?,
        target: row.try_get(2)?,
        kind: row.try_get(3)?,
        properties: row.try_get(4)?,
    })
}

/// A summary from [`SUMMARY_COLUMNS`]; `None` for an id that is not one.
fn summary_from_row(row: &Row) -> Result<Option<ConversationSummary>, postgres::Error> {
    let id: String = row.try_get(0)?;
    Ok(SessionId::parse(&id).map(|id| ConversationSummary {
        id,
        title: row.try_get(1).ok().flatten(),
        created_at: row.try_get(2).unwrap_or(0),
        updated_at: row.try_get(3).unwrap_or(0),
        turns: small(row.try_get(4).unwrap_or(0)),
        model: row.try_get(5).ok().flatten(),
        usage: Usage {
            prompt_tokens: small(row.try_get(6).unwrap_or(0)),
            completion_tokens: small(row.try_get(7).unwrap_or(0)),
        },
        open: row.try_get(8).unwrap_or(false),
    }))
}

/// What a conversation's summary reads, in the order [`summary_from_row`] takes it.
macro_rules! summary_columns {
    ($prefix:literal) => {
        concat!(
            $prefix,
            "id, ",
            $prefix,
            "title, ",
            $prefix,
            "created_at, ",
            $prefix,
            "updated_at, ",
            $prefix,
            "turns, ",
            $prefix,
            "model, ",
            $prefix,
            "prompt_tokens, ",
            $prefix,
            "completion_tokens, ",
            $prefix,
            "open_turn IS NOT NULL"
        )
    };
}

const UNEMBEDDED: &str = concat!(
    "SELECT id, ",
    "CASE WHEN kind = 'fact' THEN content ELSE label || '. ' || content END",
    " FROM nodes WHERE NOT EXISTS (SELECT 1 FROM embeddings e \
     WHERE e.node_id = nodes.id AND e.model = $1) ORDER BY id LIMIT $2"
);
/// Upserts a batch of vectors, each under its node's owner; a node deleted meanwhile has no
/// row to join and is skipped.
const STORE_EMBEDDINGS: &str = "INSERT INTO embeddings (node_id, owner, model, vector) \
     SELECT n.id, n.owner, $2, u.v FROM unnest($1::bigint[], $3::bytea[]) AS u (id, v) \
     JOIN nodes n ON n.id = u.id \
     ON CONFLICT (node_id) DO UPDATE SET owner = excluded.owner, model = excluded.model, \
     vector = excluded.vector";
const VECTORS: &str = "SELECT e.node_id, e.vector FROM embeddings e JOIN nodes n ON n.id = e.node_id \
     WHERE e.owner = $1 AND e.model = $2 AND ($3::text IS NULL OR n.kind = $3)";

const GET_NODE: &str = "SELECT id, kind, label, content, properties, created_at, updated_at \
     FROM nodes WHERE id = $1 AND owner = $2";

fn get_node(
    connection: &mut Connection,
    owner: &str,
    id: i64,
) -> Result<Option<Node>, postgres::Error> {
    let Connection { client, statements } = connection;
    let statement = prepared(statements, client, GET_NODE)?;
    client
        .query_opt(&statement, &[&id, &owner])?
        .map(|row| node_from_row(&row))
        .transpose()
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, or
    /// PostgreSQL's `key=value` form), draws this instance's name, and migrates the schema to
    /// [`POSTGRES_SCHEMA_VERSION`]. The pool opens up to `pool_size` more connections as they
    /// are needed.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] with a message for the operator when the URL is not one, the database
    /// cannot be reached, or its schema is newer than this build.
    pub fn connect(url: &str, pool_size: usize) -> Result<Self> {
        let target = redact_url(url);
        let config: postgres::Config = url.parse().map_err(|e| {
            Error::Store(format!(
                "{target} is not a PostgreSQL URL like postgres://USER@HOST[:PORT]/DB: {e}"
            ))
        })?;
        // Every connection carries the instance's name, so that another instance can tell
        // whether this one is still connected (see `cluster.rs`).
        let instance = cluster::instance_name()?;
        let name = cluster::application_name(&instance);
        let pool = Pool::new(Connector::new(config, target.clone(), &name), pool_size);
        let mut connection = pool.connector().connect()?;
        schema::migrate(&mut connection.client, &target)?;
        let nodes: i64 = connection
            .client
            .query_one("SELECT count(*) FROM nodes", &[])
            .and_then(|row| row.try_get(0))
            .map_err(|e| store_error("count nodes", &e))?;
        log::info!("store: using PostgreSQL database {target}");
        Ok(PostgresStore {
            pool,
            writer: Mutex::new(Writer {
                connection: Some(connection),
                ..Writer::default()
            }),
            instance,
            listener: Mutex::new(None),
            search_budget_micros: AtomicU64::new(micros(DEFAULT_SEARCH_BUDGET)),
            nodes: AtomicU64::new(small(nodes)),
            size: Mutex::new(SizeCap::default()),
        })
    }

    /// What a start on the database at `url` would find, for `sparky check`, changing nothing:
    /// whether it can be reached, and its schema version.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the URL is not one, the database cannot be reached, or its schema
    /// is newer than this build.
    pub fn inspect(url: &str) -> Result<String> {
        let target = redact_url(url);
        let config: postgres::Config = url.parse().map_err(|e| {
            Error::Store(format!(
                "{target} is not a PostgreSQL URL like postgres://USER@HOST[:PORT]/DB: {e}"
            ))
        })?;
        let mut connection = Connector::new(config, target.clone(), "sparky check").connect()?;
        let client = &mut connection.client;
        let failed = |e: postgres::Error| store_error(&format!("database {target}"), &e);
        let migrated: bool = client
            .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
            .and_then(|row| row.try_get(0))
            .map_err(failed)?;
        let version: i64 = if migrated {
            client
                .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
                .and_then(|row| row.try_get(0))
                .map_err(failed)?
        } else {
            0
        };
        match version {
            0 => Ok(format!(
                "database {target} is new; the store will be created"
            )),
            v if v > POSTGRES_SCHEMA_VERSION => Err(Error::Store(format!(
                "database {target} has schema version {v}, newer than this build's \
                 {POSTGRES_SCHEMA_VERSION}"
            ))),
            v if v < POSTGRES_SCHEMA_VERSION => Ok(format!(
                "database {target}: schema version {v}, migrated to {POSTGRES_SCHEMA_VERSION} \
                 at start"
            )),
            v => Ok(format!("database {target}: schema version {v}")),
        }
    }

    /// The database as named in messages (without a password).
    pub fn target(&self) -> &str {
        &self.pool.connector().target
    }

    /// Gives every full-text search from now on `budget` to run (default
    /// [`DEFAULT_SEARCH_BUDGET`]): graph searches, memory lookups and the conversation search.
    /// A search that runs out is stopped by the database and returns what it had found, which
    /// may be nothing; it is not an error.
    pub fn set_search_budget(&self, budget: Duration) {
        self.search_budget_micros
            .store(micros(budget), Ordering::Relaxed);
    }

    fn search_deadline(&self) -> Instant {
        Instant::now() + Duration::from_micros(self.search_budget_micros.load(Ordering::Relaxed))
    }

    /// Runs `work` on the writer connection, connecting first when there is none. A connection that broke is dropped, and `work` runs once more on a
    /// new one: the usual failure after the database restarted is a connection that was
    /// already dead. `work` must be safe to repeat: a batch is (see [`apply_batch`]).
    fn write<T>(
        &self,
        what: &str,
        mut work: impl FnMut(&mut Connection, &mut WriterMemory) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut writer = self.writer.lock();
        let Writer { connection, memory } = &mut *writer;
        memory.instance.clone_from(&self.instance);
        let mut tries = 0;
        loop {
            tries += 1;
            let open = self.writer_connection(connection)?;
            let result = work(open, memory);
            let Err(e) = result else {
                return result.map_err(|e| store_error(what, &e));
            };
            // Keys learnt in a transaction that did not commit may name nothing.
            memory.keys.clear();
            if !broken(&e, &open.client) {
                return Err(store_error(what, &e));
            }
            *connection = None;
            if tries == 2 {
                self.pool.connector().lost();
                return Err(store_error(what, &e));
            }
        }
    }

    /// The writer's connection, opened if there is none or it broke.
    fn writer_connection<'a>(
        &self,
        connection: &'a mut Option<Connection>,
    ) -> Result<&'a mut Connection> {
        if connection.as_ref().is_some_and(|c| c.client.is_closed()) {
            *connection = None;
        }
        if connection.is_none() {
            *connection = Some(self.pool.connector().connect()?);
        }
        connection
            .as_mut()
            .ok_or_else(|| Error::Store("the writer has no connection".into()))
    }

    /// Refuses a write that would grow the database past its cap. The size is measured with
    /// `measure` at most once per [`SIZE_CHECK_INTERVAL`].
    fn check_room(&self, measure: impl FnOnce() -> Result<u64>) -> Result<()> {
        let mut size = self.size.lock();
        let Some(limit) = size.limit else {
            return Ok(());
        };
        let bytes = match size.measured {
            Some((at, bytes)) if at.elapsed() < SIZE_CHECK_INTERVAL => bytes,
            _ => {
                let bytes = measure()?;
                size.measured = Some((Instant::now(), bytes));
                bytes
            }
        };
        if bytes >= limit {
            return Err(Error::Store(format!(
                "database {} holds {} MiB, at or past its cap of {} MiB (--max-store-mib)",
                self.target(),
                bytes >> 20,
                limit >> 20
            )));
        }
        Ok(())
    }

    /// [`PostgresStore::check_room`] for a graph write, measuring on a pool connection.
    fn graph_room(&self) -> Result<()> {
        self.check_room(|| {
            self.pool.run("measure the database", |connection| {
                database_size(&mut connection.client)
            })
        })
    }

    /// Runs a full-text search on a pool connection within the search budget: `search` gets a
    /// transaction and the deadline, sets `statement_timeout` before each statement with
    /// [`set_timeout`], and turns a statement out of time into a shorter answer.
    fn read_searching<T>(
        &self,
        what: &str,
        mut search: impl FnMut(
            &mut Transaction<'_>,
            &mut Statements,
            Instant,
        ) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let deadline = self.search_deadline();
        self.pool.run(what, |connection| {
            let Connection { client, statements } = connection;
            let mut tx = client.build_transaction().read_only(true).start()?;
            let found = search(&mut tx, statements, deadline)?;
            // Read only: nothing to commit, and a timeout may have aborted the transaction.
            drop(tx);
            Ok(found)
        })
    }
}

/// The statements prepared on one connection, by their text.
type Statements = HashMap<&'static str, postgres::Statement>;

const SET_TIMEOUT: &str = "SELECT set_config('statement_timeout', $1, true)";

/// Sets the transaction's `statement_timeout` to what is left before `deadline`; false when
/// nothing is left.
fn set_timeout(
    tx: &mut Transaction<'_>,
    statements: &mut Statements,
    deadline: Instant,
) -> Result<bool, postgres::Error> {
    let Some(left) = remaining_millis(deadline) else {
        return Ok(false);
    };
    let statement = prepared(statements, tx, SET_TIMEOUT)?;
    tx.execute(&statement, &[&left])?;
    Ok(true)
}

/// The database's size in bytes.
fn database_size(client: &mut postgres::Client) -> Result<u64, postgres::Error> {
    let bytes: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])?
        .try_get(0)?;
    Ok(small(bytes))
}

/// `duration` in whole microseconds, saturating.
fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
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
    /// The turn opened in this batch, not closed yet and not written yet: its place in
    /// [`Rows`]'s turn columns.
    open_here: Option<usize>,
    /// Tokens the turns closed in the batch used.
    usage: Usage,
}

/// The rows of a batch, gathered per table and written as arrays by one statement.
#[derive(Default)]
struct Rows {
    event_keys: Vec<i64>,
    event_seqs: Vec<i64>,
    event_bodies: Vec<String>,
    event_texts: Vec<Option<String>>,
    message_keys: Vec<i64>,
    message_indexes: Vec<i64>,
    message_roles: Vec<&'static str>,
    message_contents: Vec<String>,
    message_calls: Vec<Option<String>>,
    message_call_ids: Vec<Option<String>>,
    message_errors: Vec<bool>,
    note_keys: Vec<i64>,
    note_texts: Vec<String>,
    /// Turns opened in the batch, with the `seq` that closed them when that is in the batch too.
    turn_keys: Vec<i64>,
    turn_ids: Vec<i64>,
    turn_opened: Vec<i64>,
    turn_closed: Vec<Option<i64>>,
    /// Turns opened before and closed in the batch.
    close_keys: Vec<i64>,
    close_seqs: Vec<i64>,
    /// Session rows: key, last seq, turns, whether the open turn changed, the open turn and its
    /// text, a title.
    session_keys: Vec<i64>,
    session_last_seqs: Vec<i64>,
    session_turns: Vec<i64>,
    session_open_set: Vec<bool>,
    session_open_turns: Vec<Option<i64>>,
    session_open_texts: Vec<Option<String>>,
    session_titles: Vec<Option<String>>,
    session_prompt_tokens: Vec<i64>,
    session_completion_tokens: Vec<i64>,
    /// Notifications for the other instances.
    notices: Vec<String>,
}

/// A new conversation, leased to the instance that creates it (`$7`) for `$8` milliseconds.
const INSERT_SESSION: &str = "WITH s AS (INSERT INTO sessions \
     (id, owner, user_id, personality, model, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING key), \
     l AS (INSERT INTO leases (session_key, holder, expires_at) \
     SELECT key, $7, now() + $8::bigint * interval '1 millisecond' FROM s) \
     SELECT key FROM s";
const SESSION_KEY: &str = "SELECT key FROM sessions WHERE id = $1";
/// Every row of a batch in one statement (one round trip), the notifications for other
/// instances (`$31`, sent when the transaction commits), and the transaction's id. Its parts
/// all see the database as it was before the statement, which is why a turn opened and closed
/// in one batch is inserted closed, and only turns opened earlier are updated. An event or
/// turn whose number is taken already is left out rather than failing the batch: only an
/// instance that lost its lease (stalled past [`super::LEASE_TTL`]) can write one, and the
/// numbers belong to the instance that took the lease over.
const WRITE_ROWS: &str = "WITH \
     ev AS (INSERT INTO events (session_key, seq, body, search) \
         SELECT k, s, b, to_tsvector('sparky_english', left(t, $5::bigint::int)) \
         FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS u (k, s, b, t) \
         ON CONFLICT (session_key, seq) DO NOTHING), \
     ms AS (INSERT INTO messages \
         (session_key, idx, role, content, tool_calls, tool_call_id, is_error) \
         SELECT * FROM unnest($6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::text[], \
         $11::text[], $12::bool[]) ON CONFLICT (session_key, idx) DO NOTHING), \
     nt AS (INSERT INTO notes (session_key, text) \
         SELECT k, t FROM unnest($13::bigint[], $14::text[]) WITH ORDINALITY AS u (k, t, n) \
         ORDER BY n), \
     tu AS (INSERT INTO turns (session_key, turn_id, opened_seq, closed_seq) \
         SELECT * FROM unnest($15::bigint[], $16::bigint[], $17::bigint[], $18::bigint[]) \
         ON CONFLICT (session_key, turn_id) DO NOTHING), \
     cl AS (UPDATE turns t SET closed_seq = u.s \
         FROM unnest($19::bigint[], $20::bigint[]) AS u (k, s) \
         WHERE t.session_key = u.k AND t.closed_seq IS NULL AND t.opened_seq < u.s), \
     se AS (UPDATE sessions s SET \
         last_seq = greatest(s.last_seq, u.last_seq), turns = greatest(s.turns, u.turns), \
         updated_at = $28, \
         open_turn = CASE WHEN u.open_set THEN u.open_turn ELSE s.open_turn END, \
         open_text = CASE WHEN u.open_set THEN u.open_text ELSE s.open_text END, \
         title = coalesce(s.title, u.title), \
         prompt_tokens = s.prompt_tokens + u.prompt, \
         completion_tokens = s.completion_tokens + u.completion \
         FROM unnest($21::bigint[], $22::bigint[], $23::bigint[], $24::bool[], $25::bigint[], \
         $26::text[], $27::text[], $29::bigint[], $30::bigint[]) \
         AS u (key, last_seq, turns, open_set, open_turn, open_text, title, prompt, completion) \
         WHERE s.key = u.key) \
     SELECT pg_current_xact_id()::text, \
         (SELECT count(*) FROM (SELECT pg_notify('sparky', n) FROM unnest($31::text[]) n) x)";
const TRIM_MESSAGES: &str = "UPDATE sessions SET first_message = $2 WHERE key = $1";
const RENAME: &str = "UPDATE sessions SET title = $3 WHERE id = $1 AND owner = $2";
/// A conversation and every row of it (`turns` and `leases` follow by their foreign keys).
const DELETE_SESSION: &str = "WITH \
     ev AS (DELETE FROM events WHERE session_key = $1), \
     ms AS (DELETE FROM messages WHERE session_key = $1), \
     nt AS (DELETE FROM notes WHERE session_key = $1) \
     DELETE FROM sessions WHERE key = $1";

/// Applies `batch` in one transaction, unless it is the batch whose `COMMIT` was cut off and
/// the database says that transaction committed.
///
/// A batch costs three round trips (`BEGIN`, [`WRITE_ROWS`], `COMMIT`), plus one for each new
/// conversation, each conversation the writer has not seen yet, and each rename, trim or
/// deletion: with many sessions busy, the round trips are what a batch costs, not the rows.
fn apply_batch(
    connection: &mut Connection,
    memory: &mut WriterMemory,
    batch: &[WriteOp],
) -> Result<(), postgres::Error> {
    let Connection { client, statements } = connection;
    let WriterMemory {
        keys,
        uncertain,
        instance,
    } = memory;
    if let Some((xid, ops)) = uncertain.take() {
        let status: Option<String> = client
            .query_one("SELECT pg_xact_status($1::text::xid8)", &[&xid])?
            .try_get(0)?;
        if status.as_deref() == Some("committed") && ops == batch {
            log::warn!("store: a batch whose commit was cut off had been committed");
            return Ok(());
        }
    }
    let mut tx = client.transaction()?;
    let now = unix_now();
    // Ordered by key, so that two writers would lock session rows in one order.
    let mut updates: BTreeMap<i64, RowUpdate> = BTreeMap::new();
    let mut rows = Rows::default();
    // Conversations whose events or deletion the other instances hear of.
    let mut notices: BTreeMap<&str, Signal> = BTreeMap::new();
    let lease_ms = LEASE_TTL.as_millis() as i64;
    for op in batch {
        match op {
            WriteOp::CreateSession {
                id,
                owner,
                user_id,
                personality,
                model,
            } => {
                let statement = prepared(statements, &mut tx, INSERT_SESSION)?;
                let key: i64 = tx
                    .query_one(
                        &statement,
                        &[
                            &id.as_str(),
                            owner,
                            user_id,
                            personality,
                            model,
                            &now,
                            &*instance,
                            &lease_ms,
                        ],
                    )?
                    .try_get(0)?;
                keys.insert(id.clone(), key);
            }
            WriteOp::Event {
                session,
                seq,
                body,
                turn,
                search_text,
            } => {
                // A write for a conversation the store does not hold (deleted meanwhile) is
                // skipped rather than failing the whole batch; so are the others below.
                let Some(key) = session_key(keys, statements, &mut tx, session)? else {
                    continue;
                };
                notices.entry(session.as_str()).or_insert(Signal::Events);
                rows.event_keys.push(key);
                rows.event_seqs.push(big(*seq));
                rows.event_bodies.push(body.to_string());
                rows.event_texts.push(search_text.clone());
                let update = updates.entry(key).or_default();
                update.last_seq = update.last_seq.max(*seq);
                match turn {
                    TurnMark::None => {}
                    TurnMark::Opened { turn_id, text } => {
                        update.open = Some(Some((*turn_id, text.clone())));
                        update.turns = update.turns.max(*turn_id);
                        update.title.get_or_insert_with(|| cut(text, TITLE_CHARS));
                        update.open_here = Some(rows.turn_keys.len());
                        rows.turn_keys.push(key);
                        rows.turn_ids.push(big(*turn_id));
                        rows.turn_opened.push(big(*seq));
                        rows.turn_closed.push(None);
                    }
                    TurnMark::Closed { usage } => {
                        update.open = Some(None);
                        update.usage = update.usage.plus(*usage);
                        match update.open_here.take() {
                            Some(at) => rows.turn_closed[at] = Some(big(*seq)),
                            None => {
                                rows.close_keys.push(key);
                                rows.close_seqs.push(big(*seq));
                            }
                        }
                    }
                }
            }
            WriteOp::Messages {
                session,
                first,
                messages,
            } => {
                let Some(key) = session_key(keys, statements, &mut tx, session)? else {
                    continue;
                };
                for (i, message) in messages.iter().enumerate() {
                    rows.message_keys.push(key);
                    rows.message_indexes.push(big(*first + i as u64));
                    rows.message_roles.push(role_name(message.role));
                    rows.message_contents.push(message.content.clone());
                    rows.message_calls.push(calls_to_json(&message.tool_calls));
                    rows.message_call_ids.push(message.tool_call_id.clone());
                    rows.message_errors.push(message.is_error);
                }
            }
            WriteOp::TrimMessages { session, below } => {
                if let Some(key) = session_key(keys, statements, &mut tx, session)? {
                    let statement = prepared(statements, &mut tx, TRIM_MESSAGES)?;
                    tx.execute(&statement, &[&key, &big(*below)])?;
                }
            }
            WriteOp::Note { session, text } => {
                if let Some(key) = session_key(keys, statements, &mut tx, session)? {
                    rows.note_keys.push(key);
                    rows.note_texts.push(text.clone());
                }
            }
            WriteOp::Rename {
                session,
                owner,
                title,
            } => {
                let statement = prepared(statements, &mut tx, RENAME)?;
                tx.execute(&statement, &[&session.as_str(), owner, title])?;
            }
            WriteOp::DeleteSession { session } => {
                let Some(key) = session_key(keys, statements, &mut tx, session)? else {
                    continue;
                };
                // Rows gathered so far go in first, and go with the conversation. Turns they
                // open are in the table from then on, so a later close updates them there.
                updates.remove(&key);
                rows.write(statements, &mut tx, &mut BTreeMap::new(), now)?;
                for update in updates.values_mut() {
                    update.open_here = None;
                }
                keys.remove(session);
                notices.insert(session.as_str(), Signal::Deleted);
                let statement = prepared(statements, &mut tx, DELETE_SESSION)?;
                tx.execute(&statement, &[&key])?;
            }
        }
    }
    rows.notices = notices
        .into_iter()
        .map(|(session, signal)| payload(signal, session, instance, ""))
        .collect();
    let xid = rows.write(statements, &mut tx, &mut updates, now)?;
    match tx.commit() {
        Ok(()) => Ok(()),
        Err(e) => {
            if broken(&e, client) {
                *uncertain = Some((xid, batch.to_vec()));
            }
            Err(e)
        }
    }
}

impl Rows {
    /// Writes the rows gathered so far and the session rows of `updates` in one statement,
    /// forgets them, and returns the transaction's id.
    fn write(
        &mut self,
        statements: &mut Statements,
        tx: &mut Transaction<'_>,
        updates: &mut BTreeMap<i64, RowUpdate>,
        now: i64,
    ) -> Result<String, postgres::Error> {
        for (key, update) in std::mem::take(updates) {
            self.session_keys.push(key);
            self.session_last_seqs.push(big(update.last_seq));
            self.session_turns.push(big(update.turns));
            self.session_open_set.push(update.open.is_some());
            let open = update.open.flatten();
            self.session_open_turns
                .push(open.as_ref().map(|(turn, _)| big(*turn)));
            self.session_open_texts.push(open.map(|(_, text)| text));
            self.session_titles.push(update.title);
            self.session_prompt_tokens
                .push(big(update.usage.prompt_tokens));
            self.session_completion_tokens
                .push(big(update.usage.completion_tokens));
        }
        let statement = prepared(statements, tx, WRITE_ROWS)?;
        let xid: String = tx
            .query_one(
                &statement,
                &[
                    &self.event_keys,
                    &self.event_seqs,
                    &self.event_bodies,
                    &self.event_texts,
                    &SEARCH_TEXT_CHARS,
                    &self.message_keys,
                    &self.message_indexes,
                    &self.message_roles,
                    &self.message_contents,
                    &self.message_calls,
                    &self.message_call_ids,
                    &self.message_errors,
                    &self.note_keys,
                    &self.note_texts,
                    &self.turn_keys,
                    &self.turn_ids,
                    &self.turn_opened,
                    &self.turn_closed,
                    &self.close_keys,
                    &self.close_seqs,
                    &self.session_keys,
                    &self.session_last_seqs,
                    &self.session_turns,
                    &self.session_open_set,
                    &self.session_open_turns,
                    &self.session_open_texts,
                    &self.session_titles,
                    &now,
                    &self.session_prompt_tokens,
                    &self.session_completion_tokens,
                    &self.notices,
                ],
            )?
            .try_get(0)?;
        *self = Rows::default();
        Ok(xid)
    }
}

/// The integer key of a conversation, or `None` when the store does not hold it.
fn session_key(
    keys: &mut HashMap<SessionId, i64>,
    statements: &mut Statements,
    tx: &mut Transaction<'_>,
    id: &SessionId,
) -> Result<Option<i64>, postgres::Error> {
    if let Some(&key) = keys.get(id) {
        return Ok(Some(key));
    }
    let statement = prepared(statements, tx, SESSION_KEY)?;
    let found: Option<i64> = tx
        .query_opt(&statement, &[&id.as_str()])?
        .map(|row| row.try_get(0))
        .transpose()?;
    if let Some(key) = found {
        keys.insert(id.clone(), key);
    }
    Ok(found)
}

/// True when a batch only takes things away: it is let through a full database, as a delete
/// is on a full disk.
fn only_removes(batch: &[WriteOp]) -> bool {
    batch.iter().all(|op| {
        matches!(
            op,
            WriteOp::DeleteSession { .. } | WriteOp::TrimMessages { .. } | WriteOp::Rename { .. }
        )
    })
}

const LOAD_SESSION: &str = "SELECT key, owner, user_id, personality, last_seq, turns, \
     open_turn, open_text, first_message, model FROM sessions WHERE id = $1";
const LOAD_MESSAGES: &str = "SELECT idx, role, content, tool_calls, tool_call_id, is_error \
     FROM messages WHERE session_key = $1 AND idx >= $2 ORDER BY idx DESC LIMIT $3";
const LOAD_NOTES: &str = "SELECT text FROM notes WHERE session_key = $1 ORDER BY id";
const LOAD_TAIL: &str =
    "SELECT seq, body FROM events WHERE session_key = $1 ORDER BY seq DESC LIMIT $2";
const SESSION_FIRST_SEQ: &str = "SELECT key, first_seq FROM sessions WHERE id = $1";
const EVENT_RANGE: &str = "SELECT seq, body FROM events \
     WHERE session_key = $1 AND seq > $2 AND seq <= $3 ORDER BY seq";
const OWNED_SESSION_KEY: &str = "SELECT key FROM sessions WHERE id = $1 AND owner = $2";
const EVENTS_BEFORE: &str = "SELECT body FROM events WHERE session_key = $1 AND seq < $2 \
     ORDER BY seq DESC LIMIT $3";
const LIST: &str = concat!(
    "SELECT ",
    summary_columns!(""),
    " FROM sessions WHERE owner = $1 ORDER BY updated_at DESC, key DESC LIMIT $2"
);
const SEARCH_CONVERSATIONS: &str = concat!(
    "WITH q AS (SELECT to_tsquery('sparky_english', $2) AS words) SELECT ",
    summary_columns!("s."),
    " FROM sessions s, q \
     WHERE numnode(q.words) > 0 AND s.owner = $1 AND EXISTS \
     (SELECT 1 FROM events e WHERE e.session_key = s.key AND e.search @@ q.words) \
     ORDER BY s.updated_at DESC, s.key DESC LIMIT $3"
);
const SUMMARY: &str = concat!(
    "SELECT ",
    summary_columns!(""),
    " FROM sessions WHERE id = $1 AND owner = $2"
);
const IDLE: &str = "SELECT id FROM sessions WHERE updated_at < $1 LIMIT $2";
const COUNT: &str = "SELECT count(*) FROM sessions WHERE owner = $1";

/// Rows of a replay page fetched first; each later fetch takes four times as many, up to
/// [`MAX_EVENT_ROWS`].
const FIRST_EVENT_ROWS: i32 = 64;

/// Rows of a replay page fetched at once at most.
const MAX_EVENT_ROWS: i32 = 1024;

impl ConversationStore for PostgresStore {
    fn apply(&self, batch: &[WriteOp]) -> Result<()> {
        if !only_removes(batch) {
            self.check_room(|| {
                self.write("measure the database", |c, _| database_size(&mut c.client))
            })?;
        }
        self.write("write", |connection, memory| {
            apply_batch(connection, memory, batch)
        })
    }

    fn load(
        &self,
        id: &SessionId,
        tail: usize,
        messages: usize,
    ) -> Result<Option<StoredConversation>> {
        self.pool.run("load conversation", |connection| {
            let Connection { client, statements } = connection;
            let mut tx = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let statement = prepared(statements, &mut tx, LOAD_SESSION)?;
            let Some(row) = tx.query_opt(&statement, &[&id.as_str()])? else {
                return Ok(None);
            };
            let key: i64 = row.try_get(0)?;
            let first: i64 = row.try_get(8)?;
            let statement = prepared(statements, &mut tx, LOAD_MESSAGES)?;
            let loaded = tx
                .query(&statement, &[&key, &first, &big(messages as u64)])?
                .iter()
                .map(|row| {
                    let role: String = row.try_get(1)?;
                    Ok((
                        small(row.try_get(0)?),
                        ChatMessage {
                            role: role_from(&role),
                            content: row.try_get(2)?,
                            tool_calls: calls_from_json(row.try_get(3)?),
                            tool_call_id: row.try_get(4)?,
                            is_error: row.try_get(5)?,
                            images: Vec::new(),
                        },
                    ))
                })
                .collect::<Result<Vec<_>, postgres::Error>>()?;
            let (first_message, messages) = messages_from_newest(loaded, first);
            let statement = prepared(statements, &mut tx, LOAD_NOTES)?;
            let notes = tx
                .query(&statement, &[&key])?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<Vec<String>, _>>()?;
            let statement = prepared(statements, &mut tx, LOAD_TAIL)?;
            let mut events = tx
                .query(&statement, &[&key, &big(tail as u64)])?
                .iter()
                .map(|row| Ok((small(row.try_get(0)?), row.try_get(1)?)))
                .collect::<Result<Vec<(u64, String)>, postgres::Error>>()?;
            events.reverse();
            tx.commit()?;
            let open: Option<i64> = row.try_get(6)?;
            let text: Option<String> = row.try_get(7)?;
            Ok(Some(StoredConversation {
                id: id.clone(),
                owner: row.try_get(1)?,
                user_id: row.try_get(2)?,
                personality: row.try_get(3)?,
                model: row.try_get(9)?,
                last_seq: small(row.try_get(4)?),
                turns: small(row.try_get(5)?),
                open_turn: open.map(|turn| (small(turn), text.unwrap_or_default())),
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
        self.pool.run("read events", |connection| {
            let Connection { client, statements } = connection;
            let mut tx = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let statement = prepared(statements, &mut tx, SESSION_FIRST_SEQ)?;
            let Some(row) = tx.query_opt(&statement, &[&id.as_str()])? else {
                return Ok(EventPage::default());
            };
            let key: i64 = row.try_get(0)?;
            let first_seq: i64 = row.try_get(1)?;
            let statement = prepared(statements, &mut tx, EVENT_RANGE)?;
            // A portal hands the rows over a few at a time, so that a page of large events
            // does not bring every later one over the wire with it.
            let portal = tx.bind(&statement, &[&key, &big(after), &big(up_to)])?;
            let mut events = Vec::new();
            let mut bytes = 0;
            let mut chunk = FIRST_EVENT_ROWS;
            'page: while bytes < max_bytes {
                let rows = tx.query_portal(&portal, chunk)?;
                if rows.is_empty() {
                    break;
                }
                for row in &rows {
                    let body: String = row.try_get(1)?;
                    bytes += body.len();
                    events.push((small(row.try_get(0)?), body));
                    if bytes >= max_bytes {
                        break 'page;
                    }
                }
                if rows.len() < chunk as usize {
                    break;
                }
                chunk = (chunk * 4).min(MAX_EVENT_ROWS);
            }
            drop(portal);
            tx.commit()?;
            Ok(EventPage {
                events,
                first_seq: small(first_seq).max(1),
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
        let before = before.map_or(i64::MAX, big);
        self.pool.run("read events", |connection| {
            let Connection { client, statements } = connection;
            let mut tx = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let statement = prepared(statements, &mut tx, OWNED_SESSION_KEY)?;
            let Some(row) = tx.query_opt(&statement, &[&id.as_str(), &owner])? else {
                return Ok(None);
            };
            let key: i64 = row.try_get(0)?;
            let statement = prepared(statements, &mut tx, EVENTS_BEFORE)?;
            let mut bodies = tx
                .query(&statement, &[&key, &before, &big(limit as u64)])?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<Vec<String>, _>>()?;
            tx.commit()?;
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
        let limit = big(limit as u64);
        if let Some(text) = query {
            let Some(words) = tsqueries(text).into_iter().next() else {
                return Ok(Vec::new());
            };
            return self.read_searching("search conversations", |tx, statements, deadline| {
                if !set_timeout(tx, statements, deadline)? {
                    return Ok(Vec::new());
                }
                let statement = prepared(statements, tx, SEARCH_CONVERSATIONS)?;
                match tx.query(&statement, &[&owner, &words, &limit]) {
                    Ok(rows) => Ok(rows
                        .iter()
                        .map(summary_from_row)
                        .collect::<Result<Vec<_>, _>>()?
                        .into_iter()
                        .flatten()
                        .collect()),
                    Err(e) if timed_out(&e) => {
                        log::debug!("store: a conversation search ran out of time");
                        Ok(Vec::new())
                    }
                    Err(e) => Err(e),
                }
            });
        }
        self.pool.run("list conversations", |connection| {
            let Connection { client, statements } = connection;
            let statement = prepared(statements, client, LIST)?;
            Ok(client
                .query(&statement, &[&owner, &limit])?
                .iter()
                .map(summary_from_row)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect())
        })
    }

    fn summary(&self, owner: &str, id: &SessionId) -> Result<Option<ConversationSummary>> {
        self.pool.run("read conversation", |connection| {
            let Connection { client, statements } = connection;
            let statement = prepared(statements, client, SUMMARY)?;
            Ok(client
                .query_opt(&statement, &[&id.as_str(), &owner])?
                .map(|row| summary_from_row(&row))
                .transpose()?
                .flatten())
        })
    }

    fn idle(&self, idle: Duration, limit: usize) -> Result<Vec<SessionId>> {
        let cutoff = unix_now().saturating_sub(i64::try_from(idle.as_secs()).unwrap_or(i64::MAX));
        self.pool.run("find idle conversations", |connection| {
            let Connection { client, statements } = connection;
            let statement = prepared(statements, client, IDLE)?;
            let ids = client
                .query(&statement, &[&cutoff, &big(limit as u64)])?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<Vec<String>, _>>()?;
            Ok(ids.iter().filter_map(|id| SessionId::parse(id)).collect())
        })
    }

    fn count(&self, owner: &str) -> Result<u64> {
        self.pool.run("count conversations", |connection| {
            let Connection { client, statements } = connection;
            let statement = prepared(statements, client, COUNT)?;
            let n: i64 = client.query_one(&statement, &[&owner])?.try_get(0)?;
            Ok(small(n))
        })
    }

    /// PostgreSQL has no cap on a database's size, so the store keeps one: once the database
    /// (`pg_database_size`, measured at most once a second while a cap is set) reaches `bytes`,
    /// writes that add data (journal batches, graph writes) fail as on a full disk; deletions
    /// still go through. The database may pass the cap by what one second of writes adds.
    fn set_size_limit(&self, bytes: Option<u64>) -> Result<()> {
        *self.size.lock() = SizeCap {
            limit: bytes,
            measured: None,
        };
        Ok(())
    }

    fn reassign_owner(&self, old: &str, new: &str) -> Result<u64> {
        self.write("reassign conversations", |connection, _| {
            connection.client.execute(
                "UPDATE sessions SET owner = $2 WHERE owner = $1",
                &[&old, &new],
            )
        })
    }

    /// While the database is thought unreachable, this tries it (at most once per backoff,
    /// bounded by the connect timeout), so that a server no one sends work to, such as one a
    /// load balancer took out for failing its health check, still sees the database return.
    fn status(&self) -> StoreStatus {
        if self.pool.connector().is_down() {
            let _ = self.pool.run("probe the database", |connection| {
                connection.client.simple_query("SELECT 1").map(|_| ())
            });
        }
        StoreStatus {
            backend: "postgres",
            reachable: !self.pool.connector().is_down(),
            pool: Some(self.pool.status()),
        }
    }
}

/// A fact stored unless its owner has it: the row and whether it is new. The insert is tried
/// only when the fact is not there, so that a known fact uses up no id (ids have no gaps, as
/// with SQLite, unless two calls race); the unique index stores it once either way.
const REMEMBER: &str = "WITH found AS (SELECT id, kind, label, content, properties, \
     created_at, updated_at FROM nodes \
     WHERE owner = $1 AND kind = 'fact' AND content_sha256 = $4), \
     ins AS (INSERT INTO nodes \
     (owner, kind, label, content, content_sha256, properties, created_at, updated_at) \
     SELECT $1, 'fact', $2, $3, $4, '{}', $5, $5 WHERE NOT EXISTS (SELECT 1 FROM found) \
     ON CONFLICT (owner, content_sha256) WHERE kind = 'fact' DO NOTHING \
     RETURNING id, kind, label, content, properties, created_at, updated_at) \
     SELECT id, kind, label, content, properties, created_at, updated_at, true FROM ins \
     UNION ALL \
     SELECT id, kind, label, content, properties, created_at, updated_at, false FROM found";
const REMEMBERED: &str = "SELECT id, kind, label, content, properties, created_at, updated_at \
     FROM nodes WHERE owner = $1 AND kind = 'fact' AND content_sha256 = $2";
const SEARCH_NODES: &str = "WITH q AS (SELECT to_tsquery('sparky_english', $2) AS words) \
     SELECT n.id, n.kind, n.label, n.content, n.properties, n.created_at, n.updated_at \
     FROM nodes n, q WHERE numnode(q.words) > 0 AND n.search @@ (q.words && $1::text::tsquery) \
     AND ($3::text IS NULL OR n.kind = $3) \
     ORDER BY ts_rank_cd(n.search, q.words) DESC, n.id DESC LIMIT $4";
const RECENT: &str = "SELECT id, kind, label, content, properties, created_at, updated_at \
     FROM nodes WHERE owner = $1 AND ($2::text IS NULL OR kind = $2) ORDER BY id DESC LIMIT $3";
const ADD_NODE: &str = "INSERT INTO nodes \
     (owner, kind, label, content, content_sha256, properties, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id";
const ADD_EDGE: &str = "INSERT INTO edges (source, target, kind, properties, created_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (source, target, kind) DO NOTHING";
const GET_EDGE: &str = "SELECT id, source, target, kind, properties FROM edges \
     WHERE source = $1 AND target = $2 AND kind = $3";
const NODE_EDGES: &str = "SELECT id, source, target, kind, properties FROM edges \
     WHERE source = $1 OR target = $1 ORDER BY id";
const DELETE_NODE: &str = "DELETE FROM nodes WHERE id = $1 AND owner = $2";

impl GraphStore for PostgresStore {
    fn remember(&self, owner: &str, content: &str) -> Result<(Node, bool)> {
        let now = unix_now();
        let label = label_for(content);
        let digest = Sha256::digest(content.as_bytes()).to_vec();
        self.graph_room()?;
        let (node, new) = self.pool.run("remember", |connection| {
            // One statement: the unique index stores a fact once however many ask at once.
            let Connection { client, statements } = connection;
            let statement = prepared(statements, client, REMEMBER)?;
            if let Some(row) =
                client.query_opt(&statement, &[&owner, &label, &content, &digest, &now])?
            {
                return Ok((Some(node_from_row(&row)?), row.try_get(7)?));
            }
            let statement = prepared(statements, client, REMEMBERED)?;
            let found = client
                .query_opt(&statement, &[&owner, &digest])?
                .map(|row| node_from_row(&row))
                .transpose()?;
            Ok((found, false))
        })?;
        let node = node.ok_or_else(|| Error::Store("a fact vanished as it was stored".into()))?;
        if new {
            self.nodes.fetch_add(1, Ordering::Relaxed);
        }
        Ok((node, new))
    }

    fn search(
        &self,
        owner: &str,
        query: &str,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Node>> {
        let queries = tsqueries(query);
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let owner = owner_lexeme(owner);
        self.read_searching("search", |tx, statements, deadline| {
            let mut found: Vec<Node> = Vec::new();
            for words in &queries {
                if found.len() >= limit || !set_timeout(tx, statements, deadline)? {
                    break;
                }
                let statement = prepared(statements, tx, SEARCH_NODES)?;
                match tx.query(&statement, &[&owner, words, &kind, &big(limit as u64)]) {
                    Ok(rows) => {
                        for row in rows {
                            let node = node_from_row(&row)?;
                            if found.len() < limit && !found.iter().any(|n| n.id == node.id) {
                                found.push(node);
                            }
                        }
                    }
                    Err(e) if timed_out(&e) => {
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
        self.pool.run("list nodes", |connection| {
            let Connection { client, statements } = connection;
            let statement = prepared(statements, client, RECENT)?;
            client
                .query(&statement, &[&owner, &kind, &big(limit as u64)])?
                .iter()
                .map(node_from_row)
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
        let digest = Sha256::digest(content.as_bytes()).to_vec();
        self.graph_room()?;
        let id = self.pool.run_once("add node", |connection| {
            let Connection { client, statements } = connection;
            let statement = prepared(statements, client, ADD_NODE)?;
            client
                .query_one(
                    &statement,
                    &[&owner, &kind, &label, &content, &digest, properties, &now],
                )?
                .try_get::<_, i64>(0)
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
        let now = unix_now();
        self.graph_room()?;
        let edge = self.pool.run("add edge", |connection| {
            for id in [source, target] {
                if get_node(connection, owner, id)?.is_none() {
                    return Ok(Err(id));
                }
            }
            let Connection { client, statements } = connection;
            let statement = prepared(statements, client, ADD_EDGE)?;
            client.execute(&statement, &[&source, &target, &kind, properties, &now])?;
            let statement = prepared(statements, client, GET_EDGE)?;
            let row = client.query_one(&statement, &[&source, &target, &kind])?;
            Ok(Ok(edge_from_row(&row)?))
        })?;
        edge.map_err(|id| Error::Store(format!("there is no node #{id}")))
    }

    fn get(&self, owner: &str, id: i64) -> Result<Option<Neighbourhood>> {
        self.pool.run("get", |connection| {
            let Some(node) = get_node(connection, owner, id)? else {
                return Ok(None);
            };
            let edges = {
                let Connection { client, statements } = &mut *connection;
                let statement = prepared(statements, client, NODE_EDGES)?;
                client
                    .query(&statement, &[&id])?
                    .iter()
                    .map(edge_from_row)
                    .collect::<Result<Vec<_>, _>>()?
            };
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
        let deleted = self.pool.run_once("delete", |connection| {
            let Connection { client, statements } = connection;
            let statement = prepared(statements, client, DELETE_NODE)?;
            Ok(client.execute(&statement, &[&id, &owner])? > 0)
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
        self.write("reassign nodes", |connection, _| {
            let mut tx = connection.client.transaction()?;
            tx.execute(
                "UPDATE embeddings SET owner = $2 WHERE owner = $1",
                &[&old, &new],
            )?;
            let moved = tx.execute(
                "UPDATE nodes SET owner = $2 WHERE owner = $1",
                &[&old, &new],
            )?;
            tx.commit()?;
            Ok(moved)
        })
    }

    fn unembedded(&self, model: &str, limit: usize) -> Result<Vec<(i64, String)>> {
        self.pool.run("find facts to embed", |connection| {
            let Connection { client, statements } = connection;
            let statement = prepared(statements, client, UNEMBEDDED)?;
            client
                .query(&statement, &[&model, &big(limit as u64)])?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect()
        })
    }

    fn store_embeddings(&self, model: &str, vectors: &[(i64, Vec<f32>)]) -> Result<()> {
        let ids: Vec<i64> = vectors.iter().map(|(id, _)| *id).collect();
        let bytes: Vec<Vec<u8>> = vectors.iter().map(|(_, v)| vector_bytes(v)).collect();
        self.pool.run("store embeddings", |connection| {
            let Connection { client, statements } = connection;
            let statement = prepared(statements, client, STORE_EMBEDDINGS)?;
            client.execute(&statement, &[&ids, &model, &bytes])?;
            Ok(())
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
        self.pool.run("semantic search", |connection| {
            let scored = {
                let Connection { client, statements } = &mut *connection;
                let statement = prepared(statements, client, VECTORS)?;
                let mut scored: Vec<(i64, f32)> = Vec::new();
                for row in client.query(&statement, &[&owner, &model, &kind])? {
                    let bytes: &[u8] = row.try_get(1)?;
                    if let Some(similarity) = stored_similarity(query, bytes) {
                        scored.push((row.try_get(0)?, similarity));
                    }
                }
                best(scored.into_iter(), limit)
            };
            let mut found = Vec::new();
            for (id, similarity) in scored {
                if let Some(node) = get_node(connection, owner, id)? {
                    found.push((node, similarity));
                }
            }
            Ok(found)
        })
    }
}

#[cfg(test)]
impl PostgresStore {
    /// Rows in `table`, for tests.
    pub(in super::super) fn count_rows(&self, table: &str) -> i64 {
        self.pool
            .run("count", |connection| {
                connection
                    .client
                    .query_one(&format!("SELECT count(*) FROM {table}"), &[])?
                    .try_get(0)
            })
            .unwrap_or(-1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::cluster;
    use super::*;

    /// An event and a note: a note has no key, so a batch written twice shows as two notes.
    fn batch(id: &SessionId, seq: u64) -> Vec<WriteOp> {
        vec![
            WriteOp::Event {
                session: id.clone(),
                seq,
                body: format!("event {seq}").into(),
                turn: TurnMark::None,
                search_text: None,
            },
            WriteOp::Note {
                session: id.clone(),
                text: format!("note {seq}"),
            },
        ]
    }

    /// The transaction id that wrote event `seq` (a fresh cluster's ids need no epoch).
    fn writer_of(store: &PostgresStore, seq: i64) -> String {
        store
            .pool
            .run("xmin", |connection| {
                connection
                    .client
                    .query_one("SELECT xmin::text FROM events WHERE seq = $1", &[&seq])?
                    .try_get(0)
            })
            .unwrap()
    }

    #[test]
    fn a_batch_whose_commit_was_cut_off_is_written_exactly_once() {
        let store = PostgresStore::connect(&cluster::fresh_database(), 2).unwrap();
        let id = SessionId::from_random_bytes([5; 16]);
        let create = WriteOp::CreateSession {
            id: id.clone(),
            owner: "ann".into(),
            user_id: None,
            personality: None,
            model: None,
        };
        store.apply(&[create]).unwrap();
        store.apply(&batch(&id, 1)).unwrap();

        // The commit went through, but the writer lost the connection before hearing so: the
        // same batch, tried again, is not written twice (its note would be).
        let committed = writer_of(&store, 1);
        store.writer.lock().memory.uncertain = Some((committed, batch(&id, 1)));
        store.apply(&batch(&id, 1)).unwrap();
        assert_eq!(store.count_rows("events"), 1);
        assert_eq!(store.count_rows("notes"), 1);

        // The commit did not go through: the batch is written.
        let aborted: String = {
            let mut writer = store.writer.lock();
            let client = &mut writer.connection.as_mut().unwrap().client;
            let mut tx = client.transaction().unwrap();
            let xid = tx
                .query_one("SELECT pg_current_xact_id()::text", &[])
                .unwrap()
                .get(0);
            tx.rollback().unwrap();
            xid
        };
        store.writer.lock().memory.uncertain = Some((aborted, batch(&id, 2)));
        store.apply(&batch(&id, 2)).unwrap();
        assert_eq!(store.count_rows("events"), 2);
        assert_eq!(store.count_rows("notes"), 2);

        // An event whose `seq` the conversation has used already (written by an instance that
        // lost its lease) is left out, and the first one kept; the batch is not stuck on it.
        let stale = WriteOp::Event {
            session: id.clone(),
            seq: 2,
            body: "a stale writer's event 2".into(),
            turn: TurnMark::None,
            search_text: None,
        };
        store.apply(&[stale]).unwrap();
        assert_eq!(store.count_rows("events"), 2);
        let page = store.events(&id, 1, 2, 1 << 20).unwrap();
        assert_eq!(page.events, vec![(2, "event 2".to_owned())]);
        assert_eq!(store.load(&id, 10, 10).unwrap().unwrap().last_seq, 2);
    }
}
