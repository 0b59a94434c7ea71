//! `Turn`: the agent loop that runs one user message on a snapshot of its conversation. It
//! puts the memories relevant to the message into the context, asks the model, runs the tools
//! it calls (`tool_calls.rs`), and asks again, until the model answers, fails, runs out of
//! steps, or the turn is cancelled; what the model streams becomes events as it comes.
//!
//! Depends on: `common::auth`, `common::cancel`, `common::error`, `common::metrics`, `common::protocol`, `conversation::attached`, `conversation::bot`, `conversation::context`, `conversation::events`, `conversation::tool_calls`, `model`, `tools::knowledge`, `tools::prompts`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::common::auth::Principal;
use crate::common::cancel::{CancelFlag, OnCancel};
use crate::common::error::Error;
use crate::common::metrics::Metrics;
use crate::common::protocol::{
    Attachment, ErrorCode, ServerFrame, SessionId, StatusCode, StatusData, TurnId, Usage,
};
use crate::conversation::attached::TurnFiles;
use crate::conversation::bot::{Bot, Engine, interrupted};
use crate::conversation::events::{TurnEvents, TurnOutcome};
use crate::conversation::tool_calls::ToolCalls;
use crate::model::{ChatMessage, Conversation, MEMORY_PREFIX, ModelReply, ReplySink, Role};
use crate::tools::knowledge::Knowledge;
use crate::tools::prompts::{self, PromptOutcome};

#[cfg(test)]
mod tests;

/// Graph entries put into a turn's context at most.
pub const MEMORY_ENTRIES: usize = 3;

/// Characters of one graph entry put into a turn's context at most.
pub const MEMORY_ENTRY_CHARS: usize = 300;

/// One turn, ready to run on a worker thread.
pub struct Turn {
    engine: Engine,
    /// The conversation's model; `None` for the backend's default.
    model: Option<String>,
    turn_id: TurnId,
    /// The principal it acts for.
    owner: Principal,
    /// The system prompt, if any.
    head: Vec<ChatMessage>,
    /// The conversation before this turn: the session's snapshot.
    history: Arc<Vec<ChatMessage>>,
    /// This turn's messages: maybe memory, the user's message, then tool calls and results.
    current: Vec<ChatMessage>,
    /// Index of the user's message in `current`.
    user_index: usize,
    /// True once the model rejected the history and this turn dropped it: the turn's
    /// transcript then replaces the session's conversation.
    history_reset: bool,
    /// True once this turn said `context_trimmed`.
    trim_announced: bool,
    /// The conversation it belongs to, the files its user message carries and the files on
    /// its path (this turn's included).
    files: Option<FilesOfTurn>,
}

/// A turn's conversation and files.
#[derive(Debug)]
struct FilesOfTurn {
    conversation: SessionId,
    attached: Vec<Attachment>,
    on_path: Vec<Attachment>,
}

impl fmt::Debug for Turn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Turn")
            .field("turn_id", &self.turn_id)
            .finish_non_exhaustive()
    }
}

impl Turn {
    /// Prepares a turn on a snapshot of `bot`'s conversation, so that it can run without the
    /// session's lock. The snapshot shares the messages; nothing is copied. `owner` is the
    /// principal the turn's memory lookup and tools act for.
    pub fn start(bot: &Bot, turn_id: TurnId, text: &str, owner: &Principal) -> Turn {
        Turn {
            engine: bot.engine().clone(),
            model: bot.model().map(str::to_owned),
            turn_id,
            owner: owner.clone(),
            head: bot.system_message().into_iter().collect(),
            history: bot.snapshot(),
            current: vec![ChatMessage::text(Role::User, text)],
            user_index: 0,
            history_reset: false,
            trim_announced: false,
            files: None,
        }
    }

    /// The turn of conversation `conversation`, whose user message carries the files
    /// `attached`, with the files `on_path` on its path (`attached` among them).
    pub fn with_files(
        mut self,
        conversation: SessionId,
        attached: Vec<Attachment>,
        on_path: Vec<Attachment>,
    ) -> Turn {
        self.files = Some(FilesOfTurn {
            conversation,
            attached,
            on_path,
        });
        self
    }

    /// True when its model answers at once ([`ModelBackend::answers_at_once`]): the turn
    /// runs to its answer without waiting on anyone.
    ///
    /// [`ModelBackend::answers_at_once`]: crate::model::ModelBackend::answers_at_once
    pub fn answers_at_once(&self) -> bool {
        self.engine.model.answers_at_once()
    }

    /// The user's text.
    pub fn user_text(&self) -> &str {
        &self.current[self.user_index].content
    }

    /// Runs the agent loop: asks the model, runs the tools it calls, and asks again, until the
    /// model answers, fails, runs out of steps, or the turn is cancelled. Checks `cancel`
    /// before each model call, tool call and event.
    pub fn run(
        mut self,
        events: &dyn TurnEvents,
        cancel: &CancelFlag,
        knowledge: &Knowledge,
    ) -> TurnOutcome {
        let turn_id = self.turn_id;
        let tools = self.engine.tools.clone();
        // `/prompt` lists the MCP servers' prompts, or puts one in the user's place.
        match prompts::resolve(&tools, self.user_text(), cancel) {
            Some(PromptOutcome::Expanded(text)) => self.current[self.user_index].content = text,
            Some(PromptOutcome::Answer(text)) => {
                return self.answer(events, text.clone(), text, None);
            }
            None => {}
        }
        if cancel.is_cancelled() {
            return TurnOutcome::Cancelled;
        }
        let specs = tools.specs();
        if !self.attach_files(events, cancel) || !self.recall_memory(events) {
            return TurnOutcome::Cancelled;
        }
        // Tokens used by the turn's model calls, summed over the steps that reported them.
        let mut usage: Option<Usage> = None;
        // Tokens the MCP servers' sampling requests used in a step's tool calls.
        let sampled = parking_lot::Mutex::new(None);
        // Text the model streamed in steps that went on to call tools: the user saw it as it
        // came, so it stays part of the answer.
        let mut said: Vec<String> = Vec::new();
        for _step in 0..self.engine.max_steps {
            let reply = match self.ask_model(events, cancel, &specs) {
                Asked::Reply(reply) => reply,
                Asked::Cancelled => return TurnOutcome::Cancelled,
                Asked::Failed(e) => {
                    return self.fail(events, ErrorCode::ModelError, &e.to_string());
                }
            };
            if let Some(step) = reply.usage {
                usage = Some(usage.unwrap_or_default().plus(step));
                self.engine.metrics.tokens_used(
                    &self.engine.model.resolve(self.model.as_deref()),
                    step.prompt_tokens,
                    step.completion_tokens,
                );
            }
            if reply.tool_calls.is_empty() {
                if reply.truncated {
                    let status = ServerFrame::status(
                        StatusCode::Truncated,
                        "the model stopped before the end of its answer (its length limit, \
                         or no reason given); what follows may be incomplete",
                        Some(turn_id),
                    );
                    if !events.emit(status) {
                        return TurnOutcome::Cancelled;
                    }
                }
                // The answer is every step's text, in order, separated by a blank line.
                said.push(reply.text.clone());
                said.retain(|text| !text.trim().is_empty());
                return self.answer(events, said.join("\n\n"), reply.text, usage);
            }
            let calls = reply.tool_calls;
            said.push(reply.text.clone());
            self.current
                .push(ChatMessage::tool_calls(reply.text, calls.clone()));
            let step = ToolCalls {
                calls: &calls,
                engine: &self.engine,
                turn_id,
                owner: &self.owner,
                conversation: self.files.as_ref().map(|files| &files.conversation),
                events,
                cancel,
                knowledge,
                model: self.model.as_deref(),
                usage: &sampled,
            };
            let Some(results) = step.run() else {
                return TurnOutcome::Cancelled;
            };
            // What the step's sampling requests used counts as the turn's.
            if let Some(step) = sampled.lock().take() {
                usage = Some(usage.unwrap_or_default().plus(step));
            }
            self.current.extend(results);
        }
        let limit = self.engine.max_steps;
        self.fail(
            events,
            ErrorCode::StepLimit,
            &format!("the turn took more than {limit} model steps"),
        )
    }

    /// Closes the turn with an answer: `shown` is what the user sees (every step's text),
    /// `said` what the conversation keeps as the assistant's last message.
    fn answer(
        mut self,
        events: &dyn TurnEvents,
        shown: String,
        said: String,
        usage: Option<Usage>,
    ) -> TurnOutcome {
        let answer = ServerFrame::Message {
            turn_id: self.turn_id,
            text: shown,
            usage,
        };
        self.current.push(ChatMessage::text(Role::Assistant, said));
        let mut transcript = self.current.split_off(self.user_index);
        // Images reach the model in the turn that made them; the conversation keeps their
        // notes (in the text), as the store does.
        for message in &mut transcript {
            message.images = Vec::new();
        }
        // Let go of the snapshot first, so that the commit extends the history in place.
        self.history = Arc::default();
        if self.close(events, answer, transcript) {
            TurnOutcome::Answered
        } else {
            TurnOutcome::Cancelled
        }
    }

    /// Asks the model for the next step. When the model rejects the conversation history as
    /// malformed, the turn drops the earlier conversation (keeping the system prompt and this
    /// turn's messages), says so with `status history_reset`, and asks once more.
    fn ask_model(
        &mut self,
        events: &dyn TurnEvents,
        cancel: &CancelFlag,
        specs: &[crate::model::ToolSpec],
    ) -> Asked {
        loop {
            if cancel.is_cancelled() {
                return Asked::Cancelled;
            }
            let mut sink = FrameSink {
                events,
                cancel,
                turn_id: self.turn_id,
                live: true,
                metrics: &self.engine.metrics,
            };
            Metrics::bump(&self.engine.metrics.model_requests);
            let window = self
                .engine
                .context_tokens
                .or_else(|| self.engine.model.context_tokens());
            let fitted = window.map(|window| {
                crate::conversation::context::fit(window, &self.head, &self.history, &self.current)
            });
            let conversation = match &fitted {
                Some(fitted) => Conversation {
                    model: self.model.as_deref(),
                    head: &self.head,
                    earlier: fitted.earlier,
                    current: &fitted.current,
                    max_tokens: None,
                },
                None => Conversation {
                    model: self.model.as_deref(),
                    head: &self.head,
                    earlier: &self.history,
                    current: &self.current,
                    max_tokens: None,
                },
            };
            if fitted.as_ref().is_some_and(|f| f.trimmed) && !self.trim_announced {
                self.trim_announced = true;
                let status = ServerFrame::status(
                    StatusCode::ContextTrimmed,
                    "the conversation is longer than the model's context: older turns were \
                     left out of what it sees (the conversation itself is kept)",
                    Some(self.turn_id),
                );
                if !events.emit(status) {
                    return Asked::Cancelled;
                }
            }
            // A model that answers at once: its thoughts go out with its answer, in one write.
            let held = self.engine.model.answers_at_once();
            if held {
                events.hold();
            }
            let reply = self.engine.model.complete(conversation, specs, &mut sink);
            drop(fitted);
            // A final answer closes the turn, which sends what was held with it; anything else
            // (tool calls, which may wait, or a failure) sends it now.
            if held && !matches!(&reply, Ok(reply) if reply.tool_calls.is_empty()) {
                events.flush();
            }
            if !sink.live || cancel.is_cancelled() {
                return Asked::Cancelled;
            }
            match reply {
                Ok(reply) => return Asked::Reply(reply),
                Err(Error::HistoryRejected { detail, .. }) if !self.history_reset => {
                    log::warn!(
                        "turn {}: the model rejected the history; clearing it: {detail}",
                        self.turn_id
                    );
                    self.history_reset = true;
                    self.history = Arc::default();
                    let status = ServerFrame::Status(StatusData {
                        code: StatusCode::HistoryReset,
                        message: "the model rejected the conversation history; it was cleared \
                                  and the turn tried again"
                            .into(),
                        turn_id: Some(self.turn_id),
                        ..StatusData::default()
                    });
                    if !events.emit(status) {
                        return Asked::Cancelled;
                    }
                }
                Err(e) => return Asked::Failed(e),
            }
        }
    }

    /// Closes the turn, replacing the session's conversation if this turn dropped it.
    fn close(
        &self,
        events: &dyn TurnEvents,
        frame: ServerFrame,
        transcript: Vec<ChatMessage>,
    ) -> bool {
        if self.history_reset {
            events.close_resetting(frame, transcript)
        } else {
            events.close(frame, transcript)
        }
    }

    /// Gives the model the files on the turn's path (`attached.rs`): this turn's files as
    /// blocks after the user's words (and images, to a model that takes them), and the passages
    /// of long documents relevant to the question just before the user's message, said in a
    /// `thought` (unless the model says so itself). False when the turn is no longer current.
    fn attach_files(&mut self, events: &dyn TurnEvents, cancel: &CancelFlag) -> bool {
        let (Some(files), Some(library)) = (&self.files, &self.engine.files) else {
            return true;
        };
        if files.on_path.is_empty() {
            return true;
        }
        let question = self.current[self.user_index].content.clone();
        let prepared = TurnFiles {
            library,
            owner: self.owner.as_str(),
            attached: &files.attached,
            on_path: &files.on_path,
            question: &question,
            vision: self.engine.model.accepts_images(),
            window_tokens: self
                .engine
                .context_tokens
                .or_else(|| self.engine.model.context_tokens()),
            cancel,
        }
        .prepare();
        if cancel.is_cancelled() {
            return false;
        }
        let user = &mut self.current[self.user_index];
        user.content.push_str(&prepared.blocks);
        user.images = prepared.images;
        let Some(passages) = prepared.passages else {
            return true;
        };
        self.current
            .insert(self.user_index, ChatMessage::text(Role::System, passages));
        self.user_index += 1;
        if self.engine.model.describes_memory() {
            return true;
        }
        events.emit(ServerFrame::Thought {
            turn_id: self.turn_id,
            text: format!(
                "Read from the attached files: {}",
                prepared.cited.join("; ")
            ),
        })
    }

    /// Puts the graph entries most relevant to the user's text into the context, just before
    /// the user's message, and says which were used (in a `thought`, unless the model says so
    /// itself). Commands (text starting with `/`) are explicit and get no memory. False when
    /// the turn is no longer current.
    fn recall_memory(&mut self, events: &dyn TurnEvents) -> bool {
        let Some(memory) = &self.engine.memory else {
            return true;
        };
        let text = self.user_text();
        if text.starts_with('/') || memory.node_count() == 0 {
            return true;
        }
        let hits = match memory.search(self.owner.as_str(), text, None, MEMORY_ENTRIES) {
            Ok(hits) => hits,
            Err(e) => {
                log::warn!("turn {}: memory lookup failed: {e}", self.turn_id);
                return true;
            }
        };
        if hits.is_empty() {
            return true;
        }
        let lines: Vec<String> = hits
            .iter()
            .map(|node| {
                let content: String = node.content.chars().take(MEMORY_ENTRY_CHARS).collect();
                format!("- #{} {}: {content}", node.id, node.label)
            })
            .collect();
        let context = format!("{MEMORY_PREFIX}\n{}", lines.join("\n"));
        self.current
            .insert(self.user_index, ChatMessage::text(Role::System, context));
        self.user_index += 1;
        if self.engine.model.describes_memory() {
            return true;
        }
        let used: Vec<String> = hits
            .iter()
            .map(|node| format!("#{} {}", node.id, node.label))
            .collect();
        let thought = format!("Recalled from memory: {}", used.join("; "));
        events.emit(ServerFrame::Thought {
            turn_id: self.turn_id,
            text: thought,
        })
    }

    /// Closes the turn with an error, keeping the conversation well formed.
    fn fail(&self, events: &dyn TurnEvents, code: ErrorCode, message: &str) -> TurnOutcome {
        let frame = ServerFrame::turn_error(self.turn_id, code, message);
        let transcript = interrupted(self.user_text());
        if self.close(events, frame, transcript) {
            TurnOutcome::Failed
        } else {
            TurnOutcome::Cancelled
        }
    }
}

/// What asking the model for one step came to.
enum Asked {
    Reply(ModelReply),
    Failed(Error),
    Cancelled,
}

/// Turns what a model streams into events of the turn.
struct FrameSink<'a> {
    events: &'a dyn TurnEvents,
    cancel: &'a CancelFlag,
    turn_id: TurnId,
    /// False once an emit was refused: the turn is over for the session.
    live: bool,
    metrics: &'a Metrics,
}

impl ReplySink for FrameSink<'_> {
    fn thought(&mut self, text: &str) {
        if self.live {
            let frame = ServerFrame::Thought {
                turn_id: self.turn_id,
                text: text.to_owned(),
            };
            self.live = self.events.emit(frame);
        }
    }

    fn delta(&mut self, text: &str) {
        if self.live {
            let frame = ServerFrame::MessageDelta {
                turn_id: self.turn_id,
                text: text.to_owned(),
                replace: false,
            };
            self.live = self.events.emit(frame);
        }
    }

    fn is_cancelled(&self) -> bool {
        !self.live || self.cancel.is_cancelled()
    }

    fn retrying(&mut self, attempt: u32, delay: Duration) {
        Metrics::bump(&self.metrics.model_retries);
        if self.live {
            let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            let frame = ServerFrame::Status(StatusData {
                code: StatusCode::Retrying,
                message: format!(
                    "the model server failed; trying again in {delay_ms} ms (attempt {attempt})"
                ),
                turn_id: Some(self.turn_id),
                attempt: Some(attempt),
                delay_ms: Some(delay_ms),
                ..StatusData::default()
            });
            self.live = self.events.emit(frame);
        }
    }

    fn sleep(&mut self, delay: Duration) -> bool {
        !self.live || self.cancel.sleep(delay)
    }

    fn on_cancel(&self, hook: Box<dyn Fn() + Send + Sync>) -> Option<OnCancel> {
        Some(self.cancel.on_cancel(hook))
    }
}
