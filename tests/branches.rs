//! Conversations people steer (PROTOCOL.md section 5, "Branches"): `edit`, `regenerate` and
//! `switch` build the tree the protocol describes, the model sees exactly the current path,
//! replay and the turns API agree with the live frames, the tree survives a restart and
//! `kill -9`, two devices show the same path, and a `client_id` sent twice runs once (also
//! across a reconnect and a restart). Each runs on the run's store (SQLite, or PostgreSQL with
//! `SPARKY_TEST_STORE=postgres`).

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use sparky::common::protocol::{ServerEnvelope, ServerFrame, StatusCode, TurnId};
use support::recording::Recording;
use support::{ChildServer, Client, TestServer, events_seen, http_json, kinds, temp_dir};

/// Sends `frame` and reads the turn it opens to its end; returns the `user_message` and the
/// closing frame.
fn run(client: &mut Client, frame: Value) -> (ServerEnvelope, ServerEnvelope) {
    client.send(frame);
    let opened = client.expect("user_message");
    let turn = opened.frame.turn_id().unwrap().0;
    let closing = client.finish_turn(turn).pop().unwrap();
    (opened, closing)
}

fn message(text: &str) -> Value {
    json!({"type": "message", "data": {"text": text}})
}

/// The `parent`, `edit_of` and `regenerate_of` of a `user_message`.
fn place(frame: &ServerEnvelope) -> (u64, Option<u64>, Option<u64>) {
    let ServerFrame::UserMessage {
        parent,
        edit_of,
        regenerate_of,
        ..
    } = &frame.frame
    else {
        panic!("not a user_message: {frame:?}");
    };
    (
        parent.expect("a v3 server sends parent").0,
        edit_of.map(|t| t.0),
        regenerate_of.map(|t| t.0),
    )
}

fn answer(frame: &ServerEnvelope) -> String {
    match &frame.frame {
        ServerFrame::Message { text, .. } => text.clone(),
        other => panic!("not an answer: {other:?}"),
    }
}

/// The turns API's `(turn_id, parent, text)` triples and its leaf.
fn tree(server: &TestServer, id: &str) -> (u64, Vec<(u64, u64, String)>) {
    let (status, body) = http_json(
        server.addr,
        "GET",
        &format!("/api/conversations/{id}/turns"),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let turns = body["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["turn_id"].as_u64().unwrap(),
                t["parent"].as_u64().unwrap(),
                t["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (body["leaf"].as_u64().unwrap(), turns)
}

/// Three questions, then an edit of the second: the model sees the first exchange and the new
/// question, nothing of the old second and third.
#[test]
fn edit_regenerate_and_switch_build_the_tree_and_the_model_sees_only_the_path() {
    let model = Arc::new(Recording::default());
    let server = TestServer::with_model(|_| {}, model.clone());
    let mut client = server.client();
    for text in ["one", "two", "three"] {
        run(&mut client, message(text));
    }
    let (edited, closing) = run(
        &mut client,
        json!({"type": "edit", "data": {"turn_id": 2, "text": "two, better"}}),
    );
    assert_eq!(edited.frame.turn_id(), Some(TurnId(4)));
    assert_eq!(place(&edited), (1, Some(2), None));
    assert_eq!(answer(&closing), "You said: two, better");
    assert_eq!(
        model.dialogue(),
        ["one", "You said: one", "two, better"],
        "the model saw another branch"
    );

    // Another answer to the edited question: same text, beside turn 4.
    let (again, _) = run(
        &mut client,
        json!({"type": "regenerate", "data": {"turn_id": 4}}),
    );
    assert_eq!(again.frame.turn_id(), Some(TurnId(5)));
    assert_eq!(place(&again), (1, None, Some(4)));
    assert_eq!(model.dialogue(), ["one", "You said: one", "two, better"]);

    // A message follows the leaf (turn 5).
    let (next, _) = run(&mut client, message("four"));
    assert_eq!(place(&next), (5, None, None));
    assert_eq!(
        model.dialogue(),
        [
            "one",
            "You said: one",
            "two, better",
            "You said: two, better",
            "four"
        ]
    );

    // Back to the first branch: the leaf is its newest turn, 3, and the next message follows it.
    client.send(json!({"type": "switch", "data": {"turn_id": 2}}));
    let branch = client.expect("branch");
    assert_eq!(branch.frame, ServerFrame::Branch { leaf: TurnId(3) });
    assert!(branch.seq.is_some(), "a branch is an event");
    let (after, _) = run(&mut client, message("five"));
    assert_eq!(place(&after), (3, None, None));
    assert_eq!(
        model.dialogue(),
        [
            "one",
            "You said: one",
            "two",
            "You said: two",
            "three",
            "You said: three",
            "five"
        ]
    );

    let id = client.session_id.clone().unwrap();
    let (leaf, turns) = tree(&server, id.as_str());
    assert_eq!(leaf, 7);
    let shape: Vec<(u64, u64)> = turns.iter().map(|(t, p, _)| (*t, *p)).collect();
    assert_eq!(
        shape,
        [(1, 0), (2, 1), (3, 2), (4, 1), (5, 1), (6, 5), (7, 3)]
    );
    assert_eq!(turns[4].2, "two, better", "a regenerate repeats the text");

    // Nothing of any branch is lost: a replay from 0 is what the client saw live.
    let live = events_seen(&client);
    let replayed = support::replay(server.addr, &id, live.len());
    assert_eq!(replayed, live);
    // One turn's events, exactly as sent.
    let (status, body) = http_json(
        server.addr,
        "GET",
        &format!("/api/conversations/{}/events?turn_id=4", id.as_str()),
        None,
        None,
    );
    assert_eq!(status, 200);
    let turn_four: Vec<&Value> = live.iter().filter(|e| e["data"]["turn_id"] == 4).collect();
    assert_eq!(
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        turn_four
    );
    // `ready.leaf` tells a new device where the path ends.
    let mut phone = Client::open(server.addr);
    phone.send(json!({"type": "connect", "data": {"session_id": id.as_str()}}));
    phone.expect("session_info");
    let ready = phone.expect("ready");
    assert!(matches!(
        ready.frame,
        ServerFrame::Ready {
            leaf: TurnId(7),
            ..
        }
    ));
}

#[test]
fn a_turn_the_conversation_does_not_have_is_refused_and_nothing_starts() {
    let server = TestServer::start();
    let mut client = server.client();
    run(&mut client, message("one"));
    for frame in [
        json!({"type": "edit", "data": {"turn_id": 9, "text": "x"}}),
        json!({"type": "regenerate", "data": {"turn_id": 0}}),
        json!({"type": "switch", "data": {"turn_id": 2}}),
        json!({"type": "edit", "data": {"turn_id": 1, "text": ""}}),
        json!({"type": "message", "data": {"text": "x", "client_id": ""}}),
        json!({"type": "message", "data": {"text": "x", "client_id": "x".repeat(65)}}),
    ] {
        client.send(frame.clone());
        let error = client.expect("error");
        let ServerFrame::Error { code, .. } = error.frame else {
            unreachable!()
        };
        assert_eq!(code.as_str(), "invalid_message", "{frame}");
        assert_eq!(error.seq, None);
    }
    // The connection and the conversation go on.
    let (opened, _) = run(&mut client, message("two"));
    assert_eq!(place(&opened), (1, None, None));
}

/// Editing while a turn runs stops it first: its `status cancelled` comes before the new
/// `user_message`.
#[test]
fn an_edit_while_a_turn_runs_stops_it_first() {
    let server = TestServer::start();
    let mut client = server.client();
    run(&mut client, message("one"));
    client.say("/wait 60000");
    client.expect("tool_use");
    client.send(json!({"type": "edit", "data": {"turn_id": 2, "text": "never mind"}}));
    let cancelled = client.expect("status");
    assert!(matches!(
        &cancelled.frame,
        ServerFrame::Status(s) if s.code == StatusCode::Cancelled && s.turn_id == Some(TurnId(2))
    ));
    let opened = client.expect("user_message");
    assert_eq!(place(&opened), (1, Some(2), None));
    let closing = client.finish_turn(3).pop().unwrap();
    assert_eq!(answer(&closing), "You said: never mind");
}

/// Two devices: a switch on one moves the other's path (a `branch` event), and each sees every
/// turn of every branch.
#[test]
fn two_devices_show_the_same_path() {
    let server = TestServer::start();
    let mut laptop = server.client();
    run(&mut laptop, message("one"));
    run(&mut laptop, message("two"));
    let id = laptop.session_id.clone().unwrap();
    let joined = laptop.last_seq;
    let mut phone = Client::resume(server.addr, &id, joined);
    run(
        &mut laptop,
        json!({"type": "edit", "data": {"turn_id": 2, "text": "deux"}}),
    );
    phone.expect("user_message");
    phone.finish_turn(3);
    phone.send(json!({"type": "switch", "data": {"turn_id": 2}}));
    for device in [&mut laptop, &mut phone] {
        let branch = device.expect("branch");
        assert_eq!(branch.frame, ServerFrame::Branch { leaf: TurnId(2) });
    }
    assert_eq!(tree(&server, id.as_str()).0, 2);
    let since_joined: Vec<Value> = events_seen(&laptop)
        .into_iter()
        .filter(|e| e["seq"].as_u64() > Some(joined))
        .collect();
    assert_eq!(since_joined, events_seen(&phone));
}

/// A `client_id` sent twice runs once: on the same connection, after a reconnect, and after a
/// restart; the second gets `status duplicate` naming the turn, with no `seq`.
#[test]
fn a_client_id_sent_twice_runs_once_across_a_reconnect_and_a_restart() {
    let dir = temp_dir("branches-client-id");
    let server = TestServer::restart_on(&dir);
    let mut client = server.client();
    let send = json!({"type": "message", "data": {"text": "only once", "client_id": "c-1"}});
    let (opened, _) = run(&mut client, send.clone());
    assert!(matches!(
        &opened.frame,
        ServerFrame::UserMessage { client_id: Some(c), .. } if c == "c-1"
    ));
    let expect_duplicate = |client: &mut Client| {
        client.send(send.clone());
        let status = client.expect("status");
        assert_eq!(status.seq, None);
        assert!(matches!(
            &status.frame,
            ServerFrame::Status(s) if s.code == StatusCode::Duplicate && s.turn_id == Some(TurnId(1))
        ));
    };
    expect_duplicate(&mut client);
    let id = client.session_id.clone().unwrap();
    let mut again = Client::resume(server.addr, &id, client.last_seq);
    expect_duplicate(&mut again);
    // An edit and a regenerate with a known client_id start nothing either.
    again.send(json!({"type": "regenerate", "data": {"turn_id": 1, "client_id": "c-1"}}));
    assert_eq!(kinds(&[again.expect("status")]), ["status"]);
    drop((client, again));
    drop(server);
    let server = TestServer::restart_on(&dir);
    let mut after = Client::resume(server.addr, &id, 0);
    for _ in 0..3 {
        after.next();
    }
    expect_duplicate(&mut after);
    // Nothing ran twice: one turn in the tree.
    assert_eq!(tree(&server, id.as_str()).1.len(), 1);
}

/// The tree and the leaf survive `kill -9`, and the model still sees only the path.
#[test]
fn the_tree_survives_kill_9() {
    let dir = temp_dir("branches-kill");
    let args = ["--data-dir", dir.to_str().unwrap()];
    let child = ChildServer::start(&args);
    let mut client = Client::connect(child.addr, json!({}));
    run(&mut client, message("one"));
    run(&mut client, message("two"));
    run(
        &mut client,
        json!({"type": "edit", "data": {"turn_id": 1, "text": "uno"}}),
    );
    client.send(json!({"type": "switch", "data": {"turn_id": 1}}));
    client.expect("branch");
    let id = client.session_id.clone().unwrap();
    let live = events_seen(&client);
    child.kill();
    let child = ChildServer::start(&args);
    let mut back = Client::resume(child.addr, &id, 0);
    let replayed: Vec<Value> = (0..live.len())
        .map(|_| serde_json::to_value(back.next()).unwrap())
        .collect();
    assert_eq!(replayed, live);
    // The path is 1 → 2 again: a message follows turn 2.
    let (next, closing) = run(&mut back, message("three"));
    assert_eq!(place(&next), (2, None, None));
    assert_eq!(answer(&closing), "You said: three");
    let mut fresh = Client::open(child.addr);
    fresh.send(json!({"type": "connect", "data": {"session_id": id.as_str()}}));
    fresh.expect("session_info");
    assert!(matches!(
        fresh.expect("ready").frame,
        ServerFrame::Ready {
            leaf: TurnId(4),
            ..
        }
    ));
}
