//! `Handler`: dispatch for one WebSocket. It takes what the transport ([`Connection`]) reads,
//! decodes client frames, checks authentication (the deadline and the small limits until then)
//! and the rate limit (data and control frames alike), and submits to sessions, which start
//! their own turns. Its replies go out through the transport. A connection authenticated as a
//! user account (its API token or sign-in cookie) has its credential checked again every
//! [`RECHECK`], and is closed (1008) once it is revoked, ended, or its user removed.
//!
//! Depends on: `common::auth`, `common::config`, `common::error`, `common::metrics`,
//! `common::protocol`, `common::rate`, `conversation::elicitation`, `conversation::session`,
//! `net::admission`, `net::connection`, `net::shutdown`, `store::files`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;

use crate::common::auth::{Auth, Principal, Refused};
use crate::common::config::{Config, UNAUTHENTICATED_FRAME_BYTES};
use crate::common::error::Result;
use crate::common::metrics::Metrics;
use crate::common::protocol::{
    ClientFrame, ConnectData, ElicitData, ErrorCode, ServerFrame, StatusCode, StatusData, TurnId,
    decode_client_frame, encode,
};
use crate::common::rate::Bucket;
use crate::conversation::elicitation::ElicitRefusal;
use crate::conversation::session::{Ask, Session, SessionManager, Submitted, Subscriber, WireText};
use crate::net::admission::Place;
use crate::net::connection::{Connection, Incoming};
use crate::net::shutdown::Shutdown;
use crate::store::FileStore;

/// How often a connection authenticated as a user account checks that its credential still
/// holds: how long a revoked token, an ended sign-in or a removed user's socket lives at most.
pub const RECHECK: Duration = Duration::from_secs(1);

/// What every connection of a server shares.
#[derive(Clone)]
pub struct ConnectionContext {
    /// The server's settings.
    pub config: Arc<Config>,
    /// The session map.
    pub sessions: SessionManager,
    /// Files: what a message's attachments name.
    pub files: Arc<dyn FileStore>,
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// Where the server is in its life: draining refuses new turns, closing closes (1001).
    pub shutdown: Shutdown,
    /// The tokens clients must present.
    pub auth: Auth,
}

impl std::fmt::Debug for ConnectionContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionContext")
            .field("config", &self.config)
            .field("sessions", &self.sessions)
            .field("metrics", &self.metrics)
            .field("shutdown", &self.shutdown)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// What a WebSocket brought from its upgrade request. Its `Debug` form hides the token.
pub struct Upgrade<'a> {
    /// A token from the request (`Authorization: Bearer` or `?token=`).
    pub token: Option<String>,
    /// The sign-in cookie of the request.
    pub cookie: Option<String>,
    /// The connection's place under `--max-connections`, authenticated or waiting to be.
    pub place: Place<'a>,
}

impl std::fmt::Debug for Upgrade<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("cookie", &self.cookie.as_ref().map(|_| "[redacted]"))
            .field("place", &self.place)
            .finish()
    }
}

/// Dispatch for one connection: what it is attached to and what it may still do.
pub struct Handler<'a> {
    connection: Connection,
    ctx: &'a ConnectionContext,
    session: Option<Session>,
    /// True once a `connect` was handled (accepted or not): only one is.
    connected: bool,
    /// True while the connection replays its session's events from before it attached.
    replaying: bool,
    /// A token from the upgrade request (`Authorization: Bearer` or `?token=`).
    upgrade_token: Option<String>,
    /// The sign-in cookie of the upgrade request.
    upgrade_cookie: Option<String>,
    /// For a connection authenticated as a user account: the token it presented (none: the
    /// cookie), its principal, and when to check them again ([`RECHECK`]).
    recheck: Option<(Option<String>, Principal, Instant)>,
    /// The connection's place under `--max-connections`.
    place: Place<'a>,
    /// While tokens are required and none valid has been presented: the time by which one must
    /// be, or the connection is closed (1008), whatever it sends meanwhile.
    auth_deadline: Option<Instant>,
    /// The rate limit on client frames, when there is one.
    bucket: Option<Bucket>,
}

impl std::fmt::Debug for Handler<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("connection", &self.connection)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl<'a> Handler<'a> {
    /// Dispatch for `connection`.
    ///
    /// When its place is not an authenticated one (tokens are required and the upgrade brought
    /// no valid one), the connection starts unauthenticated: its frames and messages may be
    /// [`UNAUTHENTICATED_FRAME_BYTES`] at most, and it must authenticate (a `connect` with a
    /// valid token) within the handshake timeout.
    pub fn new(
        mut connection: Connection,
        ctx: &'a ConnectionContext,
        upgrade: Upgrade<'a>,
    ) -> Self {
        let Upgrade {
            token: upgrade_token,
            cookie: upgrade_cookie,
            place,
        } = upgrade;
        let authenticated = place.authenticated();
        let auth_deadline = (!authenticated).then(|| Instant::now() + ctx.config.handshake_timeout);
        if !authenticated {
            connection.limit_frames(UNAUTHENTICATED_FRAME_BYTES.min(ctx.config.max_frame_bytes));
        }
        connection.set_deadline(auth_deadline);
        Handler {
            connection,
            ctx,
            session: None,
            connected: false,
            replaying: false,
            upgrade_token,
            upgrade_cookie,
            recheck: None,
            place,
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
    pub fn run(&mut self) -> Result<()> {
        let result = self.serve();
        if let Some(session) = self.session.take() {
            session.detach(self.connection.id());
        }
        result
    }

    fn serve(&mut self) -> Result<()> {
        loop {
            match self.connection.next(self.replaying)? {
                Incoming::Closed => return Ok(()),
                Incoming::Room => self.replay_step(),
                Incoming::Released(_) => {
                    self.session = None;
                    self.replaying = false;
                }
                Incoming::Deadline => {
                    self.check_auth_deadline();
                    self.check_credential();
                }
                Incoming::Text(text) => {
                    if self.admit(false) {
                        self.on_text(text.as_str());
                    }
                }
                Incoming::Binary => {
                    if self.admit(false) {
                        self.reject(
                            ErrorCode::UnsupportedFrame,
                            "binary frames are not supported; send JSON text",
                        );
                    }
                }
                Incoming::Control => {
                    // tungstenite has answered a ping already.
                    self.admit(true);
                }
            }
        }
    }

    /// Checks the authentication deadline (per frame too: a peer that never lets the socket
    /// run dry must not outlive it) and charges the frame to the rate limit. False when the
    /// frame is not to be handled.
    fn admit(&mut self, control_frame: bool) -> bool {
        self.check_auth_deadline();
        if self.connection.is_closing() {
            return false;
        }
        if self.bucket.as_mut().is_none_or(Bucket::take) {
            return true;
        }
        if control_frame {
            // An error frame per excess ping would answer a flood with a flood, and
            // tungstenite has queued the pong already: a peer this far past its limit with
            // control frames is not a chat client.
            log::warn!(
                "connection {}: control frames past the rate limit; closing with 1008",
                self.connection.id()
            );
            self.ctx.metrics.rejected(ErrorCode::RateLimited);
            self.connection
                .abort(CloseCode::Policy, "too many control frames");
        } else {
            self.reject(
                ErrorCode::RateLimited,
                "too many frames; slow down and try again",
            );
        }
        false
    }

    /// Closes (1008) a connection that has not authenticated by its deadline.
    fn check_auth_deadline(&mut self) {
        if !self.connection.is_closing()
            && self
                .auth_deadline
                .is_some_and(|deadline| Instant::now() >= deadline)
        {
            log::info!(
                "connection {}: no valid token within {:?}; closing with 1008",
                self.connection.id(),
                self.ctx.config.handshake_timeout
            );
            self.ctx.metrics.rejected(ErrorCode::Unauthorized);
            self.connection
                .close(CloseCode::Policy, "no valid token in time");
        }
    }

    /// For a connection of a user account, once [`RECHECK`] has passed: checks its credential
    /// again, and closes the connection (1008) when it no longer stands for the same user.
    fn check_credential(&mut self) {
        let Some((token, principal, at)) = self.recheck.take() else {
            return;
        };
        if self.connection.is_closing() {
            return;
        }
        if Instant::now() < at {
            self.recheck = Some((token, principal, at));
            return;
        }
        let now = self
            .ctx
            .auth
            .check_either(token.as_deref(), self.upgrade_cookie.as_deref());
        if matches!(&now, Ok(Some(current)) if *current == principal) {
            let next = Instant::now() + RECHECK;
            self.connection.set_deadline(Some(next));
            self.recheck = Some((token, principal, next));
            return;
        }
        log::info!(
            "connection {}: the credential of {} was revoked; closing with 1008",
            self.connection.id(),
            principal.name()
        );
        self.connection.set_deadline(None);
        self.ctx.metrics.rejected(ErrorCode::Unauthorized);
        self.connection
            .close(CloseCode::Policy, "credentials revoked");
    }

    fn on_text(&mut self, text: &str) {
        let frame = match decode_client_frame(text) {
            Ok(frame) => frame,
            Err(e) => {
                self.reject(e.code, &e.message);
                return;
            }
        };
        let session = match (frame, &self.session) {
            (ClientFrame::Connect(data), None) => return self.connect(&data),
            (ClientFrame::Connect(_), Some(_)) => {
                self.reject(
                    ErrorCode::AlreadyConnected,
                    "this connection already sent connect",
                );
                return;
            }
            (_, None) => {
                self.reject(ErrorCode::NotConnected, "the first frame must be connect");
                return;
            }
            (frame, Some(session)) => (frame, session.clone()),
        };
        match session {
            (ClientFrame::Message(m), session) => self.steer(
                &session,
                Ask::Message {
                    text: m.text,
                    attachments: m.attachments,
                    client_id: m.client_id,
                },
            ),
            (ClientFrame::Edit(e), session) => self.steer(
                &session,
                Ask::Edit {
                    turn: e.turn_id,
                    text: e.text,
                    attachments: e.attachments,
                    client_id: e.client_id,
                },
            ),
            (ClientFrame::Regenerate(r), session) => self.steer(
                &session,
                Ask::Regenerate {
                    turn: r.turn_id,
                    client_id: r.client_id,
                },
            ),
            (ClientFrame::Switch(w), session) => {
                self.steer(&session, Ask::Switch { turn: w.turn_id });
            }
            (ClientFrame::Cancel {}, session) => session.cancel(),
            (ClientFrame::Approve(answer), session) => {
                if !session.approve(&answer.call_id, answer.allow, answer.always) {
                    let call: String = answer.call_id.chars().take(100).collect();
                    self.reject(
                        ErrorCode::NotWaiting,
                        &format!("no tool call {call:?} is waiting for approval"),
                    );
                }
            }
            (ClientFrame::Elicit(answer), session) => self.elicit(&session, answer),
            (ClientFrame::Connect(_), _) => {}
        }
    }

    /// Hands an `elicit` to the session: an answer that does not fit the form is refused with
    /// `invalid_message` (the request still waits), one for no waiting request with
    /// `not_waiting`.
    fn elicit(&mut self, session: &Session, answer: ElicitData) {
        let request: String = answer.request_id.chars().take(100).collect();
        match session.elicit(&answer) {
            Ok(()) => {}
            Err(ElicitRefusal::NotWaiting) => self.reject(
                ErrorCode::NotWaiting,
                &format!("no elicitation {request:?} is waiting for an answer"),
            ),
            Err(ElicitRefusal::Invalid(why)) => self.reject(
                ErrorCode::InvalidMessage,
                &format!("the answer to {request:?} does not fit its form: {why}"),
            ),
        }
    }

    /// Hands a `message`, `edit`, `regenerate` or `switch` to the session, unless its text is
    /// too long, the server is draining, or the store refuses writes. A `client_id` seen
    /// before gets `status` `duplicate`, to this connection only.
    fn steer(&mut self, session: &Session, ask: Ask) {
        // A retry of a frame that started a turn is answered first, whatever else holds now.
        if let Some(turn) = ask.client_id().and_then(|id| session.started_by(id)) {
            return self.duplicate(session, turn);
        }
        let limit = self.ctx.config.max_text_chars;
        let text = match &ask {
            Ask::Message { text, .. } | Ask::Edit { text, .. } => text.as_str(),
            Ask::Regenerate { .. } | Ask::Switch { .. } => "",
        };
        if text.chars().count() > limit {
            self.reject(
                ErrorCode::TooLarge,
                &format!("text is longer than {limit} characters"),
            );
        } else if self.ctx.shutdown.draining() {
            self.reject(ErrorCode::ServerBusy, "the server is shutting down");
        } else if session.store_failing() {
            self.reject(
                ErrorCode::Storage,
                "the server cannot write to its store right now (is its disk full?); \
                 try again later",
            );
        } else {
            match session.submit(&ask) {
                Ok(Submitted::Done) => {}
                Ok(Submitted::Duplicate(turn)) => self.duplicate(session, turn),
                Err((code, why)) => self.reject(code, &why),
            }
        }
    }

    /// Tells this connection that its frame's `client_id` started turn `turn` already.
    fn duplicate(&mut self, session: &Session, turn: TurnId) {
        let frame = ServerFrame::Status(StatusData {
            code: StatusCode::Duplicate,
            message: format!("turn {turn} was started by this client_id already"),
            turn_id: Some(turn),
            ..StatusData::default()
        });
        let text: WireText = encode(&frame, Some(session.id()), None).into();
        self.connection.send(&[text]);
    }

    fn connect(&mut self, data: &ConnectData) {
        if std::mem::replace(&mut self.connected, true) {
            return;
        }
        let token = data.token.as_deref().or(self.upgrade_token.as_deref());
        let principal = match self
            .ctx
            .auth
            .check_either(token, self.upgrade_cookie.as_deref())
        {
            Ok(principal) => principal.unwrap_or_else(Principal::local),
            Err(refused) => {
                let message = match refused {
                    Refused::Missing => "this server requires a token",
                    Refused::Wrong => "the token is not valid",
                };
                self.reject(ErrorCode::Unauthorized, message);
                self.connection.close(CloseCode::Policy, "unauthorized");
                return;
            }
        };
        if self.ctx.auth.required() {
            log::info!(
                "connection {}: authenticated as {}",
                self.connection.id(),
                principal.name()
            );
        }
        // Authenticated: the connection gets the server's full limits and no deadline, and
        // leaves the places kept for those waiting to authenticate.
        if self.auth_deadline.take().is_some() {
            if !self.place.authenticate() {
                // Let go, a moment ago, to make room for a newer connection: it is closing.
                return;
            }
            self.connection
                .limit_frames(self.ctx.config.max_frame_bytes);
            self.connection.set_deadline(None);
        }
        if principal.user_id().is_some() {
            let next = Instant::now() + RECHECK;
            self.connection.set_deadline(Some(next));
            self.recheck = Some((token.map(str::to_owned), principal.clone(), next));
        }
        let subscriber = Subscriber {
            id: self.connection.id(),
            sink: self.connection.outbound().clone(),
        };
        match self.ctx.sessions.connect(data, &principal, subscriber) {
            Ok(attachment) => {
                self.replaying = attachment.replaying;
                self.session = Some(attachment.session);
            }
            Err(refusal) => {
                self.reject(refusal.code, &refusal.message);
                match refusal.code {
                    ErrorCode::Unauthorized => {
                        self.connection.close(CloseCode::Policy, "unauthorized");
                    }
                    // A `connect` the server cannot honour (an unknown model): nothing else
                    // may follow it on this connection.
                    ErrorCode::InvalidMessage => {
                        self.connection.close(CloseCode::Policy, "invalid connect");
                    }
                    _ => self.connection.close(CloseCode::Again, "server busy"),
                }
            }
        }
    }

    /// Answers a bad client frame with an `error` frame; the connection stays open.
    fn reject(&mut self, code: ErrorCode, message: &str) {
        self.ctx.metrics.rejected(code);
        log::debug!(
            "connection {}: rejected frame: {}: {message}",
            self.connection.id(),
            code.as_str()
        );
        let frame = ServerFrame::client_error(code, message);
        let text: WireText = encode(&frame, self.session.as_ref().map(Session::id), None).into();
        self.connection.send(&[text]);
    }

    /// Sends the next stretch of the replay; the last one makes the connection live.
    fn replay_step(&mut self) {
        let Some(session) = self.session.clone() else {
            self.replaying = false;
            return;
        };
        match session.replay(self.connection.id()) {
            Ok(step) => {
                Metrics::add(&self.ctx.metrics.events_replayed, step.events as u64);
                self.replaying = !step.done;
            }
            Err(e) => {
                log::error!("connection {}: replay failed: {e}", self.connection.id());
                self.replaying = false;
                self.connection
                    .close(CloseCode::Error, "the conversation could not be read");
            }
        }
    }
}
