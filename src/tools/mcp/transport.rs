//! The seam between an MCP client and the transport that carries its messages: what the
//! client queues ([`Outgoing`], on the two channels of an [`Outbox`]), where a transport hands
//! what the server sent ([`Inbox`]), and how a transport is stopped ([`Transport`]). The
//! transports themselves are `stdio.rs` (a pipe pair) and `http.rs` (Streamable HTTP); the
//! client (`client.rs`) knows neither.
//!
//! Depends on: `tools::mcp::error`.

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::error::McpError;

/// Messages queued for a server at most, on each channel; past it the server is not reading.
pub(super) const OUTBOX_CAPACITY: usize = 256;

/// One message for the server, encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Outgoing {
    /// The request's id, or `None` for a notification or a response.
    pub(super) id: Option<i64>,
    /// The request's or notification's method; empty for a response.
    pub(super) method: String,
    /// The message's JSON text, without a line ending.
    pub(super) line: String,
}

/// Where the client queues messages: requests, and everything else (notifications and
/// responses), which must never wait behind a long request. Over stdio both are one channel.
#[derive(Debug)]
pub(super) struct Outbox {
    requests: Sender<Outgoing>,
    others: Sender<Outgoing>,
}

/// The transport's end of an [`Outbox`]: both channels end (disconnect) when the client
/// closes.
#[derive(Debug)]
pub(super) struct Queued {
    /// Requests, in the order queued.
    pub(super) requests: Receiver<Outgoing>,
    /// Notifications and responses, in the order queued.
    pub(super) others: Receiver<Outgoing>,
}

/// Why a message could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum QueueError {
    /// The channel is full: the server is not reading.
    Full,
    /// The transport has ended.
    Closed,
}

impl Outbox {
    /// An outbox with one channel for everything (a pipe writes in order anyway), and its
    /// transport's end.
    pub(super) fn single() -> (Self, Queued) {
        let (sender, receiver) = crossbeam_channel::bounded(OUTBOX_CAPACITY);
        let outbox = Outbox {
            requests: sender.clone(),
            others: sender,
        };
        let queued = Queued {
            requests: receiver.clone(),
            others: receiver,
        };
        (outbox, queued)
    }

    /// An outbox whose notifications and responses travel apart from its requests, and its
    /// transport's end.
    pub(super) fn split() -> (Self, Queued) {
        let (requests, request_receiver) = crossbeam_channel::bounded(OUTBOX_CAPACITY);
        let (others, other_receiver) = crossbeam_channel::bounded(OUTBOX_CAPACITY);
        let queued = Queued {
            requests: request_receiver,
            others: other_receiver,
        };
        (Outbox { requests, others }, queued)
    }

    /// Queues `message` without blocking.
    ///
    /// # Errors
    ///
    /// [`QueueError`] when its channel is full or its transport has ended.
    pub(super) fn queue(&self, message: Outgoing) -> Result<(), QueueError> {
        let channel = if message.id.is_some() {
            &self.requests
        } else {
            &self.others
        };
        channel.try_send(message).map_err(|e| match e {
            TrySendError::Full(_) => QueueError::Full,
            TrySendError::Disconnected(_) => QueueError::Closed,
        })
    }
}

/// What a transport hands the server's messages to: the client. Called on the transport's
/// threads; no method blocks.
pub(super) trait Inbox: Send + Sync {
    /// One message's JSON text, as the server sent it; `related` is the id of our request
    /// whose answer it came with, when the transport knows (an HTTP POST's event stream).
    fn deliver(&self, text: &[u8], related: Option<i64>);
    /// Request `id` failed in the transport (the server refused it, or it could not be sent):
    /// its caller gets `error`.
    fn fail(&self, id: i64, error: McpError);
    /// The transport has ended, for `reason`: every caller gets an error, and the server is
    /// started (or connected) again by the next call. True when this call closed the client.
    fn close(&self, reason: String) -> bool;
    /// False once the client has closed: a transport's long-lived threads then end.
    fn is_open(&self) -> bool;
    /// The server's name in the config, for the log.
    fn server(&self) -> &str;
}

/// A running transport, which the client stops when it stops (after its outbox has closed).
pub(super) trait Transport: Send {
    /// Stops it: a process is waited for (and its group signalled), an HTTP session is ended.
    /// May block for a few seconds. Calling it again does nothing.
    fn stop(&mut self);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: Option<i64>, line: &str) -> Outgoing {
        Outgoing {
            id,
            method: "m".into(),
            line: line.into(),
        }
    }

    #[test]
    fn a_split_outbox_keeps_requests_apart_and_a_single_one_keeps_order() {
        let (outbox, queued) = Outbox::split();
        outbox.queue(message(Some(1), "request")).unwrap();
        outbox.queue(message(None, "notification")).unwrap();
        assert_eq!(queued.others.try_recv().unwrap().line, "notification");
        assert_eq!(queued.requests.try_recv().unwrap().line, "request");

        let (outbox, queued) = Outbox::single();
        outbox.queue(message(Some(1), "first")).unwrap();
        outbox.queue(message(None, "second")).unwrap();
        assert_eq!(queued.requests.try_recv().unwrap().line, "first");
        assert_eq!(queued.others.try_recv().unwrap().line, "second");
    }

    #[test]
    fn a_full_or_ended_outbox_refuses_without_blocking() {
        let (outbox, queued) = Outbox::split();
        for _ in 0..OUTBOX_CAPACITY {
            outbox.queue(message(Some(1), "x")).unwrap();
        }
        assert_eq!(outbox.queue(message(Some(1), "x")), Err(QueueError::Full));
        // The other channel still has room.
        assert_eq!(outbox.queue(message(None, "cancel")), Ok(()));
        drop(queued);
        assert_eq!(outbox.queue(message(None, "x")), Err(QueueError::Closed));
    }
}
