//! A conversation of a ChatGPT data export (`conversations.json`): `title`, `create_time` and
//! `update_time` (unix seconds, fractional), `default_model_slug`, `mapping` (`{node id: {id, message, parent, children}}`, a tree whose root has no message)
//! and `current_node`, the end of the path shown. Older exports have no `current_node` (the
//! newest message is taken), may give `parts` as objects rather than strings, and use the
//! content types `text`, `multimodal_text` and `code`. System and tool messages, hidden ones
//! and non-text parts (images, files) are passed over; code is kept as a fenced block of the
//! answer. A turn keeps its user message's `create_time`; the conversation keeps the
//! `model_slug` of its newest answer that names one (in the message's `metadata`), else its
//! `default_model_slug`. `tree.rs` makes the turns.
//!
//! Depends on: `conversation::porting`, `conversation::porting::tree`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::tree::{Author, Message, turns};
use super::{Imported, float_seconds};

#[derive(Debug, Deserialize)]
struct Conversation {
    #[serde(default)]
    title: Option<String>,
    mapping: BTreeMap<String, Node>,
    #[serde(default)]
    current_node: Option<String>,
    #[serde(default)]
    create_time: Option<f64>,
    #[serde(default)]
    update_time: Option<f64>,
    #[serde(default)]
    default_model_slug: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Node {
    #[serde(default)]
    message: Option<NodeMessage>,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    children: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct NodeMessage {
    author: NodeAuthor,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    create_time: Option<f64>,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct NodeAuthor {
    role: String,
}

#[derive(Debug, Deserialize)]
struct Content {
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    parts: Option<Vec<Value>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    language: Option<String>,
}

/// Reads one ChatGPT conversation.
///
/// # Errors
///
/// Why it cannot be read: a field of the wrong type, a `mapping` that loops or is
/// inconsistent.
pub fn read(value: Value) -> Result<Imported, String> {
    let conversation: Conversation =
        serde_json::from_value(value).map_err(|e| format!("not a ChatGPT conversation: {e}"))?;
    // The model of the newest answer that names one, else the conversation's default.
    let mut model: Option<(f64, String)> = None;
    let messages: Vec<Message> = conversation
        .mapping
        .into_iter()
        .map(|(id, node)| {
            let (author, text, time) = match node.message {
                Some(message) => {
                    let hidden = message
                        .metadata
                        .as_ref()
                        .and_then(|m| m.get("is_visually_hidden_from_conversation"))
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    let author = match message.author.role.as_str() {
                        _ if hidden => Author::Other,
                        "user" => Author::User,
                        "assistant" => Author::Assistant,
                        _ => Author::Other,
                    };
                    let slug = message
                        .metadata
                        .as_ref()
                        .and_then(|m| m.get("model_slug"))
                        .and_then(Value::as_str);
                    if let (Author::Assistant, Some(slug)) = (author, slug) {
                        let at = message.create_time.unwrap_or(f64::NEG_INFINITY);
                        if model.as_ref().is_none_or(|(newest, _)| at >= *newest) {
                            model = Some((at, slug.to_owned()));
                        }
                    }
                    let text = message.content.map(text_of).unwrap_or_default();
                    (author, text, message.create_time)
                }
                None => (Author::Other, String::new(), None),
            };
            Message {
                id,
                parent: node.parent,
                children: node.children,
                author,
                text,
                time,
                created_at: time.and_then(float_seconds),
            }
        })
        .collect();
    let (turns, leaf) = turns(messages, conversation.current_node.as_deref())?;
    Ok(Imported {
        title: conversation.title,
        persona: None,
        turns,
        leaf,
        created_at: conversation.create_time.and_then(float_seconds),
        updated_at: conversation.update_time.and_then(float_seconds),
        model: model
            .map(|(_, slug)| slug)
            .or(conversation.default_model_slug),
    })
}

/// The text of a message's content: its string parts (and the `text` of object parts) joined,
/// or its `text`; code as a fenced block.
fn text_of(content: Content) -> String {
    let kind = content.content_type.as_deref().unwrap_or("text");
    if kind == "code" {
        let code = content.text.unwrap_or_default();
        if code.trim().is_empty() {
            return String::new();
        }
        let language = content
            .language
            .filter(|l| l != "unknown")
            .unwrap_or_default();
        return format!("```{language}\n{code}\n```");
    }
    if !matches!(kind, "text" | "multimodal_text") {
        return String::new();
    }
    let parts: Vec<String> = content
        .parts
        .unwrap_or_default()
        .into_iter()
        .filter_map(|part| match part {
            Value::String(text) => Some(text),
            Value::Object(object) => object
                .get("text")
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        })
        .filter(|text| !text.trim().is_empty())
        .collect();
    if parts.is_empty() {
        content.text.unwrap_or_default()
    } else {
        parts.join("\n\n")
    }
}
