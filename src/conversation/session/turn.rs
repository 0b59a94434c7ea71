//! One running turn as its session sees it: `CurrentTurn` (its bookkeeping under the session
//! lock), `SessionTurn` (what the worker emits through), `TurnStart` (what a worker thread is
//! handed, and how it runs there), and the one place a turn is closed.
//!
//! Depends on: `common::cancel`, `common::metrics`, `common::protocol`, `conversation::agent`,
//! `conversation::approval`, `conversation::bot`, `conversation::elicitation`,
//! `conversation::events`, `conversation::journal`, `conversation::session`, `conversation::session::limits`,
//! `conversation::worker`, `model`, `tools::ask`, `tools::knowledge`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::common::cancel::CancelFlag;
use crate::common::metrics::Outcome;
use crate::common::protocol::{ErrorCode, ServerFrame, TurnId};
use crate::conversation::agent::Turn;
use crate::conversation::approval::{Approvals, Verdict};
use crate::conversation::bot::interrupted;
use crate::conversation::elicitation::Elicitations;
use crate::conversation::events::{TurnEvents, TurnOutcome};
use crate::conversation::journal::Hold;
use crate::conversation::worker::Task;
use crate::model::{ChatMessage, Role};
use crate::tools::ask::ElicitAnswer;
use crate::tools::knowledge::Knowledge;
use serde_json::Value;

use super::{Session, SessionState, TurnPermit};

thread_local! {
    /// The turn thread's [`Hold`] across a model step that answers at once, when events are
    /// written before they are sent: what the step emits (its thoughts, its answer, the
    /// closing frame) is committed in one group when it ends, not one group per event.
    static STEP_HOLD: RefCell<Option<Hold>> = const { RefCell::new(None) };
}

/// Ends this thread's [`STEP_HOLD`], if it has one: what it queued is committed now.
fn end_step_hold() {
    let hold = STEP_HOLD.with(|held| held.borrow_mut().take());
    drop(hold);
}

/// The turn in flight, as its session keeps it.
#[derive(Debug)]
pub struct CurrentTurn {
    /// Its id.
    pub id: TurnId,
    /// Set to stop it.
    pub cancel: CancelFlag,
    /// The user's text, for the transcript of an interrupted turn.
    pub text: String,
    /// When it started, for the duration histogram.
    pub started: Instant,
    /// The answer streamed so far that subscribers were given: what a connection attaching now
    /// gets as one `message_delta` with `replace`.
    pub shown: String,
    /// The whole answer streamed so far, including pieces still held until the events before
    /// them are written: everything of it reaches every subscriber before the turn's closing
    /// frame, which keeps it when the turn stops or fails.
    pub streamed: String,
    /// Its tool calls waiting for a person (`approval_request`), and its MCP servers'
    /// sampling requests (`sampling_request`), which `approve` answers.
    pub approvals: Approvals,
    /// Its MCP servers' requests waiting for a person (`elicitation_request`), which `elicit`
    /// answers.
    pub elicitations: Elicitations,
    /// The server of each sampling request asked in this turn, by request id, so that an
    /// `approve` with `always` knows which server it allows.
    pub sampling_servers: HashMap<String, String>,
}

/// A new turn, ready for a worker thread.
#[derive(Debug)]
pub struct TurnStart {
    /// The agent loop to run.
    pub turn: Turn,
    /// Where its events go.
    pub events: SessionTurn,
    /// Its cancel flag.
    pub cancel: CancelFlag,
    /// The session's knowledge, for the tools.
    pub knowledge: Knowledge,
    /// The turn's place under the caps on running turns: held until its worker is done, or
    /// until the worker closes the turn itself (shared with `events`).
    pub permit: Arc<Mutex<Option<TurnPermit>>>,
}

impl Task for TurnStart {
    /// Counts the turn against its owner's daily quota, which may close it at once with
    /// `error` `quota`; else runs the agent loop. A panic becomes an `internal` error event
    /// that closes the turn.
    fn run(self) {
        let TurnStart {
            turn,
            events,
            cancel,
            knowledge,
            permit,
        } = self;
        // A turn cancelled before it started is not counted; it ends as cancelled.
        if !cancel.is_cancelled() {
            let inner = &events.session.inner;
            if let Err(message) = inner.quotas.start_turn(&inner.owner) {
                drop(permit);
                events.fail(ErrorCode::Quota, &message);
                return;
            }
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| turn.run(&events, &cancel, &knowledge)));
        // However the turn ended, nothing it queued waits for this thread any more.
        end_step_hold();
        drop(permit.lock().take());
        match outcome {
            Ok(TurnOutcome::Answered | TurnOutcome::Failed | TurnOutcome::Cancelled) => {}
            Err(_) => {
                log::error!("turn {}: panicked", events.turn_id());
                events.fail(ErrorCode::Internal, "the turn crashed inside the server");
            }
        }
    }

    /// Closes the turn with `server_busy`: no thread could run it.
    fn refused(self, error: &io::Error) {
        log::warn!(
            "turn {}: no thread could be started: {error}",
            self.events.turn_id()
        );
        self.events.fail(
            ErrorCode::ServerBusy,
            "the server could not start a worker for this turn",
        );
    }
}

/// The session's side of one running turn: what [`Turn::run`] emits through.
#[derive(Clone, Debug)]
pub struct SessionTurn {
    pub(super) session: Session,
    pub(super) turn_id: TurnId,
    /// The turn's waiting calls (the same as its [`CurrentTurn`]'s).
    pub(super) approvals: Approvals,
    /// Its place under the caps (the same as its [`TurnStart`]'s).
    pub(super) permit: Arc<Mutex<Option<TurnPermit>>>,
    /// The turn's waiting elicitations (the same as its [`CurrentTurn`]'s).
    pub(super) elicitations: Elicitations,
}

impl SessionTurn {
    /// The turn's id.
    pub fn turn_id(&self) -> TurnId {
        self.turn_id
    }

    /// The session the turn runs in.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Closes the turn with an error event, if it is still current, keeping the conversation
    /// well formed. Used when the turn's worker could not start or crashed, and when its
    /// owner's daily quota is used up.
    pub fn fail(&self, code: ErrorCode, message: &str) {
        let frame = ServerFrame::turn_error(self.turn_id, code, message);
        let mut state = self.session.inner.lock();
        if let Some(turn) = state.turn.take_if(|turn| turn.id == self.turn_id) {
            let transcript = interrupted(&turn.text);
            self.session
                .close_turn(&mut state, Some(&turn), frame, transcript, false);
        }
    }

    /// Closes the turn with `frame`, if it is still current.
    fn finish(
        &self,
        frame: ServerFrame,
        transcript: Vec<ChatMessage>,
        reset_history: bool,
    ) -> bool {
        let mut state = self.session.inner.lock();
        if self.session.store_failing() {
            self.fail_on_storage(&mut state);
            return false;
        }
        let Some(turn) = state.turn.take_if(|turn| turn.id == self.turn_id) else {
            return false;
        };
        self.session
            .close_turn(&mut state, Some(&turn), frame, transcript, reset_history);
        // Its place goes back before anyone can see the closing frame: this thread may commit
        // it and send it (once the session lock is released), and a client that has seen it
        // may start its next turn at once.
        drop(self.permit.lock().take());
        drop(state);
        end_step_hold();
        true
    }

    /// Ends the turn with `error` `storage` because the store refuses writes: nothing more of
    /// it is produced, and what it produced since the failure is never shown (events are
    /// released only once committed; the error itself is, once the store takes writes again).
    fn fail_on_storage(&self, state: &mut SessionState) {
        let Some(turn) = state.turn.take_if(|turn| turn.id == self.turn_id) else {
            return;
        };
        turn.cancel.cancel();
        let message = "the server could not write this turn to its store; nothing of it after \
                       the failure was shown";
        let frame = ServerFrame::turn_error(self.turn_id, ErrorCode::Storage, message);
        let transcript = interrupted(&turn.text);
        self.session
            .close_turn(state, Some(&turn), frame, transcript, false);
        log::warn!(
            "session {}: turn {} ended: the store refuses writes",
            self.session.id().short(),
            self.turn_id
        );
    }
}

impl SessionTurn {
    /// Runs `act` under the session lock if the turn is still current (and the store takes
    /// writes; a failing store ends the turn instead). True when it ran.
    fn while_current(&self, act: impl FnOnce(&mut SessionState)) -> bool {
        let mut state = self.session.inner.lock();
        if self.session.store_failing() {
            self.fail_on_storage(&mut state);
            return false;
        }
        let current = state
            .turn
            .as_ref()
            .is_some_and(|turn| turn.id == self.turn_id);
        if current {
            act(&mut state);
        }
        current
    }
}

impl TurnEvents for SessionTurn {
    fn emit(&self, frame: ServerFrame) -> bool {
        self.while_current(|state| match frame {
            ServerFrame::MessageDelta { text, .. } => {
                self.session.stream(state, self.turn_id, text);
            }
            frame @ ServerFrame::ToolProgress { .. } => {
                self.session.stream_progress(state, &frame);
            }
            frame => self.session.push_event(state, frame),
        })
    }

    fn ask_approval(&self, call_id: &str, request: ServerFrame) -> bool {
        self.while_current(|state| {
            self.approvals.expect(call_id);
            self.session.push_event(state, request);
        })
    }

    fn await_approval(&self, call_id: &str, deadline: Instant, cancel: &CancelFlag) -> Verdict {
        self.approvals.wait(call_id, deadline, cancel)
    }

    fn ask_elicitation(
        &self,
        request_id: &str,
        schema: Option<Value>,
        request: ServerFrame,
    ) -> bool {
        self.while_current(|state| {
            self.elicitations.expect(request_id, schema);
            self.session.push_event(state, request);
        })
    }

    fn await_elicitation(
        &self,
        request_id: &str,
        deadline: Instant,
        cancel: &CancelFlag,
    ) -> ElicitAnswer {
        self.elicitations.wait(request_id, deadline, cancel)
    }

    fn allows_sampling(&self, server: &str) -> bool {
        self.session
            .inner
            .state
            .lock()
            .sampling_allowed
            .contains(server)
    }

    fn ask_sampling(&self, request_id: &str, server: &str, request: ServerFrame) -> bool {
        self.while_current(|state| {
            self.approvals.expect(request_id);
            if let Some(turn) = state.turn.as_mut() {
                turn.sampling_servers
                    .insert(request_id.to_owned(), server.to_owned());
            }
            self.session.push_event(state, request);
        })
    }

    fn close(&self, frame: ServerFrame, transcript: Vec<ChatMessage>) -> bool {
        self.finish(frame, transcript, false)
    }

    fn close_resetting(&self, frame: ServerFrame, transcript: Vec<ChatMessage>) -> bool {
        self.finish(frame, transcript, true)
    }

    fn hold(&self) {
        let mut state = self.session.inner.lock();
        if state
            .turn
            .as_ref()
            .is_none_or(|turn| turn.id != self.turn_id)
        {
            return;
        }
        if self.session.inner.send_before_written {
            // Events are sent as they are made: they wait for the flush.
            state.holding = true;
        } else {
            // Events are sent once written: they are written together, at the flush.
            STEP_HOLD.with(|held| {
                held.borrow_mut().get_or_insert_with(Hold::new);
            });
        }
    }

    fn flush(&self) {
        let mut state = self.session.inner.lock();
        self.session.flush_held(&mut state);
        drop(state);
        end_step_hold();
    }
}

impl Session {
    /// The one place a turn ends: logs its closing `frame`, clears the conversation first when
    /// `reset_history` is set, and commits `transcript`. `turn` is the turn that was current,
    /// taken out of the state by the caller (none for a turn a restart cut off).
    pub(super) fn close_turn(
        &self,
        state: &mut SessionState,
        turn: Option<&CurrentTurn>,
        mut frame: ServerFrame,
        mut transcript: Vec<ChatMessage>,
        reset_history: bool,
    ) {
        // A turn that stops or fails after part of its answer was shown keeps that part: in
        // its closing frame, for every device and every replay, and in what the model sees.
        if let Some(turn) = turn.filter(|turn| !turn.streamed.is_empty())
            && !matches!(frame, ServerFrame::Message { .. })
        {
            frame.keep_answer(&turn.streamed);
            keep_in_transcript(&mut transcript, &turn.streamed);
        }
        // The turn's story in one line: session, turn, code and the model server's words.
        if let ServerFrame::Error {
            turn_id: Some(turn_id),
            code,
            message,
            ..
        } = &frame
        {
            log::warn!(
                "session {}: turn {turn_id} failed ({}): {message}",
                self.inner.id.short(),
                code.as_str()
            );
        }
        // The closing frame goes out with whatever the turn held back.
        state.holding = false;
        if let Some(turn) = turn {
            let outcome = match &frame {
                ServerFrame::Message { .. } => Outcome::Message,
                ServerFrame::Status(_) => Outcome::Cancelled,
                _ => Outcome::Error,
            };
            self.inner
                .metrics
                .turn_ended(outcome, turn.started.elapsed());
        }
        let turn_id = frame.turn_id().unwrap_or_default();
        self.push_marked(state, frame, reset_history);
        if reset_history {
            state.bot.clear_history();
            state.tree.reset(turn_id.0);
            log::info!(
                "session {}: history cleared after the model rejected it",
                self.inner.id.short()
            );
        }
        self.commit(state, turn_id, transcript);
    }
}

/// Puts `answer` (the part of an answer a stopped or failed turn had shown) into its
/// transcript as the assistant's reply: in place of the empty reply an interrupted turn ends
/// with, else after the transcript's last message.
fn keep_in_transcript(transcript: &mut Vec<ChatMessage>, answer: &str) {
    match transcript.last_mut() {
        Some(last)
            if last.role == Role::Assistant
                && last.content.is_empty()
                && last.tool_calls.is_empty() =>
        {
            last.content = answer.to_owned();
        }
        _ => transcript.push(ChatMessage::text(Role::Assistant, answer)),
    }
}
