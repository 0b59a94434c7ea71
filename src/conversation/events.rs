//! What a running turn and the session that runs it agree on: [`TurnEvents`], where the agent
//! loop sends its events and asks for approvals, elicitations and sampling (the session
//! implements it), and
//! [`TurnOutcome`], how the turn ended.
//!
//! Depends on: `common::cancel`, `common::protocol`, `conversation::approval`, `model`, `tools::ask`.

use std::time::Instant;

use serde_json::Value;

use crate::common::cancel::CancelFlag;
use crate::common::protocol::{ElicitAction, ServerFrame};
use crate::conversation::approval::Verdict;
use crate::model::ChatMessage;
use crate::tools::ask::ElicitAnswer;

/// Where a running turn sends its events. The session implements it; it checks that the turn
/// is still the current one, so that nothing of a cancelled turn is ever sent. Shared by the
/// threads of a step's tool calls, which report their progress through it.
pub trait TurnEvents: Sync {
    /// Sends an event of the turn (or a streamed piece: `message_delta`, `tool_progress`).
    /// False when the turn is no longer current: stop working.
    fn emit(&self, frame: ServerFrame) -> bool;

    /// Marks the call `call_id` as waiting for a person and sends its `approval_request`, in
    /// one step, so that an `approve` sent the moment a client sees the request finds the call
    /// waiting. False when the turn is no longer current.
    fn ask_approval(&self, call_id: &str, request: ServerFrame) -> bool;

    /// Waits for the answer to `call_id` (asked with [`ask_approval`](Self::ask_approval))
    /// until `deadline`, or until `cancel` is set.
    fn await_approval(&self, call_id: &str, deadline: Instant, cancel: &CancelFlag) -> Verdict;

    /// Marks the elicitation `request_id` (with its form's `schema`, `None` in URL mode) as
    /// waiting and sends its `elicitation_request`, in one step. False when the turn is no
    /// longer current, or (the default) when nobody can be asked.
    fn ask_elicitation(
        &self,
        request_id: &str,
        schema: Option<Value>,
        request: ServerFrame,
    ) -> bool {
        let _ = (request_id, schema, request);
        false
    }

    /// Waits for the answer to the elicitation `request_id` until `deadline`, or until
    /// `cancel` is set; `cancel` when none came.
    fn await_elicitation(
        &self,
        request_id: &str,
        deadline: Instant,
        cancel: &CancelFlag,
    ) -> ElicitAnswer {
        let _ = (request_id, deadline, cancel);
        ElicitAnswer::bare(ElicitAction::Cancel)
    }

    /// True when the person allowed every sampling request of the MCP server `server` in this
    /// conversation (`approve` with `always`).
    fn allows_sampling(&self, server: &str) -> bool {
        let _ = server;
        false
    }

    /// Marks the sampling request `request_id` of `server` as waiting for approval and sends
    /// its `sampling_request`, in one step; [`await_approval`](Self::await_approval) waits for
    /// the answer. False when the turn is no longer current, or (the default) when nobody can
    /// be asked.
    fn ask_sampling(&self, request_id: &str, server: &str, request: ServerFrame) -> bool {
        let _ = (request_id, server, request);
        false
    }

    /// Sends the frame that closes the turn and adds `transcript` to the conversation, as one
    /// step. False when the turn is no longer current (nothing is sent or kept then).
    fn close(&self, frame: ServerFrame, transcript: Vec<ChatMessage>) -> bool;

    /// As [`close`](Self::close), but `transcript` replaces the conversation (the system
    /// prompt stays) instead of extending it: the model rejected the earlier history as
    /// malformed, and the turn ran without it.
    fn close_resetting(&self, frame: ServerFrame, transcript: Vec<ChatMessage>) -> bool;

    /// What the turn emits from now on may wait, to go out in one write with what follows it,
    /// until [`flush`](Self::flush) or the turn's close. Called only around a model step that
    /// never waits ([`ModelBackend::answers_at_once`](crate::model::ModelBackend)).
    fn hold(&self) {}

    /// Sends what [`hold`](Self::hold) kept back.
    fn flush(&self) {}
}

/// How a turn ended, as far as its worker knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnOutcome {
    /// Closed by a `message`.
    Answered,
    /// Closed by an `error`.
    Failed,
    /// Stopped because the turn was cancelled or replaced.
    Cancelled,
}
