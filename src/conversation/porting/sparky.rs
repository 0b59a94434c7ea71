//! Sparky's own format for one conversation, as `GET /api/conversations/{id}/export` writes it
//! and `POST /api/import` reads it back:
//!
//! ```json
//! {"format": "sparky-conversation", "version": 1, "id", "title", "created_at", "updated_at",
//!  "model",
//!  "persona", "leaf",
//!  "turns": [{"turn_id", "parent", "text", "attachments", "created_at", "closing",
//!             "events": [the turn's events, exactly as they were sent]}],
//!  "files": [{"id", "name", "content_type", "size"}]}
//! ```
//!
//! Every turn of every branch is in it. Read back, the turns keep their numbers, parents, words
//! and events (renumbered for the new conversation) and their times, the conversation its
//! title, times and model; `branch` events and events of no turn are
//! left out, a turn without a closing frame is closed as cancelled, and the leaf is kept. The
//! files are listed, not carried: an attachment stays only when the importer owns the file.
//!
//! Depends on: `common::protocol`, `conversation::porting`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{
    Imported, ImportedTurn, MAX_IMPORT_MESSAGES, MAX_TURN_EVENTS, rfc3339_seconds, unanswered,
};
use crate::common::protocol::{Attachment, ServerEnvelope, ServerFrame};

/// The `format` of a Sparky export.
pub const FORMAT: &str = "sparky-conversation";

/// The `version` this build writes and reads.
pub const VERSION: u64 = 1;

/// A whole conversation as the export writes it.
#[derive(Debug, Serialize)]
pub struct Export {
    /// [`FORMAT`].
    pub format: &'static str,
    /// [`VERSION`].
    pub version: u64,
    /// The conversation's id.
    pub id: String,
    /// Its title.
    pub title: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: its last activity.
    pub updated_at: String,
    /// The model its turns use.
    pub model: String,
    /// Its system prompt, if it has its own.
    pub persona: Option<String>,
    /// The last turn of its current path.
    pub leaf: u64,
    /// Every turn, oldest first.
    pub turns: Vec<ExportTurn>,
    /// The files it uses.
    pub files: Vec<ExportFile>,
}

/// One turn of an [`Export`].
#[derive(Debug, Serialize)]
pub struct ExportTurn {
    /// Its id.
    pub turn_id: u64,
    /// The turn it follows.
    pub parent: u64,
    /// The user's words.
    pub text: String,
    /// The files its message carried.
    pub attachments: Vec<Attachment>,
    /// RFC 3339.
    pub created_at: String,
    /// `message`, `error`, `cancelled`, or `null` while it runs.
    pub closing: Option<&'static str>,
    /// Its events as they were sent, oldest first.
    pub events: Vec<Box<RawValue>>,
}

/// A file an [`Export`] lists.
#[derive(Debug, Serialize)]
pub struct ExportFile {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its type.
    pub content_type: String,
    /// Its size in bytes.
    pub size: u64,
}

#[derive(Debug, Deserialize)]
struct Document {
    format: String,
    version: u64,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    persona: Option<String>,
    #[serde(default)]
    leaf: u64,
    turns: Vec<Turn>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Turn {
    turn_id: u64,
    parent: u64,
    text: String,
    #[serde(default)]
    attachments: Vec<Attachment>,
    #[serde(default)]
    events: Vec<Value>,
    #[serde(default)]
    created_at: Option<String>,
}

/// Reads one conversation in Sparky's format.
///
/// # Errors
///
/// Why it cannot be read: another format or version, a field of the wrong type, turns that are
/// not numbered 1, 2, 3, … each after an earlier one, an event that is not a server frame or
/// belongs to another turn, a leaf that is no turn.
pub fn read(value: Value) -> Result<Imported, String> {
    let document: Document =
        serde_json::from_value(value).map_err(|e| format!("not a Sparky export: {e}"))?;
    if document.format != FORMAT {
        return Err(format!("format {:?} is not {FORMAT:?}", document.format));
    }
    if document.version != VERSION {
        return Err(format!(
            "version {} of Sparky's format; this server reads version {VERSION}",
            document.version
        ));
    }
    if document.turns.len() > MAX_IMPORT_MESSAGES {
        return Err(format!(
            "{} turns; a conversation may hold {MAX_IMPORT_MESSAGES} at most",
            document.turns.len()
        ));
    }
    let mut source = document.turns;
    source.sort_by_key(|turn| turn.turn_id);
    let mut turns = Vec::with_capacity(source.len());
    for (index, turn) in source.into_iter().enumerate() {
        let id = index as u64 + 1;
        if turn.turn_id != id {
            return Err(format!(
                "turn {} where turn {id} was expected: turns are numbered 1, 2, 3, …",
                turn.turn_id
            ));
        }
        if turn.parent >= id {
            return Err(format!(
                "turn {id} follows turn {}, which is not an earlier turn",
                turn.parent
            ));
        }
        if turn.text.is_empty() && turn.attachments.is_empty() {
            return Err(format!("turn {id} has no text"));
        }
        if turn.events.len() > MAX_TURN_EVENTS {
            return Err(format!(
                "turn {id} has {} events; a turn may have {MAX_TURN_EVENTS} at most",
                turn.events.len()
            ));
        }
        let mut imported = ImportedTurn {
            parent: turn.parent,
            text: turn.text,
            attachments: turn.attachments,
            edit_of: None,
            regenerate_of: None,
            middle: Vec::new(),
            closing: unanswered(id),
            created_at: turn.created_at.as_deref().and_then(rfc3339_seconds),
        };
        let mut closed = false;
        for (at, event) in turn.events.into_iter().enumerate() {
            let envelope: ServerEnvelope = serde_json::from_value(event)
                .map_err(|e| format!("turn {id}, event {at}: not a server frame: {e}"))?;
            let frame = envelope.frame;
            if matches!(frame, ServerFrame::Branch { .. }) || closed {
                continue;
            }
            let Some(owner) = frame.turn_id() else {
                continue;
            };
            if owner.0 != id {
                return Err(format!(
                    "turn {id}, event {at}: the event belongs to turn {owner}"
                ));
            }
            match frame {
                ServerFrame::UserMessage {
                    edit_of,
                    regenerate_of,
                    ..
                } => {
                    imported.edit_of = edit_of.map(|t| t.0).filter(|t| (1..id).contains(t));
                    imported.regenerate_of =
                        regenerate_of.map(|t| t.0).filter(|t| (1..id).contains(t));
                }
                frame if frame.closes_turn() => {
                    imported.closing = frame;
                    closed = true;
                }
                frame => imported.middle.push(frame),
            }
        }
        turns.push(imported);
    }
    let count = turns.len() as u64;
    let leaf = match document.leaf {
        0 => count,
        leaf if leaf <= count => leaf,
        leaf => return Err(format!("the leaf {leaf} is not one of its {count} turns")),
    };
    Ok(Imported {
        title: document.title,
        persona: document.persona,
        turns,
        leaf,
        created_at: document.created_at.as_deref().and_then(rfc3339_seconds),
        updated_at: document.updated_at.as_deref().and_then(rfc3339_seconds),
        model: document.model,
    })
}
