//! `McpClient`: one connection to an MCP server, over a transport (`stdio.rs` for a pipe
//! pair, `http.rs` for Streamable HTTP) it knows only through `transport.rs`, and the MCP
//! methods Sparky uses: the handshake (declaring the client features Sparky offers: roots,
//! sampling and elicitation), tools (each `tools/call` with a progress token, and whoever
//! answers what the server asks a person meanwhile), prompts and resources. The JSON-RPC
//! underneath (ids, answers matched to their callers, progress
//! routed to its call, cancellation) is `client/rpc.rs`.
//!
//! Depends on: `common::cancel`, `tools`, `tools::ask`, `tools::mcp::client::rpc`,
//! `tools::mcp::config`, `tools::mcp::error`, `tools::mcp::http`, `tools::mcp::policy`,
//! `tools::mcp::process`, `tools::mcp::stdio`, `tools::mcp::transport`, `tools::mcp::wire`.

mod asked;
mod rpc;

use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};

use self::rpc::{Rpc, Wait};
use super::config::{HttpEndpoint, ServerCommand, ServerSpec};
use super::error::McpError;
use super::policy::Root;
use super::process::ServerProcess;
use super::transport::{Inbox, Outbox, Outgoing, Transport};
use super::wire::PROTOCOL_VERSION;
use super::wire::{
    CallToolResult, GetPromptResult, InitializeResult, PromptsPage, ReadResourceResult,
    RemotePrompt, RemoteTool, Rendered, ServerCapabilities, ToolsPage, render_content,
};
use crate::common::cancel::CancelFlag;
use crate::tools::Progress;
use crate::tools::ask::AskUser;

/// Revisions whose tools API Sparky knows; a server that answers with another one gets a
/// warning but is used anyway, since the tools API has not changed between them.
const KNOWN_PROTOCOL_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// Pages of a list (`tools/list`, `prompts/list`) followed at most, so a server repeating its
/// cursor cannot loop us.
const MAX_PAGES: usize = 100;

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

/// One connection to an MCP server over a transport: a pipe pair (a child's stdout and stdin,
/// or in-memory pipes in tests) or Streamable HTTP.
///
/// The transport's threads hand each message to the client's [`Rpc`], which routes each
/// response to the one-shot channel its request registered. [`stop`](Self::stop), or dropping
/// the client, closes it and then stops its transport (the server's process group, or the
/// HTTP session).
pub(super) struct McpClient {
    rpc: Arc<Rpc>,
    /// The transport, taken by [`stop`](Self::stop).
    transport: Mutex<Option<Box<dyn Transport>>>,
}

impl fmt::Debug for McpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpClient")
            .field("server", &self.rpc.server)
            .field("alive", &self.is_alive())
            .finish()
    }
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
        let inbox: Arc<dyn Inbox> = self.rpc.clone();
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
        let inbox: Arc<dyn Inbox> = client.rpc.clone();
        let http = super::http::start(inbox, queued, endpoint.clone(), call_timeout)?;
        *client.transport.lock() = Some(Box::new(http));
        Ok(client)
    }

    /// A client with no transport yet, queuing on `outbox`.
    fn unconnected(server: &str, outbox: Outbox) -> Self {
        McpClient {
            rpc: Arc::new(Rpc::new(server, outbox)),
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
        let watched = Arc::downgrade(&client.rpc);
        process.watch_exit(move |how| {
            let Some(rpc) = watched.upgrade() else {
                return;
            };
            let reason = format!("it exited ({how}); it is restarted on the next call");
            if !rpc.close_and_log(reason) {
                // The client closed first (its output ended, or we stopped it): the log
                // still says how the process ended.
                log::info!("mcp {}: its process exited ({how})", rpc.server);
            }
        })?;
        client.attach_stdio(queued.requests, stdout, stdin, Some(process))?;
        Ok(client)
    }

    /// True until the server stops or the client is closed.
    pub(super) fn is_alive(&self) -> bool {
        self.rpc.is_open()
    }

    /// Closes the client and stops its server: the writer ends, which closes the server's
    /// input, then the process group is stopped (see [`ServerProcess::stop`]), which may take
    /// a few seconds when the server lingers. Every waiting caller gets a `Closed` error.
    /// Calling it again does nothing.
    pub(super) fn stop(&self) {
        // Closing drops the outbox, so the writers end (and a server's stdin closes).
        self.rpc.close("sparky stopped it".into());
        let transport = self.transport.lock().take();
        if let Some(mut transport) = transport {
            transport.stop();
        }
    }

    /// Marks the client closed for `reason` without stopping its transport (the supervisor
    /// stops it when it replaces the client): the next call starts again.
    pub(super) fn close(&self, reason: &str) {
        self.rpc.close_and_log(reason.to_owned());
    }

    /// Calls `hook` (on the reader thread; it must not block) whenever the server sends
    /// `notifications/tools/list_changed`.
    pub(super) fn on_tools_changed(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.rpc.on_tools_changed(Arc::new(hook));
    }

    /// Sets what `roots/list` answers the server (its entry's `"roots"`), before
    /// [`initialize`](Self::initialize): the server has nothing to be told yet.
    pub(super) fn set_roots(&self, roots: Vec<Root>) {
        self.rpc.set_roots(roots);
    }

    /// Makes `roots` what `roots/list` answers from now on and, when that changes them, sends
    /// the initialised server `notifications/roots/list_changed` so that it asks again.
    /// Returns whether they changed.
    ///
    /// # Errors
    ///
    /// `Closed` when the client has closed (the roots are set all the same, for nobody).
    pub(super) fn update_roots(&self, roots: Vec<Root>) -> Result<bool, McpError> {
        if !self.rpc.set_roots(roots) {
            return Ok(false);
        }
        self.rpc
            .notify("notifications/roots/list_changed", None)
            .map(|()| true)
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
            "capabilities": client_capabilities(),
            "clientInfo": {"name": "sparky", "version": env!("CARGO_PKG_VERSION")},
        });
        let result = self.rpc.request("initialize", params, deadline, cancel)?;
        let answer: InitializeResult = self.rpc.parse(result)?;
        let server = &self.rpc.server;
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
        self.rpc.notify("notifications/initialized", None)?;
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
            self.rpc
                .parse(self.rpc.request("prompts/get", params, deadline, cancel)?)?;
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
            self.rpc.parse(
                self.rpc
                    .request("resources/read", params, deadline, cancel)?,
            )?;
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
            let (page, next) = split(
                self.rpc
                    .parse(self.rpc.request(method, params, deadline, cancel)?)?,
            );
            items.extend(page);
            match next {
                Some(next) if !next.is_empty() => cursor = Some(next),
                _ => return Ok(items),
            }
        }
        Err(self
            .rpc
            .protocol(format!("{method} went on for more than {MAX_PAGES} pages")))
    }

    /// Calls one tool and renders its content as text. The call carries a progress token;
    /// each progress report the server sends for it goes to `progress` and gives the call
    /// `timeout` again (up to [`MAX_TIMEOUTS_PER_CALL`] times `timeout` in all). What the
    /// server asks a person meanwhile goes to `ask` (refused when `None`).
    pub(super) fn call_tool(
        &self,
        name: &str,
        args: &Value,
        timeout: Duration,
        cancel: &CancelFlag,
        progress: &dyn Fn(Progress),
        ask: Option<&dyn AskUser>,
    ) -> Result<ToolReply, McpError> {
        let params = json!({"name": name, "arguments": args});
        let wait = Wait {
            timeout,
            cancel: Some(cancel),
            progress: Some(progress),
            ask,
        };
        let result = self.rpc.exchange("tools/call", params, &wait)?;
        let result: CallToolResult = self.rpc.parse(result)?;
        Ok(ToolReply {
            is_error: result.is_error,
            content: render_content(&result.content, result.structured_content.as_ref()),
            structured: result.structured_content,
        })
    }
}

/// The client features Sparky declares at `initialize` (protocol 2025-11-25): roots (from
/// the config; an edit of an entry's `"roots"` while Sparky runs is announced with
/// `notifications/roots/list_changed`), sampling (answered by the
/// conversation's model once a person allows it) and elicitation in both modes.
fn client_capabilities() -> Value {
    json!({
        "roots": {"listChanged": true},
        "sampling": {},
        "elicitation": {"form": {}, "url": {}},
    })
}

impl Drop for McpClient {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, PipeReader, PipeWriter};
    use std::thread;

    use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

    use super::*;
    use crate::tools::mcp::wire::{METHOD_NOT_FOUND, Message, RequestId, Response};

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

        /// Asks the client for its roots (`roots/list`) and returns the answer's result.
        fn list_roots(&mut self) -> Option<Value> {
            self.send_line(r#"{"jsonrpc":"2.0","id":"roots","method":"roots/list"}"#);
            match self.next() {
                Message::Response(roots) => roots.result,
                other => panic!("roots/list was not answered: {other:?}"),
            }
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
                            .call_tool("echo", &args, WAIT, cancel, &|_| {}, None)
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
            let call =
                scope.spawn(|| client.call_tool("slow", &json!({}), WAIT, &cancel, &|_| {}, None));
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
                client.call_tool("long", &json!({}), timeout, &cancel, &record, None)
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
        assert_eq!(client.rpc.progress_routes(), 0);
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
            None,
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
            let call =
                scope.spawn(|| client.call_tool("echo", &json!({}), WAIT, &cancel, &|_| {}, None));
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
            let call =
                scope.spawn(|| client.call_tool("echo", &json!({}), WAIT, &cancel, &|_| {}, None));
            server.expect_request("tools/call");
            drop(server.output); // The server's stdout closes, as when it exits.
            let error = call.join().unwrap().unwrap_err();
            assert!(matches!(error, McpError::Closed { .. }), "{error:?}");
            assert!(error.to_string().contains("stopped"), "{error}");
        });
        assert!(!client.is_alive());
        let again = client
            .call_tool("echo", &json!({}), WAIT, &cancel, &|_| {}, None)
            .unwrap_err();
        assert!(matches!(again, McpError::Closed { .. }), "{again:?}");
    }

    #[test]
    fn errors_and_error_results_are_told_apart() {
        let (client, mut server) = connect();
        let cancel = CancelFlag::new();
        thread::scope(|scope| {
            let call =
                scope.spawn(|| client.call_tool("nope", &json!({}), WAIT, &cancel, &|_| {}, None));
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

            let call =
                scope.spawn(|| client.call_tool("fail", &json!({}), WAIT, &cancel, &|_| {}, None));
            let (id, _) = server.expect_request("tools/call");
            server.reply(
                id,
                json!({"content": [{"type": "text", "text": "bad"}], "isError": true}),
            );
            let reply = call.join().unwrap().unwrap();
            assert_eq!((reply.is_error, reply.content.text.as_str()), (true, "bad"));

            let call =
                scope.spawn(|| client.call_tool("odd", &json!({}), WAIT, &cancel, &|_| {}, None));
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
        server.send_line(r#"{"jsonrpc":"2.0","id":"s2","method":"tasks/list"}"#);
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
            let call =
                scope.spawn(|| client.call_tool("echo", &json!({}), WAIT, &cancel, &|_| {}, None));
            let (id, _) = server.expect_request("tools/call");
            server.reply(id, text("fine"));
            assert_eq!(call.join().unwrap().unwrap().content.text, "fine");
        });
    }

    /// Answers every elicitation with the message it was asked, and refuses every sampling.
    struct Answering;

    impl AskUser for Answering {
        fn elicit(
            &self,
            server: &str,
            request: crate::tools::ask::Elicitation,
        ) -> crate::tools::ask::ElicitAnswer {
            let mut content = serde_json::Map::new();
            content.insert(
                "said".into(),
                json!(format!("{server}: {}", request.message)),
            );
            crate::tools::ask::ElicitAnswer {
                action: crate::common::protocol::ElicitAction::Accept,
                content: Some(content),
            }
        }
        fn sample(
            &self,
            _server: &str,
            request: crate::tools::ask::Sampling,
        ) -> Result<crate::tools::ask::Sampled, String> {
            Err(format!("no, not {} tokens", request.max_tokens))
        }
    }

    #[test]
    fn the_server_s_requests_for_roots_and_a_person_are_answered() {
        let (client, mut server) = connect();
        client.set_roots(vec![Root {
            uri: "file:///srv/notes".into(),
            name: Some("notes".into()),
        }]);
        assert_eq!(
            server.list_roots(),
            Some(json!({"roots": [{"uri": "file:///srv/notes", "name": "notes"}]}))
        );
        // With no call waiting, nobody can be asked.
        server.send_line(
            r#"{"jsonrpc":"2.0","id":"e0","method":"elicitation/create","params":{"message":"hi","requestedSchema":{"type":"object","properties":{}}}}"#,
        );
        let Message::Response(refused) = server.next() else {
            panic!("the elicitation was not answered")
        };
        assert!(refused.error.is_some(), "{refused:?}");
        // During a call, its asker answers, and the call then gets its own result.
        let cancel = CancelFlag::new();
        thread::scope(|scope| {
            let call = scope.spawn(|| {
                client.call_tool("ask", &json!({}), WAIT, &cancel, &|_| {}, Some(&Answering))
            });
            let (id, _) = server.expect_request("tools/call");
            server.send_line(
                r#"{"jsonrpc":"2.0","id":"e1","method":"elicitation/create","params":{"message":"name?","requestedSchema":{"type":"object","properties":{"said":{"type":"string"}}}}}"#,
            );
            let Message::Response(answer) = server.next() else {
                panic!("the elicitation was not answered")
            };
            assert_eq!(answer.id, Some(RequestId::Text("e1".into())));
            assert_eq!(
                answer.result,
                Some(json!({"action": "accept", "content": {"said": "fake: name?"}}))
            );
            server.send_line(
                r#"{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage","params":{"messages":[{"role":"user","content":{"type":"text","text":"hi"}}],"maxTokens":9}}"#,
            );
            let Message::Response(refusal) = server.next() else {
                panic!("the sampling request was not answered")
            };
            let error = refusal.error.expect("a refusal");
            assert!(error.message.contains("not 9 tokens"), "{error:?}");
            server.reply(id, text("asked"));
            assert_eq!(call.join().unwrap().unwrap().content.text, "asked");
        });
    }

    #[test]
    fn changed_roots_are_announced_once_and_then_listed() {
        let (client, mut server) = connect();
        let notes = vec![Root {
            uri: "file:///srv/notes".into(),
            name: None,
        }];
        client.set_roots(notes.clone());
        // The same roots again: nothing to announce.
        assert!(!client.update_roots(notes).unwrap());
        let docs = vec![Root {
            uri: "file:///srv/docs".into(),
            name: Some("docs".into()),
        }];
        assert!(client.update_roots(docs).unwrap());
        match server.next() {
            Message::Notification(n) => {
                assert_eq!(n.method, "notifications/roots/list_changed");
                assert_eq!(n.params, None);
            }
            other => panic!("expected notifications/roots/list_changed, got {other:?}"),
        }
        // The server asks again and gets the new list.
        assert_eq!(
            server.list_roots(),
            Some(json!({"roots": [{"uri": "file:///srv/docs", "name": "docs"}]}))
        );
        assert_eq!(client_capabilities()["roots"], json!({"listChanged": true}));
        // A closed client says so.
        client.stop();
        assert!(client.update_roots(Vec::new()).is_err());
    }

    #[test]
    fn a_request_for_a_person_is_refused_when_two_calls_could_be_asking() {
        let (client, mut server) = connect();
        let cancel = CancelFlag::new();
        thread::scope(|scope| {
            let calls: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        client.call_tool(
                            "ask",
                            &json!({}),
                            WAIT,
                            &cancel,
                            &|_| {},
                            Some(&Answering),
                        )
                    })
                })
                .collect();
            let ids = [
                server.expect_request("tools/call").0,
                server.expect_request("tools/call").0,
            ];
            server.send_line(
                r#"{"jsonrpc":"2.0","id":"e1","method":"elicitation/create","params":{"message":"who?","requestedSchema":{"type":"object","properties":{}}}}"#,
            );
            let Message::Response(refusal) = server.next() else {
                panic!("the elicitation was not answered")
            };
            let error = refusal.error.expect("a refusal");
            assert!(error.message.contains("cannot tell"), "{error:?}");
            for id in ids {
                server.reply(id, text("done"));
            }
            for call in calls {
                assert_eq!(call.join().unwrap().unwrap().content.text, "done");
            }
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
