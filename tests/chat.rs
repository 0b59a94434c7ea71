//! A plain turn end to end: handshake, `session_info`, `ready`, and the events of a turn.

mod support;

use serde_json::json;
use sparky::common::protocol::{ServerFrame, TurnId};
use support::{Client, TestServer, kinds, seqs};

#[test]
fn connect_answers_session_info_then_ready() {
    let server = TestServer::start();
    let mut client = Client::open(server.addr);
    client.send(json!({"type": "connect", "data": {}}));
    let info = client.next();
    let ServerFrame::SessionInfo {
        session_id,
        is_new,
        reconnected,
    } = &info.frame
    else {
        panic!("expected session_info, got {info:?}");
    };
    assert!(*is_new && !*reconnected);
    assert_eq!(session_id.as_str().len(), 32);
    assert!(session_id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(info.session_id.as_ref(), Some(session_id));
    assert_eq!(info.seq, None);

    let ready = client.next();
    let ServerFrame::Ready {
        tools_loaded,
        tools,
        model,
        models,
        leaf,
    } = &ready.frame
    else {
        panic!("expected ready, got {ready:?}");
    };
    assert_eq!(*tools_loaded, tools.len());
    for tool in [
        "session_note",
        "session_notes",
        "calculator",
        "clock",
        "wait",
    ] {
        assert!(
            tools.iter().any(|t| t == tool),
            "{tool} missing from {tools:?}"
        );
    }
    assert_eq!(model, "offline");
    assert_eq!(leaf.0, 0, "a new conversation has no turn yet");
    assert_eq!(
        models,
        &["offline"],
        "the one model a new conversation may choose"
    );
}

#[test]
fn a_plain_turn_is_user_message_thought_message_numbered_from_one() {
    let server = TestServer::start();
    let mut client = server.client();
    client.say("hello there");
    let frames = client.finish_turn(1);
    assert_eq!(kinds(&frames), ["user_message", "thought", "message"]);
    assert_eq!(seqs(&frames), [1, 2, 3]);
    assert_eq!(
        frames[0].frame,
        ServerFrame::UserMessage {
            attachments: Vec::new(),
            turn_id: TurnId(1),
            parent: Some(TurnId(0)),
            text: "hello there".into(),
            client_id: None,
            edit_of: None,
            regenerate_of: None,
        }
    );
    assert_eq!(
        frames[2].frame,
        ServerFrame::Message {
            turn_id: TurnId(1),
            text: "You said: hello there".into(),
            usage: None,
        }
    );
    for frame in &frames {
        assert_eq!(frame.session_id, client.session_id);
    }

    client.say("again");
    let frames = client.finish_turn(2);
    assert_eq!(seqs(&frames), [4, 5, 6]);
}

#[test]
fn the_original_chat_path_is_an_alias() {
    let server = TestServer::start();
    let mut client = Client::open_path(server.addr, "/ws/chat");
    client.send(json!({"type": "connect"}));
    client.expect("session_info");
    client.expect("ready");
    assert_eq!(client.ask("hi"), "You said: hi");
}

#[test]
fn personality_and_history_seed_a_new_session() {
    let server = TestServer::start();
    let history =
        json!([{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "yes"}]);
    let client = Client::connect(
        server.addr,
        json!({"personality": "terse", "history": history, "user_id": "ann"}),
    );
    let session = server
        .handle
        .sessions()
        .get(client.session_id.as_ref().unwrap())
        .unwrap();
    assert_eq!(session.history().len(), 2);
    assert_eq!(session.user_id(), Some("ann"));
}
