//! Helpers shared by the integration tests: an in-process server on `127.0.0.1:0` and a
//! blocking WebSocket client whose every wait is bounded.

#![allow(dead_code)] // Each test file uses its own subset of these helpers.

pub mod accounts;
pub mod files;
pub mod leftovers;
pub mod mcp;
pub mod postgres;
pub mod recording;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparky::common::protocol::{ServerEnvelope, ServerFrame, SessionId, TurnId};
use sparky::model::ModelBackend;
use sparky::model::offline::OfflineModel;
use sparky::{Config, ServerHandle};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process; dropping it shuts it down.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
}

impl TestServer {
    /// A server with the default configuration.
    pub fn start() -> Self {
        Self::with_config(|_| {})
    }

    /// A server with the configuration adjusted by `adjust`.
    pub fn with_config(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::with_model(adjust, Arc::new(OfflineModel))
    }

    /// A server answering with `model`.
    pub fn with_model(adjust: impl FnOnce(&mut Config), model: Arc<dyn ModelBackend>) -> Self {
        let mut config = test_config();
        adjust(&mut config);
        let listener = sparky::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let handle = sparky::net::server::spawn_with(listener, config, model).unwrap();
        TestServer {
            addr: handle.addr(),
            handle,
        }
    }

    /// A server on `data_dir`, which a server that was just dropped may still hold for a moment
    /// (its connection threads and journal finish after the drop): starts once the directory
    /// is free.
    pub fn restart_on(data_dir: &std::path::Path) -> Self {
        Self::restart_with(data_dir, |_| {})
    }

    /// [`TestServer::restart_on`] with the configuration adjusted by `adjust`.
    pub fn restart_with(data_dir: &std::path::Path, adjust: impl Fn(&mut Config)) -> Self {
        Self::restart_with_model(data_dir, adjust, Arc::new(OfflineModel))
    }

    /// [`TestServer::restart_with`], answering with `model`.
    pub fn restart_with_model(
        data_dir: &std::path::Path,
        adjust: impl Fn(&mut Config),
        model: Arc<dyn ModelBackend>,
    ) -> Self {
        let mut started = None;
        wait_until("the data directory to be free", || {
            let mut config = test_config();
            config.data_dir = data_dir.to_owned();
            use_test_store(&mut config);
            adjust(&mut config);
            let listener = sparky::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            match sparky::net::server::spawn_with(listener, config, model.clone()) {
                Ok(handle) => started = Some(handle),
                Err(e) => assert!(e.to_string().contains("in use"), "{e}"),
            }
            started.is_some()
        });
        let handle = started.unwrap();
        TestServer {
            addr: handle.addr(),
            handle,
        }
    }

    /// A client that has sent `connect` for a new session and read `session_info` and `ready`.
    pub fn client(&self) -> Client {
        Client::connect(self.addr, json!({}))
    }
}

/// A configuration for tests: loopback, a unique data directory (and, in a run against
/// PostgreSQL, a database of its own; see [`use_test_store`]).
pub fn test_config() -> Config {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    sweep_leftovers();
    let dir = std::env::temp_dir().join(format!("sparky-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir,
        // `SPARKY_TEST_IN_MEMORY=1 cargo test --test reconnect` runs a suite against the
        // in-memory store, where events are sent before the journal has written them.
        in_memory: std::env::var_os("SPARKY_TEST_IN_MEMORY").is_some(),
        // Documents are read by the built binary's `extract-text`, as a real server's are.
        extractor: Some(env!("CARGO_BIN_EXE_sparky").into()),
        ..Config::default()
    };
    use_test_store(&mut config);
    config
}

/// True when this run keeps its servers' data in PostgreSQL (`SPARKY_TEST_STORE=postgres`)
/// rather than SQLite.
pub fn on_postgres() -> bool {
    match std::env::var("SPARKY_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("SPARKY_TEST_STORE is sqlite or postgres, not {other:?}"),
    }
}

/// In a run against PostgreSQL, points `config` at the database that stands for its data
/// directory (the same one for the same directory, so a restart finds its data); otherwise
/// leaves it on SQLite.
pub fn use_test_store(config: &mut Config) {
    config.database_url =
        (on_postgres() && !config.in_memory).then(|| postgres::database_for(&config.data_dir));
}

/// The store `config` names, opened directly (no server): both traits of one store.
pub fn open_store(
    config: &Config,
) -> (
    Arc<dyn sparky::store::ConversationStore>,
    Arc<dyn sparky::store::GraphStore>,
) {
    match &config.database_url {
        Some(url) => {
            let store = Arc::new(sparky::store::PostgresStore::connect(url, 2).unwrap());
            (store.clone(), store)
        }
        None => {
            let store = Arc::new(sparky::store::SqliteStore::open(&config.data_dir).unwrap());
            (store.clone(), store)
        }
    }
}

/// The binary's arguments for `args`, with `--store` added in a run against PostgreSQL: the
/// database that stands for the `--data-dir` given (unless `--in-memory`).
pub fn store_args(args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    if on_postgres()
        && !args.contains(&"--in-memory")
        && let Some(at) = args.iter().position(|arg| *arg == "--data-dir")
    {
        let dir = std::path::Path::new(args[at + 1]);
        all.extend(["--store".to_owned(), postgres::database_for(dir)]);
    }
    all
}

/// Runs `sparky ARGS` (after `--log-level warn`) with `stdin` on its standard input, and waits
/// for it.
pub fn sparky_command(args: &[String], stdin: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(["--log-level", "warn"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A small deterministic random source (xorshift), so that a failing run can be repeated from
/// its seed.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Waits until `condition` holds, checking every few milliseconds, and fails after [`WAIT`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `type` of a server frame, as on the wire.
pub fn kind(frame: &ServerEnvelope) -> String {
    let value = serde_json::to_value(&frame.frame).unwrap();
    value["type"].as_str().unwrap().to_owned()
}

/// A blocking WebSocket client that remembers what it saw.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    /// Every frame received, in order.
    pub seen: Vec<ServerEnvelope>,
    pub session_id: Option<SessionId>,
    /// The highest `seq` received.
    pub last_seq: u64,
}

impl Client {
    /// Opens a WebSocket to `/ws` and sends nothing.
    pub fn open(addr: SocketAddr) -> Self {
        Self::open_path(addr, "/ws")
    }

    /// Opens a WebSocket to `path` and sends nothing.
    pub fn open_path(addr: SocketAddr, path: &str) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        // The whole handshake may take up to WAIT; after it, reads wake every 250 ms so that
        // `try_next` can check its own deadline.
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://{addr}{path}"), stream).unwrap();
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(250)))
            .unwrap();
        Client {
            ws,
            seen: Vec::new(),
            session_id: None,
            last_seq: 0,
        }
    }

    /// Opens a WebSocket to `path` with extra request headers, reading in slices of `poll` once
    /// open; the HTTP status when the upgrade is refused.
    pub fn open_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        poll: Duration,
    ) -> Result<Self, u16> {
        use tungstenite::client::IntoClientRequest;
        use tungstenite::http::{HeaderName, HeaderValue};
        let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        match tungstenite::client(request, stream) {
            Ok((ws, _)) => {
                ws.get_ref().set_read_timeout(Some(poll)).unwrap();
                Ok(Client {
                    ws,
                    seen: Vec::new(),
                    session_id: None,
                    last_seq: 0,
                })
            }
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("handshake failed: {e}"),
        }
    }

    /// Opens a WebSocket, sends `connect` with `data`, and reads `session_info` and `ready`.
    pub fn connect(addr: SocketAddr, data: Value) -> Self {
        let mut client = Self::open(addr);
        client.send(json!({"type": "connect", "data": data}));
        client.greeted()
    }

    /// Reads the answer to the `connect` sent: `session_info` (whose session it keeps) and
    /// `ready`.
    pub fn greeted(mut self) -> Self {
        let info = self.expect("session_info");
        let ServerFrame::SessionInfo { session_id, .. } = &info.frame else {
            unreachable!()
        };
        self.session_id = Some(session_id.clone());
        self.expect("ready");
        self
    }

    /// Resumes `session` from `last_seq`.
    pub fn resume(addr: SocketAddr, session: &SessionId, last_seq: u64) -> Self {
        let mut client = Self::connect(
            addr,
            json!({"session_id": session.as_str(), "last_seq": last_seq}),
        );
        client.last_seq = last_seq;
        client
    }

    /// Sends a JSON value as a text frame.
    pub fn send(&mut self, value: Value) {
        self.send_text(&value.to_string());
    }

    /// Sends a raw text frame.
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).unwrap();
    }

    /// Sends a user message.
    pub fn say(&mut self, text: &str) {
        self.send(json!({"type": "message", "data": {"text": text}}));
    }

    /// Sends `cancel`.
    pub fn cancel(&mut self) {
        self.send(json!({"type": "cancel", "data": {}}));
    }

    /// Reads the next application frame, or `None` when the server closed the connection
    /// (the close frame, if any, is returned through `closed`).
    pub fn try_next(&mut self) -> Result<ServerEnvelope, Option<CloseFrame>> {
        self.try_next_within(WAIT)
    }

    /// [`Client::try_next`], waiting up to `limit` instead of [`WAIT`] (a real model may be
    /// slower than any test server).
    pub fn try_next_within(
        &mut self,
        limit: Duration,
    ) -> Result<ServerEnvelope, Option<CloseFrame>> {
        let deadline = Instant::now() + limit;
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let frame: ServerEnvelope = serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("bad frame {text}: {e}"));
                    if let Some(seq) = frame.seq {
                        self.last_seq = self.last_seq.max(seq);
                    }
                    self.seen.push(frame.clone());
                    return Ok(frame);
                }
                Ok(Message::Close(close)) => {
                    // Let tungstenite answer the close; ignore what follows.
                    let _ = self.ws.flush();
                    return Err(close);
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(
                        Instant::now() < deadline,
                        "timed out; frames so far: {:#?}",
                        self.seen
                    );
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Err(None);
                }
                Err(e) => panic!("read failed: {e}; frames so far: {:#?}", self.seen),
            }
        }
    }

    /// Reads the next application frame; fails if the connection closes.
    pub fn next(&mut self) -> ServerEnvelope {
        match self.try_next() {
            Ok(frame) => frame,
            Err(close) => panic!(
                "connection closed ({close:?}); frames so far: {:#?}",
                self.seen
            ),
        }
    }

    /// Reads frames until one of type `kind` arrives, and returns it.
    pub fn expect(&mut self, wanted: &str) -> ServerEnvelope {
        loop {
            let frame = self.next();
            if kind(&frame) == wanted {
                return frame;
            }
        }
    }

    /// Reads frames until the turn `turn` is closed; returns that turn's frames, in order.
    pub fn finish_turn(&mut self, turn: u64) -> Vec<ServerEnvelope> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next();
            if frame.frame.turn_id() == Some(TurnId(turn)) {
                let closes = frame.frame.closes_turn();
                frames.push(frame);
                if closes {
                    return frames;
                }
            }
        }
    }

    /// Sends `text` and reads until its turn closes; returns the closing frame's text, or the
    /// error message.
    pub fn ask(&mut self, text: &str) -> String {
        self.say(text);
        let opened = self.expect("user_message");
        let turn = opened.frame.turn_id().unwrap().0;
        match self.finish_turn(turn).pop().map(|frame| frame.frame) {
            Some(ServerFrame::Message { text, .. }) => text,
            other => panic!("turn {turn} did not answer: {other:?}"),
        }
    }

    /// Reads until the server closes the connection, and returns the close frame.
    pub fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            if let Err(close) = self.try_next() {
                return close;
            }
        }
    }
}

/// The `type`s of a list of frames.
pub fn kinds(frames: &[ServerEnvelope]) -> Vec<String> {
    frames.iter().map(kind).collect()
}

/// The `seq`s of a list of frames (events only).
pub fn seqs(frames: &[ServerEnvelope]) -> Vec<u64> {
    frames.iter().filter_map(|frame| frame.seq).collect()
}

/// The `sparky` binary running as a child process; killed (SIGKILL) when dropped.
pub struct ChildServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    /// Starts the binary on `127.0.0.1:0` with `args` and waits for its `listening on` line.
    pub fn start(args: &[&str]) -> Self {
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_sparky"))
            .args(["--addr", "127.0.0.1:0", "--log-level", "warn"])
            .args(store_args(args))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let line = first_line(&mut child, "the server");
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        ChildServer {
            addr: addr.parse().unwrap(),
            child,
        }
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first line `child` prints on its piped stdout (which a thread goes on reading, so
/// that the child never blocks on it); fails after [`WAIT`], naming `what` printed nothing.
pub fn first_line(child: &mut std::process::Child, what: &str) -> String {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().expect("a piped stdout");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    received
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("{what} printed nothing"))
        .unwrap()
}

/// A fresh, empty temporary directory for one test. It outlives the test (a test may hand it
/// to a server that is still stopping); the next test process removes it ([`sweep_leftovers`]).
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    sweep_leftovers();
    let dir = std::env::temp_dir().join(format!("sparky-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The test process a temporary directory was made for, read from its name:
/// `sparky-test-PID-N` ([`test_config`]) or `sparky-NAME-PID` ([`temp_dir`], and the clusters
/// of `postgres.rs`, which sweeps its own as well, since the library's tests use it alone).
/// Other names (`scripts/pg-cluster.sh`'s random ones) give `None`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("sparky-")?;
    match rest.strip_prefix("test-") {
        Some(rest) => rest.split('-').next()?.parse().ok(),
        None => rest.rsplit('-').next()?.parse().ok(),
    }
}

/// Removes, once per test process, the temporary directories of test processes that have
/// ended ([`leftovers`]).
pub fn sweep_leftovers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| leftovers::sweep(owner_pid));
}

/// The status and text of the first `tool_result` among `frames`; fails if there is none.
pub fn tool_result(frames: &[ServerEnvelope]) -> (sparky::common::protocol::ToolStatus, String) {
    frames
        .iter()
        .find_map(|f| match &f.frame {
            ServerFrame::ToolResult { status, result, .. } => Some((*status, result.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no tool_result in {frames:#?}"))
}

/// Sends one HTTP request (with `Host: localhost`, and `Authorization: Bearer` when `token` is
/// given) and returns the status code and the body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// One HTTP request with a body of bytes and extra headers: the status, the headers (names in
/// lowercase) and the body as bytes.
pub fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::Write;
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    // The server may answer before it has read the whole body (a refusal): a failed write of
    // the rest is no error here.
    let _ = stream.write_all(body);
    read_answer(&mut stream)
}

/// Reads a whole HTTP answer from `stream` (the server closes after it): the status, the
/// headers (names in lowercase) and the body as bytes.
pub fn read_answer(stream: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::Read;
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        // A reset after the whole answer arrived (the server closed with bytes unread).
        assert!(!raw.is_empty(), "no answer: {e}");
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status, headers, raw[end + 4..].to_vec())
}

/// Uploads `bytes` as a file named `name` (`POST /api/files`) and returns the answer's JSON;
/// fails unless the server answered `201`.
pub fn upload(addr: SocketAddr, token: Option<&str>, name: &str, bytes: &[u8]) -> Value {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/octet-stream")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    let path = format!(
        "/api/files?name={}",
        form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
    );
    let (status, _, body) = http_raw(addr, "POST", &path, &headers, bytes);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 201, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// `http` for a JSON answer: the status and the parsed body (`null` when empty).
pub fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let (status, text) = http(addr, method, path, token, body);
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, value)
}

/// The numbered frames a client has seen, as JSON.
pub fn events_seen(client: &Client) -> Vec<Value> {
    client
        .seen
        .iter()
        .filter(|frame| frame.seq.is_some())
        .map(|frame| serde_json::to_value(frame).unwrap())
        .collect()
}

/// Resumes `id` from `last_seq` 0 and reads `count` replayed events as JSON.
pub fn replay(addr: SocketAddr, id: &SessionId, count: usize) -> Vec<Value> {
    let mut client = Client::resume(addr, id, 0);
    (0..count)
        .map(|_| serde_json::to_value(client.next()).unwrap())
        .collect()
}
