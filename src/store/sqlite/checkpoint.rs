//! `Checkpoints`: the thread that copies the write-ahead log into the database file (SQLite's
//! checkpoint), so that no commit has to.
//!
//! Left to itself, SQLite checkpoints on the commit that takes the WAL past 1,000 pages
//! (`wal_autocheckpoint`): that commit writes a few MB into the database file and syncs it, and
//! the turn waiting for it waits that long (the 6 ms p99 of issue 26 at one client). Here the
//! writer connection's autocheckpoint is off, and its WAL hook (called after each commit with
//! the WAL's size in pages) wakes the `checkpoint` thread when a commit takes the WAL past
//! [`CHECKPOINT_PAGES`], or [`CHECKPOINT_EVERY`] after the first commit since the last
//! checkpoint. The thread runs a `PASSIVE` checkpoint on a connection of its own: it copies what
//! no reader still needs and never waits for the writer, so commits go on meanwhile.
//!
//! The WAL starts over from its beginning (and the writer's `journal_size_limit` cuts the file
//! back) at the first commit after a checkpoint that copied it whole, with no reader in it. A
//! commit that lands while a checkpoint copies leaves a few frames behind, so the thread copies
//! again at once, up to [`CATCH_UP_TRIES`] times while each try makes progress: each copies
//! only what the commits added meanwhile, and a pause in the commits (a client reading its
//! answer) is enough for one to finish. (SQLite's answer counts only the frames there were
//! when the checkpoint started, so the thread compares it with the WAL's size after the
//! newest commit, from the hook: a first build that took "all copied" at its word never saw
//! the WAL start over, and it grew to 290 MiB in 3 s at one client.) Under load the commits
//! never pause; then, past [`RESTART_PAGES`], the thread copies the last few frames on the
//! writer connection itself, under its lock, which holds one commit for that copy and its
//! sync. A reader that keeps an old snapshot open can stop even that, so
//! past [`TRUNCATE_BYTES`] the thread runs a `TRUNCATE` checkpoint, which waits for readers and
//! holds the writer for its length, and empties the file.
//!
//! Depends on: `common::error`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;

use crate::common::error::{Error, Result};

/// WAL pages past which a commit asks for a checkpoint: SQLite's own default threshold.
pub(super) const CHECKPOINT_PAGES: i32 = 1000;

/// How long after the first commit since the last checkpoint one runs anyway.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The shortest time between two checkpoints: a reader that holds the WAL keeps it past
/// [`CHECKPOINT_PAGES`], and every commit would ask again.
const CHECKPOINT_GAP: Duration = Duration::from_millis(50);

/// Checkpoints in a row while commits keep landing, before the thread waits for the next
/// signal: each copies what was committed while the one before it copied.
const CATCH_UP_TRIES: usize = 3;

/// WAL frames past which a checkpoint ends on the writer connection, so that the WAL starts
/// over (about 16 MiB of pages of 4 KiB).
const RESTART_PAGES: i64 = 4 * CHECKPOINT_PAGES as i64;

/// The WAL file's size past which a checkpoint empties it (`TRUNCATE`), waiting for readers.
const TRUNCATE_BYTES: u64 = 64 << 20;

/// How long a `TRUNCATE` checkpoint waits for readers and the writer before it gives up (and
/// is tried again at the next checkpoint).
const TRUNCATE_WAIT: Duration = Duration::from_millis(500);

/// The size the writer cuts the WAL file back to when it starts it over (`journal_size_limit`).
pub(super) const WAL_SIZE_LIMIT: i64 = 16 << 20;

/// The `checkpoint` thread; stopped and joined on drop.
#[derive(Debug)]
pub(super) struct Checkpoints {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

/// Runs a `PASSIVE` checkpoint on the writer connection, under its lock: the WAL's frames and
/// those copied.
pub(super) type OnWriter = Box<dyn Fn() -> rusqlite::Result<(i64, i64)> + Send>;

/// Other work the thread does off the path of the turns, before each checkpoint (the
/// conversation search's index: `text_index.rs`); told whether commits are few (the wake
/// a second after one) rather than many (the WAL's length).
pub(super) type Chores = Box<dyn Fn(bool) + Send>;

/// What commits tell the thread.
#[derive(Debug, Default)]
struct Signal {
    state: Mutex<SignalState>,
    wake: Condvar,
    /// The WAL's size in pages after the newest commit, as the hook saw it.
    wal_pages: AtomicI32,
}

#[derive(Debug, Default)]
struct SignalState {
    /// The WAL's size in pages after the newest commit.
    pages: i32,
    /// When the first commit since the last checkpoint was made.
    dirty_since: Option<Instant>,
    /// Set when the drop wants the thread to end.
    stop: bool,
}

impl Checkpoints {
    /// Turns the checkpoints on `writer` (the store's writer connection on the file `path`)
    /// off, and starts the thread that runs them instead, on `connection` (another connection
    /// to the same file), ending them with `on_writer` when the WAL is long, and doing
    /// `chores` before each.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the connections cannot be set up, [`Error::Spawn`] when the
    /// thread cannot be started.
    pub(super) fn start(
        writer: &mut Connection,
        connection: Connection,
        on_writer: OnWriter,
        chores: Chores,
        path: &Path,
    ) -> Result<Self> {
        let name = path.to_string_lossy().into_owned();
        let context = format!("database {}", path.display());
        let store_error = |e: rusqlite::Error| Error::store(format!("{context}: {e}"));
        connection
            .busy_timeout(TRUNCATE_WAIT)
            .map_err(store_error)?;
        // The pragma sets SQLite's own WAL hook; the hook below replaces it.
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .and_then(|()| writer.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT))
            .map_err(store_error)?;
        let signal = Arc::new(Signal::default());
        let hook_signal = signal.clone();
        writer
            .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
                hook_signal.committed(pages);
                Ok(())
            }))
            .map_err(store_error)?;
        let thread_signal = signal.clone();
        let wal = PathBuf::from(format!("{name}-wal"));
        let thread = thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || run(&connection, &on_writer, &chores, &thread_signal, &wal))
            .map_err(Error::Spawn)?;
        Ok(Checkpoints {
            signal,
            thread: Some(thread),
        })
    }
}

impl Checkpoints {
    /// The WAL's size in pages after the newest commit: small again once it started over.
    #[cfg(test)]
    pub(super) fn wal_pages(&self) -> i32 {
        self.signal.wal_pages.load(Ordering::Relaxed)
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.signal.state.lock().stop = true;
        self.signal.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Signal {
    /// A commit left the WAL `pages` long: wakes the thread past the threshold, or when it
    /// sleeps with nothing to copy.
    fn committed(&self, pages: i32) {
        self.wal_pages.store(pages, Ordering::Relaxed);
        let mut state = self.state.lock();
        let before = state.pages;
        state.pages = pages;
        let first = state.dirty_since.is_none();
        if first {
            state.dirty_since = Some(Instant::now());
        }
        if first || (pages >= CHECKPOINT_PAGES && before < CHECKPOINT_PAGES) {
            self.wake.notify_one();
        }
    }
}

/// The thread: waits for commits, then does its chores and checkpoints; ends when told to.
fn run(
    connection: &Connection,
    on_writer: &OnWriter,
    chores: &Chores,
    signal: &Signal,
    wal: &Path,
) {
    let mut last = Instant::now();
    loop {
        let quiet = {
            let mut state = signal.state.lock();
            loop {
                if state.stop {
                    return;
                }
                let due = match state.dirty_since {
                    None => {
                        signal.wake.wait(&mut state);
                        continue;
                    }
                    Some(_) if state.pages >= CHECKPOINT_PAGES => last + CHECKPOINT_GAP,
                    Some(since) => since + CHECKPOINT_EVERY,
                };
                if Instant::now() >= due {
                    break;
                }
                signal.wake.wait_until(&mut state, due);
            }
            let quiet = state.pages < CHECKPOINT_PAGES;
            state.pages = 0;
            state.dirty_since = None;
            quiet
        };
        chores(quiet);
        checkpoint(connection, on_writer, &signal.wal_pages, wal);
        last = Instant::now();
    }
}

/// One checkpoint: `PASSIVE`, again while commits land meanwhile; its end on the writer when
/// the WAL is long all the same; `TRUNCATE` when the WAL file is still too big.
fn checkpoint(connection: &Connection, on_writer: &OnWriter, wal_pages: &AtomicI32, wal: &Path) {
    let started = Instant::now();
    let mut copied_before = -1;
    let mut last = None;
    for _ in 0..CATCH_UP_TRIES {
        match run_checkpoint(connection, "PASSIVE") {
            // `log` is the WAL as the checkpoint found it: commits made while it copied are
            // not in it, and the WAL is whole only when there were none. Copied whole: the
            // next commit starts the WAL over. No progress: a reader holds the rest.
            Ok((log, copied))
                if (copied >= log && wal_pages.load(Ordering::Relaxed) as i64 <= log)
                    || copied <= copied_before =>
            {
                last = Some((log, copied));
                break;
            }
            Ok((log, copied)) => {
                copied_before = copied;
                last = Some((log, copied));
            }
            Err(e) => {
                log::warn!("checkpoint: {e}");
                break;
            }
        }
    }
    if let Some((log, copied)) = last {
        log::debug!(
            "checkpoint: {copied} of {log} WAL pages copied in {:?}",
            started.elapsed()
        );
        // A WAL this long that commits kept from being copied whole: its last frames are
        // copied under the writer's lock, so that the next commit starts it over.
        if log >= RESTART_PAGES && (copied < log || wal_pages.load(Ordering::Relaxed) as i64 > log)
        {
            let started = Instant::now();
            match on_writer() {
                Ok((log, copied)) => log::debug!(
                    "checkpoint: {copied} of {log} WAL pages copied on the writer in {:?}",
                    started.elapsed()
                ),
                Err(e) => log::warn!("checkpoint: on the writer: {e}"),
            }
        }
    }
    let size = std::fs::metadata(wal).map_or(0, |meta| meta.len());
    if size > TRUNCATE_BYTES {
        match run_checkpoint(connection, "TRUNCATE") {
            Ok(_) => log::info!("checkpoint: the WAL ({} MiB) was emptied", size >> 20),
            Err(e) => log::warn!("checkpoint: cannot empty the WAL ({} MiB): {e}", size >> 20),
        }
    }
}

/// `PRAGMA wal_checkpoint(mode)`: the WAL's pages and those copied; an error when it was busy.
fn run_checkpoint(connection: &Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    let (busy, log, copied) =
        connection.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
    if busy != 0 && mode != "PASSIVE" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(format!("{mode} checkpoint found the database busy")),
        ));
    }
    Ok((log, copied))
}
