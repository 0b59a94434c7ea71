//! `McpError`: what went wrong talking to an MCP server, and how a wait is written for people.
//!
//! Depends on: `tools::mcp::schema`.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::schema::Mismatch;

/// What went wrong talking to an MCP server. The `Display` text is what the model and the user
/// see as the tool's error.
#[derive(Debug)]
pub enum McpError {
    /// The server could not be started: it could not be spawned or a thread for it could not be
    /// created.
    Start {
        /// The server's name in the config.
        server: String,
        /// What failed.
        detail: String,
    },
    /// The server stopped: its output closed, or reading or writing its pipes failed.
    Closed {
        /// The server's name in the config.
        server: String,
        /// Why, and what happens next.
        reason: String,
    },
    /// The server is not reading its input: too many messages are queued for it.
    Busy {
        /// The server's name in the config.
        server: String,
    },
    /// No answer came in time; the request was cancelled.
    Timeout {
        /// The server's name in the config.
        server: String,
        /// The request's method.
        method: String,
        /// How long we waited.
        after: Duration,
    },
    /// The turn was cancelled while the request was in flight; the request was cancelled too.
    Cancelled,
    /// The server answered with a JSON-RPC error.
    Rpc {
        /// The server's name in the config.
        server: String,
        /// The JSON-RPC error code.
        code: i64,
        /// The server's message.
        message: String,
    },
    /// An HTTP server refused a request with an error status.
    Http {
        /// The server's name in the config.
        server: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body, or what the status means here.
        detail: String,
    },
    /// An HTTP server no longer knows the session (404): the request was not run, and a new
    /// session starts on the next call.
    SessionExpired {
        /// The server's name in the config.
        server: String,
    },
    /// The server answered something that is not what MCP says it should be.
    Protocol {
        /// The server's name in the config.
        server: String,
        /// What was wrong.
        detail: String,
    },
    /// A tool answered with `structuredContent` that does not match the `outputSchema` it
    /// declared.
    OutputMismatch {
        /// The tool's own name on its server.
        tool: String,
        /// Where and how the content does not match (boxed: it is the largest part of an
        /// error that every MCP call may return).
        mismatch: Box<Mismatch>,
        /// The content.
        structured: Value,
    },
}

impl fmt::Display for McpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            McpError::Start { server, detail } => {
                write!(f, "mcp server {server}: cannot start: {detail}")
            }
            McpError::Closed { server, reason } => {
                write!(f, "mcp server {server} stopped: {reason}")
            }
            McpError::Busy { server } => write!(f, "mcp server {server} is not reading its input"),
            McpError::Timeout {
                server,
                method,
                after,
            } => write!(
                f,
                "mcp server {server} did not answer {method} within {}",
                round_duration(*after)
            ),
            McpError::Cancelled => write!(f, "cancelled"),
            McpError::Rpc {
                server,
                code,
                message,
            } => write!(f, "mcp server {server}: {message} (error {code})"),
            McpError::Http {
                server,
                status,
                detail,
            } => write!(f, "mcp server {server} answered HTTP {status}: {detail}"),
            McpError::SessionExpired { server } => {
                write!(f, "mcp server {server} no longer knows our session")
            }
            McpError::Protocol { server, detail } => {
                write!(f, "mcp server {server}: unexpected answer: {detail}")
            }
            McpError::OutputMismatch {
                tool,
                mismatch,
                structured,
            } => write!(
                f,
                "the {tool} tool answered with structuredContent that does not match its \
                 outputSchema ({mismatch}): {structured}"
            ),
        }
    }
}

impl std::error::Error for McpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            McpError::OutputMismatch { mismatch, .. } => Some(mismatch.as_ref()),
            _ => None,
        }
    }
}

/// A duration as people read it: whole milliseconds below a second, else seconds rounded to
/// one decimal place, without a trailing `.0` (`250ms`, `60s`, `1.5s`).
pub fn round_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let tenths = (millis + 50) / 100;
    if tenths.is_multiple_of(10) {
        format!("{}s", tenths / 10)
    } else {
        format!("{}.{}s", tenths / 10, tenths % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_rounded_for_people() {
        assert_eq!(round_duration(Duration::from_nanos(59_999_945_507)), "60s");
        assert_eq!(round_duration(Duration::from_millis(1_500)), "1.5s");
        assert_eq!(round_duration(Duration::from_micros(250_400)), "250ms");
        assert_eq!(round_duration(Duration::ZERO), "0ms");
        let timeout = McpError::Timeout {
            server: "fx".into(),
            method: "tools/call".into(),
            after: Duration::from_nanos(59_999_945_507),
        };
        assert_eq!(
            timeout.to_string(),
            "mcp server fx did not answer tools/call within 60s"
        );
    }
}
