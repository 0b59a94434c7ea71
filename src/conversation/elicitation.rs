//! `Elicitations`: the forms and URLs of one turn that an MCP server asked the user about
//! (`elicitation_request`, answered by `elicit`), each answer checked against its form before
//! it counts, and how the asking call waits: on a condition variable, woken by the answer, by
//! the turn's cancel flag, or by its deadline (`--approval-timeout`), after which the server is
//! told `cancel`.
//!
//! Depends on: `common::cancel`, `common::protocol`, `tools::ask`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use serde_json::Value;

use crate::common::cancel::CancelFlag;
use crate::common::protocol::ElicitAction;
use crate::common::protocol::form;
use crate::tools::ask::ElicitAnswer;

/// Why an `elicit` was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElicitRefusal {
    /// No request of that id waits (never asked, already answered, or its turn ended).
    NotWaiting,
    /// The answer does not fit the form; the request still waits.
    Invalid(String),
}

/// The requests of one turn that wait for an answer, shared by the turn (whose tool call
/// waits) and its session (which hands it each `elicit`). Cheap to clone.
#[derive(Clone, Default)]
pub struct Elicitations {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Each waiting request. Held only to read or change the map.
    waiting: Mutex<HashMap<String, Waiting>>,
    /// Notified when an answer comes or the turn is cancelled.
    changed: Condvar,
}

/// One waiting request: its form (none in URL mode) and, once given, its answer.
struct Waiting {
    schema: Option<Value>,
    answer: Option<ElicitAnswer>,
}

impl fmt::Debug for Elicitations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let waiting = self.inner.waiting.lock();
        f.debug_struct("Elicitations")
            .field("waiting", &waiting.len())
            .finish()
    }
}

impl Elicitations {
    /// No request waiting.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `request_id` as waiting, with its form's `schema` (`None` in URL mode). Call it
    /// before the `elicitation_request` goes out.
    pub fn expect(&self, request_id: &str, schema: Option<Value>) {
        let waiting = Waiting {
            schema,
            answer: None,
        };
        self.inner
            .waiting
            .lock()
            .insert(request_id.to_owned(), waiting);
    }

    /// Records the answer to `request_id` and wakes its waiter: the first answer that fits
    /// decides. An `accept` must carry content that fits the form (in URL mode it carries
    /// none); a decline or cancel carries none.
    ///
    /// # Errors
    ///
    /// [`ElicitRefusal::NotWaiting`] when the request does not wait, [`ElicitRefusal::Invalid`] (the
    /// request still waits) when the answer does not fit.
    pub fn answer(&self, request_id: &str, answer: ElicitAnswer) -> Result<(), ElicitRefusal> {
        let mut waiting = self.inner.waiting.lock();
        let Some(entry) = waiting.get_mut(request_id).filter(|w| w.answer.is_none()) else {
            return Err(ElicitRefusal::NotWaiting);
        };
        let answer = match (answer.action, &entry.schema) {
            (ElicitAction::Accept, Some(schema)) => {
                let content = answer.content.unwrap_or_default();
                form::check(schema, &content).map_err(ElicitRefusal::Invalid)?;
                ElicitAnswer {
                    action: ElicitAction::Accept,
                    content: Some(content),
                }
            }
            (action, _) => ElicitAnswer::bare(action),
        };
        entry.answer = Some(answer);
        self.inner.changed.notify_all();
        Ok(())
    }

    /// True when `request_id` waits for an answer.
    pub fn is_waiting(&self, request_id: &str) -> bool {
        self.inner
            .waiting
            .lock()
            .get(request_id)
            .is_some_and(|w| w.answer.is_none())
    }

    /// Waits for the answer to `request_id` until `deadline`, or until `cancel` is set, and
    /// then forgets the request. No answer in time, a cancelled turn and a request never
    /// [`expect`](Self::expect)ed all answer `cancel`.
    pub fn wait(&self, request_id: &str, deadline: Instant, cancel: &CancelFlag) -> ElicitAnswer {
        let inner = self.inner.clone();
        // The hook takes the lock before notifying, so the wake-up cannot fall between the
        // check below and the wait.
        let _hook = cancel.on_cancel(move || {
            let _waiting = inner.waiting.lock();
            inner.changed.notify_all();
        });
        let mut waiting = self.inner.waiting.lock();
        let answer = loop {
            match waiting.get_mut(request_id) {
                None => break None,
                Some(entry) if entry.answer.is_some() => break entry.answer.take(),
                Some(_) => {}
            }
            if cancel.is_cancelled()
                || self
                    .inner
                    .changed
                    .wait_until(&mut waiting, deadline)
                    .timed_out()
                    && waiting.get(request_id).is_some_and(|w| w.answer.is_none())
            {
                break None;
            }
        };
        waiting.remove(request_id);
        answer.unwrap_or_else(|| ElicitAnswer::bare(ElicitAction::Cancel))
    }
}

#[cfg(test)]
mod tests {
    use std::thread;
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    fn accept(content: Value) -> ElicitAnswer {
        ElicitAnswer {
            action: ElicitAction::Accept,
            content: content.as_object().cloned(),
        }
    }

    #[test]
    fn a_bad_answer_is_refused_and_the_request_still_waits_for_a_good_one() {
        let elicitations = Elicitations::new();
        let cancel = CancelFlag::new();
        let schema = json!({"type": "object", "properties": {"name": {"type": "string"}},
                            "required": ["name"]});
        elicitations.expect("r1", Some(schema));
        let answering = elicitations.clone();
        let answer = thread::spawn(move || {
            assert!(matches!(
                answering.answer("r1", accept(json!({"name": 3}))),
                Err(ElicitRefusal::Invalid(_))
            ));
            assert!(answering.is_waiting("r1"));
            assert_eq!(
                answering.answer("r1", accept(json!({"name": "Ann"}))),
                Ok(())
            );
            // The first good answer decides.
            assert_eq!(
                answering.answer("r1", ElicitAnswer::bare(ElicitAction::Decline)),
                Err(ElicitRefusal::NotWaiting)
            );
        });
        let got = elicitations.wait("r1", Instant::now() + LONG, &cancel);
        answer.join().unwrap();
        assert_eq!(got, accept(json!({"name": "Ann"})));
        assert!(!elicitations.is_waiting("r1"));
        assert_eq!(
            elicitations.answer("nope", ElicitAnswer::bare(ElicitAction::Cancel)),
            Err(ElicitRefusal::NotWaiting)
        );
    }

    #[test]
    fn a_decline_drops_content_and_a_deadline_or_cancel_answers_cancel() {
        let elicitations = Elicitations::new();
        let cancel = CancelFlag::new();
        elicitations.expect("url", None);
        let declined = ElicitAnswer {
            action: ElicitAction::Decline,
            content: json!({"x": 1}).as_object().cloned(),
        };
        elicitations.answer("url", declined).unwrap();
        assert_eq!(
            elicitations.wait("url", Instant::now() + LONG, &cancel),
            ElicitAnswer::bare(ElicitAction::Decline)
        );

        elicitations.expect("slow", None);
        let started = Instant::now();
        let late = elicitations.wait("slow", Instant::now() + Duration::from_millis(50), &cancel);
        assert_eq!(late, ElicitAnswer::bare(ElicitAction::Cancel));
        assert!(started.elapsed() >= Duration::from_millis(50));

        elicitations.expect("cancelled", None);
        let flag = cancel.clone();
        let canceller = thread::spawn(move || flag.cancel());
        let got = elicitations.wait("cancelled", Instant::now() + LONG, &cancel);
        canceller.join().unwrap();
        assert_eq!(got, ElicitAnswer::bare(ElicitAction::Cancel));
    }
}
