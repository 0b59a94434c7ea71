//! Conversations that last: a replay of many megabytes streams whole, thousands of events come
//! back after a restart, and a database written by schema version 1 is migrated with nothing
//! lost.

mod support;

use serde_json::{Value, json};
use sparky::common::protocol::{ErrorCode, ServerFrame, TurnId};
use support::{Client, TestServer, events_seen, http_json, replay, temp_dir, test_config};

#[test]
fn a_replay_of_many_megabytes_arrives_whole_and_in_order() {
    let server = TestServer::with_config(|config| config.max_text_chars = 200_000);
    let mut client = server.client();
    let id = client.session_id.clone().unwrap();
    // 24 turns with 190 KB in each question and answer: about 9 MB of events, more than any
    // one write or the old 8 MiB replay cap would hold.
    for n in 0..24 {
        let text = format!("{n} {}", "x".repeat(190_000));
        client.ask(&text);
    }
    let sent = events_seen(&client);
    let bytes: usize = sent.iter().map(|event| event.to_string().len()).sum();
    assert!(bytes > 9_000_000, "{bytes}");
    drop(client);
    let replayed = replay(server.addr, &id, sent.len());
    assert!(replayed == sent, "the replay differs from what was sent");
}

#[test]
fn thousands_of_events_of_several_conversations_come_back_after_a_restart() {
    let config = test_config();
    let data_dir = config.data_dir.clone();
    let mut seen = Vec::new();
    {
        let server = TestServer::with_config(|c| {
            *c = config.clone();
            c.rate_limit = None;
        });
        for size in [1, 3, 700] {
            let mut client = server.client();
            for n in 0..size {
                client.ask(&format!("message {n}"));
            }
            seen.push((client.session_id.clone().unwrap(), events_seen(&client)));
        }
    }
    let server = TestServer::restart_on(&data_dir);
    assert!(
        server.handle.sessions().is_empty(),
        "nothing is loaded at start"
    );
    for (id, events) in &seen {
        assert_eq!(&replay(server.addr, id, events.len()), events);
        assert_eq!(
            server.handle.sessions().get(id).unwrap().last_seq(),
            events.len() as u64
        );
    }
    let (id, events) = &seen[2];
    assert_eq!(events.len(), 2_100);
    let mut client = Client::resume(server.addr, id, events.len() as u64);
    client.say("one more");
    let frames = client.finish_turn(701);
    assert_eq!(frames[0].seq, Some(2_101));
}

/// Copies the version 1 database beside a fresh data directory.
fn version_1_data_dir() -> std::path::PathBuf {
    let dir = temp_dir("v1");
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1.db");
    std::fs::copy(fixture, dir.join("sparky.db")).unwrap();
    dir
}

#[test]
fn a_version_1_database_is_migrated_with_nothing_lost() {
    let dir = version_1_data_dir();
    // What version 1 wrote, read straight from the file before the server touches it.
    let (sessions, events): (Vec<String>, Vec<(String, String)>) = {
        let db = rusqlite::Connection::open(dir.join("sparky.db")).unwrap();
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 1);
        let sessions = db
            .prepare("SELECT id FROM sessions ORDER BY key")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let events = db
            .prepare("SELECT s.id, e.body FROM events e JOIN sessions s ON s.key = e.session_key ORDER BY e.rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (sessions, events)
    };
    assert_eq!(sessions.len(), 3);
    // A SQLite file of version 1: this test is about SQLite whatever the run's store.
    let server = TestServer::with_config(|config| {
        config.data_dir = dir.clone();
        config.database_url = None;
    });
    let list = http_json(server.addr, "GET", "/api/conversations", None, None).1;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 3);
    for id in &sessions {
        let id = sparky::common::protocol::SessionId::parse(id).unwrap();
        let stored: Vec<Value> = events
            .iter()
            .filter(|(session, _)| session == id.as_str())
            .map(|(_, body)| serde_json::from_str(body).unwrap())
            .collect();
        let mut client = Client::resume(server.addr, &id, 0);
        let replayed: Vec<Value> = (0..stored.len())
            .map(|_| serde_json::to_value(client.next()).unwrap())
            .collect();
        assert_eq!(replayed, stored, "session {id}");
        let turns = stored
            .iter()
            .filter(|event| event["type"] == "user_message")
            .count() as u64;
        let last = stored.last().unwrap().clone();
        if last["type"] == "tool_use" {
            // Version 1 was killed in this turn: it is closed now, once.
            let closing = client.next();
            assert!(matches!(
                closing.frame,
                ServerFrame::Error {
                    turn_id: Some(TurnId(1)),
                    code: ErrorCode::Internal,
                    ..
                }
            ));
            assert_eq!(closing.seq, Some(stored.len() as u64 + 1));
        }
        client.say("/notes");
        let frames = client.finish_turn(turns + 1);
        let ServerFrame::Message { text, .. } = &frames.last().unwrap().frame else {
            panic!("{frames:?}");
        };
        if turns > 1 {
            assert_eq!(text, "1. first note");
        }
    }
    let list = http_json(server.addr, "GET", "/api/conversations?q=hello", None, None).1;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 2);
    let memories = http_json(server.addr, "GET", "/api/memories", None, None).1;
    let contents: Vec<&str> = memories["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|memory| memory["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        ["cats purr when content 2", "cats purr when content 1"]
    );
    let mut client = server.client();
    assert!(
        client
            .ask("/recall cats")
            .contains("cats purr when content")
    );
    assert!(json!(list).is_object());
}

#[test]
fn a_connect_alone_stores_nothing_and_the_first_message_stores_the_conversation() {
    let config = test_config();
    let data_dir = config.data_dir.clone();
    let (empty, kept) = {
        let server = TestServer::with_config(|c| *c = config.clone());
        let listed = |server: &TestServer| {
            let (status, body) = http_json(server.addr, "GET", "/api/conversations", None, None);
            assert_eq!(status, 200);
            body["conversations"].as_array().unwrap().len()
        };
        let mut empty = server.client();
        let mut kept = Client::connect(
            server.addr,
            json!({"personality": "terse", "history": [{"role": "user", "content": "earlier"}]}),
        );
        server.handle.journal().sync(support::WAIT);
        assert_eq!(listed(&server), 0, "page loads leave no empty chats");
        // While it is in memory, an empty session resumes as usual.
        let id = empty.session_id.clone().unwrap();
        drop(empty);
        empty = Client::resume(server.addr, &id, 0);
        assert_eq!(empty.session_id.as_ref(), Some(&id));
        assert_eq!(kept.ask("first"), "You said: first");
        server.handle.journal().sync(support::WAIT);
        assert_eq!(listed(&server), 1);
        (id, kept.session_id.clone().unwrap())
    };
    let server = TestServer::restart_on(&data_dir);
    // The one that never got a message is gone: its id yields a new session.
    let fresh = Client::resume(server.addr, &empty, 0);
    assert_ne!(fresh.session_id.as_ref(), Some(&empty));
    // The other came back whole, seeded history and personality included.
    let mut back = Client::resume(server.addr, &kept, 0);
    assert_eq!(back.session_id.as_ref(), Some(&kept));
    back.expect("message");
    let session = server.handle.sessions().get(&kept).unwrap();
    let history: Vec<String> = session
        .history()
        .iter()
        .map(|m| m.content.clone())
        .collect();
    assert_eq!(history, ["earlier", "first", "You said: first"]);
}
