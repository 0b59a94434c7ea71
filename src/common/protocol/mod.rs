//! The wire protocol of `shared/PROTOCOL.md` as plain data: client frames, server frames, the
//! envelope that carries `session_id` and `seq`, and their JSON encoding.
//!
//!  Only `connection.rs` calls [`decode_client_frame`] and [`encode`];
//! everything else passes the typed values around.
//!
//! Depends on nothing in the crate.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A session id issued by the server: 128 random bits written as 32 lowercase hex characters.
///
/// The only ways to make one are [`SessionId::from_random_bytes`] (a new id) and
/// [`SessionId::parse`] (an id a client or the store presents, checked for shape only).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// Number of hex characters in an id.
    pub const HEX_LEN: usize = 32;

    /// Writes 16 random bytes as an id.
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        let mut hex = String::with_capacity(Self::HEX_LEN);
        for byte in bytes {
            hex.push_str(&format!("{byte:02x}"));
        }
        SessionId(hex)
    }

    /// Accepts a string that has the shape of an issued id, or `None`.
    ///
    /// The shape check only keeps garbage out of lookups: whether the id was really issued is
    /// for the session map to say.
    pub fn parse(text: &str) -> Option<Self> {
        let well_formed = text.len() == Self::HEX_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        well_formed.then(|| SessionId(text.to_owned()))
    }

    /// The id as written on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first eight characters, enough to tell sessions apart in logs and thread names.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.short())
    }
}

/// A per-session turn number: 1, 2, 3, …
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TurnId(pub u64);

impl fmt::Display for TurnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A frame a client sends (PROTOCOL.md section 3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Opens or resumes a session; the first frame of every connection.
    Connect(ConnectData),
    /// A user message, which opens a turn.
    Message(MessageData),
    /// Stops the turn in flight, if any.
    Cancel {},
    /// Answers an `approval_request`: runs the waiting tool call, or denies it.
    Approve(ApproveData),
}

/// The `data` of an `approve` frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproveData {
    /// The waiting call's id, as its `approval_request` gave it.
    pub call_id: String,
    /// True runs the call; false denies it.
    pub allow: bool,
}

/// The `data` of a `connect` frame. Every field is optional. Its `Debug` form hides the token.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectData {
    /// The session to resume; an id the server did not issue yields a new session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The highest `seq` the client has seen; events after it are replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// A credential, when the server requires one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A label for the user, recorded with the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The system prompt of a new session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub personality: Option<String>,
    /// The model a new session uses: one of the names `ready.models` lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Earlier conversation to seed a new session with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryEntry>>,
}

impl std::fmt::Debug for ConnectData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectData")
            .field("session_id", &self.session_id)
            .field("last_seq", &self.last_seq)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("user_id", &self.user_id)
            .field("personality", &self.personality)
            .field("model", &self.model)
            .field("history", &self.history)
            .finish()
    }
}

/// One message of a seeded conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Who said it.
    pub role: HistoryRole,
    /// What was said.
    pub content: String,
}

/// The speakers a seeded conversation may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryRole {
    /// The person.
    User,
    /// The bot.
    Assistant,
}

/// The `data` of a `message` frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageData {
    /// The user's text; never empty.
    pub text: String,
}

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
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        models: Vec<String>,
    },
    /// Opens a turn and echoes the user's text.
    UserMessage {
        /// The turn it opens.
        turn_id: TurnId,
        /// The user's text.
        text: String,
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
            | ServerFrame::ToolProgress { turn_id, .. }
            | ServerFrame::MessageDelta { turn_id, .. }
            | ServerFrame::Message { turn_id, .. } => Some(*turn_id),
            ServerFrame::Status(status) => status.turn_id,
            ServerFrame::Error { turn_id, .. } => *turn_id,
            ServerFrame::SessionInfo { .. } | ServerFrame::Ready { .. } => None,
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
    /// A code this build does not know (only ever decoded, never sent).
    #[serde(other)]
    Unknown,
}

/// The `error` codes: those of PROTOCOL.md section 7 for client frames, and those that end a
/// turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a JSON object.
    InvalidJson,
    /// A known type with missing or ill-typed fields.
    InvalidMessage,
    /// `type` missing or unknown.
    UnknownType,
    /// A frame before `connect`.
    NotConnected,
    /// A second `connect` on one connection.
    AlreadyConnected,
    /// A binary frame.
    UnsupportedFrame,
    /// `text` longer than the configured limit.
    TooLarge,
    /// Too many messages in a short time.
    RateLimited,
    /// Missing or wrong credentials.
    Unauthorized,
    /// No room for another session or thread.
    ServerBusy,
    /// Turn error: the model backend failed.
    ModelError,
    /// Turn error: the turn took more model steps than allowed.
    StepLimit,
    /// Turn error: something inside the server failed (a panic, a lost thread).
    Internal,
    /// Turn error: the store could not write the turn.
    Storage,
    /// A code this build does not know (only ever decoded, never sent).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::NotConnected => "not_connected",
            ErrorCode::AlreadyConnected => "already_connected",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ServerBusy => "server_busy",
            ErrorCode::ModelError => "model_error",
            ErrorCode::StepLimit => "step_limit",
            ErrorCode::Internal => "internal",
            ErrorCode::Storage => "storage",
            ErrorCode::Unknown => "unknown",
        }
    }
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

/// Why a client frame was rejected: the code and message of the `error` frame that answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// The section 7 code.
    pub code: ErrorCode,
    /// What was wrong, for a person to read.
    pub message: String,
}

impl DecodeError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        DecodeError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for DecodeError {}

/// The frame types a client may send, named without their data, to tell an unknown `type` from
/// a known one with bad fields.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ClientFrameType {
    Connect,
    Message,
    Cancel,
    Approve,
}

/// Decodes one text frame from a client.
///
/// # Errors
///
/// `invalid_json` when the text is not a JSON object, `unknown_type` when `type` is missing or
/// not one of section 3, `invalid_message` when the `data` does not fit the type (including an
/// empty message `text`). The length limit of `text` is not checked here: it is configuration.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, DecodeError> {
    if nesting_depth(text) > MAX_NESTING {
        let message = format!("frame is nested deeper than {MAX_NESTING} levels");
        return Err(DecodeError::new(ErrorCode::InvalidJson, message));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| DecodeError::new(ErrorCode::InvalidJson, format!("frame is not JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(DecodeError::new(
            ErrorCode::InvalidJson,
            "frame is not a JSON object",
        ));
    };
    let frame_type = object
        .remove("type")
        .ok_or_else(|| DecodeError::new(ErrorCode::UnknownType, "frame has no \"type\""))?;
    if serde_json::from_value::<ClientFrameType>(frame_type.clone()).is_err() {
        return Err(DecodeError::new(
            ErrorCode::UnknownType,
            format!(
                "unknown frame type {frame_type}; expected connect, message, cancel or approve"
            ),
        ));
    }
    // A missing or null `data` reads as `{}`, so that `{"type": "cancel"}` is enough.
    let data = match object.remove("data") {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(data @ Value::Object(_)) => data,
        Some(other) => {
            return Err(DecodeError::new(
                ErrorCode::InvalidMessage,
                format!("{frame_type} data must be a JSON object, not {other}"),
            ));
        }
    };
    let tagged = serde_json::json!({ "type": frame_type, "data": data });
    let frame: ClientFrame = serde_json::from_value(tagged).map_err(|e| {
        DecodeError::new(
            ErrorCode::InvalidMessage,
            format!("bad {frame_type} data: {e}"),
        )
    })?;
    if let ClientFrame::Message(message) = &frame
        && message.text.is_empty()
    {
        return Err(DecodeError::new(
            ErrorCode::InvalidMessage,
            "message text is empty",
        ));
    }
    Ok(frame)
}

/// The deepest nesting of arrays and objects a client frame may have. Real frames need 4; the
/// limit keeps parsing (which recurses) far from the bottom of a connection thread's small
/// stack, whatever the build.
pub const MAX_NESTING: usize = 64;

/// The deepest nesting of `[` and `{` in a JSON text, outside strings; a linear scan that
/// costs far less than parsing.
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Encodes a server frame with its envelope fields as one JSON text.
pub fn encode(frame: &ServerFrame, session_id: Option<&SessionId>, seq: Option<u64>) -> String {
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
    fn connect_data_debug_hides_the_token() {
        let frame =
            decode_client_frame(r#"{"type":"connect","data":{"token":"s3cret","user_id":"ann"}}"#);
        let shown = format!("{frame:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("[redacted]") && shown.contains("ann"),
            "{shown}"
        );
    }

    #[test]
    fn session_ids_are_32_hex_and_parse_back() {
        let id = id();
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(SessionId::parse(id.as_str()), Some(id));
        assert_eq!(SessionId::parse("ABABABABABABABABABABABABABABABAB"), None);
        assert_eq!(SessionId::parse("abc"), None);
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
                models: Vec::new(),
            },
            None,
            json!({"type": "ready", "session_id": sid,
                   "data": {"tools_loaded": 1, "tools": ["clock"], "model": "m"}}),
        );
        golden(
            ServerFrame::UserMessage {
                turn_id: TurnId(1),
                text: "hi".into(),
            },
            Some(1),
            json!({"type": "user_message", "session_id": sid, "seq": 1,
                   "data": {"turn_id": 1, "text": "hi"}}),
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
            ServerFrame::Error {
                turn_id: Some(TurnId(3)),
                code: ErrorCode::ModelError,
                message: "m".into(),
            },
            Some(8),
            json!({"type": "error", "session_id": sid, "seq": 8,
                   "data": {"turn_id": 3, "code": "model_error", "message": "m"}}),
        );
    }

    #[test]
    fn error_codes_match_their_wire_names() {
        for code in [
            ErrorCode::InvalidJson,
            ErrorCode::TooLarge,
            ErrorCode::StepLimit,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }

    #[test]
    fn decodes_each_client_frame() {
        assert_eq!(
            decode_client_frame(r#"{"type":"message","data":{"text":"hi","extra":1},"x":2}"#),
            Ok(ClientFrame::Message(MessageData { text: "hi".into() }))
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"cancel"}"#),
            Ok(ClientFrame::Cancel {})
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"connect","data":{"session_id":"x","last_seq":0}}"#),
            Ok(ClientFrame::Connect(ConnectData {
                session_id: Some("x".into()),
                last_seq: Some(0),
                ..ConnectData::default()
            }))
        );
        let frame = ClientFrame::Connect(ConnectData {
            history: Some(vec![HistoryEntry {
                role: HistoryRole::User,
                content: "a".into(),
            }]),
            ..ConnectData::default()
        });
        let text = serde_json::to_string(&frame).unwrap();
        assert_eq!(decode_client_frame(&text), Ok(frame));
    }

    #[test]
    fn classifies_bad_client_frames() {
        let cases = [
            ("not json", ErrorCode::InvalidJson),
            ("[1,2]", ErrorCode::InvalidJson),
            ("\"text\"", ErrorCode::InvalidJson),
            ("{}", ErrorCode::UnknownType),
            (r#"{"type":"shout"}"#, ErrorCode::UnknownType),
            (r#"{"type":7}"#, ErrorCode::UnknownType),
            (r#"{"type":"message"}"#, ErrorCode::InvalidMessage),
            (
                r#"{"type":"message","data":{"text":""}}"#,
                ErrorCode::InvalidMessage,
            ),
            (
                r#"{"type":"message","data":{"text":5}}"#,
                ErrorCode::InvalidMessage,
            ),
            (
                r#"{"type":"message","data":"hi"}"#,
                ErrorCode::InvalidMessage,
            ),
            (
                r#"{"type":"connect","data":{"last_seq":-1}}"#,
                ErrorCode::InvalidMessage,
            ),
            (
                r#"{"type":"connect","data":{"last_seq":1e400}}"#,
                ErrorCode::InvalidJson,
            ),
            (
                r#"{"type":"connect","data":{"history":[{"role":"x"}]}}"#,
                ErrorCode::InvalidMessage,
            ),
        ];
        for (text, code) in cases {
            assert_eq!(
                decode_client_frame(text).map_err(|e| e.code),
                Err(code),
                "{text}"
            );
        }
        assert_eq!(nesting_depth(r#"{"a":[1,{"b":"[[[{{"}]}"#), 3);
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            decode_client_frame(&deep).map_err(|e| e.code),
            Err(ErrorCode::InvalidJson)
        );
    }
}
