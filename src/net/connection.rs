//! `Connection`: the transport of one WebSocket. It reads client frames (through tungstenite),
//! sleeps in `poll(2)` on its socket alone, writes out what its [`Outbound`] could not write at
//! once, pings a quiet peer, drops one that stalls or stops answering, and closes. It knows
//! nothing of what the frames mean: `handler.rs` does.
//!
//! A ping's answer can only come once the peer has read everything sent before it, so the time
//! the peer has to answer runs from when the ping reached the socket, and again from each time
//! the peer took bytes that had waited for it: a slow reader of a large frame is not taken for
//! a dead peer. One that reads nothing is dropped by the write timeout meanwhile. The server's
//! side (`server.rs`) keeps the socket's unsent bytes low (`TCP_NOTSENT_LOWAT`), so that what
//! a ping waits behind is mostly in the [`Outbound`], where progress shows.
//!
//! The socket is non-blocking. Frames from sessions do not pass through this thread: their
//! producers write them through the `Outbound`. The thread is woken (a thread-directed signal,
//! see `wake.rs`) only when those bytes did not all fit and it must poll for `POLLOUT`, when a
//! session lets the connection go, or at shutdown.
//!
//! Depends on: `common::config`, `common::error`, `conversation::session`, `net::inbound`, `net::outbound`, `net::shutdown`, `net::wake`.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, Utf8Bytes, WebSocket};

use crate::common::config::Config;
use crate::common::error::Result;
use crate::conversation::session::{CloseReason, WireText};
use crate::net::inbound::{MeteredStream, OverBudget};
use crate::net::outbound::Outbound;
use crate::net::shutdown::Shutdown;
use crate::net::wake::Sleeper;

/// How long a closing handshake may take before the socket is dropped anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The stream under the WebSocket: reads come from the socket, writes (tungstenite's own
/// frames: pongs, pings, Close) go through the connection's [`Outbound`], after anything the
/// sessions have pending, so that bytes never interleave.
#[derive(Debug)]
pub struct Wire {
    outbound: Arc<Outbound>,
}

impl Wire {
    /// The stream of the connection that writes through `outbound`.
    pub fn new(outbound: Arc<Outbound>) -> Self {
        Wire { outbound }
    }
}

impl Read for Wire {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let mut socket = self.outbound.socket();
        socket.read(buffer)
    }
}

impl Write for Wire {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.outbound.write_raw(buffer)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Wire {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.outbound.socket().as_fd()
    }
}

/// What the transport hands the handler.
#[derive(Debug)]
pub enum Incoming {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary,
    /// A ping, or a pong nobody asked for: the peer's own control frame.
    Control,
    /// The handler asked for room to send more of its own (a replay page), and there is.
    Room,
    /// A session let the connection go; a Close frame is on its way.
    Released(CloseReason),
    /// The deadline the handler set has passed.
    Deadline,
    /// The connection is over.
    Closed,
}

/// The transport of one WebSocket; owned by its connection thread.
pub struct Connection {
    ws: WebSocket<MeteredStream<Wire>>,
    outbound: Arc<Outbound>,
    sleeper: Sleeper,
    shutdown: Shutdown,
    id: u64,
    ping_interval: Duration,
    write_timeout: Duration,
    last_heard: Instant,
    /// The ping we sent and have had no answer to.
    ping: Option<Ping>,
    /// Set once a Close frame is sent: the time by which the peer must have answered.
    closing_until: Option<Instant>,
    /// The handler's deadline.
    deadline: Option<Instant>,
    /// Set after a fatal frame: the connection ends at once.
    aborted: bool,
}

/// A ping on its way to the peer, or waiting for its answer.
#[derive(Clone, Copy, Debug)]
struct Ping {
    /// Where the ping ends in the bytes handed to the `Outbound`: it has reached the socket
    /// once the socket has taken this many.
    ends_at: u64,
    /// When it reached the socket, once it has.
    on_socket: Option<Instant>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The thread is about to end: no wake-up signal may reach it after this.
        self.outbound.retire();
    }
}

impl Connection {
    /// The transport of an upgraded socket, which must be non-blocking and written only
    /// through `outbound`. `sleeper` must have been made on this thread.
    pub fn new(
        ws: WebSocket<MeteredStream<Wire>>,
        outbound: Arc<Outbound>,
        sleeper: Sleeper,
        shutdown: Shutdown,
        id: u64,
        config: &Config,
    ) -> Self {
        Connection {
            ws,
            outbound,
            sleeper,
            shutdown,
            id,
            ping_interval: config.ping_interval,
            write_timeout: config.write_timeout,
            last_heard: Instant::now(),
            ping: None,
            closing_until: None,
            deadline: None,
            aborted: false,
        }
    }

    /// The connection's id, unique for the server's life.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The write side, which sessions deliver to.
    pub fn outbound(&self) -> &Arc<Outbound> {
        &self.outbound
    }

    /// Limits incoming frames and messages to `bytes`.
    pub fn limit_frames(&mut self, bytes: usize) {
        self.ws.set_config(|config| {
            config.max_message_size = Some(bytes);
            config.max_frame_size = Some(bytes);
        });
    }

    /// Makes [`Connection::next`] return [`Incoming::Deadline`] once `deadline` passes.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Sends frames of the handler's own (replies, errors). A refused send shows up as the
    /// connection ending.
    pub fn send(&self, frames: &[WireText]) {
        self.outbound.send(frames);
    }

    /// True once a Close frame was sent.
    pub fn is_closing(&self) -> bool {
        self.closing_until.is_some()
    }

    /// Sends a Close frame and gives the peer a moment to answer; nothing is sent after it.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        if self.closing_until.is_some() {
            return;
        }
        self.outbound.close_data();
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // The write side takes every byte (what the socket refuses waits); any other error
        // ends the connection at the next read or flush anyway.
        let _ = self.ws.close(Some(frame));
        let _ = self.ws.flush();
        self.closing_until = Some(Instant::now() + CLOSE_GRACE);
    }

    /// Closes at once after a fatal frame: sends the Close frame if the socket takes it.
    pub fn abort(&mut self, code: CloseCode, reason: &str) {
        self.close(code, reason);
        let _ = self.outbound.flush();
        self.aborted = true;
    }

    /// Waits for the next thing the handler must know about. With `want_room`, also returns
    /// as soon as little enough is pending that the handler may send more of its own.
    ///
    /// Not inlined: tungstenite's read path has large locals, and inlined into the handler's
    /// loop they would sit under every frame it handles (a `connect` that creates a session
    /// goes deep), so that each connection thread touched one more stack page.
    ///
    /// # Errors
    ///
    /// Socket and WebSocket failures other than a normal close.
    #[inline(never)]
    pub fn next(&mut self, want_room: bool) -> Result<Incoming> {
        loop {
            if self.aborted {
                return Ok(Incoming::Closed);
            }
            if let Some(incoming) = self.read()? {
                return Ok(incoming);
            }
            let quiet = self.outbound.quiet();
            if let Some(reason) = (!quiet).then(|| self.outbound.take_released()).flatten() {
                let (code, text) = match reason {
                    CloseReason::TakenOver => {
                        (CloseCode::Policy, "taken over by a newer connection")
                    }
                    CloseReason::Deleted => (CloseCode::Normal, "the conversation was deleted"),
                    CloseReason::Behind => {
                        (CloseCode::Again, "too far behind; reconnect to catch up")
                    }
                };
                self.close(code, text);
                return Ok(Incoming::Released(reason));
            }
            if !quiet && self.outbound.take_evicted() {
                // A peer that never authenticates would not answer a Close either.
                self.abort(
                    CloseCode::Again,
                    "too many connections waiting to authenticate; send a token sooner",
                );
                return Ok(Incoming::Closed);
            }
            if self.closing_until.is_none() && self.shutdown.closing() {
                self.close(CloseCode::Away, "server shutting down");
            }
            if self
                .deadline
                .is_some_and(|deadline| Instant::now() >= deadline)
            {
                self.deadline = None;
                return Ok(Incoming::Deadline);
            }
            if (!quiet && !self.flush()) || !self.closing_in_time() || !self.keepalive() {
                return Ok(Incoming::Closed);
            }
            if want_room && !self.is_closing() && self.outbound.has_room() {
                return Ok(Incoming::Room);
            }
            self.sleep()?;
        }
    }

    /// Reads one message the handler must see, if the socket has one. `None` when it has
    /// nothing more for now.
    fn read(&mut self) -> Result<Option<Incoming>> {
        loop {
            let message = match self.ws.read() {
                Ok(message) => message,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(None);
                }
                Err(tungstenite::Error::Io(e)) if OverBudget::is(&e) => {
                    log::warn!(
                        "connection {}: unfinished messages of all connections passed \
                         --max-pending-message-bytes; closing with 1013",
                        self.id
                    );
                    self.abort(CloseCode::Again, "server busy; try again later");
                    return Ok(Some(Incoming::Closed));
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(Some(Incoming::Closed));
                }
                Err(tungstenite::Error::Capacity(e)) => {
                    log::info!("connection {}: {e}; closing with 1009", self.id);
                    self.abort(CloseCode::Size, "frame too large");
                    return Ok(Some(Incoming::Closed));
                }
                Err(tungstenite::Error::Utf8(_)) => {
                    self.abort(CloseCode::Invalid, "text frame is not valid UTF-8");
                    return Ok(Some(Incoming::Closed));
                }
                Err(tungstenite::Error::Protocol(e)) => {
                    log::debug!("connection {}: protocol error: {e}", self.id);
                    self.abort(CloseCode::Protocol, "WebSocket protocol error");
                    return Ok(Some(Incoming::Closed));
                }
                Err(e) => return Err(e.into()),
            };
            // The first pong after our ping is the answer to it; any other control frame is
            // the peer's own.
            let awaited = matches!(message, Message::Pong(_)) && self.ping.is_some();
            self.last_heard = Instant::now();
            self.ping = None;
            let closing = self.is_closing();
            let incoming = match message {
                Message::Text(text) => Incoming::Text(text),
                Message::Binary(_) => Incoming::Binary,
                Message::Ping(_) => Incoming::Control,
                Message::Pong(_) if !awaited => Incoming::Control,
                Message::Close(_) => {
                    // tungstenite has queued the reply; no data frame may follow it.
                    self.outbound.close_data();
                    self.closing_until
                        .get_or_insert_with(|| Instant::now() + CLOSE_GRACE);
                    continue;
                }
                Message::Pong(_) | Message::Frame(_) => continue,
            };
            // Past our Close frame, what the peer sends no longer matters.
            if !closing {
                return Ok(Some(incoming));
            }
        }
    }

    /// Writes what is pending; false when the connection must end (a broken socket, a peer
    /// that stalled past the write timeout).
    fn flush(&mut self) -> bool {
        if self.outbound.flush().is_err() {
            return false;
        }
        if let Some(since) = self.outbound.stalled_since()
            && since.elapsed() >= self.write_timeout
        {
            log::warn!("connection {}: peer stopped reading; dropping it", self.id);
            return false;
        }
        true
    }

    /// False once a closing handshake has run past its grace.
    fn closing_in_time(&self) -> bool {
        self.closing_until
            .is_none_or(|until| Instant::now() < until)
    }

    /// Pings a quiet peer; false when it did not answer the last ping in time (see the
    /// module's notes for when that time starts).
    fn keepalive(&mut self) -> bool {
        let interval = self.ping_interval;
        if self.ping.is_none() {
            if self.last_heard.elapsed() >= interval && !self.is_closing() {
                // The write side takes every byte; a broken socket shows at the next flush.
                let _ = self.ws.send(Message::Ping(Default::default()));
                // Bytes another thread added just after the ping count as before it: the
                // clock starts a little late, never early.
                self.ping = Some(Ping {
                    ends_at: self.outbound.queued(),
                    on_socket: None,
                });
            }
            return true;
        }
        match self.pong_clock() {
            Some(since) if since.elapsed() >= interval => {
                log::info!(
                    "connection {}: no pong within {interval:?} of the ping reaching the \
                     socket; dropping it",
                    self.id
                );
                false
            }
            _ => true,
        }
    }

    /// Since when the peer has had our ping to answer: the later of when the ping reached the
    /// socket and when the peer last took bytes that had waited. `None` while no ping is out,
    /// or while it still waits behind bytes the socket has not taken.
    fn pong_clock(&mut self) -> Option<Instant> {
        let ping = self.ping.as_mut()?;
        if ping.on_socket.is_none() && self.outbound.written() >= ping.ends_at {
            ping.on_socket = Some(Instant::now());
        }
        let on_socket = ping.on_socket?;
        Some(
            self.outbound
                .drained_at()
                .map_or(on_socket, |drained| drained.max(on_socket)),
        )
    }

    /// Sleeps until the socket has something (or room, when bytes are pending), a wake-up
    /// comes, or the next deadline.
    fn sleep(&mut self) -> Result<()> {
        // A ping still waiting for the socket has no deadline of its own: the write timeout
        // below watches the bytes ahead of it.
        let mut deadline = match (self.ping.is_some(), self.pong_clock()) {
            (_, Some(since)) => since + self.ping_interval,
            (true, None) => Instant::now() + self.ping_interval,
            (false, None) => self.last_heard + self.ping_interval,
        };
        if !self.outbound.quiet()
            && let Some(since) = self.outbound.stalled_since()
        {
            deadline = deadline.min(since + self.write_timeout);
        }
        if let Some(until) = self.closing_until {
            deadline = deadline.min(until);
        }
        if let Some(until) = self.deadline {
            deadline = deadline.min(until);
        }
        let Some(polls_out) = self.outbound.begin_sleep(self.sleeper.waker()) else {
            return Ok(());
        };
        let mut events = PollFlags::POLLIN;
        if polls_out {
            events |= PollFlags::POLLOUT;
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        let slept = self
            .sleeper
            .sleep(self.outbound.socket().as_fd(), events, Some(timeout));
        self.outbound.end_sleep();
        slept.map_err(|e| crate::common::error::Error::io("poll", e))?;
        Ok(())
    }
}
