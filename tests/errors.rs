//! Every client-frame error of PROTOCOL.md section 7 that the core server owns, each followed by
//! proof that the connection and session still work.

mod support;

use serde_json::json;
use sparky::common::protocol::{ErrorCode, ServerFrame};
use support::{Client, TestServer};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

/// Reads the next frame and checks it is a client error with `code`, no `seq` and no turn.
fn expect_error(client: &mut Client, code: ErrorCode) {
    let frame = client.next();
    match &frame.frame {
        ServerFrame::Error {
            code: got,
            turn_id: None,
            message,
            text: None,
        } => {
            assert_eq!(*got, code, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected error {code:?}, got {other:?}"),
    }
    assert_eq!(frame.seq, None);
}

/// The connection still chats after an error.
fn still_works(client: &mut Client) {
    assert_eq!(client.ask("still there?"), "You said: still there?");
}

#[test]
fn invalid_json() {
    let server = TestServer::start();
    let mut client = server.client();
    for text in ["{not json", "[1, 2]", "42", "\"connect\"", "null"] {
        client.send_text(text);
        expect_error(&mut client, ErrorCode::InvalidJson);
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    client.send_text(&deep);
    expect_error(&mut client, ErrorCode::InvalidJson);
    still_works(&mut client);
}

#[test]
fn invalid_message() {
    let server = TestServer::start();
    let mut client = server.client();
    for frame in [
        json!({"type": "message", "data": {"text": ""}}),
        json!({"type": "message", "data": {}}),
        json!({"type": "message"}),
        json!({"type": "message", "data": {"text": 12}}),
        json!({"type": "message", "data": {"text": null}}),
        json!({"type": "message", "data": ["hi"]}),
    ] {
        client.send(frame);
        expect_error(&mut client, ErrorCode::InvalidMessage);
    }
    still_works(&mut client);
}

#[test]
fn invalid_connect_fields() {
    let server = TestServer::start();
    for data in [
        json!({"last_seq": "seven"}),
        json!({"last_seq": -1}),
        json!({"session_id": 5}),
        json!({"history": "no"}),
        json!({"history": [{"role": "wizard", "content": "x"}]}),
        json!({"personality": []}),
    ] {
        let mut client = Client::open(server.addr);
        client.send(json!({"type": "connect", "data": data}));
        expect_error(&mut client, ErrorCode::InvalidMessage);
        // The connection is still waiting for a good connect.
        client.send(json!({"type": "connect", "data": {}}));
        client.expect("ready");
        still_works(&mut client);
    }
}

#[test]
fn unknown_type() {
    let server = TestServer::start();
    let mut client = server.client();
    for frame in [
        json!({"data": {"text": "x"}}),
        json!({"type": "shout"}),
        json!({"type": 3}),
        json!({"type": null}),
    ] {
        client.send(frame);
        expect_error(&mut client, ErrorCode::UnknownType);
    }
    still_works(&mut client);
}

#[test]
fn not_connected() {
    let server = TestServer::start();
    let mut client = Client::open(server.addr);
    client.send(json!({"type": "message", "data": {"text": "hi"}}));
    expect_error(&mut client, ErrorCode::NotConnected);
    client.send(json!({"type": "cancel", "data": {}}));
    expect_error(&mut client, ErrorCode::NotConnected);
    client.send(json!({"type": "connect", "data": {}}));
    client.expect("session_info");
    client.expect("ready");
    still_works(&mut client);
}

#[test]
fn already_connected() {
    let server = TestServer::start();
    let mut client = server.client();
    let id = client.session_id.clone().unwrap();
    client.send(json!({"type": "connect", "data": {}}));
    expect_error(&mut client, ErrorCode::AlreadyConnected);
    client.send(json!({"type": "connect", "data": {"session_id": id.as_str()}}));
    expect_error(&mut client, ErrorCode::AlreadyConnected);
    still_works(&mut client);
    assert_eq!(server.handle.sessions().len(), 1);
}

#[test]
fn unsupported_frame() {
    let server = TestServer::start();
    let mut client = server.client();
    client.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    expect_error(&mut client, ErrorCode::UnsupportedFrame);
    still_works(&mut client);
}

#[test]
fn too_large() {
    let server = TestServer::with_config(|config| config.max_text_chars = 50);
    let mut client = server.client();
    client.say(&"é".repeat(51));
    expect_error(&mut client, ErrorCode::TooLarge);
    // Exactly at the limit is fine; the limit counts characters, not bytes.
    assert_eq!(
        client.ask(&"é".repeat(50)),
        format!("You said: {}", "é".repeat(50))
    );
}

#[test]
fn a_frame_over_the_frame_limit_closes_with_1009() {
    let server = TestServer::with_config(|config| config.max_frame_bytes = 64 * 1024);
    let mut client = server.client();
    let id = client.session_id.clone().unwrap();
    client.say(&"x".repeat(100 * 1024));
    let close = client.expect_close().expect("a close frame");
    assert_eq!(close.code, CloseCode::Size);
    // The session survives its connection.
    let mut again = Client::resume(server.addr, &id, 0);
    still_works(&mut again);
}

#[test]
fn invalid_utf8_in_a_text_frame_closes_with_1007_and_the_server_goes_on() {
    use tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let server = TestServer::start();
    let mut client = server.client();
    let frame = Frame::message(vec![0xff, 0xfe, 0x80], OpCode::Data(Data::Text), true);
    client.ws.send(Message::Frame(frame)).unwrap();
    let close = client.expect_close().expect("a close frame");
    assert_eq!(close.code, CloseCode::Invalid);
    let mut other = server.client();
    still_works(&mut other);
}
