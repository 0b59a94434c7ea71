//! Several connections on one session, the per-session limit, isolation between sessions, and
//! many clients at once.

mod support;

use std::thread;

use serde_json::json;
use sparky::common::protocol::{ServerFrame, StatusCode};
use support::{Client, TestServer, kinds, seqs};
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn two_connections_on_one_session_both_see_every_event() {
    let server = TestServer::start();
    let mut laptop = server.client();
    let id = laptop.session_id.clone().unwrap();
    let mut phone = Client::connect(server.addr, json!({"session_id": id.as_str()}));

    laptop.say("from the laptop");
    let on_laptop = laptop.finish_turn(1);
    let on_phone = phone.finish_turn(1);
    assert_eq!(on_laptop, on_phone);
    assert_eq!(seqs(&on_phone), [1, 2, 3]);

    phone.say("/calc 2*21");
    let on_phone = phone.finish_turn(2);
    let on_laptop = laptop.finish_turn(2);
    assert_eq!(on_laptop, on_phone);
    assert_eq!(
        kinds(&on_laptop),
        [
            "user_message",
            "thought",
            "tool_use",
            "tool_result",
            "message"
        ]
    );

    // Either may cancel the other's turn.
    laptop.say("/wait 10000");
    phone.expect("tool_use");
    phone.cancel();
    for client in [&mut laptop, &mut phone] {
        let status = client.expect("status");
        assert!(
            matches!(status.frame, ServerFrame::Status(ref s) if s.code == StatusCode::Cancelled)
        );
    }
}

#[test]
fn past_the_limit_the_oldest_connection_is_taken_over() {
    let server = TestServer::with_config(|config| config.max_connections_per_session = 2);
    let mut first = server.client();
    let id = first.session_id.clone().unwrap();
    let mut second = Client::connect(server.addr, json!({"session_id": id.as_str()}));
    let mut third = Client::connect(server.addr, json!({"session_id": id.as_str()}));

    let status = first.next();
    assert!(
        matches!(status.frame, ServerFrame::Status(ref s) if s.code == StatusCode::TakenOver),
        "{status:?}"
    );
    assert_eq!(status.seq, None);
    let close = first.expect_close().expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);

    third.say("still here");
    assert_eq!(
        kinds(&third.finish_turn(1)),
        ["user_message", "thought", "message"]
    );
    assert_eq!(
        kinds(&second.finish_turn(1)),
        ["user_message", "thought", "message"]
    );
    assert_eq!(
        server
            .handle
            .sessions()
            .get(&id)
            .unwrap()
            .subscriber_count(),
        2
    );
}

#[test]
fn two_hundred_clients_at_once_each_complete_their_turns() {
    let server = TestServer::start();
    let addr = server.addr;
    let clients: Vec<_> = (0..200)
        .map(|n| {
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut client = Client::connect(addr, json!({}));
                    for turn in 0..3 {
                        let text = format!("client {n} turn {turn}");
                        assert_eq!(client.ask(&text), format!("You said: {text}"));
                    }
                    assert_eq!(client.last_seq, 9);
                    client.session_id.unwrap()
                })
                .unwrap()
        })
        .collect();
    let mut ids: Vec<_> = clients
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    assert_eq!(server.handle.sessions().len(), 200);
}
