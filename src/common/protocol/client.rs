//! The frames a client sends (PROTOCOL.md section 3) and [`decode_client_frame`], which reads
//! one and says what is wrong with a bad one.
//!
//! Depends on: `common::protocol`.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ErrorCode, TurnId};

/// A frame a client sends (PROTOCOL.md section 3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Opens or resumes a session; the first frame of every connection.
    Connect(ConnectData),
    /// A user message, which opens a turn after the leaf.
    Message(MessageData),
    /// A new user message in place of an earlier turn's: a new turn beside it.
    Edit(EditData),
    /// Another answer to an earlier turn's user message: a new turn beside it.
    Regenerate(RegenerateData),
    /// Makes the branch through a turn current.
    Switch(SwitchData),
    /// Stops the turn in flight, if any.
    Cancel {},
    /// Answers an `approval_request` (runs the waiting tool call, or denies it) or a
    /// `sampling_request` (lets the conversation's model answer an MCP server, or refuses).
    Approve(ApproveData),
    /// Answers an `elicitation_request`: the form's content, or a decline or cancel.
    Elicit(ElicitData),
}

/// The `data` of an `approve` frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproveData {
    /// The waiting call's id, as its `approval_request` gave it.
    pub call_id: String,
    /// True runs the call; false denies it.
    pub allow: bool,
    /// With `allow`, on a `sampling_request`: every later sampling request of the same MCP
    /// server in this conversation is allowed without asking (kept in memory only: a restart,
    /// or the conversation leaving memory, forgets it). Ignored on an `approval_request`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub always: bool,
}

/// The `data` of an `elicit` frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElicitData {
    /// The waiting request's id, as its `elicitation_request` gave it.
    pub request_id: String,
    /// What the user did with the form.
    pub action: ElicitAction,
    /// With `accept` in form mode: the answers, by field name, each of its field's type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<serde_json::Map<String, Value>>,
}

/// What a user did with an `elicitation_request` (MCP's `ElicitResult.action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElicitAction {
    /// Submitted the form (or, in URL mode, agreed to go to the URL).
    Accept,
    /// Said no.
    Decline,
    /// Dismissed it without choosing (also what a timeout answers).
    Cancel,
}

impl ElicitAction {
    /// The action as written on the wire (and in MCP).
    pub fn as_str(self) -> &'static str {
        match self {
            ElicitAction::Accept => "accept",
            ElicitAction::Decline => "decline",
            ElicitAction::Cancel => "cancel",
        }
    }
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
    /// The user's text; empty only when `attachments` is not.
    #[serde(default)]
    pub text: String,
    /// Files uploaded with `POST /api/files`, by id: at most [`MAX_ATTACHMENTS`], each the
    /// sender's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<String>,
    /// The client's name for this frame, so that a retry of it runs once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// The `data` of an `edit` frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EditData {
    /// The turn whose user message this replaces.
    pub turn_id: TurnId,
    /// The new text; empty only when `attachments` is not.
    #[serde(default)]
    pub text: String,
    /// As [`MessageData::attachments`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<String>,
    /// As [`MessageData::client_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// The `data` of a `regenerate` frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegenerateData {
    /// The turn to answer again.
    pub turn_id: TurnId,
    /// As [`MessageData::client_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// The `data` of a `switch` frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchData {
    /// A turn of the branch to make current.
    pub turn_id: TurnId,
}

/// The longest `client_id`, in characters.
pub const MAX_CLIENT_ID_CHARS: usize = 64;

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
    Edit,
    Regenerate,
    Switch,
    Cancel,
    Approve,
    Elicit,
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
                "unknown frame type {frame_type}; expected connect, message, edit, regenerate, switch, cancel, approve or elicit"
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
    let (text, attachments, client_id) = match &frame {
        ClientFrame::Message(m) => (Some(&m.text), &m.attachments[..], m.client_id.as_ref()),
        ClientFrame::Edit(e) => (Some(&e.text), &e.attachments[..], e.client_id.as_ref()),
        ClientFrame::Regenerate(r) => (None, &[][..], r.client_id.as_ref()),
        _ => (None, &[][..], None),
    };
    if attachments.len() > MAX_ATTACHMENTS {
        return Err(DecodeError::new(
            ErrorCode::InvalidMessage,
            format!("at most {MAX_ATTACHMENTS} attachments"),
        ));
    }
    if text.is_some_and(String::is_empty) && attachments.is_empty() {
        return Err(DecodeError::new(
            ErrorCode::InvalidMessage,
            format!("{frame_type} text is empty"),
        ));
    }
    if client_id.is_some_and(|id| id.is_empty() || id.chars().count() > MAX_CLIENT_ID_CHARS) {
        return Err(DecodeError::new(
            ErrorCode::InvalidMessage,
            format!("client_id must be 1 to {MAX_CLIENT_ID_CHARS} characters"),
        ));
    }
    Ok(frame)
}

/// The most files one `message` or `edit` may carry (PROTOCOL.md section 3).
pub const MAX_ATTACHMENTS: usize = 16;

/// The deepest nesting of arrays and objects a client frame may have. Real frames need 4; the
/// limit keeps parsing (which recurses) far from the bottom of a connection thread's small
/// stack, whatever the build.
pub const MAX_NESTING: usize = 64;

/// The deepest nesting of `[` and `{` in a JSON text, outside strings; a linear scan that
/// costs far less than parsing.
pub fn nesting_depth(text: &str) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn decodes_each_client_frame() {
        assert_eq!(
            decode_client_frame(r#"{"type":"message","data":{"text":"hi","extra":1},"x":2}"#),
            Ok(ClientFrame::Message(MessageData {
                text: "hi".into(),
                attachments: Vec::new(),
                client_id: None
            }))
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
        let mut content = serde_json::Map::new();
        content.insert("name".into(), Value::from("Ann"));
        assert_eq!(
            decode_client_frame(
                r#"{"type":"elicit","data":{"request_id":"c1/ask-1","action":"accept","content":{"name":"Ann"}}}"#
            ),
            Ok(ClientFrame::Elicit(ElicitData {
                request_id: "c1/ask-1".into(),
                action: ElicitAction::Accept,
                content: Some(content),
            }))
        );
        assert_eq!(
            decode_client_frame(
                r#"{"type":"approve","data":{"call_id":"c1/ask-2","allow":true,"always":true}}"#
            ),
            Ok(ClientFrame::Approve(ApproveData {
                call_id: "c1/ask-2".into(),
                allow: true,
                always: true,
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
            (
                r#"{"type":"elicit","data":{"request_id":"r","action":"maybe"}}"#,
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
