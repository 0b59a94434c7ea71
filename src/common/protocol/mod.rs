//! The wire protocol of `shared/PROTOCOL.md` as plain data, in three files: this one holds
//! the ids and the error codes both directions use, `client.rs` the frames a client sends and
//! their decoding, `server.rs` the frames the server sends, the envelope that carries
//! `session_id` and `seq`, and their encoding. Every item is re-exported here, so users name
//! `protocol::ServerFrame` whatever file holds it.
//!
//! Only `handler.rs` calls [`decode_client_frame`]; sessions and the handler call [`encode`];
//! everything else passes the typed values around.
//!
//! Depends on nothing in the crate.

mod client;
mod server;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use client::{
    ApproveData, ClientFrame, ConnectData, DecodeError, EditData, HistoryEntry, HistoryRole,
    MAX_ATTACHMENTS, MAX_CLIENT_ID_CHARS, MAX_NESTING, MessageData, RegenerateData, SwitchData,
    decode_client_frame, nesting_depth,
};
pub use server::{ServerEnvelope, ServerFrame, StatusCode, StatusData, ToolStatus, Usage, encode};

/// A stored file as frames name it: on a `user_message` (the files the user attached) and on a
/// `tool_result` (the files a tool returned), fetched with `GET /api/files/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The file's id (32 hex characters).
    pub id: String,
    /// Its name, as the uploader gave it (made safe).
    pub name: String,
    /// Its type, decided by its bytes.
    pub content_type: String,
    /// Its size in bytes.
    pub size: u64,
}

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
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct TurnId(pub u64);

impl fmt::Display for TurnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
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
    /// An `approve` for a call that is not waiting for one.
    NotWaiting,
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
    /// Turn error: the user's daily quota of turns or model tokens is used up.
    Quota,
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
            ErrorCode::NotWaiting => "not_waiting",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ServerBusy => "server_busy",
            ErrorCode::ModelError => "model_error",
            ErrorCode::StepLimit => "step_limit",
            ErrorCode::Internal => "internal",
            ErrorCode::Storage => "storage",
            ErrorCode::Quota => "quota",
            ErrorCode::Unknown => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn session_ids_are_32_hex_and_parse_back() {
        let id = SessionId::from_random_bytes([0xab; 16]);
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(SessionId::parse(id.as_str()), Some(id));
        assert_eq!(SessionId::parse("ABABABABABABABABABABABABABABABAB"), None);
        assert_eq!(SessionId::parse("abc"), None);
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
}
