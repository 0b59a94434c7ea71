//! MCP tool servers, each started (or, for a `url`, connected to) from the `--mcp-config` file
//! in the background, retried with backoff until it comes up, and spoken to over stdio or
//! Streamable HTTP. Every tool of every server joins the ToolChain as `<server>__<tool>`,
//! through a catalog of the current tools that follows `notifications/tools/list_changed` and
//! restarts; the servers' `instructions` join the system prompt (each text once, capped,
//! unless a server's entry says `"instructions": false`); `mcp_read_resource` reads
//! the resources of servers that offer them, and `/prompt` gets their prompts.
//!
//! `tools/mcp/` is the only place that spawns processes, and the MCP JSON shapes stay private
//! to it. Its files, in reading order:
//!
//! - `config.rs`: the config file, one `ServerSpec` per server (a command, or a URL);
//! - `policy.rs`: each server's `"approve"`, `"timeout"` and `"instructions"`;
//! - `wire.rs`: JSON-RPC messages and the MCP results we read;
//! - `schema.rs`: the check of a tool's `structuredContent` against its `outputSchema`;
//! - `transport.rs`: the seam between the client and its transports;
//! - `process.rs`: a server's process, in a process group of its own, and how it is stopped;
//! - `stdio.rs`: the stdio transport, over a process's pipes;
//! - `http.rs`: the Streamable HTTP transport;
//! - `client/rpc.rs`: JSON-RPC requests matched to answers by id, progress and cancellation;
//! - `client.rs`: `McpClient`, the MCP methods over either transport;
//! - `instructions.rs`: the servers' instructions for the system prompt, each text once and
//!   capped;
//! - `supervisor.rs`: a server restarted after a crash, its tools, and the catalog of every
//!   server's current tools, instructions and prompts;
//! - `resources.rs`: the `mcp_read_resource` tool;
//! - `watch.rs`: the config file watched while the server runs: edited roots apply at once;
//! - `error.rs`: `McpError`;
//! - this file: `load`, `spawn`, `McpServers` (every server of one config).
//!
//! One process (or HTTP session) per configured server is shared by every session. Callers
//! never hold a lock across IO: a request registers a one-shot channel under its id, queues
//! its message for the transport's threads, and waits on the channel, woken at once by its
//! turn's [`CancelFlag`]. A server that dies fails every waiting call with a clear error and
//! is started (or connected) again by the next call.
//!
//! Depends on: `common::cancel`, `common::error`, `tools`, `tools::mcp::config`,
//! `tools::mcp::oauth`, `tools::mcp::oauth::loopback`, `tools::mcp::supervisor`,
//! `tools::mcp::watch`.

mod client;
mod config;
mod error;
mod http;
mod instructions;
mod oauth;
mod policy;
mod process;
mod resources;
mod schema;
mod stdio;
mod supervisor;
mod transport;
mod watch;
mod wire;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use parking_lot::Mutex;

use crate::common::cancel::CancelFlag;
use crate::common::error::{Error, Result};
use crate::tools::{Tool, ToolSource};

use self::config::{ServerEntry, ServerSpec, parse_config};
use self::oauth::Authorizer;
use self::oauth::loopback::{Loopback, Redirect};
use self::supervisor::{Catalog, McpServer, Started, start_server, tools_text};
use self::watch::{ConfigState, Watch};

pub use self::error::{McpError, round_duration};
pub use self::instructions::MAX_INSTRUCTIONS_BYTES;
pub use self::oauth::{
    AuthState, CALLBACK_PATH, CLIENT_DOCUMENT_PATH, OAuthError, OAuthOptions,
    REFRESH_AHEAD_SECONDS, SIGN_IN_TTL, SignIns, client_document,
};
pub use self::policy::CALL_TIMEOUT;
pub use self::supervisor::{
    FIRST_RETRY_DELAY, MAX_RETRY_DELAY, MAX_TOOL_NAME_CHARS, NAME_SEPARATOR, START_TIMEOUT,
    tool_name,
};
pub use self::watch::POLL_INTERVAL;
pub use self::wire::PROTOCOL_VERSION;

/// Starts every server in the MCP config file at `path` and returns them with their tools.
///
/// Servers start side by side. One that cannot be spawned, initialised or listed is logged
/// (`warn`) and left out; the others still load.
///
/// # Errors
///
/// [`Error::Config`] when the file cannot be read or is not an MCP config.
pub fn load(path: &Path) -> Result<McpServers> {
    load_with(path, OAuthOptions::default())
}

/// As [`load`], with the grants of OAuth servers in `oauth`'s store.
///
/// # Errors
///
/// As [`load`].
pub fn load_with(path: &Path, oauth: OAuthOptions) -> Result<McpServers> {
    let (entries, sign_ins) = with_sign_ins(read_config(path)?, oauth);
    let mut servers = McpServers::start(entries);
    servers.sign_ins = sign_ins;
    Ok(servers)
}

/// Gives every `url` server without an `Authorization` header of its own a sign-in.
fn with_sign_ins(
    mut entries: Vec<ServerEntry>,
    oauth: OAuthOptions,
) -> (Vec<ServerEntry>, SignIns) {
    let oauth_servers: Vec<_> = entries
        .iter()
        .filter_map(|(name, spec, _)| match spec {
            ServerSpec::Http(endpoint)
                if !endpoint
                    .headers
                    .keys()
                    .any(|header| header.eq_ignore_ascii_case("authorization")) =>
            {
                Some((name.clone(), endpoint.url.clone(), endpoint.oauth.clone()))
            }
            _ => None,
        })
        .collect();
    let sign_ins = SignIns::new(oauth, oauth_servers);
    for (name, spec, _) in &mut entries {
        if let ServerSpec::Http(endpoint) = spec {
            endpoint.auth = Authorizer(sign_ins.server(name));
        }
    }
    (entries, sign_ins)
}

/// `sparky mcp login NAME`: signs in to server `name` of the config at `path` through a
/// loopback redirect. `show` gets the URL a person opens; the redirect is waited for up to
/// `timeout`. The grant goes to `oauth`'s store.
///
/// # Errors
///
/// [`Error::Config`] for an unreadable config, an unknown server, a failed sign-in or no
/// redirect in time.
pub fn login(
    path: &Path,
    name: &str,
    oauth: OAuthOptions,
    timeout: Duration,
    show: impl FnOnce(&str),
) -> Result<()> {
    let (_, sign_ins) = with_sign_ins(read_config(path)?, oauth);
    let loopback = Loopback::bind().map_err(|e| Error::io("the loopback listener", e))?;
    let url = sign_ins
        .begin(name, &loopback.redirect_uri())
        .map_err(|e| Error::Config(format!("mcp {name}: {e}")))?;
    show(&url);
    match loopback.wait(timeout) {
        Some(Redirect::Code { code, state }) => sign_ins
            .finish(&state, &code)
            .map(|_| ())
            .map_err(|e| Error::Config(format!("mcp {name}: {e}"))),
        Some(Redirect::Refused(why)) => Err(Error::Config(format!(
            "mcp {name}: the sign-in was refused: {why}"
        ))),
        None => Err(Error::Config(format!(
            "mcp {name}: no sign-in came back within {}",
            round_duration(timeout)
        ))),
    }
}

/// Reads the MCP config file at `path` and starts its servers in the background, one
/// `mcp-<name>-start` thread each, returning at once: each server's tools join
/// [`McpServers::source`] when it is up. A server that fails or times out is logged and tried
/// again after a wait that doubles from `first_retry_delay` (normally [`FIRST_RETRY_DELAY`]) up
/// to [`MAX_RETRY_DELAY`], until it starts or the servers shut down. A `mcp-config-watch`
/// thread reads the file again every [`POLL_INTERVAL`]: edited roots reach the running servers
/// at once, other edits wait for a restart (`watch.rs`).
///
/// # Errors
///
/// [`Error::Config`] when the file cannot be read or is not an MCP config, and
/// [`Error::Spawn`] when a start-up thread cannot be created.
pub fn spawn(path: &Path, first_retry_delay: Duration) -> Result<McpServers> {
    spawn_with(path, first_retry_delay, OAuthOptions::default())
}

/// As [`spawn`], with the grants of OAuth servers in `oauth`'s store.
///
/// # Errors
///
/// As [`spawn`].
pub fn spawn_with(
    path: &Path,
    first_retry_delay: Duration,
    oauth: OAuthOptions,
) -> Result<McpServers> {
    let (text, parsed) = read_config_text(path)?;
    let (entries, sign_ins) = with_sign_ins(parsed.clone(), oauth);
    let catalog = Arc::new(Catalog::default());
    let stopping = CancelFlag::new();
    let mut servers = Vec::new();
    let mut starting = Vec::new();
    for (name, spec, policy) in entries {
        let server = McpServer::new(name.clone(), spec, policy, &catalog);
        let (thread_server, thread_stopping) = (server.clone(), stopping.clone());
        let handle = thread::Builder::new()
            .name(format!("mcp-{name}-start"))
            .spawn(move || thread_server.run_start(&thread_stopping, first_retry_delay));
        servers.push(server);
        match handle {
            Ok(handle) => starting.push(handle),
            Err(e) => {
                // What started so far stops when `partial` drops.
                let partial = McpServers {
                    servers,
                    catalog,
                    loaded: Vec::new(),
                    failed: Vec::new(),
                    stopping,
                    starting: Mutex::new(starting),
                    sign_ins,
                    config: None,
                };
                drop(partial);
                return Err(Error::Spawn(e));
            }
        }
    }
    // Edits of the file: roots apply at once, the rest is logged as waiting for a restart.
    let watch = Watch::new(path, text, servers.clone(), parsed);
    let config = watch.state();
    match watch.spawn(stopping.clone()) {
        Ok(handle) => starting.push(handle),
        Err(e) => log::warn!(
            "mcp config {}: not watched, edits need a restart: no thread: {e}",
            path.display()
        ),
    }
    Ok(McpServers {
        servers,
        catalog,
        loaded: Vec::new(),
        failed: Vec::new(),
        stopping,
        starting: Mutex::new(starting),
        sign_ins,
        config: Some(config),
    })
}

/// Reads and parses the MCP config file at `path`.
fn read_config(path: &Path) -> Result<Vec<ServerEntry>> {
    read_config_text(path).map(|(_, entries)| entries)
}

/// Reads and parses the MCP config file at `path`; returns its text too.
fn read_config_text(path: &Path) -> Result<(String, Vec<ServerEntry>)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "cannot read the MCP config {}: {e}",
            path.display()
        ))
    })?;
    let entries = parse_config(&text)
        .map_err(|e| Error::Config(format!("{} is not an MCP config: {e}", path.display())))?;
    Ok((text, entries))
}

/// The MCP servers started from one config file, and their tools. Cheap to keep: the tools
/// hold the servers too, so the ToolChain keeps them alive. Dropping this (or calling
/// [`shutdown`](Self::shutdown)) stops every server process.
pub struct McpServers {
    servers: Vec<Arc<McpServer>>,
    /// Every server's current tools and instructions.
    catalog: Arc<Catalog>,
    /// Each server that started, with how many tools it brought.
    loaded: Vec<(String, usize)>,
    /// Each server that did not start, with why.
    failed: Vec<(String, String)>,
    /// Set by shutdown: background starts give up.
    stopping: CancelFlag,
    /// The `mcp-<name>-start` threads of [`spawn`] and its `mcp-config-watch`, joined by
    /// shutdown. Held only to take them.
    starting: Mutex<Vec<JoinHandle<()>>>,
    /// The sign-ins of its OAuth servers.
    sign_ins: SignIns,
    /// What the watch on the config file found ([`spawn`] only).
    config: Option<Arc<Mutex<ConfigState>>>,
}

/// One server's state, as `/healthz`, `sparky check` and the page show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// Its name in the config.
    pub name: String,
    /// `up`, `starting` or `needs_sign_in`.
    pub state: &'static str,
    /// Its sign-in, for a `url` server that may sign in with OAuth.
    pub auth: Option<AuthState>,
    /// True when its entry was edited in ways that apply only when Sparky restarts (anything
    /// but `"roots"`, which apply at once), or added, or removed.
    pub restart_needed: bool,
}

impl fmt::Debug for McpServers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
        let tools: Vec<String> = self
            .catalog
            .tools()
            .iter()
            .map(|t| t.name().to_owned())
            .collect();
        f.debug_struct("McpServers")
            .field("servers", &names)
            .field("tools", &tools)
            .finish()
    }
}

impl McpServers {
    /// Every current tool of every server that started, in server-name order, under the names
    /// of [`tool_name`]. The list changes when a server announces a new one or restarts.
    pub fn tools(&self) -> Arc<[Arc<dyn Tool>]> {
        self.catalog.tools()
    }

    /// The servers' current tools and instructions, for
    /// [`ToolChain::set_source`](crate::tools::ToolChain::set_source).
    pub fn source(&self) -> Arc<dyn ToolSource> {
        self.catalog.clone()
    }

    /// Each server that started, with how many tools it brought, in name order (for
    /// [`load`]; empty for [`spawn`], whose servers start later).
    pub fn loaded(&self) -> &[(String, usize)] {
        &self.loaded
    }

    /// Each server that did not start, with why (for [`load`]; empty for [`spawn`]).
    pub fn failed(&self) -> &[(String, String)] {
        &self.failed
    }

    /// The sign-ins of its OAuth servers: what the page's Connect button and callback use.
    pub fn sign_ins(&self) -> &SignIns {
        &self.sign_ins
    }

    /// Each server's state, in name order.
    pub fn status(&self) -> Vec<ServerStatus> {
        let restart_needed = self
            .config
            .as_ref()
            .map(|config| config.lock().restart_needed.clone())
            .unwrap_or_default();
        let mut all: Vec<ServerStatus> = self
            .servers
            .iter()
            .map(|server| {
                let auth = server.auth().map(|auth| auth.state());
                let state = if server.is_up() {
                    "up"
                } else if matches!(auth, Some(AuthState::NeedsSignIn(_))) {
                    "needs_sign_in"
                } else {
                    "starting"
                };
                ServerStatus {
                    name: server.name.clone(),
                    state,
                    auth,
                    restart_needed: restart_needed.contains(&server.name),
                }
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Why the config file's current text is not in force (it cannot be read, or is not an
    /// MCP config): the last good one stays. `None` when it is, and for [`load`].
    pub fn config_error(&self) -> Option<String> {
        self.config
            .as_ref()
            .and_then(|config| config.lock().error.clone())
    }

    /// The names of the servers that started.
    pub fn server_names(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.name.clone()).collect()
    }

    /// Stops every server: closes its input, then stops its whole process group (SIGTERM,
    /// then SIGKILL), side by side, one `mcp-<name>-stop` thread each. Returns once every
    /// server's own process has been waited for: at once for servers that exit when their
    /// input closes, after about three seconds at most for one that lingers. Their tools
    /// answer with an error from then on and are not restarted. Calling it twice is harmless.
    pub fn shutdown(&self) {
        // Background starts first: each gives up at once and stops what it had started.
        self.stopping.cancel();
        let starting = std::mem::take(&mut *self.starting.lock());
        for handle in starting {
            if handle.join().is_err() {
                log::warn!("mcp: a start-up or watch thread panicked");
            }
        }
        thread::scope(|scope| {
            for server in &self.servers {
                let stopping = thread::Builder::new()
                    .name(format!("mcp-{}-stop", server.name))
                    .spawn_scoped(scope, || server.shutdown());
                if stopping.is_err() {
                    // No thread: stop this one here instead.
                    server.shutdown();
                }
            }
        });
    }

    /// Starts the servers of a parsed config side by side and keeps those that came up.
    fn start(entries: Vec<ServerEntry>) -> Self {
        let started: Vec<(ServerEntry, Result<Started, McpError>)> = thread::scope(|scope| {
            let spawned: Vec<_> = entries
                .into_iter()
                .map(|(name, spec, policy)| {
                    let (thread_name, thread_spec, thread_policy) =
                        (name.clone(), spec.clone(), policy.clone());
                    let handle = thread::Builder::new()
                        .name(format!("mcp-{name}-start"))
                        .spawn_scoped(scope, move || {
                            start_server(
                                &thread_name,
                                &thread_spec,
                                &thread_policy,
                                thread_policy.roots.clone(),
                                None,
                            )
                        });
                    (name, spec, policy, handle)
                })
                .collect();
            spawned
                .into_iter()
                .map(|(name, spec, policy, handle)| {
                    let result = match handle {
                        Ok(handle) => handle.join().unwrap_or_else(|_| {
                            Err(McpError::Start {
                                server: name.clone(),
                                detail: "its start-up thread panicked".into(),
                            })
                        }),
                        Err(e) => Err(McpError::Start {
                            server: name.clone(),
                            detail: format!("no thread to start it: {e}"),
                        }),
                    };
                    ((name, spec, policy), result)
                })
                .collect()
        });

        let catalog = Arc::new(Catalog::default());
        let mut servers = Vec::new();
        let (mut loaded, mut failed) = (Vec::new(), Vec::new());
        for ((name, spec, policy), result) in started {
            let started = match result {
                Ok(started) => started,
                Err(e) => {
                    log::warn!("mcp {name}: not loaded: {e}");
                    failed.push((name, e.to_string()));
                    continue;
                }
            };
            let server = McpServer::new(name.clone(), spec, policy, &catalog);
            let (_, count) = server.adopt(started);
            log::info!("mcp {name}: loaded with {}", tools_text(count));
            loaded.push((name, count));
            servers.push(server);
        }
        McpServers {
            servers,
            catalog,
            loaded,
            failed,
            stopping: CancelFlag::new(),
            starting: Mutex::default(),
            sign_ins: SignIns::new(OAuthOptions::default(), []),
            config: None,
        }
    }
}

impl Drop for McpServers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_reports_a_missing_or_broken_file_as_a_config_error() {
        let missing = load(Path::new("/nonexistent/sparky-mcp.json")).unwrap_err();
        assert!(matches!(&missing, Error::Config(detail) if detail.contains("cannot read")));
        let path = std::env::temp_dir().join(format!("sparky-mcp-bad-{}.json", std::process::id()));
        std::fs::write(&path, "{\"mcpServers\": [").unwrap();
        let broken = load(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(matches!(&broken, Error::Config(detail) if detail.contains("not an MCP config")));
    }
}
