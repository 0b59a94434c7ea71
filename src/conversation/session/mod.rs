//! Sessions (conversations) while they are live in memory.
//!
//! - `manager.rs`: `SessionManager`, the map of live sessions; creates them, brings them back
//!   from the store on demand, frees idle ones, deletes them.
//! - this file: `Session`, one conversation's live state (bot, knowledge, event tail, current
//!   turn, subscribers) and the operations on it: submit, cancel, attach, replay, release.
//! - `tail.rs`: the in-memory tail of events. `subscribers.rs`: fan-out to connections.
//!   `turn.rs`: the running turn and the one place a turn is closed. `persist.rs`: every store
//!   write. `lease.rs`: the session's part when several instances share the store (who writes
//!   it, and how the others follow).
//!
//! An event reaches subscribers only once the store has committed it: `push_event` numbers,
//! logs and submits it; the journal's acknowledgement (`release`) hands it to every live
//! subscriber's [`Sink`], one batch per subscriber, under the session lock. A session starts
//! its own turns on the server's [`TurnPool`].
//!
//! Depends on: `common::auth`, `common::cancel`, `common::error`, `common::metrics`,
//! `common::protocol`, `conversation::agent`, `conversation::approval`, `conversation::bot`,
//! `conversation::elicitation`, `conversation::journal`, `conversation::quota`,
//! `conversation::worker`, `files`, `model`, `store`, `store::cluster`, `store::tree`,
//! `tools::ask`, `tools::knowledge`.

mod branch;
mod lease;
mod limits;
mod manager;
mod persist;
mod relay;
mod subscribers;
mod tail;
mod turn;

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};

use crate::common::auth::Principal;
use crate::common::cancel::CancelFlag;
use crate::common::metrics::Metrics;
use crate::common::protocol::{
    ElicitData, ErrorCode, ServerFrame, SessionId, StatusCode, StatusData, TurnId, encode,
};
use crate::conversation::agent::Turn;
use crate::conversation::approval::Approvals;
use crate::conversation::bot::{Bot, interrupted};
use crate::conversation::elicitation::{ElicitRefusal, Elicitations};
use crate::conversation::journal::{Durable, Hold};
use crate::conversation::quota::Quotas;
use crate::conversation::worker::TurnPool;
use crate::model::ChatMessage;
use crate::store::{Cluster, ConversationStore, TurnTree};

use crate::tools::knowledge::Knowledge;

pub use branch::{Ask, Refused, Submitted};
pub use lease::Releases;
pub use limits::{Full, TurnLimits, TurnPermit};
pub use manager::{Conversation, ImportRefusal, ImportSlot, Refusal, SessionManager};
pub use persist::{Persist, search_text, turn_mark};
pub use relay::{RELAY_EVERY, Relays};
pub use subscribers::{Attached, CloseReason, Sink, Subscriber};
pub use tail::EventLog;
pub use turn::{CurrentTurn, SessionTurn, TurnStart};

/// A frame ready for the wire, shared by the event tail and every subscriber it goes to.
pub type WireText = Arc<str>;

/// Bytes of events one replay step reads at most.
const REPLAY_PAGE_BYTES: usize = 256 * 1024;

/// The threads turns run on: one pool for the server.
pub type Turns = TurnPool<TurnStart>;

/// What a successful `connect` gives the connection. Its greeting (`session_info`, `ready`,
/// and for a live attach to a streaming turn the `message_delta` that replaces the answer so
/// far) has gone to its sink already, under the session lock, so nothing overtakes it.
#[derive(Debug)]
pub struct Attachment {
    /// The session it is now attached to.
    pub session: Session,
    /// True when the connection must replay (see [`Session::replay`]) before it is live.
    pub replaying: bool,
}

/// One step of a replay; its frames have gone to the subscriber's sink.
#[derive(Debug, Default)]
pub struct ReplayStep {
    /// How many events it sent.
    pub events: usize,
    /// True when the connection has caught up and is live: nothing more to pull.
    pub done: bool,
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
    /// The client's label for its user, from the `connect` that created it.
    user_id: Option<String>,
    /// Who may attach to it and see it.
    owner: Principal,
    knowledge: Knowledge,
    metrics: Arc<Metrics>,
    /// The caps on running turns, shared by every session.
    limits: Arc<TurnLimits>,
    /// Users' daily quotas, checked as each turn starts on its worker.
    quotas: Arc<Quotas>,
    /// Where its turns run.
    turns: Turns,
    max_subscribers: usize,
    persist: Persist,
    /// Where replays read what the tail no longer holds.
    store: Arc<dyn ConversationStore>,
    /// This session as the journal's acknowledgement target.
    ack: Arc<dyn Durable>,
    /// The instances sharing the store, and where a message waiting for the lease sleeps.
    cluster: Arc<dyn Cluster>,
    releases: Arc<Releases>,
    /// Where this session waits for its streamed frames to go to the other instances.
    relays: Arc<Relays>,
    /// Held while the lease changes hands here (taken, let go), never with `state`'s lock
    /// held: those steps do IO.
    lease: Mutex<()>,
    /// True with `--in-memory`: nothing survives a restart anyway, so an event is sent the
    /// moment it is made instead of after the journal has written it (one thread hop less).
    send_before_written: bool,
    /// Held for bookkeeping only: never across IO, a model call, a tool call or a blocking send.
    state: Mutex<SessionState>,
}

impl SessionInner {
    /// Takes the session lock. Every lock of a session goes through here.
    fn lock(&self) -> Locked<'_> {
        let hold = Hold::new();
        Locked {
            state: self.state.lock(),
            _hold: hold,
        }
    }
}

/// The session lock, held. The store writes queued under it are committed only once it is
/// released: its [`Hold`] is dropped after the guard, and committing releases events, which
/// takes session locks (this one among them). So no thread leads a commit while it holds a
/// session's lock.
struct Locked<'a> {
    /// Dropped first: the lock is released before the hold.
    state: MutexGuard<'a, SessionState>,
    _hold: Hold,
}

impl Deref for Locked<'_> {
    type Target = SessionState;

    fn deref(&self) -> &SessionState {
        &self.state
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut SessionState {
        &mut self.state
    }
}

/// What the session lock protects.
struct SessionState {
    bot: Bot,
    log: EventLog,
    /// The highest `seq` the store has committed; the tail keeps every event after it.
    durable_seq: u64,
    /// The highest `seq` handed to subscribers: `durable_seq` when events are written before
    /// they are sent, the newest event with `--in-memory`.
    visible_seq: u64,
    /// The turns so far and the current leaf; the bot holds the leaf's path.
    tree: TurnTree,
    turn: Option<CurrentTurn>,
    subscribers: Vec<Attached>,
    /// Streamed pieces emitted while events before them wait for the store: `(seq of the event
    /// they follow, frame, piece of the answer)`; a `tool_progress` frame has no piece.
    /// Released with those events, in order.
    held: Vec<(u64, WireText, Option<String>)>,
    /// When the session last had a subscriber or an event; eviction counts from here.
    idle_since: Instant,
    /// Set when the session leaves memory or is deleted; a closed session accepts nothing.
    closed: bool,
    /// How far the store holds the session: a new one is [`Saved::No`] until its first
    /// message, which writes it, with any seeded history.
    saved: Saved,
    /// True while this instance holds the conversation's lease and so may write it; always
    /// with a cluster of one. A follower writes nothing (see `lease.rs`).
    holder: bool,
    /// Streamed frames gathered for the other instances sharing the store (see `relay.rs`).
    relay: relay::Relay,
    /// Set while the current turn holds back what it emits (`--in-memory` only: a model that
    /// answers at once has its thoughts sent with its answer); cleared when the turn flushes
    /// or closes.
    holding: bool,
    /// The MCP servers whose sampling requests this conversation allows without asking
    /// (`approve` with `always`); kept in memory only, so forgotten when the session leaves it.
    sampling_allowed: std::collections::BTreeSet<String>,
}

/// How far the store holds a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Saved {
    /// New, and nothing of it is in the store: it is not listed. Its first message writes it.
    No,
    /// New, and its row went to the journal with its first message, whose event has this
    /// `seq`: in the store once that event is durable.
    Queued(u64),
    /// In the store.
    Yes,
}

/// A turn about to open: its text and its place in the tree.
#[derive(Debug)]
struct Opening {
    text: String,
    attachments: Vec<crate::common::protocol::Attachment>,
    parent: u64,
    client_id: Option<String>,
    edit_of: Option<TurnId>,
    regenerate_of: Option<TurnId>,
}

/// The calls of turn `turn_id` whose `approval_request` the tail holds and that have no
/// `tool_result`: `(call_id, name)`, in order.
fn waiting_approvals(log: &EventLog, turn_id: TurnId) -> Vec<(String, String)> {
    let mut waiting: Vec<(String, String)> = Vec::new();
    for (_, text) in log.iter() {
        let Ok(envelope) = serde_json::from_str::<crate::common::protocol::ServerEnvelope>(text)
        else {
            continue;
        };
        match envelope.frame {
            ServerFrame::ApprovalRequest {
                turn_id: turn,
                call_id,
                name,
                ..
            } if turn == turn_id => waiting.push((call_id, name)),
            ServerFrame::ToolResult {
                turn_id: turn,
                call_id,
                ..
            } if turn == turn_id => waiting.retain(|(waiting, _)| *waiting != call_id),
            _ => {}
        }
    }
    waiting
}

/// True when the tail shows the `elicitation_request` or `sampling_request` `request_id` of
/// turn `turn_id` still waiting: no `tool_result` of its call, nor a later request of its
/// call, followed it.
fn request_waits(log: &EventLog, turn_id: TurnId, request_id: &str) -> bool {
    let mut waiting: Option<String> = None;
    for (_, text) in log.iter() {
        let Ok(envelope) = serde_json::from_str::<crate::common::protocol::ServerEnvelope>(text)
        else {
            continue;
        };
        let (turn, asked, call_id) = match envelope.frame {
            ServerFrame::ElicitationRequest {
                turn_id,
                request_id,
                call_id,
                ..
            }
            | ServerFrame::SamplingRequest {
                turn_id,
                request_id,
                call_id,
                ..
            } => (turn_id, Some(request_id), call_id),
            ServerFrame::ToolResult {
                turn_id, call_id, ..
            } => (turn_id, None, call_id),
            _ => continue,
        };
        if turn != turn_id {
            continue;
        }
        if asked.as_deref() == Some(request_id) {
            waiting = Some(call_id);
        } else if waiting.as_ref() == Some(&call_id) {
            waiting = None;
        }
    }
    waiting.is_some()
}

/// The turn the tail shows open: the newest `user_message`'s, unless a frame closed it since.
fn open_turn_in(log: &EventLog) -> Option<TurnId> {
    let mut open = None;
    for (_, text) in log.iter() {
        let Ok(envelope) = serde_json::from_str::<crate::common::protocol::ServerEnvelope>(text)
        else {
            continue;
        };
        if let ServerFrame::UserMessage { turn_id, .. } = envelope.frame {
            open = Some(turn_id);
        } else if envelope.frame.closes_turn() && envelope.frame.turn_id() == open {
            open = None;
        }
    }
    open
}

/// The journal's handle on a session: a weak one, so that a pending batch does not keep an
/// evicted session alive.
struct SessionAck(Weak<SessionInner>);

impl Durable for SessionAck {
    fn durable(&self, seq: u64) {
        if let Some(inner) = self.0.upgrade() {
            let session = Session { inner };
            let mut state = session.inner.lock();
            session.durable(&mut state, seq);
        }
    }
}

/// What a session is built from: new, or as the store held it.
struct Parts {
    id: SessionId,
    user_id: Option<String>,
    owner: Principal,
    bot: Bot,
    notes: Vec<String>,
    log: EventLog,
    tree: TurnTree,
    /// True for a session `connect` just made, which the store does not hold yet.
    unsaved: bool,
    /// True when this instance holds the lease: see [`SessionState::holder`].
    holder: bool,
}

impl Session {
    fn build(parts: Parts, persist: Persist, shared: &manager::Shared) -> Self {
        let knowledge = Knowledge::persistent(Arc::new(persist.clone()), parts.notes);
        let state = SessionState {
            durable_seq: parts.log.last_seq(),
            visible_seq: parts.log.last_seq(),
            bot: parts.bot,
            log: parts.log,
            tree: parts.tree,
            turn: None,
            subscribers: Vec::new(),
            held: Vec::new(),
            idle_since: Instant::now(),
            closed: false,
            saved: if parts.unsaved { Saved::No } else { Saved::Yes },
            holder: parts.holder,
            holding: false,
            relay: relay::Relay::default(),
            sampling_allowed: std::collections::BTreeSet::new(),
        };
        let inner = Arc::new_cyclic(|weak: &Weak<SessionInner>| SessionInner {
            id: parts.id,
            user_id: parts.user_id,
            owner: parts.owner,
            knowledge,
            metrics: shared.metrics.clone(),
            limits: shared.limits.clone(),
            quotas: shared.quotas.clone(),
            turns: shared.turns.clone(),
            max_subscribers: shared.config.max_connections_per_session.max(1),
            persist,
            store: shared.store.clone(),
            ack: Arc::new(SessionAck(weak.clone())),
            cluster: shared.cluster.clone(),
            releases: shared.releases.clone(),
            relays: shared.relays.clone(),
            lease: Mutex::new(()),
            send_before_written: shared.config.in_memory,
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

    /// The principal that owns it.
    pub fn owner(&self) -> &Principal {
        &self.inner.owner
    }

    /// The model the conversation chose; `None` for the server's default.
    pub fn model(&self) -> Option<String> {
        self.inner.lock().bot.model().map(str::to_owned)
    }

    /// The session's short-term knowledge.
    pub fn knowledge(&self) -> &Knowledge {
        &self.inner.knowledge
    }

    /// The `seq` of the newest event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().log.last_seq()
    }

    /// True when the store holds the conversation: false for a new session until the batch
    /// with its first message is committed. The conversation quota counts the sessions in
    /// memory that the store does not hold yet.
    pub fn in_store(&self) -> bool {
        let state = self.inner.lock();
        match state.saved {
            Saved::No => false,
            Saved::Queued(seq) => state.durable_seq >= seq,
            Saved::Yes => true,
        }
    }

    /// True once the session has gone to the store, or is on its way there: false for a new
    /// session until its first message.
    pub(super) fn saved(&self) -> bool {
        self.inner.lock().saved != Saved::No
    }

    /// Where the server keeps files, when it keeps them.
    pub fn files(&self) -> Option<crate::files::Library> {
        self.inner.lock().bot.engine().files.clone()
    }

    /// True while the store refuses writes: new turns are refused meanwhile.
    pub fn store_failing(&self) -> bool {
        self.inner.persist.failing()
    }

    /// The last turn of the current path (`0` before the first).
    pub fn leaf(&self) -> TurnId {
        TurnId(self.inner.lock().tree.leaf())
    }

    /// True while a turn is in flight.
    pub fn has_turn(&self) -> bool {
        self.inner.lock().turn.is_some()
    }

    /// How many subscribers are attached now.
    pub fn subscriber_count(&self) -> usize {
        self.inner.lock().subscribers.len()
    }

    /// A copy of the conversation the model sees.
    pub fn history(&self) -> Vec<ChatMessage> {
        self.inner.lock().bot.history().to_vec()
    }

    /// Opens a turn: cancels the turn in flight (its `status cancelled` comes first), logs
    /// `user_message`, and returns the turn for the server's pool. When the caps on running
    /// turns are reached, the turn is closed at once with `error` `server_busy`.
    fn open_turn(&self, state: &mut SessionState, opening: Opening) -> Option<TurnStart> {
        self.cancel_locked(state);
        if state.saved == Saved::No {
            self.save(state);
            // The `user_message` below is the first event, and goes in the same batch or after.
            state.saved = Saved::Queued(state.log.last_seq() + 1);
        }
        let Opening {
            text,
            attachments,
            parent,
            client_id,
            edit_of,
            regenerate_of,
        } = opening;
        let turn_id = TurnId(
            state
                .tree
                .open(parent, client_id.clone(), attachments.clone()),
        );
        let path_files = state.tree.files_to(turn_id.0);
        let frame = ServerFrame::UserMessage {
            attachments: attachments.clone(),
            turn_id,
            parent: Some(TurnId(parent)),
            text: text.clone(),
            client_id,
            edit_of,
            regenerate_of,
        };
        self.push_event(state, frame);
        let permit = match self.inner.limits.acquire(&self.inner.owner) {
            Ok(permit) => permit,
            Err(full) => {
                log::warn!(
                    "session {}: turn {turn_id} refused: {:?} cap reached",
                    self.inner.id.short(),
                    full
                );
                let frame = ServerFrame::turn_error(turn_id, ErrorCode::ServerBusy, full.message());
                let transcript = interrupted(&text);
                self.close_turn(state, None, frame, transcript, false);
                return None;
            }
        };
        let cancel = CancelFlag::new();
        let approvals = Approvals::new();
        let elicitations = Elicitations::new();
        let turn = Turn::start(&state.bot, turn_id, &text, &self.inner.owner).with_files(
            self.inner.id.clone(),
            attachments,
            path_files,
        );
        state.turn = Some(CurrentTurn {
            id: turn_id,
            cancel: cancel.clone(),
            text,
            started: Instant::now(),
            shown: String::new(),
            streamed: String::new(),
            approvals: approvals.clone(),
            elicitations: elicitations.clone(),
            sampling_servers: std::collections::HashMap::new(),
        });
        Metrics::bump(&self.inner.metrics.turns_started);
        let permit = Arc::new(Mutex::new(Some(permit)));
        Some(TurnStart {
            turn,
            events: SessionTurn {
                session: self.clone(),
                turn_id,
                approvals,
                permit: permit.clone(),
                elicitations,
            },
            cancel,
            knowledge: self.inner.knowledge.clone(),
            permit,
        })
    }

    /// A client's `cancel`: stops the turn in flight, if any, and logs its `status
    /// cancelled`; passed on to the instance that holds the conversation when this one does
    /// not.
    pub fn cancel(&self) {
        let mut state = self.inner.lock();
        if state.holder {
            self.cancel_locked(&mut state);
        } else {
            drop(state);
            self.cancel_elsewhere();
        }
    }

    /// Stops the turn in flight here, if any (at shutdown, or when another instance passes a
    /// client's `cancel` on).
    pub fn cancel_here(&self) {
        let mut state = self.inner.lock();
        self.cancel_locked(&mut state);
    }

    /// A client's answer to the `approval_request` of the call `call_id`; passed on to the
    /// instance that holds the conversation when this one does not (see
    /// [`approve_here`](Self::approve_here)). False when no such call waits, as far as this
    /// instance can tell (a follower reads its tail of the holder's events).
    pub fn approve(&self, call_id: &str, allow: bool, always: bool) -> bool {
        if self.holds_lease() {
            return self.approve_here(call_id, allow, always);
        }
        let waits = {
            let state = self.inner.lock();
            let open = open_turn_in(&state.log);
            open.is_some_and(|turn| {
                waiting_approvals(&state.log, turn)
                    .iter()
                    .any(|(waiting, _)| waiting == call_id)
                    || request_waits(&state.log, turn, call_id)
            })
        };
        if waits {
            self.approve_elsewhere(call_id, allow, always);
        }
        waits
    }

    /// Answers the `approval_request` of the call `call_id` (or the `sampling_request` of that
    /// id) here: the first answer for a call of the turn in flight that waits decides (`allow`
    /// runs it, else it is denied). An answer for a call that is not waiting is ignored, as
    /// PROTOCOL.md section 5 says; true when this answer decided. `always` with `allow` on a
    /// sampling request allows every later one of its server in this conversation.
    pub fn approve_here(&self, call_id: &str, allow: bool, always: bool) -> bool {
        let mut state = self.inner.lock();
        let decided = state
            .turn
            .as_ref()
            .is_some_and(|turn| turn.approvals.decide(call_id, allow));
        let server = state
            .turn
            .as_ref()
            .and_then(|turn| turn.sampling_servers.get(call_id).cloned());
        if let Some(server) = server.filter(|_| decided && allow && always) {
            log::info!(
                "session {}: sampling of mcp {server} allowed for the conversation",
                self.inner.id.short()
            );
            state.sampling_allowed.insert(server);
        }
        if decided {
            log::info!(
                "session {}: call {call_id:?} {}",
                self.inner.id.short(),
                if allow { "allowed" } else { "denied" }
            );
        } else {
            log::debug!(
                "session {}: approve for {call_id:?}, which is not waiting: ignored",
                self.inner.id.short()
            );
        }
        decided
    }

    /// A client's `elicit`: the answer to the `elicitation_request` `request_id` of the turn
    /// in flight; passed on to the instance that holds the conversation when this one does
    /// not (which checks it against the form there: a follower only checks that the request
    /// waits, as far as its tail of the holder's events tells).
    ///
    /// # Errors
    ///
    /// [`ElicitRefusal::NotWaiting`] when no such request waits, [`ElicitRefusal::Invalid`]
    /// when the answer does not fit the form (the request still waits).
    pub fn elicit(&self, data: &ElicitData) -> Result<(), ElicitRefusal> {
        let answer = crate::tools::ask::ElicitAnswer {
            action: data.action,
            content: data.content.clone(),
        };
        if self.holds_lease() {
            return self.elicit_here(&data.request_id, answer);
        }
        let waits = {
            let state = self.inner.lock();
            open_turn_in(&state.log)
                .is_some_and(|turn| request_waits(&state.log, turn, &data.request_id))
        };
        if !waits {
            return Err(ElicitRefusal::NotWaiting);
        }
        match serde_json::to_string(data) {
            Ok(text) => self.elicit_elsewhere(&text),
            Err(e) => log::warn!(
                "session {}: cannot pass an elicit on: {e}",
                self.inner.id.short()
            ),
        }
        Ok(())
    }

    /// An `elicit` another instance passed on (its data as JSON): answered here, or logged
    /// when it does not fit or no longer waits.
    pub fn elicit_relayed(&self, detail: &str) {
        let Ok(data) = serde_json::from_str::<ElicitData>(detail) else {
            log::warn!(
                "session {}: an elicit passed on that is not one",
                self.inner.id.short()
            );
            return;
        };
        let answer = crate::tools::ask::ElicitAnswer {
            action: data.action,
            content: data.content,
        };
        if let Err(refused) = self.elicit_here(&data.request_id, answer) {
            log::info!(
                "session {}: elicit passed on for {:?} not taken: {refused:?}",
                self.inner.id.short(),
                data.request_id
            );
        }
    }

    /// Answers the `elicitation_request` `request_id` of the turn in flight here.
    ///
    /// # Errors
    ///
    /// As [`elicit`](Self::elicit).
    pub fn elicit_here(
        &self,
        request_id: &str,
        answer: crate::tools::ask::ElicitAnswer,
    ) -> Result<(), ElicitRefusal> {
        let state = self.inner.lock();
        let Some(turn) = state.turn.as_ref() else {
            return Err(ElicitRefusal::NotWaiting);
        };
        let outcome = turn.elicitations.answer(request_id, answer);
        if outcome.is_ok() {
            log::info!(
                "session {}: elicitation {request_id:?} answered",
                self.inner.id.short()
            );
        }
        outcome
    }

    /// Detaches the subscriber `id`, if it is still attached.
    pub fn detach(&self, id: u64) {
        let mut state = self.inner.lock();
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
        let transcript = interrupted(&turn.text);
        self.close_turn(state, Some(&turn), status, transcript, false);
    }

    /// Numbers an event, logs it, and submits it to the store; the one place events are made.
    /// Subscribers get it when the store acknowledges it.
    fn push_event(&self, state: &mut SessionState, frame: ServerFrame) {
        self.push_marked(state, frame, false);
    }

    /// [`push_event`](Self::push_event), for a closing frame whose turn cleared the history
    /// before it when `reset` is set.
    fn push_marked(&self, state: &mut SessionState, frame: ServerFrame, reset: bool) {
        // Frames streamed before this event go to the other instances ahead of it.
        self.flush_relay(state);
        let seq = state.log.last_seq() + 1;
        let text: WireText = encode(&frame, Some(&self.inner.id), Some(seq)).into();
        state.log.push(text.clone());
        state.idle_since = Instant::now();
        Metrics::bump(&self.inner.metrics.events);
        self.inner
            .persist
            .event(seq, &text, &frame, reset, self.inner.ack.clone());
        if self.inner.send_before_written && !state.holding {
            self.release(state, seq);
        }
    }

    /// Sends what the current turn held back, if it held anything.
    fn flush_held(&self, state: &mut SessionState) {
        if std::mem::take(&mut state.holding) && self.inner.send_before_written {
            let last = state.log.last_seq();
            self.release(state, last);
        }
    }

    /// A streamed piece of the answer of turn `turn_id`: not an event. It goes to live
    /// subscribers at once, or, while events before it wait for the store, right after them.
    fn stream(&self, state: &mut SessionState, turn_id: TurnId, piece: String) {
        let frame = ServerFrame::MessageDelta {
            turn_id,
            text: piece,
            replace: false,
        };
        let text: WireText = encode(&frame, Some(&self.inner.id), None).into();
        let ServerFrame::MessageDelta { text: piece, .. } = frame else {
            return;
        };
        if let Some(turn) = &mut state.turn {
            turn.streamed.push_str(&piece);
        }
        self.relay_piece(state, turn_id, &piece);
        self.stream_frame(state, text, Some(piece));
    }

    /// A `tool_progress` frame: not an event, streamed like a piece of the answer.
    fn stream_progress(&self, state: &mut SessionState, frame: &ServerFrame) {
        let text: WireText = encode(frame, Some(&self.inner.id), None).into();
        self.relay_frame(state, &text);
        self.stream_frame(state, text, None);
    }

    /// Sends a streamed frame to live subscribers at once, or, while events before it wait for
    /// the store, right after them. `piece` is its part of the answer, if any.
    fn stream_frame(&self, state: &mut SessionState, text: WireText, piece: Option<String>) {
        if state.visible_seq < state.log.last_seq() {
            state.held.push((state.log.last_seq(), text, piece));
            return;
        }
        if let (Some(turn), Some(piece)) = (&mut state.turn, &piece) {
            turn.shown.push_str(piece);
        }
        let batch = [text];
        state
            .subscribers
            .retain(|attached| !attached.live || attached.subscriber.deliver(&batch));
    }

    /// The journal has written events up to `seq`: the tail may let them go, and (unless they
    /// went out already) they go to every live subscriber.
    fn durable(&self, state: &mut SessionState, seq: u64) {
        state.durable_seq = state.durable_seq.max(seq);
        if !self.inner.send_before_written {
            self.release(state, seq);
        }
        let durable = state.durable_seq;
        state.log.trim(durable);
    }

    /// Sends events up to `seq`, with the pieces streamed between them, to every live
    /// subscriber, one batch each. Subscribers that cannot keep up are dropped here.
    fn release(&self, state: &mut SessionState, seq: u64) {
        if seq <= state.visible_seq {
            return;
        }
        state.visible_seq = seq;
        let split = state.held.partition_point(|(after, _, _)| *after <= seq);
        let held: Vec<(u64, WireText, Option<String>)> = state.held.drain(..split).collect();
        let SessionState {
            log,
            subscribers,
            turn,
            ..
        } = state;
        if let Some(turn) = turn {
            for (_, _, piece) in &held {
                turn.shown.push_str(piece.as_deref().unwrap_or_default());
            }
        }
        let metrics = &self.inner.metrics;
        let mut batch: Vec<WireText> = Vec::new();
        subscribers.retain_mut(|attached| {
            if !attached.live {
                return true;
            }
            let Some(events) = log.range(attached.sent_seq, seq) else {
                log::warn!(
                    "subscriber {}: fell behind the event tail; detaching it",
                    attached.subscriber.id
                );
                attached.subscriber.sink.close(CloseReason::Behind);
                return false;
            };
            // The events and the pieces streamed between them, in order, in one batch.
            batch.clear();
            let mut pieces = held.iter().peekable();
            let mut sent = 0;
            for (event_seq, text) in events {
                while let Some((_, piece, _)) = pieces.next_if(|(after, _, _)| *after < event_seq) {
                    batch.push(piece.clone());
                }
                sent += 1;
                batch.push(text.clone());
            }
            batch.extend(pieces.map(|(_, piece, _)| piece.clone()));
            if !attached.subscriber.deliver(&batch) {
                return false;
            }
            Metrics::add(&metrics.events_sent, sent);
            attached.sent_seq = seq;
            true
        });
    }

    /// Adds turn `turn`'s messages to the conversation, and to the store once the session is
    /// in it.
    fn commit(&self, state: &mut SessionState, turn: TurnId, transcript: Vec<ChatMessage>) {
        if state.saved != Saved::No {
            self.inner
                .persist
                .messages(state.bot.next_index(), turn.0, transcript.clone());
        }
        state.bot.commit(transcript);
    }

    /// Writes a new session to the store: its row, then the history it was seeded with.
    fn save(&self, state: &SessionState) {
        let persist = &self.inner.persist;
        persist.create(
            self.inner.owner.as_str(),
            self.inner.user_id.as_deref(),
            state.bot.personality(),
            state.bot.model(),
        );
        if !state.bot.history().is_empty() {
            persist.messages(0, 0, state.bot.history().to_vec());
        }
        log::info!(
            "session {}: stored with its first message",
            self.inner.id.short()
        );
    }

    /// The `message_delta` with `replace` that a connection attaching now needs, if the turn
    /// in flight has shown part of its answer.
    fn replace_frame(&self, state: &SessionState) -> Option<WireText> {
        // The holder knows what it showed; a follower, what the holder relayed to it.
        let (turn_id, shown) = match &state.turn {
            Some(turn) => (turn.id, &turn.shown),
            None => {
                let (turn_id, shown) = state.relay.followed()?;
                (turn_id, shown)
            }
        };
        if shown.is_empty() {
            return None;
        }
        let frame = ServerFrame::MessageDelta {
            turn_id,
            text: shown.clone(),
            replace: true,
        };
        Some(encode(&frame, Some(&self.inner.id), None).into())
    }

    /// Attaches a subscriber, taking over from the oldest past the limit, and sends it its
    /// greeting. With `last_seq` (on a resume) the connection then replays; without it, it is
    /// live at once. Gives the subscriber back when the session left memory meanwhile.
    fn attach(
        &self,
        subscriber: Subscriber,
        is_new: bool,
        last_seq: Option<u64>,
        ready: &ServerFrame,
    ) -> Result<Attachment, Subscriber> {
        let mut state = self.inner.lock();
        if state.closed {
            return Err(subscriber);
        }
        while state.subscribers.len() >= self.inner.max_subscribers {
            let oldest = state.subscribers.remove(0).subscriber;
            let status = ServerFrame::status(
                StatusCode::TakenOver,
                "another connection took this one's place",
                None,
            );
            let text: WireText = encode(&status, Some(&self.inner.id), None).into();
            oldest.deliver(&[text]);
            oldest.sink.close(CloseReason::TakenOver);
            log::info!(
                "session {}: subscriber {} taken over",
                self.inner.id.short(),
                oldest.id
            );
        }
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
        let replaying = !is_new && last_seq.is_some();
        let sent_seq = match last_seq {
            Some(seen) if replaying => seen.min(state.log.last_seq()),
            _ => state.visible_seq,
        };
        if !replaying {
            greeting.extend(self.replace_frame(&state));
        }
        // Under the lock: nothing released after this attach can overtake the greeting.
        subscriber.deliver(&greeting);
        state.subscribers.push(Attached {
            subscriber,
            sent_seq,
            live: !replaying,
        });
        Ok(Attachment {
            session: self.clone(),
            replaying,
        })
    }

    /// Sends subscriber `id` the next step of its replay: events it has not had, up to what is
    /// durable, from the tail when it holds them, else from the store (read with no lock held).
    /// The step that reaches the durable end makes the subscriber live and is `done`; its
    /// frames go out under the session lock, so live events cannot overtake them.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    pub fn replay(&self, id: u64) -> crate::common::error::Result<ReplayStep> {
        let (after, up_to) = {
            let mut state = self.inner.lock();
            let visible = state.visible_seq;
            let Some(at) = state
                .subscribers
                .iter()
                .position(|attached| attached.subscriber.id == id)
            else {
                return Ok(ReplayStep {
                    done: true,
                    ..ReplayStep::default()
                });
            };
            let after = state.subscribers[at].sent_seq;
            if state.subscribers[at].live {
                return Ok(ReplayStep {
                    done: true,
                    ..ReplayStep::default()
                });
            }
            let cached: Option<Vec<(u64, WireText)>> =
                state.log.range(after, visible).map(|events| {
                    let mut bytes = 0;
                    events
                        .take_while(|(_, text)| {
                            let more = bytes < REPLAY_PAGE_BYTES;
                            bytes += text.len();
                            more
                        })
                        .map(|(seq, text)| (seq, text.clone()))
                        .collect()
                });
            if let Some(events) = cached {
                let last = events.last().map_or(after, |(seq, _)| *seq);
                let mut frames: Vec<WireText> = events.into_iter().map(|(_, text)| text).collect();
                let step = ReplayStep {
                    events: frames.len(),
                    done: last >= visible,
                };
                if step.done {
                    frames.extend(self.replace_frame(&state));
                }
                let attached = &mut state.subscribers[at];
                attached.sent_seq = last;
                attached.live = step.done;
                if !attached.subscriber.deliver(&frames) {
                    state.subscribers.remove(at);
                    return Ok(ReplayStep { done: true, ..step });
                }
                return Ok(step);
            }
            // The tail keeps every event the store has not written, so these are written.
            (after, state.durable_seq)
        };
        let page = self
            .inner
            .store
            .events(&self.inner.id, after, up_to, REPLAY_PAGE_BYTES)?;
        let mut frames: Vec<WireText> = Vec::with_capacity(page.events.len() + 1);
        if page.first_seq > after + 1 {
            let (from, to) = (after + 1, page.first_seq - 1);
            let status = ServerFrame::Status(StatusData {
                code: StatusCode::Gap,
                message: format!("events {from} to {to} were removed by the retention policy"),
                from: Some(from),
                to: Some(to),
                ..StatusData::default()
            });
            frames.push(encode(&status, Some(&self.inner.id), None).into());
        }
        let last = page.events.last().map_or(up_to, |(seq, _)| *seq);
        let step = ReplayStep {
            events: page.events.len(),
            done: false,
        };
        frames.extend(
            page.events
                .into_iter()
                .map(|(_, body)| WireText::from(body)),
        );
        let mut state = self.inner.lock();
        let Some(at) = state
            .subscribers
            .iter()
            .position(|attached| attached.subscriber.id == id && !attached.live)
        else {
            return Ok(ReplayStep { done: true, ..step });
        };
        let attached = &mut state.subscribers[at];
        attached.sent_seq = attached.sent_seq.max(last);
        if !attached.subscriber.deliver(&frames) {
            state.subscribers.remove(at);
            return Ok(ReplayStep { done: true, ..step });
        }
        Ok(step)
    }

    /// Closes a turn that a restart (or, with several instances, the death of the instance
    /// running it) cut off, so that every turn is closed exactly once.
    fn settle(&self, open_turn: Option<(u64, String)>) {
        let Some((turn_id, text)) = open_turn else {
            return;
        };
        let mut state = self.inner.lock();
        // Calls that waited for a person are answered first, so that no request stays open.
        for (call_id, name) in waiting_approvals(&state.log, TurnId(turn_id)) {
            let result = ServerFrame::ToolResult {
                attachments: Vec::new(),
                turn_id: TurnId(turn_id),
                call_id,
                name,
                status: crate::common::protocol::ToolStatus::Error,
                result: "the server running this turn stopped while this call waited for approval; it was not run"
                    .into(),
            };
            self.push_event(&mut state, result);
        }
        let message = "the server running this turn stopped before it finished";
        let frame = ServerFrame::turn_error(TurnId(turn_id), ErrorCode::Internal, message);
        let transcript = interrupted(&text);
        self.close_turn(&mut state, None, frame, transcript, false);
        log::info!(
            "session {}: closed turn {turn_id}, cut off by a stop",
            self.inner.id.short()
        );
    }

    /// Takes the session out of service: no more turns or subscribers. With `deleted`, its
    /// turn is stopped and its subscribers get `status deleted` and are closed.
    fn close(&self, deleted: bool) {
        let mut state = self.inner.lock();
        state.closed = true;
        if !deleted {
            return;
        }
        if let Some(turn) = state.turn.take() {
            turn.cancel.cancel();
        }
        let status = ServerFrame::status(StatusCode::Deleted, "the conversation was deleted", None);
        let text: WireText = encode(&status, Some(&self.inner.id), None).into();
        for attached in state.subscribers.drain(..) {
            attached.subscriber.deliver(std::slice::from_ref(&text));
            attached.subscriber.sink.close(CloseReason::Deleted);
        }
    }

    /// True when the session may leave memory: nobody attached, no turn, everything durable,
    /// and idle since `before`.
    fn evictable(&self, before: Instant) -> bool {
        Self::idle(&self.inner.lock(), before)
    }

    /// Closes the session if it is still [`evictable`](Self::evictable), in one step under its
    /// lock, so that no connection attaches to it in between. True when it closed.
    fn close_if_idle(&self, before: Instant) -> bool {
        let mut state = self.inner.lock();
        let idle = Self::idle(&state, before);
        state.closed |= idle;
        idle
    }

    fn idle(state: &SessionState, before: Instant) -> bool {
        state.subscribers.is_empty()
            && state.turn.is_none()
            && state.durable_seq == state.log.last_seq()
            && state.idle_since <= before
    }
}
