//! Sessions outlive connections: replay from `last_seq`, full replay, gaps, unknown ids, and
//! expiry.

mod support;

use std::sync::atomic::Ordering;

use serde_json::json;
use sparky::common::protocol::{ServerFrame, StatusCode};
use support::{Client, TestServer, kinds, seqs, wait_until};

#[test]
fn a_turn_keeps_running_while_disconnected_and_its_events_are_replayed() {
    let server = TestServer::start();
    let mut client = server.client();
    let id = client.session_id.clone().unwrap();
    client.say("/wait 200");
    client.expect("tool_use");
    assert_eq!(client.last_seq, 3);
    drop(client);

    let metrics = server.handle.metrics();
    wait_until("the turn to finish", || {
        metrics.turns_completed.load(Ordering::SeqCst) == 1
    });
    let mut again = Client::resume(server.addr, &id, 3);
    let ServerFrame::SessionInfo {
        is_new,
        reconnected,
        session_id,
    } = &again.seen[0].frame
    else {
        unreachable!()
    };
    assert!(!is_new && *reconnected);
    assert_eq!(session_id, &id);
    let replayed = vec![again.next(), again.next()];
    assert_eq!(kinds(&replayed), ["tool_result", "message"]);
    assert_eq!(seqs(&replayed), [4, 5]);
    // Live events continue the numbering with no repeat.
    again.say("more");
    assert_eq!(seqs(&again.finish_turn(2)), [6, 7, 8]);
}

#[test]
fn resuming_mid_turn_switches_from_replay_to_live_without_loss_or_repeat() {
    let server = TestServer::start();
    let mut client = server.client();
    let id = client.session_id.clone().unwrap();
    client.say("/wait 300");
    client.expect("user_message");
    drop(client);
    let mut again = Client::resume(server.addr, &id, 1);
    let frames = again.finish_turn(1);
    assert_eq!(
        kinds(&frames),
        ["thought", "tool_use", "tool_result", "message"]
    );
    assert_eq!(seqs(&frames), [2, 3, 4, 5]);
}

#[test]
fn last_seq_zero_replays_everything_and_absent_replays_nothing() {
    let server = TestServer::start();
    let mut client = server.client();
    let id = client.session_id.clone().unwrap();
    client.ask("one");
    client.ask("two");
    drop(client);

    let mut full = Client::resume(server.addr, &id, 0);
    let replayed: Vec<_> = (0..6).map(|_| full.next()).collect();
    assert_eq!(seqs(&replayed), [1, 2, 3, 4, 5, 6]);

    let mut bare = Client::connect(server.addr, json!({"session_id": id.as_str()}));
    bare.say("three");
    let frames = bare.finish_turn(3);
    assert_eq!(seqs(&frames), [7, 8, 9]);
    assert!(bare.seen.iter().all(|f| f.seq.is_none_or(|seq| seq >= 7)));
}

#[test]
fn a_resume_from_before_the_memory_tail_replays_from_the_store_without_a_gap() {
    let server = TestServer::with_config(|config| config.event_log_capacity = 4);
    let mut client = server.client();
    let id = client.session_id.clone().unwrap();
    client.ask("one");
    client.ask("two");
    client.ask("three");
    drop(client);
    let mut again = Client::resume(server.addr, &id, 1);
    let replayed: Vec<_> = (0..8).map(|_| again.next()).collect();
    assert_eq!(seqs(&replayed), [2, 3, 4, 5, 6, 7, 8, 9]);
    assert!(
        replayed.iter().all(
            |frame| !matches!(&frame.frame, ServerFrame::Status(s) if s.code == StatusCode::Gap)
        )
    );
    // Live again after the replay: the next turn follows on.
    again.say("four");
    let frames = again.finish_turn(4);
    assert_eq!(seqs(&frames), [10, 11, 12]);
}

#[test]
fn an_unknown_session_id_gets_a_new_session() {
    let server = TestServer::start();
    for made_up in ["0123456789abcdef0123456789abcdef", "not-an-id", ""] {
        let client = Client::connect(server.addr, json!({"session_id": made_up, "last_seq": 0}));
        let ServerFrame::SessionInfo {
            session_id,
            is_new,
            reconnected,
        } = &client.seen[0].frame
        else {
            unreachable!()
        };
        assert!(*is_new && !*reconnected);
        assert_ne!(session_id.as_str(), made_up);
        assert_eq!(client.seen.len(), 2, "nothing replayed for a new session");
    }
}

#[test]
fn an_idle_session_leaves_memory_and_comes_back_as_it_was() {
    let server = TestServer::with_config(|config| {
        config.idle_timeout = std::time::Duration::from_millis(300)
    });
    let mut client = server.client();
    let id = client.session_id.clone().unwrap();
    client.ask("remember me");
    client.say("/note a note");
    client.finish_turn(2);
    // While connected the session stays, however long.
    assert!(server.handle.sessions().get(&id).is_some());
    let seen: Vec<_> = client
        .seen
        .iter()
        .filter(|f| f.seq.is_some())
        .cloned()
        .collect();
    drop(client);
    wait_until("the session to leave memory", || {
        server.handle.sessions().get(&id).is_none()
    });
    let mut again = Client::resume(server.addr, &id, 0);
    let ServerFrame::SessionInfo {
        session_id,
        is_new,
        reconnected,
    } = &again.seen[0].frame
    else {
        unreachable!()
    };
    assert!(!*is_new && *reconnected);
    assert_eq!(session_id, &id);
    let replayed: Vec<_> = (0..seen.len()).map(|_| again.next()).collect();
    assert_eq!(replayed, seen, "the replay is exactly what was sent");
    // Numbering, notes and the conversation go on where they were.
    again.say("/notes");
    let frames = again.finish_turn(3);
    assert_eq!(frames[0].seq, Some(seen.len() as u64 + 1));
    let ServerFrame::Message { text, .. } = &frames.last().unwrap().frame else {
        panic!("no answer: {frames:?}");
    };
    assert!(text.contains("a note"), "{text}");
    let history = server.handle.sessions().get(&id).unwrap().history();
    assert!(history.iter().any(|m| m.content == "remember me"));
}
