//! Durability: sessions and facts survive a SIGKILL of the server process, and a data
//! directory (or a database) that is locked, corrupt or newer is refused at start.

mod support;

use std::process::Command;
use std::thread;

use serde_json::json;
use sparky::common::protocol::{ErrorCode, ServerFrame, TurnId};
use support::{ChildServer, Client, kinds, seqs, store_args, temp_dir, tool_result};

#[test]
fn a_killed_server_comes_back_with_every_event_and_fact() {
    let dir = temp_dir("restart");
    let data_dir = dir.to_str().unwrap();
    let server = ChildServer::start(&["--data-dir", data_dir]);
    let mut client = Client::connect(server.addr, json!({}));
    let id = client.session_id.clone().unwrap();
    client.ask("/remember the sky over Lisbon is green on Tuesdays");
    client.ask("/note buy blue paint");
    client.say("/wait 10000");
    client.expect("tool_use");
    let seen_before_kill: Vec<_> = client
        .seen
        .iter()
        .filter(|f| f.seq.is_some())
        .cloned()
        .collect();
    let last_seen = client.last_seq;
    assert_eq!(last_seen, 13);
    server.kill();

    let server = ChildServer::start(&["--data-dir", data_dir]);
    let mut again = Client::resume(server.addr, &id, 0);
    let replayed: Vec<_> = (0..last_seen).map(|_| again.next()).collect();
    assert_eq!(
        replayed, seen_before_kill,
        "every event seen before the kill is still there"
    );
    // The turn the kill cut off is closed once, by the next event: no gap, no duplicate.
    let closing = again.next();
    assert_eq!(closing.seq, Some(last_seen + 1));
    assert!(matches!(
        closing.frame,
        ServerFrame::Error {
            turn_id: Some(TurnId(3)),
            code: ErrorCode::Internal,
            ..
        }
    ));
    // The conversation goes on where it was, with its notes.
    again.say("/notes");
    let frames = again.finish_turn(4);
    assert_eq!(frames[0].seq, Some(last_seen + 2));
    let (_, result) = tool_result(&frames);
    assert_eq!(result, "1. buy blue paint");

    // A fact remembered before the kill is found from another session.
    let mut other = Client::connect(server.addr, json!({}));
    other.say("/recall sky Lisbon");
    let frames = other.finish_turn(1);
    let (_, result) = tool_result(&frames);
    assert!(
        result.contains("the sky over Lisbon is green on Tuesdays"),
        "{result}"
    );
}

#[test]
fn fifty_sessions_writing_at_once_lose_nothing() {
    let dir = temp_dir("fifty");
    let data_dir = dir.to_str().unwrap();
    let server = ChildServer::start(&["--data-dir", data_dir]);
    let addr = server.addr;
    let workers: Vec<_> = (0..50)
        .map(|n| {
            thread::spawn(move || {
                let mut client = Client::connect(addr, json!({}));
                client.ask(&format!("/remember fact number {n} for the fifty test"));
                client.ask(&format!("/note note {n}"));
                for turn in 0..4 {
                    client.ask(&format!("client {n} turn {turn}"));
                }
                let events: Vec<_> = client
                    .seen
                    .iter()
                    .filter(|f| f.seq.is_some())
                    .cloned()
                    .collect();
                (client.session_id.unwrap(), events)
            })
        })
        .collect();
    let sessions: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    server.kill();

    let server = ChildServer::start(&["--data-dir", data_dir]);
    for (id, events) in &sessions {
        assert_eq!(seqs(events), (1..=events.len() as u64).collect::<Vec<_>>());
        let mut again = Client::resume(server.addr, id, 0);
        let replayed: Vec<_> = (0..events.len()).map(|_| again.next()).collect();
        assert_eq!(&replayed, events);
    }
    let mut reader = Client::connect(server.addr, json!({}));
    reader.say(r#"/tool graph_search {"query": "fifty test", "limit": 50}"#);
    let frames = reader.finish_turn(1);
    let (_, result) = tool_result(&frames);
    assert_eq!(result.lines().count(), 50, "{result}");
}

/// Runs the binary on `dir` (on the database that stands for it in a run against
/// PostgreSQL, when `any_store`) and returns its exit code and stderr.
fn start_fails(dir: &str, any_store: bool) -> (Option<i32>, String) {
    let args = ["--addr", "127.0.0.1:0", "--data-dir", dir];
    let args = if any_store {
        store_args(&args)
    } else {
        args.map(str::to_owned).to_vec()
    };
    let output = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_data_dir_in_use_is_refused_with_exit_code_1() {
    if support::on_postgres() {
        // Only a SQLite data dir is locked: instances share a PostgreSQL database by design
        // (tests/cluster.rs), and the SQLite run covers this.
        return;
    }
    let dir = temp_dir("locked");
    let data_dir = dir.to_str().unwrap();
    let _running = ChildServer::start(&["--data-dir", data_dir]);
    let (code, stderr) = start_fails(data_dir, true);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("in use by another running sparky"),
        "{stderr}"
    );
}

#[test]
fn a_corrupt_database_is_refused_with_exit_code_1() {
    let dir = temp_dir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sparky.db"), vec![0x5a; 16 * 1024]).unwrap();
    // A SQLite file, whatever the run's store.
    let (code, stderr) = start_fails(dir.to_str().unwrap(), false);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("sparky.db"), "{stderr}");
    // The file is left as it was: no silent reset.
    assert_eq!(
        std::fs::read(dir.join("sparky.db")).unwrap(),
        vec![0x5a; 16 * 1024]
    );
}

#[test]
fn an_in_memory_server_writes_nothing() {
    let dir = temp_dir("in-memory");
    let server = ChildServer::start(&["--data-dir", dir.to_str().unwrap(), "--in-memory"]);
    let mut client = Client::connect(server.addr, json!({}));
    assert_eq!(client.ask("hello"), "You said: hello");
    assert_eq!(
        kinds(&client.seen[2..]),
        ["user_message", "thought", "message"]
    );
    assert!(!dir.exists());
}
