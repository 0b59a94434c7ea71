//! The resume point the terminal client keeps between runs: the conversation's id and the
//! highest `seq` it has shown, in a small JSON file written atomically.
//!
//! Depends on nothing in the crate.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The resume point kept in the state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// The conversation to resume; `None` before the first one.
    pub session_id: Option<String>,
    /// The highest `seq` seen in `session_id`; 0 when none yet.
    #[serde(default)]
    pub last_seq: u64,
}

impl SavedState {
    /// Reads the state file; a missing file is a fresh start.
    ///
    /// # Errors
    ///
    /// The reason, when the file cannot be read or is not a state file.
    pub fn load(path: &Path) -> Result<SavedState, String> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SavedState::default()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Writes the state to a temporary file beside `path` and renames it over `path`, so that
    /// a crash mid-write never leaves a torn file.
    ///
    /// # Errors
    ///
    /// The file system's error.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut temp = path.as_os_str().to_owned();
        temp.push(format!(".{}.tmp", std::process::id()));
        fs::write(&temp, serde_json::to_vec_pretty(self)?)?;
        fs::rename(&temp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_a_missing_file_is_a_fresh_start() {
        let dir = std::env::temp_dir().join(format!("sparky-client-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert_eq!(SavedState::load(&path).unwrap(), SavedState::default());
        let state = SavedState {
            session_id: Some("ab".repeat(16)),
            last_seq: 7,
        };
        state.save(&path).unwrap();
        assert_eq!(SavedState::load(&path).unwrap(), state);
        fs::write(&path, "not json").unwrap();
        assert!(SavedState::load(&path).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
