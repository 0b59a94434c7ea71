//! `Approvals`: the tool calls of one turn that wait for a person to allow them
//! (`approval_request`, answered by `approve`), and how the turn waits for the answer: on a
//! condition variable, woken by the answer, by the turn's cancel flag, or by its deadline.
//!
//! Depends on: `common::cancel`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::common::cancel::CancelFlag;

/// How a wait for approval ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A person allowed the call.
    Allowed,
    /// A person denied the call.
    Denied,
    /// Nobody answered before the deadline: the call is denied.
    TimedOut,
    /// The turn was cancelled (by `cancel` or a newer message) while it waited.
    Cancelled,
}

/// The calls of one turn that wait for an answer, shared by the turn (which waits) and its
/// session (which hands it each `approve`). Cheap to clone. Holds at most one entry per tool
/// call of the turn's current step (and per MCP sampling request, under its request id), and
/// only until the turn has its answer.
#[derive(Clone, Default)]
pub struct Approvals {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Each waiting call's answer, `None` until it comes. Held only to read or change the map.
    calls: Mutex<HashMap<String, Option<bool>>>,
    /// Notified when an answer comes or the turn is cancelled.
    changed: Condvar,
}

impl fmt::Debug for Approvals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let calls = self.inner.calls.lock();
        f.debug_struct("Approvals")
            .field("waiting", &calls.len())
            .finish()
    }
}

impl Approvals {
    /// No call waiting.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `call_id` as waiting for an answer. Call it before the `approval_request` goes
    /// out, so that an answer sent the moment a client sees it finds the call waiting.
    pub fn expect(&self, call_id: &str) {
        self.inner.calls.lock().insert(call_id.to_owned(), None);
    }

    /// Records the answer for `call_id` and wakes its waiter. True when the call was waiting
    /// and had no answer yet: the first answer decides, later ones (and answers for calls that
    /// are not waiting) change nothing.
    pub fn decide(&self, call_id: &str, allow: bool) -> bool {
        let mut calls = self.inner.calls.lock();
        match calls.get_mut(call_id) {
            Some(answer @ None) => {
                *answer = Some(allow);
                self.inner.changed.notify_all();
                true
            }
            _ => false,
        }
    }

    /// True when `call_id` waits for an answer.
    pub fn is_waiting(&self, call_id: &str) -> bool {
        matches!(self.inner.calls.lock().get(call_id), Some(None))
    }

    /// Waits for the answer to `call_id` until `deadline`, or until `cancel` is set, and then
    /// forgets the call. A call that was never [`expect`](Self::expect)ed is
    /// [`Verdict::Denied`].
    pub fn wait(&self, call_id: &str, deadline: Instant, cancel: &CancelFlag) -> Verdict {
        let inner = self.inner.clone();
        // The hook takes the lock before notifying, so the wake-up cannot fall between the
        // check below and the wait.
        let _hook = cancel.on_cancel(move || {
            let _calls = inner.calls.lock();
            inner.changed.notify_all();
        });
        let mut calls = self.inner.calls.lock();
        let verdict = loop {
            match calls.get(call_id) {
                None | Some(Some(false)) => break Verdict::Denied,
                Some(Some(true)) => break Verdict::Allowed,
                Some(None) => {}
            }
            if cancel.is_cancelled() {
                break Verdict::Cancelled;
            }
            if self
                .inner
                .changed
                .wait_until(&mut calls, deadline)
                .timed_out()
                && matches!(calls.get(call_id), Some(None))
            {
                break Verdict::TimedOut;
            }
        };
        calls.remove(call_id);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use std::thread;
    use std::time::Duration;

    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn the_first_answer_decides_and_wakes_the_waiter() {
        let approvals = Approvals::new();
        let cancel = CancelFlag::new();
        approvals.expect("a");
        approvals.expect("b");
        assert!(approvals.is_waiting("a"));
        let answering = approvals.clone();
        let answer = thread::spawn(move || {
            assert!(answering.decide("a", true));
            // Too late: the first answer stands.
            assert!(!answering.decide("a", false));
            assert!(answering.decide("b", false));
        });
        assert_eq!(
            approvals.wait("a", Instant::now() + LONG, &cancel),
            Verdict::Allowed
        );
        assert_eq!(
            approvals.wait("b", Instant::now() + LONG, &cancel),
            Verdict::Denied
        );
        answer.join().unwrap();
        // Forgotten once answered; unknown ids change nothing.
        assert!(!approvals.is_waiting("a"));
        assert!(!approvals.decide("a", true));
        assert!(!approvals.decide("nope", true));
    }

    #[test]
    fn a_deadline_or_a_cancel_ends_the_wait() {
        let approvals = Approvals::new();
        let cancel = CancelFlag::new();
        approvals.expect("slow");
        let started = Instant::now();
        let verdict = approvals.wait("slow", Instant::now() + Duration::from_millis(50), &cancel);
        assert_eq!(verdict, Verdict::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));

        approvals.expect("cancelled");
        let flag = cancel.clone();
        let canceller = thread::spawn(move || flag.cancel());
        let started = Instant::now();
        assert_eq!(
            approvals.wait("cancelled", Instant::now() + LONG, &cancel),
            Verdict::Cancelled
        );
        assert!(started.elapsed() < LONG);
        canceller.join().unwrap();
        assert!(!approvals.is_waiting("cancelled"));
    }
}
