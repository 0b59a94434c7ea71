//! What the `--mcp-config` file says about how a server's tools are used, beside how to start
//! it: which calls ask a person first (`"approve"`), how long a call may go without an
//! answer or a progress report (`"timeout"`), and whether its instructions join the system
//! prompt (`"instructions"`). Plain data; depends on `config` (durations).
//!
//! Depends on: `common::config`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a `tools/call` may take before it is cancelled and reported as timed out.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Which of a server's tools ask a person before each call (`"approve"` in its config entry).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawApprove")]
pub(super) enum Approve {
    /// No `"approve"`: ask for the tools whose hints do not promise they only read
    /// (`destructiveHint: true`, or no `readOnlyHint: true`).
    #[default]
    ByHints,
    /// `"always"`: ask before every call of every tool of the server.
    Always,
    /// `"never"`: never ask, whatever the hints say.
    Never,
    /// `["tool", …]`: ask for these tools (the server's own names), never for the others.
    Tools(BTreeSet<String>),
}

/// `"approve"` as written: a word or a list of tool names.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawApprove {
    Word(String),
    Tools(Vec<String>),
}

impl TryFrom<RawApprove> for Approve {
    type Error = String;

    fn try_from(raw: RawApprove) -> Result<Self, String> {
        match raw {
            RawApprove::Word(word) if word == "always" => Ok(Approve::Always),
            RawApprove::Word(word) if word == "never" => Ok(Approve::Never),
            RawApprove::Word(word) => Err(format!(
                "\"approve\" is {word:?}; it must be \"always\", \"never\" or a list of tool names"
            )),
            RawApprove::Tools(tools) => Ok(Approve::Tools(tools.into_iter().collect())),
        }
    }
}

/// What a tool's `annotations` say about it, as far as approval goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Hints {
    /// `readOnlyHint`: the tool changes nothing.
    pub(super) read_only: Option<bool>,
    /// `destructiveHint`: the tool may destroy or overwrite something.
    pub(super) destructive: Option<bool>,
}

impl Approve {
    /// True when a call of `tool` (its own name on its server) must wait for a person.
    pub(super) fn asks(&self, tool: &str, hints: Hints) -> bool {
        match self {
            Approve::ByHints => hints.destructive == Some(true) || hints.read_only != Some(true),
            Approve::Always => true,
            Approve::Never => false,
            Approve::Tools(tools) => tools.contains(tool),
        }
    }
}

/// How long one `tools/call` may wait for its answer: from the call, and again from each
/// progress report (`"timeout"` in the config entry: seconds, or a duration such as `"90s"` or
/// `"5m"`; 60 s when absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawTimeout")]
pub(super) struct CallTimeout(pub(super) Duration);

impl Default for CallTimeout {
    fn default() -> Self {
        CallTimeout(CALL_TIMEOUT)
    }
}

/// `"timeout"` as written.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawTimeout {
    Seconds(f64),
    Text(String),
}

impl TryFrom<RawTimeout> for CallTimeout {
    type Error = String;

    fn try_from(raw: RawTimeout) -> Result<Self, String> {
        let duration = match raw {
            RawTimeout::Seconds(seconds) if seconds.is_finite() && seconds > 0.0 => {
                Duration::try_from_secs_f64(seconds).map_err(|e| format!("\"timeout\": {e}"))?
            }
            RawTimeout::Seconds(seconds) => {
                return Err(format!(
                    "\"timeout\" is {seconds}; it must be a positive number of seconds"
                ));
            }
            RawTimeout::Text(text) => crate::common::config::parse_duration(&text)
                .map_err(|e| format!("\"timeout\" {text:?}: {e}"))?,
        };
        if duration.is_zero() {
            return Err("\"timeout\" must be longer than zero".to_owned());
        }
        Ok(CallTimeout(duration))
    }
}

/// One root a server may work in (MCP's `Root`), as its entry's `"roots"` lists it: a
/// `file://` URI, or `{"uri", "name"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RootEntry")]
pub(super) struct Root {
    /// The root's URI.
    pub(super) uri: String,
    /// A name for people, when the entry gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
}

/// How the config may write a root.
#[derive(Deserialize)]
#[serde(untagged)]
enum RootEntry {
    /// Just the URI.
    Uri(String),
    /// The URI and a name.
    Named { uri: String, name: Option<String> },
}

impl From<RootEntry> for Root {
    fn from(entry: RootEntry) -> Self {
        match entry {
            RootEntry::Uri(uri) => Root { uri, name: None },
            RootEntry::Named { uri, name } => Root { uri, name },
        }
    }
}

/// A server's `"approve"`, `"timeout"`, `"instructions"` and `"roots"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ServerPolicy {
    /// Which of its tools ask first.
    pub(super) approve: Approve,
    /// How long a call may wait without an answer or progress.
    pub(super) timeout: CallTimeout,
    /// Whether the `instructions` it gives at `initialize` join the system prompt (`true`
    /// unless its entry says `"instructions": false`).
    pub(super) instructions: bool,
    /// What `roots/list` answers it (its entry's `"roots"`; none by default).
    pub(super) roots: Vec<Root>,
}

impl Default for ServerPolicy {
    fn default() -> Self {
        ServerPolicy {
            approve: Approve::default(),
            timeout: CallTimeout::default(),
            instructions: true,
            roots: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approve(json: &str) -> Result<Approve, serde_json::Error> {
        serde_json::from_str(json)
    }

    fn timeout(json: &str) -> Result<Duration, serde_json::Error> {
        serde_json::from_str::<CallTimeout>(json).map(|t| t.0)
    }

    #[test]
    fn approve_is_a_word_or_a_list_and_the_default_follows_the_hints() {
        let plain = Hints::default();
        let read_only = Hints {
            read_only: Some(true),
            destructive: None,
        };
        let destructive_reader = Hints {
            read_only: Some(true),
            destructive: Some(true),
        };
        let by_hints = Approve::default();
        assert!(by_hints.asks("write", plain));
        assert!(!by_hints.asks("read", read_only));
        assert!(by_hints.asks("odd", destructive_reader));
        let always = approve(r#""always""#).unwrap();
        assert!(always.asks("read", read_only));
        let never = approve(r#""never""#).unwrap();
        assert!(!never.asks("write", plain));
        let listed = approve(r#"["read"]"#).unwrap();
        assert!(listed.asks("read", read_only));
        assert!(!listed.asks("write", plain));
        let error = approve(r#""sometimes""#).unwrap_err().to_string();
        assert!(error.contains("\"always\", \"never\" or a list"), "{error}");
        assert!(approve("3").is_err());
    }

    #[test]
    fn a_timeout_is_seconds_or_a_duration_and_never_zero() {
        assert_eq!(timeout("90").unwrap(), Duration::from_secs(90));
        assert_eq!(timeout("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(timeout(r#""5m""#).unwrap(), Duration::from_secs(300));
        assert!(timeout("0").is_err());
        assert!(timeout("-1").is_err());
        assert!(timeout(r#""0s""#).is_err());
        assert!(timeout(r#""soon""#).is_err());
        assert_eq!(CallTimeout::default().0, CALL_TIMEOUT);
    }
}
