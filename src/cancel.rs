//! `CancelFlag`: how a turn is told to stop. Depends on nothing in the crate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A cheap-to-clone flag, set once, that every part of a turn checks.
///
/// Besides the atomic bit it carries a condition variable, so that a sleeping tool wakes the
/// moment the turn is cancelled instead of polling.
#[derive(Clone, Debug, Default)]
pub struct CancelFlag {
    inner: Arc<CancelInner>,
}

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    /// Guards nothing but the wait itself; held only inside `cancel` and `sleep`.
    lock: Mutex<()>,
    wake: Condvar,
}

impl CancelFlag {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag and wakes every sleeper. Setting it twice is harmless.
    pub fn cancel(&self) {
        let _guard = self.inner.lock.lock();
        self.inner.cancelled.store(true, Ordering::SeqCst);
        self.inner.wake.notify_all();
    }

    /// True once [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Sleeps for `duration` or until cancelled, whichever comes first; true when cancelled.
    pub fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut guard = self.inner.lock.lock();
        while !self.is_cancelled() {
            if self.inner.wake.wait_until(&mut guard, deadline).timed_out() {
                break;
            }
        }
        self.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    #[test]
    fn sleep_ends_when_cancelled() {
        let flag = CancelFlag::new();
        let sleeper = flag.clone();
        let started = Instant::now();
        let handle = thread::spawn(move || sleeper.sleep(Duration::from_secs(30)));
        flag.cancel();
        assert!(handle.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn sleep_runs_out_when_not_cancelled() {
        assert!(!CancelFlag::new().sleep(Duration::from_millis(5)));
    }
}
