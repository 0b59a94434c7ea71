//! The `ToolChain`: every tool a bot may call, shared by all sessions, and the `Tool` trait
//! that built-in, knowledge-graph and MCP tools implement. The built-in part is fixed at start;
//! a [`ToolSource`] (the MCP servers) may change its tools while the server runs.
//!
//! Depends on: `common::auth`, `common::cancel`, `common::metrics`, `common::protocol`, `model`, `store`, `tools::error`, `tools::knowledge`.

pub mod ask;
pub mod builtin;
pub mod calculator;
pub mod error;
pub mod files;
pub mod graph;
pub mod knowledge;
pub mod mcp;
pub mod prompts;

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;

use crate::common::auth::Principal;
use crate::common::cancel::CancelFlag;
use crate::common::metrics::Metrics;
use crate::common::protocol::{SessionId, ToolStatus};
use crate::model::{Image, ToolSpec, describe_bytes};
use crate::store::GraphStore;
use crate::tools::error::ToolError;
use crate::tools::knowledge::Knowledge;

/// What a tool gets besides its arguments: who calls it, the calling session's knowledge,
/// the turn's cancel flag and where to report progress.
pub struct ToolContext<'a> {
    /// The principal whose conversation calls the tool: the graph tools act for it alone.
    pub principal: &'a Principal,
    /// The calling conversation, when there is one: the files tools read its files.
    pub conversation: Option<&'a SessionId>,
    /// The calling session's short-term knowledge.
    pub knowledge: &'a Knowledge,
    /// Set when the turn is cancelled; a slow tool stops when it sees it.
    pub cancel: &'a CancelFlag,
    /// Where a long tool says how far it has come, when anyone listens.
    pub progress: Option<&'a dyn ProgressSink>,
    /// Who answers what a tool asks the person behind the turn (an MCP server's elicitation
    /// and sampling requests); `None` where nobody can be asked.
    pub ask: Option<&'a dyn ask::AskUser>,
}

impl fmt::Debug for ToolContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolContext")
            .field("principal", &self.principal)
            .field("cancel", &self.cancel)
            .field("progress", &self.progress.is_some())
            .field("ask", &self.ask.is_some())
            .finish_non_exhaustive()
    }
}

/// How far a running tool call has come, as MCP's `notifications/progress` says it.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// The progress so far; it only grows.
    pub progress: f64,
    /// What `progress` will reach, when known.
    pub total: Option<f64>,
    /// What the tool is doing, for a person.
    pub message: Option<String>,
}

/// Where one tool call reports its progress. Called from whatever thread the tool waits on;
/// must not block.
pub trait ProgressSink: Sync {
    /// The call has come this far.
    fn report(&self, progress: Progress);
}

/// One capability the bot can use.
pub trait Tool: Send + Sync {
    /// The name the model calls it by; unique in a ToolChain.
    fn name(&self) -> &str;
    /// What it does, for the model.
    fn description(&self) -> &str;
    /// The JSON Schema of its arguments.
    fn parameters(&self) -> Value;
    /// Runs the tool.
    ///
    /// # Errors
    ///
    /// A [`ToolError`] whose text tells the model and the user what was wrong (bad arguments,
    /// a failure).
    fn call(&self, args: &Value, ctx: &ToolContext<'_>) -> Result<String, ToolError>;
    /// Runs the tool, for a result that may hold images beside its text. The default is
    /// [`call`](Self::call)'s text alone.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    fn call_content(&self, args: &Value, ctx: &ToolContext<'_>) -> Result<ToolContent, ToolError> {
        self.call(args, ctx).map(ToolContent::from)
    }
    /// True when a person must allow each call before it runs (`approval_request`). Sparky's
    /// own tools never ask; an MCP tool asks as its server's config and hints say.
    fn needs_approval(&self) -> bool {
        false
    }
}

/// A prompt a [`ToolSource`] offers (an MCP server's `prompts/list`), for `/prompt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptInfo {
    /// The server that offers it.
    pub server: String,
    /// Its name on that server.
    pub name: String,
    /// What it is for; may be empty.
    pub description: String,
    /// Its arguments' names, each with whether it is required.
    pub arguments: Vec<(String, bool)>,
}

/// Tools that may change while the server runs (the MCP servers' tools): a server announces a
/// new list, or restarts with one. The ToolChain asks it for the current tools whenever it
/// needs them, so every new turn and every `ready` frame sees the current list. A source may
/// offer prompts too (`/prompt`).
pub trait ToolSource: Send + Sync {
    /// The current tools, in a stable order. Their names must not change while they are listed.
    fn tools(&self) -> Arc<[Arc<dyn Tool>]>;
    /// A number that changes whenever [`tools`](Self::tools) or
    /// [`instructions`](Self::instructions) does, so that callers can cache what they derive.
    fn generation(&self) -> u64;
    /// Text for the system prompt (the MCP servers' `instructions`, each under its server's
    /// name); empty when there is none.
    fn instructions(&self) -> String;
    /// Every prompt on offer now, asking the servers; none by default.
    ///
    /// # Errors
    ///
    /// What went wrong asking, for the user.
    fn prompts(&self, cancel: &CancelFlag) -> Result<Vec<PromptInfo>, ToolError> {
        let _ = cancel;
        Ok(Vec::new())
    }
    /// The text of the prompt `name` (`server/name` picks the server) filled in with `args`.
    ///
    /// # Errors
    ///
    /// No such prompt, or what went wrong getting it, for the user.
    fn prompt(
        &self,
        name: &str,
        args: &BTreeMap<String, String>,
        cancel: &CancelFlag,
    ) -> Result<String, ToolError> {
        let _ = (args, cancel);
        Err(ToolError::NotFound(format!("prompt named {name}")))
    }
}

/// Reads the required string argument `key`: present, a string, and not blank.
///
/// # Errors
///
/// [`ToolError::Arguments`] saying which of these it is not.
pub fn string_arg<'a>(args: &'a Value, key: &str) -> Result<&'a str, ToolError> {
    match args.get(key) {
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(text.as_str()),
        Some(Value::String(_)) => Err(format!("\"{key}\" must not be empty")),
        Some(other) => Err(format!("\"{key}\" must be a string, not {other}")),
        None => Err(format!("missing argument \"{key}\"")),
    }
    .map_err(ToolError::Arguments)
}

/// What a tool returned: text, images, and other files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolContent {
    /// The text.
    pub text: String,
    /// The images, in order.
    pub images: Vec<Image>,
    /// Other binary content (an MCP tool's audio, an embedded resource's blob), kept as files
    /// of the conversation; the text has a note for each.
    pub files: Vec<ToolFile>,
}

/// Binary content a tool returned that is not an image for the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolFile {
    /// A name for it (a resource's last path segment, or its kind).
    pub name: String,
    /// Its media type, as the tool said.
    pub mime_type: String,
    /// Its bytes, base64-encoded (the standard alphabet, padded).
    pub data: String,
}

impl From<String> for ToolContent {
    fn from(text: String) -> Self {
        ToolContent {
            text,
            ..ToolContent::default()
        }
    }
}

/// The result of one tool call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutput {
    /// Whether the call succeeded.
    pub status: ToolStatus,
    /// The tool's output, or what went wrong.
    pub text: String,
    /// The images it returned, within [`MAX_IMAGE_BYTES`].
    pub images: Vec<Image>,
    /// The other files it returned.
    pub files: Vec<ToolFile>,
}

impl ToolOutput {
    /// A result of text alone.
    pub fn text(status: ToolStatus, text: impl Into<String>) -> Self {
        ToolOutput {
            status,
            text: text.into(),
            images: Vec::new(),
            files: Vec::new(),
        }
    }

    /// The result as the model reads it and the `tool_result` frame carries it: the text, then
    /// each image's note. A model that accepts images is sent the images too, and the frame
    /// lists them as stored files (PROTOCOL.md section 5), never their bytes.
    pub fn for_model(&self) -> String {
        let mut text = self.text.clone();
        for image in &self.images {
            text.push('\n');
            text.push_str(&image.note());
        }
        text
    }
}

/// The most image bytes (decoded) one tool result keeps, all its images together; an image
/// past it is replaced by a note saying so. 1 MiB: a screenshot or a chart, a few times over.
pub const MAX_IMAGE_BYTES: usize = 1 << 20;

/// The image types kept: those every browser shows and the OpenAI API takes.
pub const IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// The largest tool result kept by default, in bytes (`--max-tool-result-bytes`).
pub const DEFAULT_MAX_RESULT_BYTES: usize = 256 * 1024;

/// Specs made for one generation of a [`ToolSource`].
type CachedSpecs = (u64, Arc<[ToolSpec]>);

/// The tools of one server: a fixed part, in the order added, then the current tools of its
/// [`ToolSource`], if any. Shared through `Arc`.
#[derive(Clone)]
pub struct ToolChain {
    tools: Vec<Arc<dyn Tool>>,
    /// The fixed tools as the model sees them, made once as tools are added (every turn sends
    /// them).
    specs: Arc<[ToolSpec]>,
    /// The tools that may change, when there are any.
    source: Option<Arc<dyn ToolSource>>,
    /// Every spec (fixed and the source's) for the source's generation it was made for. The
    /// lock is held only to read or replace the `Arc`, never while specs are built.
    combined: Arc<Mutex<Option<CachedSpecs>>>,
    /// Where calls are counted, when set.
    metrics: Option<Arc<Metrics>>,
    /// Longest result kept, in bytes; a longer one is cut (see [`ToolChain::call`]).
    max_result_bytes: usize,
}

impl Default for ToolChain {
    fn default() -> Self {
        ToolChain {
            tools: Vec::new(),
            specs: Arc::from([]),
            source: None,
            combined: Arc::default(),
            metrics: None,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

impl fmt::Debug for ToolChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolChain")
            .field("tools", &self.names())
            .finish()
    }
}

impl ToolChain {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in tools that need nothing but the session.
    pub fn builtin() -> Self {
        let mut chain = Self::new();
        for tool in builtin::all() {
            chain.add(tool);
        }
        chain
    }

    /// The built-in tools and the knowledge-graph tools over `store`.
    pub fn standard(store: &Arc<dyn GraphStore>) -> Self {
        let mut chain = Self::builtin();
        for tool in graph::all(store) {
            chain.add(tool);
        }
        chain
    }

    /// Adds a fixed tool; one with the same name as an earlier tool replaces it.
    pub fn add(&mut self, tool: Arc<dyn Tool>) {
        self.tools.retain(|known| known.name() != tool.name());
        self.tools.push(tool);
        self.specs = self.tools.iter().map(|tool| spec(tool.as_ref())).collect();
        // A clone must not share the cache of the chain it came from once they differ.
        self.combined = Arc::default();
    }

    /// Consults `source` from now on for tools beyond the fixed ones. A source's tool whose
    /// name a fixed tool has is left out.
    pub fn set_source(&mut self, source: Arc<dyn ToolSource>) {
        self.source = Some(source);
        self.combined = Arc::default();
    }

    /// The current tools' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.current()
            .iter()
            .map(|tool| tool.name().to_owned())
            .collect()
    }

    /// The current tools as the model is told about them.
    pub fn specs(&self) -> Arc<[ToolSpec]> {
        let Some(source) = &self.source else {
            return self.specs.clone();
        };
        let generation = source.generation();
        if let Some((cached, specs)) = self.combined.lock().as_ref()
            && *cached == generation
        {
            return specs.clone();
        }
        let specs: Arc<[ToolSpec]> = self
            .specs
            .iter()
            .cloned()
            .chain(
                self.source_tools(source)
                    .iter()
                    .map(|tool| spec(tool.as_ref())),
            )
            .collect();
        *self.combined.lock() = Some((generation, specs.clone()));
        specs
    }

    /// Text the system prompt carries for the tools (the MCP servers' instructions); empty
    /// when there is none.
    pub fn instructions(&self) -> String {
        self.source
            .as_ref()
            .map(|source| source.instructions())
            .unwrap_or_default()
    }

    /// Every prompt its source offers (see [`ToolSource::prompts`]); none without a source.
    ///
    /// # Errors
    ///
    /// What went wrong asking, for the user.
    pub fn prompts(&self, cancel: &CancelFlag) -> Result<Vec<PromptInfo>, ToolError> {
        match &self.source {
            Some(source) => source.prompts(cancel),
            None => Ok(Vec::new()),
        }
    }

    /// The text of its source's prompt `name` filled in with `args` (see
    /// [`ToolSource::prompt`]).
    ///
    /// # Errors
    ///
    /// No such prompt, or what went wrong getting it, for the user.
    pub fn prompt(
        &self,
        name: &str,
        args: &BTreeMap<String, String>,
        cancel: &CancelFlag,
    ) -> Result<String, ToolError> {
        match &self.source {
            Some(source) => source.prompt(name, args, cancel),
            None => Err(ToolError::NotFound(format!("prompt named {name}"))),
        }
    }

    /// How many tools the chain holds now.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// True when the chain holds no tool now.
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// Calls the tool `name`. An unknown tool, bad arguments, a failure and even a panic inside
    /// the tool all come back as an error output: a tool never takes the turn down.
    ///
    /// A result (or error) longer than the chain's cap (see
    /// [`set_max_result_bytes`](Self::set_max_result_bytes)) keeps its first bytes up to the cap,
    /// cut at a character boundary, and ends with a note saying so. This happens here, before
    /// the result becomes an event or reaches the model, so that it holds for every tool.
    pub fn call(&self, name: &str, args: &Value, ctx: &ToolContext<'_>) -> ToolOutput {
        let mut output = self.run(name, args, ctx);
        let returned = output.text.len();
        if returned > self.max_result_bytes {
            truncate_result(&mut output.text, self.max_result_bytes);
            log::info!(
                "tool {name}: its result of {returned} bytes was cut to {}",
                self.max_result_bytes
            );
        }
        keep_images(&mut output);
        if let Some(metrics) = &self.metrics {
            metrics.tool_called(name, output.status);
        }
        output
    }

    /// True when a call of the tool `name` must wait for a person to allow it (see
    /// [`Tool::needs_approval`]); false for an unknown tool, whose call fails anyway.
    pub fn needs_approval(&self, name: &str) -> bool {
        self.find(name).is_some_and(|tool| tool.needs_approval())
    }

    /// Counts every call in `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    /// Keeps at most `bytes` of each tool result from now on (default
    /// [`DEFAULT_MAX_RESULT_BYTES`]).
    pub fn set_max_result_bytes(&mut self, bytes: usize) {
        self.max_result_bytes = bytes;
    }

    /// Every current tool: the fixed ones, then the source's.
    fn current(&self) -> Vec<Arc<dyn Tool>> {
        let mut tools = self.tools.clone();
        if let Some(source) = &self.source {
            tools.extend(self.source_tools(source));
        }
        tools
    }

    /// The source's tools whose names no fixed tool has.
    fn source_tools(&self, source: &Arc<dyn ToolSource>) -> Vec<Arc<dyn Tool>> {
        source
            .tools()
            .iter()
            .filter(|tool| !self.tools.iter().any(|fixed| fixed.name() == tool.name()))
            .cloned()
            .collect()
    }

    /// The current tool called `name`, if any.
    fn find(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools
            .iter()
            .find(|tool| tool.name() == name)
            .cloned()
            .or_else(|| {
                let source = self.source.as_ref()?;
                source
                    .tools()
                    .iter()
                    .find(|tool| tool.name() == name)
                    .cloned()
            })
    }

    fn run(&self, name: &str, args: &Value, ctx: &ToolContext<'_>) -> ToolOutput {
        match self.try_run(name, args, ctx) {
            Ok(content) => ToolOutput {
                status: ToolStatus::Success,
                text: content.text,
                images: content.images,
                files: content.files,
            },
            Err(e) => ToolOutput::text(ToolStatus::Error, e.to_string()),
        }
    }

    fn try_run(
        &self,
        name: &str,
        args: &Value,
        ctx: &ToolContext<'_>,
    ) -> Result<ToolContent, ToolError> {
        let Some(tool) = self.find(name) else {
            return Err(ToolError::Unknown {
                name: name.to_owned(),
                known: self.names(),
            });
        };
        if !args.is_object() {
            return Err(ToolError::Arguments(format!(
                "arguments of {name} must be a JSON object, not {args}"
            )));
        }
        catch_unwind(AssertUnwindSafe(|| tool.call_content(args, ctx))).unwrap_or_else(|_| {
            log::warn!("tool {name}: panicked");
            Err(ToolError::Panicked {
                tool: name.to_owned(),
            })
        })
    }
}

/// Keeps the images of `output` that are of a known type, well formed and, together, within
/// [`MAX_IMAGE_BYTES`]; each other one becomes a note in the text.
fn keep_images(output: &mut ToolOutput) {
    let mut kept_bytes = 0;
    let mut kept = Vec::new();
    for image in std::mem::take(&mut output.images) {
        let bytes = image.bytes();
        let why = if !IMAGE_TYPES.contains(&image.mime_type.as_str()) {
            Some("not a type Sparky shows".to_owned())
        } else if !is_base64(&image.data) {
            Some("not valid base64".to_owned())
        } else if kept_bytes + bytes > MAX_IMAGE_BYTES {
            Some(format!(
                "past the {} MiB Sparky keeps of a result's images",
                MAX_IMAGE_BYTES >> 20
            ))
        } else {
            None
        };
        match why {
            Some(why) => {
                let type_name: String = image.mime_type.chars().take(60).collect();
                output.text.push_str(&format!(
                    "\n[image: {type_name}, {}; left out: {why}]",
                    describe_bytes(bytes)
                ));
            }
            None => {
                kept_bytes += bytes;
                kept.push(image);
            }
        }
    }
    output.images = kept;
}

/// True for standard, padded base64 (what MCP's image content carries), so that a `data:` URL
/// made of it holds nothing else.
fn is_base64(data: &str) -> bool {
    let body = data.trim_end_matches('=');
    !data.is_empty()
        && data.len().is_multiple_of(4)
        && data.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// A tool as the model is told about it.
fn spec(tool: &dyn Tool) -> ToolSpec {
    ToolSpec {
        name: tool.name().to_owned(),
        description: tool.description().to_owned(),
        parameters: tool.parameters(),
    }
}

/// Cuts `text` to at most `limit` bytes, at a character boundary, and appends a note giving
/// both sizes.
fn truncate_result(text: &mut String, limit: usize) {
    let returned = text.len();
    let kept = text.floor_char_boundary(limit);
    text.truncate(kept);
    text.push_str(&format!(
        "\n[truncated: the tool returned {returned} bytes; Sparky keeps the first {limit}]"
    ));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    struct Panicky;

    impl Tool for Panicky {
        fn name(&self) -> &str {
            "panicky"
        }
        fn description(&self) -> &str {
            "panics"
        }
        fn parameters(&self) -> Value {
            json!({"type": "object"})
        }
        fn call(&self, _args: &Value, _ctx: &ToolContext<'_>) -> Result<String, ToolError> {
            panic!("tool bug")
        }
    }

    /// Returns `args.text` repeated `args.times` times, as a success or (with `fail`) an error.
    struct Repeat;

    impl Tool for Repeat {
        fn name(&self) -> &str {
            "repeat"
        }
        fn description(&self) -> &str {
            "repeats"
        }
        fn parameters(&self) -> Value {
            json!({"type": "object"})
        }
        fn call(&self, args: &Value, _ctx: &ToolContext<'_>) -> Result<String, ToolError> {
            let text = args["text"].as_str().unwrap_or_default();
            let times = args["times"].as_u64().unwrap_or(1) as usize;
            let output = text.repeat(times);
            if args["fail"] == json!(true) {
                Err(ToolError::failed(output))
            } else {
                Ok(output)
            }
        }
    }

    #[test]
    fn a_long_result_is_cut_at_a_character_boundary_with_a_note() {
        let mut chain = ToolChain::new();
        chain.add(Arc::new(Repeat));
        chain.set_max_result_bytes(10);
        let (knowledge, cancel) = (Knowledge::new(), CancelFlag::new());
        let ctx = ToolContext {
            conversation: None,
            principal: &Principal::local(),
            knowledge: &knowledge,
            cancel: &cancel,
            progress: None,
            ask: None,
        };
        // Within the cap: untouched.
        let short = chain.call("repeat", &json!({"text": "abcde", "times": 2}), &ctx);
        assert_eq!(short.text, "abcdeabcde");
        // "é" is two bytes, so byte 10 falls inside the sixth one: five are kept.
        let long = chain.call("repeat", &json!({"text": "é", "times": 8}), &ctx);
        assert_eq!(long.status, ToolStatus::Success);
        assert_eq!(
            long.text,
            "ééééé\n[truncated: the tool returned 16 bytes; Sparky keeps the first 10]"
        );
        // Errors are cut the same way.
        let failed = chain.call(
            "repeat",
            &json!({"text": "x", "times": 50, "fail": true}),
            &ctx,
        );
        assert_eq!(failed.status, ToolStatus::Error);
        assert!(
            failed
                .text
                .starts_with("xxxxxxxxxx\n[truncated: the tool returned 50 bytes")
        );
        // The default keeps 256 KiB.
        assert_eq!(ToolChain::new().max_result_bytes, DEFAULT_MAX_RESULT_BYTES);
    }

    /// A source whose tools the test swaps.
    #[derive(Default)]
    struct Swapping {
        tools: Mutex<(u64, Vec<Arc<dyn Tool>>)>,
    }

    impl ToolSource for Swapping {
        fn tools(&self) -> Arc<[Arc<dyn Tool>]> {
            self.tools.lock().1.clone().into()
        }
        fn generation(&self) -> u64 {
            self.tools.lock().0
        }
        fn instructions(&self) -> String {
            String::new()
        }
    }

    #[test]
    fn a_source_s_current_tools_are_listed_and_called_and_fixed_names_win() {
        let source = Arc::new(Swapping::default());
        let mut chain = ToolChain::new();
        chain.add(Arc::new(Panicky));
        chain.set_source(source.clone());
        assert_eq!(chain.names(), ["panicky"]);
        assert_eq!(chain.specs().len(), 1);
        *source.tools.lock() = (1, vec![Arc::new(Repeat), Arc::new(Panicky)]);
        assert_eq!(chain.names(), ["panicky", "repeat"]);
        let specs: Vec<String> = chain.specs().iter().map(|s| s.name.clone()).collect();
        assert_eq!(specs, ["panicky", "repeat"]);
        assert_eq!(chain.len(), 2);
        let (knowledge, cancel) = (Knowledge::new(), CancelFlag::new());
        let ctx = ToolContext {
            conversation: None,
            principal: &Principal::local(),
            knowledge: &knowledge,
            cancel: &cancel,
            progress: None,
            ask: None,
        };
        assert_eq!(chain.call("repeat", &json!({"text": "a"}), &ctx).text, "a");
        *source.tools.lock() = (2, Vec::new());
        assert_eq!(chain.specs().len(), 1);
        assert_eq!(
            chain.call("repeat", &json!({}), &ctx).status,
            ToolStatus::Error
        );
        assert_eq!(chain.instructions(), "");
    }

    #[test]
    fn a_panicking_tool_is_an_error_result_not_a_crash() {
        let mut chain = ToolChain::new();
        chain.add(Arc::new(Panicky));
        let (knowledge, cancel) = (Knowledge::new(), CancelFlag::new());
        let ctx = ToolContext {
            conversation: None,
            principal: &Principal::local(),
            knowledge: &knowledge,
            cancel: &cancel,
            progress: None,
            ask: None,
        };
        let output = chain.call("panicky", &json!({}), &ctx);
        assert_eq!(output.status, ToolStatus::Error);
        assert_eq!(output.text, "the panicky tool crashed");
        let not_an_object = chain.call("panicky", &json!([1]), &ctx);
        assert_eq!(not_an_object.status, ToolStatus::Error);
        assert_eq!(
            not_an_object.text,
            "arguments of panicky must be a JSON object, not [1]"
        );
        assert_eq!(
            chain.call("nope", &json!({}), &ctx).text,
            "unknown tool \"nope\"; known tools: panicky"
        );
    }

    /// Returns the images its arguments describe: `[[mime, base64], …]`.
    struct Camera;

    impl Tool for Camera {
        fn name(&self) -> &str {
            "camera"
        }
        fn description(&self) -> &str {
            "returns images"
        }
        fn parameters(&self) -> Value {
            json!({"type": "object"})
        }
        fn call(&self, _args: &Value, _ctx: &ToolContext<'_>) -> Result<String, ToolError> {
            Ok(String::new())
        }
        fn call_content(
            &self,
            args: &Value,
            _ctx: &ToolContext<'_>,
        ) -> Result<ToolContent, ToolError> {
            let images = args["images"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|pair| Image {
                    mime_type: pair[0].as_str().unwrap_or_default().to_owned(),
                    data: pair[1].as_str().unwrap_or_default().to_owned(),
                })
                .collect();
            Ok(ToolContent {
                text: "shot".into(),
                images,
                files: Vec::new(),
            })
        }
    }

    #[test]
    fn images_within_the_cap_are_kept_and_the_others_become_notes() {
        let mut chain = ToolChain::new();
        chain.add(Arc::new(Camera));
        let (knowledge, cancel) = (Knowledge::new(), CancelFlag::new());
        let ctx = ToolContext {
            conversation: None,
            principal: &Principal::local(),
            knowledge: &knowledge,
            cancel: &cancel,
            progress: None,
            ask: None,
        };
        // 768 KiB each: the first fits the 1 MiB of a result, the second does not.
        let big = "A".repeat(1 << 20);
        let args = json!({"images": [
            ["image/png", "iVBORw0KGgo="],
            ["image/svg+xml", "PHN2Zz4="],
            ["image/png", "not base64!"],
            ["image/jpeg", big],
            ["image/jpeg", big],
        ]});
        let output = chain.call("camera", &args, &ctx);
        assert_eq!(output.images.len(), 2);
        assert_eq!(output.images[0].bytes(), 8);
        assert_eq!(output.images[1].bytes(), 768 * 1024);
        assert_eq!(
            output.text,
            "shot\n[image: image/svg+xml, 5 B; left out: not a type Sparky shows]\n\
             [image: image/png, 6 B; left out: not valid base64]\n\
             [image: image/jpeg, 787 KB; left out: past the 1 MiB Sparky keeps of a result's images]"
        );
        // The model and the frame read each kept image's note, never its bytes.
        assert!(output.for_model().ends_with("[image: image/jpeg, 787 KB]"));
        assert!(!output.for_model().contains("data:"));
    }
}
