//! Authentication, origin checks, limits, keepalive and graceful shutdown (issue 5).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sparky::common::config::RateLimit;
use sparky::common::protocol::{ErrorCode, ServerFrame};
use support::{ChildServer, Client, TestServer, WAIT, kinds, temp_dir, wait_until};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

fn with_tokens() -> TestServer {
    TestServer::with_config(|config| config.auth_tokens = vec!["alpha".into(), "beta".into()])
}

/// Expects an `unauthorized` error and then a close with 1008.
fn expect_unauthorized(client: &mut Client) {
    let frame = client.next();
    assert!(
        matches!(
            frame.frame,
            ServerFrame::Error {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{frame:?}"
    );
    let close = client.expect_close().expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
}

/// Opens a WebSocket to `path` with extra request headers; the HTTP status when refused.
fn open_with_headers(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, u16> {
    Client::open_with(addr, path, headers, Duration::from_millis(250))
}

#[test]
fn a_token_is_required_when_configured() {
    let server = with_tokens();
    let mut anonymous = Client::open(server.addr);
    anonymous.send(json!({"type": "connect", "data": {}}));
    expect_unauthorized(&mut anonymous);

    let mut wrong = Client::open(server.addr);
    wrong.send(json!({"type": "connect", "data": {"token": "gamma"}}));
    expect_unauthorized(&mut wrong);

    let mut right = Client::connect(server.addr, json!({"token": "alpha"}));
    assert_eq!(right.ask("let me in"), "You said: let me in");
    assert_eq!(
        server.handle.sessions().len(),
        1,
        "refused clients made no session"
    );
}

#[test]
fn a_token_may_come_in_a_header_or_the_query() {
    let server = with_tokens();
    let mut bearer =
        open_with_headers(server.addr, "/ws", &[("Authorization", "Bearer beta")]).unwrap();
    bearer.send(json!({"type": "connect", "data": {}}));
    bearer.expect("ready");
    let mut query = open_with_headers(server.addr, "/ws?token=alpha", &[]).unwrap();
    query.send(json!({"type": "connect", "data": {}}));
    query.expect("ready");
    let mut bad =
        open_with_headers(server.addr, "/ws", &[("Authorization", "Bearer nope")]).unwrap();
    bad.send(json!({"type": "connect", "data": {}}));
    expect_unauthorized(&mut bad);
}

#[test]
fn another_principal_cannot_resume_a_session() {
    let server = with_tokens();
    let mut owner = Client::connect(server.addr, json!({"token": "alpha"}));
    let id = owner.session_id.clone().unwrap();
    owner.ask("private");
    let mut intruder = Client::open(server.addr);
    intruder.send(json!({"type": "connect", "data": {"token": "beta", "session_id": id.as_str(), "last_seq": 0}}));
    expect_unauthorized(&mut intruder);
    let mut again = Client::connect(
        server.addr,
        json!({"token": "alpha", "session_id": id.as_str(), "last_seq": 0}),
    );
    assert_eq!(again.next().seq, Some(1), "the owner gets its replay");
}

#[test]
fn pages_from_other_origins_are_refused() {
    let server = TestServer::with_config(|config| {
        config.allowed_origins = vec!["https://chat.example.com".into()]
    });
    let own = format!("http://{}", server.addr);
    assert!(open_with_headers(server.addr, "/ws", &[("Origin", &own)]).is_ok());
    assert!(
        open_with_headers(
            server.addr,
            "/ws",
            &[("Origin", "https://chat.example.com")]
        )
        .is_ok()
    );
    assert_eq!(
        open_with_headers(server.addr, "/ws", &[("Origin", "https://evil.example")]).err(),
        Some(403)
    );
    assert_eq!(
        open_with_headers(server.addr, "/ws", &[("Origin", "null")]).err(),
        Some(403)
    );
    // No Origin at all: not a browser, allowed.
    assert!(open_with_headers(server.addr, "/ws", &[]).is_ok());
}

#[test]
fn too_many_frames_are_rate_limited_and_the_connection_recovers() {
    let server = TestServer::with_config(|config| {
        config.rate_limit = Some(RateLimit {
            per_second: 20.0,
            burst: 5.0,
        })
    });
    let mut client = server.client();
    for _ in 0..10 {
        client.send(json!({"type": "cancel", "data": {}}));
    }
    let limited = (0..5).map(|_| client.next()).collect::<Vec<_>>();
    assert!(limited.iter().all(|f| matches!(
        f.frame,
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            ..
        }
    )));
    // Once under the limit again, the connection works: retry until a message gets through.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "never got under the limit");
        client.say("back to normal");
        let frame = client.next();
        if matches!(frame.frame, ServerFrame::UserMessage { .. }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(60));
    }
    assert_eq!(kinds(&client.finish_turn(1)), ["thought", "message"]);
}

#[test]
fn past_the_session_limit_connect_gets_server_busy() {
    let server = TestServer::with_config(|config| config.max_sessions = 2);
    let _one = server.client();
    let _two = server.client();
    let mut three = Client::open(server.addr);
    three.send(json!({"type": "connect", "data": {}}));
    let frame = three.next();
    assert!(
        matches!(
            frame.frame,
            ServerFrame::Error {
                code: ErrorCode::ServerBusy,
                ..
            }
        ),
        "{frame:?}"
    );
    assert_eq!(
        three.expect_close().expect("a close frame").code,
        CloseCode::Again
    );
}

#[test]
fn a_peer_that_stops_answering_pings_is_dropped_and_its_session_kept() {
    let server =
        TestServer::with_config(|config| config.ping_interval = Duration::from_millis(100));
    let client = server.client();
    let id = client.session_id.clone().unwrap();
    // The client never reads again, so it never answers a ping.
    wait_until("the silent connection to be dropped", || {
        server.handle.connection_count() == 0
    });
    drop(client);
    let mut again = Client::resume(server.addr, &id, 0);
    assert_eq!(again.ask("still mine?"), "You said: still mine?");
}

/// A client's stream on a slow link: it takes at most `bytes_per_second` from its socket.
struct Throttled {
    stream: TcpStream,
    bytes_per_second: f64,
}

impl Read for Throttled {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let wanted = buffer.len().min(16 * 1024);
        let read = self.stream.read(&mut buffer[..wanted])?;
        // The link's pace, not a wait for something: a slow reader is what is tested.
        std::thread::sleep(Duration::from_secs_f64(read as f64 / self.bytes_per_second));
        Ok(read)
    }
}

impl Write for Throttled {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buffer)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// Reads `ws` until a frame of type `wanted` arrives, and returns it as JSON.
fn read_until(ws: &mut WebSocket<Throttled>, wanted: &str) -> serde_json::Value {
    let deadline = Instant::now() + 3 * WAIT;
    loop {
        assert!(Instant::now() < deadline, "no {wanted} in time");
        match ws.read() {
            Ok(Message::Text(text)) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == wanted {
                    return frame;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("the slow reader's connection ended waiting for {wanted}: {e}"),
        }
    }
}

#[test]
fn a_slow_reader_of_a_large_event_keeps_its_connection_while_dead_peers_are_dropped() {
    let server = TestServer::with_config(|config| {
        config.ping_interval = Duration::from_secs(1);
        config.write_timeout = Duration::from_secs(2);
        config.max_frame_bytes = 8 << 20;
        config.max_text_chars = 8 << 20;
    });
    // A reader at 2 MB/s with a small receive buffer, so that most of what it has yet to read
    // waits on the server's side.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let link = Throttled {
        stream,
        bytes_per_second: 2e6,
    };
    let (mut slow, _) = tungstenite::client(format!("ws://{}/ws", server.addr), link).unwrap();
    slow.send(Message::text(
        json!({"type": "connect", "data": {}}).to_string(),
    ))
    .unwrap();
    let info = read_until(&mut slow, "session_info");
    let id = info["data"]["session_id"].as_str().unwrap().to_owned();
    read_until(&mut slow, "ready");
    // Two dead peers, which neither read nor answer pings: one on the same conversation, with
    // the large events waiting for it, and one with nothing to read.
    let behind = Client::connect(server.addr, json!({"session_id": id}));
    let idle = server.client();
    assert_eq!(server.handle.connection_count(), 3);

    // About 5 MB of words; the echo makes a second event as large: 10 MB to read, five seconds
    // at the reader's pace, five ping intervals.
    let text = "lorem ipsum ".repeat(5_000_000 / 12);
    slow.send(Message::text(
        json!({"type": "message", "data": {"text": text}}).to_string(),
    ))
    .unwrap();
    let started = Instant::now();
    let echoed = read_until(&mut slow, "user_message");
    assert_eq!(
        echoed["data"]["text"].as_str().map(str::len),
        Some(text.len())
    );
    let answer = read_until(&mut slow, "message");
    assert_eq!(
        answer["data"]["text"].as_str().map(str::len),
        Some("You said: ".len() + text.len())
    );
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "read in {:?}: the reader was not slow, so the test proves little",
        started.elapsed()
    );
    // Still connected, and answered.
    slow.send(Message::text(
        json!({"type": "message", "data": {"text": "still here?"}}).to_string(),
    ))
    .unwrap();
    let answer = read_until(&mut slow, "message");
    assert_eq!(answer["data"]["text"], "You said: still here?");
    // The dead peers were dropped meanwhile.
    wait_until("the dead peers to be dropped", || {
        server.handle.connection_count() == 1
    });
    drop((behind, idle));
}

#[test]
fn a_peer_that_stops_reading_is_dropped_without_holding_up_the_session() {
    let server = TestServer::with_config(|config| {
        config.write_timeout = Duration::from_millis(300);
        config.rate_limit = None;
    });
    let stalled = server.client();
    let id = stalled.session_id.clone().unwrap();
    let mut active = Client::connect(server.addr, json!({"session_id": id.as_str()}));
    let big = "x".repeat(90_000);
    let session = server.handle.sessions().get(&id).unwrap();
    let deadline = Instant::now() + WAIT;
    while session.subscriber_count() > 1 {
        assert!(
            Instant::now() < deadline,
            "the stalled connection was never dropped"
        );
        // Each turn sends ~180 KB to both connections; the stalled one's buffers fill up.
        assert!(active.ask(&big).starts_with("You said: "));
    }
    assert_eq!(active.ask("small"), "You said: small");
    drop(stalled);
}

#[test]
fn sigterm_lets_the_turn_finish_then_closes_with_1001_and_loses_nothing() {
    let dir = temp_dir("sigterm");
    let data_dir = dir.to_str().unwrap();
    let server = ChildServer::start(&["--data-dir", data_dir, "--shutdown-grace", "5s"]);
    let mut client = Client::connect(server.addr, json!({}));
    let id = client.session_id.clone().unwrap();
    client.say("/wait 400");
    client.expect("tool_use");
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let frames = client.finish_turn(1);
    assert_eq!(kinds(&frames), ["tool_result", "message"]);
    assert!(
        matches!(frames.last().unwrap().frame, ServerFrame::Message { .. }),
        "{frames:?}"
    );
    assert_eq!(
        client.expect_close().expect("a close frame").code,
        CloseCode::Away
    );
    let mut child = server;
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(exit) = child.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    let last_seq = client.last_seq;
    let restarted = ChildServer::start(&["--data-dir", data_dir]);
    let mut again = Client::resume(restarted.addr, &id, 0);
    let replayed: Vec<_> = (0..last_seq).map(|_| again.next()).collect();
    let seen: Vec<_> = client
        .seen
        .iter()
        .filter(|f| f.seq.is_some())
        .cloned()
        .collect();
    assert_eq!(replayed, seen);
    again.say("after the restart");
    assert_eq!(again.finish_turn(2)[0].seq, Some(last_seq + 1));
}

#[test]
fn listening_beyond_loopback_without_a_token_warns() {
    let output = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args([
            "--addr",
            "0.0.0.0:0",
            "--in-memory",
            "--auth-token-file",
            "/nonexistent/tokens",
        ])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "an unreadable token file stops the server"
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(["--addr", "0.0.0.0:0", "--in-memory"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let warned = loop {
        match received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("no --auth-token") => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned);
}

#[test]
fn token_file_lines_may_name_their_principal_without_changing_ownership() {
    let dir = support::temp_dir("named-tokens");
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    // First as bare tokens: a conversation of the first token.
    std::fs::write(&tokens, "alpha-token\n# a comment\n:with:colons\n").unwrap();
    let server = ChildServer::start(&[
        "--data-dir",
        data,
        "--auth-token-file",
        tokens.to_str().unwrap(),
    ]);
    let mut client = Client::connect(server.addr, json!({"token": "alpha-token"}));
    client.ask("mine");
    let id = client.session_id.clone().unwrap();
    Client::connect(server.addr, json!({"token": "with:colons"}));
    let (_, listed) = support::http_json(
        server.addr,
        "GET",
        "/api/conversations",
        Some("alpha-token"),
        None,
    );
    assert_eq!(
        listed["principal"].as_str().map(str::len),
        Some(32),
        "{listed}"
    );
    drop(client);
    server.kill();

    // Named now: the same token owns the same conversation, under a readable name.
    std::fs::write(&tokens, "alice:alpha-token\nbob:beta-token\n").unwrap();
    let server = ChildServer::start(&[
        "--data-dir",
        data,
        "--auth-token-file",
        tokens.to_str().unwrap(),
    ]);
    let (status, listed) = support::http_json(
        server.addr,
        "GET",
        "/api/conversations",
        Some("alpha-token"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(listed["principal"], "alice");
    assert_eq!(listed["conversations"][0]["id"], id.as_str());
    let (_, other) = support::http_json(
        server.addr,
        "GET",
        "/api/conversations",
        Some("beta-token"),
        None,
    );
    assert_eq!(other["principal"], "bob");
    assert_eq!(other["conversations"].as_array().map(Vec::len), Some(0));
    let (status, _) = support::http_json(
        server.addr,
        "GET",
        "/api/conversations",
        Some("alice"),
        None,
    );
    assert_eq!(status, 401, "a name is not a token");
    server.kill();
}
