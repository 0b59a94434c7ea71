//! The HTTP wire on the WebSocket port: reading a request head (and a small body, or a large
//! one as a stream: [`RequestBody`]), writing a response (its body whole, a list piece by piece,
//! or streamed from elsewhere: [`StreamBody`]), and the `101` answer that turns the connection
//! into a WebSocket. What a request may ask for is `policy.rs`'s and `routes.rs`'s business.
//! Only `server.rs` hands it a socket.
//!
//! Depends on nothing in the crate.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest request head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The buffer a response is written through.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// `Cache-Control` of everything but versioned assets.
const NO_STORE: &str = "no-store";

/// The slowest a streamed request body may arrive on average, in bytes per second: a body of `n`
/// bytes has `n / MIN_BODY_RATE` seconds beyond the idle timeout (a 25 MiB upload, 800 s), so
/// that a client that drips its bytes cannot hold a thread for ever.
pub const MIN_BODY_RATE: u64 = 32 * 1024;

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

    /// The value of cookie `name` in the `Cookie` header, if any.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.header("cookie")?
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.trim())
    }

    /// True when a header holds `token` in its comma-separated list (case-insensitive).
    pub fn header_has(&self, name: &str, token: &str) -> bool {
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
        let n = read_before(stream, &mut chunk, deadline)?;
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
    let length = content_length(&head.headers)
        .map_err(HeadError::Bad)?
        .unwrap_or(0);
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
        let want = (length - body.len()).min(chunk.len());
        let n = read_before(stream, &mut chunk[..want], deadline)?;
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(body)
}

/// Reads what the peer has sent into `chunk` (at least one byte), waiting no later than
/// `deadline`: EOF, the deadline and a socket error are all [`HeadError::Gone`].
fn read_before(
    stream: &TcpStream,
    chunk: &mut [u8],
    deadline: Instant,
) -> Result<usize, HeadError> {
    read_within(stream, chunk, deadline).map_err(HeadError::Gone)
}

/// Reads what the peer has sent into `chunk` (at least one byte), waiting no later than
/// `deadline`.
///
/// # Errors
///
/// `UnexpectedEof` when the peer closed, `TimedOut` (or `WouldBlock`) past the deadline, and
/// the socket's own.
fn read_within(stream: &TcpStream, chunk: &mut [u8], deadline: Instant) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
    let mut reader = stream;
    match reader.read(chunk)? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        n => Ok(n),
    }
}

/// How a request says where its body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// It says nothing: no body.
    None,
    /// `Content-Length`: this many bytes.
    Length(u64),
    /// A `Transfer-Encoding` (`chunked`): the end is in the coding, which [`RequestBody`] does
    /// not read.
    Encoded,
}

/// The body of a request, read as a stream straight from the socket (what was read past the
/// head first), at most as many bytes as its `Content-Length` says; never held whole.
///
/// Each read waits at most the idle timeout it was made with, and all of them together at most
/// that plus a second per [`MIN_BODY_RATE`] bytes of the declared length. A failed read (the
/// peer closed early or stalled) is remembered ([`RequestBody::failure`]), so that whoever
/// consumed the body can tell a peer's failure from its own. It is read through a shared
/// reference (`Read for &RequestBody`), as a `TcpStream` is, so that it can be lent inside a
/// request that routes take by reference.
pub struct RequestBody<'a> {
    stream: &'a TcpStream,
    /// The bytes read past the head, and how many of them have been handed out.
    ahead: &'a [u8],
    taken: Cell<usize>,
    framing: Framing,
    /// Bytes of the declared length not read yet.
    left: Cell<u64>,
    idle: Duration,
    deadline: Instant,
    failure: Cell<Option<io::ErrorKind>>,
}

impl fmt::Debug for RequestBody<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("framing", &self.framing)
            .field("left", &self.left.get())
            .field("failure", &self.failure.get())
            .finish_non_exhaustive()
    }
}

impl<'a> RequestBody<'a> {
    /// The body of the request whose head is `head`, to be read from `stream`, each read
    /// waiting at most `idle`.
    pub fn new(stream: &'a TcpStream, head: &'a RequestHead, idle: Duration) -> Self {
        let framing = if head.header("transfer-encoding").is_some() {
            Framing::Encoded
        } else {
            // `parse_head` refused a head whose length is malformed or ambiguous.
            match content_length(&head.headers) {
                Ok(Some(length)) => Framing::Length(length as u64),
                Ok(None) | Err(_) => Framing::None,
            }
        };
        let length = match framing {
            Framing::Length(length) => length,
            Framing::None | Framing::Encoded => 0,
        };
        let allowance = Duration::from_secs(length / MIN_BODY_RATE);
        RequestBody {
            stream,
            ahead: &head.rest,
            taken: Cell::new(0),
            framing,
            left: Cell::new(length),
            idle,
            deadline: Instant::now() + idle + allowance,
            failure: Cell::new(None),
        }
    }

    /// How the request says its body ends.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The kind of error a read of the body met (the peer closed before the end, stalled past
    /// the timeouts, or the socket failed), if any.
    pub fn failure(&self) -> Option<io::ErrorKind> {
        self.failure.get()
    }

    /// After the answer has been written: when the peer may still be sending (the body was not
    /// read to its end, or its end is unknown), says it will write no more and reads what
    /// comes, for at most `within`, so that the peer reads the answer rather than a reset
    /// (closing a socket with unread bytes resets the connection, and may cost the peer the
    /// answer it has not read yet).
    pub fn linger(&self, within: Duration) {
        let unread = match self.framing {
            Framing::None => false,
            Framing::Length(_) => self.left.get() > 0,
            Framing::Encoded => true,
        };
        if !unread || self.failure.get().is_some() {
            return;
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        let until = Instant::now() + within;
        let mut sink = [0u8; 16 * 1024];
        while read_within(self.stream, &mut sink, until).is_ok() {}
    }
}

impl Read for &RequestBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let body = *self;
        let left = body.left.get();
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let taken = body.taken.get();
        let n = if taken < body.ahead.len() {
            let n = want.min(body.ahead.len() - taken);
            buf[..n].copy_from_slice(&body.ahead[taken..taken + n]);
            body.taken.set(taken + n);
            n
        } else {
            let until = body.deadline.min(Instant::now() + body.idle);
            match read_within(body.stream, &mut buf[..want], until) {
                Ok(n) => n,
                Err(e) => {
                    body.failure.set(Some(e.kind()));
                    return Err(e);
                }
            }
        };
        body.left.set(left - n as u64);
        Ok(n)
    }
}

/// The body length that `headers` (lowercase names) declare, `None` when they declare none.
///
/// RFC 9112 section 6.3: a `Content-Length` that is not plain digits (`+14`, `-1`, `14 x`), or
/// lengths that disagree, leave the body's end unknowable, and a proxy in front may have read
/// it another way (request smuggling); such a request is refused. Identical lengths, in
/// repeated headers or in one comma-separated list, agree on where the body ends, so they are
/// accepted as one, as the RFC allows.
///
/// # Errors
///
/// A `400` response for a length that is not plain digits, too large to count, or two that
/// differ.
fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, Response> {
    let bad = |detail: &str| Response::text(400, "Bad Request", &format!("{detail}\n"));
    let mut length = None;
    for (_, value) in headers.iter().filter(|(name, _)| name == "content-length") {
        for part in value.split(',') {
            let digits = part.trim_matches([' ', '\t']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("malformed Content-Length"));
            }
            let value: usize = digits
                .parse()
                .map_err(|_| bad("Content-Length too large"))?;
            if length.is_some_and(|seen| seen != value) {
                return Err(bad("conflicting Content-Length values"));
            }
            length = Some(value);
        }
    }
    Ok(length)
}

/// Parses a complete head from `buffer`, or `None` when more bytes are needed. A head whose
/// `Content-Length` is ambiguous is refused here, whatever it asks for (see
/// [`content_length`]).
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
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    content_length(&headers).map_err(HeadError::Bad)?;
    Ok(Some(RequestHead {
        method: request.method.unwrap_or("GET").to_owned(),
        path: path.to_owned(),
        query,
        headers,
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
    /// The `Content-Type` (a [`Body::Stream`] brings its own).
    pub content_type: &'static str,
    /// Headers beyond the fixed ones (`Content-Type`, `Content-Length`, `Cache-Control`,
    /// `Connection`).
    pub extra_headers: &'static [(&'static str, &'static str)],
    /// The `Cache-Control` value: `no-store` but for versioned assets.
    pub cache_control: &'static str,
    /// A `Set-Cookie` made for this answer, written after `extra_headers`. Boxed, so that a
    /// response stays small to move around.
    pub set_cookie: Option<Box<SetCookie>>,
    /// The methods an `Allow` header names, for a `405`; no header when empty.
    pub allow: Box<[&'static str]>,
    /// The body.
    pub body: Body,
}

/// The value of a `Set-Cookie` header (its control characters are left out as it is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie(pub String);

/// What a response carries after its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Text, written as it is.
    Text(String),
    /// A JSON list, written piece by piece (see [`JsonList`]). Boxed, so that a response stays
    /// small to move around.
    JsonList(Box<JsonList>),
    /// Bytes that come from elsewhere (a stored file), written as they come, with the headers
    /// that describe them. Boxed, as a list is.
    Stream(Box<Streamed>),
}

/// A body whose bytes are written as they come from elsewhere, never gathered: a stored file.
pub trait StreamBody: fmt::Debug + Send + Sync {
    /// How many bytes it writes, for `Content-Length`.
    fn size(&self) -> usize;

    /// Writes exactly [`StreamBody::size`] bytes to `out`.
    ///
    /// # Errors
    ///
    /// `out`'s, or any failure to produce the bytes (the connection is then closed short of
    /// the length the head announced, so that the peer knows the body is incomplete).
    fn write_to(&self, out: &mut dyn Write) -> io::Result<()>;
}

/// A [`StreamBody`] as [`Body::Stream`] holds it, with the headers made for it. Two are equal
/// when their headers are and their bytes come from the same source.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// Its `Content-Type`, which the response's gives way to.
    pub content_type: String,
    /// Headers that describe it (a file's `Content-Disposition`), written after the
    /// response's `extra_headers`.
    pub headers: Vec<(&'static str, String)>,
    /// Where its bytes come from.
    pub source: Arc<dyn StreamBody>,
}

impl PartialEq for Streamed {
    fn eq(&self, other: &Self) -> bool {
        self.content_type == other.content_type
            && self.headers == other.headers
            && Arc::ptr_eq(&self.source, &other.source)
    }
}

impl Eq for Streamed {}

/// The JSON object `{"<key>": [item, …]}`, whose items are JSON texts already. It is written
/// piece by piece, never joined into one string, so that a large list (a page of events) costs
/// no second copy of itself; its length is known before the first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonList {
    /// The one member's name: plain ASCII that needs no escaping.
    pub key: &'static str,
    /// The list's items, each the text of one JSON value.
    pub items: Vec<String>,
}

impl Body {
    /// Its length in bytes, for `Content-Length`.
    pub fn len(&self) -> usize {
        match self {
            Body::Text(text) => text.len(),
            // `{"` key `":[` items joined by `,` `]}`
            Body::JsonList(list) => {
                let JsonList { key, items } = &**list;
                key.len()
                    + 7
                    + items.iter().map(String::len).sum::<usize>()
                    + items.len().saturating_sub(1)
            }
            Body::Stream(stream) => stream.source.size(),
        }
    }

    /// True for a body of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the body to `out`.
    fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        match self {
            Body::Text(text) => out.write_all(text.as_bytes()),
            Body::JsonList(list) => {
                let JsonList { key, items } = &**list;
                write!(out, "{{\"{key}\":[")?;
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.write_all(b",")?;
                    }
                    out.write_all(item.as_bytes())?;
                }
                out.write_all(b"]}")
            }
            Body::Stream(stream) => stream.source.write_to(out),
        }
    }
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
            set_cookie: None,
            allow: Box::new([]),
            body: Body::Text(body.to_owned()),
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
        // Small pieces (a list's commas) gather here; large ones pass straight through.
        let mut out = io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, stream);
        let (content_type, made) = match &self.body {
            Body::Stream(stream) => (
                without_controls(&stream.content_type),
                stream.headers.as_slice(),
            ),
            Body::Text(_) | Body::JsonList(_) => (Cow::Borrowed(self.content_type), &[][..]),
        };
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            content_type,
            self.body.len(),
            self.cache_control
        );
        if !self.allow.is_empty() {
            head.push_str(&format!("Allow: {}\r\n", self.allow.join(", ")));
        }
        for (name, value) in self.extra_headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(cookie) = &self.set_cookie {
            head.push_str(&format!("Set-Cookie: {}\r\n", without_controls(&cookie.0)));
        }
        for (name, value) in made {
            head.push_str(&format!("{name}: {}\r\n", without_controls(value)));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if with_body {
            self.body.write_to(&mut out)?;
        }
        out.flush()
    }
}

/// A header value with its control characters (a line break above all) left out, so that a
/// value made from what a client gave can never end the header early.
fn without_controls(value: &str) -> Cow<'_, str> {
    if value.chars().any(char::is_control) {
        Cow::Owned(value.chars().filter(|c| !c.is_control()).collect())
    } else {
        Cow::Borrowed(value)
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
impl RequestHead {
    /// The head of a request written out whole, for tests.
    ///
    /// # Panics
    ///
    /// When `text` is not a whole, well-formed head.
    pub(crate) fn parse(text: &[u8]) -> RequestHead {
        match parse_head(text) {
            Ok(Some(head)) => head,
            other => panic!("not a head: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head_and_keeps_what_follows() {
        let head = RequestHead::parse(
            b"GET /ws?token=a HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\r\n\x81\x00",
        );
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
    fn content_length_is_plain_digits_and_never_ambiguous() {
        let length = |values: &[&str]| {
            let headers: Vec<(String, String)> = values
                .iter()
                .map(|value| ("content-length".to_owned(), (*value).to_owned()))
                .collect();
            content_length(&headers).map_err(|response| response.status)
        };
        assert_eq!(length(&[]), Ok(None));
        assert_eq!(length(&["14"]), Ok(Some(14)));
        assert_eq!(length(&["014"]), Ok(Some(14)));
        assert_eq!(length(&["14", "14"]), Ok(Some(14)));
        assert_eq!(length(&["14, 14"]), Ok(Some(14)));
        for bad in [
            &["14", "15"][..],
            &["14, 15"],
            &["+14"],
            &["-1"],
            &["14 x"],
            &[" 14 x"],
            &["1_4"],
            &[""],
            &["14,"],
            &["99999999999999999999999999"],
        ] {
            assert_eq!(length(bad), Err(400), "{bad:?}");
        }
        let doubled = b"POST /api HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(parse_head(doubled), Err(HeadError::Bad(r)) if r.status == 400));
    }

    #[test]
    fn an_allow_header_is_written_only_when_there_are_methods() {
        let mut out = Vec::new();
        Response::text(200, "OK", "").write_to(&mut out).unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("\r\nAllow:"));
        let mut out = Vec::new();
        let refused = Response {
            allow: Box::new(["GET", "HEAD"]),
            ..Response::text(405, "Method Not Allowed", "")
        };
        refused.write_to(&mut out).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("\r\nAllow: GET, HEAD\r\n")
        );
    }

    #[test]
    fn a_json_list_is_written_whole_with_its_length_known_first() {
        for items in [
            vec![],
            vec!["1".to_owned()],
            vec![r#"{"a":[1,2]}"#.into(), "\"x\"".into()],
        ] {
            let response = Response {
                body: Body::JsonList(Box::new(JsonList {
                    key: "events",
                    items: items.clone(),
                })),
                ..Response::text(200, "OK", "")
            };
            let mut out = Vec::new();
            response.write_to(&mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let expected = serde_json::json!({ "events": items
                .iter()
                .map(|item| serde_json::from_str::<serde_json::Value>(item).unwrap())
                .collect::<Vec<_>>() });
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(body).unwrap(),
                expected
            );
            assert!(
                head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
                "{head}"
            );
            assert_eq!(response.body.len(), body.len());
        }
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query_and_debug_hides_them() {
        let head = RequestHead::parse(
            b"GET /ws?a=1&token=s%2Fcret+x HTTP/1.1\r\nHost: x\r\nCookie: c=hidden\r\n\r\n",
        );
        assert_eq!(head.token().as_deref(), Some("s/cret x"));
        let bearer =
            RequestHead::parse(b"GET /ws?token=q HTTP/1.1\r\nAuthorization: bearer  hdr \r\n\r\n");
        assert_eq!(bearer.token().as_deref(), Some("hdr"));
        let shown = format!("{head:?} {bearer:?}");
        for secret in ["cret", "hidden", "hdr", "token=q"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("a=1&token=%5Bredacted%5D"), "{shown}");
        assert_eq!(RequestHead::parse(b"GET / HTTP/1.1\r\n\r\n").token(), None);
    }

    /// A connected pair of loopback sockets: (the server's side, the client's).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener.accept().unwrap().0, client)
    }

    #[test]
    fn a_request_body_streams_what_came_with_the_head_then_the_socket_up_to_its_length() {
        let (server, mut client) = pair();
        let head = RequestHead::parse(b"POST /api/files HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
        let body = RequestBody::new(&server, &head, Duration::from_secs(5));
        assert_eq!(body.framing(), Framing::Length(10));
        client.write_all(b"defghijEXTRA").unwrap();
        let mut read = Vec::new();
        (&body).read_to_end(&mut read).unwrap();
        assert_eq!(read, b"abcdefghij");
        assert_eq!(body.failure(), None);
        // Read to its end: nothing to linger for.
        let started = Instant::now();
        body.linger(Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_body_that_ends_early_or_stalls_is_a_failure_remembered() {
        let (server, mut client) = pair();
        let head = RequestHead::parse(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n");
        let body = RequestBody::new(&server, &head, Duration::from_millis(200));
        client.write_all(b"short").unwrap();
        let mut read = Vec::new();
        let e = (&body).read_to_end(&mut read).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            "{e:?}"
        );
        assert_eq!(read, b"short");
        assert_eq!(body.failure(), Some(e.kind()));
        drop(client);
        let (server, client) = pair();
        let body = RequestBody::new(&server, &head, Duration::from_secs(5));
        drop(client);
        let e = (&body).read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_body_without_a_length_is_empty_and_a_transfer_coding_is_told_apart() {
        let (server, _client) = pair();
        let none = RequestHead::parse(b"POST / HTTP/1.1\r\n\r\nignored");
        let body = RequestBody::new(&server, &none, Duration::from_secs(5));
        assert_eq!(body.framing(), Framing::None);
        assert_eq!((&body).read(&mut [0; 8]).unwrap(), 0);
        let chunked = RequestHead::parse(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc",
        );
        let body = RequestBody::new(&server, &chunked, Duration::from_secs(5));
        assert_eq!(body.framing(), Framing::Encoded);
        assert_eq!((&body).read(&mut [0; 8]).unwrap(), 0);
    }

    #[test]
    fn lingering_reads_what_the_peer_still_sends_after_the_answer() {
        let (server, mut client) = pair();
        let head = RequestHead::parse(b"POST / HTTP/1.1\r\nContent-Length: 4000000\r\n\r\n");
        let body = RequestBody::new(&server, &head, Duration::from_secs(5));
        client
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sender = std::thread::spawn(move || {
            // More than the socket buffers hold: it is written only when the server reads.
            let sent = client.write_all(&vec![b'x'; 4_000_000]);
            let mut answer = String::new();
            client.read_to_string(&mut answer).unwrap();
            (sent.is_ok(), answer)
        });
        Response::text(413, "Content Too Large", "too large\n")
            .write_to(&mut &server)
            .unwrap();
        body.linger(Duration::from_secs(5));
        let (sent, answer) = sender.join().unwrap();
        assert!(sent);
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    }

    #[derive(Debug)]
    struct Pieces(Vec<&'static [u8]>);

    impl StreamBody for Pieces {
        fn size(&self) -> usize {
            self.0.iter().map(|piece| piece.len()).sum()
        }

        fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
            self.0.iter().try_for_each(|piece| out.write_all(piece))
        }
    }

    #[test]
    fn a_streamed_body_is_written_as_it_comes_and_made_headers_lose_their_controls() {
        let response = Response {
            content_type: "text/plain",
            body: Body::Stream(Box::new(Streamed {
                content_type: "image/png\r\nX-Evil: 1".to_owned(),
                headers: vec![(
                    "Content-Disposition",
                    "attachment; filename=\"a\r\nb\"".into(),
                )],
                source: Arc::new(Pieces(vec![b"ab", b"", b"cde"])),
            })),
            ..Response::text(200, "OK", "")
        };
        let mut out = Vec::new();
        response.write_to(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, "abcde");
        assert!(head.contains("\r\nContent-Length: 5\r\n"), "{head}");
        assert!(
            head.contains("\r\nContent-Type: image/pngX-Evil: 1\r\n"),
            "{head}"
        );
        assert!(head.ends_with("\r\nContent-Disposition: attachment; filename=\"ab\""));
        let mut bare = Vec::new();
        response.write(&mut bare, false).unwrap();
        assert!(String::from_utf8(bare).unwrap().ends_with("\r\n\r\n"));
    }

    #[test]
    fn answers_the_rfc_6455_example_key() {
        let head = RequestHead::parse(
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
}
