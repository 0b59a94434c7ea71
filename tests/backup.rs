//! `sparky backup FILE`: a copy of a running server's SQLite store, taken while clients keep
//! sending messages, opens, passes SQLite's check, and holds every event committed before the
//! backup began (the events clients had been sent: a server sends an event only once it is
//! committed); the server's turns go on; the copy restores. A PostgreSQL store is refused with a
//! pointer to `pg_dump`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{Value, json};
use sparky::common::protocol::SessionId;
use support::{ChildServer, Client, TestServer};

/// Clients sending messages while the backup runs.
const WRITERS: usize = 4;

/// What each writer has been sent: its conversation and every event, by `seq`.
type Seen = Arc<Mutex<Vec<(Option<SessionId>, BTreeMap<u64, Value>)>>>;

/// The binary on `dir` with SQLite, whatever store this run's tests use (a backup copies a
/// SQLite store).
fn sqlite_server(dir: &Path) -> ChildServer {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(["--addr", "127.0.0.1:0", "--log-level", "warn", "--data-dir"])
        .arg(dir)
        .env_remove("SPARKY_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let line = support::first_line(&mut child, "the server");
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    ChildServer { child, addr }
}

/// `sparky backup ARGS`: whether it succeeded, its stdout and its stderr.
fn backup(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sparky"));
    command
        .arg("backup")
        .args(args)
        .env_remove("SPARKY_DATABASE_URL");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts a writer: a conversation of its own, a message after each answer until `stop`;
/// records what it is sent in `seen[slot]` and counts finished turns in `turns`.
fn writer(
    server: &ChildServer,
    slot: usize,
    seen: &Seen,
    turns: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    let (addr, seen, turns, stop) = (server.addr, seen.clone(), turns.clone(), stop.clone());
    thread::Builder::new()
        .name(format!("writer-{slot}"))
        .spawn(move || {
            let mut client = Client::connect(addr, json!({}));
            seen.lock().unwrap()[slot].0 = client.session_id.clone();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let text = if n % 5 == 0 {
                    format!("/note note {n} of writer {slot}")
                } else {
                    format!("message {n} of writer {slot} {}", "x".repeat(200))
                };
                client.ask(&text);
                let mut seen = seen.lock().unwrap();
                for frame in client.seen.drain(..) {
                    if let Some(seq) = frame.seq {
                        seen[slot]
                            .1
                            .insert(seq, serde_json::to_value(&frame).unwrap());
                    }
                }
                turns.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap()
}

/// The events of `id` in the SQLite file `path`, by `seq`.
fn events_in(path: &Path, id: &SessionId) -> BTreeMap<u64, Value> {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut statement = db
        .prepare(
            "SELECT e.seq, e.body FROM events e JOIN sessions s ON s.key = e.session_key \
             WHERE s.id = ?1",
        )
        .unwrap();
    statement
        .query_map([id.as_str()], |row| {
            Ok((row.get::<_, i64>(0)? as u64, row.get::<_, String>(1)?))
        })
        .unwrap()
        .map(|row| {
            let (seq, body) = row.unwrap();
            let mut event: Value = serde_json::from_str(&body).unwrap();
            // As sent: the envelope names the conversation.
            event["session_id"] = json!(id.as_str());
            (seq, event)
        })
        .collect()
}

#[test]
fn a_backup_under_load_holds_every_event_committed_before_it_and_turns_go_on() {
    let base = support::temp_dir("backup");
    let dir = base.join("data");
    let server = sqlite_server(&dir);
    let seen: Seen = Arc::new(Mutex::new(vec![(None, BTreeMap::new()); WRITERS]));
    let turns = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|slot| writer(&server, slot, &seen, &turns, &stop))
        .collect();
    support::wait_until("every writer under way", || {
        seen.lock()
            .unwrap()
            .iter()
            .all(|(_, events)| events.len() >= 20)
    });

    // What the clients had been sent, hence what was committed, before the backup began.
    let before: Vec<(SessionId, BTreeMap<u64, Value>)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(id, events)| (id.clone().unwrap(), events.clone()))
        .collect();
    let copy = base.join("copy.db");
    let (ok, out, err) = backup(
        &[copy.to_str().unwrap(), "--data-dir", dir.to_str().unwrap()],
        &[],
    );
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("backed up "), "{out}");
    let after_backup = turns.load(Ordering::SeqCst);

    // The server's turns went on.
    support::wait_until("turns after the backup", || {
        turns.load(Ordering::SeqCst) >= after_backup + 2 * WRITERS as u64
    });
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.join().unwrap();
    }

    // One file, checked, holding every event committed before the backup, as it was sent.
    assert!(!base.join("copy.db-wal").exists());
    let db = rusqlite::Connection::open(&copy).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(db);
    for (id, events) in &before {
        assert!(events.len() >= 20, "{id}: {}", events.len());
        let copied = events_in(&copy, id);
        for (seq, event) in events {
            assert_eq!(copied.get(seq), Some(event), "{id}: event {seq}");
        }
        // No gaps: the copy is one moment of the store.
        let last = *copied.keys().last().unwrap();
        assert_eq!(copied.len() as u64, last, "{id}");
    }

    // Restored: the copy as a data directory's sparky.db serves the conversations.
    let restored = base.join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    std::fs::copy(&copy, restored.join(sparky::store::DATABASE_FILE)).unwrap();
    let server = TestServer::with_config(|config| {
        config.data_dir = restored.clone();
        config.database_url = None;
    });
    let (id, events) = &before[0];
    let mut client = Client::resume(server.addr, id, 0);
    for (seq, event) in events {
        let frame = client.next();
        assert_eq!(frame.seq, Some(*seq));
        assert_eq!(&serde_json::to_value(&frame).unwrap(), event);
    }
    drop(client);
    drop(server);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn backup_refuses_a_postgres_store_and_an_existing_file() {
    let base = support::temp_dir("backup-refusals");
    std::fs::create_dir_all(&base).unwrap();
    let file = base.join("copy.db");
    let file = file.to_str().unwrap();
    let url = "postgres://sparky:s3cret@127.0.0.1:1/sparky";
    for (args, env) in [
        (vec![file, "--store", url], vec![]),
        // The environment's URL, as a server would use it.
        (vec![file], vec![("SPARKY_DATABASE_URL", url)]),
    ] {
        let (ok, out, err) = backup(&args, &env);
        assert!(!ok, "{out}");
        assert!(err.contains("pg_dump") && !err.contains("s3cret"), "{err}");
        assert!(!Path::new(file).exists());
    }

    // A data directory named on the command line is what is asked for, whatever the
    // environment says; an existing file is never overwritten.
    let dir = base.join("data");
    drop(sparky::store::SqliteStore::open(&dir).unwrap());
    let data = dir.to_str().unwrap();
    let (ok, out, err) = backup(&[file, "--data-dir", data], &[("SPARKY_DATABASE_URL", url)]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = backup(&[file, "--data-dir", data], &[]);
    assert!(!ok && err.contains("exists already"), "{err}");
    let (ok, _, err) = backup(
        &[file, "--data-dir", base.join("none").to_str().unwrap()],
        &[],
    );
    assert!(!ok && err.contains("holds no sparky.db"), "{err}");
    let _ = std::fs::remove_dir_all(&base);
}
