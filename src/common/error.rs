//! The crate's error type and `Result` alias.
//!
//! Depends on: `common::protocol`, `common::protocol::client`.

use std::fmt;
use std::io;

use crate::common::protocol::{DecodeError, ErrorCode};

/// A `Result` whose error is the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside the server, with the context needed to act on it.
#[derive(Debug)]
pub enum Error {
    /// Reading or writing a socket, file or pipe failed.
    Io {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// The WebSocket layer failed.
    WebSocket(tungstenite::Error),
    /// A client frame could not be decoded.
    Decode(DecodeError),
    /// A tool failed.
    Tool {
        /// The tool's name.
        tool: String,
        /// What went wrong.
        detail: String,
    },
    /// A model backend failed.
    Model {
        /// The backend's name.
        backend: String,
        /// What went wrong.
        detail: String,
    },
    /// A model backend refused the conversation history as malformed (a tool message without
    /// the assistant tool call before it, and the like). The bot resets the history and tries
    /// once more.
    HistoryRejected {
        /// The backend's name.
        backend: String,
        /// What the model server answered.
        detail: String,
    },
    /// The store failed: it cannot be opened, read or written.
    Store(String),
    /// The configuration is not usable.
    Config(String),
    /// No thread could be started.
    Spawn(io::Error),
}

impl Error {
    /// Wraps an IO error with what was being done.
    pub fn io(context: &'static str, source: io::Error) -> Self {
        Error::Io { context, source }
    }

    /// The stable code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Decode(decode) => decode.code,
            Error::Model { .. } | Error::HistoryRejected { .. } => ErrorCode::ModelError,
            Error::Spawn(_) => ErrorCode::ServerBusy,
            Error::Io { .. }
            | Error::WebSocket(_)
            | Error::Tool { .. }
            | Error::Store(_)
            | Error::Config(_) => ErrorCode::Internal,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "io: {context}: {source}"),
            Error::WebSocket(e) => write!(f, "websocket: {e}"),
            Error::Decode(e) => write!(f, "decode: {e}"),
            Error::Tool { tool, detail } => write!(f, "tool {tool}: {detail}"),
            Error::Model { backend, detail } => write!(f, "model {backend}: {detail}"),
            Error::HistoryRejected { backend, detail } => {
                write!(f, "model {backend} rejected the history: {detail}")
            }
            Error::Store(detail) => write!(f, "store: {detail}"),
            Error::Config(detail) => write!(f, "config: {detail}"),
            Error::Spawn(e) => write!(f, "spawn: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::WebSocket(e) => Some(e),
            Error::Decode(e) => Some(e),
            Error::Spawn(e) => Some(e),
            Error::Tool { .. }
            | Error::Model { .. }
            | Error::HistoryRejected { .. }
            | Error::Store(_)
            | Error::Config(_) => None,
        }
    }
}

impl From<tungstenite::Error> for Error {
    fn from(e: tungstenite::Error) -> Self {
        Error::WebSocket(e)
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Decode(e)
    }
}
