//! Sessions: `SessionManager` (the map from id to session, creation, resume, expiry), `Session`
//! (its bot, knowledge, event log, current turn and attached subscribers) and `EventLog`.
//!
//! With a journal, an event reaches subscribers (and replays) only once the store has committed
//! it: `push_event` logs and submits it, and the journal's acknowledgement (`release`) queues
//! every newly durable event for each subscriber. Without a journal, events are released at
//! once.
//!
//! Depends on `bot`, `journal`, `store`, `knowledge`, `cancel`, `config`, `metrics` and
//! `protocol`. A subscriber is anything with a bounded channel and a way to be woken; this file
//! never learns that it is a WebSocket.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;

use crate::auth::Principal;
use crate::bot::{Bot, Engine, Turn, TurnEvents, interrupted};
use crate::cancel::CancelFlag;
use crate::config::Config;
use crate::journal::{Durable, Journal};
use crate::knowledge::Knowledge;
use crate::metrics::{Metrics, Outcome};
use crate::model::{ChatMessage, Role};
use crate::protocol::{
    ConnectData, ErrorCode, HistoryRole, ServerEnvelope, ServerFrame, SessionId, StatusCode,
    StatusData, TurnId, encode,
};
use crate::store::{StoredSession, WriteOp};

/// How often (in events) a session asks the store to forget events past its log's capacity.
const TRIM_EVERY: u64 = 256;

/// A frame ready for the wire, shared by the event log and every subscriber it goes to.
pub type WireText = Arc<str>;

/// What a session hands to one subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A frame to send.
    Text(WireText),
    /// Close the connection, for this reason, after the frames before it.
    Close(CloseReason),
}

/// Why a session closes one of its subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer connection took its place past the per-session limit.
    TakenOver,
}

/// Wakes a subscriber that sleeps until it has something to send.
pub trait Notify: Send + Sync {
    /// Makes the subscriber look at its channel soon. Cheap, and never blocks.
    fn notify(&self);
}

/// One attached connection as the session sees it: a bounded channel and its wake-up.
pub struct Subscriber {
    /// Unique for the server's life; used to detach.
    pub id: u64,
    /// Where frames go. Dropping it tells the subscriber that the session let go of it.
    pub sender: Sender<Delivery>,
    /// Called after each send.
    pub notify: Arc<dyn Notify>,
    /// Deliveries queued at most; a subscriber that falls further behind is dropped.
    pub capacity: usize,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// Queues a delivery and wakes the subscriber. False when it cannot keep up (its queue is
    /// full) or is gone: the caller then drops it.
    fn deliver(&self, delivery: Delivery) -> bool {
        if self.sender.len() >= self.capacity {
            log::warn!("subscriber {}: queue full, detaching it", self.id);
            return false;
        }
        match self.sender.try_send(delivery) {
            Ok(()) => {
                self.notify.notify();
                true
            }
            Err(TrySendError::Full(_)) => {
                log::warn!("subscriber {}: queue full, detaching it", self.id);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// What a successful `connect` gives the connection.
#[derive(Debug)]
pub struct Attachment {
    /// The session it is now attached to.
    pub session: Session,
    /// Frames to send before anything from the subscriber channel: `session_info`, `ready`,
    /// maybe `status gap`, then the replayed events.
    pub greeting: Vec<WireText>,
    /// How many of the greeting's frames are replayed events.
    pub replayed: usize,
}

/// A refused `connect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The section 7 code.
    pub code: ErrorCode,
    /// What to tell the client.
    pub message: String,
}

/// The retained events of one session, for replay.
#[derive(Debug)]
pub struct EventLog {
    events: VecDeque<(u64, WireText)>,
    next_seq: u64,
    capacity: usize,
}

impl EventLog {
    /// An empty log that keeps the last `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        EventLog {
            events: VecDeque::new(),
            next_seq: 1,
            capacity: capacity.max(1),
        }
    }

    /// A log holding `events` (`seq`, text), oldest first, as loaded from the store.
    pub fn restore(capacity: usize, events: Vec<(u64, WireText)>) -> Self {
        let mut log = EventLog::new(capacity);
        log.next_seq = events.last().map_or(1, |(seq, _)| seq + 1);
        let skip = events.len().saturating_sub(log.capacity);
        log.events = events.into_iter().skip(skip).collect();
        log
    }

    /// The `seq` the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends the event numbered [`next_seq`](Self::next_seq), dropping the oldest past the
    /// capacity.
    pub fn push(&mut self, text: WireText) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back((self.next_seq, text));
        self.next_seq += 1;
    }

    /// The events after `last_seq` up to `up_to`, and the range of those no longer retained,
    /// if any.
    pub fn since(&self, last_seq: u64, up_to: u64) -> (Option<(u64, u64)>, Vec<WireText>) {
        let first = self.first_retained();
        let gap = (last_seq + 1 < first).then(|| (last_seq + 1, (first - 1).min(up_to)));
        let events = self
            .range(last_seq.max(first - 1), up_to)
            .cloned()
            .collect();
        (gap, events)
    }

    /// The `seq` of the oldest retained event (`next_seq` when there is none).
    fn first_retained(&self) -> u64 {
        self.events.front().map_or(self.next_seq, |(seq, _)| *seq)
    }

    /// The retained events numbered `after + 1 ..= up_to`.
    fn range(&self, after: u64, up_to: u64) -> impl DoubleEndedIterator<Item = &WireText> {
        let skip = (after + 1).saturating_sub(self.first_retained());
        let take = up_to.saturating_sub(after);
        self.events
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(usize::try_from(take).unwrap_or(usize::MAX))
            .map(|(_, text)| text)
    }
}

/// A cheap-to-clone handle to one session.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

struct SessionInner {
    id: SessionId,
    user_id: Option<String>,
    /// Who may attach to it, when tokens are required.
    owner: Option<Principal>,
    knowledge: Knowledge,
    metrics: Arc<Metrics>,
    max_subscribers: usize,
    event_log_capacity: u64,
    /// Where writes go, when the server persists sessions.
    journal: Option<Journal>,
    /// This session as the journal's acknowledgement target.
    ack: Arc<dyn Durable>,
    /// Held for bookkeeping only: never across IO, a model call, a tool call or a blocking send.
    state: Mutex<SessionState>,
}

/// What the session lock protects.
struct SessionState {
    bot: Bot,
    log: EventLog,
    /// The highest `seq` the store has committed (every `seq`, when there is no journal); only
    /// events up to it are delivered or replayed.
    durable_seq: u64,
    next_turn: u64,
    turn: Option<CurrentTurn>,
    subscribers: Vec<Attached>,
    /// When the session last had a subscriber or an event; expiry counts from here.
    idle_since: Instant,
    /// Set when the session is discarded; a closed session accepts nothing.
    closed: bool,
}

impl SessionState {
    /// The state of a session with no turn and no subscriber; everything in `log` is durable.
    fn new(bot: Bot, log: EventLog, idle_since: Instant) -> Self {
        SessionState {
            durable_seq: log.next_seq() - 1,
            bot,
            log,
            next_turn: 1,
            turn: None,
            subscribers: Vec::new(),
            idle_since,
            closed: false,
        }
    }
}

/// A subscriber and the highest `seq` queued to it.
struct Attached {
    subscriber: Subscriber,
    sent_seq: u64,
}

struct CurrentTurn {
    id: TurnId,
    cancel: CancelFlag,
    text: String,
    started: Instant,
}

/// The journal's handle on a session: a weak one, so that a pending batch does not keep a
/// discarded session alive.
struct SessionAck(Weak<SessionInner>);

impl Durable for SessionAck {
    fn durable(&self, seq: u64) {
        if let Some(inner) = self.0.upgrade() {
            let session = Session { inner };
            let mut state = session.inner.state.lock();
            session.release(&mut state, seq);
        }
    }
}

/// A new turn, ready for a worker thread.
#[derive(Debug)]
pub struct TurnStart {
    /// The agent loop to run.
    pub turn: Turn,
    /// Where its events go.
    pub events: SessionTurn,
    /// Its cancel flag.
    pub cancel: CancelFlag,
    /// The session's knowledge, for the tools.
    pub knowledge: Knowledge,
}

impl Session {
    /// A new session for a `connect`, seeded with its personality and history.
    fn create(
        id: SessionId,
        data: &ConnectData,
        owner: Option<Principal>,
        manager: &ManagerInner,
    ) -> Self {
        if let Some(journal) = &manager.journal {
            let (user_id, personality) = (data.user_id.clone(), data.personality.clone());
            journal.submit(
                WriteOp::CreateSession {
                    id: id.clone(),
                    user_id,
                    personality,
                    owner: owner.as_ref().map(|owner| owner.as_str().to_owned()),
                },
                None,
            );
        }
        let bot = Bot::new(manager.engine.clone(), data.personality.clone(), Vec::new());
        let log = EventLog::new(manager.config.event_log_capacity);
        let state = SessionState::new(bot, log, Instant::now());
        let session = Self::build(id, data.user_id.clone(), owner, Vec::new(), state, manager);
        let seed: Vec<ChatMessage> = data
            .history
            .iter()
            .flatten()
            .map(|entry| {
                let role = match entry.role {
                    HistoryRole::User => Role::User,
                    HistoryRole::Assistant => Role::Assistant,
                };
                ChatMessage::text(role, entry.content.clone())
            })
            .collect();
        if !seed.is_empty() {
            let mut state = session.inner.state.lock();
            session.commit(&mut state, seed);
        }
        session
    }

    /// A session as the store held it.
    fn restore(stored: StoredSession, manager: &ManagerInner) -> Self {
        let bot = Bot::restore(
            manager.engine.clone(),
            stored.personality,
            stored.first_message,
            stored.messages,
        );
        let events = stored
            .events
            .into_iter()
            .map(|(seq, body)| (seq, WireText::from(body)))
            .collect();
        let log = EventLog::restore(manager.config.event_log_capacity, events);
        let idle_since = Instant::now()
            .checked_sub(stored.idle_for)
            .unwrap_or_else(Instant::now);
        let owner = stored.owner.map(Principal::from_stored);
        let state = SessionState::new(bot, log, idle_since);
        Self::build(
            stored.id,
            stored.user_id,
            owner,
            stored.notes,
            state,
            manager,
        )
    }

    fn build(
        id: SessionId,
        user_id: Option<String>,
        owner: Option<Principal>,
        notes: Vec<String>,
        state: SessionState,
        manager: &ManagerInner,
    ) -> Self {
        let knowledge = match &manager.journal {
            Some(journal) => Knowledge::persistent(journal.clone(), id.clone(), notes),
            None => Knowledge::new(),
        };
        let inner = Arc::new_cyclic(|weak: &Weak<SessionInner>| SessionInner {
            id,
            user_id,
            owner,
            knowledge,
            metrics: manager.metrics.clone(),
            max_subscribers: manager.config.max_connections_per_session.max(1),
            event_log_capacity: manager.config.event_log_capacity.max(1) as u64,
            journal: manager.journal.clone(),
            ack: Arc::new(SessionAck(weak.clone())),
            state: Mutex::new(state),
        });
        Session { inner }
    }

    /// The session's id.
    pub fn id(&self) -> &SessionId {
        &self.inner.id
    }

    /// The `user_id` the session was created with.
    pub fn user_id(&self) -> Option<&str> {
        self.inner.user_id.as_deref()
    }

    /// The session's short-term knowledge.
    pub fn knowledge(&self) -> &Knowledge {
        &self.inner.knowledge
    }

    /// The `seq` of the newest event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.inner.state.lock().log.next_seq() - 1
    }

    /// True while a turn is in flight.
    pub fn has_turn(&self) -> bool {
        self.inner.state.lock().turn.is_some()
    }

    /// How many subscribers are attached now.
    pub fn subscriber_count(&self) -> usize {
        self.inner.state.lock().subscribers.len()
    }

    /// A copy of the conversation so far.
    pub fn history(&self) -> Vec<ChatMessage> {
        self.inner.state.lock().bot.history().to_vec()
    }

    /// Opens a turn for a user message: cancels the turn in flight (its `status cancelled`
    /// comes first), logs `user_message`, and returns the turn for a worker to run. `None`
    /// when the session was discarded meanwhile.
    pub fn submit(&self, text: &str) -> Option<TurnStart> {
        let mut state = self.inner.state.lock();
        if state.closed {
            return None;
        }
        self.cancel_locked(&mut state);
        let turn_id = TurnId(state.next_turn);
        state.next_turn += 1;
        self.push_event(
            &mut state,
            ServerFrame::UserMessage {
                turn_id,
                text: text.to_owned(),
            },
        );
        let cancel = CancelFlag::new();
        state.turn = Some(CurrentTurn {
            id: turn_id,
            cancel: cancel.clone(),
            text: text.to_owned(),
            started: Instant::now(),
        });
        let turn = state.bot.start_turn(turn_id, text);
        Metrics::bump(&self.inner.metrics.turns_started);
        Some(TurnStart {
            turn,
            events: SessionTurn {
                session: self.clone(),
                turn_id,
            },
            cancel,
            knowledge: self.inner.knowledge.clone(),
        })
    }

    /// Stops the turn in flight, if any, and logs its `status cancelled`.
    pub fn cancel(&self) {
        let mut state = self.inner.state.lock();
        self.cancel_locked(&mut state);
    }

    /// Detaches the subscriber `id`, if it is still attached.
    pub fn detach(&self, id: u64) {
        let mut state = self.inner.state.lock();
        let before = state.subscribers.len();
        state
            .subscribers
            .retain(|attached| attached.subscriber.id != id);
        if state.subscribers.len() < before && state.subscribers.is_empty() {
            state.idle_since = Instant::now();
        }
    }

    fn cancel_locked(&self, state: &mut SessionState) {
        let Some(turn) = state.turn.take() else {
            return;
        };
        turn.cancel.cancel();
        let status = ServerFrame::status(
            StatusCode::Cancelled,
            "the turn was cancelled",
            Some(turn.id),
        );
        self.push_event(state, status);
        self.commit(state, interrupted(&turn.text, "(the reply was cancelled)"));
        let took = turn.started.elapsed();
        self.inner.metrics.turn_ended(Outcome::Cancelled, took);
    }

    /// Numbers an event, logs it, and writes it to the store (or, with no store, releases it
    /// at once); the one place events are made.
    fn push_event(&self, state: &mut SessionState, frame: ServerFrame) {
        let seq = state.log.next_seq();
        let text: WireText = encode(&frame, Some(&self.inner.id), Some(seq)).into();
        state.log.push(text.clone());
        state.idle_since = Instant::now();
        Metrics::bump(&self.inner.metrics.events);
        let Some(journal) = &self.inner.journal else {
            self.release(state, seq);
            return;
        };
        let session = self.inner.id.clone();
        let ack = Some((self.inner.ack.clone(), seq));
        journal.submit(
            WriteOp::Event {
                session: session.clone(),
                seq,
                body: text,
            },
            ack,
        );
        let capacity = self.inner.event_log_capacity;
        if seq.is_multiple_of(TRIM_EVERY) && seq > capacity {
            journal.submit(
                WriteOp::TrimEvents {
                    session,
                    below: seq + 1 - capacity,
                },
                None,
            );
        }
    }

    /// Marks events up to `seq` durable and queues for each subscriber every durable event it
    /// has not had yet. Subscribers that cannot keep up are dropped here.
    fn release(&self, state: &mut SessionState, seq: u64) {
        if seq <= state.durable_seq {
            return;
        }
        state.durable_seq = seq;
        let SessionState {
            log, subscribers, ..
        } = state;
        let metrics = &self.inner.metrics;
        let first_retained = log.first_retained();
        subscribers.retain_mut(|attached| {
            if attached.sent_seq + 1 < first_retained {
                log::warn!(
                    "subscriber {}: fell behind the event log; detaching it",
                    attached.subscriber.id
                );
                return false;
            }
            let mut sent = 0;
            let delivered = log.range(attached.sent_seq, seq).all(|text| {
                sent += 1;
                attached.subscriber.deliver(Delivery::Text(text.clone()))
            });
            Metrics::add(&metrics.events_sent, sent);
            attached.sent_seq = seq;
            delivered
        });
    }

    /// Forgets the conversation (the system prompt stays), in memory and in the store, after
    /// the model rejected it as malformed. The store only raises the session's low-water mark,
    /// so that a restart loads the same, shorter conversation.
    fn reset_history(&self, state: &mut SessionState) {
        state.bot.clear_history();
        if let Some(journal) = &self.inner.journal {
            journal.submit(
                WriteOp::TrimMessages {
                    session: self.inner.id.clone(),
                    below: state.bot.first_index(),
                },
                None,
            );
        }
        log::info!(
            "session {}: history cleared after the model rejected it",
            self.inner.id.short()
        );
    }

    /// Adds messages to the conversation, and to the store.
    fn commit(&self, state: &mut SessionState, transcript: Vec<ChatMessage>) {
        let first = state.bot.end_index();
        let oldest = state.bot.first_index();
        if let Some(journal) = &self.inner.journal {
            let session = self.inner.id.clone();
            journal.submit(
                WriteOp::Messages {
                    session,
                    first,
                    messages: transcript.clone(),
                },
                None,
            );
        }
        state.bot.commit(transcript);
        let below = state.bot.first_index();
        if let (Some(journal), true) = (&self.inner.journal, below > oldest) {
            journal.submit(
                WriteOp::TrimMessages {
                    session: self.inner.id.clone(),
                    below,
                },
                None,
            );
        }
    }

    /// After a restart: sets the turn counter past the log's last turn, and closes that turn
    /// with an `error` if the restart cut it off, so that every turn is closed exactly once.
    fn settle_after_restart(&self) {
        let mut state = self.inner.state.lock();
        let parsed: Vec<ServerEnvelope> = state
            .log
            .range(0, u64::MAX)
            .rev()
            .filter_map(|text| serde_json::from_str(text).ok())
            .collect();
        let Some(turn_id) = parsed.first().and_then(|last| last.frame.turn_id()) else {
            return;
        };
        state.next_turn = turn_id.0 + 1;
        if parsed[0].frame.closes_turn() {
            return;
        }
        let text = parsed
            .iter()
            .find_map(|envelope| match &envelope.frame {
                ServerFrame::UserMessage { turn_id: id, text } if *id == turn_id => {
                    Some(text.clone())
                }
                _ => None,
            })
            .unwrap_or_default();
        let message = "the server restarted before this turn finished";
        let frame = ServerFrame::Error {
            turn_id: Some(turn_id),
            code: ErrorCode::Internal,
            message: message.into(),
        };
        self.push_event(&mut state, frame);
        self.commit(
            &mut state,
            interrupted(&text, &format!("(no reply: {message})")),
        );
        log::info!(
            "session {}: closed turn {turn_id}, cut off by a restart",
            self.inner.id.short()
        );
    }

    /// Attaches a subscriber, taking over from the oldest past the limit, and builds its
    /// greeting. Called with the map lock held.
    fn attach(
        &self,
        subscriber: Subscriber,
        is_new: bool,
        last_seq: Option<u64>,
        ready: &ServerFrame,
    ) -> Attachment {
        let mut state = self.inner.state.lock();
        while state.subscribers.len() >= self.inner.max_subscribers {
            let oldest = state.subscribers.remove(0).subscriber;
            let status = ServerFrame::status(
                StatusCode::TakenOver,
                "another connection took this one's place",
                None,
            );
            let text = encode(&status, Some(&self.inner.id), None).into();
            if oldest.deliver(Delivery::Text(text)) {
                oldest.deliver(Delivery::Close(CloseReason::TakenOver));
            }
            log::info!(
                "session {}: subscriber {} taken over",
                self.inner.id.short(),
                oldest.id
            );
        }
        let durable = state.durable_seq;
        // What the subscriber has (or is about to get in the greeting): everything durable. A
        // client claiming more than was ever sent is believed up to the last event.
        let sent_seq = last_seq.map_or(durable, |seen| {
            seen.clamp(durable, state.log.next_seq() - 1)
        });
        state.subscribers.push(Attached {
            subscriber,
            sent_seq,
        });
        let id = Some(&self.inner.id);
        let info = ServerFrame::SessionInfo {
            session_id: self.inner.id.clone(),
            is_new,
            reconnected: !is_new,
        };
        let mut greeting: Vec<WireText> = vec![
            encode(&info, id, None).into(),
            encode(ready, id, None).into(),
        ];
        let mut replayed = 0;
        if let (false, Some(last_seq)) = (is_new, last_seq) {
            let (gap, events) = state.log.since(last_seq, durable);
            if let Some((from, to)) = gap {
                let status = ServerFrame::Status(StatusData {
                    code: StatusCode::Gap,
                    message: format!("events {from} to {to} are no longer retained"),
                    from: Some(from),
                    to: Some(to),
                    ..StatusData::default()
                });
                greeting.push(encode(&status, id, None).into());
            }
            replayed = events.len();
            greeting.extend(events);
        }
        Attachment {
            session: self.clone(),
            greeting,
            replayed,
        }
    }
}

/// The session's side of one running turn: what [`Turn::run`] emits through.
#[derive(Clone, Debug)]
pub struct SessionTurn {
    session: Session,
    turn_id: TurnId,
}

impl SessionTurn {
    /// The turn's id.
    pub fn turn_id(&self) -> TurnId {
        self.turn_id
    }

    /// Closes the turn with an error event, if it is still current, keeping the conversation
    /// well formed. Used when the turn's worker could not start or crashed.
    pub fn fail(&self, code: ErrorCode, message: &str) {
        let session = &self.session;
        let mut state = session.inner.state.lock();
        let Some(turn) = state.turn.take_if(|turn| turn.id == self.turn_id) else {
            return;
        };
        let frame = ServerFrame::Error {
            turn_id: Some(self.turn_id),
            code,
            message: message.to_owned(),
        };
        session.push_event(&mut state, frame);
        session.commit(
            &mut state,
            interrupted(&turn.text, &format!("(no reply: {message})")),
        );
        let took = turn.started.elapsed();
        session.inner.metrics.turn_ended(Outcome::Error, took);
    }
}

impl TurnEvents for SessionTurn {
    fn emit(&self, frame: ServerFrame) -> bool {
        let mut state = self.session.inner.state.lock();
        let current = state
            .turn
            .as_ref()
            .is_some_and(|turn| turn.id == self.turn_id);
        if current {
            self.session.push_event(&mut state, frame);
        }
        current
    }

    fn close(&self, frame: ServerFrame, transcript: Vec<ChatMessage>) -> bool {
        self.finish(frame, transcript, false)
    }

    fn close_resetting(&self, frame: ServerFrame, transcript: Vec<ChatMessage>) -> bool {
        self.finish(frame, transcript, true)
    }
}

impl SessionTurn {
    /// Closes the turn, if it is still current: sends `frame` and commits `transcript`, after
    /// clearing the conversation when `reset_history` is set.
    fn finish(
        &self,
        frame: ServerFrame,
        transcript: Vec<ChatMessage>,
        reset_history: bool,
    ) -> bool {
        let session = &self.session;
        let mut state = session.inner.state.lock();
        let Some(turn) = state.turn.take_if(|turn| turn.id == self.turn_id) else {
            return false;
        };
        let outcome = match frame {
            ServerFrame::Message { .. } => Outcome::Message,
            _ => Outcome::Error,
        };
        session
            .inner
            .metrics
            .turn_ended(outcome, turn.started.elapsed());
        session.push_event(&mut state, frame);
        if reset_history {
            session.reset_history(&mut state);
        }
        session.commit(&mut state, transcript);
        true
    }
}

/// The map of live sessions, and the rules for creating, resuming and discarding them. A
/// cheap-to-clone handle.
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<ManagerInner>,
}

impl fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManager")
            .field("sessions", &self.len())
            .finish_non_exhaustive()
    }
}

struct ManagerInner {
    /// Locked only to look up, insert or remove; the order is always map, then session.
    sessions: Mutex<HashMap<SessionId, Session>>,
    config: Arc<Config>,
    engine: Engine,
    metrics: Arc<Metrics>,
    journal: Option<Journal>,
}

impl SessionManager {
    /// An empty map for sessions that run on `engine`, persisted through `journal` if given.
    pub fn new(
        config: Arc<Config>,
        engine: Engine,
        metrics: Arc<Metrics>,
        journal: Option<Journal>,
    ) -> Self {
        let sessions = Mutex::new(HashMap::new());
        SessionManager {
            inner: Arc::new(ManagerInner {
                sessions,
                config,
                engine,
                metrics,
                journal,
            }),
        }
    }

    /// Brings back the sessions the store held at start, closing any turn a restart cut off.
    pub fn restore(&self, stored: Vec<StoredSession>) {
        let count = stored.len();
        for stored in stored {
            let session = Session::restore(stored, &self.inner);
            session.settle_after_restart();
            self.inner
                .sessions
                .lock()
                .insert(session.id().clone(), session);
        }
        if count > 0 {
            log::info!("sessions: restored {count} from the store");
        }
    }

    /// The journal, when sessions are persisted.
    pub fn journal(&self) -> Option<&Journal> {
        self.inner.journal.as_ref()
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.inner.sessions.lock().len()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The session `id`, if it is live.
    pub fn get(&self, id: &SessionId) -> Option<Session> {
        self.inner.sessions.lock().get(id).cloned()
    }

    /// The engine every session runs on.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Creates or resumes a session as PROTOCOL.md section 6 says, and attaches `subscriber`
    /// to it. An id the server does not hold (never issued, or expired) yields a new session.
    ///
    /// # Errors
    ///
    /// `unauthorized` when the session belongs to another principal; `server_busy` when a new
    /// session would pass the session limit, or no random id could be drawn.
    pub fn connect(
        &self,
        data: &ConnectData,
        principal: Option<Principal>,
        subscriber: Subscriber,
    ) -> Result<Attachment, Refusal> {
        let ready = ServerFrame::Ready {
            tools_loaded: self.inner.engine.tools.len(),
            tools: self.inner.engine.tools.names(),
            model: self.inner.engine.model.name().to_owned(),
        };
        let mut sessions = self.inner.sessions.lock();
        let known = data.session_id.as_deref().and_then(SessionId::parse);
        if let Some(session) = known.and_then(|id| sessions.get(&id)) {
            if session
                .inner
                .owner
                .as_ref()
                .is_some_and(|owner| Some(owner) != principal.as_ref())
            {
                log::warn!(
                    "session {}: refused a resume by another principal",
                    session.id().short()
                );
                let message = "this session belongs to someone else".into();
                return Err(Refusal {
                    code: ErrorCode::Unauthorized,
                    message,
                });
            }
            log::info!(
                "session {}: resumed from seq {:?}",
                session.id().short(),
                data.last_seq
            );
            return Ok(session.attach(subscriber, false, data.last_seq, &ready));
        }
        if sessions.len() >= self.inner.config.max_sessions {
            let message = "the server holds as many sessions as it may".into();
            return Err(Refusal {
                code: ErrorCode::ServerBusy,
                message,
            });
        }
        let id = new_session_id().map_err(|e| Refusal {
            code: ErrorCode::ServerBusy,
            message: format!("no session id could be drawn: {e}"),
        })?;
        let session = Session::create(id.clone(), data, principal, &self.inner);
        log::info!("session {}: created", id.short());
        sessions.insert(id, session.clone());
        Ok(session.attach(subscriber, true, None, &ready))
    }

    /// Discards every session that has had no subscriber and no event for the session timeout,
    /// cancelling its turn if one is still running, and deletes it from the store. Returns how
    /// many went.
    pub fn reap_expired(&self) -> usize {
        let timeout = self.inner.config.session_timeout;
        let now = Instant::now();
        let mut expired = Vec::new();
        self.inner.sessions.lock().retain(|_, session| {
            let mut state = session.inner.state.lock();
            let idle =
                state.subscribers.is_empty() && now.duration_since(state.idle_since) >= timeout;
            if idle {
                state.closed = true;
                if let Some(turn) = state.turn.take() {
                    turn.cancel.cancel();
                }
                expired.push(session.id().clone());
            }
            !idle
        });
        for id in &expired {
            log::info!("session {}: expired", id.short());
            if let Some(journal) = &self.inner.journal {
                journal.submit(
                    WriteOp::DeleteSession {
                        session: id.clone(),
                    },
                    None,
                );
            }
        }
        expired.len()
    }

    /// How many sessions have a turn in flight.
    pub fn turns_in_flight(&self) -> usize {
        let sessions: Vec<Session> = self.inner.sessions.lock().values().cloned().collect();
        sessions
            .iter()
            .filter(|session| session.inner.state.lock().turn.is_some())
            .count()
    }

    /// Cancels every turn in flight; used at shutdown.
    pub fn cancel_all(&self) {
        let sessions: Vec<Session> = self.inner.sessions.lock().values().cloned().collect();
        for session in sessions {
            session.cancel();
        }
    }
}

/// Draws a new session id from the OS's cryptographic random source.
fn new_session_id() -> Result<SessionId, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(SessionId::from_random_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: u64, capacity: usize) -> EventLog {
        let mut log = EventLog::new(capacity);
        for seq in 1..=n {
            log.push(seq.to_string().into());
        }
        log
    }

    fn texts(events: Vec<WireText>) -> Vec<String> {
        events.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn replays_only_what_follows_last_seq() {
        let log = log_with(5, 10);
        assert_eq!(log.since(3, 5), (None, vec!["4".into(), "5".into()]));
        assert_eq!(texts(log.since(0, 5).1), ["1", "2", "3", "4", "5"]);
        assert_eq!(texts(log.since(0, 3).1), ["1", "2", "3"]);
        assert!(log.since(5, 5).1.is_empty());
        assert!(log.since(99, 5).1.is_empty());
    }

    #[test]
    fn reports_a_gap_when_old_events_are_gone() {
        let log = log_with(10, 4);
        let (gap, events) = log.since(2, 10);
        assert_eq!(gap, Some((3, 6)));
        assert_eq!(texts(events), ["7", "8", "9", "10"]);
        assert_eq!(log.since(6, 10).0, None);
        assert_eq!(log.next_seq(), 11);
        let restored = EventLog::restore(
            4,
            (5..=10).map(|seq| (seq, seq.to_string().into())).collect(),
        );
        assert_eq!(restored.next_seq(), 11);
        assert_eq!(texts(restored.since(0, 10).1), ["7", "8", "9", "10"]);
    }
}
