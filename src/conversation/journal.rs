//! `Journal`: how every session's writes reach the store, in write groups (group commit, as
//! LevelDB and RocksDB write). A thread that queues a write and finds no commit under way
//! leads one: it takes everything queued into one transaction, commits it, and then tells each
//! session which of its events are committed ([`Durable`]), which hands them to subscribers.
//! Threads that queue while a group commits go on at once; their writes go into the leader's
//! next group, so that under load one commit carries many sessions' events. An event is handed
//! to its session's subscribers only after the group that holds it is committed, so that
//! anything a client has seen survives a crash.
//!
//! Sessions queue writes under their lock, and a commit's release takes session locks, so a
//! thread never leads while it holds one: a [`Hold`] (which every session lock guard carries)
//! defers the thread's lead until it holds none. A leader that finishes a group while another
//! thread is about to lead steps down, so that the work rotates among the writers.
//!
//! A batch the store refuses (a full disk, a quota) is never dropped and never released: the
//! leader hands it to the journal's own thread, which retries it with backoff, and meanwhile
//! [`Journal::failing`] is true, so that sessions refuse new turns and stop the ones in flight.
//! The writes queued behind it wait. When the store takes the batch, everything queued behind
//! it follows, in order, and nothing is lost. That thread leads nothing else (but what is left
//! at shutdown): nobody waits behind a retry but the writes that must.
//!
//! The API's renames and deletions do not wait behind such a batch: [`Journal::write_alone`]
//! hands the journal a write that it makes in a transaction of its own, between two tries, and
//! answers with what the store said. A deletion takes the writes queued for its conversation
//! with it, so that deleting a conversation is how a full store makes room.
//!
//! Depends on: `common::error`, `common::metrics`, `common::protocol`, `store`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::common::error::{Error, Result};
use crate::common::metrics::Metrics;
use crate::common::protocol::SessionId;
use crate::store::{ConversationStore, WriteOp};

/// The first wait before a failed batch is tried again; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The longest wait between two tries of a failed batch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Tries of a failed batch once the journal is shutting down, before it is given up. Its
/// events were never released, so no client saw them.
const ATTEMPTS_AT_SHUTDOWN: u32 = 5;

/// Told when the writes it asked for are committed.
pub trait Durable: Send + Sync {
    /// Everything up to event `seq` is in the store.
    fn durable(&self, seq: u64);
}

/// Whom to tell, and up to which event, once a write is committed.
pub type Ack = (Arc<dyn Durable>, u64);

thread_local! {
    /// How many [`Hold`]s this thread has alive.
    static HOLDS: Cell<u32> = const { Cell::new(0) };
    /// The journals this thread queued writes to under a [`Hold`], and so must lead (unless a
    /// leader takes the writes first) once it holds none.
    static OWED: RefCell<Vec<Arc<Shared>>> = const { RefCell::new(Vec::new()) };
}

/// While one is alive, the writes this thread queues are not committed by this thread: it
/// leads their group only once its last `Hold` is dropped. A session's lock guard carries one
/// (dropped after the lock is released), because committing releases events, which takes
/// session locks. A thread must not wait for the journal ([`Journal::sync`],
/// [`Journal::write_alone`]) while it holds one.
#[derive(Debug)]
pub struct Hold {
    /// Not `Send`: the count it keeps is the thread's.
    _thread: PhantomData<*const ()>,
}

impl Hold {
    /// Defers this thread's commits until it is dropped (and every other `Hold` of the thread).
    pub fn new() -> Self {
        HOLDS.with(|holds| holds.set(holds.get() + 1));
        Hold {
            _thread: PhantomData,
        }
    }
}

impl Default for Hold {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let left = HOLDS.with(|holds| {
            let left = holds.get().saturating_sub(1);
            holds.set(left);
            left
        });
        if left == 0 {
            let owed = OWED.with(|owed| std::mem::take(&mut *owed.borrow_mut()));
            for shared in owed {
                shared.settle();
            }
        }
    }
}

/// This thread does not lead the commit of what it queued under its [`Hold`]s so far: a
/// thread that queues after it will, and its group takes those writes with its own. For a
/// turn that answers at once, whose thread queues its answer a moment later: the turn's events
/// are then committed in one group instead of two. The caller makes sure that such a thread
/// exists (the turn ends with an event, which its thread queues and so commits).
pub fn leave_lead() {
    let owed = OWED.with(|owed| std::mem::take(&mut *owed.borrow_mut()));
    for shared in owed {
        let mut state = shared.state.lock();
        state.owed = state.owed.saturating_sub(1);
    }
}

/// True while this thread holds a [`Hold`].
fn holding() -> bool {
    HOLDS.with(|holds| holds.get() > 0)
}

/// Notes that this thread owes `shared` a lead; false when it owed one already.
fn owe(shared: &Arc<Shared>) -> bool {
    OWED.with(|owed| {
        let mut owed = owed.borrow_mut();
        if owed.iter().any(|known| Arc::ptr_eq(known, shared)) {
            return false;
        }
        owed.push(shared.clone());
        true
    })
}

enum Entry {
    Write(WriteOp, Option<Ack>),
    /// A write someone waits for: see [`Journal::write_alone`].
    Alone(Alone),
}

impl Entry {
    fn is_alone(&self) -> bool {
        matches!(self, Entry::Alone(_))
    }
}

/// A write the journal has not started yet.
const WAITING: u8 = 0;
/// A write the journal has started: its caller waits for its answer.
const STARTED: u8 = 1;
/// A write whose caller gave up waiting before it started: it is never made.
const ABANDONED: u8 = 2;

/// A write someone waits for, and where its answer goes.
struct Alone {
    op: WriteOp,
    /// [`WAITING`], then [`STARTED`] or [`ABANDONED`], whichever comes first.
    state: Arc<AtomicU8>,
    done: Sender<Result<()>>,
}

impl Alone {
    /// True when the journal may start it: its caller has not given up.
    fn start(&self) -> bool {
        self.state
            .compare_exchange(WAITING, STARTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// What every handle shares: the store, the queue and who leads.
///
/// The queue is unbounded on purpose: sessions queue while holding their lock, and a commit
/// takes session locks to release events, so a bounded queue could deadlock. A leader takes
/// the whole queue into each transaction, so it stays short.
struct Shared {
    store: Arc<dyn ConversationStore>,
    metrics: Arc<Metrics>,
    state: Mutex<QueueState>,
    /// Wakes the journal thread: a refused batch to retry, a write someone waits for while it
    /// retries, or the last handle gone.
    wake: Condvar,
    /// Wakes [`Journal::sync`]: a group finished.
    progress: Condvar,
    /// True while the store refuses the batch at the head of the queue.
    failing: AtomicBool,
    /// True when the journal thread leads every group: see [`Journal::spawn_in_background`].
    background: bool,
}

#[derive(Default)]
struct QueueState {
    entries: Vec<Entry>,
    /// Entries ever queued: the ticket [`Journal::sync`] waits for.
    queued: u64,
    /// The entries before this ticket are committed (or given up at shutdown).
    finished: u64,
    /// True while a thread commits a group (the journal thread, while it retries one).
    leading: bool,
    /// Threads that queued under a [`Hold`] and will lead once they hold none.
    owed: usize,
    /// A batch the store refused, for the journal thread to retry, with its group's ticket.
    refused: Option<(Batch, u64)>,
    /// Set when the last `Journal` handle is gone: the journal thread finishes and ends.
    closed: bool,
}

/// Closes the queue when the last handle goes.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.state.lock().closed = true;
        self.0.wake.notify_one();
    }
}

/// A cheap-to-clone handle to the journal.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    _closer: Arc<Closer>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("Journal")
            .field("queued", &state.entries.len())
            .field("leading", &state.leading)
            .finish()
    }
}

impl Journal {
    /// Starts the journal and its thread, which retries the batches the store refuses. The
    /// thread ends when the last `Journal` handle is dropped, after writing what is queued.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] when the thread cannot be started.
    pub fn spawn(store: Arc<dyn ConversationStore>, metrics: Arc<Metrics>) -> Result<Self> {
        Self::start(store, metrics, false)
    }

    /// [`spawn`](Self::spawn), for a server that sends events before they are written
    /// (`--in-memory`, where nothing outlives the process): no client waits for a commit, so
    /// the journal thread leads every group, beside the threads that queue the writes rather
    /// than on their path.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] when the thread cannot be started.
    pub fn spawn_in_background(
        store: Arc<dyn ConversationStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        Self::start(store, metrics, true)
    }

    fn start(
        store: Arc<dyn ConversationStore>,
        metrics: Arc<Metrics>,
        background: bool,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            store,
            metrics,
            state: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
            progress: Condvar::new(),
            failing: AtomicBool::new(false),
            background,
        });
        let retrier = shared.clone();
        thread::Builder::new()
            .name("journal".into())
            .spawn(move || run(&retrier))
            .map_err(Error::Spawn)?;
        Ok(Journal {
            _closer: Arc::new(Closer(shared.clone())),
            shared,
        })
    }

    /// Queues a write. With `ack`, `ack.0.durable(ack.1)` is called once it is committed. The
    /// calling thread commits it (and whatever else is queued) itself when no other thread is
    /// committing, once it holds no [`Hold`]; else it goes on at once.
    pub fn submit(&self, op: WriteOp, ack: Option<Ack>) {
        self.push(Entry::Write(op, ack));
    }

    /// Waits until everything submitted before this call is committed (or `timeout` passes),
    /// leading the commit when no one else does. True when it was.
    pub fn sync(&self, timeout: Duration) -> bool {
        debug_assert!(!holding(), "a thread waits for the journal while it holds");
        let deadline = Instant::now() + timeout;
        let shared = &self.shared;
        let mut state = shared.state.lock();
        let ticket = state.queued;
        loop {
            if state.finished >= ticket {
                return true;
            }
            if !state.leading && !state.entries.is_empty() {
                shared.lead(state);
                state = shared.state.lock();
                continue;
            }
            if shared.progress.wait_until(&mut state, deadline).timed_out() {
                return state.finished >= ticket;
            }
        }
    }

    /// Writes `op` in a transaction of its own and answers what the store answered: for the
    /// API's renames and deletions, whose callers must learn whether the change was made.
    ///
    /// It does not wait behind a batch the store refuses: the journal thread takes it between
    /// two tries of that batch. A deletion takes every write for its conversation queued before
    /// it with it (none of them is made), so that deleting makes room in a full store. When
    /// `timeout` passes before the journal has started the write, it is never made.
    ///
    /// # Errors
    ///
    /// The store's error; [`Error::Store`] when `timeout` passed first (then the write was not
    /// made, or, when it had started, its outcome is unknown, which the error says).
    pub fn write_alone(&self, op: WriteOp, timeout: Duration) -> Result<()> {
        debug_assert!(!holding(), "a thread waits for the journal while it holds");
        let state = Arc::new(AtomicU8::new(WAITING));
        let (done, answer) = crossbeam_channel::bounded(1);
        self.push(Entry::Alone(Alone {
            op,
            state: state.clone(),
            done,
        }));
        if let Ok(result) = answer.recv_timeout(timeout) {
            return result;
        }
        let given_up = state
            .compare_exchange(WAITING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if given_up {
            return Err(Error::store(
                "the store did not take the write in time; nothing was changed",
            ));
        }
        // The journal started it meanwhile: its answer is what happened.
        answer.recv_timeout(timeout).unwrap_or_else(|_| {
            Err(Error::store(
                "the store did not answer in time; the change may or may not be made",
            ))
        })
    }

    /// True while the store refuses writes: the batch at the head of the queue is being
    /// retried, and nothing behind it is committed.
    pub fn failing(&self) -> bool {
        self.shared.failing.load(Ordering::Relaxed)
    }

    /// Queues `entry`, then leads its group unless this thread holds a [`Hold`] (then it owes
    /// the lead) or another thread leads already.
    fn push(&self, entry: Entry) {
        let shared = &self.shared;
        let alone = entry.is_alone();
        let mut state = shared.state.lock();
        let was_empty = state.entries.is_empty();
        state.entries.push(entry);
        state.queued += 1;
        if alone || (shared.background && was_empty && !state.leading) {
            // A write someone waits for wakes a journal thread that waits to retry a refused
            // batch; in the background, the first write wakes it to lead.
            shared.wake.notify_one();
        }
        if shared.background {
            return;
        }
        if holding() {
            if owe(shared) {
                state.owed += 1;
            }
            return;
        }
        shared.lead(state);
    }
}

impl Shared {
    /// A thread that queued under a [`Hold`] holds none any more: it leads, unless another
    /// thread leads already (that one takes its writes).
    fn settle(&self) {
        let mut state = self.state.lock();
        state.owed = state.owed.saturating_sub(1);
        self.lead(state);
    }

    /// Commits groups for as long as writes are queued, nobody else leads, and no other thread
    /// is about to lead (then it steps down for that one). A group the store refuses goes to
    /// the journal thread, which leads from then on until it is taken.
    fn lead<'a>(&'a self, mut state: MutexGuard<'a, QueueState>) {
        while !state.leading && !state.entries.is_empty() {
            state.leading = true;
            let entries = std::mem::take(&mut state.entries);
            let ticket = state.queued;
            drop(state);
            let refused = self.commit(entries);
            state = self.state.lock();
            if let Some(batch) = refused {
                state.refused = Some((batch, ticket));
                self.wake.notify_one();
                return;
            }
            self.finish(&mut state, ticket);
            if state.owed > 0 {
                return;
            }
        }
    }

    /// The group up to `ticket` is done: the lead is free.
    fn finish(&self, state: &mut QueueState, ticket: u64) {
        state.finished = state.finished.max(ticket);
        state.leading = false;
        self.progress.notify_all();
        if state.closed {
            self.wake.notify_one();
        }
    }

    /// Commits one group: the writes someone waits for first, each on its own (a deletion
    /// takes what was queued for its conversation with it), then the rest in one transaction,
    /// whose events are then released. The batch, when the store refused it.
    fn commit(&self, entries: Vec<Entry>) -> Option<Batch> {
        let mut batch = Batch::default();
        let mut alone = Vec::new();
        for entry in entries {
            match entry {
                Entry::Write(op, ack) => batch.push(op, ack),
                Entry::Alone(write) => alone.push(write),
            }
        }
        for write in alone {
            write_alone(self.store.as_ref(), write, &mut batch);
        }
        if batch.ops.is_empty() {
            return None;
        }
        match self.store.apply(&batch.ops) {
            Ok(()) => {
                self.committed(&mut batch);
                None
            }
            Err(error) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    log::error!(
                        "journal: the store refused a batch of {} writes ({error}); new turns \
                         are refused and the batch is retried until it is taken",
                        batch.ops.len()
                    );
                }
                Some(batch)
            }
        }
    }

    /// Counts a committed batch and tells its sessions.
    fn committed(&self, batch: &mut Batch) {
        Metrics::bump(&self.metrics.journal_batches);
        Metrics::add(&self.metrics.journal_writes, batch.ops.len() as u64);
        release(&mut batch.acks);
        batch.ops.clear();
    }
}

/// The journal thread: retries the batches the store refused, and leads what queued up behind
/// each until the queue is empty; at the end, leads what is left; in the background, leads
/// every group.
fn run(shared: &Shared) {
    let mut state = shared.state.lock();
    loop {
        if let Some((mut batch, ticket)) = state.refused.take() {
            drop(state);
            if retry(shared, &mut batch) {
                shared.committed(&mut batch);
            } else {
                // Given up at shutdown: what was never committed is never released.
                batch.acks.clear();
            }
            state = shared.state.lock();
            shared.finish(&mut state, ticket);
            shared.lead(state);
            state = shared.state.lock();
            continue;
        }
        if (state.closed || shared.background) && !state.leading && !state.entries.is_empty() {
            shared.lead(state);
            state = shared.state.lock();
            continue;
        }
        if state.closed && !state.leading {
            return;
        }
        shared.wake.wait(&mut state);
    }
}

/// The writes of one transaction, each with whom to tell once it is committed.
#[derive(Default)]
struct Batch {
    ops: Vec<WriteOp>,
    /// One per op, in the same order.
    acks: Vec<Option<Ack>>,
}

impl Batch {
    fn push(&mut self, op: WriteOp, ack: Option<Ack>) {
        self.ops.push(op);
        self.acks.push(ack);
    }

    /// Leaves out every write for conversation `session`, which is being deleted.
    fn forget(&mut self, session: &SessionId) {
        let ops = std::mem::take(&mut self.ops);
        let acks = std::mem::take(&mut self.acks);
        for (op, ack) in ops.into_iter().zip(acks) {
            if op.session() != session {
                self.push(op, ack);
            }
        }
    }
}

/// Writes one write someone waits for in a transaction of its own, unless they gave up on it,
/// and answers them. A deletion first takes every write for its conversation out of `batch`:
/// a batch the store refuses must not hold it up (deleting is how a full store makes room),
/// and nothing of a deleted conversation is written after it.
fn write_alone(store: &dyn ConversationStore, write: Alone, batch: &mut Batch) {
    if !write.start() {
        return;
    }
    if let WriteOp::DeleteSession { session } = &write.op {
        batch.forget(session);
    }
    let result = store.apply(std::slice::from_ref(&write.op));
    if let Err(e) = &result {
        log::warn!(
            "journal: the store refused a write of session {}: {e}",
            write.op.session().short()
        );
    }
    let _ = write.done.send(result);
}

/// Writes one refused batch again, with backoff, for as long as the store refuses it, so that
/// a full disk delays events instead of losing them. Writes someone waits for that arrive
/// meanwhile are written on their own, between two tries (see [`write_alone`]); after one,
/// the batch is tried again at once, since a deletion may have made room. Only once the
/// journal is shutting down does it give up, after a few more tries; false then.
fn retry(shared: &Shared, batch: &mut Batch) -> bool {
    let store = shared.store.as_ref();
    let mut backoff = FIRST_BACKOFF;
    let mut tries_at_shutdown = 0;
    loop {
        // Waits out the backoff, unless a write someone waits for comes first.
        let mut state = shared.state.lock();
        if state.closed {
            tries_at_shutdown += 1;
            if tries_at_shutdown > ATTEMPTS_AT_SHUTDOWN {
                log::error!(
                    "journal: shutting down with a batch of {} writes the store refused; no \
                     client was shown its events",
                    batch.ops.len()
                );
                return false;
            }
        }
        let deadline = Instant::now() + backoff;
        while !state.entries.iter().any(Entry::is_alone)
            && !shared.wake.wait_until(&mut state, deadline).timed_out()
        {}
        let alone = take_alone(&mut state.entries);
        drop(state);
        if alone.is_empty() {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        for write in alone {
            write_alone(store, write, batch);
        }
        if batch.ops.is_empty() {
            // Everything refused was a deleted conversation's: nothing is held up any more.
            if shared.failing.swap(false, Ordering::Relaxed) {
                log::warn!("journal: the refused batch went with a deletion");
            }
            return true;
        }
        match store.apply(&batch.ops) {
            Ok(()) => {
                if shared.failing.swap(false, Ordering::Relaxed) {
                    log::warn!("journal: the store takes writes again");
                }
                return true;
            }
            Err(error) => log::debug!("journal: the store refused the batch again: {error}"),
        }
    }
}

/// Takes the writes someone waits for out of `entries`. A deletion among them also takes out
/// the writes queued for its conversation before it.
fn take_alone(entries: &mut Vec<Entry>) -> Vec<Alone> {
    let mut alone = Vec::new();
    let mut kept = Vec::with_capacity(entries.len());
    for entry in entries.drain(..) {
        match entry {
            Entry::Alone(write) => {
                if let WriteOp::DeleteSession { session } = &write.op {
                    kept.retain(|entry: &Entry| {
                        !matches!(entry, Entry::Write(op, _) if op.session() == session)
                    });
                }
                alone.push(write);
            }
            other => kept.push(other),
        }
    }
    *entries = kept;
    alone
}

/// Tells each waiting session the highest of its events that is now committed: one call per
/// session per batch.
fn release(acks: &mut Vec<Option<Ack>>) {
    let mut highest: HashMap<*const (), Ack> = HashMap::new();
    for (target, seq) in acks.drain(..).flatten() {
        let key = Arc::as_ptr(&target).cast::<()>();
        let entry = highest.entry(key).or_insert((target, seq));
        entry.1 = entry.1.max(seq);
    }
    for (target, seq) in highest.into_values() {
        target.durable(seq);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::common::protocol::SessionId;
    use crate::store::{PostgresStore, SqliteStore};

    #[derive(Default)]
    struct Highest(AtomicU64);

    impl Durable for Highest {
        fn durable(&self, seq: u64) {
            self.0.fetch_max(seq, Ordering::SeqCst);
        }
    }

    fn create(session: &SessionId) -> WriteOp {
        WriteOp::CreateSession {
            id: session.clone(),
            owner: "local".into(),
            user_id: None,
            personality: None,
            model: None,
        }
    }

    fn event(session: &SessionId, seq: u64) -> WriteOp {
        WriteOp::Event {
            session: session.clone(),
            seq,
            body: format!("event {seq}").into(),
            turn: Default::default(),
            search_text: None,
        }
    }

    #[test]
    fn a_deletion_takes_the_writes_queued_for_its_conversation_with_it() {
        let (a, b) = (
            SessionId::from_random_bytes([1; 16]),
            SessionId::from_random_bytes([2; 16]),
        );
        let (done, _answer) = crossbeam_channel::bounded(1);
        let mut entries = vec![
            Entry::Write(event(&a, 1), None),
            Entry::Write(event(&b, 1), None),
            Entry::Alone(Alone {
                op: WriteOp::DeleteSession { session: a.clone() },
                state: Arc::new(AtomicU8::new(WAITING)),
                done,
            }),
            Entry::Write(event(&b, 2), None),
        ];
        let alone = take_alone(&mut entries);
        assert_eq!(alone.len(), 1);
        let left: Vec<Option<&SessionId>> = entries
            .iter()
            .map(|entry| match entry {
                Entry::Write(op, _) => Some(op.session()),
                _ => None,
            })
            .collect();
        assert_eq!(left, [Some(&b), Some(&b)]);

        let mut batch = Batch::default();
        for (session, seq) in [(&a, 1), (&b, 1), (&a, 2)] {
            batch.push(event(session, seq), None);
        }
        batch.forget(&a);
        assert_eq!(batch.ops, [event(&b, 1)]);
        assert_eq!(batch.acks.len(), 1);
        // A write starts once; one whose caller gave up first never starts.
        assert!(alone[0].start());
        assert!(!alone[0].start());
        let (done, _answer) = crossbeam_channel::bounded(1);
        let given_up = Alone {
            op: WriteOp::DeleteSession { session: b },
            state: Arc::new(AtomicU8::new(ABANDONED)),
            done,
        };
        assert!(!given_up.start());
    }

    #[test]
    fn a_write_alone_is_answered_with_what_the_store_did() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let journal = Journal::spawn(store.clone(), Arc::default()).unwrap();
        let session = SessionId::from_random_bytes([3; 16]);
        journal.submit(create(&session), None);
        journal.submit(event(&session, 1), None);
        // A write alone goes ahead of what is queued: the API renames what is stored.
        assert!(journal.sync(Duration::from_secs(10)));
        let rename = WriteOp::Rename {
            session: session.clone(),
            owner: "local".into(),
            title: "named".into(),
        };
        assert!(journal.write_alone(rename, Duration::from_secs(10)).is_ok());
        assert!(journal.sync(Duration::from_secs(10)));
        let summary = store.summary("local", &session).unwrap().unwrap();
        assert_eq!(summary.title.as_deref(), Some("named"));
        let delete = WriteOp::DeleteSession {
            session: session.clone(),
        };
        assert!(journal.write_alone(delete, Duration::from_secs(10)).is_ok());
        assert!(store.summary("local", &session).unwrap().is_none());
    }

    #[test]
    fn a_thread_that_holds_commits_its_writes_once_it_holds_none() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let journal = Journal::spawn(store.clone(), Arc::default()).unwrap();
        let session = SessionId::from_random_bytes([5; 16]);
        let highest = Arc::new(Highest::default());
        let ack: Arc<dyn Durable> = highest.clone();
        {
            let outer = Hold::new();
            let inner = Hold::new();
            journal.submit(create(&session), None);
            journal.submit(event(&session, 1), Some((ack.clone(), 1)));
            drop(inner);
            // Nobody else leads, and this thread still holds: nothing is committed yet.
            assert_eq!(highest.0.load(Ordering::SeqCst), 0);
            assert!(store.summary("local", &session).unwrap().is_none());
            drop(outer);
        }
        // The last hold gone, this thread led the group itself, before going on.
        assert_eq!(highest.0.load(Ordering::SeqCst), 1);
        assert!(store.summary("local", &session).unwrap().is_some());
        // Without a hold, a write is committed before `submit` returns.
        journal.submit(event(&session, 2), Some((ack, 2)));
        assert_eq!(highest.0.load(Ordering::SeqCst), 2);
        assert!(journal.sync(Duration::from_secs(10)));
    }

    #[test]
    fn writes_from_many_threads_are_all_committed_and_acknowledged() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let metrics = Arc::new(Metrics::default());
        let journal = Journal::spawn(store.clone(), metrics.clone()).unwrap();
        let sessions: Vec<(SessionId, Arc<Highest>)> = (0..8u8)
            .map(|n| (SessionId::from_random_bytes([10 + n; 16]), Arc::default()))
            .collect();
        for (session, _) in &sessions {
            journal.submit(create(session), None);
        }
        thread::scope(|scope| {
            for (session, highest) in &sessions {
                let journal = journal.clone();
                scope.spawn(move || {
                    for seq in 1..=200 {
                        // Half of them under a hold, as a session's lock guard does.
                        let hold = (seq % 2 == 0).then(Hold::new);
                        let ack: Arc<dyn Durable> = highest.clone();
                        journal.submit(event(session, seq), Some((ack, seq)));
                        drop(hold);
                    }
                });
            }
        });
        assert!(journal.sync(Duration::from_secs(10)));
        for (_, highest) in &sessions {
            assert_eq!(highest.0.load(Ordering::SeqCst), 200);
        }
        assert_eq!(Metrics::get(&metrics.journal_writes), 8 * 201);
    }

    #[test]
    fn acknowledges_after_commit_and_syncs_on_sqlite() {
        acknowledges_after_commit_and_syncs(Arc::new(SqliteStore::in_memory().unwrap()));
    }

    #[test]
    fn acknowledges_after_commit_and_syncs_on_postgres() {
        let url = crate::store::tests::cluster::fresh_database();
        acknowledges_after_commit_and_syncs(Arc::new(PostgresStore::connect(&url, 2).unwrap()));
    }

    fn acknowledges_after_commit_and_syncs(store: Arc<dyn ConversationStore>) {
        let journal = Journal::spawn(store.clone(), Arc::default()).unwrap();
        let session = SessionId::from_random_bytes([7; 16]);
        let highest = Arc::new(Highest::default());
        journal.submit(create(&session), None);
        for seq in 1..=100 {
            let body = format!("event {seq}").into();
            let ack: Arc<dyn Durable> = highest.clone();
            journal.submit(
                WriteOp::Event {
                    session: session.clone(),
                    seq,
                    body,
                    turn: Default::default(),
                    search_text: None,
                },
                Some((ack, seq)),
            );
        }
        assert!(journal.sync(Duration::from_secs(10)));
        assert_eq!(highest.0.load(Ordering::SeqCst), 100);
    }
}
