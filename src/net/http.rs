//! The HTTP wire on the WebSocket port: reading a request head (and a small body), writing a
//! response, and the `101` answer that turns the connection into a WebSocket. What a request
//! may ask for is `policy.rs`'s and `routes.rs`'s business. Only `server.rs` hands it a socket.
//!
//! Depends on nothing in the crate.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The largest request head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The buffer a response is written through.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// `Cache-Control` of everything but versioned assets.
const NO_STORE: &str = "no-store";

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
    stream: &mut TcpStream,
    chunk: &mut [u8],
    deadline: Instant,
) -> Result<usize, HeadError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HeadError::Gone(io::ErrorKind::TimedOut.into()));
    }
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(HeadError::Gone)?;
    match stream.read(chunk).map_err(HeadError::Gone)? {
        0 => Err(HeadError::Gone(io::ErrorKind::UnexpectedEof.into())),
        n => Ok(n),
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
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// Headers beyond the fixed ones (`Content-Type`, `Content-Length`, `Cache-Control`,
    /// `Connection`).
    pub extra_headers: &'static [(&'static str, &'static str)],
    /// The `Cache-Control` value: `no-store` but for versioned assets.
    pub cache_control: &'static str,
    /// The methods an `Allow` header names, for a `405`; no header when empty.
    pub allow: Vec<&'static str>,
    /// The body.
    pub body: Body,
}

/// What a response carries after its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Text, written as it is.
    Text(String),
    /// A JSON list, written piece by piece (see [`JsonList`]). Boxed, so that a response stays
    /// small to move around.
    JsonList(Box<JsonList>),
}

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
            allow: Vec::new(),
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
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            self.cache_control
        );
        if !self.allow.is_empty() {
            head.push_str(&format!("Allow: {}\r\n", self.allow.join(", ")));
        }
        for (name, value) in self.extra_headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if with_body {
            self.body.write_to(&mut out)?;
        }
        out.flush()
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
            allow: vec!["GET", "HEAD"],
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
