//! `ToolError`: why a tool call failed. Its `Display` text is the error `tool_result` the user
//! sees and the model reads, so that the model can correct its call or say what went wrong.
//!
//! Depends on: `common::error`, `tools::calculator`, `tools::mcp::error`.

use std::error::Error as StdError;
use std::fmt;

use crate::common::error::Error;
use crate::tools::calculator::ExpressionError;
use crate::tools::mcp::McpError;

/// Why a tool call failed. The ToolChain turns it into a `tool_result` with status `error`
/// whose text is its `Display`: written for the model, which reads it and may try again, so it
/// is a phrase in the tool's words rather than `area: detail`.
#[derive(Debug)]
pub enum ToolError {
    /// The model called a tool the ToolChain does not hold.
    Unknown {
        /// The name the model called.
        name: String,
        /// The names it could have called, in order.
        known: Vec<String>,
    },
    /// The model passed arguments the tool cannot use; the text says what to correct.
    Arguments(String),
    /// Something the arguments name does not exist: `node #42`, `prompt named summary`
    /// (the text follows "there is no").
    NotFound(String),
    /// The session holds as many notes as it may, or the new one would take it past the
    /// bytes it may hold.
    NotesFull {
        /// The notes it holds.
        notes: usize,
        /// Their bytes.
        bytes: usize,
        /// The most notes a session may hold.
        max_notes: usize,
        /// The most bytes of notes a session may hold.
        max_bytes: usize,
    },
    /// The calculator's expression has no value.
    Expression(ExpressionError),
    /// The store failed.
    Store(Error),
    /// Talking to an MCP server failed, or its tool answered what it must not.
    Mcp(McpError),
    /// The turn was cancelled while the tool ran.
    Cancelled,
    /// The tool panicked; the ToolChain caught the panic.
    Panicked {
        /// The tool's name.
        tool: String,
    },
    /// The tool ran and failed: an MCP tool's own error result, or something the tool could
    /// not do.
    Failed {
        /// What went wrong, for the model and the user.
        detail: String,
        /// The error underneath, when there is one.
        source: Option<Box<dyn StdError + Send + Sync>>,
    },
}

impl ToolError {
    /// A tool that ran and failed for the reason `detail`, with no error underneath.
    pub fn failed(detail: impl Into<String>) -> Self {
        ToolError::Failed {
            detail: detail.into(),
            source: None,
        }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolError::Unknown { name, known } => {
                write!(
                    f,
                    "unknown tool {name:?}; known tools: {}",
                    known.join(", ")
                )
            }
            ToolError::Arguments(detail) | ToolError::Failed { detail, .. } => f.write_str(detail),
            ToolError::NotFound(what) => write!(f, "there is no {what}"),
            ToolError::NotesFull {
                notes,
                bytes,
                max_notes,
                max_bytes,
            } => write!(
                f,
                "this session's notes are full ({notes} notes, {bytes} bytes; at most \
                 {max_notes} notes and {max_bytes} bytes)"
            ),
            ToolError::Expression(e) => write!(f, "{e}"),
            ToolError::Store(e) => write!(f, "{e}"),
            ToolError::Mcp(e) => write!(f, "{e}"),
            ToolError::Cancelled => f.write_str("cancelled"),
            ToolError::Panicked { tool } => write!(f, "the {tool} tool crashed"),
        }
    }
}

impl StdError for ToolError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ToolError::Expression(e) => Some(e),
            ToolError::Store(e) => Some(e),
            ToolError::Mcp(e) => Some(e),
            ToolError::Failed { source, .. } => source
                .as_deref()
                .map(|source| source as &(dyn StdError + 'static)),
            ToolError::Unknown { .. }
            | ToolError::Arguments(_)
            | ToolError::NotFound(_)
            | ToolError::NotesFull { .. }
            | ToolError::Cancelled
            | ToolError::Panicked { .. } => None,
        }
    }
}

impl From<ExpressionError> for ToolError {
    fn from(e: ExpressionError) -> Self {
        ToolError::Expression(e)
    }
}

impl From<McpError> for ToolError {
    fn from(e: McpError) -> Self {
        ToolError::Mcp(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_what_the_model_reads_and_the_source_is_kept() {
        let full = ToolError::NotesFull {
            notes: 200,
            bytes: 10,
            max_notes: 200,
            max_bytes: 512,
        };
        assert_eq!(
            full.to_string(),
            "this session's notes are full (200 notes, 10 bytes; at most 200 notes and 512 bytes)"
        );
        let unknown = ToolError::Unknown {
            name: "nope".into(),
            known: vec!["clock".into(), "wait".into()],
        };
        assert_eq!(
            unknown.to_string(),
            "unknown tool \"nope\"; known tools: clock, wait"
        );
        assert_eq!(
            ToolError::NotFound("node #4".into()).to_string(),
            "there is no node #4"
        );
        let store = ToolError::Store(Error::store("disk full"));
        assert_eq!(store.to_string(), "store: disk full");
        assert!(store.source().is_some());
        let expression = ToolError::from(ExpressionError::DivisionByZero);
        assert_eq!(expression.to_string(), "division by zero");
        assert!(expression.source().is_some());
        let failed = ToolError::Failed {
            detail: "the clock is wrong".into(),
            source: Some("underneath".into()),
        };
        assert_eq!(failed.to_string(), "the clock is wrong");
        assert_eq!(
            failed.source().map(ToString::to_string).as_deref(),
            Some("underneath")
        );
        assert_eq!(
            ToolError::from(McpError::Cancelled).to_string(),
            "cancelled"
        );
        assert_eq!(ToolError::Cancelled.to_string(), "cancelled");
    }
}
