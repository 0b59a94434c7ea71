//! Plain HTTP on the WebSocket port: the chat page and its policy, `/healthz`, `/metrics`,
//! 404, 405 with `Allow`, ambiguous `Content-Length`s, and upgrade mistakes.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{TestServer, WAIT};

/// Sends a raw request and returns the status code and body.
fn request(addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
}

#[test]
fn the_root_serves_the_chat_page_with_a_content_security_policy() {
    let server = TestServer::start();
    for path in ["/", "/index.html"] {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains("\r\ncontent-type: text/html; charset=utf-8\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\ncontent-security-policy: default-src 'none'; script-src 'self'; style-src 'self';"),
            "{head}"
        );
        assert!(head.contains("\r\ncache-control: no-store\r\n"), "{head}");
        assert!(body.contains("<title>Sparky</title>"), "{body}");
        assert!(!body.contains("<script>"), "an inline script: {body}");
    }
}

#[test]
fn the_page_assets_are_served_with_the_policy_and_cached_by_version() {
    let server = TestServer::start();
    let (_, page) = get(server.addr, "/");
    for asset in sparky::net::assets::all() {
        let url = asset.url();
        // Every asset is the chat page's, but a share link's page script (share.js), which
        // only that page names (served at /s/{id}; tests/shares.rs).
        let named_by = if asset.name == "share.js" {
            sparky::net::assets::share_page()
        } else {
            page.as_str()
        };
        assert!(named_by.contains(&url), "the page does not name {url}");
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        write!(stream, "GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200 "), "{head}");
        assert!(
            head.contains("\r\ncache-control: public, max-age=31536000, immutable\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ncontent-security-policy: default-src 'none';"));
        assert!(head.contains("\r\nx-content-type-options: nosniff\r\n"));
        assert_eq!(body, asset.body);
    }
    let (status, _) = get(server.addr, "/assets/nothing.js");
    assert_eq!(status, 404);
    // HEAD is answered like GET, without the body.
    let (status, body) = support::http(server.addr, "HEAD", "/assets/app.css", None, None);
    assert_eq!((status, body.as_str()), (200, ""));
}

#[test]
fn healthz_answers_json() {
    let server = TestServer::start();
    let _client = server.client();
    let (status, body) = get(server.addr, "/healthz");
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["sessions"], 1);
    assert_eq!(health["connections"], 1);
    assert_eq!(health["model"]["name"], "offline");
    assert_eq!(health["model"]["reachable"], true);
}

#[test]
fn metrics_answer_prometheus_text() {
    let server = TestServer::start();
    let mut client = server.client();
    client.ask("count me");
    client.ask("/calc 2+2");
    client.send_text("not json");
    client.expect("error");
    let (status, body) = get(server.addr, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "sparky_connections_open 1",
        "sparky_sessions 1",
        "sparky_turns_started_total 2",
        "sparky_turns_ended_total{outcome=\"message\"} 2",
        "sparky_turn_duration_seconds_count 2",
        "sparky_tool_calls_total{tool=\"calculator\",status=\"success\"} 1",
        "sparky_model_requests_total 3",
        "sparky_frames_rejected_by_code_total{code=\"invalid_json\"} 1",
        "sparky_events_total 8",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "{line} missing from:\n{body}"
        );
    }
}

#[test]
fn other_paths_and_a_plain_get_of_the_chat_path_are_404() {
    let server = TestServer::start();
    assert_eq!(get(server.addr, "/nope").0, 404);
    assert_eq!(get(server.addr, "/ws").0, 404);
    let wrong_version = "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                         Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    assert_eq!(request(server.addr, wrong_version).0, 400);
    assert_eq!(request(server.addr, "NONSENSE\r\n\r\n").0, 400);
}

#[test]
fn a_silent_connection_is_dropped_after_the_handshake_timeout() {
    let server =
        TestServer::with_config(|config| config.handshake_timeout = Duration::from_millis(200));
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let mut buffer = [0u8; 16];
    // The server closes the socket: read returns 0 (EOF) well before WAIT.
    assert_eq!(silent.read(&mut buffer).unwrap(), 0);
    // And it still serves others.
    assert_eq!(get(server.addr, "/healthz").0, 200);
}

#[test]
fn the_upgrade_past_the_connection_limit_gets_503() {
    let server = TestServer::with_config(|config| config.max_connections = 1);
    let _first = server.client();
    let upgrade = "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    assert_eq!(request(server.addr, upgrade).0, 503);
    drop(_first);
    support::wait_until("the slot to free", || server.handle.connection_count() == 0);
    let mut again = server.client();
    assert_eq!(again.ask("room now"), "You said: room now");
}

#[test]
fn a_header_sent_a_byte_at_a_time_is_cut_off_at_the_handshake_deadline() {
    let server =
        TestServer::with_config(|config| config.handshake_timeout = Duration::from_millis(300));
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let started = std::time::Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed = false;
    for byte in head {
        // A write after the server closed fails (or the read below sees EOF).
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        let mut buffer = [0u8; 64];
        match slow.read(&mut buffer) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("the server answered a request it should have dropped"),
            Err(_) => {} // Nothing yet: the 20 ms read timeout paces the bytes.
        }
    }
    assert!(closed, "the server waited for the whole slow header");
    assert!(started.elapsed() < WAIT);
    assert_eq!(get(server.addr, "/healthz").0, 200);
}

/// Sends a raw request and returns the whole answer, head and body, read until the server
/// closes the connection.
fn raw_answer(addr: SocketAddr, raw: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The status and the `Allow` header of an answer.
fn status_and_allow(response: &str) -> (u16, Option<String>) {
    let (head, _) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let allow = head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("allow")
            .then(|| value.trim().to_owned())
    });
    (status, allow)
}

#[test]
fn a_known_path_asked_with_another_method_gets_405_with_allow() {
    let server = TestServer::start();
    for (method, path) in [
        ("POST", "/"),
        ("PUT", "/index.html"),
        ("DELETE", "/healthz"),
        ("POST", "/metrics"),
        ("POST", "/ws"),
        ("PATCH", "/ws/chat"),
        ("POST", "/assets/app.js"),
    ] {
        let answer = raw_answer(
            server.addr,
            &format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"),
        );
        assert_eq!(
            status_and_allow(&answer),
            (405, Some("GET, HEAD".to_owned())),
            "{method} {path}: {answer}"
        );
    }
    // A path no route has is still a 404, whatever the method, and without `Allow`.
    let answer = raw_answer(
        server.addr,
        "POST /nope HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status_and_allow(&answer), (404, None), "{answer}");
    // A `HEAD` of the page is still answered like `GET`.
    assert_eq!(support::http(server.addr, "HEAD", "/", None, None).0, 200);
}

#[test]
fn ambiguous_content_lengths_get_400_and_the_connection_is_closed() {
    let server = TestServer::start();
    // RFC 9112 section 6.3: two lengths that disagree, or one that is not plain digits, leave
    // the body's end unknowable; a proxy in front might have read it another way.
    for lengths in [
        "Content-Length: 2\r\nContent-Length: 3",
        "Content-Length: 2, 3",
        "Content-Length: +2",
        "Content-Length: -1",
        "Content-Length: 2 x",
        "Content-Length: 0x2",
        "Content-Length: ",
        "Content-Length: 99999999999999999999999999",
    ] {
        for path in ["/api/conversations", "/"] {
            let answer = raw_answer(
                server.addr,
                &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{lengths}\r\n\r\n{{}}"),
            );
            // `raw_answer` read to the end: the server closed the connection after its answer.
            assert_eq!(
                status_and_allow(&answer).0,
                400,
                "{lengths:?} on {path}: {answer}"
            );
        }
    }
    // Identical lengths, repeated or listed, agree on where the body ends: accepted.
    for lengths in [
        "Content-Length: 0\r\nContent-Length: 0",
        "Content-Length: 0, 0",
    ] {
        let answer = raw_answer(
            server.addr,
            &format!("GET /api/conversations HTTP/1.1\r\nHost: localhost\r\n{lengths}\r\n\r\n"),
        );
        assert_eq!(status_and_allow(&answer).0, 200, "{lengths:?}: {answer}");
    }
}

#[test]
fn the_page_and_its_assets_may_connect_only_to_their_own_origin() {
    let server = TestServer::start();
    let urls: Vec<String> = std::iter::once("/".to_owned())
        .chain(sparky::net::assets::all().iter().map(|asset| asset.url()))
        .collect();
    for url in urls {
        let answer = raw_answer(
            server.addr,
            &format!("GET {url} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        );
        let (head, _) = answer.split_once("\r\n\r\n").unwrap();
        let policy = head
            .split("\r\n")
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-security-policy")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("{url}: no policy in {head}"));
        let connect: Vec<&str> = policy
            .split(';')
            .map(str::trim)
            .filter(|directive| directive.starts_with("connect-src"))
            .collect();
        // CSP Level 3: 'self' covers ws: and wss: on the page's own host and port.
        assert_eq!(connect, ["connect-src 'self'"], "{url}: {policy}");
    }
}
