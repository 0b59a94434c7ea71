//! `TurnPool`: every user message runs on a thread of its own. The pool, owned by the server,
//! keeps the threads whose turn ended parked for a while, and hands the next turn to one of
//! them with `unpark` instead of starting a new thread.
//!
//! Starting a thread maps and unmaps its stack, which flushes the TLB of every core and takes
//! the kernel's memory-map lock; at thousands of turns a second that cost more than the rest of
//! the turn. A parked thread still runs one task at a time, so a turn never waits for another.
//!
//! Depends on nothing in the crate.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Stack of a turn thread. Turns are few (one per session at most, plus cancelled ones that
/// are finishing), so they get room for model clients and deep JSON.
const TURN_STACK_BYTES: usize = 1 << 20;

/// Threads parked waiting for a task, at most.
const MAX_PARKED: usize = 64;

/// How long a parked thread waits for a task before it ends.
const PARK_TIMEOUT: Duration = Duration::from_secs(30);

/// What a pool thread runs: one turn.
pub trait Task: Send + 'static {
    /// Runs to the end on a pool thread. A panic is the task's own business: it should catch
    /// it, since the thread goes on to the next task.
    fn run(self);

    /// No thread could run it (the system refused a new one).
    fn refused(self, error: &io::Error);
}

/// Threads for tasks, parked and reused. A cheap-to-clone handle.
pub struct TurnPool<T: Task> {
    inner: Arc<PoolInner<T>>,
}

impl<T: Task> Clone for TurnPool<T> {
    fn clone(&self) -> Self {
        TurnPool {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Task> fmt::Debug for TurnPool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnPool")
            .field("running", &self.running())
            .field("parked", &self.inner.parked.lock().len())
            .finish()
    }
}

struct PoolInner<T> {
    /// The parked threads' slots, newest last. Locked only to push, pop or remove, never
    /// while holding a slot's lock.
    parked: Mutex<Vec<Arc<Slot<T>>>>,
    /// Tasks started and not yet finished.
    running: AtomicUsize,
    /// Guards nothing but the wait for `running` to reach zero.
    idle_lock: Mutex<()>,
    idle: Condvar,
}

/// Where one parked thread waits for its next task.
struct Slot<T> {
    task: Mutex<Option<T>>,
    thread: Thread,
}

impl<T: Task> Default for TurnPool<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Task> TurnPool<T> {
    /// A pool with no threads yet.
    pub fn new() -> Self {
        TurnPool {
            inner: Arc::new(PoolInner {
                parked: Mutex::new(Vec::new()),
                running: AtomicUsize::new(0),
                idle_lock: Mutex::new(()),
                idle: Condvar::new(),
            }),
        }
    }

    /// Starts `task` on a parked thread (woken with `unpark`), or on a new one, and returns at
    /// once. When no thread can be started, the task is told so ([`Task::refused`]).
    pub fn start(&self, task: T) {
        self.inner.running.fetch_add(1, Ordering::SeqCst);
        let parked = self.inner.parked.lock().pop();
        if let Some(slot) = parked {
            *slot.task.lock() = Some(task);
            slot.thread.unpark();
            return;
        }
        let pool = self.clone();
        // The first task reaches a new thread through a cell rather than the closure, so that
        // a failed spawn can give it back.
        let cell = Arc::new(Mutex::new(Some(task)));
        let first = cell.clone();
        let spawned = thread::Builder::new()
            .name("turn".into())
            .stack_size(TURN_STACK_BYTES)
            .spawn(move || {
                let task = first.lock().take();
                if let Some(task) = task {
                    pool.work(task);
                }
            });
        if let Err(e) = spawned {
            log::warn!("turn pool: no thread could be started: {e}");
            self.finished();
            let task = cell.lock().take();
            if let Some(task) = task {
                task.refused(&e);
            }
        }
    }

    /// Tasks started and not yet finished.
    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::SeqCst)
    }

    /// Waits until no task runs, or until `deadline`; true when none does.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        let mut guard = self.inner.idle_lock.lock();
        while self.running() > 0 {
            if self.inner.idle.wait_until(&mut guard, deadline).timed_out() {
                return self.running() == 0;
            }
        }
        true
    }

    fn finished(&self) {
        if self.inner.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _guard = self.inner.idle_lock.lock();
            self.inner.idle.notify_all();
        }
    }

    /// A pool thread's life: run a task, park, run the next, until nothing comes for a while.
    fn work(&self, first: T) {
        first.run();
        self.finished();
        let slot = Arc::new(Slot {
            task: Mutex::new(None),
            thread: thread::current(),
        });
        loop {
            {
                let mut parked = self.inner.parked.lock();
                if parked.len() >= MAX_PARKED {
                    return;
                }
                parked.push(slot.clone());
            }
            let deadline = Instant::now() + PARK_TIMEOUT;
            let next = loop {
                if let Some(next) = slot.task.lock().take() {
                    break next;
                }
                let now = Instant::now();
                if now < deadline {
                    thread::park_timeout(deadline - now);
                    continue;
                }
                let mut parked = self.inner.parked.lock();
                if let Some(at) = parked.iter().position(|other| Arc::ptr_eq(other, &slot)) {
                    parked.remove(at);
                    return;
                }
                // Someone took the slot just now: the task is on its way, so wait for it.
                drop(parked);
                thread::park_timeout(PARK_TIMEOUT);
            };
            next.run();
            self.finished();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    struct Send(mpsc::Sender<thread::ThreadId>);

    impl Task for Send {
        fn run(self) {
            let _ = self.0.send(thread::current().id());
        }

        fn refused(self, _error: &io::Error) {}
    }

    #[test]
    fn a_finished_thread_takes_the_next_task_and_the_pool_waits_until_idle() {
        let pool = TurnPool::new();
        let (sender, receiver) = mpsc::channel();
        pool.start(Send(sender.clone()));
        let first = receiver.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(pool.wait_idle(Instant::now() + Duration::from_secs(10)));
        // Wait until the thread has parked, then the next task reuses it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.inner.parked.lock().is_empty() {
            assert!(Instant::now() < deadline, "the thread never parked");
            thread::yield_now();
        }
        pool.start(Send(sender));
        let second = receiver.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first, second);
        assert!(pool.wait_idle(Instant::now() + Duration::from_secs(10)));
        assert_eq!(pool.running(), 0);
    }
}
