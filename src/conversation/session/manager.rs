//! `SessionManager`: the map of sessions live in memory. It creates sessions, brings a stored
//! one back when a client asks for it, frees the memory of idle ones, applies the retention
//! policy, and serves the conversation API. The map lock is held only to look up, insert or
//! remove; loading from the store and attaching happen after it is released.
//!
//! Depends on: `common::auth`, `common::config`, `common::error`, `common::metrics`, `common::protocol`, `common::rate`, `conversation::bot`, `conversation::journal`, `conversation::porting`, `conversation::quota`, `conversation::session`, `conversation::session::lease`, `conversation::session::limits`, `conversation::session::persist`, `conversation::session::relay`, `conversation::session::subscribers`, `conversation::session::tail`, `model`, `store`, `store::cluster`, `store::files`, `store::tree`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::common::auth::Principal;
use crate::common::config::Config;
use crate::common::error::Result;
use crate::common::metrics::Metrics;
use crate::common::protocol::{ConnectData, ErrorCode, HistoryRole, ServerFrame, SessionId};
use crate::common::rate::Bucket;
use crate::conversation::bot::{Bot, Engine, MAX_HISTORY_MESSAGES};
use crate::conversation::journal::Journal;
use crate::conversation::porting::{self, Imported};
use crate::conversation::quota::Quotas;
use crate::model::{ChatMessage, Role};
use crate::store::{
    Cluster, ConversationStore, ConversationSummary, FileStore, PageSize, StoredConversation,
    TurnTree, TurnsPage,
};

use super::{
    Attachment, EventLog, Parts, Persist, Relays, Releases, Session, Subscriber, TurnLimits, Turns,
    WireText,
};

/// Bytes of events a live session keeps in memory at most (besides `--event-log-capacity`).
const TAIL_BYTES: usize = 1 << 20;

/// How long eviction waits for the journal to write what is queued.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Conversations the retention policy deletes in one pass at most.
const RETENTION_BATCH: usize = 1_000;

/// Longest title a rename keeps, in characters.
const MAX_TITLE_CHARS: usize = 200;

/// The right to import (see [`SessionManager::import_slot`]).
#[derive(Debug)]
pub struct ImportSlot<'a> {
    _held: parking_lot::MutexGuard<'a, ()>,
}

/// Why an import was not stored.
#[derive(Debug)]
pub enum ImportRefusal {
    /// The conversations would take their owner past the most they may keep.
    Quota {
        /// Conversations the owner has.
        stored: u64,
        /// Conversations the import holds.
        count: u64,
        /// The most they may keep.
        limit: u64,
    },
    /// The store failed.
    Store(crate::common::error::Error),
}

/// A refused `connect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The section 7 code.
    pub code: ErrorCode,
    /// What to tell the client.
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// One conversation as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    /// What the store holds of it.
    pub summary: ConversationSummary,
    /// True while a turn runs in it.
    pub running: bool,
    /// The model its turns use: its choice, else the server's default.
    pub model: String,
}

/// What every session of a server shares.
pub(super) struct Shared {
    pub(super) config: Arc<Config>,
    pub(super) engine: Engine,
    pub(super) metrics: Arc<Metrics>,
    pub(super) journal: Journal,
    pub(super) store: Arc<dyn ConversationStore>,
    pub(super) cluster: Arc<dyn Cluster>,
    pub(super) files: Arc<dyn FileStore>,
    pub(super) releases: Arc<Releases>,
    pub(super) limits: Arc<TurnLimits>,
    pub(super) quotas: Arc<Quotas>,
    pub(super) turns: Turns,
    pub(super) relays: Arc<Relays>,
}

/// The map of live sessions, and the rules for creating, resuming, evicting and deleting them.
/// A cheap-to-clone handle.
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
    /// Each principal's creation rate and conversation count. Held while a new session is
    /// made and inserted; the order is quotas, then map, then session.
    quotas: Mutex<HashMap<Principal, Quota>>,
    /// Held while an import is written: one at a time, so that a few large imports cannot
    /// take the server's memory.
    importing: Mutex<()>,
    shared: Shared,
}

/// What one principal may still create.
struct Quota {
    /// New conversations.
    bucket: Option<Bucket>,
    /// Conversations stored or on their way there (in memory, not in the store yet): read
    /// from the store and the map once, then counted here.
    stored: Option<u64>,
}

impl SessionManager {
    /// An empty map for sessions that run on `engine`, start their turns on `turns` (each
    /// counted against its owner's daily `quotas`), and are kept in `store` through `journal`,
    /// shared with the other instances of `cluster`; their files are in `files`.
    pub fn new(
        config: Arc<Config>,
        engine: Engine,
        metrics: Arc<Metrics>,
        journal: Journal,
        store: (
            Arc<dyn ConversationStore>,
            Arc<dyn Cluster>,
            Arc<dyn FileStore>,
        ),
        turns: Turns,
        quotas: Arc<Quotas>,
    ) -> Self {
        let (store, cluster, files) = store;
        SessionManager {
            inner: Arc::new(ManagerInner {
                sessions: Mutex::new(HashMap::new()),
                quotas: Mutex::new(HashMap::new()),
                importing: Mutex::new(()),
                shared: Shared {
                    engine,
                    metrics,
                    limits: TurnLimits::new(
                        config.max_running_turns,
                        config.max_running_turns_per_principal,
                    ),
                    quotas,
                    config,
                    journal,
                    store,
                    cluster,
                    files,
                    releases: Arc::new(Releases::default()),
                    turns,
                    relays: Arc::new(Relays::default()),
                },
            }),
        }
    }

    /// Where the conversations' files are: what messages attach and tools return.
    pub fn files(&self) -> &Arc<dyn FileStore> {
        &self.inner.shared.files
    }

    /// How many sessions are live in memory.
    pub fn len(&self) -> usize {
        self.inner.sessions.lock().len()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The session `id`, if it is live in memory.
    pub fn get(&self, id: &SessionId) -> Option<Session> {
        self.inner.sessions.lock().get(id).cloned()
    }

    /// Creates or resumes a session as PROTOCOL.md section 6 says, and attaches `subscriber`
    /// to it. A stored conversation that is not in memory is brought back from the store; an
    /// id the store does not hold (never issued, or deleted) yields a new session.
    ///
    /// # Errors
    ///
    /// `unauthorized` when the session belongs to another principal; `server_busy` when a new
    /// session would pass the session limit, no random id could be drawn, or the store could
    /// not be read.
    pub fn connect(
        &self,
        data: &ConnectData,
        principal: &Principal,
        mut subscriber: Subscriber,
    ) -> Result<Attachment, Refusal> {
        let engine = &self.inner.shared.engine;
        let listed = engine.model.models();
        // A backend that could not list its models yet (`auto`, the model server down) offers
        // its default, so that `ready.models` is never empty; choosing it follows the default.
        let models = if listed.is_empty() {
            vec![engine.model.name()]
        } else {
            listed.clone()
        };
        let ready = |session: &Session| {
            let model = engine.model.resolve(session.model().as_deref());
            ServerFrame::Ready {
                tools_loaded: engine.tools.len(),
                tools: engine.tools.names(),
                // Never empty: at least the conversation's own model.
                models: if listed.is_empty() {
                    vec![model.clone()]
                } else {
                    listed.clone()
                },
                model,
                leaf: session.leaf(),
            }
        };
        let wanted = data.session_id.as_deref().and_then(SessionId::parse);
        // A session that leaves memory between the look-up and the attach is looked up again
        // (from the store, this time).
        for _ in 0..3 {
            let Some(id) = &wanted else {
                break;
            };
            let Some(session) = self.find(id, principal)? else {
                break;
            };
            log::info!(
                "session {}: resumed from seq {:?}",
                id.short(),
                data.last_seq
            );
            match session.attach(subscriber, false, data.last_seq, &ready(&session)) {
                Ok(attachment) => return Ok(attachment),
                Err(back) => subscriber = back,
            }
        }
        // A new conversation's model must be one the server offers. It is kept as chosen;
        // a conversation that chose none follows the server's default.
        let model = match data.model.as_deref() {
            None => None,
            Some(name) if models.iter().any(|m| m == name) => {
                (!listed.is_empty()).then(|| name.to_owned())
            }
            Some(name) => {
                let name: String = name.chars().take(MODEL_NAME_SHOWN).collect();
                return Err(Refusal::new(
                    ErrorCode::InvalidMessage,
                    format!(
                        "unknown model {name:?}; this server offers: {}",
                        models.join(", ")
                    ),
                ));
            }
        };
        let session = self.create(data, model, principal)?;
        let ready = ready(&session);
        session
            .attach(subscriber, true, None, &ready)
            .map_err(|_| Refusal::new(ErrorCode::ServerBusy, "the new session closed at once"))
    }

    /// The live or stored session `id`, checked against `principal`.
    fn find(&self, id: &SessionId, principal: &Principal) -> Result<Option<Session>, Refusal> {
        let Some(session) = self.bring_back(id, Some(principal))? else {
            return Ok(None);
        };
        if session.owner() == principal {
            return Ok(Some(session));
        }
        log::warn!(
            "session {}: refused a resume by another principal",
            id.short()
        );
        Err(Refusal::new(
            ErrorCode::Unauthorized,
            "this session belongs to someone else",
        ))
    }

    /// The session `id`, live or brought back from the store; `None` when the store does not
    /// hold it. With `owner`, a stored conversation of someone else's is not brought into
    /// memory (the live or stored session is returned for the caller to refuse).
    fn bring_back(
        &self,
        id: &SessionId,
        owner: Option<&Principal>,
    ) -> Result<Option<Session>, Refusal> {
        if let Some(session) = self.get(id) {
            return Ok(Some(session));
        }
        let shared = &self.inner.shared;
        let stored = shared
            .store
            .load(
                id,
                shared.config.event_log_capacity.max(1),
                MAX_HISTORY_MESSAGES,
            )
            .map_err(|e| {
                log::error!("session {}: cannot be loaded: {e}", id.short());
                Refusal::new(ErrorCode::ServerBusy, "the conversation cannot be read now")
            })?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let open_turn = stored.open_turn.clone();
        let restored = restore(stored, shared);
        if owner.is_some_and(|owner| restored.owner() != owner) {
            return Ok(Some(restored));
        }
        let (session, inserted) = {
            let mut sessions = self.inner.sessions.lock();
            if let Some(live) = sessions.get(id) {
                (live.clone(), false)
            } else if sessions.len() >= shared.config.max_sessions {
                return Err(Refusal::new(
                    ErrorCode::ServerBusy,
                    "the server holds as many sessions as it may",
                ));
            } else {
                sessions.insert(id.clone(), restored.clone());
                (restored, true)
            }
        };
        if inserted {
            if !shared.cluster.shared() {
                session.settle(open_turn);
            } else if open_turn.is_some() {
                // Open in the store: running on another instance, or left by one that died,
                // whose lease then has expired and is taken here.
                session.recover();
            } else {
                // Whatever was written between the load and the insert.
                session.catch_up();
            }
            log::info!("session {}: brought back from the store", id.short());
        }
        Ok(Some(session))
    }

    /// Takes one new conversation from `principal`'s quota (its creation rate and its count)
    /// in `quotas`, which the caller holds locked until the new session is in the map.
    fn take_quota(
        &self,
        quotas: &mut HashMap<Principal, Quota>,
        principal: &Principal,
    ) -> Result<(), Refusal> {
        let config = &self.inner.shared.config;
        let quota = quotas.entry(principal.clone()).or_insert_with(|| Quota {
            bucket: config.new_conversation_rate.map(Bucket::new),
            stored: None,
        });
        let limit = config.max_conversations_per_principal;
        // The cached count also holds sessions that never got a message and have left memory
        // (so were never stored): at the limit, count again. Sessions in memory that the store
        // does not hold yet (no message yet, or their first batch not committed) count too, or
        // connects held open, or left and resumed, would each store one more past the limit.
        let stored = match quota.stored.filter(|stored| *stored < limit) {
            Some(stored) => stored,
            None => {
                let stored = self
                    .inner
                    .shared
                    .store
                    .count(principal.as_str())
                    .map_err(|e| {
                        log::error!("sessions: cannot count conversations: {e}");
                        Refusal::new(
                            ErrorCode::ServerBusy,
                            "the conversations cannot be read now",
                        )
                    })?;
                stored + self.not_in_store(principal)
            }
        };
        quota.stored = Some(stored);
        if stored >= limit {
            return Err(Refusal::new(
                ErrorCode::ServerBusy,
                format!("you have {stored} conversations, the most you may keep; delete some"),
            ));
        }
        if !quota.bucket.as_mut().is_none_or(Bucket::take) {
            log::warn!("sessions: a principal creates conversations too fast");
            return Err(Refusal::new(
                ErrorCode::ServerBusy,
                "you are creating conversations too fast; wait a little",
            ));
        }
        quota.stored = Some(stored + 1);
        Ok(())
    }

    /// How many of `principal`'s sessions are in memory here but not in the store yet.
    fn not_in_store(&self, principal: &Principal) -> u64 {
        let live = self.live();
        let count = live
            .iter()
            .filter(|session| session.owner() == principal && !session.in_store())
            .count();
        u64::try_from(count).unwrap_or(u64::MAX)
    }

    /// Counts one conversation less for `owner`; `None` forgets every count (after the
    /// retention policy deleted some).
    fn give_back_quota(&self, owner: Option<&Principal>) {
        let mut quotas = self.inner.quotas.lock();
        match owner {
            Some(owner) => {
                if let Some(stored) = quotas.get_mut(owner).and_then(|q| q.stored.as_mut()) {
                    *stored = stored.saturating_sub(1);
                }
            }
            None => quotas.values_mut().for_each(|quota| quota.stored = None),
        }
    }

    /// A new session for `principal`, seeded with the personality and history of `data`.
    fn create(
        &self,
        data: &ConnectData,
        model: Option<String>,
        principal: &Principal,
    ) -> Result<Session, Refusal> {
        let shared = &self.inner.shared;
        if self.len() >= shared.config.max_sessions {
            return Err(Refusal::new(
                ErrorCode::ServerBusy,
                "the server holds as many sessions as it may",
            ));
        }
        let id = new_session_id().map_err(|e| {
            Refusal::new(
                ErrorCode::ServerBusy,
                format!("no session id could be drawn: {e}"),
            )
        })?;
        // Held until the session is in the map, so that a count at the limit sees every
        // session created before it.
        let mut quotas = self.inner.quotas.lock();
        self.take_quota(&mut quotas, principal)?;
        let persist = Persist::new(shared.journal.clone(), id.clone());
        let parts = Parts {
            id: id.clone(),
            user_id: data.user_id.clone(),
            owner: principal.clone(),
            bot: Bot::new(shared.engine.clone(), data.personality.clone(), Vec::new())
                .with_model(model),
            notes: Vec::new(),
            log: tail(shared, 1, Vec::new()),
            tree: TurnTree::default(),
            unsaved: true,
            // Nobody else knows its id: the store leases it to this instance with its row.
            holder: true,
        };
        let session = Session::build(parts, persist, shared);
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
            let mut state = session.inner.lock();
            session.commit(&mut state, crate::common::protocol::TurnId(0), seed);
        }
        self.inner
            .sessions
            .lock()
            .insert(id.clone(), session.clone());
        drop(quotas);
        log::info!("session {}: created", id.short());
        Ok(session)
    }

    /// Frees the memory of every session that has had no subscriber, no turn and no event for
    /// `idle`. Its conversation stays in the store; a later `connect` brings it back. Returns
    /// how many left memory.
    pub fn evict_idle(&self, idle: Duration) -> usize {
        let Some(before) = Instant::now().checked_sub(idle) else {
            return 0;
        };
        let candidates: Vec<Session> = self
            .inner
            .sessions
            .lock()
            .values()
            .filter(|session| session.evictable(before))
            .cloned()
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        // Messages and notes are written without acknowledgement: wait until everything
        // queued is in the store, so that bringing the session back loses nothing.
        if !self.inner.shared.journal.sync(SYNC_TIMEOUT) {
            return 0;
        }
        let mut sessions = self.inner.sessions.lock();
        let mut gone = Vec::new();
        for session in candidates {
            if session.close_if_idle(before) {
                sessions.remove(session.id());
                gone.push(session);
            }
        }
        drop(sessions);
        let evicted = gone.len();
        let cluster = &self.inner.shared.cluster;
        for session in gone.iter().filter(|session| session.holds_lease()) {
            if let Err(e) = cluster.release(session.id()) {
                log::warn!(
                    "session {}: cannot let its lease go: {e}",
                    session.id().short()
                );
            }
        }
        if evicted > 0 {
            log::info!("sessions: {evicted} idle ones left memory");
        }
        evicted
    }

    /// Deletes the conversations with no event for longer than `retention` (the operator's
    /// opt-in), except those in use now. Returns how many went.
    pub fn expire(&self, retention: Duration) -> usize {
        let ids = match self.inner.shared.store.idle(retention, RETENTION_BATCH) {
            Ok(ids) => ids,
            Err(e) => {
                log::error!("sessions: retention pass failed: {e}");
                return 0;
            }
        };
        let mut deleted = 0;
        for id in ids {
            if self
                .get(&id)
                .is_some_and(|session| session.subscriber_count() > 0 || session.has_turn())
            {
                continue;
            }
            if let Err(e) = self.remove(&id) {
                log::error!(
                    "session {}: the retention policy cannot delete it: {e}",
                    id.short()
                );
                continue;
            }
            deleted += 1;
            log::info!("session {}: deleted by the retention policy", id.short());
        }
        if deleted > 0 {
            self.give_back_quota(None);
        }
        deleted
    }

    /// `principal`'s conversations, most recently active first; with `query`, those whose
    /// messages match its words.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    pub fn list(
        &self,
        principal: &Principal,
        query: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Conversation>> {
        let summaries = self
            .inner
            .shared
            .store
            .list(principal.as_str(), query, limit)?;
        Ok(summaries
            .into_iter()
            .map(|summary| self.with_running(summary))
            .collect())
    }

    /// One of `principal`'s conversations, or `None` (also when it is someone else's).
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    pub fn conversation(
        &self,
        principal: &Principal,
        id: &SessionId,
    ) -> Result<Option<Conversation>> {
        let summary = self.inner.shared.store.summary(principal.as_str(), id)?;
        Ok(summary.map(|summary| self.with_running(summary)))
    }

    /// A page of `principal`'s conversation `id`: its newest events before `before`, as many
    /// as `size` holds, as `GET /api/conversations/{id}/events` answers; `None` when it is not
    /// theirs.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    pub fn events(
        &self,
        principal: &Principal,
        id: &SessionId,
        before: Option<u64>,
        size: PageSize,
    ) -> Result<Option<Vec<String>>> {
        self.inner
            .shared
            .store
            .events_before(principal.as_str(), id, before, size)
    }

    /// The right to import, held from before the body is read until it is stored: one import
    /// at a time, so that a few large ones cannot take the server's memory. `None` while
    /// another import runs.
    pub fn import_slot(&self) -> Option<ImportSlot<'_>> {
        self.inner
            .importing
            .try_lock()
            .map(|held| ImportSlot { _held: held })
    }

    /// Stores `conversations` (read from an import, every one of them checked) as new
    /// conversations of `principal`, all in one transaction, and returns their ids in order.
    /// An attachment is kept only when `principal` owns the file; the conversations are then
    /// recorded as using it. `_slot` ([`SessionManager::import_slot`]) says no other import
    /// runs.
    ///
    /// # Errors
    ///
    /// [`ImportRefusal::Quota`] when the
    /// conversations would take `principal` past `--max-conversations-per-principal`,
    /// [`ImportRefusal::Store`] when the store failed; nothing is then stored.
    pub fn import(
        &self,
        _slot: &ImportSlot<'_>,
        principal: &Principal,
        mut conversations: Vec<Imported>,
    ) -> std::result::Result<Vec<SessionId>, ImportRefusal> {
        let shared = &self.inner.shared;
        let owner = principal.as_str();
        // Attachments of files the importer does not own are dropped.
        let mut wanted: Vec<String> = conversations
            .iter()
            .flat_map(|c| c.turns.iter())
            .flat_map(|t| t.attachments.iter().map(|a| a.id.clone()))
            .collect();
        wanted.sort();
        wanted.dedup();
        let owned: std::collections::HashSet<String> = if wanted.is_empty() {
            Default::default()
        } else {
            shared
                .files
                .files(owner, &wanted)
                .map_err(ImportRefusal::Store)?
                .into_iter()
                .map(|file| file.id)
                .collect()
        };
        for turn in conversations.iter_mut().flat_map(|c| c.turns.iter_mut()) {
            turn.attachments.retain(|a| owned.contains(&a.id));
            if turn.text.is_empty() && turn.attachments.is_empty() {
                turn.text = "(an attachment that was not imported)".to_owned();
            }
        }
        let mut quotas = self.inner.quotas.lock();
        let stored =
            shared.store.count(owner).map_err(ImportRefusal::Store)? + self.not_in_store(principal);
        let limit = shared.config.max_conversations_per_principal;
        let count = conversations.len() as u64;
        if stored + count > limit {
            return Err(ImportRefusal::Quota {
                stored,
                count,
                limit,
            });
        }
        let mut ids = Vec::with_capacity(conversations.len());
        let mut batch = Vec::new();
        for conversation in &conversations {
            let id = new_session_id().map_err(|e| {
                ImportRefusal::Store(crate::common::error::Error::store(e.to_string()))
            })?;
            batch.extend(porting::writes(conversation, &id, owner));
            ids.push(id);
        }
        shared.store.apply(&batch).map_err(ImportRefusal::Store)?;
        if let Some(quota) = quotas.get_mut(principal) {
            quota.stored = Some(stored + count);
        }
        drop(quotas);
        for (id, conversation) in ids.iter().zip(&conversations) {
            let files: Vec<String> = conversation
                .turns
                .iter()
                .flat_map(|t| t.attachments.iter().map(|a| a.id.clone()))
                .collect();
            if !files.is_empty()
                && let Err(e) = shared.files.use_files(id, &files)
            {
                log::warn!(
                    "session {}: its imported files are not recorded: {e}",
                    id.short()
                );
            }
        }
        log::info!("sessions: {} conversations imported", ids.len());
        Ok(ids)
    }

    /// The tree of `principal`'s conversation `id`, as `GET /api/conversations/{id}/turns`
    /// answers; `None` when it is not theirs.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    pub fn turns(&self, principal: &Principal, id: &SessionId) -> Result<Option<TurnsPage>> {
        self.inner.shared.store.turns(principal.as_str(), id)
    }

    /// A page of the events of turn `turn` of `principal`'s conversation `id`: those after
    /// `after`, as many as `size` holds, as `GET /api/conversations/{id}/events?turn_id=T`
    /// answers; `None` when the conversation is not theirs or has no such turn.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read.
    pub fn turn_events(
        &self,
        principal: &Principal,
        id: &SessionId,
        turn: u64,
        after: u64,
        size: PageSize,
    ) -> Result<Option<Vec<String>>> {
        self.inner
            .shared
            .store
            .turn_events(principal.as_str(), id, turn, after, size)
    }

    /// Renames one of `principal`'s conversations and returns it; `None` when it is not theirs.
    /// The title is written before this returns, ahead of any batch the store refuses.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read, or did not write
    /// the title (then it is unchanged).
    pub fn rename(
        &self,
        principal: &Principal,
        id: &SessionId,
        title: &str,
    ) -> Result<Option<Conversation>> {
        if self.conversation(principal, id)?.is_none() {
            return Ok(None);
        }
        let title: String = title.trim().chars().take(MAX_TITLE_CHARS).collect();
        let persist = Persist::new(self.inner.shared.journal.clone(), id.clone());
        persist.rename(principal.as_str(), &title)?;
        self.conversation(principal, id)
    }

    /// Deletes one of `principal`'s conversations: removes every row of it, then stops its
    /// turn, tells its connections (`status deleted`) and closes them. False when it is not
    /// theirs.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read, or did not delete
    /// the conversation (then it stays as it was, in the store and in memory).
    pub fn delete(&self, principal: &Principal, id: &SessionId) -> Result<bool> {
        let owned = match self.get(id) {
            Some(session) => session.owner() == principal,
            None => self
                .inner
                .shared
                .store
                .summary(principal.as_str(), id)?
                .is_some(),
        };
        if owned {
            self.remove(id)?;
            self.give_back_quota(Some(principal));
            log::info!("session {}: deleted by its owner", id.short());
        }
        Ok(owned)
    }

    /// Takes `id` out of the store, then out of memory (closing its connections). Writes of
    /// it made after the deletion (a turn winding down) find no conversation and are skipped.
    ///
    /// # Errors
    ///
    /// The store's, when it did not delete it; then nothing changed here either.
    fn remove(&self, id: &SessionId) -> Result<()> {
        let persist = Persist::new(self.inner.shared.journal.clone(), id.clone());
        let unsaved = self.get(id).is_some_and(|session| !session.saved());
        persist.delete()?;
        let live = self.inner.sessions.lock().remove(id);
        if let Some(session) = live {
            session.close(true);
            // Its first message came between the deletion and the close: what it wrote goes
            // too.
            if unsaved
                && session.saved()
                && let Err(e) = persist.delete()
            {
                log::error!(
                    "session {}: its first message stays stored: {e}",
                    id.short()
                );
            }
        }
        Ok(())
    }

    fn with_running(&self, summary: ConversationSummary) -> Conversation {
        // Where this instance writes the conversation, it knows best (the store may not have
        // the newest turn yet); elsewhere the store knows, for a turn on another instance.
        let here = self
            .get(&summary.id)
            .filter(|session| session.holds_lease());
        let running = match here {
            Some(session) => session.has_turn(),
            None => self.inner.shared.cluster.shared() && summary.open,
        };
        // The conversation's own model as recorded (an import keeps the original's), even
        // where a turn would now go to the default (`ModelBackend::resolve`).
        let model = summary
            .model
            .clone()
            .unwrap_or_else(|| self.inner.shared.engine.model.name());
        Conversation {
            summary,
            running,
            model,
        }
    }

    /// How many sessions have a turn in flight.
    pub fn turns_in_flight(&self) -> usize {
        self.live()
            .iter()
            .filter(|session| session.has_turn())
            .count()
    }

    /// How many turns hold a place under the caps: running, or cancelled and winding down.
    pub fn turns_running(&self) -> usize {
        self.inner.shared.limits.running()
    }

    /// Cancels every turn in flight here; used at shutdown.
    pub fn cancel_all(&self) {
        for session in self.live() {
            session.cancel_here();
        }
    }

    /// Another instance let a lease go: wakes the messages waiting for one.
    pub fn lease_released(&self) {
        self.inner.shared.releases.released();
    }

    /// Another instance deleted conversation `id`: takes it out of memory here, telling its
    /// connections (`status deleted`).
    pub fn forget(&self, id: &SessionId) {
        let live = self.inner.sessions.lock().remove(id);
        if let Some(session) = live {
            session.close(true);
            log::info!("session {}: deleted on another instance", id.short());
        }
    }

    /// Conversation `id`'s lease expired with a turn open (its holder died): takes the lease
    /// and closes the turn, bringing the conversation into memory for that.
    pub fn recover(&self, id: &SessionId) {
        match self.bring_back(id, None) {
            Ok(Some(session)) => session.recover(),
            Ok(None) => {}
            Err(refusal) => log::warn!(
                "session {}: cannot be recovered: {}",
                id.short(),
                refusal.message
            ),
        }
    }

    /// Sends the other instances the streamed frames that have waited long enough to be
    /// coalesced (the cluster thread calls it every [`super::RELAY_EVERY`]).
    pub fn flush_relays(&self) {
        self.inner.shared.relays.flush_due();
    }

    /// Streamed frames another instance relayed for conversation `id`, following its event
    /// `after`: passed to the session when it is live here.
    pub fn relayed(&self, id: &SessionId, after: u64, frames: &str) {
        if let Some(session) = self.get(id) {
            session.relayed(after, frames);
        }
    }

    /// Brings every follower here up to date with the store (after signals may have been
    /// missed).
    pub fn catch_up_all(&self) {
        for session in self.live() {
            session.catch_up();
        }
    }

    fn live(&self) -> Vec<Session> {
        self.inner.sessions.lock().values().cloned().collect()
    }
}

/// An empty or restored event tail with the server's bounds.
fn tail(shared: &Shared, next_seq: u64, events: Vec<(u64, WireText)>) -> EventLog {
    EventLog::new(
        next_seq,
        events,
        shared.config.event_log_capacity,
        TAIL_BYTES,
    )
}

/// A session as the store held it.
fn restore(stored: StoredConversation, shared: &Shared) -> Session {
    let events = stored
        .tail
        .into_iter()
        .map(|(seq, body)| (seq, WireText::from(body)))
        .collect();
    let parts = Parts {
        id: stored.id.clone(),
        user_id: stored.user_id,
        owner: Principal::from_stored(stored.owner),
        bot: Bot::restore(
            shared.engine.clone(),
            stored.personality,
            stored.next_message,
            stored.messages,
        )
        .with_model(stored.model),
        notes: stored.notes,
        log: tail(shared, stored.last_seq + 1, events),
        tree: stored.tree,
        unsaved: false,
        holder: !shared.cluster.shared(),
    };
    let persist = Persist::new(shared.journal.clone(), stored.id);
    Session::build(parts, persist, shared)
}

/// Characters of an unknown model name repeated in the error that refuses it, at most.
const MODEL_NAME_SHOWN: usize = 100;

/// Draws a new session id from the OS's cryptographic random source.
fn new_session_id() -> Result<SessionId, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(SessionId::from_random_bytes(bytes))
}
