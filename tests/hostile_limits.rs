//! Hostile clients against the server's resource bounds: running turns, conversations per
//! principal, per-session memory and a full store. Each test holds a bound while another
//! principal (or the same one, once the flood stops) keeps being served.

mod support;

use std::time::Duration;

use serde_json::json;
use sparky::common::protocol::{ErrorCode, ServerEnvelope, ServerFrame, SessionId, TurnId};
use support::{
    Client, TestServer, events_seen, http, http_json, kind, replay, test_config, wait_until,
};

/// Asserts that `frame` is the `error` `server_busy` closing turn `turn`.
fn assert_busy(frame: &ServerEnvelope, turn: u64) {
    match &frame.frame {
        ServerFrame::Error { turn_id, code, .. } => {
            assert_eq!(*code, ErrorCode::ServerBusy, "{frame:?}");
            assert_eq!(*turn_id, Some(TurnId(turn)));
        }
        other => panic!("expected error server_busy, got {other:?}"),
    }
}

/// A client of principal `token` with a new session.
fn client_of(server: &TestServer, token: &str) -> Client {
    Client::connect(server.addr, json!({ "token": token }))
}

#[test]
fn running_turns_are_capped_per_principal_and_per_server_while_others_are_served() {
    let server = TestServer::with_config(|config| {
        config.auth_tokens = vec![
            "alpha".into(),
            "beta".into(),
            "gamma".into(),
            "delta".into(),
        ];
        // Five places, the last kept for a principal running no turn.
        config.max_running_turns = 5;
        config.max_running_turns_per_principal = 3;
    });
    // The attack: turns that run long, each in a session of its own.
    let mut alpha: Vec<Client> = (0..3).map(|_| client_of(&server, "alpha")).collect();
    for client in &mut alpha {
        client.say("/wait 30000");
        client.expect("user_message");
        client.expect("tool_use");
    }
    wait_until("three turns running", || {
        server.handle.sessions().turns_running() == 3
    });

    // One more of alpha's is refused, and closed at once.
    let mut fourth = client_of(&server, "alpha");
    fourth.say("/wait 30000");
    fourth.expect("user_message");
    assert_busy(&fourth.expect("error"), 1);

    // Beta is still served. A second turn of beta's while its first runs would take the last
    // place, which is kept for a principal running none.
    let mut beta = client_of(&server, "beta");
    assert_eq!(beta.ask("hello"), "You said: hello");
    let mut beta_wait = client_of(&server, "beta");
    beta_wait.say("/wait 30000");
    beta_wait.expect("tool_use");
    beta.say("one too many");
    beta.expect("user_message");
    assert_busy(&beta.expect("error"), 2);

    // Gamma, running none, takes it; then the server is full for everyone.
    let mut gamma = client_of(&server, "gamma");
    gamma.say("/wait 30000");
    gamma.expect("tool_use");
    assert_eq!(server.handle.sessions().turns_running(), 5);
    let mut delta = client_of(&server, "delta");
    delta.say("hello");
    delta.expect("user_message");
    assert_busy(&delta.expect("error"), 1);

    // Cancelled turns give their places back once their threads are done with them.
    for client in &mut alpha[..2] {
        client.cancel();
        client.expect("status");
    }
    wait_until("the cancelled turns' places to be free", || {
        server.handle.sessions().turns_running() == 3
    });
    assert_eq!(fourth.ask("my turn now"), "You said: my turn now");
    wait_until("the finished turn's place to be free", || {
        server.handle.sessions().turns_running() == 3
    });
}

#[test]
fn a_newcomer_s_turn_runs_while_other_principals_hold_every_turn_they_may() {
    let attackers = ["attacker-1", "attacker-2", "attacker-3", "attacker-4"];
    let server = TestServer::with_config(|config| {
        config.auth_tokens = attackers.iter().map(|t| t.to_string()).collect();
        config.auth_tokens.push("newcomer".into());
        // As in the attack run, four principals at their own caps add up to the server's:
        // eight places, one of them kept for a principal running none.
        config.max_running_turns = 8;
        config.max_running_turns_per_principal = 2;
    });
    // Each attacker starts long turns until the server refuses it one.
    let mut held = Vec::new();
    for token in attackers {
        loop {
            let mut client = client_of(&server, token);
            client.say("/wait 30000");
            client.expect("user_message");
            let outcome = loop {
                let frame = client.next();
                if ["tool_use", "error"].contains(&kind(&frame).as_str()) {
                    break frame;
                }
            };
            if kind(&outcome) == "error" {
                assert_busy(&outcome, 1);
                break;
            }
            held.push(client);
        }
    }
    // Two turns each but the last, which got one: the kept place is left.
    assert_eq!(held.len(), 7, "the attackers took the kept place");
    assert_eq!(server.handle.sessions().turns_running(), 7);
    // The newcomer's turn runs.
    let mut newcomer = client_of(&server, "newcomer");
    assert_eq!(newcomer.ask("am I served?"), "You said: am I served?");
}

/// The code of a frame that is an error, for a turn or for the connection.
fn error_code(frame: &ServerEnvelope) -> Option<ErrorCode> {
    match &frame.frame {
        ServerFrame::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[test]
fn a_full_store_delays_events_refuses_turns_and_loses_nothing_once_there_is_room() {
    let config = test_config();
    let data_dir = config.data_dir.clone();
    let (mut seen, waiting_id, writer_id);
    {
        let server = TestServer::with_config(|c| *c = config.clone());
        let mut waiting = server.client();
        let mut writer = server.client();
        assert_eq!(waiting.ask("before"), "You said: before");
        waiting.say("/wait 3000");
        waiting.expect("tool_use");

        // The disk fills: no page may be added to the database.
        let store = server.handle.store().clone();
        store.set_size_limit(Some(1)).unwrap();
        writer.say(&"x".repeat(90_000));
        let journal = server.handle.journal().clone();
        wait_until("the store to refuse writes", || journal.failing());
        let (status, health) = http_json(server.addr, "GET", "/healthz", None, None);
        assert_eq!((status, health["status"].as_str()), (503, Some("degraded")));

        // New turns are refused at once, with nothing logged.
        writer.say("anyone there?");
        let refused = writer.next();
        assert_eq!(
            error_code(&refused),
            Some(ErrorCode::Storage),
            "{refused:?}"
        );
        assert_eq!(refused.seq, None);

        // The turn in flight ends with `storage` instead of going on; nothing of it after the
        // failure is shown while the store refuses it.
        wait_until("the waiting turn to end", || {
            server.handle.sessions().turns_running() == 0
        });
        let shown_while_full = waiting.seen.len();

        // Room again: everything queued is committed and delivered, in order.
        store.set_size_limit(None).unwrap();
        wait_until("the store to take writes", || !journal.failing());
        let turn = waiting.finish_turn(2);
        assert!(waiting.seen.len() > shown_while_full);
        let closing = turn.last().unwrap();
        assert_eq!(error_code(closing), Some(ErrorCode::Storage), "{turn:?}");
        assert!(
            turn.iter()
                .all(|frame| !matches!(frame.frame, ServerFrame::ToolResult { .. })),
            "{turn:?}"
        );
        writer.finish_turn(1);
        let (status, _) = http_json(server.addr, "GET", "/healthz", None, None);
        assert_eq!(status, 200);
        assert_eq!(writer.ask("and now?"), "You said: and now?");
        seen = vec![events_seen(&waiting), events_seen(&writer)];
        waiting_id = waiting.session_id.clone().unwrap();
        writer_id = writer.session_id.clone().unwrap();
    }

    // After a restart, every event a client saw is there, with the same `seq` and content.
    let server = TestServer::restart_on(&data_dir);
    for (id, events) in [&waiting_id, &writer_id].into_iter().zip(seen.drain(..)) {
        let numbers: Vec<u64> = (1..=events.len() as u64).collect();
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, numbers, "no gap and no repeat");
        assert_eq!(replay(server.addr, id, events.len()), events);
    }
}

/// Sends `connect` for a new session as `token` and returns the refusal's message.
fn refused_connect(server: &TestServer, token: &str) -> String {
    let mut client = Client::open(server.addr);
    client.send(json!({"type": "connect", "data": {"token": token}}));
    let frame = client.next();
    let ServerFrame::Error { code, message, .. } = &frame.frame else {
        panic!("expected a refusal, got {frame:?}");
    };
    assert_eq!(*code, ErrorCode::ServerBusy);
    let close = client.expect_close().expect("a close frame");
    assert_eq!(u16::from(close.code), 1013);
    message.clone()
}

#[test]
fn a_flood_of_new_conversations_is_cut_off_for_its_principal_only() {
    let server = TestServer::with_config(|config| {
        config.auth_tokens = vec!["alpha".into(), "beta".into()];
        config.new_conversation_rate = Some(sparky::common::config::RateLimit {
            per_second: 0.001,
            burst: 5.0,
        });
    });
    let mut first = client_of(&server, "alpha");
    first.ask("keep me");
    for _ in 0..4 {
        client_of(&server, "alpha");
    }
    assert!(refused_connect(&server, "alpha").contains("too fast"));
    // Another principal is served, and alpha may still resume what it has.
    assert_eq!(client_of(&server, "beta").ask("hi"), "You said: hi");
    let id = first.session_id.clone().unwrap();
    let mut again = Client::connect(
        server.addr,
        json!({"token": "alpha", "session_id": id.as_str(), "last_seq": first.last_seq}),
    );
    assert_eq!(again.ask("still here"), "You said: still here");
}

#[test]
fn a_principal_keeps_at_most_its_quota_of_conversations() {
    let server = TestServer::with_config(|config| {
        config.auth_tokens = vec!["alpha".into(), "beta".into()];
        config.max_conversations_per_principal = 3;
    });
    // A conversation that never got a message counts while it is in memory, and no longer
    // once it has left.
    for _ in 0..3 {
        client_of(&server, "alpha");
    }
    assert!(refused_connect(&server, "alpha").contains("delete some"));
    let sessions = server.handle.sessions();
    wait_until("the conversations nobody wrote in to leave memory", || {
        sessions.evict_idle(Duration::ZERO);
        sessions.is_empty()
    });
    let ids: Vec<_> = (0..3)
        .map(|_| {
            let mut client = client_of(&server, "alpha");
            client.ask("keep this");
            client.session_id.unwrap()
        })
        .collect();
    assert!(refused_connect(&server, "alpha").contains("delete some"));
    client_of(&server, "beta");
    let path = format!("/api/conversations/{}", ids[0].as_str());
    let (status, _) = http_json(server.addr, "DELETE", &path, Some("alpha"), None);
    assert_eq!(status, 204);
    client_of(&server, "alpha").ask("in its place");
    assert!(refused_connect(&server, "alpha").contains("delete some"));
}

/// How many conversations the API lists for `token`.
fn listed(server: &TestServer, token: &str) -> usize {
    let (status, list) = http_json(server.addr, "GET", "/api/conversations", Some(token), None);
    assert_eq!(status, 200, "{list}");
    list["conversations"].as_array().unwrap().len()
}

#[test]
fn connects_held_open_cannot_pass_the_conversation_quota() {
    let server = TestServer::with_config(|config| {
        config.auth_tokens = vec!["alpha".into()];
        config.max_conversations_per_principal = 3;
    });
    // Three new sessions, none stored yet: they count already.
    let mut held: Vec<Client> = (0..3).map(|_| client_of(&server, "alpha")).collect();
    assert!(refused_connect(&server, "alpha").contains("delete some"));
    for client in &mut held {
        assert_eq!(client.ask("store me"), "You said: store me");
    }
    assert!(refused_connect(&server, "alpha").contains("delete some"));
    assert_eq!(listed(&server, "alpha"), 3);
}

#[test]
fn leaving_and_resuming_cannot_pass_the_conversation_quota() {
    let server = TestServer::with_config(|config| {
        config.auth_tokens = vec!["alpha".into()];
        config.max_conversations_per_principal = 3;
    });
    // Three new sessions, each left at once: they stay in memory, not stored.
    let ids: Vec<SessionId> = (0..3)
        .map(|_| client_of(&server, "alpha").session_id.unwrap())
        .collect();
    let sessions = server.handle.sessions();
    wait_until("every connection to be gone", || {
        ids.iter()
            .all(|id| sessions.get(id).is_some_and(|s| s.subscriber_count() == 0))
    });
    assert!(refused_connect(&server, "alpha").contains("delete some"));
    // Each is resumed and gets its first message: still three.
    for id in &ids {
        let mut client = Client::connect(
            server.addr,
            json!({"token": "alpha", "session_id": id.as_str(), "last_seq": 0}),
        );
        assert_eq!(client.session_id.as_ref(), Some(id));
        assert_eq!(client.ask("store me"), "You said: store me");
    }
    assert!(refused_connect(&server, "alpha").contains("delete some"));
    assert_eq!(listed(&server, "alpha"), 3);
}

#[test]
fn a_full_store_takes_renames_and_deletions_and_a_deletion_makes_room() {
    let config = test_config();
    let data_dir = config.data_dir.clone();
    let (kept_id, deleted_id);
    {
        let server = TestServer::with_config(|c| *c = config.clone());
        let mut kept = server.client();
        kept.ask("/remember otters hold hands while they sleep");
        let mut doomed = server.client();
        let big = "y".repeat(90_000);
        for n in 0..6 {
            doomed.ask(&format!("{n} {big}"));
        }
        let (_, memories) = http_json(server.addr, "GET", "/api/memories", None, None);
        let memory = memories["memories"][0]["id"].as_i64().expect("a memory");
        kept_id = kept.session_id.clone().unwrap();
        deleted_id = doomed.session_id.clone().unwrap();
        drop(doomed);

        // The store fills: a new conversation's first batch is refused, and retried.
        let store = server.handle.store().clone();
        store.set_size_limit(Some(1)).unwrap();
        let mut writer = server.client();
        writer.say(&"x".repeat(90_000));
        let journal = server.handle.journal().clone();
        wait_until("the store to refuse writes", || journal.failing());

        // A rename is made (it adds no more than a title), and says so.
        let kept_path = format!("/api/conversations/{}", kept_id.as_str());
        let title = json!({"title": "renamed while full"}).to_string();
        let (status, entry) = http_json(server.addr, "PATCH", &kept_path, None, Some(&title));
        assert_eq!(
            (status, entry["title"].as_str()),
            (200, Some("renamed while full"))
        );
        let (_, entry) = http_json(server.addr, "GET", &kept_path, None, None);
        assert_eq!(entry["title"], "renamed while full");

        // A memory is deleted.
        let memory_path = format!("/api/memories/{memory}");
        let (status, body) = http(server.addr, "DELETE", &memory_path, None, None);
        assert_eq!(status, 204, "{body}");
        let (_, memories) = http_json(server.addr, "GET", "/api/memories", None, None);
        assert_eq!(memories["memories"], json!([]));

        // A conversation is deleted at once, ahead of the refused batch, and is gone.
        let deleted_path = format!("/api/conversations/{}", deleted_id.as_str());
        let (status, body) = http(server.addr, "DELETE", &deleted_path, None, None);
        assert_eq!(status, 204, "{body}");
        let (status, _) = http(server.addr, "GET", &deleted_path, None, None);
        assert_eq!(status, 404);

        // The room it made takes the refused batch, and then new turns.
        wait_until("the store to take writes", || !journal.failing());
        writer.finish_turn(1);
        assert_eq!(kept.ask("room again"), "You said: room again");
        store.set_size_limit(None).unwrap();
    }

    // After a restart, the deletion and the rename hold.
    let server = TestServer::restart_on(&data_dir);
    let (status, _) = http(
        server.addr,
        "GET",
        &format!("/api/conversations/{}", deleted_id.as_str()),
        None,
        None,
    );
    assert_eq!(status, 404);
    let (_, entry) = http_json(
        server.addr,
        "GET",
        &format!("/api/conversations/{}", kept_id.as_str()),
        None,
        None,
    );
    assert_eq!(entry["title"], "renamed while full");
}

#[test]
fn a_session_of_many_huge_messages_holds_a_bounded_conversation_in_memory() {
    let server = TestServer::with_config(|config| config.rate_limit = None);
    let mut client = server.client();
    let big = "z".repeat(99_990);
    for n in 0..40 {
        let answer = client.ask(&format!("{n} {big}"));
        assert!(answer.ends_with(&big[..10]));
    }
    let session = server
        .handle
        .sessions()
        .get(client.session_id.as_ref().unwrap())
        .unwrap();
    let history = session.history();
    let bytes: usize = history.iter().map(|m| m.content.len()).sum();
    assert!(
        bytes <= sparky::conversation::bot::MAX_HISTORY_BYTES,
        "{bytes}"
    );
    assert!(history.len() < 80, "old exchanges left memory");
    // The newest exchange is still there, and the whole conversation is in the store.
    assert!(history.last().unwrap().content.starts_with("You said: 39"));
    let events = replay(server.addr, client.session_id.as_ref().unwrap(), 120);
    assert_eq!(events.last().unwrap()["seq"], 120);
}
