//! The terminal client's side of the network: the server's address from its URL, the
//! WebSocket (opened, written, closed), one GET of the conversation API, a file's upload
//! (`POST /api/files`), and the `client_id`s that make a resent frame run once.
//!
//! Depends on: `common::protocol`.

use std::fs::File;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tungstenite::{Message, WebSocket};

use crate::common::protocol::{Attachment, ClientFrame, EditData, MessageData, RegenerateData};

/// Bound on TCP connect, the handshake, each write and each API request, so that a dead server
/// cannot hang the client.
pub const NETWORK_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes of an API answer that are read.
const MAX_API_BYTES: u64 = 4 << 20;

/// Bound on each write of an upload's body and on the wait for the server's answer after it,
/// so that a stalled server cannot hang the client (the whole upload may take longer).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the server is: its host and port, from the `ws://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// The WebSocket URL as given.
    pub url: String,
    /// The host, without brackets.
    pub host: String,
    /// The port (80 when the URL names none).
    pub port: u16,
}

impl Server {
    /// Checks the URL.
    ///
    /// # Errors
    ///
    /// Why the URL cannot be used: not `ws://` (`wss://` needs TLS, which this client does not
    /// have), or no host.
    pub fn parse(url: &str) -> Result<Server, String> {
        let uri: tungstenite::http::Uri = url.parse().map_err(|e| format!("{e}"))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => {
                return Err("wss:// needs TLS, which this client does not have".to_owned());
            }
            _ => return Err("the URL must start with ws://".to_owned()),
        }
        let host = uri.host().ok_or("the URL has no host")?;
        // An IPv6 host comes bracketed, as in the URL; address resolution wants it bare.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Server {
            url: url.to_owned(),
            host: host.to_owned(),
            port: uri.port_u16().unwrap_or(80),
        })
    }

    /// Opens the TCP connection and does the WebSocket handshake; reads then wait at most
    /// `poll` each.
    ///
    /// # Errors
    ///
    /// Why the server could not be reached, or refused the upgrade.
    pub fn open(&self, poll: Duration) -> Result<WebSocket<TcpStream>, String> {
        let stream = self.connect_tcp()?;
        // The handshake reads with the long timeout; only then does polling start.
        let socket = |e: io::Error| format!("socket: {e}");
        stream
            .set_read_timeout(Some(NETWORK_TIMEOUT))
            .map_err(socket)?;
        stream
            .set_write_timeout(Some(NETWORK_TIMEOUT))
            .map_err(socket)?;
        let (ws, _response) = tungstenite::client(self.url.as_str(), stream)
            .map_err(|e| format!("handshake: {e}"))?;
        ws.get_ref().set_read_timeout(Some(poll)).map_err(socket)?;
        Ok(ws)
    }

    /// One GET of the conversation API (`path`, e.g. `/api/conversations`), as JSON, with
    /// `token` as its bearer credential.
    ///
    /// # Errors
    ///
    /// Why there is no answer: unreachable, a status other than 200, or not JSON.
    pub fn api(&self, path: &str, token: Option<&str>) -> Result<Value, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(NETWORK_TIMEOUT))
            .user_agent(USER_AGENT)
            .build()
            .into();
        let mut request = agent.get(&self.http_url(path));
        if let Some(token) = token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let mut response = request.call().map_err(|e| e.to_string())?;
        let status = response.status();
        if status != 200 {
            return Err(format!("the server answered {status}"));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_API_BYTES)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&body).map_err(|e| format!("not JSON: {e}"))
    }

    /// Uploads the file at `path` (`POST /api/files?name=…`, its bytes streamed as the body,
    /// with `token` as the bearer credential) and returns the stored file.
    ///
    /// # Errors
    ///
    /// Why it is not stored, in words: the file cannot be read, the server cannot be reached,
    /// the file is larger than the server accepts (413), the caller's storage is full (507), or
    /// another refusal with the server's own words.
    pub fn upload(&self, path: &Path, token: Option<&str>) -> Result<Attachment, String> {
        let shown = path.display();
        let file = File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let metadata = file
            .metadata()
            .map_err(|e| format!("cannot read {shown}: {e}"))?;
        if !metadata.is_file() {
            return Err(format!("{shown} is not a file"));
        }
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".to_owned());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(NETWORK_TIMEOUT))
            .timeout_per_write(Some(UPLOAD_TIMEOUT))
            .timeout_recv_response(Some(UPLOAD_TIMEOUT))
            .timeout_recv_body(Some(NETWORK_TIMEOUT))
            .user_agent(USER_AGENT)
            .build()
            .into();
        let query: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
        let mut request = agent
            .post(&self.http_url(&format!("/api/files?name={query}")))
            .header("Content-Type", declared_type(&name));
        if let Some(token) = token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let mut response = request.send(&file).map_err(|e| {
            format!("the upload failed: {e} (a server stops an upload larger than it accepts)")
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_API_BYTES)
            .read_to_string()
            .unwrap_or_default();
        if status == 200 || status == 201 {
            return serde_json::from_str(&body).map_err(|e| format!("bad answer: {e}"));
        }
        let words = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|value| value["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.trim().chars().take(200).collect());
        let why = match status {
            401 => "the server wants a token (--token)",
            413 => "the file is larger than the server accepts",
            507 => "your storage on the server is full; delete files you no longer need",
            _ => "the server refused it",
        };
        Err(format!("{why} ({status}: {words})"))
    }

    /// The HTTP URL of `path` on the server.
    fn http_url(&self, path: &str) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("http://{host}:{}{path}", self.port)
    }

    /// A TCP connection to the first address of the host that answers within the timeout.
    fn connect_tcp(&self) -> Result<TcpStream, String> {
        let host = &self.host;
        let addrs = (host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("{host}: {e}"))?;
        let mut last_error = format!("no address for {host}");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, NETWORK_TIMEOUT) {
                Ok(stream) => return Ok(stream),
                Err(e) => last_error = format!("connect to {addr}: {e}"),
            }
        }
        Err(last_error)
    }
}

/// The `User-Agent` of the client's HTTP requests.
const USER_AGENT: &str = concat!("sparky-chat/", env!("CARGO_PKG_VERSION"));

/// The `Content-Type` an upload declares, from the name's extension. The server decides the
/// type by the bytes; the declared one only tells kinds of text apart.
fn declared_type(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "txt" | "log" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "csv" => "text/csv",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        _ => "application/octet-stream",
    }
}

/// Encodes a client frame and writes it.
///
/// # Errors
///
/// Why it could not be written.
pub fn send(ws: &mut WebSocket<TcpStream>, frame: &ClientFrame) -> Result<(), String> {
    let text = serde_json::to_string(frame).map_err(|e| format!("encode: {e}"))?;
    ws.send(Message::text(text)).map_err(|e| e.to_string())
}

/// Sends a close frame and waits briefly for the server's, so that the socket is not reset
/// while the server still has lines just sent to read.
pub fn close_gracefully(ws: &mut WebSocket<TcpStream>) {
    if ws.close(None).is_err() {
        return;
    }
    let deadline = Instant::now() + NETWORK_TIMEOUT;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {}
            Err(_) => break, // `ConnectionClosed`: the close handshake is done.
        }
    }
}

/// True for the errors a read timeout produces (nothing has arrived yet), and for a read cut
/// short by a signal (Ctrl-C): neither loses anything.
pub fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The `client_id` of a frame that starts a turn.
pub fn client_id(frame: &ClientFrame) -> Option<&str> {
    match frame {
        ClientFrame::Message(MessageData { client_id, .. })
        | ClientFrame::Edit(EditData { client_id, .. })
        | ClientFrame::Regenerate(RegenerateData { client_id, .. }) => client_id.as_deref(),
        _ => None,
    }
}

/// The frame, with a fresh `client_id` when it starts a turn and has none yet.
pub fn with_client_id(mut frame: ClientFrame) -> ClientFrame {
    match &mut frame {
        ClientFrame::Message(MessageData { client_id, .. })
        | ClientFrame::Edit(EditData { client_id, .. })
        | ClientFrame::Regenerate(RegenerateData { client_id, .. }) => {
            client_id.get_or_insert_with(new_client_id);
        }
        _ => {}
    }
    frame
}

/// A `client_id`: 16 random bytes in hex (32 characters), or, should the operating system's
/// random source fail, the time, the process id and a counter (at most 58 characters), which
/// are as unique within one conversation.
fn new_client_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_ok() {
        return data_encoding::HEXLOWER.encode(&bytes);
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}-{:x}-{count:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ws_urls_with_a_host_are_taken() {
        let server = Server::parse("ws://[::1]:9000/ws").unwrap();
        assert_eq!((server.host.as_str(), server.port), ("::1", 9000));
        assert_eq!(Server::parse("ws://example/ws").unwrap().port, 80);
        assert!(
            Server::parse("wss://example/ws")
                .unwrap_err()
                .contains("TLS")
        );
        assert!(Server::parse("http://example/").is_err());
    }

    #[test]
    fn uploads_declare_a_type_by_the_extension() {
        assert_eq!(declared_type("notes.TXT"), "text/plain");
        assert_eq!(declared_type("a.b.csv"), "text/csv");
        assert_eq!(declared_type("photo.jpeg"), "image/jpeg");
        assert_eq!(declared_type("Makefile"), "application/octet-stream");
        let server = Server::parse("ws://[::1]:9000/ws").unwrap();
        assert_eq!(server.http_url("/api/files"), "http://[::1]:9000/api/files");
    }

    #[test]
    fn turn_starting_frames_get_one_client_id_each() {
        let frame = with_client_id(ClientFrame::Message(MessageData {
            attachments: Vec::new(),
            text: "hi".into(),
            client_id: None,
        }));
        let id = client_id(&frame).unwrap().to_owned();
        assert_eq!(id.len(), 32);
        assert_eq!(client_id(&with_client_id(frame)), Some(id.as_str()));
        assert_eq!(client_id(&with_client_id(ClientFrame::Cancel {})), None);
    }
}
