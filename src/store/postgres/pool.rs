//! The connections of a PostgreSQL store: [`Connector`] opens them (with a backoff once the
//! database has refused one, so that a database that went away is not hammered by every thread
//! that wants it), [`Pool`] lends a bounded number of them to readers, and [`Connection`] keeps
//! each one's prepared statements (`db.rs` prepares them).
//!
//! A small pool of our own rather than r2d2: a mutex, a condvar and a list of idle connections
//! are all it takes, it needs no thread of its own (r2d2 keeps a scheduled thread pool for its
//! reaper), and it reports exactly the figures `/metrics` shows.
//!
//! Depends on: `common::error`, `store`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};

use super::super::PoolStatus;
use crate::common::error::{Error, Result};

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long data sent to the database may stay unacknowledged before the connection counts as
/// broken (Linux's `TCP_USER_TIMEOUT`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// The wait before the first new try once the database has refused a connection; it doubles
/// with each refusal up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between two tries to reach a database that is gone.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long a reader waits for a connection when all of them are lent out.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);

/// One open connection and the statements prepared on it.
pub(super) struct Connection {
    /// The client.
    pub(super) client: Client,
    /// Statements prepared on `client`, by their text.
    pub(super) statements: HashMap<&'static str, Statement>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("closed", &self.client.is_closed())
            .field("statements", &self.statements.len())
            .finish()
    }
}

/// Opens connections to one database, and remembers when it last refused one.
pub(super) struct Connector {
    config: postgres::Config,
    /// The database as named in messages (no password).
    pub(super) target: String,
    /// When the next try may be made, and the wait after it if it fails too; `None` while the
    /// database is reachable.
    backoff: Mutex<Option<(Instant, Duration)>>,
    /// True while the last try failed.
    down: AtomicBool,
    connects: AtomicU64,
    failures: AtomicU64,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target)
            .field("down", &self.down)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for `config`; `target` names the database in messages, and `name` is every
    /// connection's `application_name`.
    pub(super) fn new(mut config: postgres::Config, target: String, name: &str) -> Self {
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .application_name(name)
            // A database behind a cut network is noticed within seconds, not after TCP's
            // retransmissions give up (many minutes): sent data unacknowledged for
            // TCP_USER_TIMEOUT fails the connection, and so do keepalives unanswered while idle.
            .tcp_user_timeout(TCP_USER_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            // PostgreSQL's notices (a search made only of stopwords, say) are for a developer.
            .notice_callback(|notice| {
                log::debug!("store: postgres says: {}", notice.message());
            });
        Connector {
            config,
            target,
            backoff: Mutex::new(None),
            down: AtomicBool::new(false),
            connects: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Opens a connection, unless the database refused the last one less than a backoff ago:
    /// then this fails at once, so that threads do not queue up behind a database that is gone.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the database cannot be reached now.
    pub(super) fn connect(&self) -> Result<Connection> {
        if let Some((next_try, _)) = *self.backoff.lock() {
            let now = Instant::now();
            if now < next_try {
                return Err(Error::store(format!(
                    "database {} is unreachable; next try in {} ms",
                    self.target,
                    (next_try - now).as_millis()
                )));
            }
        }
        match self.config.connect(NoTls) {
            Ok(client) => {
                self.connects.fetch_add(1, Ordering::Relaxed);
                *self.backoff.lock() = None;
                if self.down.swap(false, Ordering::Relaxed) {
                    log::warn!("store: database {} is reachable again", self.target);
                }
                Ok(Connection {
                    client,
                    statements: HashMap::new(),
                })
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let mut backoff = self.backoff.lock();
                let wait = backoff.map_or(FIRST_BACKOFF, |(_, wait)| (wait * 2).min(MAX_BACKOFF));
                *backoff = Some((Instant::now() + wait, wait));
                drop(backoff);
                let cause = describe(&e);
                // Before the first connection the server is starting, and says so itself.
                let started = self.connects.load(Ordering::Relaxed) > 0;
                if !self.down.swap(true, Ordering::Relaxed) && started {
                    log::error!(
                        "store: cannot reach database {}: {cause}; retrying with backoff",
                        self.target
                    );
                }
                Err(Error::store(format!(
                    "cannot connect to database {}: {cause}",
                    self.target
                )))
            }
        }
    }

    /// Notes that a connection in use was found closed: the database may be gone, and the
    /// store says so until a new connection opens.
    pub(super) fn lost(&self) {
        if !self.down.swap(true, Ordering::Relaxed) {
            log::error!(
                "store: lost the connection to database {}; reconnecting with backoff",
                self.target
            );
        }
    }

    /// True while the database is thought unreachable.
    pub(super) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}

/// A bounded set of connections lent to one thread at a time.
///
/// The lock guards the idle list and the counts, and is held only to take or give back a
/// connection, never while one is opened or used.
pub(super) struct Pool {
    connector: Connector,
    size: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
    checkouts: AtomicU64,
    waits: AtomicU64,
    timeouts: AtomicU64,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Connection>,
    /// Connections open, idle or lent, plus those being opened.
    open: usize,
    waiting: usize,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("connector", &self.connector)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Gives a lent connection's place back if the thread using it panics, so that the pool
/// does not shrink.
struct Place<'a> {
    pool: &'a Pool,
    armed: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.state.lock().open -= 1;
            self.pool.returned.notify_one();
        }
    }
}

impl Pool {
    /// A pool of at most `size` connections (at least one), opened as they are needed.
    pub(super) fn new(connector: Connector, size: usize) -> Self {
        Pool {
            connector,
            size: size.max(1),
            state: Mutex::new(PoolState::default()),
            returned: Condvar::new(),
            checkouts: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        }
    }

    /// The connector, shared with the writer.
    pub(super) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Runs `work` on a connection of the pool, and gives the connection back. When `work`
    /// fails on an idle connection that turns out closed (the database restarted since it was
    /// last used), it runs once more on a new one: `work` must be safe to repeat, as reads are.
    ///
    /// # Errors
    ///
    /// [`Error::Store`], naming `what`, when the database cannot be reached, no connection came
    /// back in time, or `work` fails.
    pub(super) fn run<T>(
        &self,
        what: &str,
        work: impl FnMut(&mut Connection) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        self.lend(what, true, work)
    }

    /// Runs `work` once on a connection of the pool, and gives the connection back: for
    /// writes, which a second run could repeat.
    ///
    /// # Errors
    ///
    /// As [`Pool::run`].
    pub(super) fn run_once<T>(
        &self,
        what: &str,
        work: impl FnMut(&mut Connection) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        self.lend(what, false, work)
    }

    fn lend<T>(
        &self,
        what: &str,
        retry: bool,
        mut work: impl FnMut(&mut Connection) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let (mut connection, reused) = self.checkout()?;
        let mut place = Place {
            pool: self,
            armed: true,
        };
        let mut result = work(&mut connection);
        if retry
            && reused
            && result
                .as_ref()
                .is_err_and(|e| broken(e, &connection.client))
        {
            drop(connection);
            // On failure the place stays armed, and is given back on the way out.
            connection = self.connector.connect()?;
            result = work(&mut connection);
        }
        place.armed = false;
        let lost = result
            .as_ref()
            .is_err_and(|e| broken(e, &connection.client));
        if lost {
            self.connector.lost();
        }
        self.give_back(connection, lost);
        result.map_err(|e| {
            let detail = format!("{what}: {}", describe(&e));
            let full = e.code() == Some(&SqlState::DISK_FULL);
            Error::store_caused(detail, e).full_if(full)
        })
    }

    /// An idle connection, a new one while fewer than the pool's size are open, or the first
    /// one given back within [`CHECKOUT_TIMEOUT`]; and whether it had been used before.
    fn checkout(&self) -> Result<(Connection, bool)> {
        self.checkouts.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + CHECKOUT_TIMEOUT;
        let mut state = self.state.lock();
        let mut waited = false;
        loop {
            if let Some(connection) = state.idle.pop() {
                if connection.client.is_closed() {
                    state.open -= 1;
                    continue;
                }
                return Ok((connection, true));
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                return match self.connector.connect() {
                    Ok(connection) => Ok((connection, false)),
                    Err(e) => {
                        self.state.lock().open -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            if !waited {
                waited = true;
                self.waits.fetch_add(1, Ordering::Relaxed);
            }
            state.waiting += 1;
            let timed_out = self.returned.wait_until(&mut state, deadline).timed_out();
            state.waiting -= 1;
            if timed_out && state.idle.is_empty() && state.open >= self.size {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(Error::store(format!(
                    "no connection to database {} came free in {CHECKOUT_TIMEOUT:?} \
                     (--store-pool {})",
                    self.connector.target, self.size
                )));
            }
        }
    }

    /// Puts a connection back among the idle ones, or closes it when it is `broken`.
    fn give_back(&self, connection: Connection, broken: bool) {
        let mut state = self.state.lock();
        if broken || connection.client.is_closed() {
            state.open -= 1;
            drop(state);
            drop(connection);
        } else {
            state.idle.push(connection);
            drop(state);
        }
        self.returned.notify_one();
    }

    /// The pool's figures now.
    pub(super) fn status(&self) -> PoolStatus {
        let state = self.state.lock();
        let (open, idle, waiting) = (state.open, state.idle.len(), state.waiting);
        drop(state);
        PoolStatus {
            size: self.size as u64,
            open: open as u64,
            in_use: open.saturating_sub(idle) as u64,
            waiting: waiting as u64,
            checkouts_total: self.checkouts.load(Ordering::Relaxed),
            waits_total: self.waits.load(Ordering::Relaxed),
            timeouts_total: self.timeouts.load(Ordering::Relaxed),
            connects_total: self.connector.connects.load(Ordering::Relaxed),
            connect_failures_total: self.connector.failures.load(Ordering::Relaxed),
        }
    }
}

/// True when `e` means the connection is gone (or going): closed, cut off by the server, or
/// failed in its IO. The client may not have noticed the close yet when the error arrives, so
/// the error itself is looked at too.
pub(super) fn broken(e: &postgres::Error, client: &Client) -> bool {
    use postgres::error::SqlState;
    if client.is_closed() || e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        return db.severity() == "FATAL"
            || db.severity() == "PANIC"
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(db.code());
    }
    // No message from the server: the socket itself failed.
    std::error::Error::source(e).is_some_and(|cause| cause.is::<std::io::Error>())
}

/// A PostgreSQL error in one line: the database's own message and code when it sent one.
pub(super) fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    // The client's own errors keep their cause (refused, timed out, …) in the source chain.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
