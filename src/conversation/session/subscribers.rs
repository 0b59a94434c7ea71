//! Fan-out: the connections attached to a session as the session sees them. A subscriber is a
//! [`Sink`] that takes a batch of frames at once; this file never learns that it is a WebSocket.
//!
//! Depends on: `conversation::session`.

use std::fmt;
use std::sync::Arc;

use super::WireText;

/// Why a session lets one of its subscribers go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer connection took its place past the per-session limit.
    TakenOver,
    /// The conversation was deleted.
    Deleted,
    /// It fell too far behind (its sink refused frames); it catches up by replay when it
    /// reconnects.
    Behind,
}

/// Where a session's frames for one connection go.
///
/// Both methods are called with the session lock held, so they must never block: a sink
/// writes what its socket takes at once and keeps the rest, up to a bound.
pub trait Sink: Send + Sync {
    /// Sends `frames`, in order, as one batch ("frames produced together go out in one
    /// write"). False when the sink cannot keep up or is closed: the session then lets it go
    /// and sends it nothing more.
    fn deliver(&self, frames: &[WireText]) -> bool;

    /// The session lets the sink go, for `reason`, after the frames delivered before.
    fn close(&self, reason: CloseReason);
}

/// One attached connection as the session sees it.
#[derive(Clone)]
pub struct Subscriber {
    /// Unique for the server's life; used to detach.
    pub id: u64,
    /// Where its frames go.
    pub sink: Arc<dyn Sink>,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// Sends one batch; false when the subscriber must be let go (see [`Sink::deliver`]).
    pub fn deliver(&self, frames: &[WireText]) -> bool {
        frames.is_empty() || self.sink.deliver(frames)
    }
}

/// A subscriber and where it stands.
#[derive(Debug)]
pub struct Attached {
    /// The subscriber.
    pub subscriber: Subscriber,
    /// The highest `seq` it has (sent to it, or it had before it attached).
    pub sent_seq: u64,
    /// False while its connection replays from the store: the session then sends it nothing
    /// live, and the connection pulls pages until it has caught up.
    pub live: bool,
}
