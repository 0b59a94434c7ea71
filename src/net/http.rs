//! Plain HTTP on the WebSocket port: reading a request head (and a small body), the `Host` and
//! `Origin` checks, routing (upgrade, the API, the chat page and its `/assets/`, `/healthz`,
//! `/metrics`, 404), the `101` handshake answer, and writing responses. Only `server.rs` hands it
//! a socket.
//!
//! Depends on: `common::metrics`, `conversation::session`, `net::assets`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::http::Uri;
use tungstenite::http::uri::Authority;

use crate::common::metrics::Metrics;
use crate::conversation::session::SessionManager;
use crate::net::assets;

/// The largest request head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Headers of the chat page and its assets. The policy lets the page run only the scripts and
/// style sheets served from `/assets/` (no inline script or style, no `eval`), fetch only from
/// this server and open WebSockets; it loads no image but `data:` ones (answers never fetch
/// images), no frame, no plugin, and no other site may frame it.
const CHAT_PAGE_HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src data:; \
         connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
];

/// `Cache-Control` of everything but versioned assets.
const NO_STORE: &str = "no-store";

/// `Cache-Control` of an asset asked for by its versioned URL: its content never changes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `Cache-Control` of an asset asked for without its current version: keep, but check first.
const REVALIDATE: &str = "no-cache";

/// Request headers whose values are secrets: never shown in `Debug` output (and so never in a
/// log line).
const SECRET_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// The request line and headers of one HTTP request, and any bytes read past them.
///
/// Its `Debug` form hides credentials: the values of `Authorization` and `Cookie`, and the
/// `token` parameter of the query.
#[derive(Clone, PartialEq, Eq)]
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

    /// The token the request presents: `Authorization: Bearer …`, else the `token` parameter of
    /// the query (percent-decoded). `None` when it presents none.
    pub fn token(&self) -> Option<String> {
        if let Some((scheme, token)) = self
            .header("authorization")
            .and_then(|value| value.trim().split_once(' '))
            && scheme.eq_ignore_ascii_case("bearer")
        {
            return Some(token.trim().to_owned());
        }
        form_urlencoded::parse(self.query.as_deref()?.as_bytes())
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned())
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

impl fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let secret = SECRET_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s));
                (name.as_str(), if secret { "[redacted]" } else { value })
            })
            .collect();
        f.debug_struct("RequestHead")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query.as_deref().map(redacted_query))
            .field("headers", &headers)
            .field("rest", &format_args!("{} bytes", self.rest.len()))
            .finish()
    }
}

/// A query string with the value of every `token` parameter replaced by `[redacted]`.
pub fn redacted_query(query: &str) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name == "token" {
            out.append_pair(&name, "[redacted]");
        } else {
            out.append_pair(&name, &value);
        }
    }
    out.finish()
}

/// The `Host` values a server answers to (PROTOCOL.md section 10): loopback names and addresses
/// with any port, the address it is bound to, and the names the operator allowed. Checking it on
/// every request is what stops DNS rebinding: a page whose name was made to point at loopback
/// still sends its own name as `Host`.
#[derive(Clone, Debug)]
pub struct HostPolicy {
    /// The address the listener is bound to.
    bound: IpAddr,
    /// Names (lowercase, without a port) allowed with `--allowed-host`.
    names: Vec<String>,
}

impl HostPolicy {
    /// The policy of a server bound to `bound` that also answers to `allowed` names (a port
    /// given with a name is ignored: any port is allowed).
    pub fn new(bound: SocketAddr, allowed: &[String]) -> Self {
        let names = allowed
            .iter()
            .filter_map(|name| {
                let host = split_authority(name.trim()).map(|(host, _)| host);
                if host.is_none() {
                    log::warn!("server: --allowed-host {name:?} is not a host name; ignored");
                }
                host
            })
            .collect();
        HostPolicy {
            bound: bound.ip(),
            names,
        }
    }

    /// Checks the request's `Host`.
    ///
    /// # Errors
    ///
    /// The answer to send instead: `400` when there is no `Host` or more than one, `421` when
    /// it names a host the server does not answer to (including malformed values such as
    /// `null` or `localhost.`).
    pub fn check(&self, head: &RequestHead) -> Result<(), Response> {
        let mut hosts = head
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("host"));
        let (Some((_, value)), None) = (hosts.next(), hosts.next()) else {
            return Err(Response::text(
                400,
                "Bad Request",
                "a request needs exactly one Host header\n",
            ));
        };
        match split_authority(value.trim()) {
            Some((host, _)) if self.allows(&host) => Ok(()),
            _ => Err(Response::text(
                421,
                "Misdirected Request",
                "this server does not answer to that Host; see --allowed-host\n",
            )),
        }
    }

    /// True for a host (lowercase, without port) the server answers to.
    fn allows(&self, host: &str) -> bool {
        if host == "localhost" || self.names.iter().any(|name| name == host) {
            return true;
        }
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            // An address literal cannot be rebound, so any address of this machine is fine:
            // with an unspecified bind address that is any address at all.
            Ok(ip) => {
                let ip = ip.to_canonical();
                ip.is_loopback() || ip == self.bound.to_canonical() || self.bound.is_unspecified()
            }
            Err(_) => false,
        }
    }
}

/// Cross-site WebSocket hijacking guard: a browser always sends `Origin` on a WebSocket
/// upgrade, so a page from elsewhere is refused unless its origin is the server's own (scheme
/// `http`, and the host and port of the `Host` header) or listed in `allowed` (scheme, host and
/// port compared, default ports filled in). Clients that send no `Origin` (terminal clients,
/// other servers) are not browsers and pass.
pub fn origin_allowed(head: &RequestHead, allowed: &[String]) -> bool {
    let Some(origin) = head.header("origin") else {
        return true;
    };
    let Some(origin) = parse_origin(origin.trim()) else {
        return false;
    };
    if allowed
        .iter()
        .filter_map(|entry| parse_origin(entry.trim().trim_end_matches('/')))
        .any(|entry| entry == origin)
    {
        return true;
    }
    // The server speaks plain HTTP: its own pages have an `http` origin. Behind a TLS proxy the
    // page's `https` origin is listed with `--allowed-origin`.
    let own = head
        .header("host")
        .and_then(|host| split_authority(host.trim()))
        .map(|(host, port)| Origin {
            scheme: "http".into(),
            host,
            port: port.unwrap_or(80),
        });
    own.is_some_and(|own| own == origin)
}

/// True when `text` is an origin `origin_allowed` can compare: `http` or `https`, a host, and
/// at most a port.
pub fn is_origin(text: &str) -> bool {
    parse_origin(text.trim().trim_end_matches('/')).is_some()
}

/// An origin: scheme, host and port, lowercase, the port filled in from the scheme.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

/// Parses `scheme://host[:port]`; `None` for anything else (`null`, a path, an unknown scheme).
fn parse_origin(text: &str) -> Option<Origin> {
    let uri: Uri = text.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return None;
    }
    let (host, port) = split_authority(uri.authority()?.as_str())?;
    Some(Origin {
        scheme,
        host,
        port: port.unwrap_or(default_port),
    })
}

/// Splits `host[:port]` (an IPv6 host in brackets) into the lowercase host and the port.
/// `None` when it is not a valid authority, carries user information, or has a port that is
/// not a number.
fn split_authority(text: &str) -> Option<(String, Option<u16>)> {
    let authority: Authority = text.parse().ok()?;
    let whole = authority.as_str();
    let host = authority.host();
    if whole.contains('@') || host.is_empty() || !whole.starts_with(host) {
        return None;
    }
    let port = match &whole[host.len()..] {
        "" => None,
        rest => Some(rest.strip_prefix(':')?.parse::<u16>().ok()?),
    };
    Some((host.to_ascii_lowercase(), port))
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
    /// The `Cache-Control` value: `no-store` but for versioned assets.
    pub cache_control: &'static str,
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
            cache_control: NO_STORE,
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
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            self.cache_control
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
    /// True when the request may see the server's figures: no token is required, or it
    /// presented a valid one. Otherwise `/healthz` shows only the status, and `/metrics`
    /// answers `401` unless `public_metrics`.
    pub authorized: bool,
    /// Serve `/metrics` to anyone (`--public-metrics`).
    pub public_metrics: bool,
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

/// The one dispatcher for requests on the port. `HEAD` is routed as `GET` (the caller leaves
/// the body out).
pub fn route(head: &RequestHead, server: &ServerView<'_>) -> Route {
    let get = head.method == "GET" || head.method == "HEAD";
    match head.path.as_str() {
        "/ws" | "/ws/chat" if head.method == "GET" && head.header_has("upgrade", "websocket") => {
            Route::WebSocket
        }
        // PROTOCOL.md section 10: anything that is not one of its four answers is a 404, so a
        // plain GET of the WebSocket path is too (the body says what it wanted).
        "/ws" | "/ws/chat" => Route::Http(Response::text(
            404,
            "Not Found",
            "this path speaks WebSocket only: send an Upgrade request\n",
        )),
        "/" | "/index.html" if get => Route::Http(chat_page()),
        path if get && path.starts_with("/assets/") => Route::Http(asset(path, head)),
        path if path == "/api" || path.starts_with("/api/") => Route::Api,
        "/healthz" if get => Route::Http(health(server)),
        "/metrics" if get && !(server.authorized || server.public_metrics) => {
            Route::Http(Response {
                extra_headers: &[("WWW-Authenticate", "Bearer")],
                ..Response::text(
                    401,
                    "Unauthorized",
                    "a valid token is required (Authorization: Bearer, or ?token=)\n",
                )
            })
        }
        "/metrics" if get => Route::Http(Response {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            ..Response::text(200, "OK", &metrics_text(server))
        }),
        _ => Route::Http(Response::text(404, "Not Found", "not found\n")),
    }
}

/// The server's counters, then the store's: whether it reaches its database, and its pool.
fn metrics_text(server: &ServerView<'_>) -> String {
    let mut text = server.metrics.render(server.sessions.len());
    let store = server.sessions.store().status();
    let mut samples = vec![(
        "sparky_store_up",
        "gauge",
        "1 while the store reaches its database and takes writes.",
        u64::from(store.reachable && !server.sessions.journal().failing()),
    )];
    if let Some(pool) = store.pool {
        samples.extend([
            (
                "sparky_store_pool_size",
                "gauge",
                "Connections the store's pool may open (--store-pool).",
                pool.size,
            ),
            (
                "sparky_store_pool_open",
                "gauge",
                "Pool connections open, in use or idle.",
                pool.open,
            ),
            (
                "sparky_store_pool_in_use",
                "gauge",
                "Pool connections lent out.",
                pool.in_use,
            ),
            (
                "sparky_store_pool_waiting",
                "gauge",
                "Threads waiting for a pool connection.",
                pool.waiting,
            ),
            (
                "sparky_store_pool_checkouts_total",
                "counter",
                "Pool connections lent.",
                pool.checkouts_total,
            ),
            (
                "sparky_store_pool_waits_total",
                "counter",
                "Checkouts that waited for a connection to come back.",
                pool.waits_total,
            ),
            (
                "sparky_store_pool_timeouts_total",
                "counter",
                "Checkouts that gave up waiting.",
                pool.timeouts_total,
            ),
            (
                "sparky_store_connects_total",
                "counter",
                "Database connections opened, the writer's included.",
                pool.connects_total,
            ),
            (
                "sparky_store_connect_failures_total",
                "counter",
                "Attempts to connect to the database that failed.",
                pool.connect_failures_total,
            ),
        ]);
    }
    text.push_str(&Metrics::render_samples(&samples));
    text
}

/// The chat page, with the headers of [`CHAT_PAGE_HEADERS`].
fn chat_page() -> Response {
    Response {
        content_type: "text/html; charset=utf-8",
        extra_headers: CHAT_PAGE_HEADERS,
        ..Response::text(200, "OK", assets::page())
    }
}

/// A file of `/assets/`, kept for a year when asked for by its current versioned URL.
fn asset(path: &str, head: &RequestHead) -> Response {
    let Some(asset) = assets::find(path) else {
        return Response::text(404, "Not Found", "not found\n");
    };
    let versioned = head.query.as_deref().is_some_and(|query| {
        form_urlencoded::parse(query.as_bytes())
            .any(|(name, value)| name == "v" && value == asset.version)
    });
    Response {
        content_type: asset.content_type,
        extra_headers: CHAT_PAGE_HEADERS,
        cache_control: if versioned { IMMUTABLE } else { REVALIDATE },
        ..Response::text(200, "OK", asset.body)
    }
}

fn health(server: &ServerView<'_>) -> Response {
    let engine = server.sessions.engine();
    let store = server.sessions.store().status();
    let degraded = server.sessions.journal().failing() || !store.reachable;
    let status = if server.shutting_down {
        "shutting_down"
    } else if degraded {
        "degraded"
    } else {
        "ok"
    };
    // Without a token only the status: counts and versions help whoever probes the server.
    let model = engine.model.health();
    let body = if !server.authorized {
        json!({ "status": status })
    } else {
        json!({
            "status": status,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": server.started.elapsed().as_secs(),
            "connections": Metrics::get(&server.metrics.connections_open),
            "sessions": server.sessions.len(),
            "model": {
                "name": engine.model.name(),
                "reachable": model.reachable,
                "last_error": model.last_error,
            },
            "tools_loaded": engine.tools.len(),
            "store": if degraded { "failing" } else { "ok" },
            "store_backend": store.backend,
        })
    };
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

    fn with_host(host: &str) -> RequestHead {
        parse(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
    }

    #[test]
    fn the_host_check_allows_loopback_the_bound_address_and_named_hosts_only() {
        let policy = HostPolicy::new(
            "192.168.1.5:8000".parse().unwrap(),
            &["Chat.Example.com".into(), "app.localhost:443".into()],
        );
        for host in [
            "localhost",
            "LOCALHOST:8000",
            "127.0.0.1:1",
            "127.8.9.10",
            "[::1]:8000",
            "[::ffff:127.0.0.1]",
            "192.168.1.5",
            "192.168.1.5:8000",
            "chat.example.com:8443",
            "app.localhost",
        ] {
            assert!(policy.check(&with_host(host)).is_ok(), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8000",
            "null",
            "localhost.",
            "localhost.:8000",
            "sub.localhost",
            "localhost:http",
            "localhost:",
            "user@localhost",
            "127.1",
            "192.168.1.6",
            "[::2]",
            "",
        ] {
            assert_eq!(
                policy.check(&with_host(host)).map_err(|r| r.status),
                Err(421),
                "{host}"
            );
        }
        let none = parse(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(policy.check(&none).map_err(|r| r.status), Err(400));
        let two = parse(b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n");
        assert_eq!(policy.check(&two).map_err(|r| r.status), Err(400));
        let anywhere = HostPolicy::new("0.0.0.0:8000".parse().unwrap(), &[]);
        assert!(anywhere.check(&with_host("10.1.2.3:8000")).is_ok());
        assert!(anywhere.check(&with_host("example.org")).is_err());
    }

    #[test]
    fn the_origin_check_compares_scheme_host_and_port() {
        let upgrade = |host: &str, origin: &str| {
            parse(
                format!("GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n\r\n").as_bytes(),
            )
        };
        let allowed = ["https://chat.example.com/".to_owned()];
        let cases = [
            ("localhost:8000", "http://localhost:8000", true),
            ("localhost:8000", "http://LOCALHOST:8000", true),
            ("localhost", "http://localhost:80", true),
            ("localhost:8000", "http://localhost:8001", false),
            ("localhost:8000", "https://localhost:8000", false),
            ("localhost:8000", "http://127.0.0.1:8000", false),
            ("localhost:8000", "null", false),
            ("localhost:8000", "http://localhost:8000/path", false),
            ("localhost:8000", "https://chat.example.com", true),
            ("localhost:8000", "https://chat.example.com:443", true),
            ("localhost:8000", "http://chat.example.com", false),
            ("localhost:8000", "https://chat.example.com:8443", false),
        ];
        for (host, origin, expected) in cases {
            assert_eq!(
                origin_allowed(&upgrade(host, origin), &allowed),
                expected,
                "{host} {origin}"
            );
        }
        let no_origin = with_host("localhost");
        assert!(origin_allowed(&no_origin, &[]));
        assert!(is_origin("https://chat.example.com/") && !is_origin("chat.example.com"));
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query_and_debug_hides_them() {
        let head =
            parse(b"GET /ws?a=1&token=s%2Fcret+x HTTP/1.1\r\nHost: x\r\nCookie: c=hidden\r\n\r\n");
        assert_eq!(head.token().as_deref(), Some("s/cret x"));
        let bearer = parse(b"GET /ws?token=q HTTP/1.1\r\nAuthorization: bearer  hdr \r\n\r\n");
        assert_eq!(bearer.token().as_deref(), Some("hdr"));
        let shown = format!("{head:?} {bearer:?}");
        for secret in ["cret", "hidden", "hdr", "token=q"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("a=1&token=%5Bredacted%5D"), "{shown}");
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n").token(), None);
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
    fn assets_are_kept_for_a_year_only_under_their_current_version() {
        let app = assets::find("/assets/app.js").unwrap();
        let versioned = parse(format!("GET {} HTTP/1.1\r\n\r\n", app.url()).as_bytes());
        let answer = asset(&versioned.path, &versioned);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.cache_control, IMMUTABLE);
        assert_eq!(answer.content_type, "text/javascript; charset=utf-8");
        assert_eq!(answer.extra_headers, CHAT_PAGE_HEADERS);
        let stale = parse(b"GET /assets/app.js?v=0000 HTTP/1.1\r\n\r\n");
        assert_eq!(asset(&stale.path, &stale).cache_control, REVALIDATE);
        let missing = parse(b"GET /assets/nope.js HTTP/1.1\r\n\r\n");
        assert_eq!(asset(&missing.path, &missing).status, 404);
    }

    #[test]
    fn writes_extra_headers_after_the_fixed_ones() {
        let page = chat_page();
        let mut out = Vec::new();
        page.write_to(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"));
        assert!(
            head.contains("\r\nContent-Security-Policy: default-src 'none'; script-src 'self'; ")
        );
        assert!(head.ends_with("\r\nReferrer-Policy: no-referrer"), "{head}");
        assert!(head.contains("\r\nCache-Control: no-store\r\n"));
        assert_eq!(body, assets::page());
        assert!(body.contains("<title>Sparky</title>"));
    }
}
