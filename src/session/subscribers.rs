//! Fan-out: the connections attached to a session as the session sees them. A subscriber is a
//! bounded queue and a way to wake its reader; this file never learns that it is a WebSocket.

use std::fmt;
use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};

use super::WireText;

/// What a session hands to one subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A frame to send.
    Text(WireText),
    /// Close the connection, for this reason, after the frames before it.
    Close(CloseReason),
}

/// Why a session closes one of its subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer connection took its place past the per-session limit.
    TakenOver,
    /// The conversation was deleted.
    Deleted,
}

/// Wakes a subscriber that sleeps until it has something to send.
pub trait Notify: Send + Sync {
    /// Makes the subscriber look at its channel soon. Cheap, and never blocks.
    fn notify(&self);
}

/// One attached connection as the session sees it: a bounded channel and its wake-up.
pub struct Subscriber {
    /// Unique for the server's life; used to detach.
    pub id: u64,
    /// Where frames go. Dropping it tells the subscriber that the session let go of it.
    pub sender: Sender<Delivery>,
    /// Called after each send.
    pub notify: Arc<dyn Notify>,
    /// Deliveries queued at most; a subscriber that falls further behind is dropped.
    pub capacity: usize,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// Queues a delivery and wakes the subscriber. False when it cannot keep up (its queue is
    /// full) or is gone: the caller then drops it.
    pub fn deliver(&self, delivery: Delivery) -> bool {
        if self.sender.len() >= self.capacity {
            log::warn!("subscriber {}: queue full, detaching it", self.id);
            return false;
        }
        match self.sender.try_send(delivery) {
            Ok(()) => {
                self.notify.notify();
                true
            }
            Err(TrySendError::Full(_)) => {
                log::warn!("subscriber {}: queue full, detaching it", self.id);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// A subscriber and where it stands.
#[derive(Debug)]
pub struct Attached {
    /// The subscriber.
    pub subscriber: Subscriber,
    /// The highest `seq` it has (queued to it, or it had before it attached).
    pub sent_seq: u64,
    /// False while its connection replays from the store: the session then queues nothing to
    /// it, and the connection pulls pages until it has caught up.
    pub live: bool,
}
