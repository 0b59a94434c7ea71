//! The terminal client (`sparky chat`) against a real server: an answer shown once,
//! `/list`, on a restart of the client the conversation's recent history, the branch commands
//! (`/edit`, `/regen`, `/switch`, `/history`), `/attach` (a file uploaded for the next message,
//! kept by `/edit`) and `/detach`, a message cut off by a dropped connection sent again
//! with its `client_id` and run once, and an MCP server's form asked field by field and its
//! sampling request allowed (against `@modelcontextprotocol/server-everything`).

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};
use support::{TestServer, WAIT, http_json, temp_dir};

/// The client, with its output arriving on a channel.
fn start(server: &TestServer, state: &Path) -> (Child, Receiver<String>) {
    start_at(server.addr, state)
}

/// The client of a server at `addr` (the server's, or a proxy's).
fn start_at(addr: SocketAddr, state: &Path) -> (Child, Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(["chat", &format!("ws://{addr}/ws")])
        .arg("--state")
        .arg(state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (chunks, received) = channel();
    for mut pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let chunks = chunks.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0
                    || chunks
                        .send(String::from_utf8_lossy(&buffer[..n]).into_owned())
                        .is_err()
                {
                    return;
                }
            }
        });
    }
    (child, received)
}

/// Reads output until it contains `wanted`; returns everything read so far.
fn until(output: &Receiver<String>, seen: &mut String, wanted: &str) {
    let deadline = Instant::now() + WAIT;
    while !seen.contains(wanted) {
        let left = deadline.saturating_duration_since(Instant::now());
        match output.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&chunk),
            Err(_) => panic!("no {wanted:?} in {seen:?}"),
        }
    }
}

/// Reads output until `wanted` occurs in it `count` times.
fn until_count(output: &Receiver<String>, seen: &mut String, wanted: &str, count: usize) {
    let deadline = Instant::now() + WAIT;
    while seen.matches(wanted).count() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match output.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&chunk),
            Err(_) => panic!("{wanted:?} not {count} times in {seen:?}"),
        }
    }
}

fn type_line(child: &mut Child, line: &str) {
    let stdin = child.stdin.as_mut().unwrap();
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
}

#[test]
fn the_client_chats_lists_and_shows_history_on_resume() {
    let server = TestServer::start();
    let dir = temp_dir("client");
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");

    let (mut child, output) = start(&server, &state);
    let mut seen = String::new();
    // The `you>` prompt is shown only on a terminal; the tools line ends the greeting.
    until(&output, &mut seen, "model offline");
    type_line(&mut child, "hello there");
    until(&output, &mut seen, "You said: hello there");
    type_line(&mut child, "/list");
    until(&output, &mut seen, "1.");
    type_line(&mut child, "/quit");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the client did not quit");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(seen.matches("You said: hello there").count(), 1, "{seen}");

    // A new client on the same state resumes, showing what was said before.
    let (mut child, output) = start(&server, &state);
    let mut seen = String::new();
    until(&output, &mut seen, "You said: hello there");
    assert!(seen.contains("recent history"), "{seen}");
    type_line(&mut child, "/quit");
    let _ = child.wait();
}

#[test]
fn the_branch_commands_send_their_frames_and_show_the_tree() {
    let server = TestServer::start();
    let proxy = WsProxy::start(server.addr, Vec::new());
    let dir = temp_dir("client-branches");
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let (mut child, output) = start_at(proxy.addr, &state);
    let mut seen = String::new();
    until(&output, &mut seen, "model offline");

    type_line(&mut child, "hello");
    until(&output, &mut seen, "you> hello  (turn 1)");
    until(&output, &mut seen, "You said: hello");
    type_line(&mut child, "second");
    until(&output, &mut seen, "You said: second");
    // Typed wrong: nothing is sent, the client says how.
    type_line(&mut child, "/edit two");
    until(&output, &mut seen, "usage: /edit N text");

    type_line(&mut child, "/edit 2 second, edited");
    until(
        &output,
        &mut seen,
        "you> second, edited  (turn 3, edit of 2)",
    );
    until(&output, &mut seen, "You said: second, edited");
    type_line(&mut child, "/regen 3");
    until(
        &output,
        &mut seen,
        "you> second, edited  (turn 4, regenerate of 3)",
    );
    until_count(&output, &mut seen, "You said: second, edited", 2);
    type_line(&mut child, "/switch 2");
    until(&output, &mut seen, "now on the branch ending at turn 2");
    // A message now follows turn 2, the leaf.
    type_line(&mut child, "third");
    until(&output, &mut seen, "You said: third");

    type_line(&mut child, "/history");
    until(&output, &mut seen, "/switch N follows another branch");
    let tree = [
        "* 1. hello  [message]",
        "* - 2. second  [message]",
        ">   5. third  [message]",
        "  - 3. second, edited  [message]",
        "  - 4. second, edited  [message]",
    ]
    .join("\n");
    assert!(seen.contains(&tree), "no tree\n{tree}\nin\n{seen}");
    assert!(!seen.contains("[error"), "{seen}");
    // A turn the conversation does not have: the server's refusal shows.
    type_line(&mut child, "/regen 99");
    until(
        &output,
        &mut seen,
        "[error invalid_message] this conversation has no turn 99",
    );
    type_line(&mut child, "/quit");
    let _ = child.wait();

    // The frames as they went over the wire, each turn's with a client_id of its own.
    let sent: Vec<Value> = proxy.sent().into_iter().map(|(_, frame)| frame).collect();
    let mut client_ids = Vec::new();
    for frame in &sent {
        if let Some(id) = frame["data"]["client_id"].as_str() {
            assert!(
                id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
                "{frame}"
            );
            client_ids.push(id.to_owned());
        }
    }
    let without_ids: Vec<Value> = sent
        .iter()
        .map(|frame| {
            let mut frame = frame.clone();
            if let Some(data) = frame["data"].as_object_mut() {
                data.remove("client_id");
            }
            frame
        })
        .collect();
    assert_eq!(
        without_ids[1..],
        [
            json!({"type": "message", "data": {"text": "hello"}}),
            json!({"type": "message", "data": {"text": "second"}}),
            json!({"type": "edit", "data": {"turn_id": 2, "text": "second, edited"}}),
            json!({"type": "regenerate", "data": {"turn_id": 3}}),
            json!({"type": "switch", "data": {"turn_id": 2}}),
            json!({"type": "message", "data": {"text": "third"}}),
            json!({"type": "regenerate", "data": {"turn_id": 99}}),
        ],
        "{sent:#?}"
    );
    assert_eq!(without_ids[0]["type"], "connect");
    assert_eq!(client_ids.len(), 6, "{sent:#?}");
    client_ids.sort();
    client_ids.dedup();
    assert_eq!(client_ids.len(), 6, "a client_id was used twice: {sent:#?}");
}

#[test]
fn attach_uploads_a_file_for_the_next_message_and_edit_keeps_it() {
    let server = TestServer::start();
    let proxy = WsProxy::start(server.addr, Vec::new());
    let dir = temp_dir("client-attach");
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let notes = dir.join("boat notes.txt");
    std::fs::write(&notes, "The boat leaves at 9:40 from pier 3.\n").unwrap();
    let (mut child, output) = start_at(proxy.addr, &state);
    let mut seen = String::new();
    until(&output, &mut seen, "model offline");

    type_line(&mut child, "/attach");
    until(&output, &mut seen, "no files attached");
    type_line(
        &mut child,
        &format!("/attach {}", dir.join("missing.txt").display()),
    );
    until(&output, &mut seen, "not attached: cannot read");
    type_line(&mut child, &format!("/attach \"{}\"", notes.display()));
    until(&output, &mut seen, "1 file(s) go with your next message");
    assert!(
        seen.contains("\u{1F4CE} boat notes.txt (37 B) /api/files/"),
        "{seen}"
    );
    type_line(&mut child, "/attach");
    until(&output, &mut seen, "these files go with your next message:");

    // The next message carries it, and shows it under its line.
    type_line(&mut child, "when does the boat leave?");
    until(&output, &mut seen, "You said: when does the boat leave?");
    let (status, files) = http_json(server.addr, "GET", "/api/files", None, None);
    assert_eq!(status, 200);
    let id = files["files"][0]["id"].as_str().unwrap().to_owned();
    until(
        &output,
        &mut seen,
        &format!("boat notes.txt (37 B) /api/files/{id}"),
    );

    // The one after goes without it; /detach drops what was attached.
    type_line(&mut child, "and without?");
    until(&output, &mut seen, "You said: and without?");
    type_line(&mut child, &format!("/attach {}", notes.display()));
    until_count(&output, &mut seen, "1 file(s) go with your next message", 2);
    type_line(&mut child, "/detach");
    until(&output, &mut seen, "1 file(s) detached");
    type_line(&mut child, "plain again");
    until(&output, &mut seen, "You said: plain again");

    // An edit of turn 1 keeps its file.
    type_line(&mut child, "/edit 1 when does it leave?");
    until(&output, &mut seen, "(turn 4, edit of 1)");
    until(&output, &mut seen, "You said: when does it leave?");
    type_line(&mut child, "/quit");
    let _ = child.wait();

    let turns: Vec<Value> = proxy
        .sent()
        .into_iter()
        .map(|(_, frame)| frame)
        .filter(|frame| frame["type"] == "message" || frame["type"] == "edit")
        .map(|frame| frame["data"]["attachments"].clone())
        .collect();
    assert_eq!(
        turns,
        [json!([id]), Value::Null, Value::Null, json!([id])],
        "the attachments of each message and edit sent"
    );
}

#[test]
fn a_message_the_server_already_had_is_sent_again_with_its_client_id_and_runs_once() {
    // The first connection is cut as soon as the message has reached the server, before its
    // echo is back; on the second, the replay is held back until the client has sent the
    // message again, so the server has to answer `duplicate`.
    let (seen, sent, turns) =
        send_across_a_cut([Plan::CutAfterSend, Plan::HoldAfterReady], "hello once");
    assert!(
        seen.contains("already had that message as turn 1"),
        "{seen}"
    );
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(turns, 1, "{seen}");
}

#[test]
fn a_message_lost_with_the_connection_is_sent_again_and_runs_once() {
    // The first connection is cut with the message still in it: only the copy sent after the
    // reconnect reaches the server.
    let (seen, sent, turns) = send_across_a_cut([Plan::CutBeforeSend, Plan::Relay], "hello lost");
    assert!(!seen.contains("already had"), "{seen}");
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(turns, 1, "{seen}");
}

/// Runs the client through a proxy following `plans`, types `text`, and waits for its answer.
/// Checks that the answer was shown once, with no error, and that every copy of the message
/// that went out carried the same `client_id`. Returns the client's output, those copies, and
/// how many turns the conversation has.
fn send_across_a_cut(plans: [Plan; 2], text: &str) -> (String, Vec<Value>, usize) {
    let server = TestServer::start();
    let proxy = WsProxy::start(server.addr, plans.to_vec());
    let dir = temp_dir(&format!("client-cut-{}", text.replace(' ', "-")));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let (mut child, output) = start_at(proxy.addr, &state);
    let mut seen = String::new();
    until(&output, &mut seen, "model offline");
    type_line(&mut child, text);
    until(&output, &mut seen, "disconnected");
    until(&output, &mut seen, &format!("You said: {text}"));
    // Anything the client would still do about it follows at once; `/history` comes after.
    type_line(&mut child, "/history");
    until(&output, &mut seen, "/switch N follows another branch");
    type_line(&mut child, "/quit");
    let _ = child.wait();

    assert_eq!(
        seen.matches(&format!("You said: {text}")).count(),
        1,
        "{seen}"
    );
    assert!(!seen.contains("[error"), "{seen}");
    let sent: Vec<Value> = proxy
        .sent()
        .into_iter()
        .map(|(_, frame)| frame)
        .filter(|frame| frame["type"] == "message")
        .collect();
    assert!(
        sent.iter().all(|frame| frame["data"]["text"] == text),
        "{sent:#?}"
    );
    let first = &sent[0]["data"]["client_id"];
    assert!(first.is_string(), "{sent:#?}");
    assert!(
        sent.iter()
            .all(|frame| frame["data"]["client_id"] == *first),
        "{sent:#?}"
    );
    // The turns the server has, whatever the client showed.
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let id = saved["session_id"].as_str().unwrap();
    let (status, tree) = http_json(
        server.addr,
        "GET",
        &format!("/api/conversations/{id}/turns"),
        None,
        None,
    );
    assert_eq!(status, 200, "{tree}");
    let turns = tree["turns"].as_array().unwrap().len();
    (seen, sent, turns)
}

/// What [`WsProxy`] does with one WebSocket connection through it.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// Relays both ways.
    Relay,
    /// Relays; once a frame that starts a turn has gone to the server, cuts the connection
    /// before anything more reaches the client, as a network failure would.
    CutAfterSend,
    /// Relays until the client sends a frame that starts a turn; cuts the connection instead
    /// of sending it on.
    CutBeforeSend,
    /// Relays until the server's `ready` has reached the client, then holds back what the
    /// server sends next until the client has sent a frame that starts a turn.
    HoldAfterReady,
}

/// A TCP proxy that reads the WebSocket frames passing through it: it records every text frame
/// a client sends, and treats the Nth WebSocket connection as the Nth [`Plan`] says (later
/// ones are relayed). Other HTTP requests are relayed as they are.
struct WsProxy {
    addr: SocketAddr,
    /// The number of the connection (from 0) and the frame, for each text frame sent.
    sent: Arc<Mutex<Vec<(usize, Value)>>>,
    stopped: Arc<AtomicBool>,
}

impl WsProxy {
    fn start(upstream: SocketAddr, plans: Vec<Plan>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let shared = (Arc::clone(&sent), Arc::clone(&stopped));
        std::thread::spawn(move || {
            let (sent, stopped) = shared;
            let plans = Arc::new(plans);
            let count = Arc::new(AtomicUsize::new(0));
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let (plans, count, sent) = (plans.clone(), count.clone(), sent.clone());
                std::thread::spawn(move || relay(client, upstream, &plans, &count, &sent));
            }
        });
        WsProxy {
            addr,
            sent,
            stopped,
        }
    }

    fn sent(&self) -> Vec<(usize, Value)> {
        self.sent.lock().unwrap().clone()
    }
}

impl Drop for WsProxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the blocking accept(), so that the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Carries one connection through the proxy.
fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    plans: &[Plan],
    count: &AtomicUsize,
    sent: &Mutex<Vec<(usize, Value)>>,
) {
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let mut from_client = FrameReader::new(client.try_clone().unwrap());
    let Some(head) = from_client.head() else {
        return;
    };
    if server.write_all(&head).is_err() {
        return;
    }
    if !head.starts_with(b"GET /ws") {
        // An API request: bytes both ways, no frames.
        let _ = server.write_all(&from_client.buffer);
        let mut to_server = server.try_clone().unwrap();
        let mut from_client = client.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut to_server);
            let _ = to_server.shutdown(Shutdown::Write);
        });
        let _ = std::io::copy(&mut server, &mut &client);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let number = count.fetch_add(1, Ordering::SeqCst);
    let plan = plans.get(number).copied().unwrap_or(Plan::Relay);
    let cut = Arc::new(AtomicBool::new(false));
    let (release, released) = channel::<()>();

    // The server's side, on a thread of its own.
    let mut to_client = client.try_clone().unwrap();
    let from_server = server.try_clone().unwrap();
    let cut_seen = Arc::clone(&cut);
    std::thread::spawn(move || {
        let mut from_server = FrameReader::new(from_server);
        let mut holding = matches!(plan, Plan::HoldAfterReady);
        if let Some(head) = from_server.head() {
            let _ = to_client.write_all(&head);
            while let Some((raw, text)) = from_server.frame() {
                if cut_seen.load(Ordering::SeqCst) || to_client.write_all(&raw).is_err() {
                    break;
                }
                if holding && frame_type(text.as_deref()) == Some("ready".to_owned()) {
                    holding = false;
                    let _ = released.recv_timeout(WAIT);
                }
            }
        }
        let _ = to_client.shutdown(Shutdown::Both);
    });

    // The client's side.
    while let Some((raw, text)) = from_client.frame() {
        let kind = frame_type(text.as_deref());
        if let Some(frame) = text.and_then(|text| serde_json::from_str(&text).ok()) {
            sent.lock().unwrap().push((number, frame));
        }
        let starts_turn = matches!(kind.as_deref(), Some("message" | "edit" | "regenerate"));
        match plan {
            Plan::CutBeforeSend if starts_turn => {
                cut.store(true, Ordering::SeqCst);
                break;
            }
            Plan::CutAfterSend if starts_turn => {
                // Nothing the server answers reaches the client from here on.
                cut.store(true, Ordering::SeqCst);
                let _ = server.write_all(&raw);
                break;
            }
            _ => {}
        }
        if server.write_all(&raw).is_err() {
            break;
        }
        if starts_turn {
            let _ = release.send(());
        }
    }
    // The server reads what it was sent, then the end; the client sees the connection drop.
    let _ = server.shutdown(Shutdown::Write);
    let _ = client.shutdown(Shutdown::Both);
}

/// The `type` of a text frame's JSON.
fn frame_type(text: Option<&str>) -> Option<String> {
    let value: Value = serde_json::from_str(text?).ok()?;
    value["type"].as_str().map(str::to_owned)
}

/// Reads an HTTP head, then WebSocket frames, from one side of a connection.
struct FrameReader {
    stream: TcpStream,
    /// Bytes read and not yet handed out.
    buffer: Vec<u8>,
}

impl FrameReader {
    fn new(stream: TcpStream) -> Self {
        FrameReader {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Reads until the buffer holds `len` bytes; false at the end of the stream.
    fn fill(&mut self, len: usize) -> bool {
        let mut chunk = [0u8; 4096];
        while self.buffer.len() < len {
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    /// The HTTP head, up to and including its blank line.
    fn head(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(self.buffer.drain(..at + 4).collect());
            }
            let len = self.buffer.len();
            if !self.fill(len + 1) {
                return None;
            }
        }
    }

    /// The next frame as it came (to pass on unchanged) and, for a text frame, its text.
    fn frame(&mut self) -> Option<(Vec<u8>, Option<String>)> {
        if !self.fill(2) {
            return None;
        }
        let masked = self.buffer[1] & 0x80 != 0;
        let (len, mut header) = match self.buffer[1] & 0x7f {
            126 => {
                self.fill(4).then_some(())?;
                (
                    usize::from(u16::from_be_bytes([self.buffer[2], self.buffer[3]])),
                    4,
                )
            }
            127 => {
                self.fill(10).then_some(())?;
                let bytes: [u8; 8] = self.buffer[2..10].try_into().unwrap();
                (usize::try_from(u64::from_be_bytes(bytes)).unwrap(), 10)
            }
            short => (usize::from(short), 2),
        };
        let mask_at = header;
        if masked {
            header += 4;
        }
        if !self.fill(header + len) {
            return None;
        }
        let raw: Vec<u8> = self.buffer.drain(..header + len).collect();
        let mut payload = raw[header..].to_vec();
        if masked {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= raw[mask_at + i % 4];
            }
        }
        let text = (raw[0] & 0x0f == 1).then(|| String::from_utf8_lossy(&payload).into_owned());
        Some((raw, text))
    }
}

/// `sparky ARGS` with `env` and no input (the client quits at the end of its input): its exit
/// code, stdout and stderr; killed, and failing the test, if it has not ended within [`WAIT`].
fn sparky(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sparky"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("SPARKY_TOKEN");
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "sparky {args:?} did not end: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn chat_is_a_subcommand_with_its_options_documented() {
    let (code, top, _) = sparky(&["--help"], &[]);
    assert_eq!(code, Some(0));
    assert!(
        top.lines()
            .any(|l| l.trim_start().starts_with("chat ") && l.contains("terminal")),
        "{top}"
    );
    let (code, help, err) = sparky(&["chat", "--help"], &[]);
    assert_eq!(code, Some(0), "{err}");
    for wanted in [
        "Usage: sparky chat [OPTIONS] [URL]",
        "[default: ws://127.0.0.1:8000/ws]",
        "--state <FILE>",
        "--token <TOKEN>",
        "SPARKY_TOKEN",
        "--new",
        "/history",
    ] {
        assert!(help.contains(wanted), "{wanted} missing: {help}");
    }
    // A URL it cannot use: exit 2, saying why.
    let (code, _, err) = sparky(&["chat", "wss://example/ws"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("sparky chat: bad URL") && err.contains("TLS"),
        "{err}"
    );
}

#[test]
fn chat_presents_the_token_from_the_flag_or_the_environment() {
    let server = TestServer::with_config(|config| {
        config.auth_tokens = vec!["chat-token-123".into()];
    });
    let dir = temp_dir("client-token");
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let url = format!("ws://{}/ws", server.addr);
    let state = state.to_str().unwrap();
    // Without input the client quits once connected; with a wrong token it stops, exit 1.
    let (code, out, _) = sparky(
        &["chat", &url, "--state", state],
        &[("SPARKY_TOKEN", "chat-token-123")],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("connected to new session"), "{out}");
    let (code, out, _) = sparky(
        &[
            "chat",
            &url,
            "--state",
            state,
            "--new",
            "--token",
            "chat-token-123",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}");
    let (code, _, err) = sparky(&["chat", &url, "--state", state, "--new"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("refused the credentials"), "{err}");
}

#[test]
fn an_mcp_server_s_form_is_asked_field_by_field_and_its_sampling_allowed() {
    let (everything, node) = (support::mcp::EVERYTHING, support::mcp::NODE);
    if !Path::new(everything).exists() || !Path::new(node).exists() {
        let message = format!("{everything} is missing: run scripts/npm-fixtures.sh");
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("skipped: {message}");
        return;
    }
    let dir = temp_dir("client-mcp");
    let entry = json!({"command": node, "args": [everything, "stdio"], "approve": "never"});
    let config = support::mcp::write_config(&dir, &json!({ "everything": entry }));
    let server = TestServer::with_config(|c| c.mcp_config = Some(config));
    support::mcp::wait_for_tool(&server, "everything__trigger-elicitation-request");
    let (mut child, output) = start(&server, &dir.join("state.json"));
    let mut seen = String::new();
    until(&output, &mut seen, "model offline");

    type_line(
        &mut child,
        "/tool everything__trigger-elicitation-request {}",
    );
    until(&output, &mut seen, "elicit> everything asks");
    until(
        &output,
        &mut seen,
        "(Your date of birth) [date, - to skip]:",
    );
    // The fields, in name order: birthdate, check, email, firstLine, homepage, integer,
    // legacyTitledEnum, name, number, and four lists of options.
    for line in [
        "-",
        "y",
        "-",
        ".",
        "-",
        "seven",
        "7",
        "Dogs",
        "-",
        "Terminal Person",
        "-",
        "-",
        "2",
        "Piano, Drums",
        "-",
    ] {
        type_line(&mut child, line);
    }
    until(&output, &mut seen, "- Name: Terminal Person");
    assert!(seen.contains("Favorite Integer: 7"), "{seen}");
    assert!(seen.contains("must be a whole number"), "{seen}");
    assert!(seen.contains("is required"), "{seen}");

    type_line(
        &mut child,
        r#"/tool everything__trigger-sampling-request {"prompt": "from the terminal"}"#,
    );
    until(&output, &mut seen, "allow? [y/n, always]");
    type_line(&mut child, "y");
    until(&output, &mut seen, "LLM sampling result");
    type_line(&mut child, "/quit");
    let _ = child.wait();
}
