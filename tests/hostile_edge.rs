//! The edge under attack (issue 12, rows 1, 2, 7 and 9): DNS rebinding and foreign origins,
//! unauthenticated sockets that hold slots and memory, per-IP caps, secrets in logs and open
//! endpoints, old SHA-1 owners, and ping floods. Every wait has a deadline.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::json;
use sparky::common::auth::Principal;
use sparky::common::config::RateLimit;
use sparky::common::protocol::{ServerFrame, SessionId};
use sparky::store::{TurnMark, WriteOp};
use support::{Client, TestServer, WAIT, http_json, test_config, wait_until};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::{Message, WebSocket};

/// A valid upgrade request for `/ws` with the given `Host` and extra header lines.
fn upgrade_request(host: &str, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// Sends `request` on a fresh connection and returns the status of the answer (0 when the
/// server closed without one).
fn status_of(addr: SocketAddr, request: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    // An upgrade that is accepted never ends: read the status line only.
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Opens a WebSocket to `path` with extra request headers; the HTTP status when refused.
fn open_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
    Client::open_with(addr, path, headers, Duration::from_millis(50))
}

/// How a connection ended, seen from the client.
#[derive(Debug, PartialEq)]
enum End {
    /// A Close frame with this code.
    Closed(CloseCode),
    /// The socket closed or was reset without a Close frame.
    Dropped,
}

/// Reads (answering pings, as tungstenite does on every read) until the server ends the
/// connection, calling `between` after each read; fails after [`WAIT`]. Returns how it ended
/// and how many pongs came meanwhile.
fn read_until_end(
    ws: &mut WebSocket<TcpStream>,
    mut between: impl FnMut(&mut WebSocket<TcpStream>),
) -> (End, usize) {
    let deadline = Instant::now() + WAIT;
    let mut pongs = 0;
    loop {
        assert!(Instant::now() < deadline, "the server never ended it");
        match ws.read() {
            Ok(Message::Close(close)) => {
                let _ = ws.flush();
                let end = close.map_or(End::Dropped, |CloseFrame { code, .. }| End::Closed(code));
                return (end, pongs);
            }
            Ok(Message::Pong(_)) => pongs += 1,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (End::Dropped, pongs),
        }
        between(ws);
    }
}

#[test]
fn a_host_the_server_does_not_answer_to_gets_421_on_every_request_and_upgrade() {
    let server =
        TestServer::with_config(|config| config.allowed_hosts = vec!["chat.example".into()]);
    let port = server.addr.port();
    for path in ["/", "/healthz", "/metrics", "/api/conversations", "/nope"] {
        let get = |host: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(status_of(server.addr, &get("evil.example")), 421, "{path}");
        assert_eq!(status_of(server.addr, &get("null")), 421, "{path}");
        assert_eq!(status_of(server.addr, &get("localhost.")), 421, "{path}");
        assert_ne!(status_of(server.addr, &get("localhost")), 421, "{path}");
    }
    // The rebinding page controls both Host and Origin.
    let evil = format!("evil.example:{port}");
    let evil_origin = format!("Origin: http://evil.example:{port}\r\n");
    assert_eq!(
        status_of(server.addr, &upgrade_request(&evil, &evil_origin)),
        421
    );
    assert_eq!(
        status_of(server.addr, &upgrade_request("null", "Origin: null\r\n")),
        421
    );
    let dotted = format!("localhost.:{port}");
    assert_eq!(status_of(server.addr, &upgrade_request(&dotted, "")), 421);
    // Loopback names and addresses with any port, and the allowed name, are answered.
    for host in [
        format!("localhost:{port}"),
        "127.0.0.1:1".to_owned(),
        format!("[::1]:{port}"),
        "chat.example".to_owned(),
        format!("CHAT.example:{port}"),
    ] {
        assert_eq!(status_of(server.addr, &upgrade_request(&host, "")), 101);
    }
    let mut client = server.client();
    assert_eq!(client.ask("still here"), "You said: still here");
}

#[test]
fn an_origin_must_match_scheme_host_and_port() {
    let server = TestServer::start();
    let addr = server.addr;
    let own = format!("http://{addr}");
    let other_port = format!("http://127.0.0.1:{}", addr.port().wrapping_add(1));
    let other_scheme = format!("https://{addr}");
    assert!(open_with(addr, "/ws", &[("Origin", &own)]).is_ok());
    assert_eq!(
        open_with(addr, "/ws", &[("Origin", &other_port)]).err(),
        Some(403)
    );
    assert_eq!(
        open_with(addr, "/ws", &[("Origin", &other_scheme)]).err(),
        Some(403)
    );
    assert_eq!(
        open_with(addr, "/ws", &[("Origin", "http://localhost")]).err(),
        Some(403)
    );
}

/// Reads whatever `client` has waiting without blocking for long: answers the server's pings.
fn keep_alive(client: &mut Client) {
    client
        .ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();
    while let Ok(message) = client.ws.read() {
        assert!(!message.is_close(), "an authenticated client was closed");
    }
}

#[test]
fn an_unauthenticated_socket_is_closed_at_the_handshake_timeout_though_it_answers_pings() {
    let timeout = Duration::from_millis(600);
    let server = TestServer::with_config(|config| {
        config.auth_tokens = vec!["alpha".into()];
        config.handshake_timeout = timeout;
        config.ping_interval = Duration::from_millis(100);
    });
    let mut user = Client::connect(server.addr, json!({"token": "alpha"}));
    let mut by_header =
        open_with(server.addr, "/ws", &[("Authorization", "Bearer alpha")]).unwrap();
    // The server's deadline starts when it accepts the socket, which is after this instant and
    // before `open_with` returns: measured from here, the close cannot come early.
    let opened = Instant::now();
    let mut stranger = open_with(server.addr, "/ws", &[]).unwrap();
    let mut pings = 0;
    let mut last_ping = opened;
    // The stranger answers every ping of the server (tungstenite does on each read) and sends
    // its own, one every 50 ms: well under the rate limit, so only the deadline can close it.
    // The other two answer the server's pings too.
    let (end, _) = read_until_end(&mut stranger.ws, |ws| {
        if last_ping.elapsed() >= Duration::from_millis(50)
            && ws.send(Message::Ping("hi".into())).is_ok()
        {
            pings += 1;
            last_ping = Instant::now();
        }
        keep_alive(&mut user);
        keep_alive(&mut by_header);
    });
    // A keepalive drop sends no Close frame: 1008 is the deadline.
    assert_eq!(end, End::Closed(CloseCode::Policy));
    assert!(
        opened.elapsed() >= timeout,
        "closed after {:?}",
        opened.elapsed()
    );
    assert!(
        pings > 3,
        "the stranger kept the socket busy ({pings} pings)"
    );
    // Those with a token are still served, including the one that has not sent connect yet:
    // a token on the upgrade request is enough. It was opened before the stranger, so any
    // deadline it had has passed.
    user.ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    assert_eq!(user.ask("still served?"), "You said: still served?");
    by_header.send(json!({"type": "connect", "data": {}}));
    by_header.expect("ready");
    wait_until("the stranger's slot to be free", || {
        server.handle.connection_count() == 2
    });
}

#[test]
fn a_large_frame_before_authentication_closes_the_socket() {
    let server = TestServer::with_config(|config| config.auth_tokens = vec!["alpha".into()]);
    let text = json!({"type": "message", "data": {"text": "x".repeat(100 * 1024)}}).to_string();
    let mut stranger = open_with(server.addr, "/ws", &[]).unwrap();
    stranger.send_text(&text);
    assert_eq!(
        read_until_end(&mut stranger.ws, |_| {}).0,
        End::Closed(CloseCode::Size)
    );
    // Once authenticated, the same frame is only too long a message.
    let mut user = Client::connect(server.addr, json!({"token": "alpha"}));
    user.send_text(&text);
    assert!(matches!(
        user.next().frame,
        ServerFrame::Error {
            code: sparky::common::protocol::ErrorCode::TooLarge,
            ..
        }
    ));
    let mut by_query = open_with(server.addr, "/ws?token=alpha", &[]).unwrap();
    by_query.send(json!({"type": "connect", "data": {"history": [{"role": "user", "content": "y".repeat(80 * 1024)}]}}));
    by_query.expect("ready");
}

/// Sends the first fragment of a text message and never the rest.
fn start_unfinished(client: &mut Client, bytes: usize) {
    let frame = Frame::message("x".repeat(bytes), OpCode::Data(Data::Text), false);
    client.ws.send(Message::Frame(frame)).unwrap();
}

#[test]
fn unfinished_messages_are_bounded_across_connections() {
    let server = TestServer::with_config(|config| {
        config.max_pending_message_bytes = 250 * 1024;
        config.rate_limit = None;
    });
    let mut first = server.client();
    let mut second = server.client();
    start_unfinished(&mut first, 100 * 1024);
    start_unfinished(&mut second, 100 * 1024);
    wait_until("both fragments to be held", || {
        server.handle.pending_message_bytes() == 200 * 1024
    });
    // The third would take the server past its budget: that connection is closed, 1013.
    let mut third = server.client();
    start_unfinished(&mut third, 100 * 1024);
    assert_eq!(
        read_until_end(&mut third.ws, |_| {}).0,
        End::Closed(CloseCode::Again)
    );
    wait_until("the third's bytes to be given back", || {
        server.handle.pending_message_bytes() == 200 * 1024
    });
    // Finishing a message gives its bytes back; the holders are still served.
    let end = Frame::message(r#""}"#, OpCode::Data(Data::Continue), true);
    first.ws.send(Message::Frame(end)).unwrap();
    assert!(matches!(first.next().frame, ServerFrame::Error { .. }));
    assert_eq!(first.ask("after"), "You said: after");
    wait_until("the first's bytes to be given back", || {
        server.handle.pending_message_bytes() == 100 * 1024
    });
    drop(second);
    wait_until("every byte to be given back", || {
        server.handle.pending_message_bytes() == 0
    });
}

#[test]
fn the_per_ip_cap_refuses_one_more_until_one_closes() {
    let server = TestServer::with_config(|config| {
        config.max_connections_per_ip = 3;
        config.per_ip_loopback = true;
    });
    let mut clients: Vec<Client> = (0..3).map(|_| server.client()).collect();
    assert_eq!(
        status_of(server.addr, &upgrade_request("localhost", "")),
        429
    );
    assert_eq!(
        status_of(
            server.addr,
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        ),
        429
    );
    drop(clients.pop());
    let deadline = Instant::now() + WAIT;
    let mut again = loop {
        assert!(
            Instant::now() < deadline,
            "the freed place was never given back"
        );
        if let Ok(client) = open_with(server.addr, "/ws", &[]) {
            break client;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    again.send(json!({"type": "connect", "data": {}}));
    again.expect("ready");
    assert_eq!(clients[0].ask("still me"), "You said: still me");

    // By default loopback is exempt: a reverse proxy on this machine is not one client.
    let proxied = TestServer::with_config(|config| config.max_connections_per_ip = 2);
    let many: Vec<Client> = (0..5).map(|_| proxied.client()).collect();
    assert_eq!(many.len(), 5);
}

#[test]
fn metrics_and_health_figures_need_a_token_when_tokens_are_set() {
    let server = TestServer::with_config(|config| config.auth_tokens = vec!["alpha".into()]);
    assert_eq!(
        support::http(server.addr, "GET", "/metrics", None, None).0,
        401
    );
    assert_eq!(
        support::http(server.addr, "GET", "/metrics", Some("beta"), None).0,
        401
    );
    let (status, text) = support::http(server.addr, "GET", "/metrics", Some("alpha"), None);
    assert_eq!(status, 200);
    assert!(text.contains("sparky_"), "{text}");
    assert_eq!(
        support::http(server.addr, "GET", "/metrics?token=alpha", None, None).0,
        200
    );
    let (status, open) = http_json(server.addr, "GET", "/healthz", None, None);
    assert_eq!(status, 200);
    assert_eq!(open, json!({"status": "ok"}));
    let (_, full) = http_json(server.addr, "GET", "/healthz", Some("alpha"), None);
    assert!(
        full["connections"].is_u64() && full["sessions"].is_u64(),
        "{full}"
    );

    let public = TestServer::with_config(|config| {
        config.auth_tokens = vec!["alpha".into()];
        config.public_metrics = true;
    });
    assert_eq!(
        support::http(public.addr, "GET", "/metrics", None, None).0,
        200
    );
}

#[test]
fn tokens_never_reach_the_log_even_at_trace_level() {
    const TOKEN: &str = "tok-3a9f0c71e2d84b56";
    const WRONG: &str = "wrong-5e1c22b7a0f9";
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--in-memory",
            "--log-level",
            "trace",
        ])
        .args(["--auth-token", TOKEN, "--handshake-timeout", "2s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (log_sender, log_lines) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::BufReader::new(stderr).read_to_string(&mut text);
        let _ = log_sender.send(text);
    });
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first_line,
    )
    .unwrap();
    let addr: SocketAddr = first_line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap()
        .parse()
        .unwrap();

    // Every way a token travels: connect frames, the query, the header, the API, /metrics.
    let mut user = Client::connect(addr, json!({"token": TOKEN}));
    assert_eq!(user.ask("hello"), "You said: hello");
    let mut by_query = open_with(addr, &format!("/ws?token={TOKEN}"), &[]).unwrap();
    by_query.send(json!({"type": "connect", "data": {}}));
    by_query.expect("ready");
    let bearer = format!("Bearer {TOKEN}");
    let mut by_header = open_with(addr, "/ws", &[("Authorization", &bearer)]).unwrap();
    by_header.send(json!({"type": "connect", "data": {}}));
    by_header.expect("ready");
    let mut wrong = open_with(addr, &format!("/ws?token={WRONG}"), &[]).unwrap();
    wrong.send(json!({"type": "connect", "data": {"token": WRONG}}));
    assert!(matches!(wrong.next().frame, ServerFrame::Error { .. }));
    let mut stranger = open_with(addr, "/ws", &[]).unwrap();
    stranger.send_text("not json");
    assert_eq!(
        http_json(addr, "GET", "/api/conversations", Some(TOKEN), None).0,
        200
    );
    assert_eq!(
        support::http(addr, "GET", &format!("/metrics?token={TOKEN}"), None, None).0,
        200
    );
    drop((user, by_query, by_header, wrong, stranger));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let log = log_lines
        .recv_timeout(WAIT)
        .expect("the server did not exit");
    let _ = child.wait();
    assert!(log.contains("[DEBUG]"), "debug lines are logged: {log}");
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
    assert!(
        !log.contains(WRONG),
        "a presented token is in the log:\n{log}"
    );
}

#[test]
fn owners_stored_under_a_sha1_fingerprint_are_moved_to_sha256_at_start() {
    let config = sparky::Config {
        auth_tokens: vec!["alpha".into(), "beta".into()],
        ..test_config()
    };
    let id = SessionId::from_random_bytes([7; 16]);
    let old = Principal::legacy_of_token("alpha");
    {
        let (store, graph) = support::open_store(&config);
        store
            .apply(&[
                WriteOp::CreateSession {
                    id: id.clone(),
                    owner: old.as_str().to_owned(),
                    user_id: None,
                    personality: None,
                    model: None,
                },
                WriteOp::Event {
                    session: id.clone(),
                    seq: 1,
                    body: format!(
                        r#"{{"type":"user_message","data":{{"turn_id":1,"text":"from before"}},"session_id":"{}","seq":1}}"#,
                        id.as_str()
                    )
                    .into(),
                    turn: TurnMark::Opened {
                        turn_id: 1,
                        text: "from before".into(),
                        parent: 0,
                        client_id: None,
                    },
                    search_text: Some("from before".into()),
                },
            ])
            .unwrap();
        graph.remember(old.as_str(), "owls hoot at night").unwrap();
    }
    let server = TestServer::with_config(|c| *c = config.clone());
    let (status, listed) = http_json(
        server.addr,
        "GET",
        "/api/conversations",
        Some("alpha"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(listed["conversations"][0]["id"], id.as_str(), "{listed}");
    let (_, memories) = http_json(server.addr, "GET", "/api/memories", Some("alpha"), None);
    assert_eq!(
        memories["memories"][0]["content"], "owls hoot at night",
        "{memories}"
    );
    let (_, others) = http_json(server.addr, "GET", "/api/conversations", Some("beta"), None);
    assert_eq!(others["conversations"], json!([]));
    let mut resumed = Client::connect(
        server.addr,
        json!({"token": "alpha", "session_id": id.as_str(), "last_seq": 0}),
    );
    assert_eq!(resumed.session_id.as_ref(), Some(&id));
    assert_eq!(resumed.next().seq, Some(1), "the owner gets its replay");
}

#[test]
fn a_ping_flood_closes_the_connection_and_others_are_served() {
    let server = TestServer::with_config(|config| {
        config.rate_limit = Some(RateLimit {
            per_second: 20.0,
            burst: 40.0,
        })
    });
    // A few pings and a message stay under the limit.
    let mut calm = server.client();
    for _ in 0..5 {
        calm.ws.send(Message::Ping("ok".into())).unwrap();
    }
    assert_eq!(calm.ask("calm"), "You said: calm");

    let mut flood = server.client();
    let mut sent = 0;
    for _ in 0..2_000 {
        if flood.ws.write(Message::Ping("p".into())).is_err() {
            break;
        }
        sent += 1;
    }
    let _ = flood.ws.flush();
    // A Close 1008, or a reset when the server drops the socket with pings still unread.
    let (end, pongs) = read_until_end(&mut flood.ws, |_| {});
    if let End::Closed(code) = &end {
        assert_eq!(*code, CloseCode::Policy);
    }
    assert!(sent > 40, "{sent} pings sent");
    assert!(pongs < 60, "{pongs} answers");
    wait_until("the flooder to be dropped", || {
        server.handle.connection_count() == 1
    });
    assert_eq!(calm.ask("still calm"), "You said: still calm");
}

#[test]
fn a_flood_of_unauthenticated_sockets_does_not_keep_out_those_with_a_token() {
    const TOKEN: &str = "alpha-token";
    let server = TestServer::with_config(|config| {
        config.auth_tokens = vec![TOKEN.into()];
        // Forty places: four kept for authenticated connections, 36 for those waiting.
        config.max_connections = 40;
    });
    let addr = server.addr;
    // Loopback is exempt from the per-IP cap (no --per-ip-loopback): only the places bound
    // the flood. Each new socket lets the oldest waiting one go, so every upgrade succeeds.
    let flood: Vec<Client> = (0..100)
        .filter_map(|_| open_with(addr, "/ws", &[]).ok())
        .collect();

    // A token with the upgrade gets one of the kept places.
    let bearer = format!("Bearer {TOKEN}");
    let by_header = || {
        let mut client = open_with(addr, "/ws", &[("Authorization", bearer.as_str())])
            .unwrap_or_else(|status| panic!("an upgrade with a token got {status}"));
        client.send(json!({"type": "connect", "data": {}}));
        client.expect("ready");
        client
    };
    // As the page does it: the token in `connect`, which a flooding socket never sends.
    let in_connect = || {
        let mut client =
            open_with(addr, "/ws", &[]).unwrap_or_else(|status| panic!("an upgrade got {status}"));
        client.send(json!({"type": "connect", "data": {"token": TOKEN}}));
        client.expect("ready");
        client
    };
    let mut first = by_header();
    assert_eq!(first.ask("in?"), "You said: in?");
    let mut second = in_connect();
    assert_eq!(second.ask("me too?"), "You said: me too?");
    // Each flooding socket got in, pushing out an older one: the flood holds its part only.
    assert_eq!(flood.len(), 100, "a flooding socket was refused");
    wait_until("the flood to hold no more than its places", || {
        server.handle.connection_count() <= 36 + 2
    });

    // The flood goes on, refilling as fast as it can, while others keep coming in: until it
    // has pushed out its whole part three times over.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let flooding = {
        let (stop, opened) = (stop.clone(), opened.clone());
        std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            while !stop.load(Ordering::SeqCst) {
                if let Ok(client) = open_with(addr, "/ws", &[]) {
                    held.push_back(client);
                    opened.fetch_add(1, Ordering::SeqCst);
                }
                if held.len() > 50 {
                    held.pop_front();
                }
            }
        })
    };
    let mut served = vec![first, second];
    let deadline = Instant::now() + WAIT;
    let mut round = 0;
    while round < 5 || opened.load(Ordering::SeqCst) < 3 * 36 {
        assert!(Instant::now() < deadline, "the flood did not get going");
        let mut client = if round % 2 == 0 {
            in_connect()
        } else {
            by_header()
        };
        assert_eq!(client.ask("during"), "You said: during");
        served.push(client);
        // Keep the first two and the newest: the authenticated stay well within the places.
        if served.len() > 8 {
            served.remove(2);
        }
        round += 1;
    }
    stop.store(true, Ordering::SeqCst);
    flooding.join().unwrap();
    // Every authenticated connection is still served.
    for client in &mut served {
        assert_eq!(client.ask("still?"), "You said: still?");
    }
    drop(flood);
}

#[test]
fn x_forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let forwarded =
        |addr: SocketAddr, from: &str| open_with(addr, "/ws", &[("X-Forwarded-For", from)]);
    // Untrusted: the header is ignored, and every connection is loopback's.
    let plain = TestServer::with_config(|config| {
        config.max_connections_per_ip = 2;
        config.per_ip_loopback = true;
    });
    let _plain_held = [
        forwarded(plain.addr, "192.0.2.1").unwrap(),
        forwarded(plain.addr, "192.0.2.2").unwrap(),
    ];
    assert_eq!(forwarded(plain.addr, "192.0.2.3").err(), Some(429));

    // Trusted (and loopback exempt, as it is by default): each forwarded address is a client
    // of its own, capped as one.
    let proxied = TestServer::with_config(|config| {
        config.max_connections_per_ip = 2;
        config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    });
    let addr = proxied.addr;
    let mut held: Vec<Client> = [
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.9",
        "192.0.2.9",
    ]
    .into_iter()
    .map(|from| forwarded(addr, from).unwrap())
    .collect();
    assert_eq!(forwarded(addr, "192.0.2.9").err(), Some(429));
    let health = |from: &str| {
        status_of(
            addr,
            &format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {from}\r\n\r\n"),
        )
    };
    assert_eq!(health("192.0.2.9"), 429);
    assert_eq!(health("192.0.2.1"), 200);
    // Only the entry the proxy added counts: what the client wrote before it does not.
    assert_eq!(health("192.0.2.1, 192.0.2.9"), 429);
    held.push(forwarded(addr, "192.0.2.9, 192.0.2.4").unwrap());
    // The proxy's own connections, with no header, are not capped.
    for _ in 0..3 {
        held.push(open_with(addr, "/ws", &[]).unwrap());
    }
    // And the connections work as any other.
    held[0].send(json!({"type": "connect", "data": {}}));
    held[0].expect("ready");
    assert_eq!(
        held[0].ask("through the proxy"),
        "You said: through the proxy"
    );
    // A place given back is free again for that address.
    held.remove(3);
    wait_until("192.0.2.9's place to be free", || {
        health("192.0.2.9") == 200
    });
}
