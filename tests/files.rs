//! Files over HTTP (PROTOCOL.md section 10, `/api/files`), over real sockets, on the store the
//! run names (SQLite, or PostgreSQL with `SPARKY_TEST_STORE=postgres`): upload, list, read and
//! delete with the bytes checked one for one; identical bytes kept once; the size limit and the
//! quota; hostile files (a 0-byte file, a name with `../` and control characters, an SVG and an
//! HTML file with script, a zip named `.pdf`, a body that lies about its length); another
//! principal's files; and the chat going on over WebSocket all along.

mod support;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{Client, Rng, TestServer, WAIT, http_json};

const ALICE: &str = "alice-token";
const BOB: &str = "bob-token";
const MIB: usize = 1024 * 1024;

/// A 1×1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// An HTTP answer: its status, headers (names lowercase) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    /// Every value of the header `name`.
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The one value of the header `name`.
    fn header(&self, name: &str) -> &str {
        match self.all(name).as_slice() {
            [one] => one,
            other => panic!("{name}: {other:?} in {:?}", self.headers),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads a whole answer (the server closes after each).
fn read_answer(stream: &mut TcpStream) -> Answer {
    let (status, headers, body) = support::read_answer(stream);
    Answer {
        status,
        headers,
        body,
    }
}

/// The head of a request, with `Host`, the token and `extra` headers.
fn head(method: &str, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Sends a request with `body` (and its `Content-Length`) and reads the answer. A server that
/// answers before it has read the whole body may stop reading: the rest is then not sent.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let length = body.len().to_string();
    let mut headers = extra.to_vec();
    headers.push(("Content-Length", &length));
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let _ = stream
        .write_all(head(method, path, token, &headers).as_bytes())
        .and_then(|()| stream.write_all(body));
    read_answer(&mut stream)
}

/// `POST /api/files?name=…` of `bytes` declared as `content_type`.
fn upload(
    server: &TestServer,
    token: Option<&str>,
    name: &str,
    content_type: &str,
    bytes: &[u8],
) -> Answer {
    let path = format!("/api/files?name={}", encode(name));
    request(
        server.addr,
        "POST",
        &path,
        token,
        &[("Content-Type", content_type)],
        bytes,
    )
}

/// An upload that must be stored: its JSON answer.
fn stored(
    server: &TestServer,
    token: Option<&str>,
    name: &str,
    content_type: &str,
    bytes: &[u8],
) -> Value {
    let answer = upload(server, token, name, content_type, bytes);
    assert_eq!(
        answer.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    let file = answer.json();
    assert_eq!(file["size"], bytes.len() as u64);
    assert_eq!(file["sha256"], sha256(bytes));
    file
}

fn get(server: &TestServer, token: Option<&str>, id: &Value) -> Answer {
    let path = format!("/api/files/{}", id.as_str().unwrap());
    request(server.addr, "GET", &path, token, &[], b"")
}

fn list(server: &TestServer, token: Option<&str>) -> Vec<Value> {
    let (status, body) = http_json(server.addr, "GET", "/api/files", token, None);
    assert_eq!(status, 200, "{body}");
    body["files"].as_array().unwrap().clone()
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.below(256) as u8).collect()
}

/// A server that requires a token (Alice's or Bob's), adjusted by `adjust`.
fn server_with(adjust: impl FnOnce(&mut sparky::Config)) -> TestServer {
    TestServer::with_config(|config| {
        config.auth_tokens = vec![ALICE.into(), BOB.into()];
        adjust(config);
    })
}

/// The chat still answers over WebSocket, for `token`.
fn chat_answers(server: &TestServer, token: &str) {
    let mut client = Client::connect(server.addr, json!({"token": token}));
    assert_eq!(client.ask("still there?"), "You said: still there?");
}

/// A file is served safely whatever it is: the headers every file gets.
fn assert_served_safely(answer: &Answer) {
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-content-type-options"), "nosniff");
    assert!(
        answer
            .header("content-security-policy")
            .split(';')
            .any(|directive| directive.trim() == "sandbox"),
        "{:?}",
        answer.headers
    );
    assert_eq!(answer.header("cache-control"), "private");
}

#[test]
fn a_multi_mib_file_goes_up_and_comes_back_byte_for_byte_then_is_deleted() {
    let server = server_with(|_| {});
    // Not a whole number of the store's pieces.
    let bytes = random_bytes(0x5eed, 3 * MIB + 12_345);
    let file = stored(
        &server,
        Some(ALICE),
        "data.bin",
        "application/octet-stream",
        &bytes,
    );
    let id = file["id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(file["name"], "data.bin");

    let listed = list(&server, Some(ALICE));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["name"], "data.bin");
    assert_eq!(listed[0]["size"], bytes.len() as u64);
    assert_eq!(listed[0]["content_type"], file["content_type"]);
    let at = listed[0]["created_at"].as_str().unwrap();
    assert!(at.ends_with('Z') && at.contains('T'), "{at}");

    let answer = get(&server, Some(ALICE), &file["id"]);
    assert_served_safely(&answer);
    assert_eq!(answer.header("content-length"), bytes.len().to_string());
    assert_eq!(answer.header("content-type"), file["content_type"]);
    assert!(answer.body == bytes, "the bytes differ");
    assert!(
        answer
            .header("content-disposition")
            .starts_with("attachment; filename=\"data.bin\""),
        "{:?}",
        answer.headers
    );

    // HEAD: the same head, no body.
    let path = format!("/api/files/{id}");
    let bare = request(server.addr, "HEAD", &path, Some(ALICE), &[], b"");
    assert_served_safely(&bare);
    assert_eq!(bare.header("content-length"), bytes.len().to_string());
    assert!(bare.body.is_empty());

    let deleted = request(server.addr, "DELETE", &path, Some(ALICE), &[], b"");
    assert_eq!(deleted.status, 204);
    assert_eq!(get(&server, Some(ALICE), &file["id"]).status, 404);
    let again = request(server.addr, "DELETE", &path, Some(ALICE), &[], b"");
    assert_eq!(again.status, 404);
    assert!(list(&server, Some(ALICE)).is_empty());
    let metrics = server.handle.metrics();
    assert_eq!(metrics.file_uploads.load(Ordering::Relaxed), 1);
    assert_eq!(
        metrics.file_upload_bytes.load(Ordering::Relaxed),
        bytes.len() as u64
    );
    chat_answers(&server, ALICE);
}

#[test]
fn identical_bytes_are_kept_once_and_count_once_against_the_quota() {
    // Room for one copy of 700 KiB, not two.
    let server = server_with(|config| config.file_quota_bytes = Some(MIB as u64));
    let bytes = random_bytes(7, 700 * 1024);
    let first = stored(
        &server,
        Some(ALICE),
        "a.bin",
        "application/octet-stream",
        &bytes,
    );
    let second = stored(
        &server,
        Some(ALICE),
        "b.bin",
        "application/octet-stream",
        &bytes,
    );
    assert_eq!(first["sha256"], second["sha256"]);
    // However the second is named, its bytes are the first's, and each id serves them.
    for file in [&first, &second] {
        assert!(get(&server, Some(ALICE), &file["id"]).body == bytes);
    }
    if first["id"] != second["id"] {
        // Two files over one blob: deleting one keeps the other's bytes.
        let path = format!("/api/files/{}", first["id"].as_str().unwrap());
        assert_eq!(
            request(server.addr, "DELETE", &path, Some(ALICE), &[], b"").status,
            204
        );
        assert!(get(&server, Some(ALICE), &second["id"]).body == bytes);
    }
}

#[test]
fn past_the_quota_is_507_nothing_is_kept_and_others_upload_on() {
    let server = server_with(|config| config.file_quota_bytes = Some(MIB as u64));
    let first = random_bytes(1, 700 * 1024);
    stored(
        &server,
        Some(ALICE),
        "first.bin",
        "application/octet-stream",
        &first,
    );
    let second = random_bytes(2, 400 * 1024);
    let refused = upload(
        &server,
        Some(ALICE),
        "second.bin",
        "application/octet-stream",
        &second,
    );
    assert_eq!(
        refused.status,
        507,
        "{:?}",
        String::from_utf8_lossy(&refused.body)
    );
    let error = refused.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("quota"), "{error}");
    let kept = list(&server, Some(ALICE));
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["name"], "first.bin");
    // Alice still has room for a small file, and Bob has a quota of his own.
    stored(
        &server,
        Some(ALICE),
        "small.txt",
        "text/plain",
        b"a few words\n",
    );
    stored(
        &server,
        Some(BOB),
        "second.bin",
        "application/octet-stream",
        &second,
    );
    chat_answers(&server, ALICE);
    chat_answers(&server, BOB);
}

#[test]
fn one_byte_past_the_size_limit_is_413_at_once_even_when_the_body_never_comes() {
    // A server that waited for the body would wait a minute: far past every wait here.
    let server = server_with(|config| {
        config.max_upload_bytes = MIB as u64;
        config.handshake_timeout = Duration::from_secs(60);
    });
    let exact = random_bytes(3, MIB);
    stored(
        &server,
        Some(ALICE),
        "exact.bin",
        "application/octet-stream",
        &exact,
    );

    let over = random_bytes(4, MIB + 1);
    let refused = upload(
        &server,
        Some(ALICE),
        "over.bin",
        "application/octet-stream",
        &over,
    );
    assert_eq!(
        refused.status,
        413,
        "{:?}",
        String::from_utf8_lossy(&refused.body)
    );
    assert!(refused.json()["error"].as_str().unwrap().contains("1 MiB"));

    // A length past the limit with (almost) no body behind it: refused on the length alone.
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let length = (MIB + 1).to_string();
    let lying = head(
        "POST",
        "/api/files?name=lie.bin",
        Some(ALICE),
        &[("Content-Length", &length)],
    );
    stream.write_all(lying.as_bytes()).unwrap();
    stream.write_all(b"only this").unwrap();
    let answer = read_answer(&mut stream);
    assert_eq!(answer.status, 413);
    assert!(started.elapsed() < WAIT, "{:?}", started.elapsed());

    let names: Vec<Value> = list(&server, Some(ALICE))
        .iter()
        .map(|file| file["name"].clone())
        .collect();
    assert_eq!(names, [json!("exact.bin")]);
    let metrics = server.handle.metrics();
    assert_eq!(metrics.file_uploads.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.file_uploads_refused.load(Ordering::Relaxed), 2);
    chat_answers(&server, ALICE);
}

#[test]
fn a_body_is_read_as_far_as_its_length_and_one_without_a_length_is_refused() {
    let server = server_with(|config| config.handshake_timeout = Duration::from_secs(1));
    // Bytes past the length are not the file's.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let short = head(
        "POST",
        "/api/files?name=short.txt",
        Some(ALICE),
        &[("Content-Length", "5"), ("Content-Type", "text/plain")],
    );
    stream
        .write_all(format!("{short}helloEXTRA BYTES").as_bytes())
        .unwrap();
    let answer = read_answer(&mut stream);
    assert_eq!(answer.status, 201);
    let file = answer.json();
    assert_eq!(file["size"], 5);
    assert_eq!(get(&server, Some(ALICE), &file["id"]).body, b"hello");

    // No length, or a transfer coding: 411, and nothing is read.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let bare = head("POST", "/api/files?name=x", Some(ALICE), &[]);
    stream
        .write_all(format!("{bare}some bytes").as_bytes())
        .unwrap();
    let answer = read_answer(&mut stream);
    assert_eq!(answer.status, 411);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let chunked = head(
        "POST",
        "/api/files?name=x",
        Some(ALICE),
        &[("Transfer-Encoding", "chunked")],
    );
    stream
        .write_all(format!("{chunked}5\r\nhello\r\n0\r\n\r\n").as_bytes())
        .unwrap();
    let answer = read_answer(&mut stream);
    assert_eq!(answer.status, 411);
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("Content-Length")
    );

    // A body that ends before its length (the client closes its side): 400; one that stalls:
    // 408. Neither is kept.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let promise = head(
        "POST",
        "/api/files?name=cut.bin",
        Some(ALICE),
        &[("Content-Length", "100000")],
    );
    stream.write_all(promise.as_bytes()).unwrap();
    stream.write_all(&[7; 1000]).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_answer(&mut stream).status, 400);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.write_all(promise.as_bytes()).unwrap();
    stream.write_all(&[7; 1000]).unwrap();
    assert_eq!(read_answer(&mut stream).status, 408);
    let names: Vec<Value> = list(&server, Some(ALICE))
        .iter()
        .map(|file| file["name"].clone())
        .collect();
    assert_eq!(names, [json!("short.txt")]);
}

#[test]
fn an_empty_file_is_a_file() {
    let server = server_with(|_| {});
    let file = stored(&server, Some(ALICE), "empty.txt", "text/plain", b"");
    assert_eq!(file["size"], 0);
    assert!(
        file["content_type"]
            .as_str()
            .unwrap()
            .starts_with("text/plain"),
        "{file}"
    );
    let answer = get(&server, Some(ALICE), &file["id"]);
    assert_served_safely(&answer);
    assert_eq!(answer.header("content-length"), "0");
    assert!(answer.body.is_empty());
    // Declared as anything, no bytes are still no bytes.
    let declared = stored(&server, Some(ALICE), "nothing.png", "image/png", b"");
    assert_ne!(declared["content_type"], "image/png");
    chat_answers(&server, ALICE);
}

#[test]
fn a_name_with_a_path_and_control_characters_is_made_safe_and_so_is_its_header() {
    let server = server_with(|_| {});
    let hostile = "../../etc/pass\u{1}wd\r\nX-Evil: 1\".txt";
    let file = stored(&server, Some(ALICE), hostile, "text/plain", b"root:x:0:0\n");
    let name = file["name"].as_str().unwrap();
    assert_eq!(name, "passwdX-Evil: 1.txt");
    let answer = get(&server, Some(ALICE), &file["id"]);
    assert_served_safely(&answer);
    assert!(answer.all("x-evil").is_empty(), "{:?}", answer.headers);
    assert_eq!(
        answer.header("content-disposition"),
        "attachment; filename=\"passwdX-Evil: 1.txt\"; filename*=UTF-8''passwdX-Evil%3A%201.txt"
    );
    // A name beyond ASCII comes back whole in `filename*`.
    let file = stored(
        &server,
        Some(ALICE),
        "résumé 2024.txt",
        "text/plain",
        b"cv\n",
    );
    assert_eq!(file["name"], "résumé 2024.txt");
    let answer = get(&server, Some(ALICE), &file["id"]);
    assert_eq!(
        answer.header("content-disposition"),
        "attachment; filename=\"r_sum_ 2024.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%202024.txt"
    );
    // Only a path is not a name.
    let file = stored(&server, Some(ALICE), "../..", "text/plain", b"x");
    assert_eq!(file["name"], "file");
}

#[test]
fn svg_and_html_with_script_are_attachments_never_inline_and_a_png_is_inline() {
    let server = server_with(|_| {});
    let svg = br#"<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">
  <script>fetch("/api/conversations").then(r => r.text()).then(alert)</script>
  <rect width="10" height="10"/>
</svg>
"#;
    let html =
        b"<!DOCTYPE html>\n<html><body><script>alert(document.cookie)</script></body></html>\n";
    let cases: [(&str, &str, &[u8]); 4] = [
        ("drawing.svg", "image/svg+xml", svg),
        ("page.html", "text/html", html),
        // An HTML file that says it is a PNG: the bytes decide.
        ("photo.png", "image/png", html),
        ("photo.jpg", "image/jpeg", svg),
    ];
    for (name, declared, bytes) in cases {
        let file = stored(&server, Some(ALICE), name, declared, bytes);
        let stored_type = file["content_type"].as_str().unwrap().to_owned();
        assert!(
            !stored_type.starts_with("image/png") && !stored_type.starts_with("image/jpeg"),
            "{name}: {stored_type}"
        );
        let answer = get(&server, Some(ALICE), &file["id"]);
        assert_served_safely(&answer);
        assert_eq!(answer.header("content-type"), stored_type, "{name}");
        let disposition = answer.header("content-disposition");
        assert!(
            disposition.starts_with("attachment;"),
            "{name}: {disposition}"
        );
        assert!(answer.body == bytes);
    }

    let png = stored(
        &server,
        Some(ALICE),
        "pixel.bin",
        "application/octet-stream",
        PNG,
    );
    assert_eq!(png["content_type"], "image/png");
    let answer = get(&server, Some(ALICE), &png["id"]);
    assert_served_safely(&answer);
    assert_eq!(answer.header("content-type"), "image/png");
    assert_eq!(
        answer.header("content-disposition"),
        "inline; filename=\"pixel.bin\"; filename*=UTF-8''pixel.bin"
    );
    assert!(answer.body == PNG);
}

#[test]
fn a_zip_named_pdf_is_stored_as_a_zip() {
    let server = server_with(|_| {});
    let file = stored(
        &server,
        Some(ALICE),
        "report.pdf",
        "application/pdf",
        &empty_zip(),
    );
    assert_eq!(file["content_type"], "application/zip");
    assert_eq!(file["name"], "report.pdf");
    let answer = get(&server, Some(ALICE), &file["id"]);
    assert_served_safely(&answer);
    assert_eq!(answer.header("content-type"), "application/zip");
    assert!(
        answer
            .header("content-disposition")
            .starts_with("attachment;")
    );
}

/// A zip archive holding one empty file, `a.txt`, stored.
fn empty_zip() -> Vec<u8> {
    let mut zip = Vec::new();
    // Local file header: signature, version, flags, method, time, date, CRC-32, sizes, name
    // length, extra length, name.
    zip.extend_from_slice(b"PK\x03\x04");
    zip.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    zip.extend_from_slice(&[0; 12]);
    zip.extend_from_slice(&[5, 0, 0, 0]);
    zip.extend_from_slice(b"a.txt");
    let directory = zip.len() as u8;
    // Central directory entry.
    zip.extend_from_slice(b"PK\x01\x02");
    zip.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    zip.extend_from_slice(&[0; 12]);
    zip.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    zip.extend_from_slice(b"a.txt");
    let size = zip.len() as u8 - directory;
    // End of central directory.
    zip.extend_from_slice(b"PK\x05\x06");
    zip.extend_from_slice(&[
        0, 0, 0, 0, 1, 0, 1, 0, size, 0, 0, 0, directory, 0, 0, 0, 0, 0,
    ]);
    zip
}

#[test]
fn another_principals_files_are_not_found_and_unauthenticated_is_401() {
    let server = server_with(|_| {});
    let file = stored(
        &server,
        Some(ALICE),
        "secret.txt",
        "text/plain",
        b"alice's\n",
    );
    let path = format!("/api/files/{}", file["id"].as_str().unwrap());
    for method in ["GET", "HEAD", "DELETE"] {
        let answer = request(server.addr, method, &path, Some(BOB), &[], b"");
        assert_eq!(answer.status, 404, "{method}");
        let answer = request(server.addr, method, &path, None, &[], b"");
        assert_eq!(answer.status, 401, "{method}");
    }
    assert!(list(&server, Some(BOB)).is_empty());
    assert_eq!(list(&server, Some(ALICE)).len(), 1);
    // Alice's conversation's files are not Bob's to list.
    let mut chat = Client::connect(server.addr, json!({"token": ALICE}));
    chat.ask("hello");
    let conversation = chat.session_id.clone().unwrap();
    let path = format!("/api/files?conversation={}", conversation.as_str());
    let (status, body) = http_json(server.addr, "GET", &path, Some(ALICE), None);
    assert_eq!((status, &body["files"]), (200, &json!([])), "{body}");
    assert_eq!(http_json(server.addr, "GET", &path, Some(BOB), None).0, 404);
    let (status, _) = http_json(
        server.addr,
        "GET",
        "/api/files?conversation=x",
        Some(ALICE),
        None,
    );
    assert_eq!(status, 404);
    // An upload without a token is refused before its body is read.
    let refused = upload(
        &server,
        None,
        "x.bin",
        "application/octet-stream",
        &[0; 300_000],
    );
    assert_eq!(refused.status, 401);
    assert!(list(&server, Some(ALICE)).len() == 1);
    // Not an id at all.
    let answer = request(
        server.addr,
        "GET",
        "/api/files/..%2F..",
        Some(ALICE),
        &[],
        b"",
    );
    assert_eq!(answer.status, 404);
    // A method the path does not take.
    let answer = request(server.addr, "PUT", "/api/files", Some(ALICE), &[], b"");
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), "GET, HEAD, POST");
}

#[test]
fn the_chat_goes_on_while_an_upload_is_under_way() {
    let server = server_with(|_| {});
    let bytes = random_bytes(11, 2 * MIB);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let length = bytes.len().to_string();
    let started = head(
        "POST",
        "/api/files?name=slow.bin",
        Some(ALICE),
        &[("Content-Length", &length)],
    );
    stream.write_all(started.as_bytes()).unwrap();
    stream.write_all(&bytes[..MIB]).unwrap();
    // Half of it is in: the store holds an upload open, and the chat answers meanwhile, for
    // the uploader and for others.
    chat_answers(&server, ALICE);
    chat_answers(&server, BOB);
    let small = stored(
        &server,
        Some(BOB),
        "other.txt",
        "text/plain",
        b"meanwhile\n",
    );
    assert_eq!(small["size"], 10);
    stream.write_all(&bytes[MIB..]).unwrap();
    let answer = read_answer(&mut stream);
    assert_eq!(answer.status, 201);
    let file = answer.json();
    assert!(get(&server, Some(ALICE), &file["id"]).body == bytes);
    chat_answers(&server, ALICE);
}
