//! `sparky mcp login`'s redirect listener (RFC 8252's loopback redirect): a listener on
//! `127.0.0.1` at a port the system picks, whose first request to `/callback` carrying `code`
//! and `state` (or `error`) ends the wait; a short page tells the browser it may close. The
//! wait is bounded: an `mcp-login-accept` thread accepts, the caller waits on a channel.
//!
//! Depends on: nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

/// The path the authorization server redirects to.
pub const LOOPBACK_PATH: &str = "/callback";

/// A listener waiting for the authorization server's redirect.
#[derive(Debug)]
pub struct Loopback {
    listener: TcpListener,
    port: u16,
}

/// What the redirect carried.
#[derive(Debug, PartialEq, Eq)]
pub enum Redirect {
    /// The code and state of a sign-in that went through.
    Code {
        /// The authorization code.
        code: String,
        /// The state it answers.
        state: String,
    },
    /// The authorization server's error (`error` and its description).
    Refused(String),
}

impl Loopback {
    /// Binds `127.0.0.1:0`.
    ///
    /// # Errors
    ///
    /// When it cannot bind.
    pub fn bind() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        Ok(Loopback { listener, port })
    }

    /// The redirect URI to register and send.
    pub fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}{LOOPBACK_PATH}", self.port)
    }

    /// Waits up to `timeout` for the redirect; `None` when none came.
    pub fn wait(self, timeout: Duration) -> Option<Redirect> {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let listener = self.listener;
        let spawned = thread::Builder::new()
            .name("mcp-login-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    if let Some(redirect) = answer(stream) {
                        let _ = sender.send(redirect);
                        return;
                    }
                }
            });
        if spawned.is_err() {
            return None;
        }
        receiver.recv_timeout(timeout).ok()
    }
}

/// Reads one request; answers it, and returns what a redirect to the callback carried.
fn answer(mut stream: TcpStream) -> Option<Redirect> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let read = BufReader::new(&stream)
        .take(8192)
        .read_line(&mut line)
        .ok()?;
    if read == 0 {
        return None;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let redirect = (path == LOOPBACK_PATH)
        .then(|| read_redirect(query))
        .flatten();
    let (status, text) = match &redirect {
        Some(Redirect::Code { .. }) => ("200 OK", "Signed in. You can close this tab."),
        Some(Redirect::Refused(_)) => ("200 OK", "The sign-in was refused; see the terminal."),
        None => ("404 Not Found", "Not here."),
    };
    let body = format!("<!doctype html><title>Sparky</title><p>{text}</p>\n");
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    redirect
}

/// The redirect's code and state, or its error.
pub fn read_redirect(query: &str) -> Option<Redirect> {
    let (mut code, mut state, mut error, mut description) = (None, None, None, None);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "code" => code = Some(value.into_owned()),
            "state" => state = Some(value.into_owned()),
            "error" => error = Some(value.into_owned()),
            "error_description" => description = Some(value.into_owned()),
            _ => {}
        }
    }
    if let Some(error) = error {
        let text = match description {
            Some(description) => format!("{error}: {description}"),
            None => error,
        };
        return Some(Redirect::Refused(text));
    }
    Some(Redirect::Code {
        code: code?,
        state: state?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_carries_a_code_and_state_or_an_error() {
        assert_eq!(
            read_redirect("code=a%20b&state=s"),
            Some(Redirect::Code {
                code: "a b".into(),
                state: "s".into()
            })
        );
        assert_eq!(
            read_redirect("error=access_denied&error_description=no"),
            Some(Redirect::Refused("access_denied: no".into()))
        );
        assert_eq!(read_redirect("state=s"), None);
    }
}
