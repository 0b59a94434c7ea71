//! `Connection`: the sole owner of one WebSocket. It decodes client frames, dispatches them to
//! the session, and writes the session's frames the moment they are queued.
//!
//! The socket is non-blocking. The thread sleeps in `poll(2)` on two descriptors: the socket
//! and an eventfd ([`Waker`]) that the session writes after queueing a frame. So an idle
//! connection costs no CPU, and a frame from a worker reaches the wire without waiting for the
//! client to send anything. Until a connection has authenticated (when tokens are required), its
//! frames may be 64 KiB at most and it has `--handshake-timeout` to do so. Control frames count
//! against the rate limit like any other. Depends on `session`, `worker`, `protocol`, `config`,
//! `inbound` and `metrics`.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::auth::{Auth, Principal, Refused};
use crate::config::{Config, UNAUTHENTICATED_FRAME_BYTES};
use crate::error::{Error, Result};
use crate::inbound::{MeteredStream, OverBudget};
use crate::metrics::Metrics;
use crate::protocol::{
    ClientFrame, ConnectData, ErrorCode, ServerFrame, decode_client_frame, encode,
};
use crate::rate::Bucket;
use crate::session::{CloseReason, Delivery, Notify, Session, SessionManager, Subscriber};
use crate::worker;

/// How long a closing handshake may take before the socket is dropped anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Bytes handed to tungstenite but not yet flushed past which the connection stops taking
/// more frames (from its queue, or from a replay) until the socket drains: backpressure, so
/// that what a slow peer costs is bounded by this plus one frame.
const UNFLUSHED_LIMIT_BYTES: usize = 1 << 20;

/// Wakes a connection thread from `poll`: an eventfd, written by whoever queued a frame.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// A new eventfd.
    ///
    /// # Errors
    ///
    /// When the process is out of file descriptors.
    pub fn new() -> Result<Self> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::io("eventfd", e.into()))?;
        Ok(Waker { fd })
    }

    /// Makes the next (or current) `poll` of the connection return.
    pub fn wake(&self) {
        // The counter saturates only after 2^64 wakes without a read; a full counter would
        // still leave the fd readable, so an error here loses nothing.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Clears pending wakes; called before draining the queue, so that no wake is lost.
    fn reset(&self) {
        let mut buffer = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut buffer);
    }
}

impl Notify for Waker {
    fn notify(&self) {
        self.wake();
    }
}

/// What every connection of a server shares.
#[derive(Clone, Debug)]
pub struct ConnectionContext {
    /// The server's settings.
    pub config: Arc<Config>,
    /// The session map.
    pub sessions: SessionManager,
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// Set when the server shuts down; connections then close with 1001.
    pub shutdown: Arc<AtomicBool>,
    /// Set when a graceful shutdown begins: turns in flight finish, new ones are refused.
    pub draining: Arc<AtomicBool>,
    /// The tokens clients must present.
    pub auth: Auth,
}

/// Whether the connection goes on after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// One WebSocket and what it is attached to.
pub struct Connection<'a> {
    ws: WebSocket<MeteredStream>,
    ctx: &'a ConnectionContext,
    id: u64,
    waker: Arc<Waker>,
    inbox: Receiver<Delivery>,
    /// The sending side of `inbox`, until `connect` hands it to the session. The connection
    /// keeps no copy, so that the session dropping it reads as "you were let go".
    sender: Option<Sender<Delivery>>,
    session: Option<Session>,
    /// Data that the socket would not take yet.
    unflushed: bool,
    /// Bytes written into tungstenite since its buffer was last empty.
    unflushed_bytes: usize,
    /// True while the connection replays its session's events from before it attached.
    replaying: bool,
    /// Since when writes have made no progress.
    stalled_since: Option<Instant>,
    last_heard: Instant,
    ping_sent: Option<Instant>,
    /// Set once a Close frame is sent: the time by which the peer must have answered.
    closing_until: Option<Instant>,
    /// A token from the upgrade request (`Authorization: Bearer` or `?token=`).
    upgrade_token: Option<String>,
    /// While tokens are required and none valid has been presented: the time by which one must
    /// be, or the connection is closed (1008), whatever it sends meanwhile.
    auth_deadline: Option<Instant>,
    /// The rate limit on client frames, when there is one.
    bucket: Option<Bucket>,
}

impl std::fmt::Debug for Connection<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl<'a> Connection<'a> {
    /// Wraps an upgraded socket. The socket must already be non-blocking.
    ///
    /// When tokens are required and `upgrade_token` is not a valid one, the connection starts
    /// unauthenticated: its frames and messages may be [`UNAUTHENTICATED_FRAME_BYTES`] at most,
    /// and it must authenticate (a `connect` with a valid token) within the handshake timeout.
    pub fn new(
        mut ws: WebSocket<MeteredStream>,
        ctx: &'a ConnectionContext,
        id: u64,
        waker: Arc<Waker>,
        upgrade_token: Option<String>,
    ) -> Self {
        let authenticated = ctx.auth.check(upgrade_token.as_deref()).is_ok();
        let auth_deadline = (!authenticated).then(|| Instant::now() + ctx.config.handshake_timeout);
        if !authenticated {
            let limit = UNAUTHENTICATED_FRAME_BYTES.min(ctx.config.max_frame_bytes);
            ws.set_config(|config| {
                config.max_message_size = Some(limit);
                config.max_frame_size = Some(limit);
            });
        }
        // Unbounded in type, bounded in use: `Subscriber::deliver` refuses past
        // `outbox_capacity`. An unbounded channel allocates its slots lazily, which keeps an
        // idle connection small.
        let (sender, inbox) = crossbeam_channel::unbounded();
        Connection {
            ws,
            ctx,
            id,
            waker,
            inbox,
            sender: Some(sender),
            session: None,
            unflushed: false,
            unflushed_bytes: 0,
            replaying: false,
            stalled_since: None,
            last_heard: Instant::now(),
            ping_sent: None,
            closing_until: None,
            upgrade_token,
            auth_deadline,
            bucket: ctx.config.rate_limit.map(Bucket::new),
        }
    }

    /// Serves the connection until the peer leaves, the connection is closed, or the server
    /// shuts down.
    ///
    /// # Errors
    ///
    /// Socket and WebSocket failures other than a normal close.
    pub fn run(mut self) -> Result<()> {
        let result = self.serve();
        if let Some(session) = self.session.take() {
            session.detach(self.id);
        }
        result
    }

    fn serve(&mut self) -> Result<()> {
        loop {
            if self.read_all()? == Flow::Stop || self.drain_inbox()? == Flow::Stop {
                return Ok(());
            }
            if self.replaying && self.has_room() {
                self.replay_step()?;
            }
            // After the queue is drained, so that the last events go out before the Close.
            if self.closing_until.is_none() && self.ctx.shutdown.load(Ordering::SeqCst) {
                self.start_close(CloseCode::Away, "server shutting down");
            }
            self.check_auth_deadline();
            if self.flush()? == Flow::Stop || self.keepalive()? == Flow::Stop {
                return Ok(());
            }
            // A replay goes on as fast as the socket takes it, without sleeping in between.
            if !(self.replaying && self.has_room()) {
                self.wait()?;
            }
        }
    }

    /// Handles every message the socket and tungstenite's buffer hold.
    fn read_all(&mut self) -> Result<Flow> {
        loop {
            match self.ws.read() {
                Ok(message) => {
                    // The first pong after our ping is the answer to it; any other control
                    // frame is the peer's own, and counts against its rate limit.
                    let awaited = matches!(message, Message::Pong(_)) && self.ping_sent.is_some();
                    self.last_heard = Instant::now();
                    self.ping_sent = None;
                    if self.on_message(message, awaited)? == Flow::Stop {
                        return Ok(Flow::Stop);
                    }
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ok(Flow::Continue);
                }
                Err(tungstenite::Error::Io(e)) if OverBudget::is(&e) => {
                    log::warn!(
                        "connection {}: unfinished messages of all connections passed \
                         --max-pending-message-bytes; closing with 1013",
                        self.id
                    );
                    return Ok(self.abort(CloseCode::Again, "server busy; try again later"));
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(Flow::Stop);
                }
                Err(tungstenite::Error::Capacity(e)) => {
                    log::info!("connection {}: {e}; closing with 1009", self.id);
                    return Ok(self.abort(CloseCode::Size, "frame too large"));
                }
                Err(tungstenite::Error::Utf8(_)) => {
                    return Ok(self.abort(CloseCode::Invalid, "text frame is not valid UTF-8"));
                }
                Err(tungstenite::Error::Protocol(e)) => {
                    log::debug!("connection {}: protocol error: {e}", self.id);
                    return Ok(self.abort(CloseCode::Protocol, "WebSocket protocol error"));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Handles one message. `awaited_pong` is true for the pong that answers our keepalive
    /// ping, which does not count against the rate limit.
    fn on_message(&mut self, message: Message, awaited_pong: bool) -> Result<Flow> {
        // Checked per message too: a peer that never lets the socket run dry must not outlive
        // its deadline.
        self.check_auth_deadline();
        if self.closing_until.is_some() {
            return Ok(Flow::Continue);
        }
        let control_frame = match &message {
            Message::Ping(_) => true,
            Message::Pong(_) => !awaited_pong,
            _ => false,
        };
        let counted = control_frame || matches!(message, Message::Text(_) | Message::Binary(_));
        if counted && self.bucket.as_mut().is_some_and(|bucket| !bucket.take()) {
            if control_frame {
                // An error frame per excess ping would answer a flood with a flood, and
                // tungstenite has queued the pong already: a peer this far past its limit
                // with control frames is not a chat client.
                log::warn!(
                    "connection {}: control frames past the rate limit; closing with 1008",
                    self.id
                );
                self.ctx.metrics.rejected(ErrorCode::RateLimited);
                return Ok(self.abort(CloseCode::Policy, "too many control frames"));
            }
            self.reject(
                ErrorCode::RateLimited,
                "too many frames; slow down and try again",
            );
            return Ok(Flow::Continue);
        }
        match message {
            Message::Text(text) => self.on_text(text.as_str())?,
            Message::Binary(_) => {
                self.reject(
                    ErrorCode::UnsupportedFrame,
                    "binary frames are not supported; send JSON text",
                );
            }
            // tungstenite queues the pong and the close reply itself; `flush` sends them.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
        }
        Ok(Flow::Continue)
    }

    /// Closes (1008) a connection that has not authenticated by its deadline.
    fn check_auth_deadline(&mut self) {
        if self.closing_until.is_none()
            && self
                .auth_deadline
                .is_some_and(|deadline| Instant::now() >= deadline)
        {
            log::info!(
                "connection {}: no valid token within {:?}; closing with 1008",
                self.id,
                self.ctx.config.handshake_timeout
            );
            self.ctx.metrics.rejected(ErrorCode::Unauthorized);
            self.start_close(CloseCode::Policy, "no valid token in time");
        }
    }

    fn on_text(&mut self, text: &str) -> Result<()> {
        let frame = match decode_client_frame(text) {
            Ok(frame) => frame,
            Err(e) => {
                self.reject(e.code, &e.message);
                return Ok(());
            }
        };
        let session = match (frame, &self.session) {
            (ClientFrame::Connect(data), None) => return self.connect(&data),
            (ClientFrame::Connect(_), Some(_)) => {
                self.reject(
                    ErrorCode::AlreadyConnected,
                    "this connection already sent connect",
                );
                return Ok(());
            }
            (_, None) => {
                self.reject(ErrorCode::NotConnected, "the first frame must be connect");
                return Ok(());
            }
            (frame, Some(session)) => (frame, session.clone()),
        };
        match session {
            (ClientFrame::Message(message), session) => {
                let limit = self.ctx.config.max_text_chars;
                if message.text.chars().count() > limit {
                    self.reject(
                        ErrorCode::TooLarge,
                        &format!("text is longer than {limit} characters"),
                    );
                } else if self.ctx.draining.load(Ordering::SeqCst) {
                    self.reject(ErrorCode::ServerBusy, "the server is shutting down");
                } else if session.store_failing() {
                    self.reject(
                        ErrorCode::Storage,
                        "the server cannot write to its store right now (is its disk full?); \
                         try again later",
                    );
                } else if let Some(start) = session.submit(&message.text) {
                    worker::spawn_turn(start);
                }
            }
            (ClientFrame::Cancel {}, session) => session.cancel(),
            (ClientFrame::Connect(_), _) => {}
        }
        Ok(())
    }

    fn connect(&mut self, data: &ConnectData) -> Result<()> {
        let Some(sender) = self.sender.take() else {
            return Ok(());
        };
        let token = data.token.as_deref().or(self.upgrade_token.as_deref());
        let principal = match self.ctx.auth.check(token) {
            Ok(principal) => principal.unwrap_or_else(Principal::local),
            Err(refused) => {
                let message = match refused {
                    Refused::Missing => "this server requires a token",
                    Refused::Wrong => "the token is not valid",
                };
                self.reject(ErrorCode::Unauthorized, message);
                self.start_close(CloseCode::Policy, "unauthorized");
                return Ok(());
            }
        };
        if self.ctx.auth.required() {
            log::info!(
                "connection {}: authenticated as {}",
                self.id,
                principal.name()
            );
        }
        // Authenticated: the connection gets the server's full limits and no deadline.
        if self.auth_deadline.take().is_some() {
            let limit = self.ctx.config.max_frame_bytes;
            self.ws.set_config(|config| {
                config.max_message_size = Some(limit);
                config.max_frame_size = Some(limit);
            });
        }
        let subscriber = Subscriber {
            id: self.id,
            sender,
            notify: self.waker.clone(),
            capacity: self.ctx.config.outbox_capacity,
        };
        match self.ctx.sessions.connect(data, &principal, subscriber) {
            Ok(attachment) => {
                for text in &attachment.greeting {
                    self.write_text(text)?;
                }
                self.replaying = attachment.replaying;
                self.session = Some(attachment.session);
            }
            Err(refusal) => {
                self.reject(refusal.code, &refusal.message);
                match refusal.code {
                    ErrorCode::Unauthorized => self.start_close(CloseCode::Policy, "unauthorized"),
                    _ => self.start_close(CloseCode::Again, "server busy"),
                }
            }
        }
        Ok(())
    }

    /// Answers a bad client frame with an `error` frame; the connection stays open.
    fn reject(&mut self, code: ErrorCode, message: &str) {
        self.ctx.metrics.rejected(code);
        log::debug!(
            "connection {}: rejected frame: {}: {message}",
            self.id,
            code.as_str()
        );
        let frame = ServerFrame::client_error(code, message);
        let text = encode(&frame, self.session.as_ref().map(Session::id), None);
        // A failed write shows up again at the next flush, which ends the connection.
        let _ = self.write_text(&text);
    }

    /// True when tungstenite's buffer has room for more frames.
    fn has_room(&self) -> bool {
        !self.unflushed || self.unflushed_bytes < UNFLUSHED_LIMIT_BYTES
    }

    /// Sends the next stretch of the replay; the last one makes the connection live.
    fn replay_step(&mut self) -> Result<()> {
        let Some(session) = self.session.clone() else {
            self.replaying = false;
            return Ok(());
        };
        let step = match session.replay(self.id) {
            Ok(step) => step,
            Err(e) => {
                log::error!("connection {}: replay failed: {e}", self.id);
                self.replaying = false;
                self.start_close(CloseCode::Error, "the conversation could not be read");
                return Ok(());
            }
        };
        for text in &step.frames {
            self.write_text(text)?;
        }
        Metrics::add(&self.ctx.metrics.events_replayed, step.events as u64);
        self.replaying = !step.done;
        Ok(())
    }

    /// Moves queued deliveries into tungstenite's write buffer, as long as it has room.
    fn drain_inbox(&mut self) -> Result<Flow> {
        while self.has_room() {
            match self.inbox.try_recv() {
                Ok(Delivery::Text(text)) => self.write_text(&text)?,
                Ok(Delivery::Close(CloseReason::TakenOver)) => {
                    self.session = None;
                    self.start_close(CloseCode::Policy, "taken over by a newer connection");
                }
                Ok(Delivery::Close(CloseReason::Deleted)) => {
                    self.session = None;
                    self.start_close(CloseCode::Normal, "the conversation was deleted");
                }
                Err(TryRecvError::Empty) => return Ok(Flow::Continue),
                Err(TryRecvError::Disconnected) => {
                    // The session let go of this connection: it fell too far behind, or was
                    // taken over. The client catches up by replay when it reconnects.
                    if self.session.take().is_some() {
                        self.start_close(CloseCode::Again, "too far behind; reconnect to catch up");
                    }
                    return Ok(Flow::Continue);
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Queues a text frame. A frame the socket will not take now stays buffered for `flush`.
    fn write_text(&mut self, text: &str) -> Result<()> {
        if self.closing_until.is_some() {
            return Ok(());
        }
        match self.ws.write(Message::text(text)) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(tungstenite::Error::WriteBufferFull(_)) => {
                return Err(Error::io("write", std::io::ErrorKind::WriteZero.into()));
            }
            Err(e) => return Err(e.into()),
        }
        self.unflushed = true;
        self.unflushed_bytes += text.len();
        Ok(())
    }

    /// Writes what tungstenite buffered; notes a stall, and gives up on a peer that stalls past
    /// the write timeout.
    fn flush(&mut self) -> Result<Flow> {
        match self.ws.flush() {
            Ok(()) => {
                self.unflushed = false;
                self.unflushed_bytes = 0;
                self.stalled_since = None;
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.unflushed = true;
                let since = *self.stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.ctx.config.write_timeout {
                    log::warn!("connection {}: peer stopped reading; dropping it", self.id);
                    return Ok(Flow::Stop);
                }
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(Flow::Stop);
            }
            Err(e) => return Err(e.into()),
        }
        if self
            .closing_until
            .is_some_and(|until| Instant::now() >= until)
        {
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    /// Pings a quiet peer, and drops one that did not answer the last ping in time.
    fn keepalive(&mut self) -> Result<Flow> {
        let interval = self.ctx.config.ping_interval;
        match self.ping_sent {
            Some(sent) if sent.elapsed() >= interval => {
                log::info!(
                    "connection {}: no pong within {interval:?}; dropping it",
                    self.id
                );
                Ok(Flow::Stop)
            }
            None if self.last_heard.elapsed() >= interval && self.closing_until.is_none() => {
                self.ping_sent = Some(Instant::now());
                match self.ws.write(Message::Ping(Default::default())) {
                    Ok(()) => {}
                    Err(tungstenite::Error::Io(e))
                        if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
                self.flush()
            }
            _ => Ok(Flow::Continue),
        }
    }

    /// Sends a Close frame and gives the peer a moment to answer.
    fn start_close(&mut self, code: CloseCode, reason: &str) {
        if self.closing_until.is_some() {
            return;
        }
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // WouldBlock leaves the frame buffered for `flush`; any other error ends the
        // connection at the next read or flush anyway.
        let _ = self.ws.close(Some(frame));
        self.unflushed = true;
        self.closing_until = Some(Instant::now() + CLOSE_GRACE);
    }

    /// Closes at once after a fatal frame: sends the Close frame if the socket takes it.
    fn abort(&mut self, code: CloseCode, reason: &str) -> Flow {
        self.start_close(code, reason);
        let _ = self.ws.flush();
        Flow::Stop
    }

    /// Sleeps until the socket or the waker has something, or the next deadline.
    fn wait(&mut self) -> Result<()> {
        let now = Instant::now();
        let interval = self.ctx.config.ping_interval;
        let mut deadline = match self.ping_sent {
            Some(sent) => sent + interval,
            None => self.last_heard + interval,
        };
        if let Some(since) = self.stalled_since {
            deadline = deadline.min(since + self.ctx.config.write_timeout);
        }
        if let Some(until) = self.closing_until {
            deadline = deadline.min(until);
        } else if let Some(until) = self.auth_deadline {
            deadline = deadline.min(until);
        }
        let timeout = deadline.saturating_duration_since(now);
        let timeout = Timespec {
            tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: timeout.subsec_nanos().into(),
        };
        let mut socket_events = PollFlags::IN;
        if self.unflushed {
            socket_events |= PollFlags::OUT;
        }
        let mut fds = [
            PollFd::new(self.ws.get_ref(), socket_events),
            PollFd::new(&self.waker.fd, PollFlags::IN),
        ];
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::io("poll", e.into())),
        }
        if fds[1].revents().contains(PollFlags::IN) {
            self.waker.reset();
        }
        Ok(())
    }
}
