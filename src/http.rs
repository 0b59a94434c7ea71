//! Plain HTTP on the WebSocket port: reading a request head (and a small body), routing it
//! (upgrade, the API, the chat page, `/healthz`, `/metrics`, 404), the `101` handshake answer,
//! and writing responses. Depends on `session` and `metrics`; only `server.rs` hands it a
//! socket.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::metrics::Metrics;
use crate::session::SessionManager;

/// The largest request head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The chat page: one self-contained file (HTML, CSS and JavaScript inline), bundled into the
/// binary so that the server needs nothing beside it.
const CHAT_PAGE: &str = include_str!("page.html");

/// Headers of the chat page. The policy lets the page run only its own inline script and style
/// and open WebSockets; it loads nothing from anywhere else, and no other site may frame it.
const CHAT_PAGE_HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
];

/// The request line and headers of one HTTP request, and any bytes read past them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query string, without `?`.
    pub query: Option<String>,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// Bytes that followed the head (the start of the first WebSocket frame, if any).
    pub rest: Vec<u8>,
}

impl RequestHead {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// True when a header holds `token` in its comma-separated list (case-insensitive).
    fn header_has(&self, name: &str, token: &str) -> bool {
        self.header(name).is_some_and(|value| {
            value
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    }
}

/// Why a request head could not be read.
#[derive(Debug)]
pub enum HeadError {
    /// The peer closed or stalled before a whole head arrived; there is no one to answer.
    Gone(io::Error),
    /// The head is malformed or too large; answer with this status.
    Bad(Response),
}

/// Reads one request head, giving the peer until `deadline` for all of it (a slow-header
/// client cannot hold the thread longer).
///
/// # Errors
///
/// [`HeadError::Gone`] on EOF, timeout or a socket error; [`HeadError::Bad`] for a malformed or
/// oversized head.
pub fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<RequestHead, HeadError> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Gone(io::ErrorKind::TimedOut.into()));
        }
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(HeadError::Gone)?;
        let n = stream.read(&mut chunk).map_err(HeadError::Gone)?;
        if n == 0 {
            return Err(HeadError::Gone(io::ErrorKind::UnexpectedEof.into()));
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buffer)? {
            return Ok(head);
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(HeadError::Bad(Response::text(
                431,
                "Request Header Fields Too Large",
                "request head too large\n",
            )));
        }
    }
}

/// Reads the body that follows `head` (by its `Content-Length`), giving the peer until
/// `deadline`. A request without one has an empty body.
///
/// # Errors
///
/// [`HeadError::Gone`] on EOF, timeout or a socket error; [`HeadError::Bad`] with `413` for a
/// body over `limit` bytes, `400` for a malformed length.
pub fn read_body(
    stream: &mut TcpStream,
    head: &RequestHead,
    limit: usize,
    deadline: Instant,
) -> Result<Vec<u8>, HeadError> {
    let length = match head.header("content-length") {
        None => 0,
        Some(text) => text.trim().parse::<usize>().map_err(|_| {
            HeadError::Bad(Response::text(
                400,
                "Bad Request",
                "malformed Content-Length\n",
            ))
        })?,
    };
    if length > limit {
        return Err(HeadError::Bad(Response::text(
            413,
            "Content Too Large",
            &format!("the body may be {limit} bytes at most\n"),
        )));
    }
    let mut body = head.rest.clone();
    body.truncate(length);
    let mut chunk = [0u8; 4096];
    while body.len() < length {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Gone(io::ErrorKind::TimedOut.into()));
        }
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(HeadError::Gone)?;
        let want = (length - body.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..want]).map_err(HeadError::Gone)?;
        if n == 0 {
            return Err(HeadError::Gone(io::ErrorKind::UnexpectedEof.into()));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(body)
}

/// Parses a complete head from `buffer`, or `None` when more bytes are needed.
fn parse_head(buffer: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let bad =
        |detail: String| HeadError::Bad(Response::text(400, "Bad Request", &format!("{detail}\n")));
    let length = match request.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(format!("malformed request: {e}"))),
    };
    let target = request.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    Ok(Some(RequestHead {
        method: request.method.unwrap_or("GET").to_owned(),
        path: path.to_owned(),
        query,
        headers: request
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        rest: buffer[length..].to_vec(),
    }))
}

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: &'static str,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// Headers beyond the fixed ones (`Content-Type`, `Content-Length`, `Cache-Control`,
    /// `Connection`).
    pub extra_headers: &'static [(&'static str, &'static str)],
    /// The body.
    pub body: String,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra_headers: &[],
            body: body.to_owned(),
        }
    }

    /// Writes the response and asks the peer to close.
    ///
    /// # Errors
    ///
    /// The socket's write error.
    pub fn write_to(&self, stream: &mut impl Write) -> io::Result<()> {
        self.write(stream, true)
    }

    /// Writes the response, without its body for a `HEAD` request (the headers still say how
    /// long it is).
    ///
    /// # Errors
    ///
    /// The socket's write error.
    pub fn write(&self, stream: &mut impl Write, with_body: bool) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        for (name, value) in self.extra_headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        if with_body {
            stream.write_all(self.body.as_bytes())?;
        }
        stream.flush()
    }
}

/// What the server is doing, for `/healthz` and `/metrics`.
#[derive(Debug)]
pub struct ServerView<'a> {
    /// The session map.
    pub sessions: &'a SessionManager,
    /// The counters.
    pub metrics: &'a Metrics,
    /// When the server started.
    pub started: Instant,
    /// True once shutdown has begun.
    pub shutting_down: bool,
}

/// Where a request goes.
#[derive(Debug)]
pub enum Route {
    /// A WebSocket upgrade to the chat endpoint.
    WebSocket,
    /// A request for the conversation API (`/api/…`): the server reads its body and
    /// authenticates it, then `api.rs` answers it.
    Api,
    /// A plain HTTP answer.
    Http(Response),
}

/// The one dispatcher for requests on the port.
pub fn route(head: &RequestHead, server: &ServerView<'_>) -> Route {
    let get = head.method == "GET";
    match head.path.as_str() {
        "/ws" | "/ws/chat" if get && head.header_has("upgrade", "websocket") => Route::WebSocket,
        // PROTOCOL.md section 10: anything that is not one of its four answers is a 404, so a
        // plain GET of the WebSocket path is too (the body says what it wanted).
        "/ws" | "/ws/chat" => Route::Http(Response::text(
            404,
            "Not Found",
            "this path speaks WebSocket only: send an Upgrade request\n",
        )),
        "/" | "/index.html" if get => Route::Http(Response {
            content_type: "text/html; charset=utf-8",
            extra_headers: CHAT_PAGE_HEADERS,
            ..Response::text(200, "OK", CHAT_PAGE)
        }),
        path if path == "/api" || path.starts_with("/api/") => Route::Api,
        "/healthz" if get => Route::Http(health(server)),
        "/metrics" if get => Route::Http(Response {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            ..Response::text(200, "OK", &server.metrics.render(server.sessions.len()))
        }),
        _ => Route::Http(Response::text(404, "Not Found", "not found\n")),
    }
}

fn health(server: &ServerView<'_>) -> Response {
    let engine = server.sessions.engine();
    let degraded = server.sessions.journal().failing();
    let status = if server.shutting_down {
        "shutting_down"
    } else if degraded {
        "degraded"
    } else {
        "ok"
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": server.started.elapsed().as_secs(),
        "connections": Metrics::get(&server.metrics.connections_open),
        "sessions": server.sessions.len(),
        "model": engine.model.name(),
        "tools_loaded": engine.tools.len(),
    });
    let (status, reason) = if server.shutting_down || degraded {
        (503, "Service Unavailable")
    } else {
        (200, "OK")
    };
    Response {
        content_type: "application/json",
        ..Response::text(status, reason, &body.to_string())
    }
}

/// The `101 Switching Protocols` answer to a valid upgrade request (RFC 6455 section 4.2).
///
/// # Errors
///
/// A `400` response when the request lacks a key or asks for a version other than 13.
pub fn upgrade_response(head: &RequestHead) -> Result<String, Response> {
    if !head.header_has("connection", "upgrade") {
        return Err(Response::text(
            400,
            "Bad Request",
            "missing Connection: Upgrade\n",
        ));
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Response::text(
            400,
            "Bad Request",
            "only WebSocket version 13 is supported\n",
        ));
    }
    let Some(key) = head.header("sec-websocket-key") else {
        return Err(Response::text(
            400,
            "Bad Request",
            "missing Sec-WebSocket-Key\n",
        ));
    };
    let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> RequestHead {
        match parse_head(text) {
            Ok(Some(head)) => head,
            other => panic!("not a head: {other:?}"),
        }
    }

    #[test]
    fn parses_a_head_and_keeps_what_follows() {
        let head =
            parse(b"GET /ws?token=a HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\r\n\x81\x00");
        assert_eq!(head.path, "/ws");
        assert_eq!(head.query.as_deref(), Some("token=a"));
        assert_eq!(head.header("UPGRADE"), Some("WebSocket"));
        assert_eq!(head.rest, b"\x81\x00");
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nHost"), Ok(None)));
        assert!(matches!(
            parse_head(b"\x00\x01 nonsense\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
    }

    #[test]
    fn answers_the_rfc_6455_example_key() {
        let head = parse(
            b"GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        );
        let answer = upgrade_response(&head).unwrap();
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        let old = RequestHead {
            headers: vec![("connection".into(), "upgrade".into())],
            ..head
        };
        assert_eq!(upgrade_response(&old).unwrap_err().status, 400);
    }

    #[test]
    fn writes_extra_headers_after_the_fixed_ones() {
        let page = Response {
            content_type: "text/html; charset=utf-8",
            extra_headers: CHAT_PAGE_HEADERS,
            ..Response::text(200, "OK", CHAT_PAGE)
        };
        let mut out = Vec::new();
        page.write_to(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"));
        assert!(head.contains("\r\nContent-Security-Policy: default-src 'self'; "));
        assert!(head.ends_with("\r\nReferrer-Policy: no-referrer"), "{head}");
        assert_eq!(body, CHAT_PAGE);
        assert!(CHAT_PAGE.contains("<title>Sparky</title>"));
    }
}
