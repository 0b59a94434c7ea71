//! `sparky migrate-store`: copies a SQLite data directory into an empty PostgreSQL database,
//! in one transaction, and prints what it copied.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sparky::store::{CopyReport, PostgresStore, SqliteStore, copy_sqlite_to_postgres};

use crate::inputs::database_url;

/// How often a long copy logs how far it has come.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// Copies `from` into the database at `to` (else `SPARKY_DATABASE_URL`), with a pool of
/// `pool` connections.
pub fn run(from: &Path, to: Option<String>, pool: usize) -> ExitCode {
    let to = match database_url(to, "--to") {
        Ok(Some(to)) => to,
        Ok(None) => {
            eprintln!("sparky: migrate-store needs --to URL (or SPARKY_DATABASE_URL)");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("sparky: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !from.join(sparky::store::DATABASE_FILE).is_file() {
        eprintln!(
            "sparky: {} holds no {}; --from takes the --data-dir of a server",
            from.display(),
            sparky::store::DATABASE_FILE
        );
        return ExitCode::FAILURE;
    }
    let source = match SqliteStore::open(from) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("sparky: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = match PostgresStore::connect(&to, pool) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("sparky: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut shown = Instant::now();
    let mut progress = |report: &CopyReport| {
        if shown.elapsed() >= PROGRESS_INTERVAL {
            shown = Instant::now();
            log::info!(
                "migrate-store: {} conversations, {} events so far",
                report.conversations,
                report.events
            );
        }
    };
    match copy_sqlite_to_postgres(&source, &target, &mut progress) {
        Ok(report) => {
            println!(
                "copied {} conversations ({} events, {} messages, {} notes), {} share links, {} \
                 users ({} API tokens), {} nodes and {} edges, and {} files ({} bytes) from {} \
                 to {}",
                report.conversations,
                report.events,
                report.messages,
                report.notes,
                report.shares,
                report.users,
                report.tokens,
                report.nodes,
                report.edges,
                report.files,
                report.file_bytes,
                from.display(),
                target.target()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sparky: migrate-store: {e}; nothing was copied");
            ExitCode::FAILURE
        }
    }
}
