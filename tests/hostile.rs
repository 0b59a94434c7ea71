//! Hostile input: a property test of frame decoding on generated input, a stream of generated
//! frames against a live server, and a table of malformed frames; each gets the right answer
//! and the server stays healthy.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparky::common::protocol::{ClientFrame, ErrorCode, ServerFrame, decode_client_frame};
use support::TestServer;
use tungstenite::Message;

/// Deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEEDS: [&str; 8] = [
    r#"{"type":"message","data":{"text":"hi"}}"#,
    r#"{"type":"cancel","data":{}}"#,
    r#"{"type":"connect","data":{"session_id":"00112233445566778899aabbccddeeff","last_seq":3}}"#,
    r#"{"type":"connect","data":{"history":[{"role":"user","content":"x"}],"personality":"p"}}"#,
    r#"{"type":"message","data":{"text":"/calc 1+2"},"extra":[1,2,{"a":null}]}"#,
    r#"[1,2,3]"#,
    r#"{"type":null}"#,
    r#"{"data":{"text":"no type"}}"#,
];

const PIECES: [&str; 16] = [
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "-1",
    "1e400",
    "18446744073709551616",
    "\"type\"",
    "\"data\"",
    "\"\\u0000\"",
    "é€😀",
];

/// A generated frame: a seed with a few random edits (insertions of JSON pieces, deletions,
/// swaps of a value for another type).
fn generate(rng: &mut Rng) -> String {
    let mut text: Vec<char> = SEEDS[rng.below(SEEDS.len())].chars().collect();
    for _ in 0..rng.below(4) {
        match rng.below(3) {
            0 if !text.is_empty() => {
                let at = rng.below(text.len());
                text.remove(at);
            }
            _ => {
                let at = rng.below(text.len() + 1);
                let piece: Vec<char> = PIECES[rng.below(PIECES.len())].chars().collect();
                text.splice(at..at, piece);
            }
        }
    }
    text.into_iter().collect()
}

#[test]
fn decoding_never_panics_and_classifies_every_input() {
    let mut rng = Rng(0x5eed);
    let started = Instant::now();
    let mut decoded = 0;
    let mut count = 0;
    while count < 200_000 && started.elapsed() < Duration::from_secs(5) {
        let text = generate(&mut rng);
        match decode_client_frame(&text) {
            Ok(frame) => {
                decoded += 1;
                // What decodes re-encodes to something that decodes to the same frame.
                let again = serde_json::to_string(&frame).unwrap();
                assert_eq!(decode_client_frame(&again), Ok(frame), "{text}");
            }
            Err(e) => assert!(
                matches!(
                    e.code,
                    ErrorCode::InvalidJson | ErrorCode::InvalidMessage | ErrorCode::UnknownType
                ),
                "{text}: {e}"
            ),
        }
        count += 1;
    }
    assert!(
        count >= 10_000 && decoded > 0,
        "{count} inputs, {decoded} decoded"
    );
}

#[test]
fn a_stream_of_generated_frames_gets_an_answer_for_each_and_the_server_goes_on() {
    let server = TestServer::with_config(|config| config.rate_limit = None);
    let mut client = server.client();
    let mut rng = Rng(0xfeed);
    for n in 0..400 {
        let text = generate(&mut rng);
        client.send_text(&text);
        // A probe that always gets an error marks where the answers to `text` end.
        client.send(json!({"type": "probe", "data": {"n": n}}));
        loop {
            let frame = client.next();
            if let ServerFrame::Error {
                code: ErrorCode::UnknownType,
                message,
                turn_id: None,
                ..
            } = &frame.frame
                && message.contains("probe")
            {
                break;
            }
            // Anything else is a well-formed answer: a client error with a section 7 code, or
            // an event of a turn the generated frame started.
            if let ServerFrame::Error {
                code,
                turn_id: None,
                ..
            } = &frame.frame
            {
                assert!(
                    matches!(
                        code,
                        ErrorCode::InvalidJson
                            | ErrorCode::InvalidMessage
                            | ErrorCode::UnknownType
                            | ErrorCode::AlreadyConnected
                    ),
                    "{text}: {frame:?}"
                );
            } else {
                assert!(frame.seq.is_some(), "{text}: {frame:?}");
            }
        }
    }
    assert_eq!(client.ask("still fine?"), "You said: still fine?");
    let mut other = server.client();
    assert_eq!(other.ask("and me?"), "You said: and me?");
}

#[test]
fn malformed_frames_each_get_the_right_error() {
    let server = TestServer::with_config(|config| config.rate_limit = None);
    let mut client = server.client();
    let deep_object = format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    let cases: Vec<(String, ErrorCode)> = vec![
        (deep_object, ErrorCode::InvalidJson),
        (
            r#"{"type":"connect","data":{"last_seq":1e400}}"#.into(),
            ErrorCode::InvalidJson,
        ),
        (
            r#"{"type":"connect","data":{"last_seq":18446744073709551616}}"#.into(),
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type":"message","data":{"text":"x"},"data2":1e999}"#.into(),
            ErrorCode::InvalidJson,
        ),
        ("\u{feff}{}".into(), ErrorCode::InvalidJson),
        ("".into(), ErrorCode::InvalidJson),
    ];
    for (text, code) in cases {
        client.send_text(&text);
        let frame = client.next();
        match &frame.frame {
            ServerFrame::Error {
                code: got,
                turn_id: None,
                ..
            } => assert_eq!(*got, code, "{}", &text[..text.len().min(80)]),
            other => panic!("{}: {other:?}", &text[..text.len().min(80)]),
        }
    }
    // Wrong types in every field of every client frame.
    let wrong: [Value; 4] = [json!(7), json!("s"), json!([1]), json!({"k": 1})];
    let fields = [
        ("connect", "session_id"),
        ("connect", "last_seq"),
        ("connect", "token"),
        ("connect", "user_id"),
        ("connect", "personality"),
        ("connect", "history"),
        ("message", "text"),
    ];
    for (kind, field) in fields {
        for value in &wrong {
            let frame = json!({"type": kind, "data": {field: value}});
            let decoded = decode_client_frame(&frame.to_string());
            let fits = matches!(
                (field, value),
                (
                    "session_id" | "token" | "user_id" | "personality" | "text",
                    Value::String(_)
                ) | ("last_seq", Value::Number(_))
            );
            if !fits {
                assert_eq!(
                    decoded.map_err(|e| e.code),
                    Err(ErrorCode::InvalidMessage),
                    "{frame}"
                );
            } else {
                assert!(decoded.is_ok() || kind == "message", "{frame}");
            }
        }
    }
    assert_eq!(client.ask("after all that"), "You said: after all that");
}

#[test]
fn frames_after_a_close_are_ignored_and_the_server_goes_on() {
    let server = TestServer::start();
    let mut client = server.client();
    client.ws.send(Message::Close(None)).unwrap();
    // tungstenite refuses to send after its own Close, so write a raw masked text frame.
    let raw = [0x81u8, 0x82, 0, 0, 0, 0, b'h', b'i'];
    let _ = std::io::Write::write_all(client.ws.get_mut(), &raw);
    assert!(
        client.expect_close().is_none_or(
            |close| close.code == tungstenite::protocol::frame::coding::CloseCode::Normal
        )
    );
    let mut other = server.client();
    assert_eq!(other.ask("healthy?"), "You said: healthy?");
    assert!(matches!(
        decode_client_frame(r#"{"type":"cancel"}"#),
        Ok(ClientFrame::Cancel {})
    ));
}
