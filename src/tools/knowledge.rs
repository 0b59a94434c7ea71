//! `Knowledge`: the short-term notes of one session, sandboxed to it. Each new note also goes
//! to a [`NoteWriter`] (the session's store writer), so the notes outlive the process.
//!
//! Depends on: `tools::error`.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::tools::error::ToolError;

/// Notes one session may hold at most.
pub const MAX_NOTES: usize = 200;

/// Bytes of notes one session may hold at most.
pub const MAX_NOTE_BYTES: usize = 512 * 1024;

/// Where a session's new notes are written.
pub trait NoteWriter: Send + Sync {
    /// Keeps a note. Never blocks.
    fn note(&self, text: &str);
}

/// Notes that belong to one session and vanish with it. A cheap-to-clone handle: the session
/// owns one and the tools of its turns get a clone.
///
/// The lock guards only the list of notes and is held for a push (and its non-blocking write,
/// so the store keeps the same order) or a copy.
#[derive(Clone, Default)]
pub struct Knowledge {
    notes: Arc<Mutex<Vec<String>>>,
    writer: Option<Arc<dyn NoteWriter>>,
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

    /// Knowledge holding `notes`, whose new notes are also given to `writer`.
    pub fn persistent(writer: Arc<dyn NoteWriter>, notes: Vec<String>) -> Self {
        Knowledge {
            notes: Arc::new(Mutex::new(notes)),
            writer: Some(writer),
        }
    }

    /// Adds a note and returns how many the session now holds.
    ///
    /// # Errors
    ///
    /// [`ToolError::NotesFull`] when the session holds [`MAX_NOTES`] notes or the new one
    /// would take it past [`MAX_NOTE_BYTES`].
    pub fn add_note(&self, text: &str) -> Result<usize, ToolError> {
        let mut notes = self.notes.lock();
        let bytes: usize = notes.iter().map(String::len).sum();
        if notes.len() >= MAX_NOTES || bytes + text.len() > MAX_NOTE_BYTES {
            return Err(ToolError::NotesFull {
                notes: notes.len(),
                bytes,
                max_notes: MAX_NOTES,
                max_bytes: MAX_NOTE_BYTES,
            });
        }
        notes.push(text.to_owned());
        if let Some(writer) = &self.writer {
            writer.note(text);
        }
        Ok(notes.len())
    }

    /// Puts `notes` in place of the notes held (read again from the store), writing nothing.
    pub fn replace_notes(&self, notes: Vec<String>) {
        *self.notes.lock() = notes;
    }

    /// A copy of every note, oldest first.
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().clone()
    }
}
