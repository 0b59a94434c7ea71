//! MCP tool servers, each started (or, for a `url`, connected to) from the `--mcp-config` file
//! in the background, retried with backoff until it comes up, and spoken to over stdio or
//! Streamable HTTP. Every tool of every server joins the ToolChain as `<server>__<tool>`,
//! through a catalog of the current tools that follows `notifications/tools/list_changed` and
//! restarts; each server's `instructions` join the system prompt; `mcp_read_resource` reads
//! the resources of servers that offer them, and `/prompt` gets their prompts. Depends on
//! `cancel`, `error` and `tools`.
//!
//! `tools/mcp/` is the only place that spawns processes, and the MCP JSON shapes stay private
//! to it. Its files, in reading order:
//!
//! - `config.rs`: the config file, one `ServerSpec` per server (a command, or a URL);
//! - `policy.rs`: each server's `"approve"` and `"timeout"`;
//! - `wire.rs`: JSON-RPC messages and the MCP results we read;
//! - `schema.rs`: the check of a tool's `structuredContent` against its `outputSchema`;
//! - `transport.rs`: the seam between the client and its transports;
//! - `process.rs`: a server's process, in a process group of its own, and how it is stopped;
//! - `stdio.rs`: the stdio transport, over a process's pipes;
//! - `http.rs`: the Streamable HTTP transport;
//! - `client.rs`: `McpClient`, requests matched to answers by id over either transport;
//! - `supervisor.rs`: a server restarted after a crash, its tools, and the catalog of every
//!   server's current tools and prompts;
//! - `resources.rs`: the `mcp_read_resource` tool;
//! - this file: `load`, `McpServers` (every server of one config), `McpError`, tool names.
//!
//! One process (or HTTP session) per configured server is shared by every session. Callers
//! never hold a lock across IO: a request registers a one-shot channel under its id, queues
//! its message for the transport's threads, and waits on the channel, woken at once by its
//! turn's [`CancelFlag`]. A server that dies fails every waiting call with a clear error and
//! is started (or connected) again by the next call.

mod client;
mod config;
mod http;
mod policy;
mod process;
mod resources;
mod schema;
mod stdio;
mod supervisor;
mod transport;
mod wire;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use parking_lot::Mutex;

use crate::cancel::CancelFlag;
use crate::error::{Error, Result};
use crate::tools::{Tool, ToolSource};

use self::config::{ServerEntry, parse_config};
use self::supervisor::{Catalog, McpServer, Started, start_server, tools_text};

/// The MCP revision Sparky asks for in `initialize`. It is the newest revision with the
/// `initialize` handshake: 2026-07-28 made the protocol stateless, and servers that speak it
/// still accept this handshake from older clients.
pub const PROTOCOL_VERSION: &str = "2025-11-25";

/// How long a `tools/call` may take before it is cancelled and reported as timed out.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a server has to start: spawn, `initialize` and every page of `tools/list`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the first wait is before a server that failed to start is tried again; each
/// failure doubles it, up to [`MAX_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The longest wait between two tries at starting a server.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// Longest tool name the model may see (the OpenAI function-name limit).
pub const MAX_TOOL_NAME_CHARS: usize = 64;

/// What stands between the server's name and the tool's name in [`tool_name`].
pub const NAME_SEPARATOR: &str = "__";

/// Starts every server in the MCP config file at `path` and returns them with their tools.
///
/// Servers start side by side. One that cannot be spawned, initialised or listed is logged
/// (`warn`) and left out; the others still load.
///
/// # Errors
///
/// [`Error::Config`] when the file cannot be read or is not an MCP config.
pub fn load(path: &Path) -> Result<McpServers> {
    Ok(McpServers::start(read_config(path)?))
}

/// Reads the MCP config file at `path` and starts its servers in the background, one
/// `mcp-<name>-start` thread each, returning at once: each server's tools join
/// [`McpServers::source`] when it is up. A server that fails or times out is logged and tried
/// again after a wait that doubles from `first_retry_delay` (normally [`FIRST_RETRY_DELAY`]) up
/// to [`MAX_RETRY_DELAY`], until it starts or the servers shut down.
///
/// # Errors
///
/// [`Error::Config`] when the file cannot be read or is not an MCP config, and
/// [`Error::Spawn`] when a start-up thread cannot be created.
pub fn spawn(path: &Path, first_retry_delay: Duration) -> Result<McpServers> {
    let entries = read_config(path)?;
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
                };
                drop(partial);
                return Err(Error::Spawn(e));
            }
        }
    }
    Ok(McpServers {
        servers,
        catalog,
        loaded: Vec::new(),
        failed: Vec::new(),
        stopping,
        starting: Mutex::new(starting),
    })
}

/// Reads and parses the MCP config file at `path`.
fn read_config(path: &Path) -> Result<Vec<ServerEntry>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "cannot read the MCP config {}: {e}",
            path.display()
        ))
    })?;
    parse_config(&text)
        .map_err(|e| Error::Config(format!("{} is not an MCP config: {e}", path.display())))
}

/// The name a server's tool has in the ToolChain: `<server>__<tool>`.
///
/// Every character of either part outside `[a-zA-Z0-9_-]` becomes `_`. A result longer than
/// [`MAX_TOOL_NAME_CHARS`] keeps its first 55 characters and ends in `_` and eight hex digits
/// of a hash of both original names, so that long names stay distinct and stable across runs.
pub fn tool_name(server: &str, tool: &str) -> String {
    let full = format!("{}{NAME_SEPARATOR}{}", sanitize(server), sanitize(tool));
    if full.len() <= MAX_TOOL_NAME_CHARS {
        return full;
    }
    let hash = fnv1a(format!("{server}\0{tool}").as_bytes());
    // `full` is ASCII, so any byte index is a character boundary.
    format!("{}_{hash:08x}", &full[..MAX_TOOL_NAME_CHARS - 9])
}

/// A duration as people read it: whole milliseconds below a second, else seconds rounded to
/// one decimal place, without a trailing `.0` (`250ms`, `60s`, `1.5s`).
pub fn round_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let tenths = (millis + 50) / 100;
    if tenths.is_multiple_of(10) {
        format!("{}s", tenths / 10)
    } else {
        format!("{}.{}s", tenths / 10, tenths % 10)
    }
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
    /// The `mcp-<name>-start` threads of [`spawn`], joined by shutdown. Held only to take them.
    starting: Mutex<Vec<JoinHandle<()>>>,
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
                log::warn!("mcp: a start-up thread panicked");
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
                            start_server(&thread_name, &thread_spec, &thread_policy, None)
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
        }
    }
}

impl Drop for McpServers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What went wrong talking to an MCP server. The `Display` text is what the model and the user
/// see as the tool's error.
#[derive(Debug)]
pub enum McpError {
    /// The server could not be started: it could not be spawned or a thread for it could not be
    /// created.
    Start {
        /// The server's name in the config.
        server: String,
        /// What failed.
        detail: String,
    },
    /// The server stopped: its output closed, or reading or writing its pipes failed.
    Closed {
        /// The server's name in the config.
        server: String,
        /// Why, and what happens next.
        reason: String,
    },
    /// The server is not reading its input: too many messages are queued for it.
    Busy {
        /// The server's name in the config.
        server: String,
    },
    /// No answer came in time; the request was cancelled.
    Timeout {
        /// The server's name in the config.
        server: String,
        /// The request's method.
        method: String,
        /// How long we waited.
        after: Duration,
    },
    /// The turn was cancelled while the request was in flight; the request was cancelled too.
    Cancelled,
    /// The server answered with a JSON-RPC error.
    Rpc {
        /// The server's name in the config.
        server: String,
        /// The JSON-RPC error code.
        code: i64,
        /// The server's message.
        message: String,
    },
    /// An HTTP server refused a request with an error status.
    Http {
        /// The server's name in the config.
        server: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body, or what the status means here.
        detail: String,
    },
    /// An HTTP server no longer knows the session (404): the request was not run, and a new
    /// session starts on the next call.
    SessionExpired {
        /// The server's name in the config.
        server: String,
    },
    /// The server answered something that is not what MCP says it should be.
    Protocol {
        /// The server's name in the config.
        server: String,
        /// What was wrong.
        detail: String,
    },
}

impl fmt::Display for McpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            McpError::Start { server, detail } => {
                write!(f, "mcp server {server}: cannot start: {detail}")
            }
            McpError::Closed { server, reason } => {
                write!(f, "mcp server {server} stopped: {reason}")
            }
            McpError::Busy { server } => write!(f, "mcp server {server} is not reading its input"),
            McpError::Timeout {
                server,
                method,
                after,
            } => write!(
                f,
                "mcp server {server} did not answer {method} within {}",
                round_duration(*after)
            ),
            McpError::Cancelled => write!(f, "cancelled"),
            McpError::Rpc {
                server,
                code,
                message,
            } => write!(f, "mcp server {server}: {message} (error {code})"),
            McpError::Http {
                server,
                status,
                detail,
            } => write!(f, "mcp server {server} answered HTTP {status}: {detail}"),
            McpError::SessionExpired { server } => {
                write!(f, "mcp server {server} no longer knows our session")
            }
            McpError::Protocol { server, detail } => {
                write!(f, "mcp server {server}: unexpected answer: {detail}")
            }
        }
    }
}

impl std::error::Error for McpError {}

fn sanitize(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// 32-bit FNV-1a: a tiny hash that, unlike std's, is the same in every build.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash: u32, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_are_prefixed_sanitised_and_at_most_64_characters() {
        assert_eq!(tool_name("files", "read_file"), "files__read_file");
        assert_eq!(tool_name("my server", "a.b/c-d"), "my_server__a_b_c-d");
        assert_eq!(tool_name("é", "ü"), "____");
        let long = tool_name("server", &"x".repeat(100));
        assert_eq!(long.len(), MAX_TOOL_NAME_CHARS);
        assert!(long.starts_with("server__xxx"));
        // Names that share a long prefix stay distinct, and the same name maps the same way.
        let other = tool_name("server", &format!("{}y", "x".repeat(99)));
        assert_ne!(long, other);
        assert_eq!(long, tool_name("server", &"x".repeat(100)));
        assert!(
            long.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        );
    }

    #[test]
    fn durations_are_rounded_for_people() {
        assert_eq!(round_duration(Duration::from_nanos(59_999_945_507)), "60s");
        assert_eq!(round_duration(Duration::from_millis(1_500)), "1.5s");
        assert_eq!(round_duration(Duration::from_micros(250_400)), "250ms");
        assert_eq!(round_duration(Duration::ZERO), "0ms");
        let timeout = McpError::Timeout {
            server: "fx".into(),
            method: "tools/call".into(),
            after: Duration::from_nanos(59_999_945_507),
        };
        assert_eq!(
            timeout.to_string(),
            "mcp server fx did not answer tools/call within 60s"
        );
    }

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
