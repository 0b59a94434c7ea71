//! Nothing a person was shown is lost because a turn stopped (PROTOCOL.md section 5): when the
//! model had streamed part of an answer, the closing `status cancelled` or `error` carries it
//! as `text`; it is replayed on every device, after a restart too, and it is the assistant's
//! (unfinished) answer the model sees in later turns. On the run's store (SQLite, or PostgreSQL
//! with `SPARKY_TEST_STORE=postgres`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use sparky::common::error::{Error, Result};
use sparky::common::protocol::{ErrorCode, ServerEnvelope, ServerFrame, StatusCode};
use sparky::model::{Conversation, ModelBackend, ModelReply, ReplySink, Role, ToolSpec};
use support::{Client, TestServer, temp_dir};

/// What the model streams before it waits to be stopped.
const STORY: [&str; 3] = ["Once ", "upon ", "a time"];

/// What it streams before it fails.
const HALF: [&str; 2] = ["The capital ", "is"];

/// A model that streams [`STORY`] and then waits to be cancelled for "stop…", streams
/// [`HALF`] and fails for "fail…", and answers "ok" otherwise; it records the user and
/// assistant texts of every request.
#[derive(Default)]
struct Halfway {
    requests: Mutex<Vec<Vec<(Role, String)>>>,
}

impl ModelBackend for Halfway {
    fn name(&self) -> String {
        "halfway".into()
    }

    fn complete(
        &self,
        conversation: Conversation<'_>,
        _tools: &[ToolSpec],
        sink: &mut dyn ReplySink,
    ) -> Result<ModelReply> {
        let seen: Vec<(Role, String)> = conversation
            .iter()
            .filter(|m| matches!(m.role, Role::User | Role::Assistant))
            .map(|m| (m.role, m.content.clone()))
            .collect();
        let asked = seen
            .last()
            .map(|(_, text)| text.clone())
            .unwrap_or_default();
        self.requests.lock().push(seen);
        if asked.starts_with("stop") {
            for piece in STORY {
                sink.delta(piece);
            }
            sink.sleep(Duration::from_secs(60));
            return Ok(ModelReply::default());
        }
        if asked.starts_with("fail") {
            for piece in HALF {
                sink.delta(piece);
            }
            return Err(Error::Model {
                backend: "halfway".into(),
                detail: "the model server went away".into(),
            });
        }
        sink.delta("ok");
        Ok(ModelReply {
            text: "ok".into(),
            ..ModelReply::default()
        })
    }
}

/// Reads `message_delta` frames until they make up `expected` (so that it was shown).
fn shown(client: &mut Client, expected: &str) {
    let mut text = String::new();
    while text != expected {
        let frame = client.next();
        if let ServerFrame::MessageDelta { text: piece, .. } = frame.frame {
            text.push_str(&piece);
        }
    }
}

/// The `text` a closing frame kept.
fn kept(frame: &ServerEnvelope) -> Option<String> {
    match &frame.frame {
        ServerFrame::Status(status) if status.code == StatusCode::Cancelled => status.text.clone(),
        ServerFrame::Error {
            turn_id: Some(_),
            text,
            ..
        } => text.clone(),
        other => panic!("not a closing frame: {other:?}"),
    }
}

/// The closing frames of a replay of `count` events, as JSON.
fn closings(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| f["type"] == "error" || f["data"]["code"] == "cancelled")
        .cloned()
        .collect()
}

#[test]
fn a_stopped_and_a_failed_answer_are_kept_replayed_and_seen_by_the_model() {
    let dir = temp_dir("kept-answers");
    let model = Arc::new(Halfway::default());
    let server = TestServer::restart_with_model(&dir, |_| {}, model.clone());
    let mut client = server.client();

    // Stopped while it streams: `status cancelled` carries the story so far.
    client.say("stop me");
    client.expect("user_message");
    shown(&mut client, "Once upon a time");
    client.cancel();
    let cancelled = client.expect("status");
    assert_eq!(kept(&cancelled).as_deref(), Some("Once upon a time"));

    // Failed after streaming: the turn `error` carries what was shown.
    client.say("fail now");
    client.expect("user_message");
    shown(&mut client, "The capital is");
    let failed = client.expect("error");
    assert!(matches!(
        failed.frame,
        ServerFrame::Error {
            code: ErrorCode::ModelError,
            ..
        }
    ));
    assert_eq!(kept(&failed).as_deref(), Some("The capital is"));

    // The model sees both unfinished answers as the assistant's.
    client.ask("and now?");
    let seen = model.requests.lock().last().cloned().unwrap();
    assert_eq!(
        seen,
        [
            (Role::User, "stop me".to_owned()),
            (Role::Assistant, "Once upon a time".to_owned()),
            (Role::User, "fail now".to_owned()),
            (Role::Assistant, "The capital is".to_owned()),
            (Role::User, "and now?".to_owned()),
        ]
    );

    // A second device, and a reload, replay the same closing frames.
    let id = client.session_id.clone().unwrap();
    let live = support::events_seen(&client);
    let replayed = support::replay(server.addr, &id, live.len());
    assert_eq!(replayed, live);
    let expected = closings(&live);
    assert_eq!(expected.len(), 2);
    assert_eq!(expected[0]["data"]["text"], "Once upon a time");
    assert_eq!(expected[1]["data"]["text"], "The capital is");

    // After a restart, the same, and the model still sees them.
    drop(client);
    drop(server);
    let server = TestServer::restart_with_model(&dir, |_| {}, model.clone());
    let replayed = support::replay(server.addr, &id, live.len());
    assert_eq!(closings(&replayed), expected);
    let mut back = Client::resume(server.addr, &id, live.len() as u64);
    back.ask("still there?");
    let seen = model.requests.lock().last().cloned().unwrap();
    assert!(seen.contains(&(Role::Assistant, "Once upon a time".to_owned())));
    assert!(seen.contains(&(Role::Assistant, "The capital is".to_owned())));
}

/// A turn stopped before anything of its answer was shown carries no `text`.
#[test]
fn a_turn_stopped_before_its_answer_keeps_no_text() {
    let server = TestServer::start();
    let mut client = server.client();
    client.say("/wait 60000");
    client.expect("tool_use");
    client.cancel();
    let cancelled = client.expect("status");
    assert_eq!(kept(&cancelled), None);
}
