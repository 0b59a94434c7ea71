//! The `ToolChain`: every tool a bot may call, built once at start and shared by all sessions,
//! and the `Tool` trait that built-in, knowledge-graph and MCP tools implement. Depends on
//! `cancel`, `knowledge`, `model` and `store`.

pub mod builtin;
pub mod calculator;
pub mod graph;
pub mod mcp;

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use serde_json::Value;

use crate::auth::Principal;
use crate::cancel::CancelFlag;
use crate::knowledge::Knowledge;
use crate::metrics::Metrics;
use crate::model::ToolSpec;
use crate::protocol::ToolStatus;
use crate::store::GraphStore;

/// What a tool gets besides its arguments: who calls it, the calling session's knowledge and
/// the turn's cancel flag.
#[derive(Debug)]
pub struct ToolContext<'a> {
    /// The principal whose conversation calls the tool: the graph tools act for it alone.
    pub principal: &'a Principal,
    /// The calling session's short-term knowledge.
    pub knowledge: &'a Knowledge,
    /// Set when the turn is cancelled; a slow tool stops when it sees it.
    pub cancel: &'a CancelFlag,
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
    /// A message for the model and the user, saying what was wrong (bad arguments, a failure).
    fn call(&self, args: &Value, ctx: &ToolContext<'_>) -> Result<String, String>;
}

/// The result of one tool call as clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutput {
    /// Whether the call succeeded.
    pub status: ToolStatus,
    /// The tool's output, or what went wrong.
    pub text: String,
}

/// The largest tool result kept by default, in bytes (`--max-tool-result-bytes`).
pub const DEFAULT_MAX_RESULT_BYTES: usize = 256 * 1024;

/// The tools of one server, in a fixed order. Shared through `Arc`; immutable after start.
#[derive(Clone)]
pub struct ToolChain {
    tools: Vec<Arc<dyn Tool>>,
    /// The tools as the model sees them, made once as tools are added (every turn sends them).
    specs: Arc<[ToolSpec]>,
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

    /// Adds a tool; one with the same name as an earlier tool replaces it.
    pub fn add(&mut self, tool: Arc<dyn Tool>) {
        self.tools.retain(|known| known.name() != tool.name());
        self.tools.push(tool);
        self.specs = self
            .tools
            .iter()
            .map(|tool| ToolSpec {
                name: tool.name().to_owned(),
                description: tool.description().to_owned(),
                parameters: tool.parameters(),
            })
            .collect();
    }

    /// The tools' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.tools
            .iter()
            .map(|tool| tool.name().to_owned())
            .collect()
    }

    /// The tools as the model is told about them.
    pub fn specs(&self) -> &[ToolSpec] {
        &self.specs
    }

    /// How many tools the chain holds.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// True when the chain holds no tool.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
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
        if let Some(metrics) = &self.metrics {
            metrics.tool_called(name, output.status);
        }
        output
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

    fn run(&self, name: &str, args: &Value, ctx: &ToolContext<'_>) -> ToolOutput {
        let Some(tool) = self.tools.iter().find(|tool| tool.name() == name) else {
            return ToolOutput {
                status: ToolStatus::Error,
                text: format!(
                    "unknown tool {name:?}; known tools: {}",
                    self.names().join(", ")
                ),
            };
        };
        if !args.is_object() {
            return ToolOutput {
                status: ToolStatus::Error,
                text: format!("arguments of {name} must be a JSON object, not {args}"),
            };
        }
        match catch_unwind(AssertUnwindSafe(|| tool.call(args, ctx))) {
            Ok(Ok(text)) => ToolOutput {
                status: ToolStatus::Success,
                text,
            },
            Ok(Err(text)) => ToolOutput {
                status: ToolStatus::Error,
                text,
            },
            Err(_) => {
                log::warn!("tool {name}: panicked");
                ToolOutput {
                    status: ToolStatus::Error,
                    text: format!("the {name} tool crashed"),
                }
            }
        }
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
        fn call(&self, _args: &Value, _ctx: &ToolContext<'_>) -> Result<String, String> {
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
        fn call(&self, args: &Value, _ctx: &ToolContext<'_>) -> Result<String, String> {
            let text = args["text"].as_str().unwrap_or_default();
            let times = args["times"].as_u64().unwrap_or(1) as usize;
            let output = text.repeat(times);
            if args["fail"] == json!(true) {
                Err(output)
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
            principal: &Principal::local(),
            knowledge: &knowledge,
            cancel: &cancel,
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

    #[test]
    fn a_panicking_tool_is_an_error_result_not_a_crash() {
        let mut chain = ToolChain::new();
        chain.add(Arc::new(Panicky));
        let (knowledge, cancel) = (Knowledge::new(), CancelFlag::new());
        let ctx = ToolContext {
            principal: &Principal::local(),
            knowledge: &knowledge,
            cancel: &cancel,
        };
        let output = chain.call("panicky", &json!({}), &ctx);
        assert_eq!(output.status, ToolStatus::Error);
        assert!(output.text.contains("crashed"));
        assert_eq!(
            chain.call("panicky", &json!([1]), &ctx).status,
            ToolStatus::Error
        );
        assert!(
            chain
                .call("nope", &json!({}), &ctx)
                .text
                .contains("unknown tool")
        );
    }
}
