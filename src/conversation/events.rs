//! What a running turn and the session that runs it agree on: [`TurnEvents`], where the agent
//! loop sends its events and asks for approvals (the session implements it), and
//! [`TurnOutcome`], how the turn ended.
//!
//! Depends on: `common::cancel`, `common::protocol`, `conversation::approval`, `model`.

use std::time::Instant;

use crate::common::cancel::CancelFlag;
use crate::common::protocol::ServerFrame;
use crate::conversation::approval::Verdict;
use crate::model::ChatMessage;

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
