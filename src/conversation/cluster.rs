//! The cluster thread: what an instance does for the others sharing its PostgreSQL store. It
//! listens for their signals and acts on them (catch a follower up, let a lease go, cancel a
//! turn, wake a message waiting for a lease, forget a deleted conversation), renews this
//! instance's leases, and closes the turns of instances that died (their leases expired). With
//! a cluster of one (SQLite) there is no such thread. See `session/lease.rs` for what a lease
//! is; ARCHITECTURE.md has the cross-instance paths.
//!
//! Depends on: `common::error`, `common::metrics`, `common::protocol`, `conversation::session::manager`, `conversation::session::relay`, `store::cluster`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::common::error::{Error, Result};
use crate::common::metrics::Metrics;
use crate::common::protocol::SessionId;
use crate::conversation::session::{RELAY_EVERY, SessionManager};
use crate::store::{Cluster, LEASE_TTL, Notice, Signal};

/// How long one wait for signals lasts; the thread's other work runs between waits, streamed
/// frames waiting to be relayed among it (so they go between one and one and a half times
/// `RELAY_EVERY` after the first of them).
const WAIT: Duration = match RELAY_EVERY.checked_div(2) {
    Some(half) => half,
    None => RELAY_EVERY,
};

/// How often this instance renews its leases: three times per lease.
const RENEW_EVERY: Duration = Duration::from_secs(LEASE_TTL.as_secs() / 3);

/// How often dead holders' leases are looked for: an instance whose connections are gone is
/// seen at the next look, one that hangs while connected `LEASE_TTL` after its last renewal.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Expired conversations recovered in one sweep at most.
const SWEEP_BATCH: usize = 64;

/// How long the thread waits before listening again after the connection broke.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The running cluster thread; [`stop`](Self::stop) ends it.
pub struct ClusterThread {
    stop: Arc<AtomicBool>,
    /// Closed on stop, to end a wait between tries.
    stopped: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
    /// The instances sharing the store: told this one lets its leases go when it stops.
    cluster: Arc<dyn Cluster>,
}

impl fmt::Debug for ClusterThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterThread")
            .field("running", &self.handle.is_some())
            .finish_non_exhaustive()
    }
}

impl ClusterThread {
    /// Starts the thread that acts on `cluster`'s signals for `sessions`; `None` for a
    /// cluster of one.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] when the thread cannot be started.
    pub fn spawn(
        sessions: SessionManager,
        cluster: Arc<dyn Cluster>,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>> {
        if !cluster.shared() {
            return Ok(None);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (stopped, stopping) = bounded::<()>(0);
        let (thread_cluster, thread_stop) = (cluster.clone(), stop.clone());
        let handle = thread::Builder::new()
            .name("cluster".into())
            .spawn(move || {
                run(
                    &sessions,
                    thread_cluster.as_ref(),
                    &metrics,
                    &thread_stop,
                    &stopping,
                );
            })
            .map_err(Error::Spawn)?;
        Ok(Some(ClusterThread {
            stop,
            stopped: Some(stopped),
            handle: Some(handle),
            cluster,
        }))
    }

    /// Ends the thread, and lets go of every lease this instance holds: call it once the
    /// journal has written everything.
    pub fn stop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        drop(self.stopped.take());
        let cluster = &self.cluster;
        // A signal to no conversation wakes this instance's own wait at once.
        let _ = cluster.signal(Signal::Released, &SessionId::from_random_bytes([0; 16]), "");
        let _ = handle.join();
        if let Err(e) = cluster.release_all() {
            log::warn!("cluster: cannot let the leases go: {e}");
        }
    }
}

impl Drop for ClusterThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    sessions: &SessionManager,
    cluster: &dyn Cluster,
    metrics: &Metrics,
    stop: &AtomicBool,
    stopping: &Receiver<()>,
) {
    let mut next_renew = Instant::now() + RENEW_EVERY;
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    let mut failing = false;
    while !stop.load(Ordering::SeqCst) {
        match cluster.wait(WAIT) {
            Ok(notices) => {
                if std::mem::take(&mut failing) {
                    log::warn!("cluster: listening to the other instances again");
                }
                for notice in notices {
                    act(sessions, cluster, metrics, notice);
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    log::error!("cluster: cannot listen to the other instances: {e}");
                }
                // Waits for the stop, or the time to try again.
                let _ = stopping.recv_timeout(RETRY_AFTER);
            }
        }
        sessions.flush_relays();
        let now = Instant::now();
        if now >= next_renew {
            next_renew = now + RENEW_EVERY;
            if let Err(e) = cluster.renew() {
                log::error!("cluster: cannot renew the leases: {e}");
            }
        }
        if now >= next_sweep {
            next_sweep = now + SWEEP_EVERY;
            match cluster.expired(SWEEP_BATCH) {
                Ok(ids) => {
                    for id in ids {
                        log::warn!(
                            "session {}: its instance stopped renewing its lease; closing its turn",
                            id.short()
                        );
                        sessions.recover(&id);
                    }
                }
                Err(e) => log::error!("cluster: cannot look for expired leases: {e}"),
            }
        }
    }
}

/// Does what another instance's signal asks.
fn act(sessions: &SessionManager, cluster: &dyn Cluster, metrics: &Metrics, notice: Notice) {
    let (signal, id, lag, detail) = match notice {
        Notice::Resync => {
            sessions.catch_up_all();
            sessions.lease_released();
            return;
        }
        Notice::Signal {
            signal,
            session,
            lag,
            detail,
        } => (signal, session, lag, detail),
    };
    Metrics::bump(&metrics.signals_received);
    if let Some(lag) = lag {
        Metrics::add(
            &metrics.signal_lag_micros,
            u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
        );
    }
    match signal {
        Signal::Stream => {
            if let Some((after, frames)) = detail
                .split_once(' ')
                .and_then(|(after, frames)| Some((after.parse().ok()?, frames)))
            {
                sessions.relayed(&id, after, frames);
            }
        }
        Signal::Released => sessions.lease_released(),
        Signal::Deleted => sessions.forget(&id),
        Signal::Events
        | Signal::Yield
        | Signal::Cancel
        | Signal::Allow
        | Signal::Deny
        | Signal::AllowAlways
        | Signal::Elicit => {
            let Some(session) = sessions.get(&id) else {
                if signal == Signal::Yield {
                    // Not in memory here: a lease left behind (a release that failed when the
                    // session left memory) is let go, or the asker would wait it out.
                    if let Err(e) = cluster.release(&id).and_then(|held| {
                        if held {
                            cluster.signal(Signal::Released, &id, "")
                        } else {
                            Ok(())
                        }
                    }) {
                        log::warn!("session {}: cannot let its lease go: {e}", id.short());
                    }
                }
                return;
            };
            match signal {
                // Up to the batch's newest event only: the streamed frames signalled after it
                // must find this instance there.
                Signal::Events => session.catch_up_to(detail.parse().unwrap_or(u64::MAX)),
                Signal::Yield => session.let_go(),
                Signal::Allow | Signal::Deny => {
                    session.approve_here(&detail, signal == Signal::Allow, false);
                }
                Signal::AllowAlways => {
                    session.approve_here(&detail, true, true);
                }
                Signal::Elicit => session.elicit_relayed(&detail),
                _ => session.cancel_here(),
            }
        }
    }
}
