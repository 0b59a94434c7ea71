//! A conversation of a Claude data export (`conversations.json`): `uuid`, `name`,
//! `created_at` and `updated_at` (RFC 3339, kept), a `model` when it names one, and
//! `chat_messages`, each `{uuid, sender: "human" | "assistant", text, content:
//! [{type: "text", text}], created_at, parent_message_uuid?}`. Newer exports link each message
//! to its parent (a tree: edits and retries are siblings; a parent the conversation does not
//! hold, such as the all-zero uuid, is the start), and may name `current_leaf_message_uuid`;
//! older ones are a list in order (each message follows the one before it). Content that is not
//! text (tool use, thinking, files) is passed over. A turn keeps its human message's
//! `created_at`. `tree.rs` makes the turns.
//!
//! Depends on: `conversation::porting`, `conversation::porting::tree`.

use serde::Deserialize;
use serde_json::Value;

use super::tree::{Author, Message, turns};
use super::{Imported, rfc3339_seconds};

#[derive(Debug, Deserialize)]
struct Conversation {
    #[serde(default)]
    name: Option<String>,
    chat_messages: Vec<ChatMessage>,
    #[serde(default)]
    current_leaf_message_uuid: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    #[serde(default)]
    uuid: Option<String>,
    sender: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    content: Option<Vec<Part>>,
    #[serde(default)]
    parent_message_uuid: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// Reads one Claude conversation.
///
/// # Errors
///
/// Why it cannot be read: a field of the wrong type, an unknown sender, a message without a
/// `uuid` in a tree, a tree that loops.
pub fn read(value: Value) -> Result<Imported, String> {
    let conversation: Conversation =
        serde_json::from_value(value).map_err(|e| format!("not a Claude conversation: {e}"))?;
    let linked = conversation
        .chat_messages
        .iter()
        .any(|message| message.parent_message_uuid.is_some());
    let mut messages = Vec::with_capacity(conversation.chat_messages.len());
    let mut previous: Option<String> = None;
    for (at, message) in conversation.chat_messages.into_iter().enumerate() {
        let author = match message.sender.as_str() {
            "human" | "user" => Author::User,
            "assistant" => Author::Assistant,
            other => return Err(format!("message {at} has an unknown sender {other:?}")),
        };
        let id = match (message.uuid, linked) {
            (Some(id), _) => id,
            (None, false) => format!("#{at}"),
            (None, true) => return Err(format!("message {at} has no uuid")),
        };
        let parent = if linked {
            message.parent_message_uuid
        } else {
            previous.replace(id.clone())
        };
        let parts: Vec<String> = message
            .content
            .unwrap_or_default()
            .into_iter()
            .filter(|part| part.kind == "text")
            .filter_map(|part| part.text)
            .filter(|text| !text.trim().is_empty())
            .collect();
        let text = if parts.is_empty() {
            message.text.unwrap_or_default()
        } else {
            parts.join("\n\n")
        };
        messages.push(Message {
            id,
            parent,
            children: None,
            author,
            text,
            // The export's order is the order they were written.
            time: Some(at as f64),
            created_at: message.created_at.as_deref().and_then(rfc3339_seconds),
        });
    }
    let current = if linked {
        conversation.current_leaf_message_uuid
    } else {
        None
    };
    let (turns, leaf) = turns(messages, current.as_deref())?;
    Ok(Imported {
        title: conversation.name,
        persona: None,
        turns,
        leaf,
        created_at: conversation.created_at.as_deref().and_then(rfc3339_seconds),
        updated_at: conversation.updated_at.as_deref().and_then(rfc3339_seconds),
        model: conversation.model,
    })
}
