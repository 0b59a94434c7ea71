//! `Knowledge`: the short-term notes of one session, sandboxed to it, and written through the
//! journal when the server persists sessions. Depends on `journal`, `store` and `protocol`.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::journal::Journal;
use crate::protocol::SessionId;
use crate::store::WriteOp;

/// Notes that belong to one session and vanish with it. A cheap-to-clone handle: the session
/// owns one and the tools of its turns get a clone.
///
/// The lock guards only the list of notes and is held for a push (and its non-blocking journal
/// submit, so the store keeps the same order) or a copy.
#[derive(Clone, Default)]
pub struct Knowledge {
    notes: Arc<Mutex<Vec<String>>>,
    journal: Option<(Journal, SessionId)>,
}

impl fmt::Debug for Knowledge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Knowledge")
            .field("notes", &self.notes.lock().len())
            .finish_non_exhaustive()
    }
}

impl Knowledge {
    /// Empty knowledge that lives in memory only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Knowledge of `session` holding `notes`, whose new notes are written through `journal`.
    pub fn persistent(journal: Journal, session: SessionId, notes: Vec<String>) -> Self {
        Knowledge {
            notes: Arc::new(Mutex::new(notes)),
            journal: Some((journal, session)),
        }
    }

    /// Adds a note and returns how many the session now holds.
    pub fn add_note(&self, text: &str) -> usize {
        let mut notes = self.notes.lock();
        notes.push(text.to_owned());
        if let Some((journal, session)) = &self.journal {
            journal.submit(
                WriteOp::Note {
                    session: session.clone(),
                    text: text.to_owned(),
                },
                None,
            );
        }
        notes.len()
    }

    /// A copy of every note, oldest first.
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().clone()
    }
}
