//! How a connection thread sleeps in `poll(2)` on its socket alone, and how another thread
//! wakes it without a second descriptor: a thread-directed signal ([`WAKE_SIGNAL`]).
//!
//! The sleeping thread keeps the signal blocked at all times except inside `ppoll`, which
//! unblocks it atomically for the length of the sleep. A signal sent while the thread is
//! anywhere else stays pending and ends its next sleep at once, so a wake-up sent between "I
//! have nothing to do" and "I sleep" is never lost. On Linux `poll` and `ppoll` are never
//! restarted after a signal handler, whatever `SA_RESTART` says (signal(7)): they return
//! `EINTR`.
//!
//! Depends on nothing in the crate.

use std::io;
use std::marker::PhantomData;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::pthread::{Pthread, pthread_kill, pthread_self};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::time::TimeSpec;

/// The signal that wakes a sleeping connection thread. SIGURG, as the Go runtime uses for its
/// own thread-directed signals: its default action is to ignore it, so a stray one can do no
/// harm, and nothing else in the server uses it (sockets raise it only for a process that
/// claimed them with `F_SETOWN`).
pub const WAKE_SIGNAL: Signal = Signal::SIGURG;

/// Installs the process-wide handler for [`WAKE_SIGNAL`]; idempotent. A handler must exist:
/// a signal whose action is "ignore" never interrupts `ppoll`.
///
/// # Errors
///
/// When the handler cannot be registered.
pub fn install() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), io::ErrorKind>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        // The flag it sets is never read: the handler exists only to interrupt `ppoll`.
        signal_hook::flag::register(WAKE_SIGNAL as i32, Arc::new(AtomicBool::new(false)))
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    installed.map_err(|kind| io::Error::new(kind, "cannot handle the wake-up signal"))
}

/// The sleeping side, made on (and bound to) the thread that sleeps: it blocks
/// [`WAKE_SIGNAL`] for that thread.
#[derive(Debug)]
pub struct Sleeper {
    thread: Pthread,
    /// The thread's signal mask with [`WAKE_SIGNAL`] let in: the mask while it sleeps.
    sleep_mask: SigSet,
    /// Not `Send`: the signal mask belongs to the thread that made it.
    _bound: PhantomData<*const ()>,
}

impl Sleeper {
    /// Blocks [`WAKE_SIGNAL`] for the calling thread, which from now on sleeps through
    /// [`Sleeper::sleep`]. [`install`] must have been called.
    ///
    /// # Errors
    ///
    /// When the signal mask cannot be read or changed.
    pub fn new() -> io::Result<Self> {
        let mut blocked = SigSet::empty();
        blocked.add(WAKE_SIGNAL);
        blocked.thread_block().map_err(io::Error::from)?;
        let mut sleep_mask = SigSet::thread_get_mask().map_err(io::Error::from)?;
        sleep_mask.remove(WAKE_SIGNAL);
        Ok(Sleeper {
            thread: pthread_self(),
            sleep_mask,
            _bound: PhantomData,
        })
    }

    /// What wakes this thread from another one.
    pub fn waker(&self) -> ThreadWaker {
        ThreadWaker {
            thread: self.thread,
        }
    }

    /// Sleeps until `fd` has one of `events`, a wake-up arrives (also one sent before this
    /// call, since the last sleep), or `timeout` passes. Returns the events that are ready;
    /// empty after a wake-up or the timeout.
    ///
    /// # Errors
    ///
    /// When `ppoll` fails for another reason than a signal.
    pub fn sleep(
        &self,
        fd: BorrowedFd<'_>,
        events: PollFlags,
        timeout: Option<Duration>,
    ) -> io::Result<PollFlags> {
        let mut fds = [PollFd::new(fd, events)];
        let timeout = timeout.map(TimeSpec::from_duration);
        match ppoll(&mut fds, timeout, Some(self.sleep_mask)) {
            Ok(_) => Ok(fds[0].revents().unwrap_or(PollFlags::empty())),
            Err(Errno::EINTR) => Ok(PollFlags::empty()),
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

/// Wakes one sleeping thread. Cheap to copy; one system call per wake.
///
/// The thread must still be running when [`ThreadWaker::wake`] is called: a thread id may be
/// reused once its thread has ended. `Outbound` guarantees it by waking only while the thread
/// has said, under its lock, that it is about to sleep or sleeping.
#[derive(Clone, Copy, Debug)]
pub struct ThreadWaker {
    thread: Pthread,
}

impl ThreadWaker {
    /// Sends [`WAKE_SIGNAL`] to the thread: its current or next [`Sleeper::sleep`] returns.
    pub fn wake(&self) {
        if let Err(e) = pthread_kill(self.thread, WAKE_SIGNAL) {
            log::warn!("wake: pthread_kill failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Instant;

    use super::*;

    /// A wake sent before the sleep begins is not lost: the signal waits, blocked, and ends the
    /// sleep at once. A wake during the sleep ends it too.
    #[test]
    fn a_wake_before_or_during_the_sleep_ends_it() {
        install().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (socket, _) = listener.accept().unwrap();
        let (waker_out, waker_in) = mpsc::channel();
        let (go_out, go_in) = mpsc::channel::<()>();
        let (done_out, done_in) = mpsc::channel();
        let sleeper_thread = thread::spawn(move || {
            let sleeper = Sleeper::new().unwrap();
            waker_out.send(sleeper.waker()).unwrap();
            // The wake is sent while this thread is not sleeping yet.
            go_in.recv().unwrap();
            let started = Instant::now();
            let ready = sleeper
                .sleep(
                    socket.as_fd(),
                    PollFlags::POLLIN,
                    Some(Duration::from_secs(20)),
                )
                .unwrap();
            done_out.send((ready, started.elapsed())).unwrap();
            let started = Instant::now();
            let ready = sleeper
                .sleep(
                    socket.as_fd(),
                    PollFlags::POLLIN,
                    Some(Duration::from_secs(20)),
                )
                .unwrap();
            done_out.send((ready, started.elapsed())).unwrap();
        });
        let waker = waker_in.recv().unwrap();
        waker.wake();
        go_out.send(()).unwrap();
        let (ready, took) = done_in.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(ready.is_empty());
        assert!(took < Duration::from_secs(5), "{took:?}");
        // Now the thread sleeps (or is about to): a wake ends that sleep as well.
        waker.wake();
        let (ready, took) = done_in.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(ready.is_empty());
        assert!(took < Duration::from_secs(5), "{took:?}");
        sleeper_thread.join().unwrap();
    }
}
