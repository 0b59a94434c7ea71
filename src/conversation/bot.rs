//! `Bot`: one session's conversation (its personality, its model, the messages so far, trimmed
//! to a bound) and the `Engine` every bot of a server shares. A turn runs on a snapshot of it
//! (`agent.rs`).
//!
//! Depends on: `common::metrics`, `files`, `model`, `store`, `tools`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::common::metrics::Metrics;
use crate::files::Library;
use crate::model::{ChatMessage, ModelBackend, Role};
use crate::store::GraphStore;
use crate::tools::ToolChain;

/// The most conversation messages a session keeps. Older ones are dropped a whole exchange at a
/// time, so that the model's context stays bounded and every turn copies a bounded history.
pub const MAX_HISTORY_MESSAGES: usize = 200;

/// The most bytes of conversation a session keeps in memory (text, tool calls and results),
/// trimmed like [`MAX_HISTORY_MESSAGES`]: more than any model's context holds, and a bound on a
/// session's memory however large its messages. The last exchange is kept whatever its size.
pub const MAX_HISTORY_BYTES: usize = 2 << 20;

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
    /// The files users attach and tools return, and their text; `None` in a server without
    /// files (tests of the loop alone).
    pub files: Option<Library>,
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

/// A session's conversation: the system prompt and the messages so far.
#[derive(Debug)]
pub struct Bot {
    engine: Engine,
    system: Option<String>,
    /// The model the conversation chose; `None` for the backend's default.
    model: Option<String>,
    /// The current path's conversation, newest part: shared with running turns as a snapshot
    /// (a turn clones the `Arc`, not the messages).
    history: Arc<Vec<ChatMessage>>,
    /// The number the next committed message gets: messages are numbered in the order they
    /// were committed, across every branch.
    next_index: u64,
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
        let next_index = seed.len() as u64;
        Self::restore(engine, personality, next_index, seed)
    }

    /// A bot whose current path's conversation is `history`, and whose next committed message
    /// is number `next_index`.
    pub fn restore(
        engine: Engine,
        personality: Option<String>,
        next_index: u64,
        history: Vec<ChatMessage>,
    ) -> Self {
        let mut bot = Bot {
            engine,
            system: personality,
            model: None,
            bytes: 0,
            history: Arc::default(),
            next_index,
        };
        bot.follow(history);
        bot
    }

    /// Makes `history` the conversation the model sees: another path's, after a `switch`, an
    /// `edit` or a `regenerate`. Numbering goes on.
    pub fn follow(&mut self, history: Vec<ChatMessage>) {
        self.bytes = history.iter().map(message_bytes).sum();
        self.history = Arc::new(history);
        self.trim();
    }

    /// The number the next committed message gets.
    pub fn next_index(&self) -> u64 {
        self.next_index
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
    /// The system message a turn of this conversation starts with: its personality, else the
    /// server's prompt, followed by the tools' instructions (the MCP servers'), with `{date}`
    /// replaced by today's date. `None` when there is none of them.
    pub(crate) fn system_message(&self) -> Option<ChatMessage> {
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
        system.map(|system| ChatMessage::text(Role::System, with_date(&system)))
    }

    /// The conversation so far, shared rather than copied: what a turn runs on, without the
    /// session's lock. A commit copies the messages only while a turn still holds it.
    pub(crate) fn snapshot(&self) -> Arc<Vec<ChatMessage>> {
        self.history.clone()
    }

    /// Adds a finished turn's messages to the conversation. The messages are copied only when a
    /// turn (a cancelled one still winding down) holds a snapshot.
    pub fn commit(&mut self, transcript: Vec<ChatMessage>) {
        self.next_index += transcript.len() as u64;
        self.bytes += transcript.iter().map(message_bytes).sum::<usize>();
        Arc::make_mut(&mut self.history).extend(transcript);
        self.trim();
    }

    /// Forgets the conversation (the system prompt stays), after the model rejected it as
    /// malformed. Numbering goes on.
    pub fn clear_history(&mut self) {
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

#[cfg(test)]
impl Engine {
    /// An engine for unit tests: `model` and `tools`, three steps, no memory and no system
    /// prompt.
    pub(crate) fn for_tests(model: Arc<dyn ModelBackend>, tools: ToolChain) -> Self {
        Engine {
            model,
            tools: Arc::new(tools),
            max_steps: 3,
            memory: None,
            metrics: Arc::default(),
            system_prompt: None,
            context_tokens: None,
            approval_timeout: Duration::from_secs(300),
            files: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::offline::OfflineModel;

    fn bot() -> Bot {
        Bot::new(
            Engine::for_tests(Arc::new(OfflineModel), ToolChain::new()),
            None,
            Vec::new(),
        )
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
        let mut bot = bot();
        for i in 0..MAX_HISTORY_MESSAGES {
            bot.commit(exchange(&format!("q{i}"), "a"));
        }
        assert!(bot.history().len() <= MAX_HISTORY_MESSAGES);
        assert_eq!(bot.history()[0].role, Role::User);
    }

    #[test]
    fn history_is_bounded_in_bytes_but_keeps_the_last_exchange() {
        let mut bot = bot();
        let big = "x".repeat(MAX_HISTORY_BYTES / 4);
        for i in 0..20 {
            bot.commit(exchange(&format!("q{i} {big}"), "a"));
        }
        let bytes: usize = bot.history().iter().map(message_bytes).sum();
        assert!(bytes <= MAX_HISTORY_BYTES, "{bytes}");
        assert_eq!(bytes, bot.bytes);
        assert_eq!(bot.history()[0].role, Role::User);
        assert_eq!(bot.next_index(), 40);
        let huge = "y".repeat(MAX_HISTORY_BYTES * 2);
        bot.commit(exchange(&huge, "a"));
        assert_eq!(bot.history().len(), 2, "only the last exchange");
        assert_eq!(bot.history()[0].content, huge);
    }
}
