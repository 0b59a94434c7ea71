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

/// The tools of one server, in a fixed order. Shared through `Arc`; immutable after start.
#[derive(Clone, Default)]
pub struct ToolChain {
    tools: Vec<Arc<dyn Tool>>,
    /// The tools as the model sees them, made once as tools are added (every turn sends them).
    specs: Arc<[ToolSpec]>,
    /// Where calls are counted, when set.
    metrics: Option<Arc<Metrics>>,
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
    pub fn call(&self, name: &str, args: &Value, ctx: &ToolContext<'_>) -> ToolOutput {
        let output = self.run(name, args, ctx);
        if let Some(metrics) = &self.metrics {
            metrics.tool_called(name, output.status);
        }
        output
    }

    /// Counts every call in `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
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
