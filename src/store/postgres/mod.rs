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
//! once (`batch.rs`). Every other failure leaves nothing of the batch, and the journal retries
//! it.
//!
//! Searches use PostgreSQL's full-text search (`tsvector`, GIN indexes, `ts_rank_cd`), keep the
//! same words as SQLite's ([`super::MAX_SEARCH_WORDS`]), and run within the search budget
//! through `statement_timeout`: a search out of time answers with what it found.
//!
//! What is stored, and how it is read back, is the shared logic's (`plan/`); `db.rs` runs its
//! statements on these connections, `schema.rs` holds the migrations, `import.rs` writes what
//! `sparky migrate-store` copies.
//!
//! Depends on: `common::config`, `common::error`, `common::protocol`, `store`, `store::plan`, `store::plan::files`, `store::postgres::db`, `store::postgres::pool`.

mod batch;
mod cluster;
mod db;
mod import;
mod pool;
pub(super) mod schema;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postgres::IsolationLevel;
use postgres::error::SqlState;

use self::db::{Pg, SQL};
use self::pool::{Connection, Connector, Pool, broken, describe};
use super::plan::{Backend, Counters, Dialect, View, Work, Write, sweep_uploads};
use super::{StoreStatus, WriteOp};
use crate::common::config::redact_url;
use crate::common::error::{Error, Result};
use crate::common::protocol::SessionId;

pub use schema::POSTGRES_SCHEMA_VERSION;

/// How long a measure of the database's size is trusted when a size cap is set.
const SIZE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

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
    /// The node count and the search budget.
    counters: Counters,
    /// The size cap (`--max-store-mib`) and the last measure of the database's size.
    size: Mutex<SizeCap>,
}

impl AsRef<Counters> for PostgresStore {
    fn as_ref(&self) -> &Counters {
        &self.counters
    }
}

/// The size cap and what the store knows of the database's size.
#[derive(Debug, Default)]
struct SizeCap {
    /// The cap, in bytes.
    limit: Option<u64>,
    /// The last measure of the database's size, and when it was taken.
    measured: Option<(Instant, u64)>,
    /// The size measured right after a deletion made at or past the cap. PostgreSQL keeps the
    /// space it freed and reuses it (once `VACUUM` has passed, which the deletion runs), so
    /// writes go on for as long as the database does not grow past this size. Forgotten once
    /// the database is below the cap.
    reusing: Option<u64>,
}

impl SizeCap {
    /// True when a deletion now should make its space reusable: a cap is set and the database
    /// was last measured at or past it.
    fn at_cap(&self) -> bool {
        matches!((self.limit, self.measured), (Some(limit), Some((_, bytes))) if bytes >= limit)
    }
}

/// The tables a conversation's deletion frees space in, for `VACUUM` (its files go with it).
const CONVERSATION_TABLES: &str = "events, messages, notes, turns, sessions, files, file_uses, \
     blobs, blob_chunks, blob_text, text_chunks, chunk_vectors";

/// The tables a deletion on the pool (a fact, a file) frees space in, for `VACUUM`.
const POOL_TABLES: &str = "nodes, edges, embeddings, files, file_uses, blobs, blob_chunks, \
     blob_text, text_chunks, chunk_vectors, shares";

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
}

/// A store error for `what`, described as PostgreSQL describes it, keeping `e` as its source.
fn store_error(what: &str, e: postgres::Error) -> Error {
    let detail = format!("{what}: {}", describe(&e));
    let full = e.code() == Some(&SqlState::DISK_FULL);
    Error::store_caused(detail, e).full_if(full)
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
            Error::store(format!(
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
        schema::ensure_indexes(&mut connection.client, &target)?;
        let nodes: i64 = connection
            .client
            .query_one("SELECT count(*) FROM nodes", &[])
            .and_then(|row| row.try_get(0))
            .map_err(|e| store_error("count nodes", e))?;
        log::info!("store: using PostgreSQL database {target}");
        let store = PostgresStore {
            pool,
            writer: Mutex::new(Writer {
                connection: Some(connection),
                ..Writer::default()
            }),
            instance,
            listener: Mutex::new(None),
            counters: Counters::new(nodes, pool_size),
            size: Mutex::new(SizeCap::default()),
        };
        sweep_uploads(&store)?;
        Ok(store)
    }

    /// What a start on the database at `url` would find, for `sparky check`, changing nothing:
    /// whether it can be reached, and its schema version.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the URL is not one, the database cannot be reached, or its schema
    /// is newer than this build.
    pub fn inspect(url: &str) -> Result<String> {
        let (mut connection, target) = Self::check_connection(url)?;
        let client = &mut connection.client;
        let failed = |e: postgres::Error| store_error(&format!("database {target}"), e);
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
            v if v > POSTGRES_SCHEMA_VERSION => Err(Error::store(format!(
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

    /// A connection of `sparky check`'s own to the database at `url`, and the URL as it may be
    /// shown (without its password).
    fn check_connection(url: &str) -> Result<(Connection, String)> {
        let target = redact_url(url);
        let config: postgres::Config = url.parse().map_err(|e| {
            Error::store(format!(
                "{target} is not a PostgreSQL URL like postgres://USER@HOST[:PORT]/DB: {e}"
            ))
        })?;
        let connection = Connector::new(config, target.clone(), "sparky check").connect()?;
        Ok((connection, target))
    }

    /// How many user accounts the database at `url` holds, and how many admins, without
    /// changing anything: for `sparky check`. `None` before the accounts' schema version.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the database cannot be reached or read.
    pub fn inspect_accounts(url: &str) -> Result<Option<(u64, u64)>> {
        let (mut connection, target) = Self::check_connection(url)?;
        let client = &mut connection.client;
        let failed = |e: postgres::Error| store_error(&format!("database {target}"), e);
        let present: bool = client
            .query_one("SELECT to_regclass('users') IS NOT NULL", &[])
            .and_then(|row| row.try_get(0))
            .map_err(failed)?;
        if !present {
            return Ok(None);
        }
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE admin) FROM users",
                &[],
            )
            .map_err(failed)?;
        let users: i64 = row.try_get(0).map_err(failed)?;
        let admins: i64 = row.try_get(1).map_err(failed)?;
        Ok(Some((users.max(0) as u64, admins.max(0) as u64)))
    }

    /// The database as named in messages (without a password).
    pub fn target(&self) -> &str {
        &self.pool.connector().target
    }

    /// Gives every full-text search from now on `budget` to run (default
    /// [`super::DEFAULT_SEARCH_BUDGET`]): graph searches, memory lookups and the conversation
    /// search. A search that runs out is stopped by the database and returns what it had found,
    /// which may be nothing; it is not an error.
    pub fn set_search_budget(&self, budget: Duration) {
        self.counters.set_search_budget(budget);
    }

    /// Waits up to `timeout` for the semantic search's vector indexes to finish linking their
    /// graphs (they link on a thread of their own); true when none is left linking. For
    /// benchmarks, which measure a built index.
    pub fn settle_vector_indexes(&self, timeout: Duration) -> bool {
        self.counters.vectors().settle(timeout)
    }

    /// Makes the semantic search read the table (brute force) below `index_from` of a
    /// principal's vectors, scan a copy in memory below `graph_from`, and search a graph past
    /// it (defaults 1,000 and 20,000); drops the indexes built so far. For benchmarks, which
    /// measure each way at each size.
    pub fn tune_vector_search(&self, index_from: usize, graph_from: usize) {
        self.counters.vectors().tune(index_from, graph_from);
    }

    /// Runs `work` on the writer connection, connecting first when there is none. A connection
    /// that broke is dropped, and `work` runs once more on a new one: the usual failure after
    /// the database restarted is a connection that was already dead. `work` must be safe to
    /// repeat: a batch is (see `batch.rs`).
    fn write_on_writer<T>(
        &self,
        what: &str,
        mut work: impl FnMut(&mut Connection, &mut WriterMemory) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut writer = self.writer.lock();
        let Writer { connection, memory } = &mut *writer;
        let mut tries = 0;
        loop {
            tries += 1;
            let open = self.writer_connection(connection)?;
            let result = work(open, memory);
            let Err(e) = result else {
                return result.map_err(|e| store_error(what, e));
            };
            // Keys learnt in a transaction that did not commit may name nothing.
            memory.keys.clear();
            if !broken(&e, &open.client) {
                return Err(store_error(what, e));
            }
            *connection = None;
            if tries == 2 {
                self.pool.connector().lost();
                return Err(store_error(what, e));
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
            .ok_or_else(|| Error::store("the writer has no connection"))
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
        if bytes < limit {
            size.reusing = None;
            return Ok(());
        }
        if size.reusing.is_some_and(|reusing| bytes <= reusing) {
            return Ok(());
        }
        Err(Error::store_full(format!(
            "database {} holds {} MiB, at or past its cap of {} MiB (--max-store-mib)",
            self.target(),
            bytes >> 20,
            limit >> 20
        )))
    }

    /// After a deletion made at or past the size cap: runs `VACUUM` on `tables` with `run`,
    /// so that PostgreSQL can reuse the space the deletion freed, and lets writes go on while
    /// the database does not grow (see [`SizeCap::reusing`]). The size is measured with
    /// `measure` afterwards. A failure is logged: autovacuum gets there later.
    fn make_room(
        &self,
        tables: &str,
        run: impl FnOnce(&str) -> Result<()>,
        measure: impl FnOnce() -> Result<u64>,
    ) {
        if !self.size.lock().at_cap() {
            return;
        }
        if let Err(e) = run(&format!("VACUUM {tables}")) {
            log::warn!("store: cannot vacuum after a deletion at the size cap: {e}");
        }
        match measure() {
            Ok(bytes) => {
                let mut size = self.size.lock();
                size.measured = Some((Instant::now(), bytes));
                size.reusing = Some(bytes);
            }
            Err(e) => log::warn!("store: cannot measure the database after a deletion: {e}"),
        }
    }

    /// [`PostgresStore::check_room`] for a graph write, measuring on a pool connection.
    fn graph_room(&self) -> Result<()> {
        self.check_room(|| {
            self.pool.run("measure the database", |connection| {
                database_size(&mut connection.client)
            })
        })
    }
}

impl Backend for PostgresStore {
    type Error = postgres::Error;

    const SQL: Dialect = SQL;

    /// Reads run on the pool. A snapshot is a read-only `REPEATABLE READ` transaction; a
    /// search a read-only transaction whose statements `Db::time_left` gives a
    /// `statement_timeout`.
    fn read<T>(&self, what: &str, view: View, work: &mut Work<'_, Self::Error, T>) -> Result<T> {
        let instance = &self.instance;
        let deadline = (view == View::Search).then(|| self.counters.search_deadline());
        self.pool.run(what, |connection| {
            let Connection { client, statements } = connection;
            if view == View::Statement {
                return work(&mut Pg::new(client, statements, instance));
            }
            let mut tx = match view {
                View::Snapshot => client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead),
                _ => client.build_transaction(),
            }
            .read_only(true)
            .start()?;
            let mut db = Pg::new(&mut tx, statements, instance);
            db.deadline = deadline;
            let value = work(&mut db)?;
            if view == View::Snapshot {
                tx.commit()?;
            }
            // A search has nothing to commit, and a timeout may have aborted its transaction.
            Ok(value)
        })
    }

    /// Owners move on the writer, in one transaction. The graph writes on the pool: those that
    /// add are refused past the size cap, and those that a second run would repeat run once.
    fn write<T>(&self, what: &str, write: Write, work: &mut Work<'_, Self::Error, T>) -> Result<T> {
        let instance = &self.instance;
        if write == Write::Owners {
            return self.write_on_writer(what, |connection, _| {
                let Connection { client, statements } = connection;
                let mut tx = client.transaction()?;
                let value = work(&mut Pg::new(&mut tx, statements, instance))?;
                tx.commit()?;
                Ok(value)
            });
        }
        if matches!(write, Write::Upsert | Write::Insert) {
            self.graph_room()?;
        }
        // In a transaction, so that a write of several statements (an upload's end, a
        // file's deletion) is whole or not at all.
        let mut on_pool = |connection: &mut Connection| {
            let Connection { client, statements } = connection;
            let mut tx = client.transaction()?;
            let value = work(&mut Pg::new(&mut tx, statements, instance))?;
            tx.commit()?;
            Ok(value)
        };
        let value = match write {
            Write::Upsert | Write::Replace => self.pool.run(what, &mut on_pool),
            _ => self.pool.run_once(what, &mut on_pool),
        }?;
        if write == Write::Delete {
            self.make_room(
                POOL_TABLES,
                |sql| self.pool.run("make room", |c| c.client.batch_execute(sql)),
                || {
                    self.pool
                        .run("measure the database", |c| database_size(&mut c.client))
                },
            );
        }
        Ok(value)
    }

    /// A statement stopped by `statement_timeout`.
    fn out_of_time(e: &postgres::Error) -> bool {
        e.code() == Some(&SqlState::QUERY_CANCELED)
    }

    fn write_batch(&self, batch: &[WriteOp]) -> Result<()> {
        let measure =
            || self.write_on_writer("measure the database", |c, _| database_size(&mut c.client));
        if !WriteOp::only_removes(batch) {
            self.check_room(measure)?;
        }
        self.write_on_writer("write", |connection, memory| {
            batch::apply_batch(connection, memory, &self.instance, batch)
        })?;
        if batch
            .iter()
            .any(|op| matches!(op, WriteOp::DeleteSession { .. }))
        {
            self.make_room(
                CONVERSATION_TABLES,
                |sql| self.write_on_writer("make room", |c, _| c.client.batch_execute(sql)),
                measure,
            );
        }
        Ok(())
    }

    /// PostgreSQL has no cap on a database's size, so the store keeps one: once the database
    /// (`pg_database_size`, measured at most once a second while a cap is set) reaches `bytes`,
    /// writes that add data (journal batches, graph writes) fail as on a full disk; deletions
    /// and renames still go through. The database may pass the cap by what one second of writes
    /// adds. A deletion at the cap makes room as PostgreSQL can: it vacuums the tables it freed
    /// space in, and writes go on while the database does not grow (see [`SizeCap::reusing`]).
    fn cap_size(&self, bytes: Option<u64>) -> Result<()> {
        *self.size.lock() = SizeCap {
            limit: bytes,
            ..SizeCap::default()
        };
        Ok(())
    }

    /// While the database is thought unreachable, this tries it (at most once per backoff,
    /// bounded by the connect timeout), so that a server no one sends work to, such as one a
    /// load balancer took out for failing its health check, still sees the database return.
    fn health(&self) -> StoreStatus {
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

/// The database's size in bytes.
fn database_size(client: &mut postgres::Client) -> Result<u64, postgres::Error> {
    let bytes: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])?
        .try_get(0)?;
    Ok(bytes.max(0) as u64)
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
