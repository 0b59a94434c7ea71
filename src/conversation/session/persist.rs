//! Every write a session makes to the store is built here and handed to the journal, so that
//! what a row holds is decided in one place.
//!
//! Depends on: `common::error`, `common::protocol`, `conversation::journal`, `conversation::session`, `model`, `store`, `tools::knowledge`.

use std::sync::Arc;
use std::time::Duration;

use crate::common::error::Result;
use crate::common::protocol::{ServerFrame, SessionId, Usage};
use crate::conversation::journal::{Durable, Journal};
use crate::model::ChatMessage;
use crate::store::{Closing, TurnMark, WriteOp};
use crate::tools::knowledge::NoteWriter;

use super::WireText;

/// How long a rename or a deletion waits for the store to start it; past it, it is not made.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One session's writer: its id and the journal.
#[derive(Clone, Debug)]
pub struct Persist {
    journal: Journal,
    session: SessionId,
}

impl Persist {
    /// Writes for `session` through `journal`.
    pub fn new(journal: Journal, session: SessionId) -> Self {
        Persist { journal, session }
    }

    /// True while the store refuses writes (see [`Journal::failing`]).
    pub fn failing(&self) -> bool {
        self.journal.failing()
    }

    /// Waits until everything queued so far is written; false when `timeout` passed first.
    pub fn sync(&self, timeout: Duration) -> bool {
        self.journal.sync(timeout)
    }

    /// The new conversation's row.
    pub fn create(
        &self,
        owner: &str,
        user_id: Option<&str>,
        personality: Option<&str>,
        model: Option<&str>,
    ) {
        self.submit(WriteOp::CreateSession {
            id: self.session.clone(),
            owner: owner.to_owned(),
            user_id: user_id.map(str::to_owned),
            personality: personality.map(str::to_owned),
            model: model.map(str::to_owned),
        });
    }

    /// An event; `ack` is told once it is committed. `reset` marks a closing frame whose turn
    /// cleared the history before it (`history_reset`).
    pub fn event(
        &self,
        seq: u64,
        body: &WireText,
        frame: &ServerFrame,
        reset: bool,
        ack: Arc<dyn Durable>,
    ) {
        let turn = turn_mark(frame, reset);
        let search_text = search_text(frame);
        let op = WriteOp::Event {
            session: self.session.clone(),
            seq,
            body: body.clone(),
            turn,
            search_text,
        };
        self.journal.submit(op, Some((ack, seq)));
    }

    /// Messages of turn `turn` (`0`: the seeded history) appended to the conversation,
    /// numbered from `first`.
    pub fn messages(&self, first: u64, turn: u64, messages: Vec<ChatMessage>) {
        self.submit(WriteOp::Messages {
            session: self.session.clone(),
            first,
            turn,
            messages,
        });
    }

    /// Streamed frames for the other instances, following event `after` (see `relay.rs`).
    pub fn relay(&self, after: u64, frames: &str) {
        self.submit(WriteOp::Relay {
            session: self.session.clone(),
            detail: format!("{after} {frames}"),
        });
    }

    /// A new title, if `owner` owns the conversation, written at once (ahead of a batch the
    /// store refuses; see [`Journal::write_alone`]).
    ///
    /// # Errors
    ///
    /// The store's, when it did not write the title (or did not answer in time).
    pub fn rename(&self, owner: &str, title: &str) -> Result<()> {
        let op = WriteOp::Rename {
            session: self.session.clone(),
            owner: owner.to_owned(),
            title: title.to_owned(),
        };
        self.journal.write_alone(op, WRITE_TIMEOUT)
    }

    /// Removes the conversation and everything of it, at once (ahead of a batch the store
    /// refuses, together with every write for it queued so far; see
    /// [`Journal::write_alone`]).
    ///
    /// # Errors
    ///
    /// The store's, when it did not delete it (or did not answer in time).
    pub fn delete(&self) -> Result<()> {
        let op = WriteOp::DeleteSession {
            session: self.session.clone(),
        };
        self.journal.write_alone(op, WRITE_TIMEOUT)
    }

    fn submit(&self, op: WriteOp) {
        self.journal.submit(op, None);
    }
}

impl NoteWriter for Persist {
    fn note(&self, text: &str) {
        self.submit(WriteOp::Note {
            session: self.session.clone(),
            text: text.to_owned(),
        });
    }
}

/// What an event frame does to its turn's bookkeeping in the store; `reset` marks a closing
/// frame whose turn cleared the history before it. Imports mark their events with it too, so
/// that an imported turn is stored as a chatted one is.
pub fn turn_mark(frame: &ServerFrame, reset: bool) -> TurnMark {
    match frame {
        ServerFrame::UserMessage {
            turn_id,
            parent,
            text,
            client_id,
            ..
        } => TurnMark::Opened {
            turn_id: turn_id.0,
            text: text.clone(),
            parent: parent.map_or(turn_id.0.saturating_sub(1), |p| p.0),
            client_id: client_id.clone(),
        },
        ServerFrame::Branch { leaf } => TurnMark::Branch { leaf: leaf.0 },
        ServerFrame::Message { usage, .. } => TurnMark::Closed {
            usage: usage.unwrap_or_default(),
            closing: Closing::Message,
            reset,
        },
        ServerFrame::Error {
            turn_id: Some(_), ..
        } => TurnMark::Closed {
            usage: Usage::default(),
            closing: Closing::Error,
            reset,
        },
        frame if frame.closes_turn() => TurnMark::Closed {
            usage: Usage::default(),
            closing: Closing::Cancelled,
            reset,
        },
        _ => TurnMark::None,
    }
}

/// The text of an event frame that the conversation search looks at: user messages and
/// answers.
pub fn search_text(frame: &ServerFrame) -> Option<String> {
    match frame {
        ServerFrame::UserMessage { text, .. } | ServerFrame::Message { text, .. } => {
            Some(text.clone())
        }
        _ => None,
    }
}
