//! `Bot`: one session's conversation and the agent loop that runs a turn on it (model, then
//! tools, then model again). Depends on `model`, `tools`, `knowledge`, `cancel` and `protocol`;
//! it knows nothing of sessions or clients and reaches the outside only through [`TurnEvents`].

use std::fmt;
use std::sync::Arc;

use crate::cancel::CancelFlag;
use crate::knowledge::Knowledge;
use crate::model::{ChatMessage, Conversation, MEMORY_PREFIX, ModelBackend, ReplySink, Role};
use crate::protocol::{ErrorCode, ServerFrame, TurnId};
use crate::store::Store;
use crate::tools::{ToolChain, ToolContext};

/// The most conversation messages a session keeps. Older ones are dropped a whole exchange at a
/// time, so that the model's context stays bounded and every turn copies a bounded history.
pub const MAX_HISTORY_MESSAGES: usize = 200;

/// Graph entries put into a turn's context at most.
pub const MEMORY_ENTRIES: usize = 3;

/// Characters of one graph entry put into a turn's context at most.
pub const MEMORY_ENTRY_CHARS: usize = 300;

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
    pub memory: Option<Arc<dyn Store>>,
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
/// is still the current one, so that nothing of a cancelled turn is ever sent.
pub trait TurnEvents {
    /// Sends an event of the turn. False when the turn is no longer current: stop working.
    fn emit(&self, frame: ServerFrame) -> bool;

    /// Sends the frame that closes the turn and adds `transcript` to the conversation, as one
    /// step. False when the turn is no longer current (nothing is sent or kept then).
    fn close(&self, frame: ServerFrame, transcript: Vec<ChatMessage>) -> bool;
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
    /// Shared with running turns as a snapshot: a turn clones the `Arc`, not the messages.
    history: Arc<Vec<ChatMessage>>,
    /// The number of `history[0]` in the whole conversation (older messages were trimmed).
    first_index: u64,
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

    /// The conversation so far, oldest first, without the system prompt.
    pub fn history(&self) -> &[ChatMessage] {
        &self.history
    }

    /// The engine the bot runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Prepares a turn on a snapshot of the conversation, so that it can run without the
    /// session's lock. The snapshot shares the messages; nothing is copied.
    pub fn start_turn(&self, turn_id: TurnId, text: &str) -> Turn {
        let head = self
            .system
            .iter()
            .map(|system| ChatMessage::text(Role::System, system.clone()))
            .collect();
        Turn {
            engine: self.engine.clone(),
            turn_id,
            head,
            history: self.history.clone(),
            current: vec![ChatMessage::text(Role::User, text)],
            user_index: 0,
        }
    }

    /// Adds a finished turn's messages to the conversation. The messages are copied only when a
    /// turn (a cancelled one still winding down) holds a snapshot.
    pub fn commit(&mut self, transcript: Vec<ChatMessage>) {
        Arc::make_mut(&mut self.history).extend(transcript);
        self.trim();
    }

    /// Records a turn that ended without an answer: the user's message and a note of what
    /// happened, so that the conversation stays well formed (no dangling tool call).
    pub fn commit_interrupted(&mut self, user_text: &str, note: &str) {
        self.commit(interrupted(user_text, note));
    }

    /// Drops the oldest exchanges past the cap; the history then starts at a user message.
    fn trim(&mut self) {
        if self.history.len() <= MAX_HISTORY_MESSAGES {
            return;
        }
        let excess = self.history.len() - MAX_HISTORY_MESSAGES;
        let cut = self.history[excess..]
            .iter()
            .position(|m| m.role == Role::User)
            .map_or(self.history.len(), |i| excess + i);
        Arc::make_mut(&mut self.history).drain(..cut);
        self.first_index += cut as u64;
    }
}

/// The transcript of a turn that ended without an answer.
pub fn interrupted(user_text: &str, note: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::text(Role::User, user_text),
        ChatMessage::text(Role::Assistant, note),
    ]
}

/// One turn, ready to run on a worker thread.
pub struct Turn {
    engine: Engine,
    turn_id: TurnId,
    /// The system prompt, if any.
    head: Vec<ChatMessage>,
    /// The conversation before this turn: the session's snapshot.
    history: Arc<Vec<ChatMessage>>,
    /// This turn's messages: maybe memory, the user's message, then tool calls and results.
    current: Vec<ChatMessage>,
    /// Index of the user's message in `current`.
    user_index: usize,
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
        let specs = tools.specs();
        if !self.recall_memory(events) {
            return TurnOutcome::Cancelled;
        }
        for _step in 0..self.engine.max_steps {
            if cancel.is_cancelled() {
                return TurnOutcome::Cancelled;
            }
            let mut sink = FrameSink {
                events,
                cancel,
                turn_id,
                live: true,
            };
            let conversation = Conversation {
                head: &self.head,
                earlier: &self.history,
                current: &self.current,
            };
            let reply = self.engine.model.complete(conversation, specs, &mut sink);
            if !sink.live || cancel.is_cancelled() {
                return TurnOutcome::Cancelled;
            }
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) => return self.fail(events, ErrorCode::ModelError, &e.to_string()),
            };
            if reply.tool_calls.is_empty() {
                let answer = ServerFrame::Message {
                    turn_id,
                    text: reply.text.clone(),
                };
                self.current
                    .push(ChatMessage::text(Role::Assistant, reply.text));
                let transcript = self.current.split_off(self.user_index);
                // Let go of the snapshot first, so that the commit extends the history in place.
                self.history = Arc::default();
                return if events.close(answer, transcript) {
                    TurnOutcome::Answered
                } else {
                    TurnOutcome::Cancelled
                };
            }
            let calls = reply.tool_calls;
            self.current
                .push(ChatMessage::tool_calls(reply.text, calls.clone()));
            for call in calls {
                let used = ServerFrame::ToolUse {
                    turn_id,
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    args: call.args.clone(),
                };
                if cancel.is_cancelled() || !events.emit(used) {
                    return TurnOutcome::Cancelled;
                }
                let ctx = ToolContext { knowledge, cancel };
                let output = self.engine.tools.call(&call.name, &call.args, &ctx);
                let result = ServerFrame::ToolResult {
                    turn_id,
                    call_id: call.id.clone(),
                    name: call.name,
                    status: output.status,
                    result: output.text.clone(),
                };
                if cancel.is_cancelled() || !events.emit(result) {
                    return TurnOutcome::Cancelled;
                }
                let is_error = output.status == crate::protocol::ToolStatus::Error;
                self.current
                    .push(ChatMessage::tool_result(&call.id, output.text, is_error));
            }
        }
        let limit = self.engine.max_steps;
        self.fail(
            events,
            ErrorCode::StepLimit,
            &format!("the turn took more than {limit} model steps"),
        )
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
        let hits = match memory.search(text, None, MEMORY_ENTRIES) {
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
        let transcript = interrupted(self.user_text(), &format!("(no reply: {message})"));
        if events.close(frame, transcript) {
            TurnOutcome::Failed
        } else {
            TurnOutcome::Cancelled
        }
    }
}

/// Turns what a model streams into events of the turn.
struct FrameSink<'a> {
    events: &'a dyn TurnEvents,
    cancel: &'a CancelFlag,
    turn_id: TurnId,
    /// False once an emit was refused: the turn is over for the session.
    live: bool,
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
            };
            self.live = self.events.emit(frame);
        }
    }

    fn is_cancelled(&self) -> bool {
        !self.live || self.cancel.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;
    use serde_json::{Value, json};

    use super::*;
    use crate::error::Result;
    use crate::model::offline::OfflineModel;
    use crate::model::{ModelReply, ToolCall, ToolSpec};
    use crate::tools::Tool;

    /// Records what a turn sends; refuses everything once `open` is false.
    struct Recorder {
        frames: Mutex<Vec<ServerFrame>>,
        committed: Mutex<Vec<ChatMessage>>,
        open: bool,
    }

    impl Recorder {
        fn new() -> Self {
            Recorder {
                frames: Mutex::new(Vec::new()),
                committed: Mutex::new(Vec::new()),
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
        fn call(&self, args: &Value, _ctx: &ToolContext<'_>) -> Result<String, String> {
            Ok(args.to_string())
        }
    }

    /// A model that always calls a tool, to hit the step limit.
    struct Loop;
    impl ModelBackend for Loop {
        fn name(&self) -> &str {
            "loop"
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
                args: json!({}),
            };
            Ok(ModelReply {
                text: String::new(),
                tool_calls: vec![call],
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
        }
    }

    fn run(bot: &Bot, text: &str, events: &Recorder) -> TurnOutcome {
        bot.start_turn(TurnId(1), text)
            .run(events, &CancelFlag::new(), &Knowledge::new())
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

    #[test]
    fn history_is_trimmed_at_a_user_message() {
        let mut bot = Bot::new(engine(Arc::new(OfflineModel)), None, Vec::new());
        for i in 0..MAX_HISTORY_MESSAGES {
            bot.commit(interrupted(&format!("q{i}"), "a"));
        }
        assert!(bot.history().len() <= MAX_HISTORY_MESSAGES);
        assert_eq!(bot.history()[0].role, Role::User);
    }
}
