//! The frames the server sends (PROTOCOL.md sections 4 and 5), the envelope that carries
//! `session_id` and `seq` (section 2), and [`encode`], which writes a frame in it as JSON.
//!
//! Depends on: `common::protocol`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Attachment, ErrorCode, SessionId, TurnId};

/// A frame the server sends (PROTOCOL.md sections 4 and 5).
///
/// Which of them are events (and so carry `seq`) is decided by whoever sends them: every frame
/// that goes through a session's event log is one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The first answer to `connect`.
    SessionInfo {
        /// The session's id.
        session_id: SessionId,
        /// True when the session was created by this `connect`.
        is_new: bool,
        /// True when an existing session was resumed.
        reconnected: bool,
    },
    /// Sent after `session_info` and before any replayed event.
    Ready {
        /// How many tools the ToolChain holds.
        tools_loaded: usize,
        /// Their names.
        tools: Vec<String>,
        /// This conversation's model.
        model: String,
        /// The models a new conversation may choose (`connect.model`), the default first.
        /// Always sent, and never empty: a server that could not list its models yet (`auto`,
        /// with the model server down) offers the conversation's model. Read as empty from a
        /// server that left it out (before PROTOCOL.md version 3).
        #[serde(default)]
        models: Vec<String>,
        /// The last turn of the current path (`0` when there is none).
        #[serde(default)]
        leaf: TurnId,
    },
    /// Opens a turn and echoes the user's text.
    UserMessage {
        /// The turn it opens.
        turn_id: TurnId,
        /// The turn it follows (`0`: the conversation's start). Always sent; absent only from
        /// events stored before PROTOCOL.md version 3, whose turns each follow the turn before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<TurnId>,
        /// The user's text.
        text: String,
        /// The files the user attached.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
        /// The client's name for the frame that started it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// The turn an `edit` replaced.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edit_of: Option<TurnId>,
        /// The turn a `regenerate` answered again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        regenerate_of: Option<TurnId>,
    },
    /// The current path now ends at turn `leaf` (after a `switch`).
    Branch {
        /// The new leaf.
        leaf: TurnId,
    },
    /// Reasoning the bot chose to show.
    Thought {
        /// The turn it belongs to.
        turn_id: TurnId,
        /// The reasoning.
        text: String,
    },
    /// A tool call the bot makes.
    ToolUse {
        /// The turn it belongs to.
        turn_id: TurnId,
        /// Pairs this call with its `tool_result`.
        call_id: String,
        /// The tool's name in the ToolChain.
        name: String,
        /// The arguments: a JSON object.
        args: Value,
    },
    /// What a tool call returned.
    ToolResult {
        /// The turn it belongs to.
        turn_id: TurnId,
        /// The `call_id` of the matching `tool_use`.
        call_id: String,
        /// The tool's name.
        name: String,
        /// Whether the call succeeded.
        status: ToolStatus,
        /// The tool's output, or what went wrong.
        result: String,
        /// The files the tool returned, stored (never inlined in `result`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
    },
    /// A tool call waits for a person to allow it (`approve`); its `tool_use` came first.
    ApprovalRequest {
        /// The turn it belongs to.
        turn_id: TurnId,
        /// The waiting call.
        call_id: String,
        /// The tool's name in the ToolChain.
        name: String,
        /// The call's arguments: a JSON object.
        args: Value,
    },
    /// An MCP server asks the user, in the middle of the tool call `call_id`, to fill in a form
    /// or to visit a URL (MCP's `elicitation/create`); answered by `elicit`. It waits until
    /// the answer, the call's `tool_result`, the turn's close, or a later request of the same
    /// call.
    ElicitationRequest {
        /// The turn it belongs to.
        turn_id: TurnId,
        /// Names the request in the `elicit` that answers it.
        request_id: String,
        /// The tool call during which the server asks.
        call_id: String,
        /// The MCP server that asks, by its name in the config.
        server: String,
        /// What the server says it wants, for a person to read.
        message: String,
        /// A form to fill in, or a URL to visit.
        mode: ElicitMode,
        /// In form mode: the fields, a JSON Schema object of flat primitive properties
        /// (`string`, `number`, `integer`, `boolean`, string enums, arrays of string enums).
        /// Boxed: it is rare, and frames stay small.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        schema: Option<Box<Value>>,
        /// In URL mode: where the server wants the user to go. Shown, never opened by itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    /// An MCP server asks, in the middle of the tool call `call_id`, for a completion from the
    /// conversation's model (MCP's `sampling/createMessage`); answered by `approve` with this
    /// `request_id` as its `call_id`. Waits as an `elicitation_request` does.
    SamplingRequest {
        /// The turn it belongs to.
        turn_id: TurnId,
        /// Names the request in the `approve` that answers it.
        request_id: String,
        /// The tool call during which the server asks.
        call_id: String,
        /// The MCP server that asks.
        server: String,
        /// The messages the server wants the model to answer, as text.
        messages: Vec<SampledMessage>,
        /// The system prompt the server asks for, when it gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system_prompt: Option<String>,
        /// The most tokens the answer may take.
        max_tokens: u32,
    },
    /// How far a running tool call has come: not an event (no `seq`, never logged or replayed).
    ToolProgress {
        /// The turn it belongs to.
        turn_id: TurnId,
        /// The running call.
        call_id: String,
        /// The progress so far; it only grows.
        progress: f64,
        /// The total `progress` will reach, when the tool knows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<f64>,
        /// What the tool is doing, for a person to read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A streamed piece of the final answer: not an event (no `seq`, never logged or replayed).
    MessageDelta {
        /// The turn it belongs to.
        turn_id: TurnId,
        /// The piece, or with `replace` the whole answer so far.
        text: String,
        /// True when `text` replaces what the client has of the answer: sent to a connection
        /// that attaches while the answer streams.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        replace: bool,
    },
    /// The final answer; closes the turn.
    Message {
        /// The turn it closes.
        turn_id: TurnId,
        /// The answer.
        text: String,
        /// The tokens the turn's model calls used, when the model reported them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    },
    /// Something about the session or a turn that is neither content nor failure.
    Status(StatusData),
    /// A rejected client frame (no `turn_id`, no `seq`) or a failed turn (closes it).
    Error {
        /// The failed turn, for a turn error.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turn_id: Option<TurnId>,
        /// What kind of problem.
        code: ErrorCode,
        /// What went wrong, for a person to read.
        message: String,
        /// A turn error: the answer the model had streamed before it failed, kept so that
        /// nothing a person was shown is lost.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
}

impl ServerFrame {
    /// The turn this frame belongs to, if any.
    pub fn turn_id(&self) -> Option<TurnId> {
        match self {
            ServerFrame::UserMessage { turn_id, .. }
            | ServerFrame::Thought { turn_id, .. }
            | ServerFrame::ToolUse { turn_id, .. }
            | ServerFrame::ToolResult { turn_id, .. }
            | ServerFrame::ApprovalRequest { turn_id, .. }
            | ServerFrame::ElicitationRequest { turn_id, .. }
            | ServerFrame::SamplingRequest { turn_id, .. }
            | ServerFrame::ToolProgress { turn_id, .. }
            | ServerFrame::MessageDelta { turn_id, .. }
            | ServerFrame::Message { turn_id, .. } => Some(*turn_id),
            ServerFrame::Status(status) => status.turn_id,
            ServerFrame::Error { turn_id, .. } => *turn_id,
            ServerFrame::SessionInfo { .. }
            | ServerFrame::Ready { .. }
            | ServerFrame::Branch { .. } => None,
        }
    }

    /// True for the frames that close a turn: `message`, a turn `error`, `status cancelled`.
    pub fn closes_turn(&self) -> bool {
        match self {
            ServerFrame::Message { .. } => true,
            ServerFrame::Error { turn_id, .. } => turn_id.is_some(),
            ServerFrame::Status(status) => status.code == StatusCode::Cancelled,
            _ => false,
        }
    }

    /// A client-frame error (section 7): no turn, no `seq`.
    pub fn client_error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            turn_id: None,
            code,
            message: message.into(),
            text: None,
        }
    }

    /// A turn error (it closes turn `turn_id`), with nothing of an answer yet.
    pub fn turn_error(turn_id: TurnId, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            turn_id: Some(turn_id),
            code,
            message: message.into(),
            text: None,
        }
    }

    /// Gives a closing `error` or `status cancelled` the answer streamed so far; other frames
    /// are left as they are.
    pub fn keep_answer(&mut self, answer: &str) {
        match self {
            ServerFrame::Error {
                turn_id: Some(_),
                text,
                ..
            } => *text = Some(answer.to_owned()),
            ServerFrame::Status(status) if status.code == StatusCode::Cancelled => {
                status.text = Some(answer.to_owned());
            }
            _ => {}
        }
    }

    /// A `status` frame with only a code, a message and maybe a turn.
    pub fn status(code: StatusCode, message: impl Into<String>, turn_id: Option<TurnId>) -> Self {
        ServerFrame::Status(StatusData {
            code,
            message: message.into(),
            turn_id,
            ..StatusData::default()
        })
    }
}

/// What an `elicitation_request` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElicitMode {
    /// A form to fill in, described by `schema`.
    Form,
    /// A URL to visit, out of band (a sign-in, a payment).
    Url,
}

/// One message of a `sampling_request`, as text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampledMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// Its text; other content (an image, audio) is named by a note.
    pub text: String,
}

/// Tokens a model used, as OpenAI-compatible servers report them: summed over the model calls
/// of a turn on a `message`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompts sent.
    pub prompt_tokens: u64,
    /// Tokens the model generated.
    pub completion_tokens: u64,
}

impl Usage {
    /// The sum of two counts (saturating).
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.saturating_add(other.prompt_tokens),
            completion_tokens: self
                .completion_tokens
                .saturating_add(other.completion_tokens),
        }
    }
}

/// Whether a tool call succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolStatus {
    /// The tool did its work.
    Success,
    /// The tool failed; `result` says why.
    Error,
}

/// The `data` of a `status` frame. Fields other than `code` and `message` appear only with the
/// codes that use them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusData {
    /// Which status.
    pub code: StatusCode,
    /// For a person to read.
    pub message: String,
    /// The turn it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<TurnId>,
    /// `cancelled`: the answer the model had streamed before the turn was stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `retrying`: which attempt comes next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// `retrying`: how long until it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// `gap`: the first event no longer retained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// `gap`: the last event no longer retained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
}

/// The `status` codes of PROTOCOL.md section 5.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusCode {
    /// The turn `turn_id` was stopped.
    #[default]
    Cancelled,
    /// The history was cleared after the model rejected it, and the turn retried.
    HistoryReset,
    /// A transient model failure; the call is tried again.
    Retrying,
    /// Replay could not include events that are no longer retained.
    Gap,
    /// This connection was the oldest of its session past the limit, and is closed.
    TakenOver,
    /// The conversation was deleted; the connection is closed.
    Deleted,
    /// Older turns were left out of what the model sees.
    ContextTrimmed,
    /// The model stopped at its length limit; the answer that follows is incomplete.
    Truncated,
    /// A `message`, `edit` or `regenerate` carried a `client_id` an earlier turn has: nothing
    /// was started (not an event; only to the connection that sent it).
    Duplicate,
    /// A code this build does not know (only ever decoded, never sent).
    #[serde(other)]
    Unknown,
}

/// A server frame with the envelope fields of PROTOCOL.md section 2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerEnvelope {
    /// The frame itself: `type` and `data`.
    #[serde(flatten)]
    pub frame: ServerFrame,
    /// The session, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// The event's sequence number; events only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// Encodes a server frame with its envelope fields as one JSON text.
pub fn encode(frame: &ServerFrame, session_id: Option<&SessionId>, seq: Option<u64>) -> String {
    // The frame of every streamed chunk: written straight out, the same text serde writes.
    if let ServerFrame::MessageDelta {
        turn_id,
        text,
        replace,
    } = frame
    {
        return encode_delta(*turn_id, text, *replace, session_id, seq);
    }
    encode_with_serde(frame, session_id, seq)
}

/// [`encode`] for every frame, through serde.
fn encode_with_serde(
    frame: &ServerFrame,
    session_id: Option<&SessionId>,
    seq: Option<u64>,
) -> String {
    let envelope = EnvelopeRef {
        frame,
        session_id,
        seq,
    };
    // Serializing these types cannot fail (every map key is a string), but a wrong frame is
    // better than a panic on a server path.
    serde_json::to_string(&envelope).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","data":{{"code":"internal","message":"encode: {e}"}}}}"#)
    })
}

/// A `message_delta` frame, encoded without serde's generic (flattened) path, since a streamed
/// answer encodes one per chunk: the same text [`encode_with_serde`] gives. The strings are
/// still escaped by serde_json, straight into the frame's buffer.
fn encode_delta(
    turn_id: TurnId,
    text: &str,
    replace: bool,
    session_id: Option<&SessionId>,
    seq: Option<u64>,
) -> String {
    use std::io::Write;
    let capacity = 96 + text.len() + session_id.map_or(0, |id| id.0.len());
    let mut out = Vec::with_capacity(capacity);
    // Writes to a Vec cannot fail, nor can serializing a string.
    let _ = write!(
        out,
        r#"{{"type":"message_delta","data":{{"turn_id":{},"text":"#,
        turn_id.0
    );
    let _ = serde_json::to_writer(&mut out, text);
    if replace {
        out.extend_from_slice(br#","replace":true"#);
    }
    out.push(b'}');
    if let Some(id) = session_id {
        out.extend_from_slice(br#","session_id":"#);
        let _ = serde_json::to_writer(&mut out, &id.0);
    }
    if let Some(seq) = seq {
        let _ = write!(out, r#","seq":{seq}"#);
    }
    out.push(b'}');
    String::from_utf8(out).unwrap_or_else(|_| {
        encode_with_serde(
            &ServerFrame::MessageDelta {
                turn_id,
                text: text.to_owned(),
                replace,
            },
            session_id,
            seq,
        )
    })
}

/// The borrowed form of [`ServerEnvelope`], so that encoding copies nothing.
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    #[serde(flatten)]
    frame: &'a ServerFrame,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a SessionId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn id() -> SessionId {
        SessionId::from_random_bytes([0xab; 16])
    }

    fn golden(frame: ServerFrame, seq: Option<u64>, expected: Value) {
        let text = encode(&frame, Some(&id()), seq);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value, expected);
        let back: ServerEnvelope = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back,
            ServerEnvelope {
                frame,
                session_id: Some(id()),
                seq
            }
        );
    }

    #[test]
    fn golden_json_for_each_server_frame() {
        let sid = id().to_string();
        golden(
            ServerFrame::SessionInfo {
                session_id: id(),
                is_new: true,
                reconnected: false,
            },
            None,
            json!({"type": "session_info", "session_id": sid,
                   "data": {"session_id": sid, "is_new": true, "reconnected": false}}),
        );
        golden(
            ServerFrame::Ready {
                tools_loaded: 1,
                tools: vec!["clock".into()],
                model: "m".into(),
                models: vec!["m".into()],
                leaf: TurnId(3),
            },
            None,
            json!({"type": "ready", "session_id": sid,
                   "data": {"tools_loaded": 1, "tools": ["clock"], "model": "m",
                            "models": ["m"], "leaf": 3}}),
        );
        golden(
            ServerFrame::UserMessage {
                attachments: Vec::new(),
                turn_id: TurnId(1),
                parent: Some(TurnId(0)),
                text: "hi".into(),
                client_id: None,
                edit_of: None,
                regenerate_of: None,
            },
            Some(1),
            json!({"type": "user_message", "session_id": sid, "seq": 1,
                   "data": {"turn_id": 1, "parent": 0, "text": "hi"}}),
        );
        golden(
            ServerFrame::UserMessage {
                attachments: Vec::new(),
                turn_id: TurnId(4),
                parent: Some(TurnId(1)),
                text: "again".into(),
                client_id: Some("c-1".into()),
                edit_of: None,
                regenerate_of: Some(TurnId(2)),
            },
            Some(9),
            json!({"type": "user_message", "session_id": sid, "seq": 9,
                   "data": {"turn_id": 4, "parent": 1, "text": "again", "client_id": "c-1",
                            "regenerate_of": 2}}),
        );
        golden(
            ServerFrame::Branch { leaf: TurnId(2) },
            Some(10),
            json!({"type": "branch", "session_id": sid, "seq": 10, "data": {"leaf": 2}}),
        );
        golden(
            ServerFrame::Thought {
                turn_id: TurnId(1),
                text: "t".into(),
            },
            Some(2),
            json!({"type": "thought", "session_id": sid, "seq": 2,
                   "data": {"turn_id": 1, "text": "t"}}),
        );
        golden(
            ServerFrame::ToolUse {
                turn_id: TurnId(1),
                call_id: "c1".into(),
                name: "clock".into(),
                args: json!({}),
            },
            Some(3),
            json!({"type": "tool_use", "session_id": sid, "seq": 3,
                   "data": {"turn_id": 1, "call_id": "c1", "name": "clock", "args": {}}}),
        );
        golden(
            ServerFrame::ToolResult {
                attachments: Vec::new(),
                turn_id: TurnId(1),
                call_id: "c1".into(),
                name: "clock".into(),
                status: ToolStatus::Error,
                result: "no".into(),
            },
            Some(4),
            json!({"type": "tool_result", "session_id": sid, "seq": 4,
                   "data": {"turn_id": 1, "call_id": "c1", "name": "clock",
                            "status": "error", "result": "no"}}),
        );
        golden(
            ServerFrame::ElicitationRequest {
                turn_id: TurnId(1),
                request_id: "c1/ask-1".into(),
                call_id: "c1".into(),
                server: "forms".into(),
                message: "Your name?".into(),
                mode: ElicitMode::Form,
                schema: Some(Box::new(json!({"type": "object",
                                    "properties": {"name": {"type": "string"}}}))),
                url: None,
            },
            Some(5),
            json!({"type": "elicitation_request", "session_id": sid, "seq": 5,
                   "data": {"turn_id": 1, "request_id": "c1/ask-1", "call_id": "c1",
                            "server": "forms", "message": "Your name?", "mode": "form",
                            "schema": {"type": "object",
                                       "properties": {"name": {"type": "string"}}}}}),
        );
        golden(
            ServerFrame::ElicitationRequest {
                turn_id: TurnId(1),
                request_id: "c1/ask-2".into(),
                call_id: "c1".into(),
                server: "pay".into(),
                message: "Pay here".into(),
                mode: ElicitMode::Url,
                schema: None,
                url: Some("https://example.com/pay".into()),
            },
            Some(6),
            json!({"type": "elicitation_request", "session_id": sid, "seq": 6,
                   "data": {"turn_id": 1, "request_id": "c1/ask-2", "call_id": "c1",
                            "server": "pay", "message": "Pay here", "mode": "url",
                            "url": "https://example.com/pay"}}),
        );
        golden(
            ServerFrame::SamplingRequest {
                turn_id: TurnId(1),
                request_id: "c1/ask-3".into(),
                call_id: "c1".into(),
                server: "everything".into(),
                messages: vec![SampledMessage {
                    role: "user".into(),
                    text: "hi".into(),
                }],
                system_prompt: None,
                max_tokens: 100,
            },
            Some(7),
            json!({"type": "sampling_request", "session_id": sid, "seq": 7,
                   "data": {"turn_id": 1, "request_id": "c1/ask-3", "call_id": "c1",
                            "server": "everything",
                            "messages": [{"role": "user", "text": "hi"}],
                            "max_tokens": 100}}),
        );
        golden(
            ServerFrame::MessageDelta {
                turn_id: TurnId(1),
                text: "pa".into(),
                replace: false,
            },
            None,
            json!({"type": "message_delta", "session_id": sid,
                   "data": {"turn_id": 1, "text": "pa"}}),
        );
        golden(
            ServerFrame::MessageDelta {
                turn_id: TurnId(1),
                text: "papa".into(),
                replace: true,
            },
            None,
            json!({"type": "message_delta", "session_id": sid,
                   "data": {"turn_id": 1, "text": "papa", "replace": true}}),
        );
        golden(
            ServerFrame::Message {
                turn_id: TurnId(1),
                text: "done".into(),
                usage: None,
            },
            Some(6),
            json!({"type": "message", "session_id": sid, "seq": 6,
                   "data": {"turn_id": 1, "text": "done"}}),
        );
        golden(
            ServerFrame::Message {
                turn_id: TurnId(2),
                text: "counted".into(),
                usage: Some(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 3,
                }),
            },
            Some(7),
            json!({"type": "message", "session_id": sid, "seq": 7,
                   "data": {"turn_id": 2, "text": "counted",
                            "usage": {"prompt_tokens": 12, "completion_tokens": 3}}}),
        );
        golden(
            ServerFrame::status(StatusCode::Cancelled, "stopped", Some(TurnId(2))),
            Some(7),
            json!({"type": "status", "session_id": sid, "seq": 7,
                   "data": {"code": "cancelled", "message": "stopped", "turn_id": 2}}),
        );
        golden(
            ServerFrame::Status(StatusData {
                code: StatusCode::Gap,
                message: "gone".into(),
                from: Some(1),
                to: Some(5),
                ..StatusData::default()
            }),
            None,
            json!({"type": "status", "session_id": sid,
                   "data": {"code": "gap", "message": "gone", "from": 1, "to": 5}}),
        );
        golden(
            ServerFrame::client_error(ErrorCode::TooLarge, "big"),
            None,
            json!({"type": "error", "session_id": sid,
                   "data": {"code": "too_large", "message": "big"}}),
        );
        golden(
            ServerFrame::turn_error(TurnId(3), ErrorCode::ModelError, "m"),
            Some(8),
            json!({"type": "error", "session_id": sid, "seq": 8,
                   "data": {"turn_id": 3, "code": "model_error", "message": "m"}}),
        );
        let mut failed = ServerFrame::turn_error(TurnId(3), ErrorCode::ModelError, "m");
        failed.keep_answer("The capi");
        golden(
            failed,
            Some(9),
            json!({"type": "error", "session_id": sid, "seq": 9,
                   "data": {"turn_id": 3, "code": "model_error", "message": "m",
                            "text": "The capi"}}),
        );
        let mut stopped = ServerFrame::status(StatusCode::Cancelled, "stopped", Some(TurnId(4)));
        stopped.keep_answer("Once upon");
        golden(
            stopped,
            Some(10),
            json!({"type": "status", "session_id": sid, "seq": 10,
                   "data": {"turn_id": 4, "code": "cancelled", "message": "stopped",
                            "text": "Once upon"}}),
        );
    }

    #[test]
    fn deltas_encode_as_serde_encodes_them() {
        let session = Some(SessionId("0a1b\"2c".to_owned()));
        for text in [
            "",
            "plain",
            "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f} é ✓ \u{1F600}",
        ] {
            for replace in [false, true] {
                for session_id in [None, session.as_ref()] {
                    for seq in [None, Some(7)] {
                        let frame = ServerFrame::MessageDelta {
                            turn_id: TurnId(42),
                            text: text.to_owned(),
                            replace,
                        };
                        assert_eq!(
                            encode(&frame, session_id, seq),
                            encode_with_serde(&frame, session_id, seq)
                        );
                    }
                }
            }
        }
    }
}
