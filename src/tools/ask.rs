//! `AskUser`: how a tool, in the middle of a call, asks the person behind the turn (MCP's
//! client features: `elicitation/create`, and `sampling/createMessage`, which the person must
//! allow before the conversation's model answers it), and the plain values both sides pass.
//! The turn implements it (`conversation/asking.rs`); an MCP call hands what its server asks
//! to it (`tools/mcp/client/asked.rs`).
//!
//! Depends on: `common::protocol`.

use serde_json::{Map, Value};

use crate::common::protocol::{ElicitAction, SampledMessage};

/// Where a running tool call asks the person behind its turn. Called on the thread the call
/// waits on; each method blocks until the person answers, the turn is cancelled, or the
/// approval timeout passes.
pub trait AskUser: Sync {
    /// Shows `request` from the MCP server `server` (an `elicitation_request`) and waits for
    /// the answer. A timeout or a cancelled turn answers [`ElicitAction::Cancel`].
    fn elicit(&self, server: &str, request: Elicitation) -> ElicitAnswer;

    /// Shows `request` from the MCP server `server` (a `sampling_request`) and, once the
    /// person allows it (or allowed that server for good), has the conversation's model
    /// answer it.
    ///
    /// # Errors
    ///
    /// Why there is no answer, for the server: denied, timed out, cancelled, too large for
    /// the context, or the model failed.
    fn sample(&self, server: &str, request: Sampling) -> Result<Sampled, String>;
}

/// What an MCP server asks the user for.
#[derive(Clone, Debug, PartialEq)]
pub struct Elicitation {
    /// What it wants, for a person to read.
    pub message: String,
    /// A form or a URL.
    pub kind: ElicitKind,
}

/// The two modes of `elicitation/create`.
#[derive(Clone, Debug, PartialEq)]
pub enum ElicitKind {
    /// A form: the requested JSON Schema (an object of flat primitive properties).
    Form(Value),
    /// A URL the user should visit, out of band.
    Url(String),
}

/// The user's answer to an [`Elicitation`].
#[derive(Clone, Debug, PartialEq)]
pub struct ElicitAnswer {
    /// Accept, decline or cancel.
    pub action: ElicitAction,
    /// With `accept` in form mode: the answers, checked against the schema.
    pub content: Option<Map<String, Value>>,
}

impl ElicitAnswer {
    /// An answer with no content: a decline, or a cancel.
    pub fn bare(action: ElicitAction) -> Self {
        ElicitAnswer {
            action,
            content: None,
        }
    }
}

/// What an MCP server asks the conversation's model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sampling {
    /// The messages to answer, as text.
    pub messages: Vec<SampledMessage>,
    /// The system prompt it asks for, if any.
    pub system_prompt: Option<String>,
    /// The most tokens the answer may take.
    pub max_tokens: u32,
}

/// The model's answer to a [`Sampling`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sampled {
    /// The answer's text.
    pub text: String,
    /// The model that wrote it.
    pub model: String,
    /// MCP's `stopReason`: `endTurn`, or `maxTokens` when the answer was cut.
    pub stop_reason: String,
}
