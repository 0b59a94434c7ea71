//! `Outbound`: the write side of one WebSocket, shared by every thread that produces frames for
//! it. Whoever has frames writes them to the socket itself, with a non-blocking write under a
//! small lock: the connection thread for its own replies, the journal thread for the events it
//! has just committed, a turn thread for streamed pieces. Only when the socket will not take
//! the bytes does the rest wait in a pending buffer, which the connection thread writes out
//! when `poll` says the socket has room.
//!
//! Server frames are encoded here (unmasked RFC 6455 text frames), and a batch of frames goes
//! out in one `writev`. A client that is behind costs little: a `message_delta` that would wait
//! right behind another of the same turn is merged into it (`net::coalesce`), so the pending
//! buffer holds one growing frame per run of pieces, never reordered, nothing dropped. tungstenite keeps the read side; its own frames (pongs, pings, Close)
//! come through [`Outbound::write_raw`] under the same lock, so bytes never interleave.
//!
//! Depends on: `common::metrics`, `conversation::session`, `net::coalesce`, `net::shutdown`,
//! `net::wake`.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};

use crate::common::metrics::Metrics;
use crate::conversation::session::{CloseReason, Sink, WireText};
use crate::net::coalesce;
use crate::net::shutdown::Wake;
use crate::net::wake::ThreadWaker;

/// Frames per `writev`: two slices each (header and payload). Small, because the slices and
/// headers sit on the writer's stack, and a connection thread's stack pages count towards
/// what an idle connection costs; a batch of more frames takes several calls.
const FRAMES_PER_WRITE: usize = 8;

/// The longest header of an unmasked server frame: 2 bytes and an 8-byte length.
const MAX_HEADER_BYTES: usize = 10;

/// Pending bytes below which the connection takes more work of its own (replay pages).
const ROOM_BYTES: usize = 256 * 1024;

/// A pending buffer whose capacity grew past this is freed once it empties, so that a burst
/// does not leave an idle connection holding memory.
const KEEP_CAPACITY_BYTES: usize = 16 * 1024;

/// How far a connection may fall behind before its sessions let it go.
#[derive(Clone, Copy, Debug)]
pub struct PendingLimit {
    /// Frames waiting for the socket, at most.
    pub frames: usize,
    /// Bytes waiting for the socket, at most.
    pub bytes: usize,
}

/// The write side of one WebSocket. Shared (`Arc`) by its connection thread and every session
/// it is attached to.
///
/// The lock guards the pending buffer and the connection thread's sleep; it is held for one
/// non-blocking `write`/`writev` at most, and taken after a session's lock, never before.
pub struct Outbound {
    /// The connection's id, for the log.
    id: u64,
    socket: TcpStream,
    limit: PendingLimit,
    metrics: Arc<Metrics>,
    state: Mutex<OutboundState>,
    /// Copies of what the connection thread looks at on every pass, kept up to date whenever
    /// the lock is released, so that an idle pass takes no lock: the pending bytes, and
    /// whether a session let the connection go or the socket broke.
    pending_copy: AtomicUsize,
    attention: AtomicBool,
    /// True while the connection thread sleeps (or is about to). Set under the lock, cleared
    /// without it when the sleep ends (a writer that still sees it set sends one wake too
    /// many, which only shortens the next sleep), and cleared under the lock for good by
    /// [`Outbound::retire`].
    asleep: AtomicBool,
}

/// The lock, held; brings the lock-free copies up to date when released.
struct Locked<'a> {
    outbound: &'a Outbound,
    state: MutexGuard<'a, OutboundState>,
}

impl Deref for Locked<'_> {
    type Target = OutboundState;

    fn deref(&self) -> &OutboundState {
        &self.state
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut OutboundState {
        &mut self.state
    }
}

impl Locked<'_> {
    /// Wakes the connection thread if it sleeps; with `for_output`, only if it does not poll
    /// for `POLLOUT` already. Called with the lock held, which is what keeps the thread alive
    /// meanwhile (see [`Outbound::retire`]).
    fn wake(&self, for_output: bool) {
        if self.outbound.asleep.load(Ordering::SeqCst)
            && let Some(sleeping) = self.state.sleeping
            && !(for_output && sleeping.polls_out)
        {
            sleeping.waker.wake();
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let attention = self.state.released.is_some() || self.state.broken || self.state.evicted;
        self.outbound
            .pending_copy
            .store(self.state.pending_bytes(), Ordering::Release);
        self.outbound.attention.store(attention, Ordering::Release);
    }
}

#[derive(Default)]
struct OutboundState {
    /// Bytes the socket did not take yet; `pending[sent..]` is still to be written.
    pending: Vec<u8>,
    sent: usize,
    /// Where each data frame in `pending` ends, oldest first: counts frames for the limit.
    frame_ends: VecDeque<usize>,
    /// Where the last frame in `pending` starts (its header), when it is a `message_delta`
    /// that nothing follows: the next delta of its turn is merged into it while none of its
    /// bytes are written (`sent` has not reached it).
    tail_delta: Option<usize>,
    /// Since when the pending bytes have made no progress.
    stalled_since: Option<Instant>,
    /// Bytes the socket has taken, in all.
    written: u64,
    /// When the socket last took bytes that had waited for it: the peer was reading then.
    drained_at: Option<Instant>,
    /// A Close frame is on its way: no data frame may follow it.
    data_closed: bool,
    /// A write failed: the socket is gone.
    broken: bool,
    /// A session let the connection go, and why.
    released: Option<CloseReason>,
    /// The server let the connection go, unauthenticated, to make room for a newer one.
    evicted: bool,
    /// Someone asked the connection thread to look around (shutdown).
    woken: bool,
    /// Set by the connection thread before each sleep: whom to wake, and whether it polls for
    /// `POLLOUT` already. Only read while [`Outbound::asleep`] is set.
    sleeping: Option<Sleeping>,
}

#[derive(Clone, Copy)]
struct Sleeping {
    waker: ThreadWaker,
    polls_out: bool,
}

impl OutboundState {
    fn pending_bytes(&self) -> usize {
        self.pending.len() - self.sent
    }

    /// Keeps what the socket did not take of `slices` (it took `written` bytes); `frame_ends`
    /// are the ends of the data frames in them, counted from the first slice.
    fn keep(&mut self, slices: &[IoSlice<'_>], written: usize, frame_ends: &[usize]) {
        let start = self.pending.len();
        let mut skip = written;
        for slice in slices {
            let skipped = skip.min(slice.len());
            skip -= skipped;
            self.pending.extend_from_slice(&slice[skipped..]);
        }
        for end in frame_ends.iter().filter(|end| **end > written) {
            self.frame_ends.push_back(start + end - written);
        }
        self.tail_delta = None;
    }

    /// Appends one data frame to the pending bytes, merged into the delta before it when both
    /// are pieces of one turn's answer and that delta is still wholly unwritten.
    fn push_data(&mut self, frame: &[u8]) {
        if let Some(start) = self.tail_delta
            && start >= self.sent
            && self.merge(start, frame)
        {
            return;
        }
        let start = self.pending.len();
        push_frame(&mut self.pending, frame);
        self.frame_ends.push_back(self.pending.len());
        self.tail_delta = coalesce::parse(frame).is_some().then_some(start);
    }

    /// Appends `frame`'s text to the delta at `start`, the last frame pending, if `frame` is a
    /// delta that joins it; its header is written anew for the longer payload.
    fn merge(&mut self, start: usize, frame: &[u8]) -> bool {
        let Some(next) = coalesce::parse(frame) else {
            return false;
        };
        let payload = start + header_bytes(self.pending[start + 1]);
        let at = match coalesce::parse(&self.pending[payload..]) {
            Some(last) if coalesce::joins(&last, &next) => payload + last.text_end,
            _ => return false,
        };
        self.pending.splice(at..at, next.text.iter().copied());
        let mut header = [0u8; MAX_HEADER_BYTES];
        let length = text_header(&mut header, self.pending.len() - payload);
        self.pending
            .splice(start..payload, header[..length].iter().copied());
        if let Some(end) = self.frame_ends.back_mut() {
            *end = self.pending.len();
        }
        true
    }
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("pending", &self.pending_bytes())
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// The write side of connection `id`'s `socket`, which must be (or soon be) non-blocking.
    pub fn new(id: u64, socket: TcpStream, limit: PendingLimit, metrics: Arc<Metrics>) -> Self {
        Outbound {
            id,
            socket,
            limit,
            metrics,
            state: Mutex::new(OutboundState::default()),
            pending_copy: AtomicUsize::new(0),
            attention: AtomicBool::new(false),
            asleep: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> Locked<'_> {
        Locked {
            outbound: self,
            state: self.state.lock(),
        }
    }

    /// True when nothing waits for the socket and no session let the connection go: the
    /// connection thread has nothing to write out or close. Takes no lock.
    pub fn quiet(&self) -> bool {
        self.pending_copy.load(Ordering::Acquire) == 0 && !self.attention.load(Ordering::Acquire)
    }

    /// The socket, for reading and polling.
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Writes `frames` as text frames, in one `writev` where it can; what the socket does not
    /// take waits for the connection thread. False when the connection is closing or broken,
    /// or has fallen past its [`PendingLimit`]: then it is released (`CloseReason::Behind`)
    /// and its thread woken to close it.
    pub fn send(&self, frames: &[WireText]) -> bool {
        let mut state = self.lock();
        if state.data_closed || state.broken || state.released.is_some() {
            return false;
        }
        if state.pending_bytes() > 0 {
            if state.pending_bytes() >= self.limit.bytes
                || state.frame_ends.len() >= self.limit.frames
            {
                log::warn!(
                    "connection {}: {} bytes in {} frames wait for a peer that does not read; \
                     letting it go",
                    self.id,
                    state.pending_bytes(),
                    state.frame_ends.len()
                );
                state.released = Some(CloseReason::Behind);
                state.wake(false);
                return false;
            }
            for frame in frames {
                state.push_data(frame.as_bytes());
            }
            return true;
        }
        for (at, chunk) in frames.chunks(FRAMES_PER_WRITE).enumerate() {
            let mut headers = [[0u8; MAX_HEADER_BYTES]; FRAMES_PER_WRITE];
            let mut lengths = [0usize; FRAMES_PER_WRITE];
            for (i, frame) in chunk.iter().enumerate() {
                lengths[i] = text_header(&mut headers[i], frame.len());
            }
            let mut slices = [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
            let mut ends = [0usize; FRAMES_PER_WRITE];
            let mut total = 0;
            for (i, frame) in chunk.iter().enumerate() {
                slices[2 * i] = IoSlice::new(&headers[i][..lengths[i]]);
                slices[2 * i + 1] = IoSlice::new(frame.as_bytes());
                total += lengths[i] + frame.len();
                ends[i] = total;
            }
            let slices = &slices[..2 * chunk.len()];
            let written = match write_vectored(&self.socket, slices) {
                Ok(written) => written,
                Err(e) => {
                    log::debug!("connection {}: write failed: {e}", self.id);
                    state.broken = true;
                    state.wake(false);
                    return false;
                }
            };
            state.written += written as u64;
            if written < total {
                let kept_from = state.pending.len();
                state.keep(slices, written, &ends[..chunk.len()]);
                // The chunk's last frame may take the next pieces if none of it was written.
                let last_start = ends[..chunk.len() - 1].last().copied().unwrap_or(0);
                if written <= last_start
                    && chunk
                        .last()
                        .is_some_and(|frame| coalesce::parse(frame.as_bytes()).is_some())
                {
                    state.tail_delta = Some(kept_from + last_start - written);
                }
                for frame in frames.iter().skip((at + 1) * FRAMES_PER_WRITE) {
                    state.push_data(frame.as_bytes());
                }
                state.stalled_since = Some(Instant::now());
                Metrics::bump(&self.metrics.writes_deferred);
                // The connection thread may sleep waiting for its peer only: now it must wait
                // for room too.
                state.wake(true);
                return true;
            }
        }
        true
    }

    /// Writes bytes tungstenite encoded (control frames, Close), after anything pending. Takes
    /// them all: what the socket does not take waits.
    ///
    /// # Errors
    ///
    /// When the socket is broken.
    pub fn write_raw(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.lock();
        if state.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if state.pending_bytes() > 0 {
            state.pending.extend_from_slice(bytes);
            state.tail_delta = None;
            return Ok(bytes.len());
        }
        let slices = [IoSlice::new(bytes)];
        match write_vectored(&self.socket, &slices) {
            Ok(written) if written < bytes.len() => {
                state.written += written as u64;
                state.keep(&slices, written, &[]);
                state.stalled_since = Some(Instant::now());
                state.wake(true);
            }
            Ok(written) => state.written += written as u64,
            Err(e) => {
                state.broken = true;
                return Err(e);
            }
        }
        Ok(bytes.len())
    }

    /// Writes what is pending as far as the socket takes it. Called by the connection thread.
    ///
    /// # Errors
    ///
    /// When the socket is broken.
    pub fn flush(&self) -> io::Result<()> {
        let mut state = self.lock();
        if state.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut progress = false;
        while state.pending_bytes() > 0 {
            let from = state.sent;
            match (&self.socket).write(&state.pending[from..]) {
                Ok(0) => {
                    state.broken = true;
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => {
                    state.sent += n;
                    state.written += n as u64;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    state.broken = true;
                    return Err(e);
                }
            }
        }
        if progress {
            state.drained_at = Some(Instant::now());
        }
        let sent = state.sent;
        while state.frame_ends.front().is_some_and(|end| *end <= sent) {
            state.frame_ends.pop_front();
        }
        if state.pending_bytes() == 0 {
            if state.pending.capacity() > KEEP_CAPACITY_BYTES {
                state.pending = Vec::new();
                state.frame_ends = VecDeque::new();
            }
            state.pending.clear();
            state.frame_ends.clear();
            state.sent = 0;
            state.tail_delta = None;
            state.stalled_since = None;
        } else if progress {
            state.stalled_since = Some(Instant::now());
            if state.sent > state.pending.len() / 2 {
                let sent = state.sent;
                state.pending.drain(..sent);
                for end in &mut state.frame_ends {
                    *end -= sent;
                }
                state.tail_delta = state.tail_delta.and_then(|start| start.checked_sub(sent));
                state.sent = 0;
            }
        }
        Ok(())
    }

    /// Bytes waiting for the socket.
    pub fn pending_bytes(&self) -> usize {
        self.pending_copy.load(Ordering::Acquire)
    }

    /// True when little enough waits that the connection may take on more work of its own.
    pub fn has_room(&self) -> bool {
        self.pending_bytes() < ROOM_BYTES
    }

    /// Since when the pending bytes have made no progress, if any wait.
    pub fn stalled_since(&self) -> Option<Instant> {
        self.lock().stalled_since
    }

    /// Bytes the socket has taken so far.
    pub fn written(&self) -> u64 {
        self.lock().written
    }

    /// Bytes handed to this `Outbound` so far, taken by the socket or waiting: the socket has
    /// taken everything handed over before now once [`Outbound::written`] reaches this.
    pub fn queued(&self) -> u64 {
        let state = self.lock();
        state.written + state.pending_bytes() as u64
    }

    /// When the socket last took bytes that had been waiting for it, a sign that the peer is
    /// reading: a socket with room takes bytes whether anyone reads them or not, a full one
    /// only as its peer reads.
    pub fn drained_at(&self) -> Option<Instant> {
        self.lock().drained_at
    }

    /// No data frame may be sent any more: a Close frame follows.
    pub fn close_data(&self) {
        self.lock().data_closed = true;
    }

    /// Why a session let the connection go, once.
    pub fn take_released(&self) -> Option<CloseReason> {
        self.lock().released.take()
    }

    /// Lets the connection go to make room for a newer one (it has not authenticated; see
    /// `admission.rs`): its thread is woken and closes it.
    pub fn evict(&self) {
        let mut state = self.lock();
        state.evicted = true;
        state.wake(false);
    }

    /// True, once, when the connection was let go by [`Outbound::evict`].
    pub fn take_evicted(&self) -> bool {
        std::mem::take(&mut self.lock().evicted)
    }

    /// Called by the connection thread before it sleeps: `None` when something happened that
    /// it must look at first (a wake, a release, a broken socket); else the thread counts as
    /// sleeping from now on, and the answer says whether it must poll for `POLLOUT`.
    pub fn begin_sleep(&self, waker: ThreadWaker) -> Option<bool> {
        let mut state = self.lock();
        if std::mem::take(&mut state.woken)
            || state.released.is_some()
            || state.broken
            || state.evicted
        {
            return None;
        }
        let polls_out = state.pending_bytes() > 0;
        state.sleeping = Some(Sleeping { waker, polls_out });
        self.asleep.store(true, Ordering::SeqCst);
        Some(polls_out)
    }

    /// Called by the connection thread when its sleep ends. Takes no lock.
    pub fn end_sleep(&self) {
        self.asleep.store(false, Ordering::SeqCst);
    }

    /// Called by the connection thread before it ends: nobody wakes it after this returns.
    /// Taking the lock waits out a writer that saw it asleep and is signalling it.
    pub fn retire(&self) {
        let mut state = self.lock();
        self.asleep.store(false, Ordering::SeqCst);
        state.sleeping = None;
    }
}

impl Sink for Outbound {
    fn deliver(&self, frames: &[WireText]) -> bool {
        self.send(frames)
    }

    fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        state.released.get_or_insert(reason);
        state.wake(false);
    }
}

impl Wake for Outbound {
    fn wake(&self) {
        let mut state = self.lock();
        state.woken = true;
        state.wake(false);
    }
}

/// Writes `slices` once, as far as the socket takes them; `WouldBlock` is 0 bytes.
fn write_vectored(socket: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    let mut socket = socket;
    loop {
        match socket.write_vectored(slices) {
            Ok(written) => return Ok(written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

/// Writes the header of an unmasked, final text frame of `length` bytes; returns its size.
fn text_header(header: &mut [u8; MAX_HEADER_BYTES], length: usize) -> usize {
    header[0] = 0x81;
    if length < 126 {
        header[1] = length as u8;
        2
    } else if let Ok(short) = u16::try_from(length) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(length as u64).to_be_bytes());
        10
    }
}

/// The header size of an unmasked frame whose second byte is `length_code`.
fn header_bytes(length_code: u8) -> usize {
    match length_code & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// Appends one text frame to `buffer`.
fn push_frame(buffer: &mut Vec<u8>, payload: &[u8]) {
    let mut header = [0u8; MAX_HEADER_BYTES];
    let length = text_header(&mut header, payload.len());
    buffer.extend_from_slice(&header[..length]);
    buffer.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::thread;
    use std::time::Duration;

    use nix::poll::PollFlags;

    use super::*;
    use crate::common::protocol::{ServerFrame, SessionId, TurnId, encode};
    use crate::net::wake::{self, Sleeper};

    /// Frames the writer sends, and the payload of each.
    const FRAMES: usize = 2_000;
    const FRAME_BYTES: usize = 8 * 1024;

    /// A writer thread keeps the socket full while a reader drains it in small reads, so that
    /// the pending buffer fills and empties over and over, and each time it fills while the
    /// connection thread sleeps polling for input only, that thread must be woken to poll for
    /// room. A lost wake-up leaves bytes pending with nobody writing them: the reader's next
    /// read times out. Every frame arrives, once, in order.
    #[test]
    fn no_wake_up_is_lost_while_the_pending_buffer_fills_and_empties() {
        wake::install().unwrap();
        // A small send buffer: most frames do not fit whole, so the writer leaves bytes
        // pending (and must wake the connection thread) again and again.
        let metrics = Arc::new(Metrics::default());
        let (mut client, outbound) = slow_pair(metrics.clone());
        let outbound = Arc::new(outbound);
        let done = Arc::new(AtomicBool::new(false));

        // The connection thread, as `Connection` runs it: flush, then sleep until the socket
        // has room (when bytes are pending) or a wake-up comes.
        let (connection_outbound, connection_done) = (outbound.clone(), done.clone());
        let connection = thread::spawn(move || {
            let sleeper = Sleeper::new().unwrap();
            while !connection_done.load(Ordering::SeqCst) {
                connection_outbound.flush().unwrap();
                let Some(polls_out) = connection_outbound.begin_sleep(sleeper.waker()) else {
                    continue;
                };
                let mut events = PollFlags::POLLIN;
                if polls_out {
                    events |= PollFlags::POLLOUT;
                }
                let fd = connection_outbound.socket().as_fd();
                // A long timeout: only a wake-up or room on the socket ends the sleep in time.
                sleeper
                    .sleep(fd, events, Some(Duration::from_secs(60)))
                    .unwrap();
                connection_outbound.end_sleep();
            }
            connection_outbound.retire();
        });
        // The writer: a turn thread producing frames. It waits for the pending bytes to drain
        // before each frame, so that every frame the socket refuses makes the pending buffer
        // non-empty anew, most often while the connection thread sleeps polling for input only.
        let writer_outbound = outbound.clone();
        let writer = thread::spawn(move || {
            let padding = "z".repeat(FRAME_BYTES - 8);
            for i in 0..FRAMES {
                let deadline = Instant::now() + Duration::from_secs(10);
                while writer_outbound.pending_bytes() > 0 {
                    assert!(Instant::now() < deadline, "the pending bytes never drained");
                    thread::yield_now();
                }
                let frame: WireText = format!("{i:08}{padding}").into();
                assert!(writer_outbound.send(&[frame]));
            }
        });
        // The reader: the client, in small reads.
        let mut received = Vec::with_capacity(FRAMES * (FRAME_BYTES + 4));
        let mut chunk = [0u8; 512];
        while received.len() < FRAMES * (FRAME_BYTES + 4) {
            let n = client
                .read(&mut chunk)
                .expect("a read timed out: a wake-up was lost");
            assert!(n > 0, "the socket closed");
            received.extend_from_slice(&chunk[..n]);
        }
        writer.join().unwrap();
        done.store(true, Ordering::SeqCst);
        Wake::wake(&*outbound);
        connection.join().unwrap();
        for (i, frame) in received.chunks(FRAME_BYTES + 4).enumerate() {
            assert_eq!(frame[..4], [0x81, 126, (FRAME_BYTES >> 8) as u8, 0]);
            assert_eq!(&frame[4..12], format!("{i:08}").as_bytes());
        }
        let deferred = Metrics::get(&metrics.writes_deferred);
        assert!(
            deferred > FRAMES as u64 / 10,
            "the socket filled up only {deferred} times; the test proves little"
        );
    }

    /// An `Outbound` on a socket with small buffers, and its peer, which reads nothing yet.
    fn slow_pair(metrics: Arc<Metrics>) -> (TcpStream, Outbound) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket
            .connect(&listener.local_addr().unwrap().into())
            .unwrap();
        let client: TcpStream = socket.into();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        let limit = PendingLimit {
            frames: usize::MAX,
            bytes: usize::MAX,
        };
        let outbound = Outbound::new(1, server, limit, metrics);
        (client, outbound)
    }

    /// Writes out everything pending while the peer reads it, then closes the writing side;
    /// the peer's bytes go to `received`.
    fn drain_bytes(client: &mut TcpStream, outbound: &Outbound, received: &mut Vec<u8>) {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            outbound.flush().unwrap();
            if outbound.pending_bytes() == 0 {
                break;
            }
            let n = client.read(&mut chunk).expect("the peer's read timed out");
            assert!(n > 0, "the socket closed");
            received.extend_from_slice(&chunk[..n]);
        }
        outbound
            .socket()
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
        client.read_to_end(received).unwrap();
    }

    /// Writes out everything pending while the peer reads it; returns the text frames read.
    fn drain(client: &mut TcpStream, outbound: &Outbound) -> Vec<String> {
        let mut received = Vec::new();
        drain_bytes(client, outbound, &mut received);
        let mut frames = Vec::new();
        let mut rest = &received[..];
        while !rest.is_empty() {
            assert_eq!(rest[0], 0x81, "a final text frame");
            let (length, header) = match rest[1] {
                126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
                127 => (
                    u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                short => (usize::from(short), 2),
            };
            assert_eq!(header, header_bytes(rest[1]));
            let payload = &rest[header..header + length];
            frames.push(String::from_utf8(payload.to_vec()).unwrap());
            rest = &rest[header + length..];
        }
        frames
    }

    fn delta(turn: u64, text: &str, replace: bool) -> WireText {
        let frame = ServerFrame::MessageDelta {
            turn_id: TurnId(turn),
            text: text.into(),
            replace,
        };
        encode(&frame, Some(&SessionId::from_random_bytes([5; 16])), None).into()
    }

    /// Fills the socket with frames that are not deltas, until bytes wait; returns them.
    fn fill(outbound: &Outbound) -> Vec<WireText> {
        let mut sent = Vec::new();
        while outbound.pending_bytes() == 0 {
            let frame: WireText = format!(
                r#"{{"filler":{},"pad":"{}"}}"#,
                sent.len(),
                "x".repeat(1000)
            )
            .into();
            assert!(outbound.send(std::slice::from_ref(&frame)));
            sent.push(frame);
        }
        sent
    }

    /// Deltas that wait for a full socket are merged while they are pieces of one turn and
    /// nothing stands between them: the peer reads fewer frames, in the same order, whose texts
    /// put together are every piece sent. A `message` between them, another turn, and a
    /// `replace` each start a new frame. The merged frames cross the 125- and 65,535-byte
    /// lengths, so their headers grow as they are rewritten.
    #[test]
    fn pieces_waiting_for_a_slow_peer_become_one_frame_per_run() {
        let (mut client, outbound) = slow_pair(Arc::default());
        let mut expected: Vec<String> = fill(&outbound).iter().map(|f| f.to_string()).collect();
        let piece = |n: usize| format!("{n:03}:{}|", "é\"\\\n".repeat(100));
        let mut first = String::new();
        for n in 0..100 {
            first.push_str(&piece(n));
            assert!(outbound.send(&[delta(3, &piece(n), false)]));
        }
        assert!(delta(3, &first, false).len() > 65_535);
        let closing: WireText =
            r#"{"type":"message","data":{"turn_id":3,"text":"done"},"seq":9}"#.into();
        assert!(outbound.send(std::slice::from_ref(&closing)));
        // One batch: pieces of turn 4, a replace, more pieces, then a piece of turn 5.
        let mut batch: Vec<WireText> = (0..10)
            .map(|n| delta(4, &format!("b{n} "), false))
            .collect();
        batch.push(delta(4, "R", true));
        batch.extend((0..10).map(|n| delta(4, &format!("c{n} "), false)));
        batch.push(delta(5, "other", false));
        assert!(outbound.send(&batch));
        let b: String = (0..10).map(|n| format!("b{n} ")).collect();
        let c: String = (0..10).map(|n| format!("c{n} ")).collect();
        expected.push(delta(3, &first, false).to_string());
        expected.push(closing.to_string());
        expected.push(delta(4, &b, false).to_string());
        expected.push(delta(4, &format!("R{c}"), true).to_string());
        expected.push(delta(5, "other", false).to_string());
        let frames = drain(&mut client, &outbound);
        assert_eq!(frames.len(), expected.len());
        for (got, want) in frames.iter().zip(&expected) {
            assert_eq!(got, want);
        }
    }

    /// A delta whose first bytes went to the socket is never changed: the next piece becomes
    /// a frame of its own. A control frame written through `write_raw` ends a run too.
    #[test]
    fn a_delta_partly_written_or_followed_by_a_control_frame_is_left_alone() {
        let (mut client, outbound) = slow_pair(Arc::default());
        let fillers = fill(&outbound);
        let big = delta(7, &"y".repeat(200_000), false);
        assert!(outbound.send(std::slice::from_ref(&big)));
        let mut all = Vec::new();
        for frame in &fillers {
            push_frame(&mut all, frame.as_bytes());
        }
        let delta_starts = all.len() as u64;
        push_frame(&mut all, big.as_bytes());
        // The peer reads until the socket has taken the start of the delta, not all of it.
        let mut received = Vec::new();
        let mut chunk = [0u8; 2048];
        while outbound.written() <= delta_starts + 100 {
            let n = client.read(&mut chunk).unwrap();
            received.extend_from_slice(&chunk[..n]);
            outbound.flush().unwrap();
        }
        assert!(outbound.written() < all.len() as u64);
        assert!(outbound.send(&[delta(7, "after", false)]));
        outbound.write_raw(&[0x89, 0]).unwrap();
        assert!(outbound.send(&[delta(7, "ping", false)]));
        push_frame(&mut all, delta(7, "after", false).as_bytes());
        all.extend_from_slice(&[0x89, 0]);
        push_frame(&mut all, delta(7, "ping", false).as_bytes());
        drain_bytes(&mut client, &outbound, &mut received);
        assert!(
            received == all,
            "the bytes differ from the frames sent, in order"
        );
    }

    #[test]
    fn headers_use_7_16_and_64_bit_lengths() {
        let mut header = [0u8; MAX_HEADER_BYTES];
        assert_eq!(text_header(&mut header, 125), 2);
        assert_eq!(header[..2], [0x81, 125]);
        assert_eq!(text_header(&mut header, 126), 4);
        assert_eq!(header[..4], [0x81, 126, 0, 126]);
        assert_eq!(text_header(&mut header, 65_535), 4);
        assert_eq!(header[..4], [0x81, 126, 0xff, 0xff]);
        assert_eq!(text_header(&mut header, 65_536), 10);
        assert_eq!(header[..10], [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }
}
