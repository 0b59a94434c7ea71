//! A session's part in a cluster of instances sharing one PostgreSQL store.
//!
//! One instance at a time writes a conversation: the *holder* of its lease. Every other
//! instance where the conversation is live is a *follower*: it writes nothing, and brings its
//! subscribers the events the holder wrote, reading them from the store when the holder's
//! batch signals them ([`Session::catch_up`]). A message sent through a follower makes it the
//! holder ([`Session::lead`]): it asks the holder to let go (which cancels the turn in flight
//! there, as a newer message does on one instance), waits for the lease, then reads what the
//! holder wrote and carries on from there. A `cancel` sent through a follower is passed to the
//! holder. With a cluster of one (SQLite), every session holds its lease from the start and
//! none of this costs anything.
//!
//! Depends on: `common::metrics`, `common::protocol`, `conversation::bot`, `conversation::session`, `store::cluster`, `store::tree`.

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::common::metrics::Metrics;
use crate::common::protocol::{ErrorCode, ServerEnvelope, ServerFrame};
use crate::conversation::bot::Bot;
use crate::conversation::bot::MAX_HISTORY_MESSAGES;
use crate::store::{LEASE_TTL, Signal, TurnTree};

use super::{REPLAY_PAGE_BYTES, Session, SessionState, WireText};

/// How long a message waits for the lease: past the lease's expiry, so that a holder that
/// died is outlived.
const LEAD_TIMEOUT: Duration = Duration::from_secs(LEASE_TTL.as_secs() + 5);

/// How often a waiting message asks the holder again to let go.
const ASK_AGAIN: Duration = Duration::from_secs(1);

/// How long a holder that lets go waits for the journal to write what it queued.
const LET_GO_SYNC: Duration = Duration::from_secs(10);

/// Where a message waiting for a lease sleeps until another instance lets one go.
#[derive(Debug, Default)]
pub struct Releases {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Releases {
    /// Wakes every waiter: some lease was let go.
    pub fn released(&self) {
        *self.generation.lock() += 1;
        self.changed.notify_all();
    }

    fn generation(&self) -> u64 {
        *self.generation.lock()
    }

    /// Sleeps until a release after `seen`, or until `deadline`.
    fn wait_past(&self, seen: u64, deadline: Instant) {
        let mut generation = self.generation.lock();
        while *generation == seen {
            if self
                .changed
                .wait_until(&mut generation, deadline)
                .timed_out()
            {
                return;
            }
        }
    }
}

impl Session {
    /// True when this instance writes the conversation now.
    pub fn holds_lease(&self) -> bool {
        self.inner.lock().holder
    }

    /// Makes this instance the conversation's writer, as a message needs: takes its lease,
    /// asking the holder to let go (every [`ASK_AGAIN`]) and waiting for it, then reads what
    /// the holder wrote.
    ///
    /// # Errors
    ///
    /// The code and words for the client: `storage` when the store could not be reached (or
    /// the conversation was deleted meanwhile), `server_busy` when the lease did not come
    /// within [`LEAD_TIMEOUT`].
    pub(super) fn lead(&self) -> Result<(), (ErrorCode, &'static str)> {
        const UNREACHABLE: (ErrorCode, &str) = (
            ErrorCode::Storage,
            "the server cannot reach its database right now; try again later",
        );
        let cluster = &self.inner.cluster;
        if !cluster.shared() {
            return Ok(());
        }
        let _transition = self.inner.lease.lock();
        if self.inner.lock().holder {
            return Ok(());
        }
        let id = &self.inner.id;
        let deadline = Instant::now() + LEAD_TIMEOUT;
        let mut asked: Option<Instant> = None;
        loop {
            let seen = self.inner.releases.generation();
            match cluster.acquire(id) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    log::warn!("session {}: cannot take its lease: {e}", id.short());
                    return Err(UNREACHABLE);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                log::warn!(
                    "session {}: its holder did not let go within {LEAD_TIMEOUT:?}",
                    id.short()
                );
                return Err((
                    ErrorCode::ServerBusy,
                    "another server holds this conversation and did not let it go; try again",
                ));
            }
            if asked.is_none_or(|at| now.duration_since(at) >= ASK_AGAIN) {
                if let Err(e) = cluster.signal(Signal::Yield, id, "") {
                    log::warn!("session {}: cannot ask its holder: {e}", id.short());
                }
                asked = Some(now);
            }
            self.inner
                .releases
                .wait_past(seen, deadline.min(now + ASK_AGAIN));
        }
        if self.take_over() {
            Ok(())
        } else {
            Err(UNREACHABLE)
        }
    }

    /// Becomes the writer of a conversation whose lease this instance has just taken: reads
    /// what the last holder wrote (its events, conversation, notes and numbering) and closes a
    /// turn it left open, which only a holder that died does. False when the conversation is
    /// gone or cannot be read.
    fn take_over(&self) -> bool {
        self.catch_up();
        let shared = &self.inner;
        let stored = match shared.store.load(&shared.id, 1, MAX_HISTORY_MESSAGES) {
            Ok(Some(stored)) => stored,
            Ok(None) => return false,
            Err(e) => {
                log::warn!("session {}: cannot be read: {e}", shared.id.short());
                let _ = shared.cluster.release(&shared.id);
                return false;
            }
        };
        {
            let mut state = shared.lock();
            let engine = state.bot.engine().clone();
            state.bot = Bot::restore(
                engine,
                stored.personality,
                stored.next_message,
                stored.messages,
            )
            .with_model(stored.model);
            state.tree = stored.tree;
            state.holder = true;
        }
        shared.knowledge.replace_notes(stored.notes);
        self.settle(stored.open_turn);
        Metrics::bump(&shared.metrics.leases_taken);
        log::info!("session {}: took the lease", shared.id.short());
        true
    }

    /// Takes the lease of a conversation whose holder stopped renewing it (its instance died),
    /// and closes the turn it left open. Nothing when the lease is still held.
    pub(super) fn recover(&self) {
        let _transition = self.inner.lease.lock();
        if self.inner.lock().holder {
            return;
        }
        if matches!(self.inner.cluster.acquire(&self.inner.id), Ok(true)) {
            self.take_over();
        }
    }

    /// Lets go of the lease because another instance asked for it: cancels the turn in flight
    /// (its `status cancelled` is written first), waits until everything queued is written,
    /// and tells the others. Nothing when this instance does not hold it.
    pub fn let_go(&self) {
        let _transition = self.inner.lease.lock();
        {
            let mut state = self.inner.lock();
            if !std::mem::take(&mut state.holder) {
                return;
            }
            self.cancel_locked(&mut state);
        }
        let id = &self.inner.id;
        if !self.inner.persist.sync(LET_GO_SYNC) {
            log::error!("session {}: the journal did not write in time", id.short());
        }
        let cluster = &self.inner.cluster;
        if let Err(e) = cluster
            .release(id)
            .and_then(|_| cluster.signal(Signal::Released, id, ""))
        {
            log::warn!("session {}: cannot let its lease go: {e}", id.short());
        }
        log::info!("session {}: let its lease go", id.short());
    }

    /// Brings a follower's subscribers the events other instances wrote since the last it
    /// has, reading them from the store. Nothing for the holder, whose events are its own.
    pub fn catch_up(&self) {
        self.catch_up_to(u64::MAX);
    }

    /// [`catch_up`](Self::catch_up), up to event `up_to` and no further (the newest event of
    /// the batch that signalled it).
    pub fn catch_up_to(&self, up_to: u64) {
        loop {
            let after = {
                let state = self.inner.lock();
                if state.holder || state.closed {
                    return;
                }
                state.log.last_seq()
            };
            let page =
                match self
                    .inner
                    .store
                    .events(&self.inner.id, after, up_to, REPLAY_PAGE_BYTES)
                {
                    Ok(page) => page,
                    Err(e) => {
                        log::warn!(
                            "session {}: cannot read new events: {e}",
                            self.inner.id.short()
                        );
                        return;
                    }
                };
            if page.events.is_empty() {
                return;
            }
            let mut state = self.inner.lock();
            if !self.absorb(&mut state, page.events) {
                return;
            }
        }
    }

    /// Appends events another instance wrote, in order, and sends them to the live
    /// subscribers. False when none of them was new (another catch-up got there first).
    fn absorb(&self, state: &mut SessionState, events: Vec<(u64, String)>) -> bool {
        let mut added = false;
        for (seq, body) in events {
            if seq != state.log.last_seq() + 1 {
                continue;
            }
            follow_tree(&mut state.tree, &body);
            state.relay.absorbed(&body);
            state.log.push(WireText::from(body));
            added = true;
        }
        if added {
            let last = state.log.last_seq();
            state.idle_since = Instant::now();
            state.durable_seq = last;
            self.release(state, last);
            state.log.trim(last);
        }
        added
    }

    /// Passes a client's `cancel` on to the holder, on another instance.
    pub(super) fn cancel_elsewhere(&self) {
        self.tell_holder(Signal::Cancel, "");
    }

    /// Passes a client's answer to an `approval_request` on to the holder, on another
    /// instance, where the turn waits.
    pub(super) fn approve_elsewhere(&self, call_id: &str, allow: bool) {
        let signal = if allow { Signal::Allow } else { Signal::Deny };
        self.tell_holder(signal, call_id);
    }

    fn tell_holder(&self, signal: Signal, detail: &str) {
        if let Err(e) = self.inner.cluster.signal(signal, &self.inner.id, detail) {
            log::warn!(
                "session {}: cannot pass a {signal:?} on: {e}",
                self.inner.id.short()
            );
        }
    }
}

/// Keeps a follower's tree in step with an event the holder wrote: a turn opened, or the leaf
/// moved. (The rest of the tree, what the model sees, is read from the store when this instance
/// takes the lease.) Only those two kinds of event are parsed.
fn follow_tree(tree: &mut TurnTree, body: &str) {
    if !body.contains(r#""type":"user_message""#) && !body.contains(r#""type":"branch""#) {
        return;
    }
    let Ok(envelope) = serde_json::from_str::<ServerEnvelope>(body) else {
        return;
    };
    match envelope.frame {
        ServerFrame::UserMessage {
            turn_id,
            parent,
            client_id,
            attachments,
            ..
        } if turn_id.0 == tree.len() + 1 => {
            tree.open(
                parent.map_or(turn_id.0 - 1, |p| p.0),
                client_id,
                attachments,
            );
        }
        ServerFrame::Branch { leaf } => tree.set_leaf(leaf.0),
        _ => {}
    }
}
