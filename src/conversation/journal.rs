//! `Journal`: the one writer thread through which every session's writes reach the store, in
//! batches (group commit). An event is handed to its session's subscribers only after the batch
//! that holds it is committed, so that anything a client has seen survives a crash.
//!
//! A batch the store refuses (a full disk, a quota) is never dropped and never released: the
//! writer retries it with backoff, and meanwhile [`Journal::failing`] is true, so that sessions
//! refuse new turns and stop the ones in flight. When the store takes the batch, everything
//! queued behind it follows, in order, and nothing is lost.
//!
//! The API's renames and deletions do not wait behind such a batch: [`Journal::write_alone`]
//! hands the writer a write that it makes in a transaction of its own, between two tries, and
//! answers with what the store said. A deletion takes the writes queued for its conversation
//! with it, so that deleting a conversation is how a full store makes room.
//!
//! Depends on: `common::error`, `common::metrics`, `common::protocol`, `store`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};

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

enum Entry {
    Write(WriteOp, Option<Ack>),
    Sync(Sender<()>),
    /// A write someone waits for: see [`Journal::write_alone`].
    Alone(Alone),
}

impl Entry {
    fn is_alone(&self) -> bool {
        matches!(self, Entry::Alone(_))
    }
}

/// A write the writer has not started yet.
const WAITING: u8 = 0;
/// A write the writer has started: its caller waits for its answer.
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
    /// True when the writer may start it: its caller has not given up.
    fn start(&self) -> bool {
        self.state
            .compare_exchange(WAITING, STARTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// The queue between submitters and the writer thread.
///
/// It is unbounded on purpose: sessions submit while holding their lock, and the writer takes
/// session locks to release events, so a bounded queue could deadlock. The writer takes the
/// whole queue into each transaction, so it stays short. A mutex and condvar rather than a
/// channel: the writer swaps out everything queued in one step, and nobody spins.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    filled: Condvar,
    /// True while the store refuses the batch at the head of the queue.
    failing: AtomicBool,
}

#[derive(Default)]
struct QueueState {
    entries: Vec<Entry>,
    /// Set when the last `Journal` handle is gone: the writer finishes the queue and ends.
    closed: bool,
}

/// Closes the queue when the last handle goes.
struct Closer(Arc<Queue>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.state.lock().closed = true;
        self.0.filled.notify_one();
    }
}

/// A cheap-to-clone handle to the writer thread.
#[derive(Clone)]
pub struct Journal {
    queue: Arc<Queue>,
    _closer: Arc<Closer>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("queued", &self.queue.state.lock().entries.len())
            .finish()
    }
}

impl Journal {
    /// Starts the writer thread. It ends when the last `Journal` handle is dropped, after
    /// writing what is queued.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] when the thread cannot be started.
    pub fn spawn(store: Arc<dyn ConversationStore>, metrics: Arc<Metrics>) -> Result<Self> {
        let queue = Arc::new(Queue::default());
        let writer_queue = queue.clone();
        thread::Builder::new()
            .name("journal".into())
            .spawn(move || run(store.as_ref(), &writer_queue, &metrics))
            .map_err(Error::Spawn)?;
        Ok(Journal {
            _closer: Arc::new(Closer(queue.clone())),
            queue,
        })
    }

    /// Queues a write. With `ack`, `ack.0.durable(ack.1)` is called once it is committed.
    pub fn submit(&self, op: WriteOp, ack: Option<Ack>) {
        self.push(Entry::Write(op, ack));
    }

    /// Waits until everything submitted before this call is committed (or `timeout` passes).
    /// True when it was.
    pub fn sync(&self, timeout: Duration) -> bool {
        let (done, wait) = crossbeam_channel::bounded(1);
        self.push(Entry::Sync(done));
        wait.recv_timeout(timeout).is_ok()
    }

    /// Writes `op` in a transaction of its own and answers what the store answered: for the
    /// API's renames and deletions, whose callers must learn whether the change was made.
    ///
    /// It does not wait behind a batch the store refuses: the writer takes it between two tries
    /// of that batch. A deletion takes every write for its conversation queued before it with
    /// it (none of them is made), so that deleting makes room in a full store. When `timeout`
    /// passes before the writer has started the write, it is never made.
    ///
    /// # Errors
    ///
    /// The store's error; [`Error::Store`] when `timeout` passed first (then the write was not
    /// made, or, when it had started, its outcome is unknown, which the error says).
    pub fn write_alone(&self, op: WriteOp, timeout: Duration) -> Result<()> {
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
        // The writer started it meanwhile: its answer is what happened.
        answer.recv_timeout(timeout).unwrap_or_else(|_| {
            Err(Error::store(
                "the store did not answer in time; the change may or may not be made",
            ))
        })
    }

    /// True while the store refuses writes: the batch at the head of the queue is being
    /// retried, and nothing behind it is committed.
    pub fn failing(&self) -> bool {
        self.queue.failing.load(Ordering::Relaxed)
    }

    fn push(&self, entry: Entry) {
        let mut state = self.queue.state.lock();
        // A write someone waits for wakes a writer that waits to retry a refused batch too.
        let wake = state.entries.is_empty() || entry.is_alone();
        state.entries.push(entry);
        drop(state);
        if wake {
            self.queue.filled.notify_one();
        }
    }
}

fn run(store: &dyn ConversationStore, queue: &Queue, metrics: &Metrics) {
    let mut batch = Batch::default();
    let mut syncs = Vec::new();
    let mut alone = Vec::new();
    let mut entries = Vec::new();
    loop {
        {
            let mut state = queue.state.lock();
            while state.entries.is_empty() && !state.closed {
                queue.filled.wait(&mut state);
            }
            if state.entries.is_empty() {
                return;
            }
            std::mem::swap(&mut entries, &mut state.entries);
        }
        for entry in entries.drain(..) {
            match entry {
                Entry::Write(op, ack) => batch.push(op, ack),
                Entry::Sync(done) => syncs.push(done),
                Entry::Alone(write) => alone.push(write),
            }
        }
        // Writes someone waits for go first, each on its own; a deletion takes what was queued
        // for its conversation with it.
        for write in alone.drain(..) {
            write_alone(store, write, &mut batch);
        }
        if !batch.ops.is_empty() {
            if !write(store, &mut batch, queue) {
                // Given up at shutdown: what was never committed is never released.
                batch.acks.clear();
            }
            Metrics::bump(&metrics.journal_batches);
            Metrics::add(&metrics.journal_writes, batch.ops.len() as u64);
        }
        release(&mut batch.acks);
        batch.ops.clear();
        for done in syncs.drain(..) {
            let _ = done.send(());
        }
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

/// Writes one batch, retrying with backoff for as long as the store refuses it, so that a full
/// disk delays events instead of losing them. Writes someone waits for that arrive meanwhile
/// are written on their own, between two tries (see [`write_alone`]); after one, the batch is
/// tried again at once, since a deletion may have made room. Only once the journal is shutting
/// down does it give up, after a few more tries; false then.
fn write(store: &dyn ConversationStore, batch: &mut Batch, queue: &Queue) -> bool {
    let mut backoff = FIRST_BACKOFF;
    let mut tries_at_shutdown = 0;
    loop {
        let error = match store.apply(&batch.ops) {
            Ok(()) => {
                if queue.failing.swap(false, Ordering::Relaxed) {
                    log::warn!("journal: the store takes writes again");
                }
                return true;
            }
            Err(e) => e,
        };
        if !queue.failing.swap(true, Ordering::Relaxed) {
            log::error!(
                "journal: the store refused a batch of {} writes ({error}); new turns are \
                 refused and the batch is retried until it is taken",
                batch.ops.len()
            );
        }
        let mut state = queue.state.lock();
        if state.closed {
            tries_at_shutdown += 1;
            if tries_at_shutdown >= ATTEMPTS_AT_SHUTDOWN {
                log::error!(
                    "journal: shutting down with a batch of {} writes the store refused: \
                     {error}; no client was shown its events",
                    batch.ops.len()
                );
                return false;
            }
        }
        // Waits out the backoff, unless a write someone waits for comes first.
        let deadline = Instant::now() + backoff;
        while !state.entries.iter().any(Entry::is_alone)
            && !queue.filled.wait_until(&mut state, deadline).timed_out()
        {}
        let alone = take_alone(&mut state.entries);
        drop(state);
        if alone.is_empty() {
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        for write in alone {
            write_alone(store, write, batch);
        }
        if batch.ops.is_empty() {
            // Everything refused was a deleted conversation's: nothing is held up any more.
            if queue.failing.swap(false, Ordering::Relaxed) {
                log::warn!("journal: the refused batch went with a deletion");
            }
            return true;
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
        let (synced, _) = crossbeam_channel::bounded(1);
        let mut entries = vec![
            Entry::Write(event(&a, 1), None),
            Entry::Write(event(&b, 1), None),
            Entry::Sync(synced),
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
        assert_eq!(left, [Some(&b), None, Some(&b)]);

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
        let create = WriteOp::CreateSession {
            id: session.clone(),
            owner: "local".into(),
            user_id: None,
            personality: None,
            model: None,
        };
        journal.submit(create, None);
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
        journal.submit(
            WriteOp::CreateSession {
                id: session.clone(),
                owner: "local".into(),
                user_id: None,
                personality: None,
                model: None,
            },
            None,
        );
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
