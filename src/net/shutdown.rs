//! `Shutdown`: the server's state of life (running, draining, closing) and the open
//! connections it must wake when it closes. Replaces flags polled in loops: whoever waits for a
//! phase or for the connections to be gone blocks on a condition variable.
//!
//! Depends on nothing in the crate.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Something that sleeps and can be woken to look at the shutdown phase: a connection.
pub trait Wake: Send + Sync {
    /// Makes the sleeper look around soon. Never blocks.
    fn wake(&self);
}

/// Where the server is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Serving.
    Running = 0,
    /// Graceful shutdown has begun: no new connections or turns; turns in flight finish.
    Draining = 1,
    /// Every event is written: connections send Close (1001) and end.
    Closing = 2,
}

/// A cheap-to-clone handle to the server's shutdown state.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Default)]
struct ShutdownInner {
    /// The [`Phase`], readable without the lock.
    phase: AtomicU8,
    /// The open connections, by id. Locked to add or remove one, and to wake them all.
    connections: Mutex<HashMap<u64, Arc<dyn Wake>>>,
    /// Notified when the last connection goes.
    empty: Condvar,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("phase", &self.phase())
            .field("connections", &self.inner.connections.lock().len())
            .finish()
    }
}

impl Shutdown {
    /// A server that runs.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.inner.phase.load(Ordering::SeqCst) {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Closing,
        }
    }

    /// True once graceful shutdown has begun (or closing).
    pub fn draining(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// True once connections must close.
    pub fn closing(&self) -> bool {
        self.phase() == Phase::Closing
    }

    /// Begins a graceful shutdown: no new turns.
    pub fn drain(&self) {
        self.inner
            .phase
            .fetch_max(Phase::Draining as u8, Ordering::SeqCst);
    }

    /// Tells every open connection to close, and wakes it.
    pub fn close(&self) {
        self.inner
            .phase
            .fetch_max(Phase::Closing as u8, Ordering::SeqCst);
        for connection in self.inner.connections.lock().values() {
            connection.wake();
        }
    }

    /// Counts a connection in until the returned guard is dropped; it is woken by
    /// [`Shutdown::close`]. A connection that registers after `close` sees the phase itself.
    pub fn register(&self, id: u64, connection: Arc<dyn Wake>) -> Registration {
        self.inner.connections.lock().insert(id, connection);
        Registration {
            shutdown: self.clone(),
            id,
        }
    }

    /// Open connections now.
    pub fn connections(&self) -> usize {
        self.inner.connections.lock().len()
    }

    /// Waits until every connection is gone, or `deadline`; true when they are.
    pub fn wait_closed(&self, deadline: Instant) -> bool {
        let mut connections = self.inner.connections.lock();
        while !connections.is_empty() {
            if self
                .inner
                .empty
                .wait_until(&mut connections, deadline)
                .timed_out()
            {
                return connections.is_empty();
            }
        }
        true
    }
}

/// One connection counted in by [`Shutdown::register`]; counts it out on drop.
pub struct Registration {
    shutdown: Shutdown,
    id: u64,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut connections = self.shutdown.inner.connections.lock();
        connections.remove(&self.id);
        if connections.is_empty() {
            self.shutdown.inner.empty.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::thread;
    use std::time::Duration;

    use super::*;

    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn close_wakes_every_connection_and_waits_for_them() {
        let shutdown = Shutdown::new();
        let counter = Arc::new(Counter::default());
        let first = shutdown.register(1, counter.clone());
        let second = shutdown.register(2, counter.clone());
        assert!(!shutdown.draining());
        shutdown.drain();
        assert!(shutdown.draining() && !shutdown.closing());
        shutdown.close();
        assert!(shutdown.closing());
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        assert!(!shutdown.wait_closed(Instant::now() + Duration::from_millis(10)));
        let leaving = thread::spawn(move || {
            drop(first);
            drop(second);
        });
        assert!(shutdown.wait_closed(Instant::now() + Duration::from_secs(10)));
        leaving.join().unwrap();
        assert_eq!(shutdown.connections(), 0);
    }
}
