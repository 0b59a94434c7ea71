//! The supervisor: a configured server that is started again by the next call after it dies,
//! the [`Tool`] each of its tools becomes in the ToolChain, and the [`Catalog`] of every
//! server's current tools, which a server updates when it announces a new list
//! (`notifications/tools/list_changed`) or restarts; the catalog adds `mcp_read_resource`
//! while a server offers resources, and finds prompts for `/prompt`. Each server carries its
//! policy (`"approve"`, `"timeout"`, `"instructions"`), whether it runs a command or is
//! reached at a URL. The catalog combines the servers' instructions once per change
//! (`instructions.rs`), not once per turn.
//!
//! Depends on: `common::cancel`, `tools`, `tools::error`, `tools::mcp::client`, `tools::mcp::config`, `tools::mcp::error`, `tools::mcp::instructions`, `tools::mcp::oauth`, `tools::mcp::policy`, `tools::mcp::resources`, `tools::mcp::schema`, `tools::mcp::wire`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use serde_json::{Value, json};

use super::client::{Handshake, McpClient};
use super::config::ServerSpec;
use super::error::McpError;
use super::instructions;
use super::oauth::ServerAuth;
use super::policy::{Hints, Root, ServerPolicy};
use super::resources::{Reader, ResourceTool};
use super::schema;
use super::wire::{RemotePrompt, RemoteTool};
use crate::common::cancel::CancelFlag;
use crate::tools::error::ToolError;
use crate::tools::{PromptInfo, Tool, ToolContent, ToolContext, ToolSource};

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

/// Every server's current tools and instructions: what the ToolChain consults (as its
/// [`ToolSource`]) for each new turn and `ready` frame.
#[derive(Default)]
pub(super) struct Catalog {
    /// Held only to read or replace entries; never across IO.
    state: RwLock<CatalogState>,
    /// Bumped on every change.
    generation: AtomicU64,
}

/// One server's tools and handshake, as last published.
struct Published {
    tools: Vec<Arc<dyn Tool>>,
    handshake: Handshake,
    /// The server, for resources and prompts; weak, since it holds the catalog weakly too.
    server: Weak<McpServer>,
}

#[derive(Default)]
struct CatalogState {
    /// Each server's tools and handshake, by server name.
    servers: BTreeMap<String, Published>,
    /// Every server's tools in server-name order, without names taken by an earlier server.
    combined: Arc<[Arc<dyn Tool>]>,
    /// The servers' instructions as the system prompt carries them (`instructions.rs`).
    instructions: String,
}

impl Catalog {
    /// Makes `tools` and `handshake` (its instructions and capabilities) the current ones of
    /// `server`.
    pub(super) fn publish(
        &self,
        server: &Arc<McpServer>,
        tools: Vec<Arc<dyn Tool>>,
        handshake: Handshake,
    ) {
        let mut state = self.state.write();
        let published = Published {
            tools,
            handshake,
            server: Arc::downgrade(server),
        };
        state.servers.insert(server.name.clone(), published);
        let mut names = HashSet::new();
        let mut combined = Vec::new();
        let readable: Vec<(String, Reader)> = state
            .servers
            .iter()
            .filter(|(_, published)| published.handshake.capabilities.resources)
            .map(|(name, published)| {
                let server = published.server.clone();
                let read: Reader = Box::new(move |uri, cancel| {
                    let server = server.upgrade()?;
                    Some(server.read_resource(uri, cancel))
                });
                (name.clone(), read)
            })
            .collect();
        if !readable.is_empty() {
            let tool: Arc<dyn Tool> = Arc::new(ResourceTool::new(readable));
            names.insert(tool.name().to_owned());
            combined.push(tool);
        }
        for (name, published) in &state.servers {
            for tool in &published.tools {
                if names.insert(tool.name().to_owned()) {
                    combined.push(tool.clone());
                } else {
                    log::warn!(
                        "mcp {name}: tool {} left out: another server has its name",
                        tool.name()
                    );
                }
            }
        }
        state.combined = combined.into();
        let combined =
            instructions::combine(state.servers.iter().filter_map(|(name, published)| {
                Some((name.as_str(), published.handshake.instructions.as_deref()?))
            }));
        if !combined.cut.is_empty() && combined.text != state.instructions {
            log::warn!(
                "mcp: the servers' instructions are more than {} bytes; cut from those of {} \
                 (\"instructions\": false in a server's config entry leaves its own out)",
                instructions::MAX_INSTRUCTIONS_BYTES,
                combined.cut.join(", ")
            );
        }
        state.instructions = combined.text;
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl ToolSource for Catalog {
    fn tools(&self) -> Arc<[Arc<dyn Tool>]> {
        self.state.read().combined.clone()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn instructions(&self) -> String {
        self.state.read().instructions.clone()
    }

    fn prompts(&self, cancel: &CancelFlag) -> Result<Vec<PromptInfo>, ToolError> {
        let mut prompts = Vec::new();
        let mut failure = None;
        for server in self.prompt_servers() {
            match server.list_prompts(cancel) {
                Ok(listed) => prompts.extend(listed.into_iter().map(|prompt| {
                    PromptInfo {
                        server: server.name.clone(),
                        description: prompt.description.or(prompt.title).unwrap_or_default(),
                        arguments: prompt
                            .arguments
                            .into_iter()
                            .map(|argument| (argument.name, argument.required))
                            .collect(),
                        name: prompt.name,
                    }
                })),
                Err(McpError::Cancelled) => return Err(ToolError::Cancelled),
                Err(e) => {
                    log::warn!("mcp {}: cannot list its prompts: {e}", server.name);
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(failure) if prompts.is_empty() => Err(failure.into()),
            _ => Ok(prompts),
        }
    }

    fn prompt(
        &self,
        name: &str,
        args: &BTreeMap<String, String>,
        cancel: &CancelFlag,
    ) -> Result<String, ToolError> {
        let servers = self.prompt_servers();
        let (server, prompt) = match name.split_once('/') {
            Some((server, prompt)) => {
                let server = servers.into_iter().find(|s| s.name == server);
                (server, prompt)
            }
            None => {
                let mut found = None;
                for server in servers {
                    let listed = server.list_prompts(cancel)?;
                    if listed.iter().any(|p| p.name == name) {
                        found = Some(server);
                        break;
                    }
                }
                (found, name)
            }
        };
        let Some(server) = server else {
            return Err(ToolError::NotFound(format!("prompt named {name}")));
        };
        Ok(server.get_prompt(prompt, args, cancel)?)
    }
}

impl Catalog {
    /// The servers that offer prompts, in name order.
    fn prompt_servers(&self) -> Vec<Arc<McpServer>> {
        self.state
            .read()
            .servers
            .values()
            .filter(|published| published.handshake.capabilities.prompts)
            .filter_map(|published| published.server.upgrade())
            .collect()
    }
}

/// A configured server: how to start it and the live client, replaced after it dies.
pub(super) struct McpServer {
    /// The server's name in the config.
    pub(super) name: String,
    spec: ServerSpec,
    /// Which of its tools ask a person first, and how long a call may wait (its `roots` are
    /// in [`roots`](Self::roots) instead, since they follow the config file).
    policy: ServerPolicy,
    /// What `roots/list` answers it: its entry's `"roots"`, changed when the config file is
    /// edited (`watch.rs`). Held only to read or replace them.
    roots: Mutex<Vec<Root>>,
    /// The live client. Held only to clone or swap the `Arc`.
    client: Mutex<Option<Arc<McpClient>>>,
    /// Taken by the one caller restarting the server, across spawn and handshake (bounded by
    /// [`START_TIMEOUT`]), so that callers finding it down start one process, not one each.
    restart: Arc<Gate>,
    /// Set by shutdown: no more restarts.
    stopped: AtomicBool,
    /// Where its tools are published; weak, since the catalog holds its tools, which hold it.
    catalog: Weak<Catalog>,
    /// What its last `initialize` said: instructions and capabilities.
    handshake: Mutex<Handshake>,
    /// Set when the server announced a new tool list that has not been fetched yet.
    relist_wanted: AtomicBool,
    /// Set while a `mcp-<name>-relist` thread runs.
    relisting: AtomicBool,
}

impl McpServer {
    /// A server with no client yet, publishing its tools to `catalog`; give it its first with
    /// [`adopt`](Self::adopt).
    pub(super) fn new(
        name: String,
        spec: ServerSpec,
        mut policy: ServerPolicy,
        catalog: &Arc<Catalog>,
    ) -> Arc<Self> {
        let roots = Mutex::new(std::mem::take(&mut policy.roots));
        Arc::new(McpServer {
            name,
            spec,
            policy,
            roots,
            client: Mutex::new(None),
            restart: Arc::default(),
            stopped: AtomicBool::new(false),
            catalog: Arc::downgrade(catalog),
            handshake: Mutex::new(Handshake::default()),
            relist_wanted: AtomicBool::new(false),
            relisting: AtomicBool::new(false),
        })
    }

    /// Makes `started` the live client and its tools and instructions the server's current
    /// ones; returns the client and how many tools were published. The client's
    /// `notifications/tools/list_changed` fetches the list again from then on. The previous
    /// client, if any, is stopped (outside the lock).
    pub(super) fn adopt(self: &Arc<Self>, started: Started) -> (Arc<McpClient>, usize) {
        let Started {
            client,
            tools,
            handshake,
        } = started;
        let weak = Arc::downgrade(self);
        client.on_tools_changed(move || {
            if let Some(server) = weak.upgrade() {
                server.relist_soon();
            }
        });
        let client = Arc::new(client);
        let old = {
            let mut slot = self.client.lock();
            if self.stopped.load(Ordering::SeqCst) {
                None
            } else {
                slot.replace(client.clone())
            }
        };
        // Stopping the dead client reaps what is left of its process group. A caller still
        // holding it only sees it closed.
        if let Some(old) = old {
            old.stop();
        }
        if self.stopped.load(Ordering::SeqCst) {
            // Shut down meanwhile: the client stops when the caller drops it.
            return (client, 0);
        }
        // Roots edited while it started were not seen by it: it is told now.
        self.tell_roots(&client);
        *self.handshake.lock() = handshake;
        let count = self.publish(tools);
        (client, count)
    }

    /// What `roots/list` answers it now.
    pub(super) fn roots(&self) -> Vec<Root> {
        self.roots.lock().clone()
    }

    /// Makes `roots` what `roots/list` answers it, and tells the running server (with
    /// `notifications/roots/list_changed`) when they changed; a server that is down gets them
    /// when it starts again.
    pub(super) fn set_roots(&self, roots: Vec<Root>) {
        *self.roots.lock() = roots;
        if let Some(client) = self.current() {
            self.tell_roots(&client);
        }
    }

    /// Gives `client` the current roots, announcing them when they differ from what it had.
    fn tell_roots(&self, client: &McpClient) {
        match client.update_roots(self.roots()) {
            Ok(true) => log::info!("mcp {}: told its roots changed", self.name),
            Ok(false) => {}
            Err(e) => log::info!("mcp {}: roots not announced: {e}", self.name),
        }
    }

    /// Makes `remote` the server's current tools, leaving out those that cannot work here
    /// (one log line each); returns how many were published.
    fn publish(self: &Arc<Self>, remote: Vec<RemoteTool>) -> usize {
        let mut names = HashSet::new();
        let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
        for remote in remote {
            let full_name = tool_name(&self.name, &remote.name);
            if remote.requires_tasks() {
                log::warn!(
                    "mcp {}: tool {:?} left out: it requires tasks, which sparky does not \
                     support",
                    self.name,
                    remote.name
                );
                continue;
            }
            if remote.name.is_empty() || !names.insert(full_name.clone()) {
                log::warn!(
                    "mcp {}: tool {:?} left out: its name is empty or taken ({full_name})",
                    self.name,
                    remote.name
                );
                continue;
            }
            tools.push(Arc::new(McpTool::new(self.clone(), full_name, remote)));
        }
        let count = tools.len();
        if let Some(catalog) = self.catalog.upgrade() {
            let mut handshake = self.handshake.lock().clone();
            if !self.policy.instructions {
                // `"instructions": false`: the server's own words stay out of every prompt.
                handshake.instructions = None;
            }
            catalog.publish(self, tools, handshake);
        }
        count
    }

    /// Fetches the tool list again on a `mcp-<name>-relist` thread, unless one is running
    /// already (it then fetches once more). Never blocks: called on the reader thread.
    fn relist_soon(self: &Arc<Self>) {
        self.relist_wanted.store(true, Ordering::SeqCst);
        if self.relisting.swap(true, Ordering::SeqCst) {
            return;
        }
        let server = self.clone();
        let spawned = thread::Builder::new()
            .name(format!("mcp-{}-relist", self.name))
            .spawn(move || server.run_relist());
        if let Err(e) = spawned {
            self.relisting.store(false, Ordering::SeqCst);
            log::warn!("mcp {}: cannot fetch its new tool list: {e}", self.name);
        }
    }

    /// The relist thread: fetches the list while new ones are announced, then ends.
    fn run_relist(self: &Arc<Self>) {
        loop {
            while self.relist_wanted.swap(false, Ordering::SeqCst) {
                let Some(client) = self.current() else {
                    // It is down; its restart lists its tools anyway.
                    continue;
                };
                match client.list_tools(Instant::now() + START_TIMEOUT, None) {
                    Ok(tools) => {
                        let count = self.publish(tools);
                        log::info!(
                            "mcp {}: tool list changed: {}",
                            self.name,
                            tools_text(count)
                        );
                    }
                    Err(e) => log::warn!("mcp {}: cannot fetch its new tool list: {e}", self.name),
                }
            }
            self.relisting.store(false, Ordering::SeqCst);
            // A notification between the last check and the store above spawned no thread.
            if !self.relist_wanted.load(Ordering::SeqCst)
                || self.relisting.swap(true, Ordering::SeqCst)
            {
                return;
            }
        }
    }

    /// The body of a `mcp-<name>-start` thread: starts the server, and after each failure
    /// (logged) waits and tries again, the wait doubling from `first_delay` up to
    /// [`MAX_RETRY_DELAY`](super::MAX_RETRY_DELAY); its tools join the catalog once it is up.
    /// Ends when it is up or when `stopping` is set.
    pub(super) fn run_start(self: &Arc<Self>, stopping: &CancelFlag, first_delay: Duration) {
        let mut delay = first_delay;
        for attempt in 1.. {
            if stopping.is_cancelled() {
                return;
            }
            match start_server(
                &self.name,
                &self.spec,
                &self.policy,
                self.roots(),
                Some(stopping),
            ) {
                Ok(started) => {
                    let (_, count) = self.adopt(started);
                    log::info!("mcp {}: loaded with {}", self.name, tools_text(count));
                    return;
                }
                Err(McpError::Cancelled) => return,
                Err(_) if self.auth().is_some_and(|auth| auth.needs_sign_in()) => {
                    // No retries until someone signs in: its state says why it is down.
                    if let Some(auth) = self.auth()
                        && !auth.wait_for_sign_in(stopping)
                    {
                        return;
                    }
                    delay = first_delay;
                    continue;
                }
                Err(e) => log::warn!(
                    "mcp {}: not loaded (attempt {attempt}): {e}; trying again in {}",
                    self.name,
                    super::error::round_duration(delay)
                ),
            }
            if stopping.sleep(delay) {
                return;
            }
            delay = (delay * 2).min(super::MAX_RETRY_DELAY);
        }
    }

    /// The resource at `uri`, as text (`resources/read`), within the server's `"timeout"`.
    pub(super) fn read_resource(
        self: &Arc<Self>,
        uri: &str,
        cancel: &CancelFlag,
    ) -> Result<String, McpError> {
        let client = self.live_client(cancel)?;
        client.read_resource(uri, Instant::now() + self.policy.timeout.0, Some(cancel))
    }

    /// Every prompt the server offers, within the server's `"timeout"`.
    fn list_prompts(self: &Arc<Self>, cancel: &CancelFlag) -> Result<Vec<RemotePrompt>, McpError> {
        let client = self.live_client(cancel)?;
        client.list_prompts(Instant::now() + self.policy.timeout.0, Some(cancel))
    }

    /// The prompt `name` filled in with `args`, within the server's `"timeout"`.
    fn get_prompt(
        self: &Arc<Self>,
        name: &str,
        args: &BTreeMap<String, String>,
        cancel: &CancelFlag,
    ) -> Result<String, McpError> {
        let client = self.live_client(cancel)?;
        client.get_prompt(
            name,
            args,
            Instant::now() + self.policy.timeout.0,
            Some(cancel),
        )
    }

    /// Its sign-in, when it is a `url` server that signs in with OAuth.
    pub(super) fn auth(&self) -> Option<&Arc<ServerAuth>> {
        match &self.spec {
            ServerSpec::Http(endpoint) => endpoint.auth.0.as_ref(),
            ServerSpec::Stdio(_) => None,
        }
    }

    /// True while it has a live client.
    pub(super) fn is_up(&self) -> bool {
        self.current().is_some()
    }

    /// The live client, restarting the server first when it has stopped.
    fn live_client(self: &Arc<Self>, cancel: &CancelFlag) -> Result<Arc<McpClient>, McpError> {
        if let Some(client) = self.current() {
            return Ok(client);
        }
        if let Some(auth) = self.auth().filter(|auth| auth.needs_sign_in()) {
            return Err(McpError::Closed {
                server: self.name.clone(),
                reason: format!(
                    "it needs a sign-in: use Connect on the page or `sparky mcp login {}`",
                    auth.name
                ),
            });
        }
        let _restarting = self.restart.take(cancel, &self.name)?;
        // Another caller may have restarted it while we waited.
        if let Some(client) = self.current() {
            return Ok(client);
        }
        self.check_running()?;
        log::info!("mcp {}: restarting", self.name);
        let started = start_server(
            &self.name,
            &self.spec,
            &self.policy,
            self.roots(),
            Some(cancel),
        )
        .map_err(|e| match e {
            McpError::Cancelled => McpError::Cancelled,
            other => McpError::Closed {
                server: self.name.clone(),
                reason: format!("it could not be restarted: {other}"),
            },
        })?;
        // The restarted server's list is the new truth.
        let (client, count) = self.adopt(started);
        log::info!("mcp {}: restarted with {}", self.name, tools_text(count));
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

    /// Stops the server for good: no more restarts, and its process group is stopped (which
    /// may take a few seconds, see [`McpClient::stop`]), outside the lock. A caller still
    /// holding the client only sees it closed.
    pub(super) fn shutdown(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let client = self.client.lock().take();
        if let Some(client) = client {
            client.stop();
        }
    }
}

/// "1 tool", "3 tools".
pub(super) fn tools_text(count: usize) -> String {
    format!("{count} tool{}", if count == 1 { "" } else { "s" })
}

/// A lock that a waiter can give up on when its turn is cancelled: a flag and a condition
/// variable, which a cancel hook notifies.
#[derive(Default)]
struct Gate {
    taken: Mutex<bool>,
    freed: Condvar,
}

/// The gate, taken; frees it on drop.
struct GateGuard<'a>(&'a Gate);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        *self.0.taken.lock() = false;
        self.0.freed.notify_one();
    }
}

impl Gate {
    /// Takes the gate, waiting while another caller holds it (it holds it for one restart at
    /// most); `Cancelled` when `cancel` is set meanwhile.
    fn take<'a>(
        self: &'a Arc<Self>,
        cancel: &CancelFlag,
        server: &str,
    ) -> Result<GateGuard<'a>, McpError> {
        let gate = self.clone();
        // Registered before the lock is taken: a hook for a flag set already runs at once.
        let _hook = cancel.on_cancel(move || {
            let _taken = gate.taken.lock();
            gate.freed.notify_all();
        });
        let deadline = Instant::now() + START_TIMEOUT + START_TIMEOUT;
        let mut taken = self.taken.lock();
        while *taken {
            if cancel.is_cancelled() {
                return Err(McpError::Cancelled);
            }
            if self.freed.wait_until(&mut taken, deadline).timed_out() {
                return Err(McpError::Closed {
                    server: server.to_owned(),
                    reason: "another call has been restarting it for too long".into(),
                });
            }
        }
        if cancel.is_cancelled() {
            return Err(McpError::Cancelled);
        }
        *taken = true;
        Ok(GateGuard(self))
    }
}

/// One tool of one MCP server, as the ToolChain sees it.
pub(super) struct McpTool {
    server: Arc<McpServer>,
    /// The name the model sees (see [`tool_name`]).
    name: String,
    /// The tool's own name on its server.
    remote_name: String,
    description: String,
    parameters: Value,
    /// True when each call waits for a person (the server's `"approve"` and the tool's hints).
    asks: bool,
    /// The schema its `structuredContent` must match, when it declared one.
    output_schema: Option<Value>,
}

impl McpTool {
    /// The tool `remote` of `server`, called `name` in the ToolChain.
    pub(super) fn new(server: Arc<McpServer>, name: String, remote: RemoteTool) -> Self {
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
        let hints = Hints {
            read_only: remote.annotations.read_only_hint,
            destructive: remote.annotations.destructive_hint,
        };
        let asks = server.policy.approve.asks(&remote.name, hints);
        McpTool {
            server,
            name,
            remote_name: remote.name,
            description,
            parameters,
            asks,
            output_schema: remote.output_schema.filter(Value::is_object),
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
    fn call(&self, args: &Value, ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        self.call_content(args, ctx).map(|content| content.text)
    }
    fn call_content(&self, args: &Value, ctx: &ToolContext<'_>) -> Result<ToolContent, ToolError> {
        let report = |report| {
            if let Some(sink) = ctx.progress {
                sink.report(report);
            }
        };
        let mut expired = false;
        let reply = loop {
            let client = self.server.live_client(ctx.cancel)?;
            let timeout = self.server.policy.timeout.0;
            match client.call_tool(
                &self.remote_name,
                args,
                timeout,
                ctx.cancel,
                &report,
                ctx.ask,
            ) {
                Ok(reply) => break reply,
                // The server never ran it: once, start a new session and call it again.
                Err(McpError::SessionExpired { .. }) if !expired => {
                    expired = true;
                    client.close("its session expired");
                }
                Err(e) => {
                    // It now needs a sign-in (its refresh token was refused): closed, so that
                    // its state says so and the first call after a sign-in starts it again.
                    if self.server.auth().is_some_and(|auth| auth.needs_sign_in()) {
                        client.close("it needs a sign-in");
                    }
                    return Err(e.into());
                }
            }
        };
        if reply.is_error {
            return Err(ToolError::failed(reply.content.text));
        }
        if let (Some(structured), Some(schema)) = (reply.structured, &self.output_schema)
            && let Err(mismatch) = schema::check(&structured, schema)
        {
            return Err(McpError::OutputMismatch {
                tool: self.remote_name.clone(),
                mismatch: Box::new(mismatch),
                structured,
            }
            .into());
        }
        Ok(ToolContent {
            text: reply.content.text,
            images: reply.content.images,
            files: reply.content.files,
        })
    }
    fn needs_approval(&self) -> bool {
        self.asks
    }
}

/// A started, initialised client, the tools its server listed and its handshake.
pub(super) struct Started {
    /// The client, initialised.
    pub(super) client: McpClient,
    /// Every tool the server listed.
    pub(super) tools: Vec<RemoteTool>,
    /// What its `initialize` result said.
    pub(super) handshake: Handshake,
}

/// Spawns (or connects to) a server, initialises it and lists its tools, all within
/// [`START_TIMEOUT`]; its calls will follow `policy`'s timeout, and `roots/list` answers
/// `roots`.
pub(super) fn start_server(
    name: &str,
    spec: &ServerSpec,
    policy: &ServerPolicy,
    roots: Vec<Root>,
    cancel: Option<&CancelFlag>,
) -> Result<Started, McpError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let client = McpClient::connect(name, spec, policy.timeout.0)?;
    client.set_roots(roots);
    let handshake = client.initialize(deadline, cancel)?;
    let tools = client.list_tools(deadline, cancel)?;
    Ok(Started {
        client,
        tools,
        handshake,
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

    fn server(name: &str, catalog: &Arc<Catalog>) -> Arc<McpServer> {
        server_with(name, ServerPolicy::default(), catalog)
    }

    fn server_with(name: &str, policy: ServerPolicy, catalog: &Arc<Catalog>) -> Arc<McpServer> {
        let command = super::super::config::ServerCommand {
            command: "true".into(),
            args: Vec::new(),
            env: Default::default(),
            cwd: None,
        };
        McpServer::new(name.into(), ServerSpec::Stdio(command), policy, catalog)
    }

    #[test]
    fn the_catalog_gives_each_text_once_and_leaves_out_servers_that_said_no() {
        let catalog = Arc::new(Catalog::default());
        let quiet = ServerPolicy {
            instructions: false,
            ..ServerPolicy::default()
        };
        let (stdio, http, off) = (
            server("stdio", &catalog),
            server("http", &catalog),
            server_with("off", quiet, &catalog),
        );
        for (server, text) in [
            (&stdio, "Use echo."),
            (&http, "Use echo."),
            (&off, "Secret."),
        ] {
            server.handshake.lock().instructions = Some(text.into());
            server.publish(vec![remote(json!({"name": "one"}))]);
        }
        assert_eq!(
            catalog.instructions(),
            "Instructions from the MCP servers http and stdio:\nUse echo."
        );
        // The tools of a server without instructions are there all the same.
        assert_eq!(names(&catalog), ["http__one", "off__one", "stdio__one"]);
    }

    fn remote(value: Value) -> RemoteTool {
        serde_json::from_value(value).unwrap()
    }

    fn names(catalog: &Catalog) -> Vec<String> {
        catalog
            .tools()
            .iter()
            .map(|t| t.name().to_owned())
            .collect()
    }

    #[test]
    fn the_catalog_leaves_out_task_tools_and_follows_each_server_s_latest_list() {
        let catalog = Arc::new(Catalog::default());
        let (a, b) = (server("a", &catalog), server("b", &catalog));
        a.handshake.lock().instructions = Some("Use a.".into());
        let published = a.publish(vec![
            remote(json!({"name": "one"})),
            remote(json!({"name": "research", "execution": {"taskSupport": "required"}})),
            remote(json!({"name": "maybe", "execution": {"taskSupport": "optional"}})),
        ]);
        assert_eq!(published, 2);
        let before = catalog.generation();
        b.publish(vec![remote(json!({"name": "two"}))]);
        assert_ne!(catalog.generation(), before);
        assert_eq!(names(&catalog), ["a__one", "a__maybe", "b__two"]);
        assert_eq!(
            catalog.instructions(),
            "Instructions from the MCP server a:\nUse a."
        );
        // A new list from a replaces its old one and leaves b's alone.
        a.publish(vec![remote(json!({"name": "three"}))]);
        assert_eq!(names(&catalog), ["a__three", "b__two"]);
        b.handshake.lock().instructions = Some("Use b.".into());
        b.publish(Vec::new());
        assert_eq!(names(&catalog), ["a__three"]);
        assert_eq!(
            catalog.instructions(),
            "Instructions from the MCP server a:\nUse a.\n\n\
             Instructions from the MCP server b:\nUse b."
        );
    }
}
