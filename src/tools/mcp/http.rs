//! The Streamable HTTP transport (MCP 2025-03-26 and later) for `url` servers: every message
//! is POSTed, and the answer comes back as one JSON body or as a server-sent event stream that
//! may carry the server's own requests and notifications before it; the `Mcp-Session-Id` the
//! server gives on `initialize` goes with every later request, with `MCP-Protocol-Version` and
//! the config's `headers`; a GET stream carries what the server sends unasked, where it offers
//! one; the session is DELETEd on stop. Built on blocking `ureq`.
//!
//! Threads, all named `mcp-<name>-…` and detached: [`MAX_POSTS`] `post` workers take requests
//! (a long call holds one), one `notify` worker takes notifications and responses (so that a
//! cancel never waits behind calls), and one `listen` thread holds the GET stream. The workers
//! end when the client closes; stopping the transport shuts its connections, which wakes them.
//!
//! A 404 on a request that carried a session id means the server forgot the session: the
//! request fails with [`McpError::SessionExpired`] (the tool retries it once) and the client
//! closes, so that the next call connects and initialises again, as a stdio server is
//! restarted. A server that cannot be reached closes the client the same way. A server that
//! signs in with OAuth (`oauth/`) gets its access token with every request (refreshed ahead of
//! its expiry); its 401 goes to its sign-in, which refreshes a refused token once or marks the
//! server as needing a sign-in, and a request whose refused token a refresh replaced is sent
//! once more with the new one. A server whose config sends its own `Authorization` header
//! gets no OAuth, and its 401 is logged as an error that says to put a token in `headers`.
//!
//! Depends on: `common::cancel`, `common::sse`, `tools::mcp::config`, `tools::mcp::error`, `tools::mcp::transport`.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::{Condvar, Mutex};
use serde_json::Value;
use ureq::{Agent, Body, RequestBuilder, http::Response};

use super::config::HttpEndpoint;
use super::error::{McpError, round_duration};
use super::transport::{Inbox, Outgoing, Queued, Transport};
use crate::common::cancel::CancelFlag;
use crate::common::sse::{SseDecoder, body_start};

/// Requests in flight to one server at most; more wait in the outbox.
pub(super) const MAX_POSTS: usize = 8;

/// The largest answer read to one POST (a JSON body, or a whole event stream).
pub(super) const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// The largest single event of a stream (the GET stream has no total bound, only this).
pub(super) const MAX_EVENT_BYTES: usize = 16 << 20;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much longer than a call's own timeout (the server's `"timeout"`) a POST's answer may
/// stay silent before it is given up, so that a worker is freed even when the server never
/// ends an abandoned stream.
const POST_READ_GRACE: Duration = Duration::from_secs(30);

/// How much longer again a POST's answer may stay silent: while the server waits for a person
/// (its elicitation or sampling request came on the stream, and its call's clock stops until
/// the answer), as long as `--approval-timeout` gives them by default.
const PERSON_WAIT: Duration = Duration::from_secs(300);

/// How long the DELETE that ends a session may take, when stopping.
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the GET stream waits before it is opened again after it ended; doubles up to
/// [`MAX_LISTEN_RETRY`], and starts over once a stream has stayed open that long.
const FIRST_LISTEN_RETRY: Duration = Duration::from_secs(1);

/// The longest wait before the GET stream is opened again.
const MAX_LISTEN_RETRY: Duration = Duration::from_secs(30);

/// The most of an error answer's body kept for its message.
const ERROR_BODY_BYTES: u64 = 2048;

/// A running Streamable HTTP transport. Stopping it (the client does) ends the session.
pub(super) struct Http {
    shared: Arc<HttpShared>,
}

/// What the transport's threads share.
struct HttpShared {
    inbox: Arc<dyn Inbox>,
    endpoint: HttpEndpoint,
    /// For POSTs, with a read timeout.
    posts: Agent,
    /// For the GET stream, which may stay silent for as long as the server likes.
    listen: Agent,
    /// The session id the server gave on `initialize`. Held only to read or set it.
    session: Mutex<Option<String>>,
    /// The protocol revision agreed on `initialize`. Held only to read or set it.
    protocol: Mutex<Option<String>>,
    /// Set when the transport stops: threads end, and their errors are not news.
    stopping: CancelFlag,
    /// Set once the `listen` thread has been started.
    listening: AtomicBool,
    /// Set once `notifications/initialized` has been POSTed: requests after `initialize` wait
    /// for it (at most [`CONNECT_TIMEOUT`]), since the spec orders it before them and the
    /// workers would not. Held only to read or set the flag.
    initialized: Mutex<bool>,
    /// Notified when `initialized` is set.
    initialized_sent: Condvar,
}

/// Starts the workers that POST what the client queues to `endpoint` (see the module
/// documentation for the threads); a POST's answer may be silent for `call_timeout` (the
/// server's `"timeout"`), [`POST_READ_GRACE`] and [`PERSON_WAIT`] more.
///
/// # Errors
///
/// [`McpError::Start`] when a thread cannot be created.
pub(super) fn start(
    inbox: Arc<dyn Inbox>,
    queued: Queued,
    endpoint: HttpEndpoint,
    call_timeout: Duration,
) -> Result<Http, McpError> {
    let server = inbox.server().to_owned();
    let shared = Arc::new(HttpShared {
        inbox,
        endpoint,
        posts: agent(Some(call_timeout + POST_READ_GRACE + PERSON_WAIT)),
        listen: agent(None),
        session: Mutex::new(None),
        protocol: Mutex::new(None),
        stopping: CancelFlag::new(),
        listening: AtomicBool::new(false),
        initialized: Mutex::new(false),
        initialized_sent: Condvar::new(),
    });
    // Built first, so that a failure below stops what started.
    let http = Http {
        shared: shared.clone(),
    };
    let no_thread = |e: io::Error| McpError::Start {
        server: server.clone(),
        detail: format!("no thread for it: {e}"),
    };
    for index in 0..MAX_POSTS {
        let (worker, requests) = (shared.clone(), queued.requests.clone());
        thread::Builder::new()
            .name(format!("mcp-{server}-post-{index}"))
            .spawn(move || worker.run_worker(&requests))
            .map_err(no_thread)?;
    }
    let (worker, others) = (shared, queued.others);
    thread::Builder::new()
        .name(format!("mcp-{server}-notify"))
        .spawn(move || worker.run_worker(&others))
        .map_err(no_thread)?;
    Ok(http)
}

impl Transport for Http {
    fn stop(&mut self) {
        let shared = &self.shared;
        if shared.stopping.is_cancelled() {
            return;
        }
        shared.stopping.cancel();
        shared.release_requests();
        let has_session = shared.session.lock().is_some();
        if has_session {
            shared.end_session();
        }
        // Wakes every worker blocked on a connection, and the GET stream.
        shared.posts.clone().shutdown();
        shared.listen.clone().shutdown();
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An agent that reports HTTP statuses as answers, not errors.
fn agent(read_timeout: Option<Duration>) -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(read_timeout)
        .timeout_per_write(Some(CONNECT_TIMEOUT))
        .max_idle_connections_per_host(MAX_POSTS)
        .user_agent(concat!("sparky/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

impl HttpShared {
    fn server(&self) -> &str {
        self.inbox.server()
    }

    /// A worker: POSTs each message of `queue` in turn, until the client closes.
    fn run_worker(self: &Arc<Self>, queue: &Receiver<Outgoing>) {
        for message in queue {
            if self.stopping.is_cancelled() {
                return;
            }
            self.post(&message);
        }
    }

    /// The headers every request carries: the config's, the OAuth token, then the session's.
    fn decorate<B>(&self, request: RequestBuilder<B>) -> RequestBuilder<B> {
        self.decorate_with(request, self.endpoint.auth.bearer().as_deref())
    }

    /// As [`decorate`](Self::decorate), with `token` as the OAuth bearer token.
    fn decorate_with<B>(
        &self,
        mut request: RequestBuilder<B>,
        token: Option<&str>,
    ) -> RequestBuilder<B> {
        for (name, value) in &self.endpoint.headers {
            request = request.header(name, value);
        }
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(session) = self.session.lock().as_deref() {
            request = request.header("mcp-session-id", session);
        }
        if let Some(protocol) = self.protocol.lock().as_deref() {
            request = request.header("mcp-protocol-version", protocol);
        }
        request
    }

    /// POSTs one message and hands on what comes back.
    fn post(self: &Arc<Self>, message: &Outgoing) {
        self.post_with(message, true);
    }

    /// As [`post`](Self::post); `again` when a 401 that a refresh answered with a new token
    /// may send it once more (the server ran nothing).
    fn post_with(self: &Arc<Self>, message: &Outgoing, again: bool) {
        if message.id.is_some() && message.method != "initialize" {
            self.wait_for_initialized();
        }
        let had_session = self.session.lock().is_some();
        let token = self.endpoint.auth.bearer();
        let request = self
            .decorate_with(self.posts.post(&self.endpoint.url), token.as_deref())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        log::trace!("mcp {}: -> {}", self.server(), message.line);
        let sent = request.send(message.line.as_bytes());
        if message.method == "notifications/initialized" {
            self.release_requests();
        }
        let response = match sent {
            Ok(response) => response,
            Err(e) => return self.unreachable(message, &e),
        };
        let status = response.status().as_u16();
        if message.method == "initialize"
            && let Some(session) = header(&response, "mcp-session-id")
        {
            // The id itself stays out of the log: it is as good as a key to the session.
            log::debug!("mcp {}: session started", self.server());
            *self.session.lock() = Some(session);
        }
        if message.method == "notifications/initialized" && (200..300).contains(&status) {
            self.listen_soon();
        }
        if (200..300).contains(&status)
            && token.is_some()
            && let Some(auth) = &self.endpoint.auth.0
        {
            auth.accepted();
        }
        match status {
            200 => self.read_answer(message, response),
            202 | 204 => {
                if let Some(id) = message.id {
                    let detail = format!("HTTP {status} without an answer to {}", message.method);
                    self.inbox.fail(id, self.http_error(status, detail));
                }
            }
            404 if had_session => self.session_expired(message),
            401 if self.endpoint.auth.0.is_some() => {
                if self.unauthorized(message, &response, token.as_deref(), again) {
                    drop(response);
                    self.post_with(message, false);
                }
            }
            401 => {
                let challenge = header(&response, "www-authenticate")
                    .map(|value| format!(", WWW-Authenticate: {value}"))
                    .unwrap_or_default();
                log::error!(
                    "mcp {}: the server wants authorisation (HTTP 401{challenge}); sparky does \
                     not support OAuth: put a token in the server's \"headers\" in the MCP config",
                    self.server()
                );
                if let Some(id) = message.id {
                    let detail = "it wants authorisation; sparky does not support OAuth: put a \
                                  token in the server's \"headers\" in the MCP config";
                    self.inbox.fail(id, self.http_error(401, detail.into()));
                }
            }
            _ => {
                let body = error_body(response);
                log::warn!(
                    "mcp {}: answered {} with HTTP {status}: {body}",
                    self.server(),
                    message.method
                );
                if let Some(id) = message.id {
                    self.inbox.fail(id, self.http_error(status, body));
                }
            }
        }
    }

    /// A 401 from a server that signs in with OAuth: its sign-in hears of it (and refreshes a
    /// refused token, or marks the server as needing a sign-in). True when the request is to
    /// be sent `again` with the token a refresh just won; else it fails.
    fn unauthorized(
        &self,
        message: &Outgoing,
        response: &Response<Body>,
        token: Option<&str>,
        again: bool,
    ) -> bool {
        if let Some(auth) = &self.endpoint.auth.0 {
            auth.challenged(header(response, "www-authenticate").as_deref(), token);
            if again && token.is_some() && auth.bearer().is_some_and(|new| Some(&*new) != token) {
                log::info!(
                    "mcp {}: its token was refused and refreshed: {} sent again",
                    self.server(),
                    message.method
                );
                return true;
            }
        }
        if let Some(id) = message.id {
            let detail = format!(
                "it needs a sign-in: use Connect on the page or `sparky mcp login {}`",
                self.server()
            );
            self.inbox.fail(id, self.http_error(401, detail));
        }
        false
    }

    /// Lets every request waiting in [`wait_for_initialized`](Self::wait_for_initialized) go.
    fn release_requests(&self) {
        *self.initialized.lock() = true;
        self.initialized_sent.notify_all();
    }

    /// Waits until `notifications/initialized` has been POSTed, for [`CONNECT_TIMEOUT`] at
    /// most (a request that comes first is sent anyway, and the server judges it).
    fn wait_for_initialized(&self) {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut initialized = self.initialized.lock();
        while !*initialized && !self.stopping.is_cancelled() {
            if self
                .initialized_sent
                .wait_until(&mut initialized, deadline)
                .timed_out()
            {
                return;
            }
        }
    }

    /// Reads a 200 answer: one JSON message (or a batch), or an event stream, which is read
    /// until it ends or has answered `message`.
    fn read_answer(&self, message: &Outgoing, response: Response<Body>) {
        let streamed =
            header(&response, "content-type").is_some_and(|t| t.contains("text/event-stream"));
        let reader = response.into_body().into_reader().take(MAX_ANSWER_BYTES);
        let mut answered = false;
        let outcome = if streamed {
            read_events(BufReader::new(reader), |data| {
                answered |= self.hand_on(message, &data);
                !answered && !self.stopping.is_cancelled()
            })
        } else {
            read_json(reader).map(|texts| {
                for text in texts {
                    answered |= self.hand_on(message, &text);
                }
            })
        };
        let Some(id) = message.id.filter(|_| !answered) else {
            return;
        };
        if self.stopping.is_cancelled() {
            return;
        }
        let detail = match outcome {
            Ok(()) => "its answer ended before it answered".to_owned(),
            Err(e) => format!("reading its answer failed: {e}"),
        };
        self.inbox.fail(
            id,
            McpError::Protocol {
                server: self.server().to_owned(),
                detail,
            },
        );
    }

    /// Hands one message from the server to the client; true when it answers `sent`.
    fn hand_on(&self, sent: &Outgoing, text: &str) -> bool {
        let answers = sent.id.is_some_and(|id| {
            let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            let is_answer = value.get("method").is_none()
                && (value.get("id") == Some(&Value::from(id))
                    || value.get("id").and_then(Value::as_str) == Some(&id.to_string()));
            if is_answer
                && sent.method == "initialize"
                && let Some(version) = value["result"]["protocolVersion"].as_str()
            {
                *self.protocol.lock() = Some(version.to_owned());
            }
            is_answer
        });
        self.inbox.deliver(text.as_bytes(), sent.id);
        answers
    }

    /// A POST that could not be made: the server is down or unreachable.
    fn unreachable(&self, message: &Outgoing, error: &ureq::Error) {
        if self.stopping.is_cancelled() {
            return;
        }
        let reason = format!(
            "cannot reach it at {} ({error}); it is connected again on the next call",
            self.endpoint.url
        );
        if let Some(id) = message.id {
            self.inbox.fail(
                id,
                McpError::Closed {
                    server: self.server().to_owned(),
                    reason: reason.clone(),
                },
            );
        }
        self.inbox.close(reason);
    }

    /// The server no longer knows our session: fail the request so that it is tried again,
    /// and close the client so that the next call starts a new session.
    fn session_expired(&self, message: &Outgoing) {
        if let Some(id) = message.id {
            self.inbox.fail(
                id,
                McpError::SessionExpired {
                    server: self.server().to_owned(),
                },
            );
        }
        self.inbox.close(
            "it no longer knows our session (HTTP 404); a new one starts on the next call".into(),
        );
    }

    fn http_error(&self, status: u16, detail: String) -> McpError {
        McpError::Http {
            server: self.server().to_owned(),
            status,
            detail,
        }
    }

    /// Starts the `listen` thread, once.
    fn listen_soon(self: &Arc<Self>) {
        if self.listening.swap(true, Ordering::SeqCst) {
            return;
        }
        let listener = self.clone();
        let spawned = thread::Builder::new()
            .name(format!("mcp-{}-listen", self.server()))
            .spawn(move || listener.run_listen());
        if let Err(e) = spawned {
            log::warn!(
                "mcp {}: no thread for its event stream ({e}); it is not listened to",
                self.server()
            );
        }
    }

    /// The `listen` thread: holds the GET stream open while the transport runs, handing each
    /// event to the client, and opens it again (after a wait) when it ends. Ends when the
    /// server offers no stream (405), forgot the session, cannot be reached (both close the
    /// client), the client has closed (after the next event, or when the stream ends), or
    /// the transport stops.
    fn run_listen(&self) {
        let server = self.server().to_owned();
        let mut delay = FIRST_LISTEN_RETRY;
        loop {
            if self.stopping.is_cancelled() || !self.inbox.is_open() {
                return;
            }
            let had_session = self.session.lock().is_some();
            let request = self
                .decorate(self.listen.get(&self.endpoint.url))
                .header("accept", "text/event-stream");
            let opened = Instant::now();
            match request.call() {
                Err(e) => {
                    if !self.stopping.is_cancelled() {
                        self.inbox.close(format!(
                            "its event stream could not be opened ({e}); it is connected \
                             again on the next call"
                        ));
                    }
                    return;
                }
                Ok(response) => match response.status().as_u16() {
                    200 => {
                        log::debug!("mcp {server}: event stream open");
                        let reader = BufReader::new(response.into_body().into_reader());
                        let outcome = read_events(reader, |data| {
                            log::trace!("mcp {server}: <- (stream) {data}");
                            self.inbox.deliver(data.as_bytes(), None);
                            !self.stopping.is_cancelled() && self.inbox.is_open()
                        });
                        if self.stopping.is_cancelled() {
                            return;
                        }
                        if opened.elapsed() >= MAX_LISTEN_RETRY {
                            delay = FIRST_LISTEN_RETRY;
                        }
                        log::debug!(
                            "mcp {server}: event stream ended ({}); opening it again in {}",
                            outcome
                                .err()
                                .map_or_else(|| "closed".into(), |e| e.to_string()),
                            round_duration(delay)
                        );
                    }
                    405 => {
                        log::debug!("mcp {server}: offers no event stream (GET answered 405)");
                        return;
                    }
                    404 if had_session => {
                        self.inbox.close(
                            "it no longer knows our session (HTTP 404); a new one starts on \
                             the next call"
                                .into(),
                        );
                        return;
                    }
                    status => log::warn!(
                        "mcp {server}: its event stream answered HTTP {status}: {}; trying again \
                         in {}",
                        error_body(response),
                        round_duration(delay)
                    ),
                },
            }
            if self.stopping.sleep(delay) {
                return;
            }
            delay = (delay * 2).min(MAX_LISTEN_RETRY);
        }
    }

    /// DELETEs the session, as the spec asks of a client that leaves; bounded by
    /// [`DELETE_TIMEOUT`]. A server that does not allow it (405) is fine.
    fn end_session(&self) {
        let server = self.server();
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(DELETE_TIMEOUT))
            .build()
            .into();
        let request = self.decorate(agent.delete(&self.endpoint.url));
        match request.call() {
            Ok(response) => log::debug!(
                "mcp {server}: session ended (DELETE answered HTTP {})",
                response.status().as_u16()
            ),
            Err(e) => log::debug!("mcp {server}: could not end its session: {e}"),
        }
    }
}

/// A response header's value, when it is present and text.
fn header(response: &Response<Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// The start of an error answer's body, for its message.
fn error_body(response: Response<Body>) -> String {
    let text = body_start(response, ERROR_BODY_BYTES).trim().to_owned();
    if text.is_empty() {
        "(no body)".into()
    } else {
        text
    }
}

/// Reads a JSON answer: one message, or a batch (an array) of them, each as its JSON text.
///
/// # Errors
///
/// When reading fails, the body is not JSON, or it is [`MAX_ANSWER_BYTES`] long (cut off).
fn read_json(reader: impl Read) -> io::Result<Vec<String>> {
    let mut body = Vec::new();
    let read = reader.take(MAX_ANSWER_BYTES).read_to_end(&mut body)?;
    if read as u64 >= MAX_ANSWER_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an answer of {MAX_ANSWER_BYTES} bytes or more"),
        ));
    }
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(match value {
        Value::Array(items) => items.iter().map(Value::to_string).collect(),
        one => vec![one.to_string()],
    })
}

/// Reads server-sent events, passing each event's data to `each` until it returns false or
/// the stream ends.
///
/// # Errors
///
/// When reading fails, or an event is longer than [`MAX_EVENT_BYTES`].
fn read_events(mut reader: impl BufRead, mut each: impl FnMut(String) -> bool) -> io::Result<()> {
    let mut decoder = SseDecoder::default();
    let mut line = Vec::new();
    let mut event_bytes = 0;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_EVENT_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            if let Some(data) = decoder.finish() {
                each(data);
            }
            return Ok(());
        }
        event_bytes += read;
        if event_bytes > MAX_EVENT_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an event longer than {MAX_EVENT_BYTES} bytes"),
            ));
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(data) = decoder.line(text.trim_end_matches(['\n', '\r'])) {
            event_bytes = 0;
            if !each(data) {
                return Ok(());
            }
        } else if text.trim().is_empty() {
            event_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_until_the_caller_has_what_it_wants() {
        let stream = "event: message\ndata: {\"a\":1}\n\n: comment\n\ndata: one\ndata: two\n\n\
                      data: {\"last\":true}\n\ndata: never\n\n";
        let mut seen = Vec::new();
        read_events(stream.as_bytes(), |data| {
            let last = data.contains("last");
            seen.push(data);
            !last
        })
        .unwrap();
        assert_eq!(seen, ["{\"a\":1}", "one\ntwo", "{\"last\":true}"]);
        // An event the stream ends without a blank line after still counts.
        let mut seen = Vec::new();
        read_events("data: end".as_bytes(), |data| {
            seen.push(data);
            true
        })
        .unwrap();
        assert_eq!(seen, ["end"]);
    }

    #[test]
    fn an_overlong_event_is_an_error() {
        let line = format!("data: {}\n", "x".repeat(1 << 20));
        let stream = line.repeat(MAX_EVENT_BYTES / (1 << 20) + 1);
        let outcome = read_events(stream.as_bytes(), |_| true);
        assert_eq!(outcome.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn json_answers_are_one_message_or_a_batch() {
        assert_eq!(read_json(&b"{\"id\":1}"[..]).unwrap(), ["{\"id\":1}"]);
        assert_eq!(
            read_json(&b"[{\"id\":1},{\"id\":2}]"[..]).unwrap(),
            ["{\"id\":1}", "{\"id\":2}"]
        );
        assert!(read_json(&b"not json"[..]).is_err());
    }
}
