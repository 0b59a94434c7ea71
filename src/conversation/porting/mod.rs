//! Export and import of whole conversations (PROTOCOL.md section 10, `GET
//! /api/conversations/{id}/export` and `POST /api/import`). This file holds what every format
//! is read into, an [`Imported`] conversation (its turns numbered 1, 2, 3, … in the order they
//! started, each after a turn before it), the caps an import is held to, the reading of a body
//! ([`read`]: which format each conversation is in, and whether it can be read at all), and the
//! writes that store an imported conversation exactly as if it had been chatted ([`writes`]):
//! a `user_message` event per turn (with its parent), the turn's own events, its closing frame,
//! and the messages the model sees on its path.
//!
//! - `sparky.rs`: Sparky's own format, written by the export and read back.
//! - `chatgpt.rs`: a ChatGPT data export's `conversations.json` (its `mapping` tree).
//! - `claude.rs`: a Claude data export's `conversations.json`.
//! - `tree.rs`: a tree of foreign messages made into turns (both foreign formats).
//!
//! Depends on: `common::protocol`, `conversation::session::persist`, `model`, `store`.

pub mod chatgpt;
pub mod claude;
pub mod sparky;
pub mod tree;

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::common::protocol::{Attachment, ServerFrame, SessionId, StatusCode, TurnId, encode};
use crate::conversation::session::{search_text, turn_mark};
use crate::model::{ChatMessage, Role};
use crate::store::WriteOp;

/// Bytes an import body may hold at most (and the most one export holds, so that what is
/// exported can be imported again).
pub const MAX_IMPORT_BYTES: usize = 50 << 20;

/// How deep `[` and `{` may nest in an import body: deeper than any export, and below
/// `serde_json`'s own limit, so that a hostile body is refused with a clear reason before it is
/// parsed.
pub const MAX_IMPORT_NESTING: usize = 100;

/// Conversations one import may hold at most.
pub const MAX_IMPORT_CONVERSATIONS: usize = 1_000;

/// Messages (ChatGPT nodes, Claude messages, Sparky turns) one imported conversation may hold
/// at most.
pub const MAX_IMPORT_MESSAGES: usize = 20_000;

/// Turns one import may make at most, all conversations together.
pub const MAX_IMPORT_TURNS: usize = 100_000;

/// Events one imported turn may carry at most (Sparky's format).
pub const MAX_TURN_EVENTS: usize = 10_000;

/// Characters of an imported conversation's model name kept at most.
pub const MAX_MODEL_CHARS: usize = 200;

/// One conversation read from an import, ready to be written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imported {
    /// Its title, if the export gave one.
    pub title: Option<String>,
    /// Its system prompt (Sparky's `persona`).
    pub persona: Option<String>,
    /// Its turns: turn `n` at index `n - 1`.
    pub turns: Vec<ImportedTurn>,
    /// The last turn of its current path (`1..=turns.len()`).
    pub leaf: u64,
    /// Unix seconds it was created, when the export says.
    pub created_at: Option<i64>,
    /// Unix seconds it was last active, when the export says.
    pub updated_at: Option<i64>,
    /// The model it used, when the export says.
    pub model: Option<String>,
}

/// One turn of an [`Imported`] conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedTurn {
    /// The turn it follows (`0`: the start); always a turn before it.
    pub parent: u64,
    /// The user's words.
    pub text: String,
    /// The files its message carried (kept only when the importer owns them).
    pub attachments: Vec<Attachment>,
    /// The turn an `edit` replaced, if any (Sparky's format).
    pub edit_of: Option<u64>,
    /// The turn a `regenerate` answered again, if any (Sparky's format).
    pub regenerate_of: Option<u64>,
    /// Its events between the `user_message` and the closing frame (Sparky's format).
    pub middle: Vec<ServerFrame>,
    /// Its closing frame: a `message`, a turn `error` or a `status cancelled`.
    pub closing: ServerFrame,
    /// Unix seconds it started, when the export says.
    pub created_at: Option<i64>,
}

impl ImportedTurn {
    /// A turn with the user's `text` after `parent`, closed by `answer` (a `message`), or by
    /// `status cancelled` when there is none.
    pub fn answered(id: u64, parent: u64, text: String, answer: Option<String>) -> Self {
        let closing = match answer {
            Some(text) => ServerFrame::Message {
                turn_id: TurnId(id),
                text,
                usage: None,
            },
            None => unanswered(id),
        };
        ImportedTurn {
            parent,
            text,
            attachments: Vec::new(),
            edit_of: None,
            regenerate_of: None,
            middle: Vec::new(),
            closing,
            created_at: None,
        }
    }

    /// What the model sees of the turn: the user's words and the answer, when there is one.
    fn messages(&self) -> Vec<ChatMessage> {
        let mut messages = vec![ChatMessage::text(Role::User, self.text.clone())];
        let answer = match &self.closing {
            ServerFrame::Message { text, .. } => Some(text.as_str()),
            ServerFrame::Error { text, .. } => text.as_deref(),
            ServerFrame::Status(status) => status.text.as_deref(),
            _ => None,
        };
        messages.push(ChatMessage::text(
            Role::Assistant,
            answer.unwrap_or_default(),
        ));
        messages
    }
}

/// Unix seconds of an RFC 3339 time (Claude's and Sparky's exports), or `None` when it is not
/// one.
pub fn rfc3339_seconds(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp)
}

/// Unix seconds of a time given as fractional unix seconds (ChatGPT's exports), or `None` when
/// it is no time a calendar holds.
pub fn float_seconds(seconds: f64) -> Option<i64> {
    let whole = seconds.floor();
    if !whole.is_finite() || whole.abs() > 1e15 {
        return None;
    }
    let whole = whole as i64;
    time::OffsetDateTime::from_unix_timestamp(whole)
        .ok()
        .map(|_| whole)
}

/// The closing frame of an imported turn that has no answer.
pub fn unanswered(id: u64) -> ServerFrame {
    ServerFrame::status(
        StatusCode::Cancelled,
        "imported without an answer",
        Some(TurnId(id)),
    )
}

/// Why an import cannot be read: which conversation (its place in the body, from 0, and its
/// title when it has one) and what is wrong. Nothing of the import is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportError {
    /// The conversation's place in the body, when the fault is in one.
    pub index: Option<usize>,
    /// Its title, when it has one.
    pub title: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl ImportError {
    /// A fault of the body as a whole.
    pub fn body(reason: impl Into<String>) -> Self {
        ImportError {
            index: None,
            title: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.index, &self.title) {
            (Some(index), Some(title)) => {
                write!(f, "conversation {index} (\"{title}\"): {}", self.reason)
            }
            (Some(index), None) => write!(f, "conversation {index}: {}", self.reason),
            _ => f.write_str(&self.reason),
        }
    }
}

/// Reads an import body: one Sparky export, a list of them, a ChatGPT `conversations.json` or
/// a Claude one (a list may mix them). Conversations with nothing to import (no user message)
/// are left out. Every conversation is read before anything is written, and the first that
/// cannot be read fails the whole import.
///
/// # Errors
///
/// [`ImportError`] naming the conversation and the reason: the body is not JSON, is nested too
/// deeply, holds too many conversations, messages or turns, a conversation is in no known
/// format, has fields of the wrong type, or a tree that loops.
pub fn read(body: &[u8]) -> Result<Vec<Imported>, ImportError> {
    let text =
        std::str::from_utf8(body).map_err(|_| ImportError::body("the body is not UTF-8 text"))?;
    let depth = crate::common::protocol::nesting_depth(text);
    if depth > MAX_IMPORT_NESTING {
        return Err(ImportError::body(format!(
            "the body is nested {depth} levels deep; an import may nest {MAX_IMPORT_NESTING} at most"
        )));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ImportError::body(format!("the body is not JSON: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => {
            return Err(ImportError::body(
                "the body must be a conversation or a list of conversations",
            ));
        }
    };
    if items.is_empty() {
        return Err(ImportError::body("the list holds no conversation"));
    }
    if items.len() > MAX_IMPORT_CONVERSATIONS {
        return Err(ImportError::body(format!(
            "the list holds {} conversations; one import may hold {MAX_IMPORT_CONVERSATIONS} at most",
            items.len()
        )));
    }
    let mut imported = Vec::with_capacity(items.len());
    let mut turns = 0usize;
    for (index, item) in items.into_iter().enumerate() {
        let title = item
            .get("title")
            .or_else(|| item.get("name"))
            .and_then(Value::as_str)
            .map(|title| title.chars().take(80).collect::<String>());
        let fail = |reason: String| ImportError {
            index: Some(index),
            title: title.clone(),
            reason,
        };
        let conversation = if item.get("format").is_some() {
            sparky::read(item)
        } else if item.get("mapping").is_some() {
            chatgpt::read(item)
        } else if item.get("chat_messages").is_some() {
            claude::read(item)
        } else if item.is_object() {
            Err(
                "not a Sparky export (\"format\"), a ChatGPT conversation (\"mapping\") or a \
                 Claude one (\"chat_messages\")"
                    .to_owned(),
            )
        } else {
            Err(format!(
                "a conversation must be a JSON object, not {}",
                kind(&item)
            ))
        }
        .map_err(fail)?;
        turns += conversation.turns.len();
        if turns > MAX_IMPORT_TURNS {
            return Err(fail(format!(
                "the import makes more than {MAX_IMPORT_TURNS} turns, the most one import may make"
            )));
        }
        if !conversation.turns.is_empty() {
            imported.push(conversation);
        }
    }
    Ok(imported)
}

/// The name of a JSON value's type, for a reason.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The writes that store `conversation` as `id`, owned by `owner`: its row (and title), then
/// per turn its `user_message`, its events, its closing frame and its messages, and a `branch`
/// to its leaf when that is not its newest turn. Events are numbered from 1.
pub fn writes(conversation: &Imported, id: &SessionId, owner: &str) -> Vec<WriteOp> {
    let mut ops = vec![WriteOp::CreateSession {
        id: id.clone(),
        owner: owner.to_owned(),
        user_id: None,
        personality: conversation.persona.clone(),
        model: None,
    }];
    if let Some(title) = conversation.title.as_ref().filter(|t| !t.trim().is_empty()) {
        ops.push(WriteOp::Rename {
            session: id.clone(),
            owner: owner.to_owned(),
            title: title.trim().chars().take(80).collect(),
        });
    }
    let mut seq = 0u64;
    let mut event = |ops: &mut Vec<WriteOp>, frame: &ServerFrame| {
        seq += 1;
        ops.push(WriteOp::Event {
            session: id.clone(),
            seq,
            body: Arc::from(encode(frame, Some(id), Some(seq))),
            turn: turn_mark(frame, false),
            search_text: search_text(frame),
        });
    };
    let mut next_message = 0u64;
    for (index, turn) in conversation.turns.iter().enumerate() {
        let turn_id = index as u64 + 1;
        let opening = ServerFrame::UserMessage {
            turn_id: TurnId(turn_id),
            parent: Some(TurnId(turn.parent)),
            text: turn.text.clone(),
            attachments: turn.attachments.clone(),
            client_id: None,
            edit_of: turn.edit_of.map(TurnId),
            regenerate_of: turn.regenerate_of.map(TurnId),
        };
        event(&mut ops, &opening);
        for frame in &turn.middle {
            event(&mut ops, frame);
        }
        event(&mut ops, &turn.closing);
        let messages = turn.messages();
        let first = next_message;
        next_message += messages.len() as u64;
        ops.push(WriteOp::Messages {
            session: id.clone(),
            first,
            turn: turn_id,
            messages,
        });
    }
    let newest = conversation.turns.len() as u64;
    if conversation.leaf != newest && conversation.leaf > 0 {
        event(
            &mut ops,
            &ServerFrame::Branch {
                leaf: TurnId(conversation.leaf),
            },
        );
    }
    ops.extend(kept_dates(conversation, id));
    ops
}

/// The write that keeps an imported conversation's own times and model: its creation (or its
/// first turn's time), its last activity (or its newest turn's time, or its creation), each
/// turn's time; `None` when the export gives none of them.
fn kept_dates(conversation: &Imported, id: &SessionId) -> Option<WriteOp> {
    let turns: Vec<(u64, i64)> = conversation
        .turns
        .iter()
        .enumerate()
        .filter_map(|(index, turn)| Some((index as u64 + 1, turn.created_at?)))
        .collect();
    let first = turns.iter().map(|(_, at)| *at).min();
    let last = turns.iter().map(|(_, at)| *at).max();
    let created_at = conversation.created_at.or(first);
    let updated_at = conversation
        .updated_at
        .or(last)
        .or(created_at)
        .map(|updated| created_at.map_or(updated, |created| updated.max(created)));
    let model = conversation
        .model
        .as_deref()
        .map(str::trim)
        .filter(|model| !model.is_empty())
        .map(|model| model.chars().take(MAX_MODEL_CHARS).collect::<String>());
    if created_at.is_none() && updated_at.is_none() && model.is_none() && turns.is_empty() {
        return None;
    }
    Some(WriteOp::KeepDates {
        session: id.clone(),
        created_at,
        updated_at,
        model,
        turns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_not_a_list_of_conversations_says_why() {
        assert!(read(b"[]").unwrap_err().reason.contains("no conversation"));
        assert!(
            read(b"42")
                .unwrap_err()
                .reason
                .contains("list of conversations")
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(read(deep.as_bytes()).unwrap_err().reason.contains("nested"));
        let error = read(br#"[{"title": "x", "what": 1}]"#).unwrap_err();
        assert_eq!(error.index, Some(0));
        assert!(error.to_string().contains("\"x\""), "{error}");
    }

    #[test]
    fn writes_number_events_and_branch_to_the_leaf() {
        let conversation = Imported {
            title: Some("t".into()),
            persona: None,
            turns: vec![
                ImportedTurn::answered(1, 0, "a".into(), Some("A".into())),
                ImportedTurn::answered(2, 0, "b".into(), None),
            ],
            leaf: 1,
            ..Imported::default()
        };
        let id = SessionId::from_random_bytes([7; 16]);
        let ops = writes(&conversation, &id, "me");
        let seqs: Vec<u64> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Event { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert!(matches!(
            ops.last(),
            Some(WriteOp::Event {
                turn: crate::store::TurnMark::Branch { leaf: 1 },
                ..
            })
        ));
    }
}
