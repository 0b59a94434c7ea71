//! `Journal`: the one writer thread through which every session's writes reach the store, in
//! batches (group commit). An event is handed to its session's subscribers only after the batch
//! that holds it is committed, so that anything a client has seen survives a crash.
//!
//! Depends on `store`, `metrics` and `error`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{Store, WriteOp};

/// Writes taken into one transaction at most.
const MAX_BATCH: usize = 4096;

/// Attempts at a failing batch before it is given up (and its events released anyway).
const ATTEMPTS: u32 = 3;

/// Told when the writes it asked for are committed.
pub trait Durable: Send + Sync {
    /// Everything up to event `seq` is in the store.
    fn durable(&self, seq: u64);
}

enum Entry {
    Write(WriteOp, Option<(Arc<dyn Durable>, u64)>),
    Sync(Sender<()>),
}

/// A cheap-to-clone handle to the writer thread.
///
/// The channel is unbounded on purpose: sessions submit while holding their lock, and the
/// writer takes session locks to release events, so a bounded channel could deadlock. The
/// writer drains everything queued into each transaction, so the queue stays short.
#[derive(Clone)]
pub struct Journal {
    sender: Sender<Entry>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("queued", &self.sender.len())
            .finish()
    }
}

impl Journal {
    /// Starts the writer thread. It ends when the last `Journal` handle is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] when the thread cannot be started.
    pub fn spawn(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Result<Self> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        thread::Builder::new()
            .name("journal".into())
            .spawn(move || run(store.as_ref(), &receiver, &metrics))
            .map_err(Error::Spawn)?;
        Ok(Journal { sender })
    }

    /// Queues a write. With `ack`, `ack.0.durable(ack.1)` is called once it is committed.
    pub fn submit(&self, op: WriteOp, ack: Option<(Arc<dyn Durable>, u64)>) {
        if self.sender.send(Entry::Write(op, ack)).is_err() {
            log::error!("journal: the writer thread is gone; a write was lost");
        }
    }

    /// Waits until everything submitted before this call is committed (or `timeout` passes).
    /// True when it was.
    pub fn sync(&self, timeout: Duration) -> bool {
        let (done, wait) = crossbeam_channel::bounded(1);
        self.sender.send(Entry::Sync(done)).is_ok() && wait.recv_timeout(timeout).is_ok()
    }
}

fn run(store: &dyn Store, receiver: &Receiver<Entry>, metrics: &Metrics) {
    let mut ops = Vec::new();
    let mut acks: Vec<(Arc<dyn Durable>, u64)> = Vec::new();
    let mut syncs = Vec::new();
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        while let Some(entry) = next.take() {
            match entry {
                Entry::Write(op, ack) => {
                    ops.push(op);
                    acks.extend(ack);
                }
                Entry::Sync(done) => syncs.push(done),
            }
            if ops.len() < MAX_BATCH {
                next = receiver.try_recv().ok();
            }
        }
        if !ops.is_empty() {
            write(store, &ops);
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

/// Writes one batch, retrying a few times. A batch that still fails is logged and dropped:
/// the server keeps serving (its events are released anyway) rather than stall every chat on
/// a broken disk.
fn write(store: &dyn Store, ops: &[WriteOp]) {
    for attempt in 1..=ATTEMPTS {
        match store.apply(ops) {
            Ok(()) => return,
            Err(e) if attempt < ATTEMPTS => {
                log::warn!(
                    "journal: batch of {} writes failed ({e}); retrying",
                    ops.len()
                );
                thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
            }
            Err(e) => log::error!("journal: batch of {} writes lost: {e}", ops.len()),
        }
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
    use crate::protocol::SessionId;
    use crate::store::SqliteStore;

    #[derive(Default)]
    struct Highest(AtomicU64);

    impl Durable for Highest {
        fn durable(&self, seq: u64) {
            self.0.fetch_max(seq, Ordering::SeqCst);
        }
    }

    #[test]
    fn acknowledges_after_commit_and_syncs() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let journal = Journal::spawn(store.clone(), Arc::default()).unwrap();
        let session = SessionId::from_random_bytes([7; 16]);
        let highest = Arc::new(Highest::default());
        journal.submit(
            WriteOp::CreateSession {
                id: session.clone(),
                user_id: None,
                personality: None,
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
                },
                Some((ack, seq)),
            );
        }
        assert!(journal.sync(Duration::from_secs(10)));
        assert_eq!(highest.0.load(Ordering::SeqCst), 100);
    }
}
