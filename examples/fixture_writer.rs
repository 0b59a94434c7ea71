//! Writes the conversations of an upgrade fixture through a running `sparky` of any version
//! since conversations became lasting (schema 2): `scripts/fixtures.sh` builds each shipped
//! version from git, starts it on an empty store with two tokens, and runs this against it;
//! the store it leaves is kept under `tests/fixtures/` and `tests/upgrades.rs` checks that
//! today's build upgrades it with nothing lost.
//!
//! ```text
//! cargo run --example fixture_writer -- ADDR TOKEN OTHER_TOKEN [--branches]
//! ```
//!
//! What it writes, with the built-in model: for `TOKEN`, a conversation with a persona, a
//! plain answer, a note, a fact, two nodes joined by an edge, a tool call, a cancelled turn and
//! a renamed title; a second one seeded with a history; for `OTHER_TOKEN`, a conversation and a
//! fact of its own. `--branches` (schema 4 on): an edit, so that the tree has two branches.

use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// How long one answer may take.
const WAIT: Duration = Duration::from_secs(20);

/// One conversation's WebSocket.
struct Conversation {
    ws: WebSocket<TcpStream>,
    id: String,
}

impl Conversation {
    /// Opens a new conversation as `token`, with `connect`'s other fields.
    fn open(addr: &str, token: &str, mut connect: Value) -> Result<Self, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(WAIT))
            .map_err(|e| e.to_string())?;
        let (ws, _) = tungstenite::client(format!("ws://{addr}/ws"), stream)
            .map_err(|e| format!("upgrade: {e}"))?;
        connect["token"] = json!(token);
        let mut conversation = Conversation {
            ws,
            id: String::new(),
        };
        conversation.send(json!({"type": "connect", "data": connect}))?;
        let info = conversation.until(|frame| frame["type"] == "session_info")?;
        conversation.id = info["data"]["session_id"]
            .as_str()
            .ok_or("session_info without an id")?
            .to_owned();
        conversation.until(|frame| frame["type"] == "ready")?;
        Ok(conversation)
    }

    fn send(&mut self, frame: Value) -> Result<(), String> {
        self.ws
            .send(Message::text(frame.to_string()))
            .map_err(|e| format!("send: {e}"))
    }

    /// Reads frames until one that `wanted` accepts, and returns it.
    fn until(&mut self, wanted: impl Fn(&Value) -> bool) -> Result<Value, String> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.ws.read().map_err(|e| format!("read: {e}"))? {
                Message::Text(text) => {
                    let frame: Value =
                        serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
                    if frame["type"] == "error" && frame.get("seq").is_none() {
                        return Err(format!("refused: {frame}"));
                    }
                    if wanted(&frame) {
                        return Ok(frame);
                    }
                }
                Message::Close(close) => return Err(format!("closed: {close:?}")),
                _ => {}
            }
        }
        Err("timed out".into())
    }

    /// Sends `frame` (a `message` with `text`, unless given whole) and waits for the turn it
    /// opens to close; returns the closing frame.
    fn turn(&mut self, frame: Value) -> Result<Value, String> {
        self.send(frame)?;
        let opened = self.until(|frame| frame["type"] == "user_message")?;
        let turn = opened["data"]["turn_id"].clone();
        self.until(|frame| frame["data"]["turn_id"] == turn && closes(frame))
    }

    /// Says `text` and returns the answer's text.
    fn say(&mut self, text: &str) -> Result<String, String> {
        let closing = self.turn(json!({"type": "message", "data": {"text": text}}))?;
        if closing["type"] != "message" {
            return Err(format!("{text:?} was not answered: {closing}"));
        }
        Ok(closing["data"]["text"].as_str().unwrap_or("").to_owned())
    }
}

/// True for the frames that close a turn.
fn closes(frame: &Value) -> bool {
    frame["type"] == "message"
        || frame["type"] == "error"
        || (frame["type"] == "status" && frame["data"]["code"] == "cancelled")
}

/// The node id in a graph tool's answer (`… #12 …`).
fn node_id(answer: &str) -> Result<u64, String> {
    answer
        .split('#')
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("no node id in {answer:?}"))
}

/// Renames a conversation through the API.
fn rename(addr: &str, token: &str, id: &str, title: &str) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let response = agent
        .patch(&format!("http://{addr}/api/conversations/{id}"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(json!({ "title": title }).to_string())
        .map_err(|e| format!("rename: {e}"))?;
    match response.status().as_u16() {
        200 => Ok(()),
        status => Err(format!("rename: {status}")),
    }
}

fn write(addr: &str, token: &str, other: &str, branches: bool) -> Result<(), String> {
    let mut first = Conversation::open(
        addr,
        token,
        json!({"user_id": "fixture-user", "personality": "You are a terse fixture."}),
    )?;
    first.say("hello there")?;
    first.say("/note buy oat milk")?;
    first.say("/remember owls hoot at night")?;
    let ann = node_id(&first.say(
        r#"/tool graph_add_node {"kind": "person", "label": "Ann", "content": "Ann keeps owls"}"#,
    )?)?;
    let owl = node_id(&first.say(
        r#"/tool graph_add_node {"kind": "animal", "label": "Owl", "content": "a night bird"}"#,
    )?)?;
    first.say(&format!(
        r#"/tool graph_add_edge {{"source": {ann}, "target": {owl}, "kind": "keeps"}}"#
    ))?;
    first.say("/calc 6*7")?;
    first.send(json!({"type": "message", "data": {"text": "/wait 60000"}}))?;
    let waiting = first.until(|frame| frame["type"] == "tool_use")?;
    first.send(json!({"type": "cancel", "data": {}}))?;
    let turn = waiting["data"]["turn_id"].clone();
    first.until(|frame| frame["data"]["turn_id"] == turn && closes(frame))?;
    first.say("after the cancel")?;
    if branches {
        let edited =
            first.turn(json!({"type": "edit", "data": {"turn_id": 1, "text": "hello, edited"}}))?;
        if edited["type"] != "message" {
            return Err(format!("the edit was not answered: {edited}"));
        }
    }
    rename(addr, token, &first.id, "Fixture: the first")?;

    let mut seeded = Conversation::open(
        addr,
        token,
        json!({"history": [{"role": "user", "content": "seeded question"},
                           {"role": "assistant", "content": "seeded answer"}]}),
    )?;
    seeded.say("a question after the seed")?;

    let mut theirs = Conversation::open(addr, other, json!({}))?;
    theirs.say("the other principal asks")?;
    theirs.say("/remember the other principal's fact")?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let branches = args.iter().any(|arg| arg == "--branches");
    let plain: Vec<&String> = args.iter().filter(|arg| !arg.starts_with("--")).collect();
    let [addr, token, other] = plain[..] else {
        eprintln!("usage: fixture_writer ADDR TOKEN OTHER_TOKEN [--branches]");
        return ExitCode::FAILURE;
    };
    match write(addr, token, other, branches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fixture_writer: {e}");
            ExitCode::FAILURE
        }
    }
}
