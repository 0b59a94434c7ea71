//! `sparky backup`: a consistent copy of a SQLite store, taken with SQLite's online backup API
//! while a server may be writing it.
//!
//! The copy is made in one backup step (`sqlite3_backup_step(-1)`), which reads every page
//! inside one read transaction of a connection of its own: in WAL mode a reader never blocks
//! the writer, so turns go on, and the copy is the database as it was when that transaction
//! began, holding every commit made before it. (Copying a few pages at a time instead would
//! start over after each commit of another process, and never end under load.) The copy is
//! written beside its destination under a temporary name, switched to a rollback journal so
//! that it is one self-contained file, checked (`PRAGMA quick_check`), and only then renamed
//! into place.
//!
//! Depends on: `common::error`, `store::sqlite`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::{DATABASE_FILE, SqliteStore, store_error};
use crate::common::error::{Error, Result};

/// How long the backup may wait for the database while a checkpoint or recovery holds it.
const BUSY_WAIT: Duration = Duration::from_secs(30);

/// What a backup copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// The database that was copied.
    pub from: PathBuf,
    /// The schema version of the copy.
    pub schema_version: i64,
    /// Conversations in the copy.
    pub conversations: u64,
    /// Events in the copy.
    pub events: u64,
    /// Facts and other nodes of the knowledge graph in the copy.
    pub nodes: u64,
    /// The copy's size in bytes.
    pub bytes: u64,
}

impl SqliteStore {
    /// Copies the SQLite store of the data directory `dir` to the new file `to`,
    /// consistently, whether or not a server is running on it (a running server is not
    /// stopped: the backup only reads, on a connection of its own, and takes no lock).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when `dir` holds no Sparky database, `to` exists already, the
    /// database cannot be read, the copy cannot be written, or the copy does not pass
    /// SQLite's check. Nothing is left at `to` then.
    pub fn backup(dir: &Path, to: &Path) -> Result<BackupReport> {
        backup(dir, to)
    }
}

/// [`SqliteStore::backup`].
fn backup(dir: &Path, to: &Path) -> Result<BackupReport> {
    let from = dir.join(DATABASE_FILE);
    if !from.is_file() {
        return Err(Error::store(format!(
            "{} holds no {DATABASE_FILE}; give the --data-dir of a server",
            dir.display()
        )));
    }
    if to.exists() {
        return Err(Error::store(format!(
            "{} exists already; a backup never overwrites a file",
            to.display()
        )));
    }
    let mut partial = to.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    let copied = copy(&from, &partial).and_then(|report| {
        std::fs::rename(&partial, to)
            .map_err(|e| store_error(&format!("cannot write {}", to.display()), e))?;
        Ok(report)
    });
    if copied.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    copied
}

/// The copy of `from` at `to`, checked.
fn copy(from: &Path, to: &Path) -> Result<BackupReport> {
    let read = |e| store_error(&format!("cannot read {}", from.display()), e);
    let write = |e| store_error(&format!("cannot write {}", to.display()), e);
    let source =
        Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(read)?;
    source.busy_timeout(BUSY_WAIT).map_err(read)?;
    source
        .query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
        .map_err(|e| store_error(&format!("{} is not a Sparky database", from.display()), e))?;
    let mut target = Connection::open(to).map_err(write)?;
    {
        let backup = Backup::new(&source, &mut target).map_err(write)?;
        let deadline = Instant::now() + BUSY_WAIT;
        loop {
            match backup.step(-1).map_err(read)? {
                StepResult::Done => break,
                // Another connection holds a lock the copy needs (a checkpoint, a recovery):
                // short, and bounded here.
                StepResult::Busy | StepResult::Locked | StepResult::More
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    return Err(Error::store(format!(
                        "{} stayed busy for {BUSY_WAIT:?}; try again",
                        from.display()
                    )));
                }
            }
        }
    }
    drop(source);
    // One file: the copy needs no -wal beside it.
    target
        .query_row("PRAGMA journal_mode = DELETE", [], |row| {
            row.get::<_, String>(0)
        })
        .map_err(write)?;
    let check: String = target
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(write)?;
    if check != "ok" {
        return Err(Error::store(format!(
            "the copy of {} failed SQLite's check: {check}",
            from.display()
        )));
    }
    let count = |table: &str| -> Result<u64> {
        target
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| store_error(&format!("cannot count {table} in the copy"), e))
    };
    let report = BackupReport {
        from: from.to_owned(),
        schema_version: target
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(write)?,
        conversations: count("sessions")?,
        events: count("events")?,
        nodes: count("nodes")?,
        bytes: 0,
    };
    target.close().map_err(|(_, e)| write(e))?;
    let bytes = std::fs::metadata(to)
        .map_err(|e| store_error(&format!("cannot read {}", to.display()), e))?
        .len();
    Ok(BackupReport { bytes, ..report })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_is_one_checked_file_and_never_overwrites() {
        let base = std::env::temp_dir().join(format!("sparky-backup-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("data");
        let store = SqliteStore::open(&dir).unwrap();
        crate::store::GraphStore::remember(&store, "ann", "owls hoot").unwrap();
        let to = base.join("copy.db");
        let report = backup(&dir, &to).unwrap();
        assert_eq!(report.schema_version, crate::store::SCHEMA_VERSION);
        assert_eq!((report.conversations, report.nodes), (0, 1));
        assert!(report.bytes > 0);
        assert!(!base.join("copy.db-wal").exists());
        assert!(!base.join("copy.db.partial").exists());
        let again = backup(&dir, &to).unwrap_err().to_string();
        assert!(again.contains("exists already"), "{again}");
        let none = backup(&base.join("nowhere"), &base.join("other.db"))
            .unwrap_err()
            .to_string();
        assert!(none.contains("holds no sparky.db"), "{none}");
        assert!(!base.join("other.db").exists());
        drop(store);
        let _ = std::fs::remove_dir_all(&base);
    }
}
