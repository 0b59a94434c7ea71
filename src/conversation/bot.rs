//! `Bot`: one session's conversation and the agent loop that runs a turn on it (model, then
//! tools, then model again).
//!
//! Depends on: `common::auth`, `common::cancel`, `common::error`, `common::metrics`, `common::protocol`, `conversation::approval`, `conversation::context`, `model`, `store`, `tools`, `tools::knowledge`, `tools::mcp`, `tools::prompts`.

use std::fmt;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::common::auth::Principal;
use crate::common::cancel::{CancelFlag, OnCancel};
use crate::common::error::Error;
use crate::common::metrics::Metrics;
use crate::common::protocol::{
    ErrorCode, ServerFrame, StatusCode, StatusData, ToolStatus, TurnId, Usage,
};
use crate::conversation::approval::Verdict;
use crate::model::{
    ChatMessage, Conversation, MEMORY_PREFIX, ModelBackend, ModelReply, ReplySink, Role, ToolArgs,
    ToolCall,
};
use crate::store::GraphStore;
use crate::tools::knowledge::Knowledge;
use crate::tools::prompts::{self, PromptOutcome};
use crate::tools::{Progress, ProgressSink, ToolChain, ToolContext, ToolOutput};

/// The most conversation messages a session keeps. Older ones are dropped a whole exchange at a
/// time, so that the model's context stays bounded and every turn copies a bounded history.
pub const MAX_HISTORY_MESSAGES: usize = 200;

/// The most bytes of conversation a session keeps in memory (text, tool calls and results),
/// trimmed like [`MAX_HISTORY_MESSAGES`]: more than any model's context holds, and a bound on a
/// session's memory however large its messages. The last exchange is kept whatever its size.
pub const MAX_HISTORY_BYTES: usize = 2 << 20;

/// Graph entries put into a turn's context at most.
pub const MEMORY_ENTRIES: usize = 3;

/// Characters of one graph entry put into a turn's context at most.
pub const MEMORY_ENTRY_CHARS: usize = 300;

/// The shortest time between two `tool_progress` frames of one call: a server may report
/// progress as often as it likes, clients get at most ten a second of each call (the last
/// report, where `progress` reaches `total`, always goes out).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// The model and tools every bot of a server shares. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    /// The language model.
    pub model: Arc<dyn ModelBackend>,
    /// The tools, loaded once at start.
    pub tools: Arc<ToolChain>,
    /// Model calls allowed in one turn; the turn fails with `step_limit` past it.
    pub max_steps: usize,
    /// The knowledge graph, searched at the start of each turn for entries relevant to the
    /// user's text.
    pub memory: Option<Arc<dyn GraphStore>>,
    /// Where model requests and retries are counted.
    pub metrics: Arc<Metrics>,
    /// The system message of a conversation that has no personality of its own; `{date}` in it
    /// becomes the day's date (UTC) at each turn. `None`: no system message.
    pub system_prompt: Option<Arc<str>>,
    /// The model's context window in tokens, when the operator gave it (`--context-tokens`);
    /// else the model says ([`ModelBackend::context_tokens`]), or nothing is trimmed.
    pub context_tokens: Option<usize>,
    /// How long a tool call that needs approval waits for it before it is denied
    /// (`--approval-timeout`).
    pub approval_timeout: Duration,
}

/// The built-in system prompt: what Sparky is, what its tools are for, and the date.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are Sparky, a helpful assistant running on the \
user's own server. Today is {date}. Answer clearly and briefly. You have tools: use \
`remember` to keep facts the user tells you and `recall` to look them up in your long-term \
memory, `session_note` and `session_notes` for notes about this conversation, `calculator` for \
arithmetic, `clock` for the time, and any other tool listed when it helps. Say so when you do \
not know something.";

/// `prompt` with `{date}` replaced by today's date (UTC), e.g. 2026-12-02.
fn with_date(prompt: &str) -> String {
    if !prompt.contains("{date}") {
        return prompt.to_owned();
    }
    let date = time::OffsetDateTime::now_utc().date();
    let date = format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    );
    prompt.replace("{date}", &date)
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model.name())
            .field("tools", &self.tools)
            .field("max_steps", &self.max_steps)
            .field("memory", &self.memory.is_some())
            .finish()
    }
}

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

/// A session's conversation: the system prompt and the messages so far.
#[derive(Debug)]
pub struct Bot {
    engine: Engine,
    system: Option<String>,
    /// The model the conversation chose; `None` for the backend's default.
    model: Option<String>,
    /// Shared with running turns as a snapshot: a turn clones the `Arc`, not the messages.
    history: Arc<Vec<ChatMessage>>,
    /// The number of `history[0]` in the whole conversation (older messages were trimmed).
    first_index: u64,
    /// The size of `history`, as [`message_bytes`] counts it.
    bytes: usize,
}

/// What a message costs in memory, near enough: its text and its tool calls.
fn message_bytes(message: &ChatMessage) -> usize {
    let calls: usize = message
        .tool_calls
        .iter()
        .map(|call| call.id.len() + call.name.len() + call.args.text_len())
        .sum();
    message.content.len() + calls
}

impl Bot {
    /// A bot with an optional system prompt and a seeded conversation.
    pub fn new(engine: Engine, personality: Option<String>, seed: Vec<ChatMessage>) -> Self {
        Self::restore(engine, personality, 0, seed)
    }

    /// A bot whose conversation so far is `history`, the first of which is message number
    /// `first_index`.
    pub fn restore(
        engine: Engine,
        personality: Option<String>,
        first_index: u64,
        history: Vec<ChatMessage>,
    ) -> Self {
        let mut bot = Bot {
            engine,
            system: personality,
            model: None,
            bytes: history.iter().map(message_bytes).sum(),
            history: Arc::new(history),
            first_index,
        };
        bot.trim();
        bot
    }

    /// The number of the oldest message kept.
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// The number the next committed message gets.
    pub fn end_index(&self) -> u64 {
        self.first_index + self.history.len() as u64
    }

    /// The bot with the conversation's choice of model (one of the backend's
    /// [`models`](ModelBackend::models)); `None` for the default.
    #[must_use]
    pub fn with_model(mut self, model: Option<String>) -> Self {
        self.model = model;
        self
    }

    /// The model the conversation chose, if any.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The personality (system prompt) it was created with.
    pub fn personality(&self) -> Option<&str> {
        self.system.as_deref()
    }

    /// The conversation so far, oldest first, without the system prompt.
    pub fn history(&self) -> &[ChatMessage] {
        &self.history
    }

    /// The engine the bot runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Prepares a turn on a snapshot of the conversation, so that it can run without the
    /// session's lock. The snapshot shares the messages; nothing is copied. `owner` is the
    /// principal the turn's memory lookup and tools act for.
    pub fn start_turn(&self, turn_id: TurnId, text: &str, owner: &Principal) -> Turn {
        // The conversation's personality replaces the server's system prompt.
        let system = self
            .system
            .as_deref()
            .or(self.engine.system_prompt.as_deref());
        let system = system.filter(|system| !system.trim().is_empty());
        // The tools' instructions (the MCP servers') follow the prompt, whichever it is.
        let instructions = self.engine.tools.instructions();
        let system = match (system, instructions.trim().is_empty()) {
            (system, true) => system.map(str::to_owned),
            (Some(system), false) => Some(format!("{system}\n\n{instructions}")),
            (None, false) => Some(instructions),
        };
        let head = system
            .map(|system| ChatMessage::text(Role::System, with_date(&system)))
            .into_iter()
            .collect();
        Turn {
            engine: self.engine.clone(),
            model: self.model.clone(),
            turn_id,
            owner: owner.clone(),
            head,
            history: self.history.clone(),
            current: vec![ChatMessage::text(Role::User, text)],
            user_index: 0,
            history_reset: false,
            trim_announced: false,
        }
    }

    /// Adds a finished turn's messages to the conversation. The messages are copied only when a
    /// turn (a cancelled one still winding down) holds a snapshot.
    pub fn commit(&mut self, transcript: Vec<ChatMessage>) {
        self.bytes += transcript.iter().map(message_bytes).sum::<usize>();
        Arc::make_mut(&mut self.history).extend(transcript);
        self.trim();
    }

    /// Forgets the conversation (the system prompt stays), after the model rejected it as
    /// malformed. Numbering goes on: the next committed message keeps the number it would have
    /// had, and everything before it counts as trimmed.
    pub fn clear_history(&mut self) {
        self.first_index = self.end_index();
        self.history = Arc::default();
        self.bytes = 0;
    }

    /// Drops the oldest exchanges while the history is past [`MAX_HISTORY_MESSAGES`] or
    /// [`MAX_HISTORY_BYTES`]; the history then starts at a user message. The last exchange
    /// stays whatever its size.
    fn trim(&mut self) {
        let history = &self.history;
        let over = |cut: usize, bytes: usize| {
            history.len() - cut > MAX_HISTORY_MESSAGES || bytes > MAX_HISTORY_BYTES
        };
        if !over(0, self.bytes) {
            return;
        }
        let last_exchange = history
            .iter()
            .rposition(|m| m.role == Role::User)
            .unwrap_or(history.len());
        let (mut cut, mut bytes) = (0, self.bytes);
        while cut < last_exchange && over(cut, bytes) {
            // One whole exchange: up to the next user message.
            loop {
                bytes -= message_bytes(&history[cut]);
                cut += 1;
                if cut >= last_exchange || history[cut].role == Role::User {
                    break;
                }
            }
        }
        if cut > 0 {
            Arc::make_mut(&mut self.history).drain(..cut);
            self.first_index += cut as u64;
            self.bytes = bytes;
        }
    }
}

/// The transcript of a turn that ended without an answer: the user's message and an empty
/// reply. What went wrong is in the turn's events for people to read; the model is not told,
/// or a small model answers the next question with the server's error text.
pub fn interrupted(user_text: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::text(Role::User, user_text),
        ChatMessage::text(Role::Assistant, ""),
    ]
}

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
}

impl fmt::Debug for Turn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Turn")
            .field("turn_id", &self.turn_id)
            .finish_non_exhaustive()
    }
}

impl Turn {
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
        if !self.recall_memory(events) {
            return TurnOutcome::Cancelled;
        }
        // Tokens used by the turn's model calls, summed over the steps that reported them.
        let mut usage: Option<Usage> = None;
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
            let Some(results) = self.run_tools(&calls, events, cancel, knowledge) else {
                return TurnOutcome::Cancelled;
            };
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
                },
                None => Conversation {
                    model: self.model.as_deref(),
                    head: &self.head,
                    earlier: &self.history,
                    current: &self.current,
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

    /// Runs one step's tool calls and reports them: every `tool_use` first, then the
    /// `approval_request` of each call a person must allow (and the wait for the answers),
    /// then each `tool_result` in call order. Several calls run side by side, the first on
    /// this thread and each other on a scoped thread of its own. Returns the tool messages for
    /// the conversation, or `None` when the turn is no longer current.
    fn run_tools(
        &self,
        calls: &[ToolCall],
        events: &dyn TurnEvents,
        cancel: &CancelFlag,
        knowledge: &Knowledge,
    ) -> Option<Vec<ChatMessage>> {
        let turn_id = self.turn_id;
        for call in calls {
            let used = ServerFrame::ToolUse {
                turn_id,
                call_id: call.id.clone(),
                name: call.name.clone(),
                args: call.args.frame_value(),
            };
            if cancel.is_cancelled() || !events.emit(used) {
                return None;
            }
        }
        let denials = self.approve(calls, events, cancel)?;
        let tools: &ToolChain = &self.engine.tools;
        let sinks: Vec<CallProgress<'_>> = calls
            .iter()
            .map(|call| CallProgress {
                events,
                turn_id,
                call_id: &call.id,
                last: Mutex::new(None),
            })
            .collect();
        let owner = &self.owner;
        // Runs call `i`, unless a person denied it.
        let run = |i: usize| -> ToolOutput {
            if let Some(denial) = &denials[i] {
                return denial.clone();
            }
            let ctx = ToolContext {
                principal: owner,
                knowledge,
                cancel,
                progress: Some(&sinks[i]),
            };
            run_tool(tools, &calls[i], &ctx)
        };
        thread::scope(|scope| {
            let run = &run;
            let mut others: Vec<_> = (1..calls.len())
                .map(|i| {
                    if denials[i].is_some() {
                        return None;
                    }
                    thread::Builder::new()
                        .name("tool".into())
                        .spawn_scoped(scope, move || run(i))
                        .inspect_err(|e| {
                            log::warn!(
                                "turn {turn_id}: no thread for a tool call, running it in turn: {e}"
                            );
                        })
                        .ok()
                })
                .collect();
            let mut messages = Vec::with_capacity(calls.len());
            for (i, call) in calls.iter().enumerate() {
                let handle = i
                    .checked_sub(1)
                    .and_then(|other| others.get_mut(other))
                    .and_then(Option::take);
                let output = match handle {
                    Some(handle) => handle.join().unwrap_or_else(|_| {
                        let crashed = format!("the {} tool crashed", call.name);
                        ToolOutput::text(ToolStatus::Error, crashed)
                    }),
                    None => run(i),
                };
                let result = ServerFrame::ToolResult {
                    turn_id,
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    status: output.status,
                    result: output.shown(),
                };
                // The scope waits for the calls still running; they see the cancel flag.
                if cancel.is_cancelled() || !events.emit(result) {
                    return None;
                }
                let is_error = output.status == ToolStatus::Error;
                let mut message = ChatMessage::tool_result(&call.id, output.for_model(), is_error);
                if self.engine.model.accepts_images() {
                    message.images = output.images;
                }
                messages.push(message);
            }
            Some(messages)
        })
    }

    /// Asks a person about every call of the step whose tool needs approval (one
    /// `approval_request` each, all at once), then waits for the answers, all under one
    /// deadline (`--approval-timeout`). Returns, for each call, the error result that replaces
    /// it when it was denied or nobody answered in time, or `None` when the turn is no longer
    /// current (cancelled, or replaced by a newer message).
    fn approve(
        &self,
        calls: &[ToolCall],
        events: &dyn TurnEvents,
        cancel: &CancelFlag,
    ) -> Option<Vec<Option<ToolOutput>>> {
        let tools = &self.engine.tools;
        let asking: Vec<bool> = calls
            .iter()
            .map(|call| {
                matches!(call.args, ToolArgs::Parsed(_)) && tools.needs_approval(&call.name)
            })
            .collect();
        for (call, _) in calls.iter().zip(&asking).filter(|(_, ask)| **ask) {
            let request = ServerFrame::ApprovalRequest {
                turn_id: self.turn_id,
                call_id: call.id.clone(),
                name: call.name.clone(),
                args: call.args.frame_value(),
            };
            if cancel.is_cancelled() || !events.ask_approval(&call.id, request) {
                return None;
            }
        }
        let timeout = self.engine.approval_timeout;
        let deadline = Instant::now() + timeout;
        let mut denials = Vec::with_capacity(calls.len());
        for (call, ask) in calls.iter().zip(asking) {
            if !ask {
                denials.push(None);
                continue;
            }
            let denied = match events.await_approval(&call.id, deadline, cancel) {
                Verdict::Allowed => None,
                Verdict::Denied => Some("the user denied this call; it was not run".to_owned()),
                Verdict::TimedOut => Some(format!(
                    "nobody allowed this call within {}; it was not run",
                    crate::tools::mcp::round_duration(timeout)
                )),
                Verdict::Cancelled => return None,
            };
            if let Some(reason) = &denied {
                log::info!("turn {}: {} not run: {reason}", self.turn_id, call.name);
            }
            denials.push(denied.map(|text| ToolOutput::text(ToolStatus::Error, text)));
        }
        Some(denials)
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
        let frame = ServerFrame::Error {
            turn_id: Some(self.turn_id),
            code,
            message: message.to_owned(),
        };
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

/// Runs one tool call through the ToolChain. Arguments the model wrote as something other than
/// a JSON object ([`ToolArgs::Unparsed`]) get an error result without running the tool.
fn run_tool(tools: &ToolChain, call: &ToolCall, ctx: &ToolContext<'_>) -> ToolOutput {
    match &call.args {
        ToolArgs::Parsed(args) => tools.call(&call.name, args, ctx),
        ToolArgs::Unparsed(raw) => {
            let text = format!(
                "the arguments of {} are not a JSON object: {raw}; call it again with a JSON \
                 object",
                call.name
            );
            ToolOutput::text(ToolStatus::Error, text)
        }
    }
}

/// Where one tool call's progress goes: `tool_progress` frames of the turn, at most one per
/// [`PROGRESS_INTERVAL`].
struct CallProgress<'a> {
    events: &'a dyn TurnEvents,
    turn_id: TurnId,
    call_id: &'a str,
    /// When the last frame went out.
    last: Mutex<Option<Instant>>,
}

impl ProgressSink for CallProgress<'_> {
    fn report(&self, progress: Progress) {
        let finished = progress
            .total
            .is_some_and(|total| progress.progress >= total);
        {
            let mut last = self.last.lock();
            let now = Instant::now();
            if !finished && last.is_some_and(|at| now.duration_since(at) < PROGRESS_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        self.events.emit(ServerFrame::ToolProgress {
            turn_id: self.turn_id,
            call_id: self.call_id.to_owned(),
            progress: progress.progress,
            total: progress.total,
            message: progress.message,
        });
    }
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

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;
    use serde_json::{Value, json};

    use super::*;
    use crate::common::error::Result;
    use crate::model::offline::OfflineModel;
    use crate::model::{ModelReply, ToolCall, ToolSpec};
    use crate::tools::Tool;
    use crate::tools::error::ToolError;

    /// Records what a turn sends; refuses everything once `open` is false.
    struct Recorder {
        frames: Mutex<Vec<ServerFrame>>,
        committed: Mutex<Vec<ChatMessage>>,
        reset: Mutex<bool>,
        open: bool,
    }

    impl Recorder {
        fn new() -> Self {
            Recorder {
                frames: Mutex::new(Vec::new()),
                committed: Mutex::new(Vec::new()),
                reset: Mutex::new(false),
                open: true,
            }
        }
    }

    impl TurnEvents for Recorder {
        fn emit(&self, frame: ServerFrame) -> bool {
            self.open && {
                self.frames.lock().push(frame);
                true
            }
        }
        fn close(&self, frame: ServerFrame, transcript: Vec<ChatMessage>) -> bool {
            self.open && {
                self.frames.lock().push(frame);
                self.committed.lock().extend(transcript);
                true
            }
        }
        fn close_resetting(&self, frame: ServerFrame, transcript: Vec<ChatMessage>) -> bool {
            self.committed.lock().clear();
            *self.reset.lock() = true;
            self.close(frame, transcript)
        }
        fn ask_approval(&self, _call_id: &str, request: ServerFrame) -> bool {
            self.emit(request)
        }
        fn await_approval(&self, call_id: &str, _: Instant, _: &CancelFlag) -> Verdict {
            // The test names the verdict in the call id.
            match call_id {
                "allow" => Verdict::Allowed,
                "late" => Verdict::TimedOut,
                "stop" => Verdict::Cancelled,
                _ => Verdict::Denied,
            }
        }
    }

    struct Echo;
    impl Tool for Echo {
        fn name(&self) -> &str {
            "echo"
        }
        fn description(&self) -> &str {
            "echoes"
        }
        fn parameters(&self) -> Value {
            json!({"type": "object"})
        }
        fn call(&self, args: &Value, _ctx: &ToolContext<'_>) -> Result<String, ToolError> {
            Ok(args.to_string())
        }
    }

    /// A model that always calls a tool, to hit the step limit.
    struct Loop;
    impl ModelBackend for Loop {
        fn name(&self) -> String {
            "loop".into()
        }
        fn complete(
            &self,
            _: Conversation<'_>,
            _: &[ToolSpec],
            _: &mut dyn ReplySink,
        ) -> Result<ModelReply> {
            let call = ToolCall {
                id: "x".into(),
                name: "echo".into(),
                args: json!({}).into(),
            };
            Ok(ModelReply {
                text: String::new(),
                tool_calls: vec![call],
                ..ModelReply::default()
            })
        }
    }

    fn engine(model: Arc<dyn ModelBackend>) -> Engine {
        let mut tools = ToolChain::new();
        tools.add(Arc::new(Echo));
        Engine {
            model,
            tools: Arc::new(tools),
            max_steps: 3,
            memory: None,
            metrics: Arc::default(),
            system_prompt: None,
            context_tokens: None,
            approval_timeout: Duration::from_secs(300),
        }
    }

    fn run(bot: &Bot, text: &str, events: &Recorder) -> TurnOutcome {
        bot.start_turn(TurnId(1), text, &Principal::local()).run(
            events,
            &CancelFlag::new(),
            &Knowledge::new(),
        )
    }

    #[test]
    fn a_tool_turn_sends_use_result_and_answer_and_commits_all_of_it() {
        let bot = Bot::new(
            engine(Arc::new(OfflineModel)),
            Some("be nice".into()),
            Vec::new(),
        );
        let events = Recorder::new();
        assert_eq!(
            run(&bot, "/tool echo {\"a\":1}", &events),
            TurnOutcome::Answered
        );
        let frames = events.frames.lock();
        assert!(matches!(frames[0], ServerFrame::Thought { .. }));
        assert!(matches!(&frames[1], ServerFrame::ToolUse { name, .. } if name == "echo"));
        assert!(
            matches!(&frames[2], ServerFrame::ToolResult { result, .. } if result == "{\"a\":1}")
        );
        assert!(matches!(&frames[3], ServerFrame::Message { text, .. } if text == "{\"a\":1}"));
        let roles: Vec<Role> = events.committed.lock().iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::User, Role::Assistant, Role::Tool, Role::Assistant]
        );
    }

    #[test]
    fn the_step_limit_ends_the_turn_with_an_error_and_a_clean_history() {
        let bot = Bot::new(engine(Arc::new(Loop)), None, Vec::new());
        let events = Recorder::new();
        assert_eq!(run(&bot, "go", &events), TurnOutcome::Failed);
        let last = events.frames.lock().last().cloned();
        assert!(matches!(
            last,
            Some(ServerFrame::Error {
                code: ErrorCode::StepLimit,
                ..
            })
        ));
        let roles: Vec<Role> = events.committed.lock().iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::User, Role::Assistant]);
    }

    #[test]
    fn a_refused_emit_stops_the_turn() {
        let bot = Bot::new(engine(Arc::new(OfflineModel)), None, Vec::new());
        let events = Recorder {
            open: false,
            ..Recorder::new()
        };
        assert_eq!(run(&bot, "hello", &events), TurnOutcome::Cancelled);
        assert!(events.frames.lock().is_empty());
    }

    /// A question and its answer.
    fn exchange(question: &str, answer: &str) -> Vec<ChatMessage> {
        vec![
            ChatMessage::text(Role::User, question),
            ChatMessage::text(Role::Assistant, answer),
        ]
    }

    #[test]
    fn history_is_trimmed_at_a_user_message() {
        let mut bot = Bot::new(engine(Arc::new(OfflineModel)), None, Vec::new());
        for i in 0..MAX_HISTORY_MESSAGES {
            bot.commit(exchange(&format!("q{i}"), "a"));
        }
        assert!(bot.history().len() <= MAX_HISTORY_MESSAGES);
        assert_eq!(bot.history()[0].role, Role::User);
    }

    #[test]
    fn history_is_bounded_in_bytes_but_keeps_the_last_exchange() {
        let mut bot = Bot::new(engine(Arc::new(OfflineModel)), None, Vec::new());
        let big = "x".repeat(MAX_HISTORY_BYTES / 4);
        for i in 0..20 {
            bot.commit(exchange(&format!("q{i} {big}"), "a"));
        }
        let bytes: usize = bot.history().iter().map(message_bytes).sum();
        assert!(bytes <= MAX_HISTORY_BYTES, "{bytes}");
        assert_eq!(bytes, bot.bytes);
        assert_eq!(bot.history()[0].role, Role::User);
        assert_eq!(bot.end_index(), 40);
        let huge = "y".repeat(MAX_HISTORY_BYTES * 2);
        bot.commit(exchange(&huge, "a"));
        assert_eq!(bot.history().len(), 2, "only the last exchange");
        assert_eq!(bot.history()[0].content, huge);
    }

    /// A model that answers from a script, one entry per step, and records how much earlier
    /// conversation each step saw.
    struct Scripted {
        replies: Mutex<Vec<Result<ModelReply>>>,
        earlier_seen: Mutex<Vec<usize>>,
    }

    impl Scripted {
        fn new(mut replies: Vec<Result<ModelReply>>) -> Self {
            replies.reverse();
            Scripted {
                replies: Mutex::new(replies),
                earlier_seen: Mutex::new(Vec::new()),
            }
        }
    }

    impl ModelBackend for Scripted {
        fn name(&self) -> String {
            "scripted".into()
        }
        fn complete(
            &self,
            conversation: Conversation<'_>,
            _: &[ToolSpec],
            _: &mut dyn ReplySink,
        ) -> Result<ModelReply> {
            self.earlier_seen.lock().push(conversation.earlier.len());
            self.replies.lock().pop().unwrap_or_else(|| {
                Err(Error::Model {
                    backend: "scripted".into(),
                    detail: "out of script".into(),
                })
            })
        }
    }

    fn answer(text: &str) -> Result<ModelReply> {
        Ok(ModelReply {
            text: text.into(),
            tool_calls: Vec::new(),
            ..ModelReply::default()
        })
    }

    fn rejected() -> Result<ModelReply> {
        Err(Error::HistoryRejected {
            backend: "scripted".into(),
            detail: "bad history".into(),
        })
    }

    fn statuses(frames: &[ServerFrame]) -> Vec<StatusCode> {
        frames
            .iter()
            .filter_map(|frame| match frame {
                ServerFrame::Status(status) => Some(status.code),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_rejected_history_is_dropped_once_and_the_step_retried() {
        let model = Arc::new(Scripted::new(vec![rejected(), answer("fine")]));
        let mut bot = Bot::new(engine(model.clone()), Some("sys".into()), Vec::new());
        bot.commit(exchange("old", "old answer"));
        let events = Recorder::new();
        assert_eq!(run(&bot, "new", &events), TurnOutcome::Answered);
        assert_eq!(*model.earlier_seen.lock(), [2, 0]);
        assert_eq!(statuses(&events.frames.lock()), [StatusCode::HistoryReset]);
        assert!(*events.reset.lock());
        let committed: Vec<String> = events
            .committed
            .lock()
            .iter()
            .map(|m| m.content.clone())
            .collect();
        assert_eq!(committed, ["new", "fine"]);
        bot.clear_history();
        assert!(bot.history().is_empty());
        assert_eq!(bot.first_index(), 2);
    }

    /// A tool source with no tools and fixed instructions.
    struct Instructed(&'static str);

    impl crate::tools::ToolSource for Instructed {
        fn tools(&self) -> Arc<[Arc<dyn crate::tools::Tool>]> {
            Arc::from([])
        }
        fn generation(&self) -> u64 {
            0
        }
        fn instructions(&self) -> String {
            self.0.to_owned()
        }
    }

    #[test]
    fn the_tools_instructions_follow_the_system_prompt() {
        let text = "Instructions from the MCP server fx:\nCall echo first.";
        let mut engine = engine(Arc::new(Scripted::new(Vec::new())));
        let mut tools = (*engine.tools).clone();
        tools.set_source(Arc::new(Instructed(text)));
        engine.tools = Arc::new(tools);
        let bot = Bot::new(engine.clone(), Some("be a pirate".into()), Vec::new());
        let turn = bot.start_turn(TurnId(1), "hi", &Principal::local());
        assert_eq!(turn.head[0].role, Role::System);
        assert_eq!(turn.head[0].content, format!("be a pirate\n\n{text}"));
        // With no prompt at all, the instructions are the system message.
        let bot = Bot::new(engine, None, Vec::new());
        let turn = bot.start_turn(TurnId(1), "hi", &Principal::local());
        assert_eq!(turn.head[0].content, text);
    }

    #[test]
    fn the_answer_carries_the_usage_of_every_step_and_the_system_prompt_is_first() {
        let counted = |prompt, completion| {
            Some(Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
            })
        };
        let step = ModelReply {
            text: String::new(),
            tool_calls: vec![ToolCall {
                id: "a".into(),
                name: "echo".into(),
                args: json!({}).into(),
            }],
            usage: counted(10, 2),
            truncated: false,
        };
        let last = ModelReply {
            usage: counted(15, 7),
            ..answer("done").unwrap()
        };
        let model = Arc::new(Scripted::new(vec![Ok(step), Ok(last)]));
        let bot = Bot::new(engine(model), Some("be a pirate".into()), Vec::new());
        let turn = bot.start_turn(TurnId(1), "hi", &Principal::local());
        assert_eq!(turn.head[0].role, Role::System);
        assert_eq!(turn.head[0].content, "be a pirate");
        let events = Recorder::new();
        assert_eq!(run(&bot, "what time is it", &events), TurnOutcome::Answered);
        let frames = events.frames.lock();
        assert!(
            matches!(frames.last(), Some(ServerFrame::Message { usage, .. }) if *usage == counted(25, 9)),
            "{frames:?}"
        );
        let unreported = Arc::new(Scripted::new(vec![answer("plain")]));
        let events = Recorder::new();
        run(
            &Bot::new(engine(unreported), None, Vec::new()),
            "x",
            &events,
        );
        assert!(matches!(
            events.frames.lock().last(),
            Some(ServerFrame::Message { usage: None, .. })
        ));
    }

    #[test]
    fn a_second_rejection_fails_the_turn() {
        let model = Arc::new(Scripted::new(vec![rejected(), rejected()]));
        let bot = Bot::new(engine(model), None, Vec::new());
        let events = Recorder::new();
        assert_eq!(run(&bot, "new", &events), TurnOutcome::Failed);
        let frames = events.frames.lock();
        assert!(matches!(
            frames.last(),
            Some(ServerFrame::Error { code: ErrorCode::ModelError, message, .. })
                if message.contains("bad history")
        ));
        assert!(*events.reset.lock());
    }

    /// A tool that waits (boundedly) until two calls of it are running at once.
    struct Together {
        running: Mutex<usize>,
        changed: parking_lot::Condvar,
    }

    impl Tool for Together {
        fn name(&self) -> &str {
            "together"
        }
        fn description(&self) -> &str {
            "waits for a second call"
        }
        fn parameters(&self) -> Value {
            json!({"type": "object"})
        }
        fn call(&self, args: &Value, _ctx: &ToolContext<'_>) -> Result<String, ToolError> {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mut running = self.running.lock();
            *running += 1;
            self.changed.notify_all();
            while *running < 2 {
                if self.changed.wait_until(&mut running, deadline).timed_out() {
                    return Err(ToolError::failed("alone"));
                }
            }
            Ok(format!("together {}", args["n"]))
        }
    }

    #[test]
    fn tool_calls_of_one_step_run_side_by_side_and_report_in_order() {
        let call = |id: &str, name: &str, args: ToolArgs| ToolCall {
            id: id.into(),
            name: name.into(),
            args,
        };
        let calls = vec![
            call("a", "together", json!({"n": 1}).into()),
            call("b", "together", json!({"n": 2}).into()),
            call("c", "echo", ToolArgs::Unparsed("{oops".into())),
        ];
        let model = Arc::new(Scripted::new(vec![
            Ok(ModelReply {
                text: String::new(),
                tool_calls: calls,
                ..ModelReply::default()
            }),
            answer("done"),
        ]));
        let mut engine = engine(model);
        let mut tools = (*engine.tools).clone();
        tools.add(Arc::new(Together {
            running: Mutex::new(0),
            changed: parking_lot::Condvar::new(),
        }));
        engine.tools = Arc::new(tools);
        let bot = Bot::new(engine, None, Vec::new());
        let events = Recorder::new();
        assert_eq!(run(&bot, "go", &events), TurnOutcome::Answered);
        let frames = events.frames.lock();
        let order: Vec<String> = frames
            .iter()
            .filter_map(|frame| match frame {
                ServerFrame::ToolUse { call_id, .. } => Some(format!("use {call_id}")),
                ServerFrame::ToolResult {
                    call_id, result, ..
                } => Some(format!("result {call_id}: {result}")),
                _ => None,
            })
            .collect();
        assert_eq!(order[..3], ["use a", "use b", "use c"]);
        assert_eq!(order[3], "result a: together 1");
        assert_eq!(order[4], "result b: together 2");
        assert!(order[5].starts_with("result c: the arguments of echo are not a JSON object"));
    }

    /// A tool that must be approved, and says how often it ran.
    struct Guarded(std::sync::atomic::AtomicUsize);
    impl Tool for Guarded {
        fn name(&self) -> &str {
            "guarded"
        }
        fn description(&self) -> &str {
            "needs a person"
        }
        fn parameters(&self) -> Value {
            json!({"type": "object"})
        }
        fn call(&self, _args: &Value, _ctx: &ToolContext<'_>) -> Result<String, ToolError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok("ran".into())
        }
        fn needs_approval(&self) -> bool {
            true
        }
    }

    #[test]
    fn calls_that_need_approval_are_asked_for_and_only_allowed_ones_run() {
        let call = |id: &str, name: &str| ToolCall {
            id: id.into(),
            name: name.into(),
            args: json!({}).into(),
        };
        // The Recorder's verdict is named by the call id.
        let calls = vec![
            call("allow", "guarded"),
            call("deny", "guarded"),
            call("late", "guarded"),
            call("free", "echo"),
        ];
        let model = Arc::new(Scripted::new(vec![
            Ok(ModelReply {
                tool_calls: calls,
                ..ModelReply::default()
            }),
            answer("done"),
        ]));
        let mut asking = engine(model);
        asking.approval_timeout = Duration::from_secs(90);
        let guarded = Arc::new(Guarded(Default::default()));
        let mut tools = (*asking.tools).clone();
        tools.add(guarded.clone());
        asking.tools = Arc::new(tools);
        let bot = Bot::new(asking, None, Vec::new());
        let events = Recorder::new();
        assert_eq!(run(&bot, "go", &events), TurnOutcome::Answered);
        let order: Vec<String> = events
            .frames
            .lock()
            .iter()
            .filter_map(|frame| match frame {
                ServerFrame::ToolUse { call_id, .. } => Some(format!("use {call_id}")),
                ServerFrame::ApprovalRequest { call_id, .. } => Some(format!("ask {call_id}")),
                ServerFrame::ToolResult {
                    call_id, result, ..
                } => Some(format!("result {call_id}: {result}")),
                _ => None,
            })
            .collect();
        assert_eq!(
            order,
            [
                "use allow",
                "use deny",
                "use late",
                "use free",
                "ask allow",
                "ask deny",
                "ask late",
                "result allow: ran",
                "result deny: the user denied this call; it was not run",
                "result late: nobody allowed this call within 90s; it was not run",
                "result free: {}",
            ]
        );
        assert_eq!(guarded.0.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A cancel during the wait ends the turn with nothing run.
        let model = Arc::new(Scripted::new(vec![Ok(ModelReply {
            tool_calls: vec![call("stop", "guarded")],
            ..ModelReply::default()
        })]));
        let mut stopping = engine(model);
        let mut tools = (*stopping.tools).clone();
        tools.add(guarded.clone());
        stopping.tools = Arc::new(tools);
        let bot = Bot::new(stopping, None, Vec::new());
        let events = Recorder::new();
        assert_eq!(run(&bot, "go", &events), TurnOutcome::Cancelled);
        assert_eq!(guarded.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn progress_is_relayed_at_most_once_per_interval_but_the_last_report_always() {
        let events = Recorder::new();
        let sink = CallProgress {
            events: &events,
            turn_id: TurnId(1),
            call_id: "c",
            last: Mutex::new(None),
        };
        let report = |progress: f64| Progress {
            progress,
            total: Some(10.0),
            message: None,
        };
        for step in 1..=9 {
            sink.report(report(f64::from(step)));
        }
        sink.report(report(10.0));
        let sent: Vec<f64> = events
            .frames
            .lock()
            .iter()
            .filter_map(|frame| match frame {
                ServerFrame::ToolProgress { progress, .. } => Some(*progress),
                _ => None,
            })
            .collect();
        // Nine reports in far less than the interval: the first goes out, then the last.
        assert_eq!(sent, [1.0, 10.0]);
    }
}
