//! `ModelError`: what went wrong asking a model server something outside a turn: whether it
//! serves the model (`ModelBackend::probe`), or the vectors of some texts (`Embed::embed`).
//! A turn's own failures are the crate's `Error::Model` and `Error::HistoryRejected`.
//!
//! Depends on nothing in the crate.

use std::fmt;

/// What went wrong asking a model server (the chat model's `GET /models`, the embeddings
/// endpoint). Its `Display` text is what `sparky check` prints and the log shows.
#[derive(Debug)]
pub enum ModelError {
    /// The server could not be reached: no connection, a failed TLS handshake, a timeout.
    Unreachable {
        /// The server, as the text names it (`the model server at http://…/v1`).
        server: String,
        /// What the HTTP client said.
        source: ureq::Error,
    },
    /// The server's answer could not be read to its end.
    Unreadable {
        /// The server, as the text names it.
        server: String,
        /// What the HTTP client said.
        source: ureq::Error,
    },
    /// The server answered with an error status.
    Status {
        /// The server, as the text names it.
        server: String,
        /// The request, when the text names it (`GET /models`).
        request: Option<&'static str>,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body, or the error message in it.
        detail: String,
    },
    /// The server's answer is not JSON.
    NotJson {
        /// The server, as the text names it.
        server: String,
        /// Why it could not be parsed.
        source: serde_json::Error,
    },
    /// The server answered, but not with what was asked for: no vector for every text, or no
    /// model (or not the configured one) in its list. The text says what is missing.
    Answer(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Unreachable { server, source } => {
                write!(f, "cannot reach {server}: {source}")
            }
            ModelError::Unreadable { server, source } => {
                write!(f, "{server} sent an unreadable answer: {source}")
            }
            ModelError::Status {
                server,
                request,
                status,
                detail,
            } => match request {
                Some(request) => write!(f, "{server} answered {request} with {status}: {detail}"),
                None => write!(f, "{server} answered {status}: {detail}"),
            },
            ModelError::NotJson { server, source } => {
                write!(f, "{server}'s answer is not JSON: {source}")
            }
            ModelError::Answer(detail) => f.write_str(detail),
        }
    }
}

impl std::error::Error for ModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ModelError::Unreachable { source, .. } | ModelError::Unreadable { source, .. } => {
                Some(source)
            }
            ModelError::NotJson { source, .. } => Some(source),
            ModelError::Status { .. } | ModelError::Answer(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn the_text_names_the_server_and_the_source_is_kept() {
        let status = ModelError::Status {
            server: "the model server at http://m/v1".into(),
            request: Some("GET /models"),
            status: 503,
            detail: "loading".into(),
        };
        assert_eq!(
            status.to_string(),
            "the model server at http://m/v1 answered GET /models with 503: loading"
        );
        assert!(status.source().is_none());
        let source = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let not_json = ModelError::NotJson {
            server: "the embedding server".into(),
            source,
        };
        assert!(
            not_json
                .to_string()
                .starts_with("the embedding server's answer is not JSON: EOF")
        );
        assert!(not_json.source().is_some());
    }
}
