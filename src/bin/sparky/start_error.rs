//! `StartError`: what stops `sparky` before the server runs, a file a flag names that cannot be
//! read, a token with no usable value (a line of the tokens file, an `--auth-token`, an entry of
//! `SPARKY_AUTH_TOKENS`), or a setting that cannot be used. Its text is what `sparky` prints
//! after `sparky: `, and what `sparky check` prints on a FAIL line.

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
    /// A line of `--auth-token-file` that holds no usable token.
    TokenLine {
        /// The file.
        path: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// What is wrong with it.
        problem: TokenProblem,
    },
    /// An `--auth-token` value, or an entry of `SPARKY_AUTH_TOKENS`, that is no usable token.
    TokenValue {
        /// Where it was given: `--auth-token` or `SPARKY_AUTH_TOKENS`.
        origin: &'static str,
        /// Which one, from 1: the nth `--auth-token`, or the nth comma-separated entry.
        entry: usize,
        /// What is wrong with it.
        problem: TokenProblem,
    },
    /// A setting, or a combination of them, cannot be used; the text says which and why.
    Setting(String),
}

/// What is wrong with a token: a line of `--auth-token-file`, an `--auth-token`, an entry of
/// `SPARKY_AUTH_TOKENS`. The text never holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// The token is empty, blank, or colons only (a line `:`).
    Empty,
    /// The token is shorter than `inputs::MIN_TOKEN_CHARS`.
    TooShort,
    /// A `name:` with nothing after the colon, in the tokens file.
    NameWithoutToken,
    /// An `--auth-token` or `SPARKY_AUTH_TOKENS` value that ends with a colon, as a `name:`
    /// with its token left out would (names are given in the tokens file only).
    TrailingColon,
}

impl fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenProblem::Empty => f.write_str("the token is empty"),
            TokenProblem::TrailingColon => f.write_str(
                "the token ends with a colon, like a name with its token left out (names go in \
                 --auth-token-file as name:token)",
            ),
            TokenProblem::TooShort => write!(
                f,
                "the token is shorter than {} characters",
                crate::inputs::MIN_TOKEN_CHARS
            ),
            TokenProblem::NameWithoutToken => f.write_str(
                "a name with no token after its colon (write name:token, or :token for a token \
                 that holds a colon)",
            ),
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Read { flag, path, source } => {
                write!(f, "cannot read {flag} {}: {source}", path.display())
            }
            StartError::TokenLine {
                path,
                line,
                problem,
            } => write!(
                f,
                "--auth-token-file {} line {line}: {problem}",
                path.display()
            ),
            StartError::TokenValue {
                origin,
                entry,
                problem,
            } => write!(f, "{origin} (entry {entry}): {problem}"),
            StartError::Setting(detail) => f.write_str(detail),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Read { source, .. } => Some(source),
            StartError::TokenLine { .. }
            | StartError::TokenValue { .. }
            | StartError::Setting(_) => None,
        }
    }
}
