//! The knowledge-graph tools, shared by all sessions: `remember`, `recall`, `graph_add_node`,
//! `graph_add_edge`, `graph_get`, `graph_search` and `graph_delete`.
//!
//! Depends on: `store`, `tools`, `tools::error`.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::store::{GraphStore, Node};
use crate::tools::error::ToolError;
use crate::tools::{Tool, ToolContext, string_arg as string};

/// Results a search returns when the caller gives no limit.
const DEFAULT_LIMIT: u64 = 5;

/// Results a search may return at most.
const MAX_LIMIT: u64 = 50;

/// Every graph tool, over one store.
pub fn all(store: &Arc<dyn GraphStore>) -> Vec<Arc<dyn Tool>> {
    let tool = |kind: GraphTool| -> Arc<dyn Tool> {
        Arc::new(Graph {
            kind,
            store: store.clone(),
        })
    };
    vec![
        tool(GraphTool::Remember),
        tool(GraphTool::Recall),
        tool(GraphTool::AddNode),
        tool(GraphTool::AddEdge),
        tool(GraphTool::Get),
        tool(GraphTool::Search),
        tool(GraphTool::Delete),
    ]
}

#[derive(Clone, Copy, Debug)]
enum GraphTool {
    Remember,
    Recall,
    AddNode,
    AddEdge,
    Get,
    Search,
    Delete,
}

/// One graph tool: which operation, on which store.
struct Graph {
    kind: GraphTool,
    store: Arc<dyn GraphStore>,
}

fn optional_string<'a>(args: &'a Value, key: &str) -> Result<Option<&'a str>, ToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(args, key).map(Some),
    }
}

fn node_id(args: &Value, key: &str) -> Result<i64, ToolError> {
    match args.get(key) {
        Some(value) => value.as_i64().filter(|id| *id > 0).ok_or_else(|| {
            format!("\"{key}\" must be a node id (a positive integer), not {value}")
        }),
        None => Err(format!("missing argument \"{key}\"")),
    }
    .map_err(ToolError::Arguments)
}

fn limit(args: &Value) -> Result<usize, ToolError> {
    match args.get("limit") {
        None | Some(Value::Null) => Ok(DEFAULT_LIMIT as usize),
        Some(value) => value
            .as_u64()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .map(|n| n as usize)
            .ok_or_else(|| {
                ToolError::Arguments(format!(
                    "\"limit\" must be a whole number from 1 to {MAX_LIMIT}, not {value}"
                ))
            }),
    }
}

fn properties(args: &Value) -> Result<Value, ToolError> {
    match args.get("properties") {
        None | Some(Value::Null) => Ok(json!({})),
        Some(value @ Value::Object(_)) => Ok(value.clone()),
        Some(other) => Err(ToolError::Arguments(format!(
            "\"properties\" must be a JSON object, not {other}"
        ))),
    }
}

fn describe(node: &Node) -> String {
    if node.label == node.content || node.content.is_empty() {
        format!("#{} [{}] {}", node.id, node.kind, node.label)
    } else {
        format!(
            "#{} [{}] {}: {}",
            node.id, node.kind, node.label, node.content
        )
    }
}

fn list(nodes: &[Node], query: &str) -> String {
    if nodes.is_empty() {
        return format!("Nothing found for {query:?}.");
    }
    nodes
        .iter()
        .enumerate()
        .map(|(i, node)| format!("{}. {}", i + 1, describe(node)))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Tool for Graph {
    fn name(&self) -> &str {
        match self.kind {
            GraphTool::Remember => "remember",
            GraphTool::Recall => "recall",
            GraphTool::AddNode => "graph_add_node",
            GraphTool::AddEdge => "graph_add_edge",
            GraphTool::Get => "graph_get",
            GraphTool::Search => "graph_search",
            GraphTool::Delete => "graph_delete",
        }
    }

    fn description(&self) -> &str {
        match self.kind {
            GraphTool::Remember => {
                "Store a fact in your long-term memory, shared by all your conversations."
            }
            GraphTool::Recall => {
                "Search the long-term memory for facts about a topic, best match first."
            }
            GraphTool::AddNode => {
                "Add a node (a person, thing, place, fact…) to the knowledge graph."
            }
            GraphTool::AddEdge => "Link two nodes of the knowledge graph with a typed relation.",
            GraphTool::Get => "Read a node of the knowledge graph with its neighbours.",
            GraphTool::Search => {
                "Full-text search over the knowledge graph's nodes, optionally of one kind."
            }
            GraphTool::Delete => "Delete a node of the knowledge graph and its edges.",
        }
    }

    fn parameters(&self) -> Value {
        let id = |what: &str| json!({"type": "integer", "minimum": 1, "description": what});
        let limit = json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT});
        match self.kind {
            GraphTool::Remember => json!({"type": "object",
                "properties": {"content": {"type": "string", "description": "the fact"}},
                "required": ["content"]}),
            GraphTool::Recall => json!({"type": "object",
                "properties": {"query": {"type": "string"}, "limit": limit},
                "required": ["query"]}),
            GraphTool::AddNode => json!({"type": "object",
                "properties": {"kind": {"type": "string"}, "label": {"type": "string"},
                               "content": {"type": "string"}, "properties": {"type": "object"}},
                "required": ["kind", "label"]}),
            GraphTool::AddEdge => json!({"type": "object",
                "properties": {"source": id("node id"), "target": id("node id"),
                               "kind": {"type": "string", "description": "the relation, e.g. likes"},
                               "properties": {"type": "object"}},
                "required": ["source", "target", "kind"]}),
            GraphTool::Get | GraphTool::Delete => json!({"type": "object",
                "properties": {"id": id("node id")}, "required": ["id"]}),
            GraphTool::Search => json!({"type": "object",
                "properties": {"query": {"type": "string"}, "kind": {"type": "string"}, "limit": limit},
                "required": ["query"]}),
        }
    }

    fn call(&self, args: &Value, ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        let store = &self.store;
        let owner = ctx.principal.as_str();
        let failed = ToolError::Store;
        match self.kind {
            GraphTool::Remember => {
                let (node, new) = store
                    .remember(owner, string(args, "content")?.trim())
                    .map_err(failed)?;
                Ok(if new {
                    format!("Remembered as #{}.", node.id)
                } else {
                    format!("Already known as #{}.", node.id)
                })
            }
            GraphTool::Recall => {
                let query = string(args, "query")?;
                Ok(list(
                    &store
                        .search(owner, query, None, limit(args)?)
                        .map_err(failed)?,
                    query,
                ))
            }
            GraphTool::Search => {
                let query = string(args, "query")?;
                let kind = optional_string(args, "kind")?;
                Ok(list(
                    &store
                        .search(owner, query, kind, limit(args)?)
                        .map_err(failed)?,
                    query,
                ))
            }
            GraphTool::AddNode => {
                let kind = string(args, "kind")?;
                let label = string(args, "label")?;
                let content = optional_string(args, "content")?.unwrap_or(label);
                let node = store
                    .add_node(owner, kind, label, content, &properties(args)?)
                    .map_err(failed)?;
                Ok(format!("Added node {}.", describe(&node)))
            }
            GraphTool::AddEdge => {
                let (source, target) = (node_id(args, "source")?, node_id(args, "target")?);
                let kind = string(args, "kind")?;
                let edge = store
                    .add_edge(owner, source, target, kind, &properties(args)?)
                    .map_err(failed)?;
                Ok(format!("Edge #{}: #{source} -{kind}-> #{target}.", edge.id))
            }
            GraphTool::Get => {
                let id = node_id(args, "id")?;
                let Some(around) = store.get(owner, id).map_err(failed)? else {
                    return Err(ToolError::NotFound(format!("node #{id}")));
                };
                let mut lines = vec![describe(&around.node)];
                if around
                    .node
                    .properties
                    .as_object()
                    .is_some_and(|p| !p.is_empty())
                {
                    lines.push(format!("properties: {}", around.node.properties));
                }
                for (edge, other) in &around.neighbours {
                    let arrow = if edge.source == id {
                        format!("-{}->", edge.kind)
                    } else {
                        format!("<-{}-", edge.kind)
                    };
                    lines.push(format!("{arrow} {}", describe(other)));
                }
                Ok(lines.join("\n"))
            }
            GraphTool::Delete => {
                let id = node_id(args, "id")?;
                if store.delete(owner, id).map_err(failed)? {
                    Ok(format!("Deleted node #{id} and its edges."))
                } else {
                    Err(ToolError::NotFound(format!("node #{id}")))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::auth::Principal;
    use crate::common::cancel::CancelFlag;
    use crate::store::{PostgresStore, SqliteStore};
    use crate::tools::ToolChain;
    use crate::tools::knowledge::Knowledge;

    /// The tools over each store: SQLite in memory, and a fresh PostgreSQL database.
    fn chains() -> [ToolChain; 2] {
        let url = crate::store::tests::cluster::fresh_database();
        [
            chain(Arc::new(SqliteStore::in_memory().unwrap())),
            chain(Arc::new(PostgresStore::connect(&url, 2).unwrap())),
        ]
    }

    fn chain(store: Arc<dyn GraphStore>) -> ToolChain {
        let mut chain = ToolChain::new();
        for tool in all(&store) {
            chain.add(tool);
        }
        chain
    }

    fn call(chain: &ToolChain, name: &str, args: Value) -> (bool, String) {
        let knowledge = Knowledge::new();
        let cancel = CancelFlag::new();
        let output = chain.call(
            name,
            &args,
            &ToolContext {
                conversation: None,
                principal: &Principal::local(),
                knowledge: &knowledge,
                cancel: &cancel,
                progress: None,
                ask: None,
            },
        );
        (
            output.status == crate::common::protocol::ToolStatus::Success,
            output.text,
        )
    }

    #[test]
    fn builds_and_reads_a_small_graph() {
        for chain in chains() {
            builds_and_reads_a_small_graph_with(&chain);
        }
    }

    fn builds_and_reads_a_small_graph_with(chain: &ToolChain) {
        assert_eq!(
            call(
                chain,
                "remember",
                json!({"content": "Ann drinks green tea"})
            ),
            (true, "Remembered as #1.".into())
        );
        assert_eq!(
            call(
                chain,
                "remember",
                json!({"content": "Ann drinks green tea"})
            ),
            (true, "Already known as #1.".into())
        );
        let (ok, text) = call(
            chain,
            "graph_add_node",
            json!({"kind": "person", "label": "Ann", "properties": {"age": 30}}),
        );
        assert!(ok, "{text}");
        let (ok, text) = call(
            chain,
            "graph_add_edge",
            json!({"source": 2, "target": 1, "kind": "said"}),
        );
        assert!(ok, "{text}");
        let (ok, text) = call(chain, "graph_get", json!({"id": 2}));
        assert!(ok && text.contains("-said-> #1"), "{text}");
        let (ok, text) = call(chain, "recall", json!({"query": "what tea?"}));
        assert!(ok && text.starts_with("1. #1 [fact]"), "{text}");
        let (ok, text) = call(
            chain,
            "graph_search",
            json!({"query": "Ann", "kind": "person"}),
        );
        assert!(
            ok && text.contains("#2 [person] Ann") && !text.contains("#1"),
            "{text}"
        );
        assert!(call(chain, "graph_delete", json!({"id": 2})).0);
        assert!(!call(chain, "graph_delete", json!({"id": 2})).0);
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        for chain in chains() {
            bad_arguments_say_what_is_wrong_with(&chain);
        }
    }

    fn bad_arguments_say_what_is_wrong_with(chain: &ToolChain) {
        for (tool, args, expected) in [
            ("remember", json!({}), "missing argument \"content\""),
            ("remember", json!({"content": "  "}), "must not be empty"),
            ("recall", json!({"query": "x", "limit": 0}), "\"limit\""),
            (
                "graph_add_edge",
                json!({"source": 1, "target": 2, "kind": "x"}),
                "no node #1",
            ),
            (
                "graph_add_edge",
                json!({"source": "a", "target": 2, "kind": "x"}),
                "must be a node id",
            ),
            (
                "graph_add_node",
                json!({"kind": "k", "label": "l", "properties": [1]}),
                "JSON object",
            ),
            ("graph_get", json!({"id": 42}), "no node #42"),
        ] {
            let (ok, text) = call(chain, tool, args);
            assert!(!ok && text.contains(expected), "{tool}: {text}");
        }
    }
}
