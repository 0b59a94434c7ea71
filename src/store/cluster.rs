//! [`Cluster`]: how several instances that share one store take turns writing a conversation
//! (a lease per conversation) and wake each other up (signals). PostgreSQL implements it with
//! a `leases` table and `LISTEN`/`NOTIFY`; SQLite and `--in-memory` are a cluster of one
//! ([`Solo`]), where every lease is always held and no signal has anyone to reach.
//!
//! A signal only says "look": what it is about is in the tables (events, leases, sessions),
//! so a signal that is lost or late costs time, never data.
//!
//! Depends on: `common::error`, `common::protocol`, `store::plan`.

use std::time::Duration;

use crate::common::error::Result;
use crate::common::protocol::SessionId;

/// How long a lease lasts unless its holder renews it. A holder that died (`kill -9`) loses
/// its leases this long after its last renewal, and another instance closes its turns.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// What one instance tells the others about a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// New events are in the store (sent by the store with the batch that wrote them), up to
    /// the `seq` the notice's `detail` names.
    Events,
    /// Another instance wants the lease: cancel the turn in flight, write, and let go.
    Yield,
    /// A client on another instance cancelled the turn in flight.
    Cancel,
    /// The lease was let go: whoever waits for it may try again.
    Released,
    /// The conversation was deleted (sent by the store with the deletion).
    Deleted,
    /// A client on another instance allowed the call the notice's `detail` names.
    Allow,
    /// A client on another instance denied the call the notice's `detail` names.
    Deny,
    /// A client on another instance allowed the MCP sampling request the notice's `detail`
    /// names, and every later one of its server in the conversation.
    AllowAlways,
    /// A client on another instance answered an MCP elicitation: the `elicit` frame's data,
    /// as JSON, in `detail`.
    Elicit,
    /// Streamed frames (`message_delta`, `tool_progress`) of the turn running on the sender,
    /// in `detail`: not events, so not in the store; sent with the batch of events they
    /// follow, so never ahead of them (see `session/relay.rs`).
    Stream,
}

impl Signal {
    /// The letter that stands for the signal in a notification.
    pub fn letter(self) -> char {
        match self {
            Signal::Events => 'e',
            Signal::Yield => 'y',
            Signal::Cancel => 'c',
            Signal::Released => 'r',
            Signal::Deleted => 'd',
            Signal::Allow => 'a',
            Signal::Deny => 'n',
            Signal::AllowAlways => 'w',
            Signal::Elicit => 'l',
            Signal::Stream => 's',
        }
    }

    /// The signal a letter stands for.
    pub fn from_letter(letter: char) -> Option<Self> {
        Some(match letter {
            'e' => Signal::Events,
            'y' => Signal::Yield,
            'c' => Signal::Cancel,
            'r' => Signal::Released,
            'd' => Signal::Deleted,
            'a' => Signal::Allow,
            'n' => Signal::Deny,
            'w' => Signal::AllowAlways,
            'l' => Signal::Elicit,
            's' => Signal::Stream,
            _ => return None,
        })
    }
}

/// What [`Cluster::wait`] brings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Another instance signalled about a conversation; `lag` is how long the signal took,
    /// where the sender's clock says.
    Signal {
        /// What it said.
        signal: Signal,
        /// About which conversation.
        session: SessionId,
        /// From sending to receiving.
        lag: Option<Duration>,
        /// What the signal is about within the conversation: the call of an `Allow`, a `Deny`
        /// or an `AllowAlways`, the answer of an `Elicit`, the frames of a `Stream`; empty for
        /// the others.
        detail: String,
    },
    /// The listening connection was (re)opened: signals may have been missed meanwhile, so
    /// every live conversation should look at the store.
    Resync,
}

/// How instances sharing one store coordinate. Every call may do IO: never call one with a
/// session's lock held.
pub trait Cluster: Send + Sync {
    /// True when other instances may share the store (PostgreSQL). When false, every other
    /// method is a no-op that succeeds, and [`acquire`](Self::acquire) always holds.
    fn shared(&self) -> bool;

    /// Takes the lease on conversation `id` when nobody holds it, its holder's expired, or
    /// this instance holds it already (then it is renewed). True when this instance holds it
    /// now; false when another does, or the store does not hold the conversation.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be reached.
    fn acquire(&self, id: &SessionId) -> Result<bool>;

    /// Lets go of the lease on `id`, if this instance holds it; true when it did.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be reached.
    fn release(&self, id: &SessionId) -> Result<bool>;

    /// Lets go of every lease this instance holds (at shutdown).
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be reached.
    fn release_all(&self) -> Result<()>;

    /// Extends every lease this instance holds by [`LEASE_TTL`]; returns how many.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be reached.
    fn renew(&self) -> Result<u64>;

    /// Conversations whose lease expired with a turn open in them (their holder died), at
    /// most `limit`. Expired leases of conversations with no open turn are dropped here.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be reached.
    fn expired(&self, limit: usize) -> Result<Vec<SessionId>>;

    /// Tells every other instance `signal` about `id`, with `detail` (see
    /// [`Notice::Signal`]). A signal that is lost (its listener was reconnecting) is lost: those
    /// about the store's rows are made good by a resync, an `Allow` or `Deny` is answered again
    /// by its user or times out.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be reached.
    fn signal(&self, signal: Signal, id: &SessionId, detail: &str) -> Result<()>;

    /// Waits up to `timeout` for signals from other instances, and returns those that came
    /// (none when the time ran out).
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the listening connection broke; the next call
    /// opens a new one and returns [`Notice::Resync`].
    fn wait(&self, timeout: Duration) -> Result<Vec<Notice>>;
}

/// A cluster of one instance: SQLite and `--in-memory`, whose store no other instance opens.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Cluster for Solo {
    fn shared(&self) -> bool {
        false
    }

    fn acquire(&self, _: &SessionId) -> Result<bool> {
        Ok(true)
    }

    fn release(&self, _: &SessionId) -> Result<bool> {
        Ok(false)
    }

    fn release_all(&self) -> Result<()> {
        Ok(())
    }

    fn renew(&self) -> Result<u64> {
        Ok(0)
    }

    fn expired(&self, _: usize) -> Result<Vec<SessionId>> {
        Ok(Vec::new())
    }

    fn signal(&self, _: Signal, _: &SessionId, _: &str) -> Result<()> {
        Ok(())
    }

    fn wait(&self, timeout: Duration) -> Result<Vec<Notice>> {
        std::thread::sleep(timeout);
        Ok(Vec::new())
    }
}

/// A notification's payload: `"<letter> <session> <instance> <unix micros> <detail>"`.
pub(crate) fn payload(signal: Signal, session: &str, instance: &str, detail: &str) -> String {
    format!(
        "{} {session} {instance} {} {detail}",
        signal.letter(),
        super::plan::unix_micros()
    )
}

/// Reads a payload made by [`payload`]; `None` for one this instance sent itself, or one that
/// is not a payload.
pub(crate) fn parse_payload(text: &str, own_instance: &str) -> Option<Notice> {
    let mut parts = text.splitn(5, ' ');
    let signal = Signal::from_letter(parts.next()?.chars().next()?)?;
    let session = SessionId::parse(parts.next()?)?;
    let instance = parts.next()?;
    if instance == own_instance {
        return None;
    }
    let sent: u64 = parts.next()?.parse().ok()?;
    let lag = super::plan::unix_micros()
        .checked_sub(sent)
        .map(Duration::from_micros);
    Some(Notice::Signal {
        signal,
        session,
        lag,
        detail: parts.next().unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_reads_back_and_our_own_are_skipped() {
        let id = SessionId::from_random_bytes([7; 16]);
        for signal in [
            Signal::Events,
            Signal::Yield,
            Signal::Cancel,
            Signal::Released,
            Signal::Deleted,
            Signal::Allow,
            Signal::Deny,
            Signal::AllowAlways,
            Signal::Elicit,
            Signal::Stream,
        ] {
            let text = payload(signal, id.as_str(), "a1", "call 7 with spaces");
            let Some(Notice::Signal {
                signal: read,
                session,
                lag,
                detail,
            }) = parse_payload(&text, "b2")
            else {
                panic!("{text:?} did not read back");
            };
            assert_eq!((read, &session), (signal, &id));
            assert_eq!(detail, "call 7 with spaces");
            assert!(lag.is_some_and(|lag| lag < Duration::from_secs(5)));
            assert_eq!(parse_payload(&text, "a1"), None);
        }
        for junk in ["", "x", "e not-an-id a 1", "q 00 a 1"] {
            assert_eq!(parse_payload(junk, "b2"), None, "{junk:?}");
        }
    }
}
