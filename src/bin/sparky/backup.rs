//! `sparky backup FILE`: a consistent copy of a SQLite store, taken while its server runs
//! (SQLite's online backup API; turns go on), and a pointer to `pg_dump` for a PostgreSQL one.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use sparky::common::config::redact_url;
use sparky::store::SqliteStore;

/// Copies the store of `dir` to `file`; refuses a PostgreSQL store (`store`: the URL given
/// with `--store`, or `SPARKY_DATABASE_URL` when no `--data-dir` was given), which `pg_dump`
/// backs up.
pub fn run(file: &Path, dir: &Path, store: Option<String>) -> ExitCode {
    if let Some(url) = store {
        eprintln!(
            "sparky: backup copies a SQLite data directory; {} is PostgreSQL, which pg_dump backs \
             up while the server runs: pg_dump --format=custom --file={} URL (README: PostgreSQL)",
            redact_url(&url),
            file.display()
        );
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    match SqliteStore::backup(dir, file) {
        Ok(report) => {
            println!(
                "backed up {} (schema version {}: {} conversations, {} events, {} nodes; {} KiB) \
                 to {} in {} ms",
                report.from.display(),
                report.schema_version,
                report.conversations,
                report.events,
                report.nodes,
                report.bytes.div_ceil(1024),
                file.display(),
                started.elapsed().as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sparky: backup: {e}");
            ExitCode::FAILURE
        }
    }
}
