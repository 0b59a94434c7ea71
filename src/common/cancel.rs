//! `CancelFlag`: how a turn is told to stop.
//!
//! Nobody polls it: a sleeping tool waits on its condition variable, and a wait on something
//! else (a model's stream, an MCP answer, a server being restarted) registers a hook
//! ([`CancelFlag::on_cancel`]) that wakes that wait the moment the turn is cancelled.
//!
//! Depends on nothing in the crate.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// What a hook does when the flag is set: wake one wait. Must not block.
type Hook = Arc<dyn Fn() + Send + Sync>;

/// A cheap-to-clone flag, set once, that every part of a turn checks.
///
/// Besides the atomic bit it carries a condition variable, so that a sleeping tool wakes the
/// moment the turn is cancelled, and the hooks of the waits in progress.
#[derive(Clone, Debug, Default)]
pub struct CancelFlag {
    inner: Arc<CancelInner>,
}

#[derive(Default)]
struct CancelInner {
    cancelled: AtomicBool,
    /// The hooks of the waits in progress. Held only inside `cancel`, `sleep` and while a
    /// hook is added or removed; hooks are called after it is released.
    hooks: Mutex<Hooks>,
    wake: Condvar,
}

impl fmt::Debug for CancelInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelInner")
            .field("cancelled", &self.cancelled)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Hooks {
    next: u64,
    waiting: Vec<(u64, Hook)>,
}

impl CancelFlag {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag, wakes every sleeper and calls every hook. Setting it twice is harmless.
    pub fn cancel(&self) {
        let hooks: Vec<Hook> = {
            let hooks = self.inner.hooks.lock();
            self.inner.cancelled.store(true, Ordering::SeqCst);
            self.inner.wake.notify_all();
            hooks.waiting.iter().map(|(_, hook)| hook.clone()).collect()
        };
        for hook in hooks {
            hook();
        }
    }

    /// True once [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Sleeps for `duration` or until cancelled, whichever comes first; true when cancelled.
    pub fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut guard = self.inner.hooks.lock();
        while !self.is_cancelled() {
            if self.inner.wake.wait_until(&mut guard, deadline).timed_out() {
                break;
            }
        }
        self.is_cancelled()
    }

    /// Calls `hook` when the flag is set (at once, on this thread, if it is set already),
    /// until the returned guard is dropped. A wait on something other than this flag uses it
    /// to be woken: the hook sends to the channel the wait selects on, or notifies its
    /// condition variable. The hook must not block, and must not take a lock its waiter holds
    /// while registering.
    pub fn on_cancel(&self, hook: impl Fn() + Send + Sync + 'static) -> OnCancel {
        let hook: Hook = Arc::new(hook);
        let id = {
            let mut hooks = self.inner.hooks.lock();
            let id = hooks.next;
            hooks.next += 1;
            hooks.waiting.push((id, hook.clone()));
            id
        };
        if self.is_cancelled() {
            hook();
        }
        OnCancel {
            flag: self.clone(),
            id,
        }
    }
}

/// A hook registered by [`CancelFlag::on_cancel`]; dropping it removes the hook.
pub struct OnCancel {
    flag: CancelFlag,
    id: u64,
}

impl fmt::Debug for OnCancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnCancel").field("id", &self.id).finish()
    }
}

impl Drop for OnCancel {
    fn drop(&mut self) {
        let id = self.id;
        self.flag
            .inner
            .hooks
            .lock()
            .waiting
            .retain(|(other, _)| *other != id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
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

    #[test]
    fn hooks_run_once_on_cancel_and_not_after_they_are_dropped() {
        let flag = CancelFlag::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let kept = flag.on_cancel(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let dropped_calls = Arc::new(AtomicUsize::new(0));
        let counted = dropped_calls.clone();
        drop(flag.on_cancel(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        // A wait blocked on a channel is woken by its hook.
        let (wake, woken) = crossbeam_channel::bounded::<()>(1);
        let _hook = flag.on_cancel(move || {
            let _ = wake.try_send(());
        });
        let canceller = flag.clone();
        let handle = thread::spawn(move || canceller.cancel());
        assert!(woken.recv_timeout(Duration::from_secs(10)).is_ok());
        handle.join().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(dropped_calls.load(Ordering::SeqCst), 0);
        drop(kept);
        // A hook added after the flag is set runs at once.
        let late = Arc::new(AtomicUsize::new(0));
        let counted = late.clone();
        let _late = flag.on_cancel(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(late.load(Ordering::SeqCst), 1);
    }
}
