//! `Knowledge`: the short-term notes of one session, sandboxed to it. Depends on nothing in the
//! crate.

use std::sync::Arc;

use parking_lot::Mutex;

/// Notes that belong to one session and vanish with it. A cheap-to-clone handle: the session
/// owns one and the tools of its turns get a clone.
///
/// The lock guards only the list of notes and is held for a push or a copy, never across IO.
#[derive(Clone, Debug, Default)]
pub struct Knowledge {
    notes: Arc<Mutex<Vec<String>>>,
}

impl Knowledge {
    /// Empty knowledge.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a note and returns how many the session now holds.
    pub fn add_note(&self, text: &str) -> usize {
        let mut notes = self.notes.lock();
        notes.push(text.to_owned());
        notes.len()
    }

    /// A copy of every note, oldest first.
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().clone()
    }
}
