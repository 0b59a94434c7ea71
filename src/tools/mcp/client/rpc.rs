//! `Rpc`: JSON-RPC 2.0 between an [`McpClient`](super::McpClient) and its server, over a
//! transport it knows only through `transport.rs`. A request gets the next id and registers a
//! one-shot channel under it before its message is queued on the [`Outbox`] (never blocking);
//! the transport hands each message the server sends to the [`Inbox`] this implements, which
//! routes an answer to the caller waiting under its id, a `notifications/progress` to the
//! `tools/call` whose token it carries (restarting that call's timeout), and answers the
//! server's own requests: `ping` and `roots/list` at once, and those that need a person
//! (`elicitation/create`, `sampling/createMessage`, see `asked.rs`) on the thread of the call
//! they belong to (the one whose HTTP answer stream carried them, else the only call in
//! flight that can ask; never a guess between several), which waits for the person meanwhile (the call's timeout stops while it
//! does). A caller that is cancelled or times out stops waiting and tells the
//! server with `notifications/cancelled`.
//!
//! Depends on: `common::cancel`, `tools`, `tools::ask`, `tools::mcp::client::asked`, `tools::mcp::error`, `tools::mcp::policy`, `tools::mcp::transport`, `tools::mcp::wire`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, select};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::cancel::CancelFlag;
use crate::tools::Progress;
use crate::tools::ask::AskUser;
use crate::tools::mcp::client::asked;
use crate::tools::mcp::error::{McpError, round_duration};
use crate::tools::mcp::policy::Root;
use crate::tools::mcp::transport::{Inbox, Outbox, Outgoing, QueueError};
use crate::tools::mcp::wire::{
    METHOD_NOT_FOUND, Message, ProgressParams, Request, RequestId, Response,
};

/// Progress reports of one call queued for its caller at most; more are dropped until the
/// caller catches up (progress is a hint, and the caller coalesces it anyway).
const PROGRESS_QUEUE: usize = 16;

/// How many times its timeout a call may run in all, however often it reports progress: a
/// server cannot keep a call alive for ever by reporting progress.
const MAX_TIMEOUTS_PER_CALL: u32 = 10;

/// Requests for a person queued for one call at most; more are refused at once.
const ASK_QUEUE: usize = 4;

/// What a waiting caller receives: the result, or why there is none.
type Reply = std::result::Result<Value, McpError>;

/// What runs when the server announces a new tool list; called on the reader thread, so it
/// must not block.
type ToolsChanged = Arc<dyn Fn() + Send + Sync>;

/// One server's side of the conversation: what a client shares with its transport's threads.
pub(super) struct Rpc {
    /// The server's name, for errors and the log.
    pub(super) server: String,
    next_id: AtomicI64,
    /// Held only to register or remove a waiter, or to queue a line (never blocking); never
    /// across IO.
    state: Mutex<RpcState>,
    /// Called on `notifications/tools/list_changed`; held only to clone the `Arc`.
    tools_changed: Mutex<Option<ToolsChanged>>,
    /// What `roots/list` answers (the entry's `"roots"`). Held only to read or set it.
    roots: Mutex<Vec<Root>>,
}

struct RpcState {
    /// Callers waiting for an answer, by request id.
    pending: HashMap<i64, Sender<Reply>>,
    /// Where the progress reports of a waiting `tools/call` go, by its request id (which is
    /// also its progress token).
    progress: HashMap<i64, Sender<Progress>>,
    /// Where the server's requests for a person go, by the request id of the waiting
    /// `tools/call` that can ask one (a call made on behalf of a turn).
    asks: BTreeMap<i64, Sender<Request>>,
    /// Messages for the transport; `None` once closed, which ends the transport's writers.
    outbox: Option<Outbox>,
    /// Why the client closed, once it has.
    closed: Option<String>,
}

impl Rpc {
    /// An open conversation with the server `server`, queuing on `outbox`.
    pub(super) fn new(server: &str, outbox: Outbox) -> Self {
        Rpc {
            server: server.to_owned(),
            next_id: AtomicI64::new(1),
            state: Mutex::new(RpcState {
                pending: HashMap::new(),
                progress: HashMap::new(),
                asks: BTreeMap::new(),
                outbox: Some(outbox),
                closed: None,
            }),
            tools_changed: Mutex::new(None),
            roots: Mutex::new(Vec::new()),
        }
    }

    /// Sets what `roots/list` answers; true when that changed it.
    pub(super) fn set_roots(&self, roots: Vec<Root>) -> bool {
        let mut current = self.roots.lock();
        if *current == roots {
            return false;
        }
        *current = roots;
        true
    }

    /// True until the server stops or the client is closed.
    pub(super) fn is_open(&self) -> bool {
        self.state.lock().closed.is_none()
    }

    /// Calls `hook` (on the reader thread; it must not block) whenever the server sends
    /// `notifications/tools/list_changed`.
    pub(super) fn on_tools_changed(&self, hook: ToolsChanged) {
        *self.tools_changed.lock() = Some(hook);
    }

    /// How many calls have their progress reports routed to them now.
    #[cfg(test)]
    pub(super) fn progress_routes(&self) -> usize {
        self.state.lock().progress.len()
    }

    /// Sends a request and waits for its answer until `deadline`, or until `cancel` is set.
    /// A cancelled or timed-out request is cancelled at the server with
    /// `notifications/cancelled` (except `initialize`, which MCP forbids cancelling).
    pub(super) fn request(
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
            ask: None,
        };
        self.exchange(method, params, &wait)
    }

    /// [`request`](Self::request), with progress: when `wait.progress` is set, the request
    /// carries `_meta.progressToken` (its id), and each report restarts its timeout.
    pub(super) fn exchange(
        &self,
        method: &str,
        mut params: Value,
        wait: &Wait<'_>,
    ) -> Result<Value, McpError> {
        let Wait {
            timeout: allowed,
            cancel,
            progress,
            ask,
        } = *wait;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if progress.is_some()
            && let Some(params) = params.as_object_mut()
        {
            params.insert("_meta".into(), json!({"progressToken": id}));
        }
        let line = self.encode(&Message::request(id, method, params))?;
        let (waiter, reply) = crossbeam_channel::bounded(1);
        let (reporter, reports) = crossbeam_channel::bounded(PROGRESS_QUEUE);
        let (asker, asked) = crossbeam_channel::bounded::<Request>(ASK_QUEUE);
        {
            let mut state = self.state.lock();
            if let Some(reason) = &state.closed {
                return Err(self.closed_error(reason));
            }
            state.pending.insert(id, waiter);
            if progress.is_some() {
                state.progress.insert(id, reporter);
            }
            // `asker` itself lives until the wait ends, so `asked` never disconnects.
            if ask.is_some() {
                state.asks.insert(id, asker.clone());
            }
            if let Err(e) = self.queue(&mut state, line) {
                state.pending.remove(&id);
                state.progress.remove(&id);
                state.asks.remove(&id);
                return Err(e);
            }
        }
        // However the wait ends, no more reports are routed to it.
        let _routed = Unroute { rpc: self, id };
        log::debug!("mcp {}: request {id} {method}", self.server);
        let started = Instant::now();
        let mut deadline = started + allowed;
        let mut last_deadline = started + allowed * MAX_TIMEOUTS_PER_CALL;
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
                    Err(_) => return Err(self.closed_error("it closed")),
                },
                recv(reports) -> report => {
                    if let (Ok(report), Some(progress)) = (report, progress) {
                        deadline = (Instant::now() + allowed).min(last_deadline);
                        progress(report);
                    }
                }
                recv(asked) -> request => {
                    if let (Ok(request), Some(ask)) = (request, ask) {
                        // The time the person takes is not the server's: the call's clock
                        // stops while they answer.
                        let asked_at = Instant::now();
                        let method = request.method.clone();
                        let response = asked::answer(&self.server, request, ask);
                        self.respond(response, &method);
                        last_deadline += asked_at.elapsed();
                        deadline = (Instant::now() + allowed).min(last_deadline);
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
                    &format!("no answer within {}", round_duration(allowed)),
                );
                return Err(McpError::Timeout {
                    server: self.server.clone(),
                    method: method.to_owned(),
                    after: allowed,
                });
            }
        }
    }

    /// Stops waiting for request `id` and, when it is still in flight, tells the server.
    fn abandon(&self, id: i64, method: &str, reason: &str) {
        let mut state = self.state.lock();
        if state.pending.remove(&id).is_none() || method == "initialize" {
            return;
        }
        let params = json!({"requestId": id, "reason": reason});
        let sent = self
            .encode(&Message::notification(
                "notifications/cancelled",
                Some(params),
            ))
            .and_then(|line| self.queue(&mut state, line));
        match sent {
            Ok(()) => log::debug!("mcp {}: cancelled request {id}: {reason}", self.server),
            Err(e) => log::debug!("mcp {}: could not cancel request {id}: {e}", self.server),
        }
    }

    /// Queues the answer to a request the server made.
    fn respond(&self, response: Response, method: &str) {
        let Ok(line) = encode(&Message::Response(response)) else {
            return;
        };
        let mut state = self.state.lock();
        if let Err(e) = self.queue(&mut state, line) {
            log::debug!("mcp {}: could not answer its {method}: {e}", self.server);
        }
    }

    /// Sends a notification.
    pub(super) fn notify(&self, method: &str, params: Option<Value>) -> Result<(), McpError> {
        let line = self.encode(&Message::notification(method, params))?;
        let mut state = self.state.lock();
        if let Some(reason) = &state.closed {
            return Err(self.closed_error(reason));
        }
        self.queue(&mut state, line)
    }

    /// [`encode`], failing with a protocol error.
    fn encode(&self, message: &Message) -> Result<Outgoing, McpError> {
        encode(message).map_err(|e| self.protocol(format!("cannot encode: {e}")))
    }

    /// Reads a result as `T`; a result of another shape is a protocol error.
    pub(super) fn parse<T: for<'de> Deserialize<'de>>(&self, value: Value) -> Result<T, McpError> {
        serde_json::from_value(value).map_err(|e| self.protocol(e.to_string()))
    }

    /// A protocol error of this server.
    pub(super) fn protocol(&self, detail: String) -> McpError {
        McpError::Protocol {
            server: self.server.clone(),
            detail,
        }
    }

    /// Queues a message for the transport without blocking.
    fn queue(&self, state: &mut RpcState, message: Outgoing) -> Result<(), McpError> {
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
    pub(super) fn close(&self, reason: String) -> bool {
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
    pub(super) fn close_and_log(&self, reason: String) -> bool {
        let closed = self.close(reason.clone());
        if closed {
            log::warn!("mcp {}: stopped: {reason}", self.server);
        }
        closed
    }

    /// Handles one line from the server, which came in answer to our request `related`, when
    /// the transport knows (over HTTP, a POST's event stream).
    fn dispatch(&self, line: &[u8], related: Option<i64>) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        log::trace!("mcp {}: <- {text}", self.server);
        match serde_json::from_str::<Message>(text) {
            Ok(Message::Response(response)) => self.route(response),
            Ok(Message::Request(request)) => self.answer(request, related),
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

    /// Answers a request the server made: `ping` gets an empty result and `roots/list` the
    /// configured roots; a request for a person goes to the waiting call it came with
    /// (`related`), else to the one call that can ask, else is refused; anything else gets
    /// "method not found".
    fn answer(&self, request: Request, related: Option<i64>) {
        let method = request.method.clone();
        let reply = match method.as_str() {
            "ping" => Response::ok(Some(request.id), json!({})),
            "roots/list" => {
                let roots = self.roots.lock().clone();
                Response::ok(Some(request.id), json!({ "roots": roots }))
            }
            method if asked::needs_a_person(method) => {
                let id = request.id.clone();
                match self.hand_to_caller(request, related) {
                    Ok(()) => return,
                    Err(()) => asked::nobody_to_ask(id, method),
                }
            }
            _ => {
                log::debug!("mcp {}: refusing its request {method}", self.server);
                Response::error(
                    Some(request.id),
                    METHOD_NOT_FOUND,
                    format!("sparky does not offer {method}"),
                )
            }
        };
        self.respond(reply, &method);
    }

    /// Hands a request for a person to the call it belongs to: the one whose answer it came
    /// with, else (stdio says nothing of it) the only call that can ask. With several such
    /// calls in flight (of several conversations, perhaps of several people) it is refused
    /// rather than shown to someone who may not be the one it is for.
    fn hand_to_caller(&self, request: Request, related: Option<i64>) -> Result<(), ()> {
        let state = self.state.lock();
        let caller =
            related
                .and_then(|id| state.asks.get(&id))
                .or_else(|| match state.asks.len() {
                    1 => state.asks.values().next(),
                    _ => None,
                });
        match caller {
            Some(caller) => caller.try_send(request).map_err(|_| ()),
            None => Err(()),
        }
    }
}

impl Inbox for Rpc {
    fn deliver(&self, text: &[u8], related: Option<i64>) {
        self.dispatch(text, related);
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
        Rpc::is_open(self)
    }

    fn server(&self) -> &str {
        &self.server
    }
}

/// How a request waits: `timeout` (from the request, and again from each progress report),
/// or until `cancel`; its progress reports, if it wants them, go to `progress`.
#[derive(Clone, Copy)]
pub(super) struct Wait<'a> {
    /// How long the answer may take, from the request and from each progress report.
    pub(super) timeout: Duration,
    /// Stops the wait when set.
    pub(super) cancel: Option<&'a CancelFlag>,
    /// Where progress reports go; `None` asks for none.
    pub(super) progress: Option<&'a dyn Fn(Progress)>,
    /// Who answers what the server asks a person during the request; `None` refuses it.
    pub(super) ask: Option<&'a dyn AskUser>,
}

/// Stops routing progress reports to request `id` when dropped.
struct Unroute<'a> {
    rpc: &'a Rpc,
    id: i64,
}

impl Drop for Unroute<'_> {
    fn drop(&mut self) {
        let mut state = self.rpc.state.lock();
        state.progress.remove(&self.id);
        state.asks.remove(&self.id);
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
