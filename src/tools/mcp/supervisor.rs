//! The supervisor: a configured server that is started again by the next call after it dies,
//! and the [`Tool`] each of its tools becomes in the ToolChain. Depends on `cancel` and
//! `tools`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde_json::{Value, json};

use super::client::McpClient;
use super::config::ServerCommand;
use super::wire::RemoteTool;
use super::{CALL_TIMEOUT, McpError, START_TIMEOUT};
use crate::cancel::CancelFlag;
use crate::tools::{Tool, ToolContext};

/// A configured server: how to start it and the live client, replaced after it dies.
pub(super) struct McpServer {
    /// The server's name in the config.
    pub(super) name: String,
    command: ServerCommand,
    /// The live client. Held only to clone or swap the `Arc`.
    client: Mutex<Option<Arc<McpClient>>>,
    /// Taken by the one caller restarting the server, across spawn and handshake (bounded by
    /// [`START_TIMEOUT`]), so that callers finding it down start one process, not one each.
    restart: Arc<Gate>,
    /// Set by shutdown: no more restarts.
    stopped: AtomicBool,
}

impl McpServer {
    /// A server whose first client is `client`.
    pub(super) fn new(name: String, command: ServerCommand, client: McpClient) -> Self {
        McpServer {
            name,
            command,
            client: Mutex::new(Some(Arc::new(client))),
            restart: Arc::default(),
            stopped: AtomicBool::new(false),
        }
    }

    /// The live client, restarting the server first when it has stopped.
    fn live_client(&self, cancel: &CancelFlag) -> Result<Arc<McpClient>, McpError> {
        if let Some(client) = self.current() {
            return Ok(client);
        }
        let _restarting = self.restart.take(cancel, &self.name)?;
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
        // Stopping the dead client reaps what is left of its process group; done outside the
        // lock. A caller still holding it only sees it closed.
        if let Some(old) = old {
            old.stop();
        }
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
pub(super) type Started = (McpClient, Vec<RemoteTool>);

/// Spawns a server, initialises it and lists its tools, all within `timeout`.
pub(super) fn start_server(
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
