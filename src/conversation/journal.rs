//! `Journal`: the one writer thread through which every session's writes reach the store, in
//! batches (group commit). An event is handed to its session's subscribers only after the batch
//! that holds it is committed, so that anything a client has seen survives a crash.
//!
//! A batch the store refuses (a full disk, a quota) is never dropped and never released: the
//! writer retries it with backoff, and meanwhile [`Journal::failing`] is true, so that sessions
//! refuse new turns and stop the ones in flight. When the store takes the batch, everything
//! queued behind it follows, in order, and nothing is lost.
//!
//! Depends on: `common::error`, `common::metrics`, `store`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};

use crate::common::error::{Error, Result};
use crate::common::metrics::Metrics;
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

enum Entry {
    Write(WriteOp, Option<(Arc<dyn Durable>, u64)>),
    Sync(Sender<()>),
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
    pub fn submit(&self, op: WriteOp, ack: Option<(Arc<dyn Durable>, u64)>) {
        self.push(Entry::Write(op, ack));
    }

    /// Waits until everything submitted before this call is committed (or `timeout` passes).
    /// True when it was.
    pub fn sync(&self, timeout: Duration) -> bool {
        let (done, wait) = crossbeam_channel::bounded(1);
        self.push(Entry::Sync(done));
        wait.recv_timeout(timeout).is_ok()
    }

    /// True while the store refuses writes: the batch at the head of the queue is being
    /// retried, and nothing behind it is committed.
    pub fn failing(&self) -> bool {
        self.queue.failing.load(Ordering::Relaxed)
    }

    fn push(&self, entry: Entry) {
        let mut state = self.queue.state.lock();
        state.entries.push(entry);
        let first = state.entries.len() == 1;
        drop(state);
        // Only the first entry of a batch can find the writer asleep.
        if first {
            self.queue.filled.notify_one();
        }
    }
}

fn run(store: &dyn ConversationStore, queue: &Queue, metrics: &Metrics) {
    let mut ops = Vec::new();
    let mut acks: Vec<(Arc<dyn Durable>, u64)> = Vec::new();
    let mut syncs = Vec::new();
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
                Entry::Write(op, ack) => {
                    ops.push(op);
                    acks.extend(ack);
                }
                Entry::Sync(done) => syncs.push(done),
            }
        }
        if !ops.is_empty() {
            if !write(store, &ops, queue) {
                // Given up at shutdown: what was never committed is never released.
                acks.clear();
            }
            Metrics::bump(&metrics.journal_batches);
            Metrics::add(&metrics.journal_writes, ops.len() as u64);
        }
        release(&mut acks);
        ops.clear();
        for done in syncs.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Writes one batch, retrying with backoff for as long as the store refuses it, so that a full
/// disk delays events instead of losing them. Only once the journal is shutting down does it
/// give up, after a few more tries; false then.
fn write(store: &dyn ConversationStore, ops: &[WriteOp], queue: &Queue) -> bool {
    let mut backoff = FIRST_BACKOFF;
    let mut tries_at_shutdown = 0;
    loop {
        let error = match store.apply(ops) {
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
                ops.len()
            );
        }
        if queue.state.lock().closed {
            tries_at_shutdown += 1;
            if tries_at_shutdown >= ATTEMPTS_AT_SHUTDOWN {
                log::error!(
                    "journal: shutting down with a batch of {} writes the store refused: \
                     {error}; no client was shown its events",
                    ops.len()
                );
                return false;
            }
        }
        thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Tells each waiting session the highest of its events that is now committed: one call per
/// session per batch.
fn release(acks: &mut Vec<(Arc<dyn Durable>, u64)>) {
    let mut highest: HashMap<*const (), (Arc<dyn Durable>, u64)> = HashMap::new();
    for (target, seq) in acks.drain(..) {
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
