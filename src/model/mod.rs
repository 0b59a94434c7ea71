//! The model side of a turn: the conversation it sees (`ChatMessage`), what it answers
//! (`ModelReply`), and the `ModelBackend` trait that each provider implements.
//!
//! Depends on: `common::cancel`, `common::error`, `common::protocol`, `model::error`.

pub mod attached;
pub mod backfill;
pub mod embed;
pub mod error;
pub mod offline;
pub mod openai;

use std::time::Duration;

use serde_json::Value;

use crate::common::cancel::OnCancel;
use crate::common::error::Result;
use crate::common::protocol::Usage;
use crate::model::error::ModelError;

/// How the system message that carries remembered facts into a turn begins.
pub const MEMORY_PREFIX: &str = "Relevant memory from earlier conversations:";

/// The arguments of a tool call as the model wrote them: a JSON object, or text that is not
/// one (usually broken JSON). The bot answers a call with [`ToolArgs::Unparsed`] arguments
/// with an error result, without running the tool, so that the model sees what was wrong and
/// can try again.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolArgs {
    /// A JSON object (always a `Value::Object`; build it with [`ToolArgs::from`]).
    Parsed(Value),
    /// What the model wrote, when it is not a JSON object.
    Unparsed(String),
}

/// The key under which [`ToolArgs::frame_value`] shows unparsed arguments in a `tool_use`
/// frame, whose `args` must be a JSON object (PROTOCOL.md), and under which stores written
/// before [`ToolArgs`] existed kept them. Only those two edges know it.
const UNPARSED_KEY: &str = "_unparsed_arguments";

impl From<Value> for ToolArgs {
    /// An object is parsed arguments and `null` is no arguments (`{}`); anything else is
    /// unparsed, as its JSON text.
    fn from(value: Value) -> Self {
        match value {
            Value::Object(_) => ToolArgs::Parsed(value),
            Value::Null => ToolArgs::Parsed(Value::Object(serde_json::Map::new())),
            other => ToolArgs::Unparsed(other.to_string()),
        }
    }
}

impl ToolArgs {
    /// The arguments as the model API carries them: the object's JSON text, or what the model
    /// wrote.
    pub fn to_text(&self) -> String {
        match self {
            ToolArgs::Parsed(value) => value.to_string(),
            ToolArgs::Unparsed(text) => text.clone(),
        }
    }

    /// The arguments for a `tool_use` frame: the object, or `{"_unparsed_arguments": text}`.
    pub fn frame_value(&self) -> Value {
        match self {
            ToolArgs::Parsed(value) => value.clone(),
            ToolArgs::Unparsed(text) => serde_json::json!({ UNPARSED_KEY: text }),
        }
    }

    /// The arguments as a store keeps them: the object, or a JSON string holding what the model
    /// wrote (which no object can be mistaken for).
    pub fn to_stored(&self) -> Value {
        match self {
            ToolArgs::Parsed(value) => value.clone(),
            ToolArgs::Unparsed(text) => Value::String(text.clone()),
        }
    }

    /// Reads back what [`to_stored`](Self::to_stored) wrote, and the
    /// `{"_unparsed_arguments": text}` objects that stores written before it hold.
    pub fn from_stored(value: Value) -> Self {
        match value {
            Value::String(text) => ToolArgs::Unparsed(text),
            Value::Object(map) if map.len() == 1 && map.contains_key(UNPARSED_KEY) => {
                match map.get(UNPARSED_KEY) {
                    Some(Value::String(text)) => ToolArgs::Unparsed(text.clone()),
                    Some(other) => ToolArgs::Unparsed(other.to_string()),
                    None => ToolArgs::Parsed(Value::Object(map)),
                }
            }
            other => ToolArgs::from(other),
        }
    }

    /// The length of [`to_text`](Self::to_text), near enough for sizing.
    pub fn text_len(&self) -> usize {
        match self {
            ToolArgs::Parsed(value) => value.to_string().len(),
            ToolArgs::Unparsed(text) => text.len(),
        }
    }
}

/// Who said a message of the conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The system prompt.
    System,
    /// The person.
    User,
    /// The bot.
    Assistant,
    /// A tool's answer to one of the bot's calls.
    Tool,
}

/// A call to a tool that the model asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// Pairs the call with its result; unique within a turn.
    pub id: String,
    /// The tool's name in the ToolChain.
    pub name: String,
    /// The arguments, parsed or not.
    pub args: ToolArgs,
}

/// An image a tool returned or a user attached: what a model that accepts images is sent beside
/// the message's text.
#[derive(Clone, PartialEq, Eq)]
pub struct Image {
    /// Its media type: `image/png`, `image/jpeg`, `image/gif` or `image/webp`.
    pub mime_type: String,
    /// The image, base64-encoded (the standard alphabet, padded).
    pub data: String,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("mime_type", &self.mime_type)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl Image {
    /// The image's size in bytes, decoded.
    pub fn bytes(&self) -> usize {
        let padding = self.data.bytes().rev().take_while(|b| *b == b'=').count();
        (self.data.len() / 4 * 3).saturating_sub(padding)
    }

    /// The image as a `data:` URL.
    pub fn data_url(&self) -> String {
        format!("data:{};base64,{}", self.mime_type, self.data)
    }

    /// What a model that is not sent the image reads instead: `[image: image/png, 12 KB]`.
    pub fn note(&self) -> String {
        format!(
            "[image: {}, {}]",
            self.mime_type,
            describe_bytes(self.bytes())
        )
    }
}

/// A size for people: `70 B`, `12 KB`, `3.1 MB` (decimal units, as file managers show them).
pub fn describe_bytes(bytes: usize) -> String {
    match bytes {
        0..1000 => format!("{bytes} B"),
        1000..1_000_000 => format!("{} KB", bytes.div_ceil(1000)),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

/// One message of the conversation a model sees.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said (for a tool message: the tool's output).
    pub content: String,
    /// For an assistant message: the tools it called.
    pub tool_calls: Vec<ToolCall>,
    /// For a tool message: the call it answers.
    pub tool_call_id: Option<String>,
    /// For a tool message: whether the tool failed.
    pub is_error: bool,
    /// For a tool message: the images the tool returned; for a user message: the images the
    /// user attached. For a model that accepts images
    /// (their notes are in `content`). Kept for the turn that made them only: never stored.
    pub images: Vec<Image>,
}

impl ChatMessage {
    /// A message with only a role and text.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            is_error: false,
            images: Vec::new(),
        }
    }

    /// An assistant message that calls tools.
    pub fn tool_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        ChatMessage {
            tool_calls: calls,
            ..Self::text(Role::Assistant, content)
        }
    }

    /// A tool's answer to the call `call_id`.
    pub fn tool_result(call_id: &str, content: impl Into<String>, is_error: bool) -> Self {
        ChatMessage {
            tool_call_id: Some(call_id.to_owned()),
            is_error,
            ..Self::text(Role::Tool, content)
        }
    }
}

/// The conversation one model step sees, in three parts that are read in order: the turn's
/// head (system prompt), the earlier conversation (shared with the session, not copied), and the
/// current turn's messages so far (memory, the user's message, tool calls and results).
#[derive(Clone, Copy, Debug)]
pub struct Conversation<'a> {
    /// The model the conversation chose (one of [`ModelBackend::models`]); `None` for the
    /// backend's default.
    pub model: Option<&'a str>,
    /// The system prompt, if any.
    pub head: &'a [ChatMessage],
    /// The conversation before this turn.
    pub earlier: &'a [ChatMessage],
    /// This turn's messages so far.
    pub current: &'a [ChatMessage],
    /// The most tokens the answer may take, when the caller bounds it (an MCP server's
    /// sampling request does); `None` leaves it to the model server.
    pub max_tokens: Option<u32>,
}

impl<'a> Conversation<'a> {
    /// A conversation that is all in one slice (for tests and simple callers).
    pub fn of(messages: &'a [ChatMessage]) -> Self {
        Conversation {
            model: None,
            head: &[],
            earlier: &[],
            current: messages,
            max_tokens: None,
        }
    }

    /// Every message, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &'a ChatMessage> {
        self.head.iter().chain(self.earlier).chain(self.current)
    }

    /// The newest message.
    pub fn last(&self) -> Option<&'a ChatMessage> {
        self.iter().next_back()
    }

    /// How many messages there are in all.
    pub fn len(&self) -> usize {
        self.head.len() + self.earlier.len() + self.current.len()
    }

    /// True when there is no message at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tool as the model is told about it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    /// The name to call it by.
    pub name: String,
    /// What it does, for the model to decide when to use it.
    pub description: String,
    /// The JSON Schema of its arguments.
    pub parameters: Value,
}

/// True for the notes earlier versions stored as the reply of a failed or cancelled turn
/// ("(no reply: …)", "(the reply was cancelled)"): requests send them as empty replies, so that
/// the model is never shown the server's own error text.
pub fn is_failure_note(text: &str) -> bool {
    text.starts_with("(no reply: ") || text == "(the reply was cancelled)"
}

/// What a model answered in one step: text, or tool calls, or both.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelReply {
    /// The answer text (empty when the step only calls tools).
    pub text: String,
    /// The tools to call before the next step; empty for a final answer.
    pub tool_calls: Vec<ToolCall>,
    /// The tokens this step used, when the provider reported them.
    pub usage: Option<Usage>,
    /// True when the answer may be incomplete: the provider stopped at its length limit
    /// (`finish_reason: "length"`) or gave no reason for stopping.
    pub truncated: bool,
}

/// Where a backend sends what it produces while it works.
pub trait ReplySink {
    /// Reasoning to show the user.
    fn thought(&mut self, text: &str);
    /// A streamed piece of the answer.
    fn delta(&mut self, text: &str);
    /// True once the turn is cancelled: the backend stops as soon as it can.
    fn is_cancelled(&self) -> bool;

    /// A transient failure: the backend tries again, as attempt number `attempt`, after
    /// `delay`.
    fn retrying(&mut self, _attempt: u32, _delay: Duration) {}

    /// Calls `hook` the moment the turn is cancelled, until the returned guard is dropped, so
    /// that a backend blocked on something else (a read from its model server) is woken at
    /// once. `None` when the sink cannot do that: the backend then looks at
    /// [`is_cancelled`](Self::is_cancelled) between pieces of its work instead.
    fn on_cancel(&self, _hook: Box<dyn Fn() + Send + Sync>) -> Option<OnCancel> {
        None
    }

    /// Waits for `delay`, or less if the turn is cancelled meanwhile; true when cancelled.
    /// The default checks [`is_cancelled`](Self::is_cancelled) every few milliseconds; a sink
    /// that can be woken does better.
    fn sleep(&mut self, delay: Duration) -> bool {
        let deadline = std::time::Instant::now() + delay;
        while !self.is_cancelled() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
        true
    }
}

/// What a server knows of its model server, for `/healthz`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ModelHealth {
    /// Whether it answered the last request or probe; `None` before the first.
    pub reachable: Option<bool>,
    /// What went wrong last, if the last request or probe failed.
    pub last_error: Option<String>,
}

/// A language model provider.
pub trait ModelBackend: Send + Sync {
    /// The default model's name: what a conversation that chose none uses, and what clients
    /// see in `ready` for it.
    fn name(&self) -> String;

    /// The models a new conversation may choose, the default first. A backend that serves one
    /// model lists only [`name`](Self::name).
    fn models(&self) -> Vec<String> {
        vec![self.name()]
    }

    /// The model a conversation that chose `chosen` uses: its choice while this server offers
    /// it (or lists nothing yet), else the default. A conversation imported from elsewhere
    /// (`gpt-4o`) or one whose model left the configuration goes on with the default.
    fn resolve(&self, chosen: Option<&str>) -> String {
        let offered = self.models();
        match chosen {
            Some(name) if offered.is_empty() || offered.iter().any(|m| m == name) => {
                name.to_owned()
            }
            _ => self.name(),
        }
    }

    /// What is known of the model server: whether it answered last time it was asked (by a
    /// probe or a turn), and the last error. The built-in model is always there.
    fn health(&self) -> ModelHealth {
        ModelHealth {
            reachable: Some(true),
            last_error: None,
        }
    }

    /// The model's context window in tokens, when known; `None` for a backend that needs no
    /// trimming (the built-in model).
    fn context_tokens(&self) -> Option<usize> {
        None
    }

    /// Asks the model server whether it is there and serves the model (`GET /v1/models`),
    /// and records the answer for [`health`](Self::health). `None` for a backend with nothing
    /// to ask.
    ///
    /// # Errors
    ///
    /// Inside the `Some`: a [`ModelError`] when the server cannot be reached, fails, or does
    /// not serve the model.
    fn probe(&self) -> Option<std::result::Result<(), ModelError>> {
        None
    }

    /// True when the backend itself tells the user, in a thought, which memory entries it was
    /// given; otherwise the bot sends a thought of its own.
    fn describes_memory(&self) -> bool {
        false
    }

    /// True when [`complete`](Self::complete) never waits (no network, no sleep, no lock held
    /// by someone slow): what it streams may then go out with what follows it, in one write,
    /// instead of the moment it is streamed. False (the default) for anything that may block,
    /// so that nothing it streams waits for the rest.
    fn answers_at_once(&self) -> bool {
        false
    }

    /// True when the model is sent the images tools return (as content parts); otherwise it
    /// reads only their notes (`[image: image/png, 12 KB]`).
    fn accepts_images(&self) -> bool {
        false
    }

    /// Runs one step of the conversation.
    ///
    /// # Errors
    ///
    /// [`Error::Model`](crate::common::error::Error::Model) when the provider fails, and
    /// [`Error::HistoryRejected`](crate::common::error::Error::HistoryRejected) when it refuses the
    /// conversation history as malformed (the bot then resets the history and tries once
    /// more).
    fn complete(
        &self,
        conversation: Conversation<'_>,
        tools: &[ToolSpec],
        sink: &mut dyn ReplySink,
    ) -> Result<ModelReply>;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A backend offering `offered` (the default first), answering nothing.
    struct Offering(Vec<&'static str>);

    impl ModelBackend for Offering {
        fn name(&self) -> String {
            self.0.first().map_or("auto", |m| m).to_owned()
        }
        fn models(&self) -> Vec<String> {
            self.0.iter().map(|m| (*m).to_owned()).collect()
        }
        fn complete(
            &self,
            _: Conversation<'_>,
            _: &[ToolSpec],
            _: &mut dyn ReplySink,
        ) -> Result<ModelReply> {
            Err(crate::common::error::Error::Model {
                backend: "offering".into(),
                detail: "unused".into(),
            })
        }
    }

    #[test]
    fn a_model_this_server_does_not_offer_resolves_to_the_default() {
        let two = Offering(vec!["small", "large"]);
        assert_eq!(two.resolve(None), "small");
        assert_eq!(two.resolve(Some("large")), "large");
        assert_eq!(
            two.resolve(Some("gpt-4o")),
            "small",
            "an imported conversation's model"
        );
        // A server whose list is not read yet keeps the choice.
        assert_eq!(Offering(vec![]).resolve(Some("large")), "large");
    }

    #[test]
    fn tool_args_from_json_keep_objects_and_mark_the_rest_unparsed() {
        assert_eq!(
            ToolArgs::from(json!({"x": 1})),
            ToolArgs::Parsed(json!({"x": 1}))
        );
        assert_eq!(ToolArgs::from(Value::Null), ToolArgs::Parsed(json!({})));
        assert_eq!(ToolArgs::from(json!([1])), ToolArgs::Unparsed("[1]".into()));
        // An object that happens to use the old marker key is an object like any other.
        let lookalike = json!({UNPARSED_KEY: "x"});
        assert_eq!(
            ToolArgs::from(lookalike.clone()),
            ToolArgs::Parsed(lookalike)
        );
    }

    #[test]
    fn tool_args_round_trip_through_the_store_and_read_the_old_form() {
        for args in [
            ToolArgs::Parsed(json!({"a": [1, 2]})),
            ToolArgs::Parsed(json!({})),
            ToolArgs::Unparsed("{\"x\": oops".into()),
            ToolArgs::Unparsed(String::new()),
        ] {
            assert_eq!(ToolArgs::from_stored(args.to_stored()), args);
        }
        assert_eq!(
            ToolArgs::from_stored(json!({"_unparsed_arguments": "{oops"})),
            ToolArgs::Unparsed("{oops".into())
        );
        assert_eq!(
            ToolArgs::from_stored(Value::Null),
            ToolArgs::Parsed(json!({}))
        );
    }

    #[test]
    fn tool_args_show_as_text_and_as_a_frame_object() {
        let parsed = ToolArgs::Parsed(json!({"x": 1}));
        assert_eq!(parsed.to_text(), r#"{"x":1}"#);
        assert_eq!(parsed.text_len(), parsed.to_text().len());
        assert_eq!(parsed.frame_value(), json!({"x": 1}));
        let unparsed = ToolArgs::Unparsed("{oops".into());
        assert_eq!(unparsed.to_text(), "{oops");
        assert_eq!(unparsed.text_len(), 5);
        assert_eq!(
            unparsed.frame_value(),
            json!({"_unparsed_arguments": "{oops"})
        );
    }
}
