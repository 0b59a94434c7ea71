//! A PostgreSQL server for tests, and a fresh database for each test that wants one.
//!
//! The server is the one `SPARKY_TEST_POSTGRES` names (`scripts/test` and CI start a throwaway
//! cluster and set it: a role that may create databases, connected to any database of the
//! cluster). Without it, the first test that asks starts a throwaway cluster itself, the same
//! way: `initdb` into a temporary directory and the `postgres` server on a free loopback port,
//! as `nobody` when running as root. That cluster lives as long as the test process: the server
//! runs as a child of a thread that never ends, with a parent-death signal, so it stops when
//! the process does, however the process ends. Without PostgreSQL installed, it fails with a
//! message saying what to do.
//!
//! Each database is named `sparky_t_<pid>_<n>`; databases of test processes that are gone are
//! dropped the first time a process connects, so a long-lived server does not fill up.
//!
//! This file is shared by the integration tests (`tests/support/mod.rs`) and the store's unit
//! tests (`src/store/tests.rs` includes it by path), and uses nothing of the crate.

#![allow(dead_code)] // Each user takes its own subset.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a developer does when no PostgreSQL can be had.
const HOW: &str = "the PostgreSQL tests need a server: install Debian's postgresql \
     (apt-get install -y postgresql), so that they can start a throwaway cluster with initdb, \
     or set SPARKY_TEST_POSTGRES=postgres://USER@HOST:PORT/postgres to a server where USER may \
     create databases. scripts/test does the former.";

/// How long the throwaway cluster may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The URL of the server's maintenance database (`postgres`), starting a throwaway cluster
/// the first time when `SPARKY_TEST_POSTGRES` is unset.
pub fn server_url() -> &'static str {
    static SERVER: OnceLock<String> = OnceLock::new();
    SERVER.get_or_init(|| {
        let url = match std::env::var("SPARKY_TEST_POSTGRES") {
            Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
            _ => start_cluster().unwrap_or_else(|e| panic!("{e}\n{HOW}")),
        };
        sweep(&url);
        url
    })
}

/// A new, empty database; returns its URL.
pub fn fresh_database() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "sparky_t_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    create(&name);
    url_of(&name)
}

/// The database that stands for the data directory `dir` in a run against PostgreSQL: the
/// same one each time it is asked for with the same directory, created the first time.
pub fn database_for(dir: &Path) -> String {
    let leaf: String = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    // Names stop at 63 bytes; a digest of the whole path keeps them apart.
    let digest = dir
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    let name = format!(
        "sparky_t_{}_{:x}_{}",
        std::process::id(),
        digest,
        &leaf[..leaf.len().min(24)]
    );
    create(&name);
    url_of(&name)
}

/// Runs `sql` on the maintenance database.
pub fn admin(sql: &str) {
    let mut client = connect(server_url());
    client
        .batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The name of the database `url` names.
pub fn name_of(url: &str) -> String {
    let config: postgres::Config = url.parse().expect("a database URL");
    config.get_dbname().unwrap_or_default().to_owned()
}

/// Cuts off every connection to the database at `url` and refuses new ones until
/// [`reopen`]: to the server, the database has gone away.
pub fn cut_off(url: &str) {
    let name = name_of(url);
    admin(&format!(
        "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
    ));
}

/// Lets connections to the database at `url` in again.
pub fn reopen(url: &str) {
    let name = name_of(url);
    admin(&format!(
        "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS true"
    ));
}

/// Ends every connection to the database at `url` without refusing new ones, as a restart of
/// the server would.
pub fn terminate_connections(url: &str) {
    let name = name_of(url);
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));
}

fn url_of(name: &str) -> String {
    let mut config: postgres::Config = server_url().parse().expect("a database URL");
    config.dbname(name);
    // Rebuilt by hand: postgres::Config has no URL form.
    let user = config.get_user().unwrap_or("postgres");
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.to_string_lossy().into_owned(),
        None => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    if host.starts_with('/') {
        format!("postgres://{user}{password}@/{name}?host={host}&port={port}")
    } else {
        format!("postgres://{user}{password}@{host}:{port}/{name}")
    }
}

fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to the test server {url}: {e}\n{HOW}"))
}

fn create(name: &str) {
    let mut client = connect(server_url());
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .expect("look for a database")
        .is_some();
    if !exists {
        // Two tests asking for one directory's database at once: the second finds it made.
        if let Err(e) = client.batch_execute(&format!("CREATE DATABASE \"{name}\"")) {
            let duplicate = e.code() == Some(&postgres::error::SqlState::DUPLICATE_DATABASE);
            assert!(duplicate, "CREATE DATABASE {name}: {e}");
        }
    }
}

/// Drops the test databases of processes that are no longer running.
fn sweep(url: &str) {
    let Ok(mut client) = postgres::Client::connect(url, postgres::NoTls) else {
        return;
    };
    let Ok(rows) = client.query(
        "SELECT datname FROM pg_database WHERE datname LIKE 'sparky\\_t\\_%'",
        &[],
    ) else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let Some(pid) = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ =
                client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
        }
    }
}

/// The directory holding `initdb` and `postgres`: the newest under `/usr/lib/postgresql`, else
/// wherever `PATH` finds `initdb`.
fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
    })
}

/// Starts a throwaway cluster and returns the URL of its maintenance database.
fn start_cluster() -> Result<String, String> {
    let bin = bin_dir().ok_or("no initdb under /usr/lib/postgresql/*/bin or on PATH")?;
    let root = std::env::temp_dir().join(format!("sparky-pg-{}", std::process::id()));
    sweep_directories();
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    // initdb refuses to run as root: the cluster belongs to `nobody` then.
    let as_root = nix::unistd::geteuid().is_root();
    let run_as = |program: &Path| {
        let mut command = Command::new("setpriv");
        if as_root {
            command.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
        }
        // The server stops when the thread that started it does: see `spawn_server`.
        command.args(["--pdeathsig", "QUIT"]).arg(program);
        // The owner may not be allowed into the current directory (a clone under /root).
        command.current_dir(&root);
        command
    };
    if as_root {
        let chown = Command::new("chown")
            .args(["nobody:nogroup"])
            .arg(&root)
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !chown.success() {
            return Err(format!("cannot give {} to nobody", root.display()));
        }
    }
    let data = root.join("data");
    let initdb = run_as(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "sparky",
            "--auth=trust",
            "-N",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !initdb.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let mut server = run_as(&bin.join("postgres"));
    server
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&root)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(root.join("server.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        );
    spawn_server(server)?;
    let url = format!("postgres://sparky@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match postgres::Client::connect(&url, postgres::NoTls) {
            Ok(_) => return Ok(url),
            Err(e) if Instant::now() >= deadline => {
                let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
                return Err(format!(
                    "the throwaway PostgreSQL did not start: {e}\n{log}"
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Starts `server` from a thread that never ends, so that its parent-death signal fires only
/// when the whole test process goes.
fn spawn_server(mut server: Command) -> Result<(), String> {
    let (started, result) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("test-postgres".into())
        .spawn(move || {
            let child = server.spawn();
            let failed = child.is_err();
            let _ = started.send(
                child
                    .map(|_| ())
                    .map_err(|e| format!("cannot start postgres: {e}")),
            );
            if failed {
                return;
            }
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("no thread for postgres: {e}"))?;
    result
        .recv()
        .map_err(|_| "the postgres thread ended".to_owned())?
}

/// Removes the cluster directories of test processes that are gone.
fn sweep_directories() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("sparky-pg-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
