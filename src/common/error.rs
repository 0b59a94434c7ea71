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
    Store {
        /// What failed, in words for the operator (with the underlying error's text, where
        /// there is one, as the database described it).
        detail: String,
        /// The underlying error (SQLite's, PostgreSQL's, the file system's), if any.
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
        /// True when the store refused a write for lack of room: a full disk, or its size cap
        /// (`--max-store-mib`). The API answers `507` for it, where other store failures get
        /// `503`.
        full: bool,
    },
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

    /// A store failure with no underlying error: a refusal or a broken expectation.
    pub fn store(detail: impl Into<String>) -> Self {
        Error::Store {
            detail: detail.into(),
            source: None,
            full: false,
        }
    }

    /// A write the store refused for lack of room (a full disk, its size cap); `detail` says
    /// which, in words for the operator.
    pub fn store_full(detail: impl Into<String>) -> Self {
        Error::Store {
            detail: detail.into(),
            source: None,
            full: true,
        }
    }

    /// A store failure caused by `source`; `detail` says what failed, in words for the
    /// operator, and includes the source's text as the store described it.
    pub fn store_caused(
        detail: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Store {
            detail: detail.into(),
            source: Some(Box::new(source)),
            full: false,
        }
    }

    /// Marks a store error as a refusal for lack of room (see [`Error::store_full`]) when
    /// `full` is set; any other error is returned as it is.
    pub fn full_if(self, full: bool) -> Self {
        match self {
            Error::Store { detail, source, .. } if full => Error::Store {
                detail,
                source,
                full: true,
            },
            other => other,
        }
    }

    /// True for a store that refused a write for lack of room (see [`Error::store_full`]).
    pub fn is_store_full(&self) -> bool {
        matches!(self, Error::Store { full: true, .. })
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
            | Error::Store { .. }
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
            Error::Store { detail, .. } => write!(f, "store: {detail}"),
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
            Error::Store { source, .. } => source
                .as_deref()
                .map(|source| source as &(dyn std::error::Error + 'static)),
            Error::Tool { .. }
            | Error::Model { .. }
            | Error::HistoryRejected { .. }
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_store_error_keeps_its_source_and_reads_as_before() {
        let cause = io::Error::new(io::ErrorKind::StorageFull, "no space left on device");
        let error = Error::store_caused("write: no space left on device", cause);
        assert_eq!(error.to_string(), "store: write: no space left on device");
        let source = error.source().expect("the cause is kept");
        let io = source
            .downcast_ref::<io::Error>()
            .expect("as the io::Error it was");
        assert_eq!(io.kind(), io::ErrorKind::StorageFull);
        assert_eq!(error.code(), ErrorCode::Internal);
        assert!(Error::store("refused").source().is_none());
        assert!(!error.is_store_full());
        let full = Error::store("write: disk full").full_if(true);
        assert!(full.is_store_full());
        assert_eq!(full.to_string(), "store: write: disk full");
        assert!(!Error::Config("x".into()).full_if(true).is_store_full());
    }
}
