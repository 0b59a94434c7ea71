//! The stream under a WebSocket. [`MeteredStream`] reads the socket and follows the frame headers
//! going by, charging the payload bytes of each unfinished message (fragments without their
//! final frame, or a frame still arriving) to a [`MessageBudget`] that all connections share.
//! tungstenite holds those bytes until the message is complete and has no way to report them,
//! so they are counted here, as they come off the socket.
//!
//! Depends on nothing in the crate.

use std::fmt;
use std::io::{self, Cursor, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::OpCode;

/// The longest WebSocket frame header: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER_BYTES: usize = 14;

/// The bytes that unfinished incoming messages may hold across every connection of a server.
/// Lock-free: one atomic counter.
#[derive(Debug)]
pub struct MessageBudget {
    held: AtomicUsize,
    limit: usize,
}

impl MessageBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        MessageBudget {
            held: AtomicUsize::new(0),
            limit,
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Adds `bytes`; false when the total is then past the limit. The bytes stay charged
    /// either way, until [`MessageBudget::release`].
    fn charge(&self, bytes: usize) -> bool {
        let before = self.held.fetch_add(bytes, Ordering::Relaxed);
        before.saturating_add(bytes) <= self.limit
    }

    /// Gives back `bytes` charged before.
    fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// The error a [`MeteredStream`] read returns when the connection's unfinished message would
/// take the server past its [`MessageBudget`]; the connection is then closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverBudget;

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unfinished messages hold too much memory")
    }
}

impl std::error::Error for OverBudget {}

impl OverBudget {
    /// True when `error` is the one a [`MeteredStream`] read returns past the budget.
    pub fn is(error: &io::Error) -> bool {
        error
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<OverBudget>().is_some())
    }
}

/// A client socket (or anything that reads from one) that charges the bytes of its unfinished
/// message to a shared budget. Writes pass straight through. Dropping it gives back what it
/// holds.
pub struct MeteredStream<S = TcpStream> {
    stream: S,
    budget: Arc<MessageBudget>,
    frames: FrameTracker,
    /// Bytes charged to the budget now.
    charged: usize,
}

impl<S> fmt::Debug for MeteredStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredStream")
            .field("charged", &self.charged)
            .finish_non_exhaustive()
    }
}

impl<S> MeteredStream<S> {
    /// Wraps `stream`, which has not yet carried any WebSocket bytes past [`Self::observe`].
    pub fn new(stream: S, budget: Arc<MessageBudget>) -> Self {
        MeteredStream {
            stream,
            budget,
            frames: FrameTracker::default(),
            charged: 0,
        }
    }

    /// The stream it wraps.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Bytes of an unfinished message this connection holds now.
    pub fn held(&self) -> usize {
        self.charged
    }

    /// Follows `bytes` through the frame headers and brings the charge up to date. Reads do
    /// this themselves; call it for bytes read from the socket before it was wrapped (those that
    /// came with the request head), which reach tungstenite without passing through here.
    ///
    /// # Errors
    ///
    /// [`OverBudget`] (as an `io::Error`) when the connection's unfinished message takes the
    /// budget past its limit. The bytes stay charged until the stream is dropped.
    pub fn observe(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.frames.feed(bytes);
        let now = usize::try_from(self.frames.unfinished).unwrap_or(usize::MAX);
        if now > self.charged {
            let within = self.budget.charge(now - self.charged);
            self.charged = now;
            if !within {
                return Err(io::Error::other(OverBudget));
            }
        } else {
            self.budget.release(self.charged - now);
            self.charged = now;
        }
        Ok(())
    }
}

impl<S: Read> Read for MeteredStream<S> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buffer)?;
        self.observe(&buffer[..n])?;
        Ok(n)
    }
}

impl<S: Write> Write for MeteredStream<S> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.stream.write(buffer)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl<S: AsFd> AsFd for MeteredStream<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl<S> Drop for MeteredStream<S> {
    fn drop(&mut self) {
        self.budget.release(self.charged);
    }
}

/// Where a byte stream of client frames is: inside a header, or inside a payload.
#[derive(Debug, Default)]
struct FrameTracker {
    /// Bytes of a header not yet complete.
    header: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The current frame carries message data (text, binary or continuation).
    data_frame: bool,
    /// The current frame is the last of its message.
    final_frame: bool,
    /// Payload bytes of the message not yet complete.
    unfinished: u64,
    /// A header did not parse: tungstenite refuses the same bytes and closes the connection,
    /// so there is nothing more to follow.
    lost: bool,
}

impl FrameTracker {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64);
                if self.data_frame {
                    self.unfinished += n;
                }
                self.payload_left -= n;
                // n <= bytes.len(), so it fits in usize.
                bytes = &bytes[n as usize..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            let take = (MAX_HEADER_BYTES - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let mut cursor = Cursor::new(&self.header);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, length))) => {
                    // What followed the header in the buffer belongs to the payload (and maybe
                    // to the frames after it): feed it before the rest.
                    let used = usize::try_from(cursor.position()).unwrap_or(self.header.len());
                    let after = self.header.split_off(used.min(self.header.len()));
                    self.header.clear();
                    self.data_frame = matches!(header.opcode, OpCode::Data(_));
                    self.final_frame = header.is_final;
                    self.payload_left = length;
                    if length == 0 {
                        self.frame_done();
                    }
                    self.feed(&after);
                }
                Ok(None) => {}
                Err(_) => self.lost = true,
            }
        }
    }

    /// A frame's payload is complete: the last frame of a message completes the message.
    fn frame_done(&mut self) {
        if self.data_frame && self.final_frame {
            self.unfinished = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame (the mask is zero, which leaves the payload as it is).
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65_536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn counts_the_payload_of_unfinished_messages_only() {
        let mut tracker = FrameTracker::default();
        // A whole text message, then a ping: nothing unfinished.
        tracker.feed(&frame(0x81, b"hello"));
        tracker.feed(&frame(0x89, b"p"));
        assert_eq!(tracker.unfinished, 0);
        // A text frame without FIN, then continuations, one byte at a time for one of them.
        tracker.feed(&frame(0x01, &[b'a'; 300]));
        assert_eq!(tracker.unfinished, 300);
        for byte in frame(0x00, &[b'b'; 70_000]) {
            tracker.feed(&[byte]);
        }
        assert_eq!(tracker.unfinished, 70_300);
        // A ping in the middle changes nothing; the final continuation completes the message.
        let mut tail = frame(0x89, b"");
        tail.extend(frame(0x80, b"end"));
        tail.extend(frame(0x81, &[b'c'; 10])[..8].iter());
        tracker.feed(&tail);
        assert_eq!(tracker.unfinished, 2, "the next message's first bytes");
        assert!(!tracker.lost);
        // A reserved opcode: tungstenite refuses it, and the tracker stops following.
        let mut reserved = FrameTracker::default();
        reserved.feed(&frame(0x83, b"x"));
        assert!(reserved.lost);
    }

    #[test]
    fn the_budget_refuses_past_its_limit_and_gives_back_on_drop() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let budget = Arc::new(MessageBudget::new(1_000));
        let first = frame(0x01, &[b'x'; 600]);
        let mut held = MeteredStream::new(client.try_clone().unwrap(), budget.clone());
        held.observe(&first).unwrap();
        assert_eq!((held.held(), budget.held()), (600, 600));
        let mut refused = MeteredStream::new(client, budget.clone());
        assert!(OverBudget::is(&refused.observe(&first).unwrap_err()));
        drop(refused);
        assert_eq!(budget.held(), 600, "the refused stream gave its bytes back");
        // The end of the message gives its bytes back at once.
        held.observe(&frame(0x80, b"")).unwrap();
        assert_eq!(budget.held(), 0);
        drop(held);
        assert_eq!(budget.held(), 0);
    }
}
