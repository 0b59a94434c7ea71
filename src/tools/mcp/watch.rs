//! The `--mcp-config` file, watched while the server runs: a `mcp-config-watch` thread reads
//! it every [`POLL_INTERVAL`] and, when its text changed, parses it again. Each running
//! server whose `"roots"` changed gets them at once (and `notifications/roots/list_changed`);
//! any other change (a server added, removed or given another command, url, `"approve"`,
//! `"timeout"`, …) is logged as waiting for a restart. A file that no longer parses is logged
//! with the reason, and the config in force stays as it was.
//!
//! Depends on: `common::cancel`, `tools::mcp::config`, `tools::mcp::supervisor`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use parking_lot::Mutex;

use super::config::{ServerEntry, parse_config};
use super::supervisor::McpServer;
use crate::common::cancel::CancelFlag;

/// How often the config file is read again. A config is a few KB, so it is read whole and
/// its text compared: that catches an edit that keeps the size and the modification time.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a look at the config file found.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Changes {
    /// The servers whose roots were given to them, in name order.
    pub(super) roots: Vec<String>,
    /// The servers whose other changes wait for a restart, in name order.
    pub(super) pending: Vec<String>,
}

/// What the watcher last found, for `/healthz`.
#[derive(Debug, Default)]
pub(super) struct ConfigState {
    /// Why the file's current text is not applied (unreadable, or not an MCP config).
    pub(super) error: Option<String>,
    /// The servers whose edits wait for a restart, in name order.
    pub(super) restart_needed: Vec<String>,
}

/// The config as the watcher last applied it.
pub(super) struct Watch {
    path: PathBuf,
    /// What it found, shared with [`McpServers`](super::McpServers). Held only to read or
    /// replace it.
    state: Arc<Mutex<ConfigState>>,
    /// The running servers.
    servers: Vec<Arc<McpServer>>,
    /// The entries the servers were started from, as parsed (before sign-ins were attached).
    started: Vec<ServerEntry>,
    /// The text last read (or the error reading it), so each edit is handled and logged once.
    last: Result<String, String>,
}

impl Watch {
    /// A watch on `path`, whose text was `text` when `servers` were started from `started`.
    pub(super) fn new(
        path: &Path,
        text: String,
        servers: Vec<Arc<McpServer>>,
        started: Vec<ServerEntry>,
    ) -> Self {
        Watch {
            path: path.to_owned(),
            state: Arc::default(),
            servers,
            started,
            last: Ok(text),
        }
    }

    /// What it finds, as it finds it.
    pub(super) fn state(&self) -> Arc<Mutex<ConfigState>> {
        self.state.clone()
    }

    /// Starts the `mcp-config-watch` thread, which looks at the file every [`POLL_INTERVAL`]
    /// until `stopping` is set.
    ///
    /// # Errors
    ///
    /// When the thread cannot be created.
    pub(super) fn spawn(mut self, stopping: CancelFlag) -> std::io::Result<JoinHandle<()>> {
        thread::Builder::new()
            .name("mcp-config-watch".into())
            .spawn(move || {
                while !stopping.sleep(POLL_INTERVAL) {
                    self.look();
                }
            })
    }

    /// Reads the file once and applies what changed since the last look; `None` when nothing
    /// did (or the new text could not be read or parsed, which is logged).
    pub(super) fn look(&mut self) -> Option<Changes> {
        let path = self.path.display().to_string();
        let read = std::fs::read_to_string(&self.path).map_err(|e| e.to_string());
        if read == self.last {
            return None;
        }
        self.last = read.clone();
        let text = match read {
            Ok(text) => text,
            Err(e) => {
                log::warn!("mcp config {path}: cannot read it ({e}); the servers keep theirs");
                self.state.lock().error = Some(format!("cannot read it: {e}"));
                return None;
            }
        };
        let entries = match parse_config(&text) {
            Ok(entries) => entries,
            Err(e) => {
                log::warn!(
                    "mcp config {path}: the edit is not applied, it is not an MCP config: {e}; \
                     the previous one stays in force"
                );
                self.state.lock().error = Some(format!("not an MCP config: {e}"));
                return None;
            }
        };
        let changes = self.apply(entries);
        *self.state.lock() = ConfigState {
            error: None,
            restart_needed: changes.pending.clone(),
        };
        if !changes.pending.is_empty() {
            log::warn!(
                "mcp config {path}: changes to {} take effect when sparky restarts (only \
                 \"roots\" apply at once)",
                changes.pending.join(", ")
            );
        }
        Some(changes)
    }

    /// Gives each running server the roots `entries` list for it, and names the servers whose
    /// other settings differ from those they started with.
    fn apply(&mut self, entries: Vec<ServerEntry>) -> Changes {
        let mut changes = Changes {
            roots: Vec::new(),
            pending: Vec::new(),
        };
        for (name, spec, policy) in &entries {
            if let Some(server) = self.servers.iter().find(|server| &server.name == name)
                && server.roots() != policy.roots
            {
                log::info!(
                    "mcp {name}: roots now {}",
                    policy
                        .roots
                        .iter()
                        .map(|root| root.uri.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                server.set_roots(policy.roots.clone());
                changes.roots.push(name.clone());
            }
            let same = self.started.iter().any(|(was, was_spec, was_policy)| {
                was == name && was_spec == spec && {
                    // Roots apply at once; everything else is compared.
                    let mut was_policy = was_policy.clone();
                    was_policy.roots.clone_from(&policy.roots);
                    was_policy == *policy
                }
            });
            if !same {
                changes.pending.push(name.clone());
            }
        }
        for (was, ..) in &self.started {
            if !entries.iter().any(|(name, ..)| name == was) {
                changes.pending.push(was.clone());
            }
        }
        changes.pending.sort();
        changes.pending.dedup();
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::mcp::config::ServerSpec;
    use crate::tools::mcp::policy::Root;
    use crate::tools::mcp::supervisor::Catalog;

    fn write(path: &Path, servers: &str) {
        std::fs::write(path, format!("{{\"mcpServers\": {{{servers}}}}}")).unwrap();
    }

    #[test]
    fn roots_apply_at_once_and_other_edits_wait_for_a_restart() {
        let path =
            std::env::temp_dir().join(format!("sparky-mcp-watch-{}.json", std::process::id()));
        write(
            &path,
            r#""a": {"command": "a", "roots": ["file:///one"]}, "b": {"command": "b"}"#,
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let started = parse_config(&text).unwrap();
        let catalog = Arc::new(Catalog::default());
        let servers: Vec<Arc<McpServer>> = started
            .iter()
            .map(|(name, spec, policy)| {
                McpServer::new(name.clone(), spec.clone(), policy.clone(), &catalog)
            })
            .collect();
        let mut watch = Watch::new(&path, text, servers.clone(), started);
        assert_eq!(watch.look(), None, "nothing changed");

        write(
            &path,
            r#""a": {"command": "a", "roots": ["file:///two"]}, "b": {"command": "b"}"#,
        );
        let changes = watch.look().unwrap();
        assert_eq!(changes.roots, ["a"]);
        assert!(changes.pending.is_empty(), "{changes:?}");
        let two = vec![Root {
            uri: "file:///two".into(),
            name: None,
        }];
        assert_eq!(servers[0].roots(), two);
        assert_eq!(watch.look(), None, "the same text again");

        // A broken edit changes nothing, and says why.
        std::fs::write(&path, "{\"mcpServers\": {").unwrap();
        assert_eq!(watch.look(), None);
        assert_eq!(servers[0].roots(), two);
        let error = watch.state().lock().error.clone().unwrap();
        assert!(error.contains("not an MCP config"), "{error}");

        // Another command, a new server and a removed one wait for a restart.
        write(
            &path,
            r#""a": {"command": "a2", "roots": ["file:///two"]}, "c": {"command": "c"}"#,
        );
        let changes = watch.look().unwrap();
        assert!(changes.roots.is_empty(), "{changes:?}");
        assert_eq!(changes.pending, ["a", "b", "c"]);
        assert_eq!(watch.state().lock().restart_needed, ["a", "b", "c"]);
        assert_eq!(watch.state().lock().error, None);
        assert!(
            matches!(&watch.started[0].1, ServerSpec::Stdio(command) if command.command == "a")
        );

        // A file that went away is logged once and changes nothing.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(watch.look(), None);
        assert_eq!(servers[0].roots(), two);
    }
}
