//! `StartError`: what stops `sparky` before the server runs, a file a flag names that cannot be
//! read or a setting that cannot be used. Its text is what `sparky` prints after `sparky: `,
//! and what `sparky check` prints on a FAIL line.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What stops a start.
#[derive(Debug)]
pub enum StartError {
    /// A file that a flag names cannot be read.
    Read {
        /// The flag, e.g. `--auth-token-file`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A setting, or a combination of them, cannot be used; the text says which and why.
    Setting(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Read { flag, path, source } => {
                write!(f, "cannot read {flag} {}: {source}", path.display())
            }
            StartError::Setting(detail) => f.write_str(detail),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Read { source, .. } => Some(source),
            StartError::Setting(_) => None,
        }
    }
}
