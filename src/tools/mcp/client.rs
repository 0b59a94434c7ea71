//! `McpClient`: one connection to an MCP server, speaking JSON-RPC 2.0 over a transport
//! (`stdio.rs` for a pipe pair, `http.rs` for Streamable HTTP) that it knows only through
//! `transport.rs`: it queues encoded messages on an [`Outbox`] without blocking, and the
//! transport hands what the server sends to its [`Inbox`], which routes each answer to its
//! caller by request id, and each `notifications/progress` to the `tools/call` whose token it
//! carries (restarting that call's timeout), whichever transport brought it.
//!
//! Depends on: `common::cancel`, `tools`, `tools::mcp::config`, `tools::mcp::error`, `tools::mcp::http`, `tools::mcp::process`, `tools::mcp::stdio`, `tools::mcp::transport`, `tools::mcp::wire`.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, select};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};

use super::config::{HttpEndpoint, ServerCommand, ServerSpec};
use super::error::McpError;
use super::process::ServerProcess;
use super::transport::{Inbox, Outbox, Outgoing, QueueError, Transport};
use super::wire::PROTOCOL_VERSION;
use super::wire::{
    CallToolResult, GetPromptResult, InitializeResult, METHOD_NOT_FOUND, Message, ProgressParams,
    PromptsPage, ReadResourceResult, RemotePrompt, RemoteTool, Rendered, Request, RequestId,
    Response, ServerCapabilities, ToolsPage, render_content,
};
use crate::common::cancel::CancelFlag;
use crate::tools::Progress;

/// Revisions whose tools API Sparky knows; a server that answers with another one gets a
/// warning but is used anyway, since the tools API has not changed between them.
const KNOWN_PROTOCOL_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// Pages of a list (`tools/list`, `prompts/list`) followed at most, so a server repeating its
/// cursor cannot loop us.
const MAX_PAGES: usize = 100;

/// Progress reports of one call queued for its caller at most; more are dropped until the
/// caller catches up (progress is a hint, and the caller coalesces it anyway).
const PROGRESS_QUEUE: usize = 16;

/// How many times its timeout a call may run in all, however often it reports progress: a
/// server cannot keep a call alive for ever by reporting progress.
const MAX_TIMEOUTS_PER_CALL: u32 = 10;

/// The outcome of one `tools/call`: its content, and whether the tool said it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ToolReply {
    /// The server's `isError`: the tool ran and reports a failure.
    pub(super) is_error: bool,
    /// The content, rendered by [`render_content`].
    pub(super) content: Rendered,
    /// The `structuredContent`, when there was one.
    pub(super) structured: Option<Value>,
}

/// What the server said about itself in `initialize`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Handshake {
    /// Its `instructions`, when it gave any.
    pub(super) instructions: Option<String>,
    /// What it offers besides tools.
    pub(super) capabilities: ServerCapabilities,
}

/// What a waiting caller receives: the result, or why there is none.
type Reply = std::result::Result<Value, McpError>;

/// What runs when the server announces a new tool list; called on the reader thread, so it
/// must not block.
type ToolsChanged = Arc<dyn Fn() + Send + Sync>;

/// One connection to an MCP server over a transport: a pipe pair (a child's stdout and stdin,
/// or in-memory pipes in tests) or Streamable HTTP.
///
/// The transport's threads hand each message to the client's shared state, which routes each
/// response to the one-shot channel its request registered. [`stop`](Self::stop), or dropping
/// the client, closes it and then stops its transport (the server's process group, or the
/// HTTP session).
pub(super) struct McpClient {
    shared: Arc<ClientShared>,
    /// The transport, taken by [`stop`](Self::stop).
    transport: Mutex<Option<Box<dyn Transport>>>,
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
    /// Called on `notifications/tools/list_changed`; held only to clone the `Arc`.
    tools_changed: Mutex<Option<ToolsChanged>>,
}

struct ClientState {
    /// Callers waiting for an answer, by request id.
    pending: HashMap<i64, Sender<Reply>>,
    /// Where the progress reports of a waiting `tools/call` go, by its request id (which is
    /// also its progress token).
    progress: HashMap<i64, Sender<Progress>>,
    /// Messages for the transport; `None` once closed, which ends the transport's writers.
    outbox: Option<Outbox>,
    /// Why the client closed, once it has.
    closed: Option<String>,
}

impl McpClient {
    /// A client speaking to a server through `reader` (its output) and `writer` (its input)
    /// with the stdio transport. `process`, when given, is stopped when the client stops.
    #[cfg(test)]
    pub(super) fn new(
        server: &str,
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        process: Option<ServerProcess>,
    ) -> Result<Self, McpError> {
        let (outbox, queued) = Outbox::single();
        let client = McpClient::unconnected(server, outbox);
        client.attach_stdio(queued.requests, reader, writer, process)?;
        Ok(client)
    }

    /// Starts the stdio transport on `reader` and `writer` (see `stdio.rs`).
    fn attach_stdio(
        &self,
        lines: crossbeam_channel::Receiver<Outgoing>,
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        process: Option<ServerProcess>,
    ) -> Result<(), McpError> {
        let inbox: Arc<dyn Inbox> = self.shared.clone();
        let stdio = super::stdio::start(inbox, lines, reader, writer, process)?;
        *self.transport.lock() = Some(Box::new(stdio));
        Ok(())
    }

    /// A client for the server `spec` describes, not yet initialised: a process started
    /// (see [`spawn`](Self::spawn)), or an HTTP endpoint, which is first contacted by
    /// [`initialize`](Self::initialize). `call_timeout` is the server's `"timeout"`.
    pub(super) fn connect(
        server: &str,
        spec: &ServerSpec,
        call_timeout: Duration,
    ) -> Result<Self, McpError> {
        match spec {
            ServerSpec::Stdio(command) => McpClient::spawn(server, command),
            ServerSpec::Http(endpoint) => McpClient::http(server, endpoint, call_timeout),
        }
    }

    /// A client for the Streamable HTTP server at `endpoint` (see `http.rs`), whose calls may
    /// take `call_timeout`.
    pub(super) fn http(
        server: &str,
        endpoint: &HttpEndpoint,
        call_timeout: Duration,
    ) -> Result<Self, McpError> {
        let (outbox, queued) = Outbox::split();
        let client = McpClient::unconnected(server, outbox);
        let inbox: Arc<dyn Inbox> = client.shared.clone();
        let http = super::http::start(inbox, queued, endpoint.clone(), call_timeout)?;
        *client.transport.lock() = Some(Box::new(http));
        Ok(client)
    }

    /// A client with no transport yet, queuing on `outbox`.
    fn unconnected(server: &str, outbox: Outbox) -> Self {
        McpClient {
            shared: Arc::new(ClientShared {
                server: server.to_owned(),
                next_id: AtomicI64::new(1),
                state: Mutex::new(ClientState {
                    pending: HashMap::new(),
                    progress: HashMap::new(),
                    outbox: Some(outbox),
                    closed: None,
                }),
                tools_changed: Mutex::new(None),
            }),
            transport: Mutex::new(None),
        }
    }

    /// Spawns `command` (see [`ServerProcess::spawn`]) and returns a client on it, not yet
    /// initialised. The client closes when the server's output ends or its own process exits,
    /// whichever comes first.
    pub(super) fn spawn(server: &str, command: &ServerCommand) -> Result<Self, McpError> {
        let (process, stdin, stdout) = ServerProcess::spawn(server, command)?;
        let (outbox, queued) = Outbox::single();
        let client = McpClient::unconnected(server, outbox);
        let watched = Arc::downgrade(&client.shared);
        process.watch_exit(move |how| {
            let Some(shared) = watched.upgrade() else {
                return;
            };
            let reason = format!("it exited ({how}); it is restarted on the next call");
            if !shared.close_and_log(reason) {
                // The client closed first (its output ended, or we stopped it): the log
                // still says how the process ended.
                log::info!("mcp {}: its process exited ({how})", shared.server);
            }
        })?;
        client.attach_stdio(queued.requests, stdout, stdin, Some(process))?;
        Ok(client)
    }

    /// True until the server stops or the client is closed.
    pub(super) fn is_alive(&self) -> bool {
        self.shared.state.lock().closed.is_none()
    }

    /// Closes the client and stops its server: the writer ends, which closes the server's
    /// input, then the process group is stopped (see [`ServerProcess::stop`]), which may take
    /// a few seconds when the server lingers. Every waiting caller gets a `Closed` error.
    /// Calling it again does nothing.
    pub(super) fn stop(&self) {
        // Closing drops the outbox, so the writers end (and a server's stdin closes).
        self.shared.close("sparky stopped it".into());
        let transport = self.transport.lock().take();
        if let Some(mut transport) = transport {
            transport.stop();
        }
    }

    /// Marks the client closed for `reason` without stopping its transport (the supervisor
    /// stops it when it replaces the client): the next call starts again.
    pub(super) fn close(&self, reason: &str) {
        self.shared.close_and_log(reason.to_owned());
    }

    /// Calls `hook` (on the reader thread; it must not block) whenever the server sends
    /// `notifications/tools/list_changed`.
    pub(super) fn on_tools_changed(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self.shared.tools_changed.lock() = Some(Arc::new(hook));
    }

    /// `initialize`, then the `notifications/initialized` notification. Returns the server's
    /// `instructions` and capabilities.
    pub(super) fn initialize(
        &self,
        deadline: Instant,
        cancel: Option<&CancelFlag>,
    ) -> Result<Handshake, McpError> {
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
        self.notify("notifications/initialized", None)?;
        Ok(Handshake {
            instructions: answer.instructions.filter(|text| !text.trim().is_empty()),
            capabilities: answer.capabilities,
        })
    }

    /// Every tool the server offers, following `nextCursor` from page to page.
    pub(super) fn list_tools(
        &self,
        deadline: Instant,
        cancel: Option<&CancelFlag>,
    ) -> Result<Vec<RemoteTool>, McpError> {
        self.follow_pages("tools/list", deadline, cancel, |page: ToolsPage| {
            (page.tools, page.next_cursor)
        })
    }

    /// Every prompt the server offers (`prompts/list`, every page).
    pub(super) fn list_prompts(
        &self,
        deadline: Instant,
        cancel: Option<&CancelFlag>,
    ) -> Result<Vec<RemotePrompt>, McpError> {
        self.follow_pages("prompts/list", deadline, cancel, |page: PromptsPage| {
            (page.prompts, page.next_cursor)
        })
    }

    /// The prompt `name` filled in with `args` (`prompts/get`), as one user message's text.
    pub(super) fn get_prompt(
        &self,
        name: &str,
        args: &std::collections::BTreeMap<String, String>,
        deadline: Instant,
        cancel: Option<&CancelFlag>,
    ) -> Result<String, McpError> {
        let params = json!({"name": name, "arguments": args});
        let result: GetPromptResult =
            self.parse(self.request("prompts/get", params, deadline, cancel)?)?;
        Ok(result.render())
    }

    /// The resource at `uri` (`resources/read`), as text.
    pub(super) fn read_resource(
        &self,
        uri: &str,
        deadline: Instant,
        cancel: Option<&CancelFlag>,
    ) -> Result<String, McpError> {
        let params = json!({"uri": uri});
        let result: ReadResourceResult =
            self.parse(self.request("resources/read", params, deadline, cancel)?)?;
        Ok(result.render())
    }

    /// Every item of a paginated list method, following `nextCursor` from page to page (at
    /// most [`MAX_PAGES`], so that a server repeating its cursor cannot loop us).
    fn follow_pages<P: for<'de> Deserialize<'de>, T>(
        &self,
        method: &str,
        deadline: Instant,
        cancel: Option<&CancelFlag>,
        split: impl Fn(P) -> (Vec<T>, Option<String>),
    ) -> Result<Vec<T>, McpError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(cursor) => json!({"cursor": cursor}),
                None => json!({}),
            };
            let (page, next) = split(self.parse(self.request(method, params, deadline, cancel)?)?);
            items.extend(page);
            match next {
                Some(next) if !next.is_empty() => cursor = Some(next),
                _ => return Ok(items),
            }
        }
        Err(self.protocol(format!("{method} went on for more than {MAX_PAGES} pages")))
    }

    /// Calls one tool and renders its content as text. The call carries a progress token;
    /// each progress report the server sends for it goes to `progress` and gives the call
    /// `timeout` again (up to [`MAX_TIMEOUTS_PER_CALL`] times `timeout` in all).
    pub(super) fn call_tool(
        &self,
        name: &str,
        args: &Value,
        timeout: Duration,
        cancel: &CancelFlag,
        progress: &dyn Fn(Progress),
    ) -> Result<ToolReply, McpError> {
        let params = json!({"name": name, "arguments": args});
        let wait = Wait {
            timeout,
            cancel: Some(cancel),
            progress: Some(progress),
        };
        let result = self.exchange("tools/call", params, &wait)?;
        let result: CallToolResult = self.parse(result)?;
        Ok(ToolReply {
            is_error: result.is_error,
            content: render_content(&result.content, result.structured_content.as_ref()),
            structured: result.structured_content,
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
        let wait = Wait {
            timeout: deadline.saturating_duration_since(Instant::now()),
            cancel,
            progress: None,
        };
        self.exchange(method, params, &wait)
    }

    /// [`request`](Self::request), with progress: when `wait.progress` is set, the request
    /// carries `_meta.progressToken` (its id), and each report restarts its timeout.
    fn exchange(
        &self,
        method: &str,
        mut params: Value,
        wait: &Wait<'_>,
    ) -> Result<Value, McpError> {
        let Wait {
            timeout: allowed,
            cancel,
            progress,
        } = *wait;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        if progress.is_some()
            && let Some(params) = params.as_object_mut()
        {
            params.insert("_meta".into(), json!({"progressToken": id}));
        }
        let line = self.encode(&Message::request(id, method, params))?;
        let (waiter, reply) = crossbeam_channel::bounded(1);
        let (reporter, reports) = crossbeam_channel::bounded(PROGRESS_QUEUE);
        {
            let mut state = self.shared.state.lock();
            if let Some(reason) = &state.closed {
                return Err(self.shared.closed_error(reason));
            }
            state.pending.insert(id, waiter);
            if progress.is_some() {
                state.progress.insert(id, reporter);
            }
            if let Err(e) = self.shared.queue(&mut state, line) {
                state.pending.remove(&id);
                state.progress.remove(&id);
                return Err(e);
            }
        }
        // However the wait ends, no more reports are routed to it.
        let _routed = Unroute {
            shared: &self.shared,
            id,
        };
        log::debug!("mcp {}: request {id} {method}", self.shared.server);
        let started = Instant::now();
        let mut deadline = started + allowed;
        let last_deadline = started + allowed * MAX_TIMEOUTS_PER_CALL;
        // A cancel wakes the wait below at once through this channel.
        let (cancelled, woken) = crossbeam_channel::bounded::<()>(1);
        let _hook = cancel.map(|cancel| {
            cancel.on_cancel(move || {
                let _ = cancelled.try_send(());
            })
        });
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            select! {
                recv(reply) -> answer => match answer {
                    Ok(answer) => return answer,
                    Err(_) => return Err(self.shared.closed_error("it closed")),
                },
                recv(reports) -> report => {
                    if let (Ok(report), Some(progress)) = (report, progress) {
                        deadline = (Instant::now() + allowed).min(last_deadline);
                        progress(report);
                    }
                }
                recv(woken) -> _ => {}
                default(left) => {}
            }
            if cancel.is_some_and(CancelFlag::is_cancelled) {
                self.abandon(id, method, "the user cancelled the turn");
                return Err(McpError::Cancelled);
            }
            if Instant::now() >= deadline {
                self.abandon(
                    id,
                    method,
                    &format!("no answer within {}", super::error::round_duration(allowed)),
                );
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

    fn encode(&self, message: &Message) -> Result<Outgoing, McpError> {
        encode(message).map_err(|e| self.protocol(format!("cannot encode: {e}")))
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
        self.stop();
    }
}

/// How a request waits: `timeout` (from the request, and again from each progress report),
/// or until `cancel`; its progress reports, if it wants them, go to `progress`.
#[derive(Clone, Copy)]
struct Wait<'a> {
    timeout: Duration,
    cancel: Option<&'a CancelFlag>,
    progress: Option<&'a dyn Fn(Progress)>,
}

/// Stops routing progress reports to request `id` when dropped.
struct Unroute<'a> {
    shared: &'a ClientShared,
    id: i64,
}

impl Drop for Unroute<'_> {
    fn drop(&mut self) {
        self.shared.state.lock().progress.remove(&self.id);
    }
}

impl ClientShared {
    /// Queues a message for the transport without blocking.
    fn queue(&self, state: &mut ClientState, message: Outgoing) -> Result<(), McpError> {
        let Some(outbox) = &state.outbox else {
            return Err(self.closed_error(state.closed.as_deref().unwrap_or("it closed")));
        };
        match outbox.queue(message) {
            Ok(()) => Ok(()),
            Err(QueueError::Full) => Err(McpError::Busy {
                server: self.server.clone(),
            }),
            Err(QueueError::Closed) => Err(self.closed_error("it closed")),
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
    /// True when this call closed it.
    fn close_and_log(&self, reason: String) -> bool {
        let closed = self.close(reason.clone());
        if closed {
            log::warn!("mcp {}: stopped: {reason}", self.server);
        }
        closed
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
                if notification.method == "notifications/progress" {
                    self.progressed(notification.params);
                } else if notification.method == "notifications/tools/list_changed" {
                    let hook = self.tools_changed.lock().clone();
                    if let Some(hook) = hook {
                        hook();
                    }
                }
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

    /// Hands a progress report to the call it is for, if that call still waits and has room
    /// for it (else the report is dropped: a newer one will follow, or the answer).
    fn progressed(&self, params: Option<Value>) {
        let Some(report) = params.and_then(|p| serde_json::from_value::<ProgressParams>(p).ok())
        else {
            log::debug!("mcp {}: a progress report it could not read", self.server);
            return;
        };
        let Some(id) = report.request_id() else {
            return;
        };
        let state = self.state.lock();
        if let Some(reporter) = state.progress.get(&id) {
            let _ = reporter.try_send(report.into_progress());
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
        let Ok(line) = encode(&reply) else {
            return;
        };
        let mut state = self.state.lock();
        if let Err(e) = self.queue(&mut state, line) {
            log::debug!("mcp {}: could not answer its request: {e}", self.server);
        }
    }
}

impl Inbox for ClientShared {
    fn deliver(&self, text: &[u8]) {
        self.dispatch(text);
    }

    fn fail(&self, id: i64, error: McpError) {
        let waiter = self.state.lock().pending.remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.try_send(Err(error));
        }
    }

    fn close(&self, reason: String) -> bool {
        self.close_and_log(reason)
    }

    fn is_open(&self) -> bool {
        self.state.lock().closed.is_none()
    }

    fn server(&self) -> &str {
        &self.server
    }
}

/// A message as the transport takes it.
fn encode(message: &Message) -> serde_json::Result<Outgoing> {
    let (id, method) = match message {
        Message::Request(request) => match &request.id {
            RequestId::Number(id) => (Some(*id), request.method.clone()),
            RequestId::Text(_) => (None, request.method.clone()),
        },
        Message::Notification(notification) => (None, notification.method.clone()),
        Message::Response(_) => (None, String::new()),
    };
    Ok(Outgoing {
        id,
        method,
        line: serde_json::to_string(message)?,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, PipeReader, PipeWriter};
    use std::thread;

    use crossbeam_channel::{Receiver, RecvTimeoutError};

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
                        client
                            .call_tool("echo", &args, WAIT, cancel, &|_| {})
                            .unwrap()
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
                assert_eq!(reply.content.text, format!("answer {i}"));
                assert!(!reply.is_error);
            }
        });
    }

    #[test]
    fn a_cancelled_call_returns_at_once_and_cancels_the_request_at_the_server() {
        let (client, server) = connect();
        let cancel = CancelFlag::new();
        thread::scope(|scope| {
            let call = scope.spawn(|| client.call_tool("slow", &json!({}), WAIT, &cancel, &|_| {}));
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
    fn progress_reports_reach_the_caller_and_restart_its_timeout() {
        let (client, mut server) = connect();
        let cancel = CancelFlag::new();
        let reports = Mutex::new(Vec::new());
        let timeout = Duration::from_millis(300);
        thread::scope(|scope| {
            let call = scope.spawn(|| {
                let record = |report: Progress| reports.lock().push(report);
                client.call_tool("long", &json!({}), timeout, &cancel, &record)
            });
            let (id, params) = server.expect_request("tools/call");
            let RequestId::Number(number) = id else {
                panic!("a numeric id")
            };
            // The token is the request's id.
            assert_eq!(params["_meta"]["progressToken"], json!(number));
            // Four reports 150 ms apart: 600 ms in all, twice the timeout.
            for step in 1..=4 {
                thread::sleep(Duration::from_millis(150));
                let params = json!({"progressToken": number, "progress": step, "total": 4});
                server.send(&Message::notification(
                    "notifications/progress",
                    Some(params),
                ));
            }
            // A report for no waiting call goes nowhere.
            let stray = json!({"progressToken": 9999, "progress": 1});
            server.send(&Message::notification(
                "notifications/progress",
                Some(stray),
            ));
            server.reply(id, text("finished"));
            assert_eq!(call.join().unwrap().unwrap().content.text, "finished");
        });
        let steps: Vec<f64> = reports.lock().iter().map(|r| r.progress).collect();
        assert_eq!(steps, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(reports.lock()[0].total, Some(4.0));
        // Once answered, the call's reports are no longer routed.
        assert!(client.shared.state.lock().progress.is_empty());
    }

    #[test]
    fn a_late_answer_after_a_timeout_is_ignored_and_the_request_cancelled() {
        let (client, mut server) = connect();
        let cancel = CancelFlag::new();
        let outcome = client.call_tool(
            "slow",
            &json!({}),
            Duration::from_millis(50),
            &cancel,
            &|_| {},
        );
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
            let call = scope.spawn(|| client.call_tool("echo", &json!({}), WAIT, &cancel, &|_| {}));
            let (id, _) = server.expect_request("tools/call");
            server.reply(id, text("on time"));
            assert_eq!(call.join().unwrap().unwrap().content.text, "on time");
        });
    }

    #[test]
    fn a_server_that_stops_fails_waiting_and_new_calls_with_a_clear_error() {
        let (client, server) = connect();
        let cancel = CancelFlag::new();
        thread::scope(|scope| {
            let call = scope.spawn(|| client.call_tool("echo", &json!({}), WAIT, &cancel, &|_| {}));
            server.expect_request("tools/call");
            drop(server.output); // The server's stdout closes, as when it exits.
            let error = call.join().unwrap().unwrap_err();
            assert!(matches!(error, McpError::Closed { .. }), "{error:?}");
            assert!(error.to_string().contains("stopped"), "{error}");
        });
        assert!(!client.is_alive());
        let again = client
            .call_tool("echo", &json!({}), WAIT, &cancel, &|_| {})
            .unwrap_err();
        assert!(matches!(again, McpError::Closed { .. }), "{again:?}");
    }

    #[test]
    fn errors_and_error_results_are_told_apart() {
        let (client, mut server) = connect();
        let cancel = CancelFlag::new();
        thread::scope(|scope| {
            let call = scope.spawn(|| client.call_tool("nope", &json!({}), WAIT, &cancel, &|_| {}));
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

            let call = scope.spawn(|| client.call_tool("fail", &json!({}), WAIT, &cancel, &|_| {}));
            let (id, _) = server.expect_request("tools/call");
            server.reply(
                id,
                json!({"content": [{"type": "text", "text": "bad"}], "isError": true}),
            );
            let reply = call.join().unwrap().unwrap();
            assert_eq!((reply.is_error, reply.content.text.as_str()), (true, "bad"));

            let call = scope.spawn(|| client.call_tool("odd", &json!({}), WAIT, &cancel, &|_| {}));
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
            let call = scope.spawn(|| client.call_tool("echo", &json!({}), WAIT, &cancel, &|_| {}));
            let (id, _) = server.expect_request("tools/call");
            server.reply(id, text("fine"));
            assert_eq!(call.join().unwrap().unwrap().content.text, "fine");
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
