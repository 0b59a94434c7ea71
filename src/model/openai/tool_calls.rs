//! Tool calls as they stream in: fragments matched to calls by `index` and id, arguments
//! joined from pieces (or taken whole, as some servers send them), Ollama's several whole calls
//! at one index kept apart, and the arguments read as a JSON object at the end.
//!
//! Depends on: `model`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::model::{ToolArgs, ToolCall};

/// Numbers the tool calls a server sent without an id, unique for the process.
static NEXT_CALL_ID: AtomicU64 = AtomicU64::new(1);

/// A tool call's arguments as they arrive.
#[derive(Debug)]
enum Arguments {
    /// Pieces of a JSON text (the usual shape).
    Text(String),
    /// A JSON value (some servers send an object instead of a string).
    Value(Value),
}

impl Arguments {
    /// True when the arguments so far form a whole JSON document: more pieces would break it.
    fn complete(&self) -> bool {
        match self {
            Arguments::Value(_) => true,
            Arguments::Text(text) => {
                !text.trim().is_empty() && serde_json::from_str::<Value>(text).is_ok()
            }
        }
    }

    /// The arguments as a JSON object. Empty or `null` arguments are `{}`; a JSON text that
    /// holds an object as a string is unwrapped; anything else that is not an object is
    /// passed on as [`ToolArgs::Unparsed`], for the bot to answer with an error.
    fn into_args(self) -> ToolArgs {
        let raw = match self {
            Arguments::Value(Value::Null) => return ToolArgs::Parsed(json!({})),
            Arguments::Value(value @ Value::Object(_)) => return ToolArgs::Parsed(value),
            Arguments::Value(other) => other.to_string(),
            Arguments::Text(text) if text.trim().is_empty() => return ToolArgs::Parsed(json!({})),
            Arguments::Text(text) => text,
        };
        match serde_json::from_str::<Value>(&raw) {
            Ok(Value::Null) => ToolArgs::Parsed(json!({})),
            Ok(value @ Value::Object(_)) => ToolArgs::Parsed(value),
            Ok(Value::String(inner)) => match serde_json::from_str::<Value>(&inner) {
                Ok(value @ Value::Object(_)) => ToolArgs::Parsed(value),
                _ => ToolArgs::Unparsed(raw),
            },
            _ => ToolArgs::Unparsed(raw),
        }
    }
}

/// A tool call being streamed.
#[derive(Debug)]
struct PartialCall {
    index: Option<u64>,
    id: Option<String>,
    name: String,
    arguments: Arguments,
}

/// Accumulates streamed tool-call fragments into calls.
///
/// Fragments are matched to calls by `index`. A fragment starts a new call, even at an index
/// already used, when it carries an id different from the call's, or when the call's
/// arguments are already a whole JSON document and the fragment brings a name or whole
/// arguments of its own (Ollama sends several complete calls all at index 0). Two argument
/// objects are never glued together.
#[derive(Debug, Default)]
pub(super) struct ToolCalls {
    calls: Vec<PartialCall>,
}

impl ToolCalls {
    /// Takes one fragment of a delta's `tool_calls`.
    pub(super) fn add(&mut self, fragment: &Value) {
        let index = fragment.get("index").and_then(Value::as_u64);
        let id = fragment
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty());
        let function = fragment.get("function").unwrap_or(&Value::Null);
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty());
        let arguments = function.get("arguments").unwrap_or(&Value::Null);
        let whole_arguments = match arguments {
            Value::Null => false,
            Value::String(text) => {
                matches!(serde_json::from_str::<Value>(text), Ok(Value::Object(_)))
            }
            _ => true,
        };
        let found = match index {
            Some(_) => self.calls.iter().rposition(|call| call.index == index),
            None => self.calls.len().checked_sub(1),
        };
        let same = found.filter(|&at| {
            let call = &self.calls[at];
            match (id, call.id.as_deref()) {
                (Some(new), Some(old)) => new == old,
                _ => !(call.arguments.complete() && (name.is_some() || whole_arguments)),
            }
        });
        let call = match same {
            Some(at) => &mut self.calls[at],
            None => {
                self.calls.push(PartialCall {
                    index,
                    id: None,
                    name: String::new(),
                    arguments: Arguments::Text(String::new()),
                });
                let last = self.calls.len() - 1;
                &mut self.calls[last]
            }
        };
        if call.id.is_none() {
            call.id = id.map(str::to_owned);
        }
        if let Some(name) = name
            && call.name != name
        {
            call.name.push_str(name);
        }
        match (arguments, &mut call.arguments) {
            (Value::Null, _) => {}
            (Value::String(piece), Arguments::Text(text)) => text.push_str(piece),
            (Value::String(piece), Arguments::Value(value)) => {
                if !piece.is_empty() {
                    let mut text = value.to_string();
                    text.push_str(piece);
                    call.arguments = Arguments::Text(text);
                }
            }
            (value, Arguments::Text(text)) if text.trim().is_empty() => {
                call.arguments = Arguments::Value(value.clone());
            }
            (value, _) => {
                log::debug!("tool call {:?}: ignoring extra arguments {value}", call.id);
            }
        }
    }

    /// The calls, each with an id (one of our own where the server gave none); fragments
    /// with neither a name nor whole arguments are left out.
    pub(super) fn finish(self) -> Vec<ToolCall> {
        self.calls
            .into_iter()
            .filter(|call| !call.name.is_empty() || call.arguments.complete())
            .map(|call| ToolCall {
                id: call.id.unwrap_or_else(|| {
                    format!("call_{}", NEXT_CALL_ID.fetch_add(1, Ordering::Relaxed))
                }),
                name: call.name,
                args: call.arguments.into_args(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_arguments_holding_an_object_or_null_are_parsed() {
        let doubly = Arguments::Text("\"{\\\"x\\\": 1}\"".into());
        assert_eq!(doubly.into_args(), ToolArgs::Parsed(json!({"x": 1})));
        assert_eq!(
            Arguments::Text("null".into()).into_args(),
            ToolArgs::Parsed(json!({}))
        );
    }
}
