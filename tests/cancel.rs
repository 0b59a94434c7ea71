//! Cancellation: by a newer message and by `cancel`, with nothing of the old turn after its
//! `cancelled` status, and the conversation kept well formed.

mod support;

use std::time::{Duration, Instant};

use sparky::common::protocol::{ServerFrame, StatusCode, TurnId};
use support::{TestServer, kinds};

fn is_cancelled_status(frame: &ServerFrame, turn: u64) -> bool {
    matches!(frame, ServerFrame::Status(status)
        if status.code == StatusCode::Cancelled && status.turn_id == Some(TurnId(turn)))
}

#[test]
fn a_newer_message_cancels_the_turn_in_flight() {
    let server = TestServer::start();
    let mut client = server.client();
    client.say("/wait 5000");
    client.expect("tool_use");
    let sent = Instant::now();
    client.say("next");
    let frames = client.finish_turn(2);
    let quick = sent.elapsed();
    assert_eq!(kinds(&frames), ["user_message", "thought", "message"]);
    assert!(
        quick < Duration::from_secs(4),
        "the new turn waited for the old one: {quick:?}"
    );

    // `cancelled` for turn 1 comes before turn 2's user_message, and nothing of turn 1 after.
    let cancelled = client
        .seen
        .iter()
        .position(|f| is_cancelled_status(&f.frame, 1))
        .expect("cancelled status");
    let opened = client
        .seen
        .iter()
        .position(|f| f.frame == frames[0].frame)
        .unwrap();
    assert!(cancelled < opened);
    assert!(
        client.seen[cancelled + 1..]
            .iter()
            .all(|f| f.frame.turn_id() != Some(TurnId(1)))
    );
    assert_eq!(client.seen[cancelled].seq, Some(4));

    // Another turn later shows nothing of turn 1 either: its worker stopped cleanly.
    assert_eq!(client.ask("and then"), "You said: and then");
    assert!(
        client.seen[cancelled + 1..]
            .iter()
            .all(|f| f.frame.turn_id() != Some(TurnId(1)))
    );
    assert_eq!(
        server
            .handle
            .metrics()
            .turns_cancelled
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[test]
fn cancel_stops_the_turn_and_keeps_the_conversation_well_formed() {
    let server = TestServer::start();
    let mut client = server.client();
    client.say("/wait 10000");
    client.expect("tool_use");
    client.cancel();
    let status = client.expect("status");
    assert!(is_cancelled_status(&status.frame, 1), "{status:?}");
    assert_eq!(client.ask("after"), "You said: after");
    assert!(
        client
            .seen
            .iter()
            .all(|f| !matches!(f.frame, ServerFrame::ToolResult { .. }))
    );

    let session = server
        .handle
        .sessions()
        .get(client.session_id.as_ref().unwrap())
        .unwrap();
    let history: Vec<String> = session
        .history()
        .iter()
        .map(|m| m.content.clone())
        .collect();
    assert_eq!(history, ["/wait 10000", "", "after", "You said: after"]);
}

#[test]
fn cancel_with_nothing_in_flight_does_nothing() {
    let server = TestServer::start();
    let mut client = server.client();
    client.cancel();
    assert_eq!(client.ask("hi"), "You said: hi");
    assert_eq!(
        kinds(&client.seen[2..]),
        ["user_message", "thought", "message"]
    );
}
