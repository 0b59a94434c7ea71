//! The store of a subcommand that works beside a running server (`backup`, `user`, `mcp`,
//! and `check`'s look at the OAuth grants): which one it is, and opening it. A SQLite store is
//! opened beside the server (no directory lock: SQLite orders the few writes), a PostgreSQL
//! one is connected to with one connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sparky::common::error::Result;
use sparky::store::{AccountStore, McpAuthStore, PostgresStore, SqliteStore, UsageStore};

/// The flags of `user` and `mcp` that say where the store is, given before or after their own
/// subcommand.
#[derive(Debug, clap::Args)]
pub struct Place {
    /// The data directory of the server (its --data-dir) [default: sparky-data].
    #[arg(long = "data-dir", value_name = "DIR", global = true)]
    pub dir: Option<PathBuf>,
    /// A PostgreSQL store (or the SPARKY_DATABASE_URL environment variable, when no
    /// --data-dir is given).
    #[arg(long = "store", value_name = "URL", global = true)]
    pub store: Option<String>,
}

/// The one store a subcommand opened, seen through each interface the subcommands use.
pub struct Beside {
    /// The user accounts and their API tokens.
    pub accounts: Arc<dyn AccountStore>,
    /// The daily use and the users' own limits.
    pub usage: Arc<dyn UsageStore>,
    /// The OAuth grants of the MCP servers.
    pub mcp_auth: Arc<dyn McpAuthStore>,
}

impl Beside {
    /// `store` through each interface.
    fn of<S>(store: Arc<S>) -> Self
    where
        S: AccountStore + UsageStore + McpAuthStore + 'static,
    {
        Beside {
            accounts: store.clone(),
            usage: store.clone(),
            mcp_auth: store,
        }
    }
}

/// Opens the PostgreSQL database `store` when given, else the SQLite store of `dir` beside
/// its server.
///
/// # Errors
/// When the store cannot be opened or connected to, or its schema is newer than this build's.
pub fn open(dir: &Path, store: Option<&str>) -> Result<Beside> {
    Ok(match store {
        Some(url) => Beside::of(Arc::new(PostgresStore::connect(url, 1)?)),
        None => Beside::of(Arc::new(SqliteStore::open_beside(dir)?)),
    })
}

/// The data directory and the PostgreSQL URL (if any) a subcommand uses: as for the server,
/// `--store`, else the environment's URL, else SQLite; but a data directory named here
/// (`dir`) is what is asked for.
pub fn chosen(
    dir: Option<PathBuf>,
    store: Option<String>,
    database_url: Option<String>,
    data_dir: PathBuf,
) -> (PathBuf, Option<String>) {
    let store = store.or(database_url).or_else(|| {
        std::env::var("SPARKY_DATABASE_URL")
            .ok()
            .filter(|url| !url.trim().is_empty() && dir.is_none())
    });
    (dir.unwrap_or(data_dir), store)
}
