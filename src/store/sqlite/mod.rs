//! `SqliteStore`: both store traits over one SQLite file in WAL mode (or a private in-memory
//! database for `--in-memory`).
//!
//! One writer connection, behind a mutex, takes the journal's batches and the graph's writes;
//! it never checkpoints the WAL itself: a thread of its own does (`checkpoint.rs`).
//! A small pool of reader connections serves everything else (loading a conversation, replay,
//! the API, graph searches): WAL lets them read while the writer writes, so a slow search never
//! holds up a commit or another reader. A full-text search keeps at most [`super::MAX_SEARCH_WORDS`]
//! words and runs within a time budget (SQLite's progress handler interrupts it), so that no
//! search holds a reader for long: one that runs out returns what it found so far.
//!
//! What is stored, and how it is read back, is the shared logic's (`plan/`); `db.rs` runs its
//! statements on these connections, `schema.rs` holds the migrations, `checkpoint.rs` runs the
//! WAL's checkpoints, `export.rs` reads
//! everything for `sparky migrate-store`, `backup.rs` copies the file for `sparky backup`.
//!
//! Depends on: `common::error`, `store`, `store::plan`, `store::plan::batch`, `store::plan::files`,
//! `store::sqlite::checkpoint`, `store::sqlite::db`, `store::sqlite::schema`,
//! `store::sqlite::text_index`.

mod backup;
mod checkpoint;
mod db;
mod export;
pub(super) mod schema;
mod text_index;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use rusqlite::{Connection, OpenFlags};

use self::checkpoint::{Checkpoints, Chores, OnWriter};
use self::db::{Lite, SQL};
use self::schema::migrate;
use self::text_index::{DUE_TEXTS, TextIndex};
use super::plan::{Backend, Counters, Dialect, Keys, View, Work, Write, apply, sweep_uploads};
use super::{StoreStatus, WriteOp};
use crate::common::error::{Error, Result};

pub use self::backup::BackupReport;
pub use self::db::fts_queries;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "sparky.db";

/// Reader connections in the pool.
const READERS: usize = 4;

/// SQLite virtual-machine instructions between two looks at a search's clock: a few
/// microseconds of work, so a search overruns its budget by little, and the clock costs
/// nothing measurable.
const PROGRESS_OPS: i32 = 1000;

/// SQLite's largest `max_page_count`.
const MAX_PAGES: i64 = 4_294_967_294;

/// The SQLite store. See the module documentation for its connections.
#[derive(Debug)]
pub struct SqliteStore {
    /// Shared with the `checkpoint` thread, which ends a long WAL's checkpoint on it.
    writer: Arc<Mutex<Writer>>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// The node count and the search budget.
    counters: Counters,
    /// The thread that checkpoints the WAL, for a store on disk that a server runs on. It also
    /// fills the conversation search's index; without it, the batches do, in steps as large.
    checkpoints: Option<Checkpoints>,
    /// What the conversation search's index lacks, shared with the `checkpoint` thread.
    text: Arc<TextIndex>,
    /// Held (and locked) for as long as the store is open.
    _lock: Option<File>,
    path: Option<PathBuf>,
}

impl AsRef<Counters> for SqliteStore {
    fn as_ref(&self) -> &Counters {
        &self.counters
    }
}

/// The writer connection and what it remembers between batches.
#[derive(Debug)]
struct Writer {
    connection: Connection,
    /// Conversation id to its integer key.
    keys: Keys,
    /// The size cap in pages (`max_page_count`), when one is set.
    cap_pages: Option<i64>,
}

impl Writer {
    /// Runs `work` with the size cap lifted when `lift` is set: a deletion must go through a
    /// full store, since it is how the store makes room, yet deleting from a full-text index
    /// may write a few pages of its own (FTS5 records deletions in new segments, and merges
    /// them). The cap is put back afterwards; the pages freed go to SQLite's free list, where
    /// later writes find them.
    fn uncapped<T>(
        &mut self,
        lift: bool,
        work: impl FnOnce(&mut Self) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let Some(cap) = self.cap_pages.filter(|_| lift) else {
            return work(self);
        };
        self.connection
            .pragma_update(None, "max_page_count", MAX_PAGES)?;
        let result = work(self);
        // A cap below the file's size (the deletion's own pages) keeps the file's size.
        let restored = self.connection.pragma_update(None, "max_page_count", cap);
        let value = result?;
        restored?;
        Ok(value)
    }
}

fn store_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::store(format!("{context}: {e}"))
}

/// A store error for a write: one refused for lack of room (`SQLITE_FULL`: a full disk, or
/// `max_page_count`) is marked as such.
fn write_error(context: &str, e: &rusqlite::Error) -> Error {
    let full = e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull);
    store_error(context, e).full_if(full)
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
            return Err(Error::store(format!(
                "data directory {} is in use by another running sparky",
                dir.display()
            )));
        }
        let path = dir.join(DATABASE_FILE);
        let name = path.to_string_lossy().into_owned();
        let mut store = Self::connect(&name, &format!("database {}", path.display()))?;
        let checkpointer = open_connection(&name, &format!("database {}", path.display()))?;
        let writer = store.writer.clone();
        let on_writer: OnWriter = Box::new(move || {
            writer
                .lock()
                .connection
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((row.get(1)?, row.get(2)?))
                })
        });
        let (writer, text) = (store.writer.clone(), store.text.clone());
        let chores: Chores = Box::new(move |quiet| {
            let waiting = text.waiting();
            if waiting >= DUE_TEXTS || (quiet && waiting > 0) {
                index_text(&writer, &text);
            }
        });
        store.checkpoints = Some(Checkpoints::start(
            &mut store.writer.lock().connection,
            checkpointer,
            on_writer,
            chores,
            &path,
        )?);
        store._lock = Some(lock);
        store.path = Some(path);
        Ok(store)
    }

    /// Opens the store in `dir` beside the server that may be running on it, without its lock:
    /// for `sparky user`, whose few writes SQLite's own locking (WAL, a busy timeout) orders
    /// with the server's. Creates and migrates the store like [`open`](Self::open) when there
    /// is none yet, but never sweeps half-written uploads (the server's may be under way).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open), but for the lock.
    pub fn open_beside(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            store_error(
                &format!("cannot create data directory {}", dir.display()),
                e,
            )
        })?;
        let path = dir.join(DATABASE_FILE);
        let name = path.to_string_lossy().into_owned();
        let mut store = Self::connect_only(&name, &format!("database {}", path.display()))?;
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
        if Self::in_use(dir) {
            return Err(Error::store(format!(
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
            v if v > super::SCHEMA_VERSION => Err(Error::store(format!(
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

    /// How many user accounts the store in `dir` holds, and how many admins, read without
    /// changing anything (a running server's included): for `sparky check`. `None` when there
    /// is no database yet, or it predates accounts.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the database cannot be read.
    pub fn inspect_accounts(dir: &Path) -> Result<Option<(u64, u64)>> {
        let path = dir.join(DATABASE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let connection = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| store_error(&format!("cannot open {}", path.display()), e))?;
        let present: bool = connection
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'users'",
                [],
                |row| row.get(0),
            )
            .map_err(|e| store_error(&format!("cannot read {}", path.display()), e))?;
        if !present {
            return Ok(None);
        }
        connection
            .query_row(
                "SELECT count(*), count(*) FILTER (WHERE admin) FROM users",
                [],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
            )
            .map(|(users, admins)| Some((users.max(0) as u64, admins.max(0) as u64)))
            .map_err(|e| store_error(&format!("cannot read {}", path.display()), e))
    }

    /// Whether another process holds `dir`'s lock: a server is running on it. For `sparky
    /// check`, which then checks the rest beside it.
    pub fn in_use(dir: &Path) -> bool {
        File::open(dir.join("LOCK")).is_ok_and(|lock| lock.try_lock().is_err())
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
        let store = Self::connect_only(name, context)?;
        sweep_uploads(&store)?;
        Ok(store)
    }

    /// [`connect`](Self::connect) without the sweep of half-written uploads.
    fn connect_only(name: &str, context: &str) -> Result<Self> {
        let mut writer = open_connection(name, context)?;
        migrate(&mut writer, context)?;
        let readers = (0..READERS)
            .map(|_| open_connection(name, context).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let nodes = writer
            .query_row("SELECT count(*) FROM nodes", [], |row| row.get::<_, i64>(0))
            .map_err(|e| store_error("count nodes", e))?;
        let store = SqliteStore {
            writer: Arc::new(Mutex::new(Writer {
                connection: writer,
                keys: Keys::new(),
                cap_pages: None,
            })),
            readers,
            next_reader: AtomicUsize::new(0),
            counters: Counters::new(nodes, READERS),
            checkpoints: None,
            text: Arc::new(TextIndex::default()),
            _lock: None,
            path: None,
        };
        // What a crash left out of the conversation search's index. A store that cannot take
        // it now (a full disk) opens all the same, and the first search tries again.
        index_text(&store.writer, &store.text);
        Ok(store)
    }

    /// The database file, when on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Gives every full-text search from now on `budget` to run (default
    /// [`super::DEFAULT_SEARCH_BUDGET`]): graph searches, memory lookups and the conversation
    /// search. A search that runs out is interrupted and returns what it had found, which may
    /// be nothing; it is not an error.
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

    /// Runs a full-text `search` on a reader connection within the search budget: SQLite's
    /// progress handler interrupts it once the budget has passed, and every statement it runs
    /// from then on fails with an error [`Backend::out_of_time`] knows, which `search` turns
    /// into a shorter answer.
    fn read_searching<T>(
        &self,
        what: &str,
        search: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let deadline = self.counters.search_deadline();
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
}

impl Backend for SqliteStore {
    type Error = rusqlite::Error;

    const SQL: Dialect = SQL;

    /// Reads run on a reader connection; a snapshot is a (deferred) transaction on it.
    fn read<T>(&self, what: &str, view: View, work: &mut Work<'_, Self::Error, T>) -> Result<T> {
        match view {
            View::Statement => work(&mut Lite(&self.reader())).map_err(|e| store_error(what, e)),
            View::Snapshot => {
                let connection = self.reader();
                let tx = connection
                    .unchecked_transaction()
                    .map_err(|e| store_error(what, e))?;
                work(&mut Lite(&tx)).map_err(|e| store_error(what, e))
            }
            View::Search => self.read_searching(what, |connection| work(&mut Lite(connection))),
        }
    }

    /// Every write runs on the one writer connection, in a transaction of its own. SQLite has
    /// no connection to lose, and its size cap is its own (`max_page_count`); a deletion goes
    /// through it (see [`Writer::uncapped`]).
    fn write<T>(&self, what: &str, write: Write, work: &mut Work<'_, Self::Error, T>) -> Result<T> {
        let mut writer = self.writer.lock();
        let written = writer.uncapped(write == Write::Delete, |writer| {
            let tx = immediate(&writer.connection)?;
            let value = work(&mut Lite(&tx))?;
            tx.commit()?;
            Ok(value)
        });
        written.map_err(|e| write_error(what, &e))
    }

    /// A statement stopped by the progress handler.
    fn out_of_time(e: &rusqlite::Error) -> bool {
        e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted)
    }

    fn catch_up_search(&self) {
        if self.text.waiting() > 0 {
            index_text(&self.writer, &self.text);
        }
    }

    /// A batch of only deletions and renames goes through the size cap (see
    /// [`Writer::uncapped`]).
    fn write_batch(&self, batch: &[WriteOp]) -> Result<()> {
        let texts = batch
            .iter()
            .filter(|op| {
                matches!(
                    op,
                    WriteOp::Event {
                        search_text: Some(_),
                        ..
                    }
                )
            })
            .count();
        // Without the `checkpoint` thread (in memory, beside a server), the batch that brings
        // the waiting texts to `DUE_TEXTS` indexes them itself.
        let inline = self.checkpoints.is_none() && self.text.waiting() + texts >= DUE_TEXTS;
        let mut writer = self.writer.lock();
        let written = writer.uncapped(WriteOp::only_removes(batch), |writer| {
            let Writer {
                connection, keys, ..
            } = writer;
            let tx = immediate(connection)?;
            apply(&mut Lite(&tx), &SQL, keys, batch)?;
            if inline {
                while self.text.step(&tx)? {}
            }
            tx.commit()
        });
        match written {
            Ok(()) if inline => self.text.caught_up(),
            Ok(()) => self.text.committed(texts),
            // Keys learnt in a transaction that did not commit may name nothing.
            Err(_) => writer.keys.clear(),
        }
        written.map_err(|e| write_error("write", &e))
    }

    fn cap_size(&self, bytes: Option<u64>) -> Result<()> {
        let mut writer = self.writer.lock();
        let connection = &writer.connection;
        let capped = (|| {
            let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
            // SQLite's own ceiling when there is no cap; a cap below the file's size keeps the
            // file's size (SQLite never truncates here).
            let pages = bytes.map(|bytes| {
                (i64::try_from(bytes).unwrap_or(i64::MAX) / page_size.max(1)).clamp(1, MAX_PAGES)
            });
            connection.pragma_update(None, "max_page_count", pages.unwrap_or(MAX_PAGES))?;
            Ok(pages)
        })();
        writer.cap_pages =
            capped.map_err(|e: rusqlite::Error| store_error("set the size limit", e))?;
        Ok(())
    }

    /// A file on the local disk is always there to reach; a full disk shows as the journal
    /// failing instead.
    fn health(&self) -> StoreStatus {
        StoreStatus {
            backend: "sqlite",
            reachable: true,
            pool: None,
        }
    }
}

/// Brings the conversation search's index up to what is committed, a step per transaction, so
/// that batches go on between steps. A failure (a full store) is logged and leaves the index
/// marked behind: searches miss the newest texts until a later try.
fn index_text(writer: &Mutex<Writer>, text: &TextIndex) {
    loop {
        let writer = writer.lock();
        let stepped = immediate(&writer.connection).and_then(|tx| {
            let more = text.step(&tx)?;
            tx.commit()?;
            Ok(more)
        });
        match stepped {
            Ok(true) => {}
            Ok(false) => {
                text.caught_up();
                return;
            }
            Err(e) => {
                log::warn!("store: the conversation search's index is behind: {e}");
                text.behind();
                return;
            }
        }
    }
}

/// A write transaction that takes the write lock at its start (`BEGIN IMMEDIATE`), waiting
/// for it up to the busy timeout. A deferred one that has read first is refused at once
/// (`database is locked`) when a `TRUNCATE` checkpoint or `sparky user` holds the lock, since
/// SQLite never waits to turn a read into a write.
fn immediate(connection: &Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    rusqlite::Transaction::new_unchecked(connection, rusqlite::TransactionBehavior::Immediate)
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

#[cfg(test)]
impl SqliteStore {
    /// Rows in `table`, for tests.
    pub(super) fn count_rows(&self, table: &str) -> i64 {
        self.reader()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap_or(-1)
    }

    /// Reader connections, for tests.
    pub(super) fn reader_count(&self) -> usize {
        self.readers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::db::{fts_terms, owner_term};
    use super::*;
    use crate::store::SCHEMA_VERSION;
    use crate::store::tests::temp_dir;

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
    fn the_wal_starts_over_after_each_burst_of_commits() {
        use crate::common::protocol::SessionId;
        use std::time::Instant;

        let dir = temp_dir("wal");
        let store = SqliteStore::open(&dir).unwrap();
        let session = SessionId::from_random_bytes([9; 16]);
        let create = WriteOp::CreateSession {
            id: session.clone(),
            owner: "local".into(),
            user_id: None,
            personality: None,
            model: None,
        };
        store.write_batch(&[create]).unwrap();
        let wal_pages = || store.checkpoints.as_ref().unwrap().wal_pages();
        let body = "x".repeat(6000);
        let mut seq = 0;
        let event = |seq: u64| WriteOp::Event {
            session: session.clone(),
            seq,
            body: format!("{seq} {body}").into(),
            turn: Default::default(),
            search_text: None,
        };
        for round in 0..3 {
            // A burst of commits, some 6,000 WAL pages (an event of 6 KB takes two pages).
            for _ in 0..150 {
                let batch: Vec<WriteOp> = (0..20)
                    .map(|_| {
                        seq += 1;
                        event(seq)
                    })
                    .collect();
                store.write_batch(&batch).unwrap();
            }
            // Then a pause, with a small commit now and then: the checkpoint thread copies
            // the WAL whole, and the next commit starts it over.
            let deadline = Instant::now() + Duration::from_secs(20);
            while wal_pages() >= checkpoint::CHECKPOINT_PAGES {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: the WAL is still {} pages long",
                    wal_pages()
                );
                std::thread::sleep(Duration::from_millis(20));
                seq += 1;
                store.write_batch(&[event(seq)]).unwrap();
            }
        }
        // The file was cut back to the limit when the WAL started over, three bursts or not.
        let wal = std::fs::metadata(dir.join(format!("{DATABASE_FILE}-wal"))).unwrap();
        assert!(
            wal.len() <= checkpoint::WAL_SIZE_LIMIT as u64,
            "{}",
            wal.len()
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_owner_term_is_the_token_sqlite_indexes_for_the_owner() {
        let connection = Connection::open_in_memory().unwrap();
        for owner in ["local", "3f9a0c1d2e4b5a69788796a5b4c3d2e1", "ünï:x y'z"] {
            let indexed: String = connection
                .query_row("SELECT 'o' || hex(?1)", [owner], |row| row.get(0))
                .unwrap();
            assert_eq!(owner_term(owner), indexed);
        }
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
