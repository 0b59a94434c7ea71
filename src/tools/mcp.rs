//! MCP tool servers: the `--mcp-config` file, `McpClient` (newline-delimited JSON-RPC 2.0 over
//! a child's stdin and stdout, with a named reader thread that routes each answer to its caller
//! by request id), and the [`Tool`] that each server tool becomes in the ToolChain.
//!
//! mcp.rs is the only file that spawns processes, and the MCP JSON shapes stay private to it.
//! Depends on `cancel`, `error` and `tools`.
//!
//! One process per configured server is shared by every session. Callers never hold a lock
//! across IO: a request registers a one-shot channel under its id, hands its line to the
//! server's writer thread, and waits on the channel in short slices so that it sees its turn's
//! [`CancelFlag`] at once. A server that dies fails every waiting call with a clear error and is
//! started again by the next call.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};

use crate::cancel::CancelFlag;
use crate::error::{Error, Result};
use crate::tools::{Tool, ToolContext};

/// The MCP revision Sparky asks for in `initialize`. It is the newest revision with the
/// `initialize` handshake: 2026-07-28 made the protocol stateless, and servers that speak it
/// still accept this handshake from older clients.
pub const PROTOCOL_VERSION: &str = "2025-11-25";

/// How long a `tools/call` may take before it is cancelled and reported as timed out.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a server has to start: spawn, `initialize` and every page of `tools/list`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest tool name the model may see (the OpenAI function-name limit).
pub const MAX_TOOL_NAME_CHARS: usize = 64;

/// What stands between the server's name and the tool's name in [`tool_name`].
pub const NAME_SEPARATOR: &str = "__";

/// Revisions whose tools API Sparky knows; a server that answers with another one gets a
/// warning but is used anyway, since the tools API has not changed between them.
const KNOWN_PROTOCOL_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// How often a waiting caller looks at its cancel flag.
const WAIT_SLICE: Duration = Duration::from_millis(20);

/// Lines queued for a server's stdin at most; past it the server is not reading.
const OUTBOX_CAPACITY: usize = 256;

/// Longest line accepted from a server. A longer one ends the connection.
const MAX_LINE_BYTES: u64 = 16 << 20;

/// Longest stderr line logged in one piece.
const MAX_LOG_LINE_BYTES: u64 = 4096;

/// Pages of `tools/list` followed at most, so a server repeating its cursor cannot loop us.
const MAX_TOOL_PAGES: usize = 100;

/// The only variables of Sparky's environment a server inherits, besides its config's `env`
/// (the list the official MCP SDKs use): secrets such as a model API key stay with Sparky.
const INHERITED_ENV_VARS: [&str; 6] = ["HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"];

/// JSON-RPC's "method not found", the answer to every request a server makes of us but `ping`.
const METHOD_NOT_FOUND: i64 = -32601;

/// Starts every server in the MCP config file at `path` and returns them with their tools.
///
/// Servers start side by side. One that cannot be spawned, initialised or listed is logged
/// (`warn`) and left out; the others still load.
///
/// # Errors
///
/// [`Error::Config`] when the file cannot be read or is not an MCP config.
pub fn load(path: &Path) -> Result<McpServers> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "cannot read the MCP config {}: {e}",
            path.display()
        ))
    })?;
    let entries = parse_config(&text)
        .map_err(|e| Error::Config(format!("{} is not an MCP config: {e}", path.display())))?;
    Ok(McpServers::start(entries))
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

/// The MCP servers started from one config file, and their tools. Cheap to keep: the tools
/// hold the servers too, so the ToolChain keeps them alive. Dropping this (or calling
/// [`shutdown`](Self::shutdown)) stops every server process.
pub struct McpServers {
    servers: Vec<Arc<McpServer>>,
    tools: Vec<Arc<dyn Tool>>,
}

impl fmt::Debug for McpServers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
        let tools: Vec<&str> = self.tools.iter().map(|t| t.name()).collect();
        f.debug_struct("McpServers")
            .field("servers", &names)
            .field("tools", &tools)
            .finish()
    }
}

impl McpServers {
    /// Every tool of every server that started, in server-name order, under the names of
    /// [`tool_name`].
    pub fn tools(&self) -> &[Arc<dyn Tool>] {
        &self.tools
    }

    /// The names of the servers that started.
    pub fn server_names(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.name.clone()).collect()
    }

    /// Stops every server process (kills it and waits for it). Their tools answer with an
    /// error from then on and are not restarted. Calling it twice is harmless.
    pub fn shutdown(&self) {
        for server in &self.servers {
            server.shutdown();
        }
    }

    /// Starts the servers of a parsed config side by side and keeps those that came up.
    fn start(entries: Vec<(String, ServerCommand)>) -> Self {
        let started: Vec<(String, ServerCommand, Result<Started, McpError>)> =
            thread::scope(|scope| {
                let spawned: Vec<_> = entries
                    .into_iter()
                    .map(|(name, command)| {
                        let (thread_name, thread_command) = (name.clone(), command.clone());
                        let handle = thread::Builder::new()
                            .name(format!("mcp-{name}-start"))
                            .spawn_scoped(scope, move || {
                                start_server(&thread_name, &thread_command, START_TIMEOUT, None)
                            });
                        (name, command, handle)
                    })
                    .collect();
                spawned
                    .into_iter()
                    .map(|(name, command, handle)| {
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
                        (name, command, result)
                    })
                    .collect()
            });

        let mut servers = Vec::new();
        let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
        let mut names = HashSet::new();
        for (name, command, result) in started {
            let (client, remote_tools) = match result {
                Ok(started) => started,
                Err(e) => {
                    log::warn!("mcp {name}: not loaded: {e}");
                    continue;
                }
            };
            let server = Arc::new(McpServer {
                name: name.clone(),
                command,
                client: Mutex::new(Some(Arc::new(client))),
                restart: Mutex::new(()),
                stopped: AtomicBool::new(false),
            });
            let mut count = 0;
            for remote in remote_tools {
                let full_name = tool_name(&name, &remote.name);
                if remote.name.is_empty() || !names.insert(full_name.clone()) {
                    log::warn!(
                        "mcp {name}: tool {:?} left out: its name is empty or taken ({full_name})",
                        remote.name
                    );
                    continue;
                }
                tools.push(Arc::new(McpTool::new(server.clone(), full_name, remote)));
                count += 1;
            }
            log::info!("mcp {name}: loaded with {count} tools");
            servers.push(server);
        }
        McpServers { servers, tools }
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
                "mcp server {server} did not answer {method} within {after:?}"
            ),
            McpError::Cancelled => write!(f, "cancelled"),
            McpError::Rpc {
                server,
                code,
                message,
            } => write!(f, "mcp server {server}: {message} (error {code})"),
            McpError::Protocol { server, detail } => {
                write!(f, "mcp server {server}: unexpected answer: {detail}")
            }
        }
    }
}

impl std::error::Error for McpError {}

// ---------------------------------------------------------------------------------------------
// The config file.

/// The usual MCP config file: `{"mcpServers": {"name": {"command", "args", "env"}}}`.
#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(rename = "mcpServers")]
    servers: BTreeMap<String, ConfigEntry>,
}

/// One entry of `mcpServers`. Entries for other transports (a `url` instead of a `command`)
/// are skipped with a warning: Sparky speaks stdio only.
#[derive(Debug, Deserialize)]
struct ConfigEntry {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    disabled: bool,
}

/// How to start one server.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServerCommand {
    command: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
}

/// Reads a config file's text into the servers to start, in name order.
fn parse_config(text: &str) -> Result<Vec<(String, ServerCommand)>, serde_json::Error> {
    let file: ConfigFile = serde_json::from_str(text)?;
    let mut servers = Vec::new();
    for (name, entry) in file.servers {
        if entry.disabled {
            log::info!("mcp {name}: disabled in the config");
            continue;
        }
        let Some(command) = entry.command.filter(|c| !c.trim().is_empty()) else {
            log::warn!("mcp {name}: left out: it has no \"command\" (only stdio servers work)");
            continue;
        };
        servers.push((
            name,
            ServerCommand {
                command,
                args: entry.args,
                env: entry.env,
                cwd: entry.cwd,
            },
        ));
    }
    Ok(servers)
}

// ---------------------------------------------------------------------------------------------
// A server that restarts, and its tools.

/// A configured server: how to start it and the live client, replaced after it dies.
struct McpServer {
    name: String,
    command: ServerCommand,
    /// The live client. Held only to clone or swap the `Arc`.
    client: Mutex<Option<Arc<McpClient>>>,
    /// Held by the one caller restarting the server, across spawn and handshake (bounded by
    /// [`START_TIMEOUT`]), so that callers finding it down start one process, not one each.
    restart: Mutex<()>,
    /// Set by shutdown: no more restarts.
    stopped: AtomicBool,
}

impl McpServer {
    /// The live client, restarting the server first when it has stopped.
    fn live_client(&self, cancel: &CancelFlag) -> Result<Arc<McpClient>, McpError> {
        if let Some(client) = self.current() {
            return Ok(client);
        }
        let _restarting = loop {
            if let Some(guard) = self.restart.try_lock_for(WAIT_SLICE) {
                break guard;
            }
            if cancel.is_cancelled() {
                return Err(McpError::Cancelled);
            }
        };
        // Another caller may have restarted it while we waited.
        if let Some(client) = self.current() {
            return Ok(client);
        }
        self.check_running()?;
        log::info!("mcp {}: restarting", self.name);
        let (client, tools) = start_server(&self.name, &self.command, START_TIMEOUT, Some(cancel))
            .map_err(|e| match e {
                McpError::Cancelled => McpError::Cancelled,
                other => McpError::Closed {
                    server: self.name.clone(),
                    reason: format!("it could not be restarted: {other}"),
                },
            })?;
        log::info!("mcp {}: restarted with {} tools", self.name, tools.len());
        let client = Arc::new(client);
        let old = {
            let mut slot = self.client.lock();
            if self.stopped.load(Ordering::SeqCst) {
                None
            } else {
                slot.replace(client.clone())
            }
        };
        // Dropping the dead client reaps its process; done outside the lock.
        drop(old);
        self.check_running()?;
        Ok(client)
    }

    /// The current client when it is alive.
    fn current(&self) -> Option<Arc<McpClient>> {
        if self.stopped.load(Ordering::SeqCst) {
            return None;
        }
        self.client
            .lock()
            .as_ref()
            .filter(|client| client.is_alive())
            .cloned()
    }

    fn check_running(&self) -> Result<(), McpError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(McpError::Closed {
                server: self.name.clone(),
                reason: "sparky is shutting down".into(),
            });
        }
        Ok(())
    }

    fn shutdown(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let client = self.client.lock().take();
        // The client's `Drop` kills the process and waits for it, outside the lock.
        drop(client);
    }
}

/// One tool of one MCP server, as the ToolChain sees it.
struct McpTool {
    server: Arc<McpServer>,
    /// The name the model sees (see [`tool_name`]).
    name: String,
    /// The tool's own name on its server.
    remote_name: String,
    description: String,
    parameters: Value,
}

impl McpTool {
    fn new(server: Arc<McpServer>, name: String, remote: RemoteTool) -> Self {
        let description = remote
            .description
            .filter(|d| !d.trim().is_empty())
            .or(remote.title)
            .unwrap_or_else(|| {
                format!(
                    "The {} tool of the {} MCP server.",
                    remote.name, server.name
                )
            });
        // The model needs an object schema; MCP requires one, but not every server sends it.
        let parameters = match remote.input_schema {
            Some(schema @ Value::Object(_)) => schema,
            _ => json!({"type": "object", "properties": {}}),
        };
        McpTool {
            server,
            name,
            remote_name: remote.name,
            description,
            parameters,
        }
    }
}

impl Tool for McpTool {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn parameters(&self) -> Value {
        self.parameters.clone()
    }
    fn call(&self, args: &Value, ctx: &ToolContext<'_>) -> Result<String, String> {
        let client = self
            .server
            .live_client(ctx.cancel)
            .map_err(|e| e.to_string())?;
        let reply = client
            .call_tool(&self.remote_name, args, CALL_TIMEOUT, ctx.cancel)
            .map_err(|e| e.to_string())?;
        if reply.is_error {
            Err(reply.text)
        } else {
            Ok(reply.text)
        }
    }
}

/// A started, initialised client and the tools its server listed.
type Started = (McpClient, Vec<RemoteTool>);

/// Spawns a server, initialises it and lists its tools, all within `timeout`.
fn start_server(
    name: &str,
    command: &ServerCommand,
    timeout: Duration,
    cancel: Option<&CancelFlag>,
) -> Result<Started, McpError> {
    let deadline = Instant::now() + timeout;
    let client = McpClient::spawn(name, command)?;
    client.initialize(deadline, cancel)?;
    let tools = client.list_tools(deadline, cancel)?;
    Ok((client, tools))
}

// ---------------------------------------------------------------------------------------------
// The client.

/// The outcome of one `tools/call`: its content as text, and whether the tool said it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ToolReply {
    is_error: bool,
    text: String,
}

/// What a waiting caller receives: the result, or why there is none.
type Reply = std::result::Result<Value, McpError>;

/// One connection to an MCP server over any byte pipe pair: a child's stdout and stdin, or
/// in-memory pipes in tests.
///
/// It owns two named threads: `mcp-<name>-reader` reads lines and routes each response to the
/// one-shot channel its request registered, and `mcp-<name>-writer` writes queued lines. Both
/// are detached: they hold only the shared state and their pipe, and end when the pipe closes
/// (reader) or the client closes (writer). `Drop` closes the client, then kills and waits for
/// the child, if any.
struct McpClient {
    shared: Arc<ClientShared>,
    child: Option<Child>,
}

impl fmt::Debug for McpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpClient")
            .field("server", &self.shared.server)
            .field("alive", &self.is_alive())
            .finish()
    }
}

/// What a client shares with its threads.
struct ClientShared {
    server: String,
    next_id: AtomicI64,
    /// Held only to register or remove a waiter, or to queue a line (never blocking); never
    /// across IO.
    state: Mutex<ClientState>,
}

struct ClientState {
    /// Callers waiting for an answer, by request id.
    pending: HashMap<i64, Sender<Reply>>,
    /// Lines for the writer thread; `None` once closed, which ends the writer.
    outbox: Option<Sender<String>>,
    /// Why the client closed, once it has.
    closed: Option<String>,
}

impl McpClient {
    /// A client speaking to a server through `reader` (its output) and `writer` (its input).
    /// `child`, when given, is killed and waited for when the client is dropped.
    fn new(
        server: &str,
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        child: Option<Child>,
    ) -> Result<Self, McpError> {
        let (outbox, lines) = crossbeam_channel::bounded(OUTBOX_CAPACITY);
        let shared = Arc::new(ClientShared {
            server: server.to_owned(),
            next_id: AtomicI64::new(1),
            state: Mutex::new(ClientState {
                pending: HashMap::new(),
                outbox: Some(outbox),
                closed: None,
            }),
        });
        // Built first, so that a failure below drops it, which kills the child.
        let client = McpClient {
            shared: shared.clone(),
            child,
        };
        let no_thread = |e: io::Error| McpError::Start {
            server: server.to_owned(),
            detail: format!("no thread for it: {e}"),
        };

        let writer_shared = shared.clone();
        thread::Builder::new()
            .name(format!("mcp-{server}-writer"))
            .spawn(move || {
                if let Err(e) = run_writer(writer, &lines) {
                    writer_shared.close_and_log(format!("writing to it failed: {e}"));
                }
            })
            .map_err(no_thread)?;

        let reader_shared = shared;
        thread::Builder::new()
            .name(format!("mcp-{server}-reader"))
            .spawn(move || {
                let reason = match run_reader(reader, &reader_shared) {
                    Ok(()) => "it closed its output; it is restarted on the next call".to_owned(),
                    Err(e) => {
                        format!("reading from it failed ({e}); it is restarted on the next call")
                    }
                };
                reader_shared.close_and_log(reason);
            })
            .map_err(no_thread)?;
        Ok(client)
    }

    /// Spawns `command` with piped stdio (stderr goes to the log) and returns a client on it,
    /// not yet initialised.
    fn spawn(server: &str, command: &ServerCommand) -> Result<Self, McpError> {
        let inherited = INHERITED_ENV_VARS.iter().filter_map(|key| {
            // A value starting with "()" is an exported shell function, not a setting.
            let value = std::env::var_os(key)?;
            (!value.to_string_lossy().starts_with("()")).then_some((*key, value))
        });
        let mut process = Command::new(&command.command);
        process
            .args(&command.args)
            .env_clear()
            .envs(inherited)
            .envs(&command.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &command.cwd {
            process.current_dir(cwd);
        }
        let mut child = process.spawn().map_err(|e| McpError::Start {
            server: server.to_owned(),
            detail: format!("cannot run {:?}: {e}", command.command),
        })?;
        let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(McpError::Start {
                server: server.to_owned(),
                detail: "its stdio was not piped".into(),
            });
        };
        log::info!(
            "mcp {server}: started {:?} (pid {})",
            command.command,
            child.id()
        );
        let client = McpClient::new(server, stdout, stdin, Some(child))?;
        let name = server.to_owned();
        // Detached: it ends when the process (and every process it started) closes stderr.
        thread::Builder::new()
            .name(format!("mcp-{server}-stderr"))
            .spawn(move || log_stderr(&name, stderr))
            .map_err(|e| McpError::Start {
                server: server.to_owned(),
                detail: format!("no thread for its stderr: {e}"),
            })?;
        Ok(client)
    }

    /// True until the server stops or the client is closed.
    fn is_alive(&self) -> bool {
        self.shared.state.lock().closed.is_none()
    }

    /// `initialize`, then the `notifications/initialized` notification.
    fn initialize(&self, deadline: Instant, cancel: Option<&CancelFlag>) -> Result<(), McpError> {
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "sparky", "version": env!("CARGO_PKG_VERSION")},
        });
        let result = self.request("initialize", params, deadline, cancel)?;
        let answer: InitializeResult = self.parse(result)?;
        let server = &self.shared.server;
        if !KNOWN_PROTOCOL_VERSIONS.contains(&answer.protocol_version.as_str()) {
            log::warn!(
                "mcp {server}: speaks protocol {:?}, which sparky does not know; trying anyway",
                answer.protocol_version
            );
        }
        let info = answer.server_info.unwrap_or_default();
        log::info!(
            "mcp {server}: initialised {} {} (protocol {})",
            info.name,
            info.version,
            answer.protocol_version
        );
        self.notify("notifications/initialized", None)
    }

    /// Every tool the server offers, following `nextCursor` from page to page.
    fn list_tools(
        &self,
        deadline: Instant,
        cancel: Option<&CancelFlag>,
    ) -> Result<Vec<RemoteTool>, McpError> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_TOOL_PAGES {
            let params = match &cursor {
                Some(cursor) => json!({"cursor": cursor}),
                None => json!({}),
            };
            let page: ToolsPage =
                self.parse(self.request("tools/list", params, deadline, cancel)?)?;
            tools.extend(page.tools);
            match page.next_cursor {
                Some(next) if !next.is_empty() => cursor = Some(next),
                _ => return Ok(tools),
            }
        }
        Err(self.protocol(format!(
            "tools/list went on for more than {MAX_TOOL_PAGES} pages"
        )))
    }

    /// Calls one tool and renders its content as text.
    fn call_tool(
        &self,
        name: &str,
        args: &Value,
        timeout: Duration,
        cancel: &CancelFlag,
    ) -> Result<ToolReply, McpError> {
        let params = json!({"name": name, "arguments": args});
        let result = self.request("tools/call", params, Instant::now() + timeout, Some(cancel))?;
        let result: CallToolResult = self.parse(result)?;
        Ok(ToolReply {
            is_error: result.is_error,
            text: render_content(&result.content, result.structured_content.as_ref()),
        })
    }

    /// Sends a request and waits for its answer until `deadline`, or until `cancel` is set.
    /// A cancelled or timed-out request is cancelled at the server with
    /// `notifications/cancelled` (except `initialize`, which MCP forbids cancelling).
    fn request(
        &self,
        method: &str,
        params: Value,
        deadline: Instant,
        cancel: Option<&CancelFlag>,
    ) -> Result<Value, McpError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let line = self.encode(&Message::request(id, method, params))?;
        let (waiter, reply) = crossbeam_channel::bounded(1);
        {
            let mut state = self.shared.state.lock();
            if let Some(reason) = &state.closed {
                return Err(self.shared.closed_error(reason));
            }
            state.pending.insert(id, waiter);
            if let Err(e) = self.shared.queue(&mut state, line) {
                state.pending.remove(&id);
                return Err(e);
            }
        }
        log::debug!("mcp {}: request {id} {method}", self.shared.server);
        let allowed = deadline.saturating_duration_since(Instant::now());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let slice = if cancel.is_some() {
                left.min(WAIT_SLICE)
            } else {
                left
            };
            match reply.recv_timeout(slice) {
                Ok(answer) => return answer,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.shared.closed_error("it closed"));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if cancel.is_some_and(CancelFlag::is_cancelled) {
                self.abandon(id, method, "the user cancelled the turn");
                return Err(McpError::Cancelled);
            }
            if Instant::now() >= deadline {
                self.abandon(id, method, &format!("no answer within {allowed:?}"));
                return Err(McpError::Timeout {
                    server: self.shared.server.clone(),
                    method: method.to_owned(),
                    after: allowed,
                });
            }
        }
    }

    /// Stops waiting for request `id` and, when it is still in flight, tells the server.
    fn abandon(&self, id: i64, method: &str, reason: &str) {
        let mut state = self.shared.state.lock();
        if state.pending.remove(&id).is_none() || method == "initialize" {
            return;
        }
        let params = json!({"requestId": id, "reason": reason});
        let sent = self
            .encode(&Message::notification(
                "notifications/cancelled",
                Some(params),
            ))
            .and_then(|line| self.shared.queue(&mut state, line));
        match sent {
            Ok(()) => log::debug!(
                "mcp {}: cancelled request {id}: {reason}",
                self.shared.server
            ),
            Err(e) => log::debug!(
                "mcp {}: could not cancel request {id}: {e}",
                self.shared.server
            ),
        }
    }

    /// Sends a notification.
    fn notify(&self, method: &str, params: Option<Value>) -> Result<(), McpError> {
        let line = self.encode(&Message::notification(method, params))?;
        let mut state = self.shared.state.lock();
        if let Some(reason) = &state.closed {
            return Err(self.shared.closed_error(reason));
        }
        self.shared.queue(&mut state, line)
    }

    fn encode(&self, message: &Message) -> Result<String, McpError> {
        serde_json::to_string(message).map_err(|e| self.protocol(format!("cannot encode: {e}")))
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self, value: Value) -> Result<T, McpError> {
        serde_json::from_value(value).map_err(|e| self.protocol(e.to_string()))
    }

    fn protocol(&self, detail: String) -> McpError {
        McpError::Protocol {
            server: self.shared.server.clone(),
            detail,
        }
    }
}

impl Drop for McpClient {
    fn drop(&mut self) {
        // Closing drops the outbox, so the writer ends and the server's stdin closes.
        self.shared.close("sparky stopped it".into());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            match child.wait() {
                Ok(status) => log::debug!("mcp {}: exited ({status})", self.shared.server),
                Err(e) => log::warn!("mcp {}: could not wait for it: {e}", self.shared.server),
            }
        }
    }
}

impl ClientShared {
    /// Queues a line for the writer without blocking.
    fn queue(&self, state: &mut ClientState, line: String) -> Result<(), McpError> {
        let Some(outbox) = &state.outbox else {
            return Err(self.closed_error(state.closed.as_deref().unwrap_or("it closed")));
        };
        match outbox.try_send(line) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(McpError::Busy {
                server: self.server.clone(),
            }),
            Err(TrySendError::Disconnected(_)) => Err(self.closed_error("it closed")),
        }
    }

    fn closed_error(&self, reason: &str) -> McpError {
        McpError::Closed {
            server: self.server.clone(),
            reason: reason.to_owned(),
        }
    }

    /// Closes the client: no new requests, the writer ends, and every waiting caller gets a
    /// `Closed` error. True when this call closed it (false when it already was).
    fn close(&self, reason: String) -> bool {
        let pending = {
            let mut state = self.state.lock();
            if state.closed.is_some() {
                return false;
            }
            state.outbox = None;
            state.closed = Some(reason.clone());
            std::mem::take(&mut state.pending)
        };
        for waiter in pending.into_values() {
            let _ = waiter.try_send(Err(self.closed_error(&reason)));
        }
        true
    }

    /// [`close`](Self::close), and a warning when it was the server, not us, that ended it.
    fn close_and_log(&self, reason: String) {
        if self.close(reason.clone()) {
            log::warn!("mcp {}: stopped: {reason}", self.server);
        }
    }

    /// Handles one line from the server.
    fn dispatch(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        log::trace!("mcp {}: <- {text}", self.server);
        match serde_json::from_str::<Message>(text) {
            Ok(Message::Response(response)) => self.route(response),
            Ok(Message::Request(request)) => self.answer(request),
            Ok(Message::Notification(notification)) => {
                log::debug!("mcp {}: notification {}", self.server, notification.method);
            }
            Err(e) => {
                let preview: String = text.chars().take(200).collect();
                log::warn!(
                    "mcp {}: ignoring a line that is not JSON-RPC ({e}): {preview}",
                    self.server
                );
            }
        }
    }

    /// Hands a response to the caller waiting for it.
    fn route(&self, response: Response) {
        let id = match &response.id {
            Some(RequestId::Number(id)) => Some(*id),
            Some(RequestId::Text(text)) => text.parse().ok(),
            None => None,
        };
        let waiter = id.and_then(|id| self.state.lock().pending.remove(&id));
        let Some(waiter) = waiter else {
            // A request we cancelled or stopped waiting for, or an error about a line the
            // server could not read.
            log::debug!(
                "mcp {}: answer to no waiting request ({:?})",
                self.server,
                response.id
            );
            return;
        };
        let reply = match response.error {
            Some(error) => Err(McpError::Rpc {
                server: self.server.clone(),
                code: error.code,
                message: error.message,
            }),
            None => Ok(response.result.unwrap_or(Value::Null)),
        };
        let _ = waiter.try_send(reply);
    }

    /// Answers a request the server made: `ping` gets an empty result, anything else "method
    /// not found", since Sparky offers servers no client features.
    fn answer(&self, request: Request) {
        let reply = if request.method == "ping" {
            Message::Response(Response::ok(Some(request.id), json!({})))
        } else {
            log::debug!(
                "mcp {}: refusing its request {}",
                self.server,
                request.method
            );
            Message::Response(Response::error(
                Some(request.id),
                METHOD_NOT_FOUND,
                format!("sparky does not offer {}", request.method),
            ))
        };
        let Ok(line) = serde_json::to_string(&reply) else {
            return;
        };
        let mut state = self.state.lock();
        if let Err(e) = self.queue(&mut state, line) {
            log::debug!("mcp {}: could not answer its request: {e}", self.server);
        }
    }
}

/// The writer thread: writes each queued line, until the client closes.
fn run_writer(mut writer: impl Write, lines: &Receiver<String>) -> io::Result<()> {
    for mut line in lines {
        line.push('\n');
        writer.write_all(line.as_bytes())?;
        writer.flush()?;
    }
    Ok(())
}

/// The reader thread: reads lines until the server closes its output.
///
/// # Errors
///
/// When reading fails or a line is longer than [`MAX_LINE_BYTES`].
fn run_reader(reader: impl Read, shared: &ClientShared) -> io::Result<()> {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && read as u64 == MAX_LINE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a line longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        shared.dispatch(&line);
    }
}

/// Logs a server's stderr, line by line, until it closes.
fn log_stderr(server: &str, stderr: impl Read) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LOG_LINE_BYTES)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if !text.is_empty() {
                    log::info!("mcp {server}: stderr: {text}");
                }
            }
        }
    }
}

/// Turns a `tools/call` result's content into text: text items joined with newlines, other
/// kinds summarised in brackets, and `structuredContent` when there is no content at all.
fn render_content(content: &[Value], structured: Option<&Value>) -> String {
    let parts: Vec<String> = content.iter().map(describe_content).collect();
    if !parts.is_empty() {
        return parts.join("\n");
    }
    match structured {
        Some(value) => value.to_string(),
        None => "(no output)".to_owned(),
    }
}

/// One content item as text.
fn describe_content(item: &Value) -> String {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let field =
        |value: &Value, key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    match kind {
        "text" => field(item, "text").unwrap_or_default(),
        "image" | "audio" => match field(item, "mimeType") {
            Some(mime) => format!("[{kind}: {mime}]"),
            None => format!("[{kind}]"),
        },
        "resource" => {
            let resource = item.get("resource").unwrap_or(&Value::Null);
            field(resource, "text").unwrap_or_else(|| {
                format!("[resource: {}]", field(resource, "uri").unwrap_or_default())
            })
        }
        "resource_link" => format!(
            "[resource link: {}]",
            field(item, "uri").unwrap_or_default()
        ),
        other => format!("[{other} content]"),
    }
}

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

// ---------------------------------------------------------------------------------------------
// Wire types: JSON-RPC 2.0 messages, one per line, and the MCP results we read.

/// The `"jsonrpc": "2.0"` member every message carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct JsonRpc;

impl Serialize for JsonRpc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("2.0")
    }
}

/// A request id: we send numbers; servers may use strings for theirs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
enum RequestId {
    Number(i64),
    Text(String),
}

/// Any message on the wire. Encoded as the variant's own object; decoded by looking at which
/// of `id` and `method` are present (a request has both, a notification only `method`, a
/// response only `id`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged, try_from = "RawMessage")]
enum Message {
    Request(Request),
    Response(Response),
    Notification(Notification),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
struct Request {
    jsonrpc: JsonRpc,
    id: RequestId,
    method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
struct Notification {
    jsonrpc: JsonRpc,
    method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<Value>,
}

/// A response. `id` is null only in an error about a request the server could not read.
#[derive(Clone, Debug, PartialEq, Serialize)]
struct Response {
    jsonrpc: JsonRpc,
    id: Option<RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RpcError>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RpcError {
    code: i64,
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
}

/// Every member a message may have, before we know which kind it is.
#[derive(Deserialize)]
struct RawMessage {
    jsonrpc: String,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    method: Option<String>,
    params: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    result: Option<Value>,
    error: Option<RpcError>,
}

/// Deserialises a member that is present as `Some`, even when it is `null`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl TryFrom<RawMessage> for Message {
    type Error = String;

    fn try_from(raw: RawMessage) -> Result<Self, String> {
        if raw.jsonrpc != "2.0" {
            return Err(format!("jsonrpc is {:?}, not \"2.0\"", raw.jsonrpc));
        }
        let has_id = raw.id.is_some();
        let id = match raw.id {
            None | Some(Value::Null) => None,
            Some(id) => Some(
                serde_json::from_value::<RequestId>(id.clone())
                    .map_err(|_| format!("{id} is not a request id"))?,
            ),
        };
        match (raw.method, id) {
            (Some(method), Some(id)) => Ok(Message::Request(Request {
                jsonrpc: JsonRpc,
                id,
                method,
                params: raw.params,
            })),
            (Some(method), None) => Ok(Message::Notification(Notification {
                jsonrpc: JsonRpc,
                method,
                params: raw.params,
            })),
            (None, id) if has_id => {
                if raw.result.is_none() && raw.error.is_none() {
                    return Err("a response with neither result nor error".into());
                }
                Ok(Message::Response(Response {
                    jsonrpc: JsonRpc,
                    id,
                    result: raw.result,
                    error: raw.error,
                }))
            }
            (None, _) => Err("neither a request, a response nor a notification".into()),
        }
    }
}

impl Message {
    fn request(id: i64, method: &str, params: Value) -> Self {
        Message::Request(Request {
            jsonrpc: JsonRpc,
            id: RequestId::Number(id),
            method: method.to_owned(),
            params: Some(params),
        })
    }

    fn notification(method: &str, params: Option<Value>) -> Self {
        Message::Notification(Notification {
            jsonrpc: JsonRpc,
            method: method.to_owned(),
            params,
        })
    }
}

impl Response {
    fn ok(id: Option<RequestId>, result: Value) -> Self {
        Response {
            jsonrpc: JsonRpc,
            id,
            result: Some(result),
            error: None,
        }
    }

    fn error(id: Option<RequestId>, code: i64, message: String) -> Self {
        Response {
            jsonrpc: JsonRpc,
            id,
            result: None,
            error: Some(RpcError {
                code,
                message,
                data: None,
            }),
        }
    }
}

/// The part of the `initialize` result we use.
#[derive(Debug, Deserialize)]
struct InitializeResult {
    #[serde(rename = "protocolVersion")]
    protocol_version: String,
    #[serde(rename = "serverInfo")]
    server_info: Option<Implementation>,
}

#[derive(Debug, Default, Deserialize)]
struct Implementation {
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
}

/// One page of `tools/list`.
#[derive(Debug, Deserialize)]
struct ToolsPage {
    tools: Vec<RemoteTool>,
    #[serde(rename = "nextCursor")]
    next_cursor: Option<String>,
}

/// A tool as its server describes it.
#[derive(Debug, Deserialize)]
struct RemoteTool {
    name: String,
    title: Option<String>,
    description: Option<String>,
    #[serde(rename = "inputSchema")]
    input_schema: Option<Value>,
}

/// The part of a `tools/call` result we use.
#[derive(Debug, Deserialize)]
struct CallToolResult {
    #[serde(default)]
    content: Vec<Value>,
    #[serde(default, rename = "isError")]
    is_error: bool,
    #[serde(rename = "structuredContent")]
    structured_content: Option<Value>,
}

#[cfg(test)]
mod tests {
    use std::io::{PipeReader, PipeWriter};

    use super::*;

    /// How long any wait in these tests may take.
    const WAIT: Duration = Duration::from_secs(10);

    /// The far end of a client's pipes: the messages the client wrote, and a way to answer.
    struct FakeServer {
        received: Receiver<Message>,
        output: PipeWriter,
    }

    impl FakeServer {
        /// The next message the client wrote; fails after [`WAIT`].
        fn next(&self) -> Message {
            self.received
                .recv_timeout(WAIT)
                .expect("the client sent nothing")
        }

        /// The next request, which must have method `method`; returns its id and params.
        fn expect_request(&self, method: &str) -> (RequestId, Value) {
            match self.next() {
                Message::Request(request) if request.method == method => {
                    (request.id, request.params.unwrap_or(Value::Null))
                }
                other => panic!("expected a {method} request, got {other:?}"),
            }
        }

        fn send(&mut self, message: &Message) {
            self.send_line(&serde_json::to_string(message).unwrap());
        }

        fn send_line(&mut self, line: &str) {
            self.output.write_all(line.as_bytes()).unwrap();
            self.output.write_all(b"\n").unwrap();
        }

        fn reply(&mut self, id: RequestId, result: Value) {
            self.send(&Message::Response(Response::ok(Some(id), result)));
        }
    }

    /// A client over in-memory pipes, and the fake server at their other end.
    fn connect() -> (McpClient, FakeServer) {
        let (client_reads, server_writes) = std::io::pipe().unwrap();
        let (server_reads, client_writes) = std::io::pipe().unwrap();
        let client = McpClient::new("fake", client_reads, client_writes, None).unwrap();
        let (sender, received) = crossbeam_channel::unbounded();
        thread::spawn(move || read_messages(server_reads, &sender));
        (
            client,
            FakeServer {
                received,
                output: server_writes,
            },
        )
    }

    /// Decodes every line the client writes; ends (dropping `sender`) when its input closes.
    fn read_messages(input: PipeReader, sender: &Sender<Message>) {
        for line in BufReader::new(input).lines() {
            let message = serde_json::from_str(&line.unwrap()).unwrap();
            if sender.send(message).is_err() {
                return;
            }
        }
    }

    fn soon() -> Instant {
        Instant::now() + WAIT
    }

    fn text(value: &str) -> Value {
        json!({"content": [{"type": "text", "text": value}]})
    }

    #[test]
    fn messages_encode_to_golden_json_and_decode_back() {
        let cases = [
            (
                Message::request(7, "tools/list", json!({"cursor": "c"})),
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"cursor":"c"}}"#,
            ),
            (
                Message::Request(Request {
                    jsonrpc: JsonRpc,
                    id: RequestId::Text("srv-1".into()),
                    method: "ping".into(),
                    params: None,
                }),
                r#"{"jsonrpc":"2.0","id":"srv-1","method":"ping"}"#,
            ),
            (
                Message::notification("notifications/initialized", None),
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            ),
            (
                Message::notification(
                    "notifications/cancelled",
                    Some(json!({"requestId": 3, "reason": "stop"})),
                ),
                r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"reason":"stop","requestId":3}}"#,
            ),
            (
                Message::Response(Response::ok(
                    Some(RequestId::Number(3)),
                    json!({"tools": []}),
                )),
                r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[]}}"#,
            ),
            (
                Message::Response(Response::ok(Some(RequestId::Number(4)), Value::Null)),
                r#"{"jsonrpc":"2.0","id":4,"result":null}"#,
            ),
            (
                Message::Response(Response::error(
                    Some(RequestId::Text("x".into())),
                    METHOD_NOT_FOUND,
                    "no".into(),
                )),
                r#"{"jsonrpc":"2.0","id":"x","error":{"code":-32601,"message":"no"}}"#,
            ),
            (
                Message::Response(Response::error(None, -32700, "parse error".into())),
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}"#,
            ),
        ];
        for (message, golden) in cases {
            assert_eq!(serde_json::to_string(&message).unwrap(), golden);
            assert_eq!(
                serde_json::from_str::<Message>(golden).unwrap(),
                message,
                "{golden}"
            );
        }
    }

    #[test]
    fn decoding_refuses_what_is_not_json_rpc() {
        for bad in [
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0"}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            r#"[1, 2]"#,
        ] {
            assert!(serde_json::from_str::<Message>(bad).is_err(), "{bad}");
        }
    }

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
    fn content_is_joined_and_other_kinds_are_summarised() {
        let content = [
            json!({"type": "text", "text": "one"}),
            json!({"type": "image", "data": "AAAA", "mimeType": "image/png"}),
            json!({"type": "audio", "data": "AAAA"}),
            json!({"type": "resource", "resource": {"uri": "file:///a", "text": "inside"}}),
            json!({"type": "resource", "resource": {"uri": "file:///b", "blob": "AAAA"}}),
            json!({"type": "resource_link", "uri": "file:///c", "name": "c"}),
            json!({"type": "hologram"}),
            json!({"type": "text", "text": "two"}),
        ];
        assert_eq!(
            render_content(&content, None),
            "one\n[image: image/png]\n[audio]\ninside\n[resource: file:///b]\n\
             [resource link: file:///c]\n[hologram content]\ntwo"
        );
        assert_eq!(render_content(&[], Some(&json!({"n": 1}))), r#"{"n":1}"#);
        assert_eq!(render_content(&[], None), "(no output)");
    }

    #[test]
    fn the_usual_config_format_is_read() {
        let servers = parse_config(
            r#"{"mcpServers": {
                "files": {"command": "npx", "args": ["-y", "server-files", "/tmp"],
                          "env": {"A": "1"}},
                "plain": {"command": "plain-server"},
                "remote": {"url": "https://example.com/mcp"},
                "off": {"command": "x", "disabled": true}
            }}"#,
        )
        .unwrap();
        let names: Vec<&str> = servers.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["files", "plain"]);
        assert_eq!(
            servers[0].1,
            ServerCommand {
                command: "npx".into(),
                args: vec!["-y".into(), "server-files".into(), "/tmp".into()],
                env: BTreeMap::from([("A".into(), "1".into())]),
                cwd: None,
            }
        );
        assert!(servers[1].1.args.is_empty());
        assert!(parse_config("{}").is_err());
        assert!(parse_config(r#"{"mcpServers": {"a": {"command": 3}}}"#).is_err());
        assert!(parse_config("not json").is_err());
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

    #[test]
    fn the_handshake_initialises_and_follows_every_page_of_tools() {
        let (client, mut server) = connect();
        thread::scope(|scope| {
            let handshake = scope.spawn(|| {
                client.initialize(soon(), None)?;
                client.list_tools(soon(), None)
            });
            let (id, params) = server.expect_request("initialize");
            assert_eq!(params["protocolVersion"], PROTOCOL_VERSION);
            assert_eq!(params["clientInfo"]["name"], "sparky");
            server.reply(
                id,
                json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                       "serverInfo": {"name": "fake", "version": "1"}}),
            );
            match server.next() {
                Message::Notification(n) => assert_eq!(n.method, "notifications/initialized"),
                other => panic!("expected initialized, got {other:?}"),
            }
            let (id, params) = server.expect_request("tools/list");
            assert_eq!(params.get("cursor"), None);
            server.reply(
                id,
                json!({"tools": [{"name": "a", "inputSchema": {"type": "object"}}],
                       "nextCursor": "2"}),
            );
            let (id, params) = server.expect_request("tools/list");
            assert_eq!(params["cursor"], "2");
            server.reply(id, json!({"tools": [{"name": "b", "description": "B"}]}));
            let tools = handshake.join().unwrap().unwrap();
            let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["a", "b"]);
            assert_eq!(tools[1].description.as_deref(), Some("B"));
        });
    }

    #[test]
    fn answers_out_of_order_reach_their_own_callers() {
        let (client, mut server) = connect();
        let cancel = CancelFlag::new();
        thread::scope(|scope| {
            let calls: Vec<_> = (0..5)
                .map(|i| {
                    let (client, cancel) = (&client, &cancel);
                    scope.spawn(move || {
                        let args = json!({"n": i});
                        client.call_tool("echo", &args, WAIT, cancel).unwrap()
                    })
                })
                .collect();
            let mut requests: Vec<(RequestId, Value)> = (0..5)
                .map(|_| server.expect_request("tools/call"))
                .collect();
            requests.reverse();
            for (id, params) in requests {
                let n = params["arguments"]["n"].clone();
                server.reply(id, text(&format!("answer {n}")));
            }
            for (i, call) in calls.into_iter().enumerate() {
                let reply = call.join().unwrap();
                assert_eq!(reply.text, format!("answer {i}"));
                assert!(!reply.is_error);
            }
        });
    }

    #[test]
    fn a_cancelled_call_returns_at_once_and_cancels_the_request_at_the_server() {
        let (client, server) = connect();
        let cancel = CancelFlag::new();
        thread::scope(|scope| {
            let call = scope.spawn(|| client.call_tool("slow", &json!({}), WAIT, &cancel));
            let (id, _) = server.expect_request("tools/call");
            let cancelled_at = Instant::now();
            cancel.cancel();
            let outcome = call.join().unwrap();
            assert!(matches!(outcome, Err(McpError::Cancelled)), "{outcome:?}");
            assert_eq!(outcome.unwrap_err().to_string(), "cancelled");
            assert!(cancelled_at.elapsed() < Duration::from_secs(1));
            match server.next() {
                Message::Notification(n) => {
                    assert_eq!(n.method, "notifications/cancelled");
                    let params = n.params.unwrap();
                    assert_eq!(
                        serde_json::from_value::<RequestId>(params["requestId"].clone()).unwrap(),
                        id
                    );
                    assert!(params["reason"].as_str().unwrap().contains("cancelled"));
                }
                other => panic!("expected notifications/cancelled, got {other:?}"),
            }
        });
    }

    #[test]
    fn a_late_answer_after_a_timeout_is_ignored_and_the_request_cancelled() {
        let (client, mut server) = connect();
        let cancel = CancelFlag::new();
        let outcome = client.call_tool("slow", &json!({}), Duration::from_millis(50), &cancel);
        assert!(
            matches!(&outcome, Err(McpError::Timeout { method, .. }) if method == "tools/call"),
            "{outcome:?}"
        );
        let (id, _) = server.expect_request("tools/call");
        match server.next() {
            Message::Notification(n) => assert_eq!(n.method, "notifications/cancelled"),
            other => panic!("expected notifications/cancelled, got {other:?}"),
        }
        // The late answer goes nowhere, and the next call still gets its own.
        server.reply(id, text("late"));
        thread::scope(|scope| {
            let call = scope.spawn(|| client.call_tool("echo", &json!({}), WAIT, &cancel));
            let (id, _) = server.expect_request("tools/call");
            server.reply(id, text("on time"));
            assert_eq!(call.join().unwrap().unwrap().text, "on time");
        });
    }

    #[test]
    fn a_server_that_stops_fails_waiting_and_new_calls_with_a_clear_error() {
        let (client, server) = connect();
        let cancel = CancelFlag::new();
        thread::scope(|scope| {
            let call = scope.spawn(|| client.call_tool("echo", &json!({}), WAIT, &cancel));
            server.expect_request("tools/call");
            drop(server.output); // The server's stdout closes, as when it exits.
            let error = call.join().unwrap().unwrap_err();
            assert!(matches!(error, McpError::Closed { .. }), "{error:?}");
            assert!(error.to_string().contains("stopped"), "{error}");
        });
        assert!(!client.is_alive());
        let again = client
            .call_tool("echo", &json!({}), WAIT, &cancel)
            .unwrap_err();
        assert!(matches!(again, McpError::Closed { .. }), "{again:?}");
    }

    #[test]
    fn errors_and_error_results_are_told_apart() {
        let (client, mut server) = connect();
        let cancel = CancelFlag::new();
        thread::scope(|scope| {
            let call = scope.spawn(|| client.call_tool("nope", &json!({}), WAIT, &cancel));
            let (id, _) = server.expect_request("tools/call");
            server.send(&Message::Response(Response::error(
                Some(id),
                -32602,
                "Unknown tool: nope".into(),
            )));
            let error = call.join().unwrap().unwrap_err();
            assert_eq!(
                error.to_string(),
                "mcp server fake: Unknown tool: nope (error -32602)"
            );

            let call = scope.spawn(|| client.call_tool("fail", &json!({}), WAIT, &cancel));
            let (id, _) = server.expect_request("tools/call");
            server.reply(
                id,
                json!({"content": [{"type": "text", "text": "bad"}], "isError": true}),
            );
            let reply = call.join().unwrap().unwrap();
            assert_eq!((reply.is_error, reply.text.as_str()), (true, "bad"));

            let call = scope.spawn(|| client.call_tool("odd", &json!({}), WAIT, &cancel));
            let (id, _) = server.expect_request("tools/call");
            server.reply(id, json!({"content": "not a list"}));
            let error = call.join().unwrap().unwrap_err();
            assert!(matches!(error, McpError::Protocol { .. }), "{error:?}");
        });
    }

    #[test]
    fn requests_from_the_server_are_answered_and_noise_is_ignored() {
        let (client, mut server) = connect();
        server.send_line("this is not json");
        server.send_line(r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#);
        server.send_line(r#"{"jsonrpc":"2.0","id":99,"result":{}}"#);
        server.send_line(r#"{"jsonrpc":"2.0","id":"s1","method":"ping"}"#);
        server.send_line(r#"{"jsonrpc":"2.0","id":"s2","method":"sampling/createMessage"}"#);
        let Message::Response(pong) = server.next() else {
            panic!("ping was not answered")
        };
        assert_eq!(pong.id, Some(RequestId::Text("s1".into())));
        assert_eq!(pong.result, Some(json!({})));
        let Message::Response(refusal) = server.next() else {
            panic!("the request was not answered")
        };
        assert_eq!(refusal.id, Some(RequestId::Text("s2".into())));
        assert_eq!(refusal.error.map(|e| e.code), Some(METHOD_NOT_FOUND));
        // None of it broke the connection.
        let cancel = CancelFlag::new();
        thread::scope(|scope| {
            let call = scope.spawn(|| client.call_tool("echo", &json!({}), WAIT, &cancel));
            let (id, _) = server.expect_request("tools/call");
            server.reply(id, text("fine"));
            assert_eq!(call.join().unwrap().unwrap().text, "fine");
        });
    }

    #[test]
    fn dropping_the_client_closes_the_server_input() {
        let (client, server) = connect();
        drop(client);
        assert_eq!(
            server.received.recv_timeout(WAIT).err(),
            Some(RecvTimeoutError::Disconnected)
        );
    }
}
