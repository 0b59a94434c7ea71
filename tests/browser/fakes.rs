//! Stand-ins the browser test drives: a TCP proxy that can cut the page off its server, a
//! scripted Sparky for what the real one cannot be made to do on demand, and a fake
//! OpenAI-compatible model server that records what it was asked and reports token usage.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::driver::PAGE_WAIT;

/// A TCP proxy between the browser and the server: the test can drop every connection through
/// it, refuse new ones, and change the server it forwards to.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<ProxyShared>,
}

struct ProxyShared {
    upstream: Mutex<SocketAddr>,
    /// Both sockets of every live pair, to shut them down on demand.
    open: Mutex<Vec<TcpStream>>,
    refusing: AtomicBool,
    stopped: AtomicBool,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyShared {
            upstream: Mutex::new(upstream),
            open: Mutex::new(Vec::new()),
            refusing: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if accepting.refusing.load(Ordering::SeqCst) {
                    continue; // dropped: the browser sees the connection close at once
                }
                let upstream = *accepting.upstream.lock().unwrap();
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                {
                    let mut open = accepting.open.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy { addr, shared }
    }

    /// Shuts down every connection through the proxy, as a network failure would.
    pub fn drop_all(&self) {
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// While `true`, new connections are closed as soon as they are accepted.
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Forwards new connections to `upstream`.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.drop_all();
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` on a thread; when either side ends, shuts both down.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// The token [`FakeSparky`] accepts.
pub const FAKE_TOKEN: &str = "let-me-in";
/// The session [`FakeSparky`] hands out.
pub const FAKE_SESSION: &str = "0123456789abcdef0123456789abcdef";

/// A stand-in for Sparky that serves the same page and assets and answers from a script. It
/// wants [`FAKE_TOKEN`] (the API answers `401` without it); the first WebSocket that has it gets
/// a session whose events 1 and 2 are gone (`status gap`), turn 3 with a failed tool call, a
/// streamed answer, an unknown status code and one event sent twice, and is then taken over.
/// Later connections are greeted and left open.
pub struct FakeSparky {
    pub addr: SocketAddr,
    /// The `data` of every `connect`, in order.
    pub connects: Arc<Mutex<Vec<Value>>>,
}

impl FakeSparky {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&connects);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let recorded = Arc::clone(&recorded);
                std::thread::spawn(move || fake_connection(stream, &recorded));
            }
        });
        FakeSparky { addr, connects }
    }
}

fn fake_connection(stream: TcpStream, connects: &Mutex<Vec<Value>>) {
    stream.set_read_timeout(Some(PAGE_WAIT)).unwrap();
    let mut start = [0u8; 8];
    let deadline = Instant::now() + PAGE_WAIT;
    while stream.peek(&mut start).unwrap_or(0) < start.len() {
        if Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if !start.starts_with(b"GET /ws") {
        return serve_http(stream);
    }
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    let Ok(tungstenite::Message::Text(first)) = ws.read() else {
        return;
    };
    let connect: Value = serde_json::from_str(first.as_str()).unwrap();
    let data = connect["data"].clone();
    let count = {
        let mut connects = connects.lock().unwrap();
        connects.push(data.clone());
        connects.iter().filter(|c| c["token"] == FAKE_TOKEN).count()
    };
    let mut send = |frame: Value| {
        let _ = ws.send(tungstenite::Message::text(frame.to_string()));
    };
    if data["token"] != FAKE_TOKEN {
        send(
            json!({"type": "error", "data": {"code": "unauthorized", "message": "a token is required"}}),
        );
        let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Policy,
            reason: "unauthorized".into(),
        }));
        while ws.read().is_ok() {}
        return;
    }
    let sid = FAKE_SESSION;
    send(json!({"type": "session_info", "session_id": sid,
        "data": {"session_id": sid, "is_new": false, "reconnected": true}}));
    send(json!({"type": "ready", "session_id": sid,
        "data": {"tools_loaded": 1, "tools": ["graph_get"], "model": "fake"}}));
    if count == 1 {
        let event = |seq: u64, kind: &str, data: Value| json!({"type": kind, "session_id": sid, "seq": seq, "data": data});
        let thought = event(
            4,
            "thought",
            json!({"turn_id": 3, "text": "Looking it up."}),
        );
        for frame in [
            json!({"type": "status", "session_id": sid,
                "data": {"code": "gap", "message": "events were dropped", "from": 1, "to": 2}}),
            event(
                3,
                "user_message",
                json!({"turn_id": 3, "text": "what is node 7?"}),
            ),
            thought.clone(),
            event(
                5,
                "tool_use",
                json!({"turn_id": 3, "call_id": "c1", "name": "graph_get", "args": {}}),
            ),
            event(
                6,
                "tool_result",
                json!({"turn_id": 3, "call_id": "c1", "name": "graph_get",
                "status": "error", "result": "no such node"}),
            ),
            json!({"type": "message_delta", "session_id": sid, "data": {"turn_id": 3, "text": "Part"}}),
            event(
                7,
                "status",
                json!({"turn_id": 3, "code": "from_the_future", "message": "?"}),
            ),
            thought,
            event(8, "message", json!({"turn_id": 3, "text": "Part two."})),
            json!({"type": "status", "session_id": sid,
                "data": {"code": "taken_over", "message": "another connection took over"}}),
        ] {
            send(frame);
        }
        let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Policy,
            reason: "taken over".into(),
        }));
    }
    // Stay until the browser goes away.
    let _ = ws.get_ref().set_read_timeout(None);
    while ws.read().is_ok() {}
}

/// Answers a plain HTTP request on the fake server: the page, its assets, and an API that
/// wants [`FAKE_TOKEN`] and holds one conversation with no stored events.
fn serve_http(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
    let path = target.split('?').next().unwrap_or("/");
    let authorized = head.contains(&format!("Bearer {FAKE_TOKEN}"));
    let (status, content_type, body) = if let Some(asset) = sparky::net::assets::find(path) {
        ("200 OK", asset.content_type, asset.body.to_owned())
    } else if path.starts_with("/api/") && !authorized {
        (
            "401 Unauthorized",
            "application/json",
            r#"{"error":"token"}"#.to_owned(),
        )
    } else if path == "/api/conversations" {
        let list = json!({"conversations": [{"id": FAKE_SESSION, "title": "what is node 7?",
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "turns": 3, "running": false}]});
        ("200 OK", "application/json", list.to_string())
    } else if path.starts_with("/api/") {
        (
            "200 OK",
            "application/json",
            r#"{"events":[],"memories":[]}"#.to_owned(),
        )
    } else {
        (
            "200 OK",
            "text/html; charset=utf-8",
            sparky::net::assets::page().to_owned(),
        )
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A question [`FakeModel`] answers with [`TEA_ANSWER`].
pub const TEA_QUESTION: &str = "How should I brew green tea?";

/// A rich answer: a heading, emphasis, a link, a table, code and a list.
pub const TEA_ANSWER: &str = "## Brewing green tea\n\nUse water at **70–80 °C**, not boiling, and \
steep for *two minutes*. More on [the tea page](https://example.com/tea).\n\n\
| Tea | Water | Time |\n|:----|------:|:----:|\n| Sencha | 75 °C | 1 min |\n\
| Gyokuro | 60 °C | 2 min |\n\n```python\ndef steep(minutes):\n    \
return f\"steep for {minutes} min\"\n```\n\n- keep the leaves\n- brew them again\n";

/// The tokens [`FakeModel`] reports for every answer.
pub const FAKE_USAGE: (u64, u64) = (11, 7);

/// A fake OpenAI-compatible model server. It answers every request with a streamed answer and
/// a usage chunk of [`FAKE_USAGE`], and hands every request body to the test. What it answers
/// depends on the newest user message: [`TEA_QUESTION`] gets [`TEA_ANSWER`]; `say:<text>`
/// answers `<text>` exactly; `slow` answers
/// "Streaming part one." and then waits until the test calls [`FakeModel::release`] before
/// it ends with " And the end."; anything else gets "Hello from the fake model."
pub struct FakeModel {
    pub addr: SocketAddr,
    requests: Receiver<Value>,
    release: Sender<()>,
}

impl FakeModel {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests, received) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let requests = requests.clone();
                let released = Arc::clone(&released);
                std::thread::spawn(move || model_answer(stream, &requests, &released));
            }
        });
        FakeModel {
            addr,
            requests: received,
            release,
        }
    }

    /// The next request's body.
    pub fn request(&self) -> Value {
        self.requests
            .recv_timeout(PAGE_WAIT)
            .expect("the fake model got no request")
    }

    /// Lets a `slow` answer finish.
    pub fn release(&self) {
        self.release.send(()).unwrap();
    }

    /// The flags that point a Sparky at this model.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--model".into(),
            "openai".into(),
            "--model-url".into(),
            format!("http://{}/v1", self.addr),
            "--model-name".into(),
            "fake-model".into(),
        ]
    }
}

fn model_answer(stream: TcpStream, requests: &Sender<Value>, released: &Mutex<Receiver<()>>) {
    stream.set_read_timeout(Some(PAGE_WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    if length == 0 {
        // The binary's `GET /models` probe: the one model it asks for.
        let body = json!({"object": "list", "data": [{"id": "fake-model"}]}).to_string();
        let mut out = stream;
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request: Value = serde_json::from_slice(&body).unwrap();
    if request.get("messages").is_none() {
        // Not a chat (Ollama's `POST /api/show`, which the probe asks for the window).
        let mut out = stream;
        let _ = write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    }
    let last_user = request["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let _ = requests.send(request);
    let mut out = stream;
    let _ = out.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
    );
    let mut piece = |text: &str| {
        let chunk = json!({"choices": [{"index": 0, "delta": {"content": text}}]});
        let _ = out.write_all(format!("data: {chunk}\n\n").as_bytes());
        let _ = out.flush();
    };
    if last_user == TEA_QUESTION {
        piece(TEA_ANSWER);
    } else if let Some(text) = last_user.strip_prefix("say:") {
        piece(text);
    } else if last_user == "slow" {
        piece("Streaming part one.");
        let _ = released.lock().unwrap().recv_timeout(PAGE_WAIT * 2);
        piece(" And the end.");
    } else {
        piece("Hello from the fake model.");
    }
    let usage = json!({"choices": [], "usage": {"prompt_tokens": FAKE_USAGE.0,
        "completion_tokens": FAKE_USAGE.1, "total_tokens": FAKE_USAGE.0 + FAKE_USAGE.1}});
    let _ = out.write_all(format!("data: {usage}\n\ndata: [DONE]\n\n").as_bytes());
    let _ = out.flush();
    let _ = out.shutdown(Shutdown::Both);
}

/// A listener that records whether anything connected to it: the address of an image an answer
/// names, which the page must never fetch.
pub struct Beacon {
    pub addr: SocketAddr,
    hit: Arc<AtomicBool>,
}

impl Beacon {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hit = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&hit);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                seen.store(true, Ordering::SeqCst);
                drop(stream);
            }
        });
        Beacon { addr, hit }
    }

    pub fn was_hit(&self) -> bool {
        self.hit.load(Ordering::SeqCst)
    }
}
