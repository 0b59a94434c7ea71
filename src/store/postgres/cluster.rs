//! [`Cluster`] over PostgreSQL: a row of `leases` per conversation being written, with its
//! holder and an expiry, and `LISTEN`/`NOTIFY` on the channel `sparky` for wake-ups.
//!
//! A lease is free when nobody holds it, when its holder did not renew it within
//! [`LEASE_TTL`], or when its holder has no connection to the database any more: every
//! connection of an instance carries its name as `application_name`, so that an instance
//! killed outright (`kill -9`, whose connections the kernel closes) is seen as gone at once,
//! and only one that hangs while connected is waited out.
//!
//! Lease statements run on the pool; the listening connection is a connection of its own,
//! opened at the first [`Cluster::wait`] and again after it broke (then the caller is told to
//! resync, since notifications sent meanwhile are lost).
//!
//! Depends on: `common::error`, `common::protocol`, `store::cluster`, `store::postgres`.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use super::super::cluster::{parse_payload, payload};
use super::super::{Cluster, LEASE_TTL, Notice, Signal};
use super::{PostgresStore, store_error};
use crate::common::error::{Error, Result};
use crate::common::protocol::SessionId;

/// Expired leases of conversations with no open turn dropped in one sweep at most.
const DROP_BATCH: i64 = 1_000;

/// SQL true for a lease `l` whose holder is gone: it did not renew it, or it has no
/// connection (a macro, so that `concat!` can build the statements with it).
macro_rules! holder_gone {
    () => {
        "(l.expires_at < now() OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a \
         WHERE a.application_name = 'sparky ' || l.holder))"
    };
}

/// Takes the lease when it is free, its holder is gone, or it is ours; answers a row when it
/// is ours now.
const ACQUIRE: &str = concat!(
    "INSERT INTO leases AS l (session_key, holder, expires_at) \
     SELECT key, $2, now() + $3::bigint * interval '1 millisecond' FROM sessions WHERE id = $1 \
     ON CONFLICT (session_key) DO UPDATE \
     SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
     WHERE l.holder = EXCLUDED.holder OR ",
    holder_gone!(),
    " RETURNING 1"
);
const RELEASE: &str = "DELETE FROM leases l USING sessions s \
     WHERE l.session_key = s.key AND s.id = $1 AND l.holder = $2";
const RELEASE_ALL: &str = "DELETE FROM leases WHERE holder = $1";
const RENEW: &str = "UPDATE leases SET expires_at = now() + $2::bigint * interval '1 millisecond' \
     WHERE holder = $1";
const DROP_EXPIRED: &str = concat!(
    "DELETE FROM leases WHERE session_key IN (SELECT l.session_key \
     FROM leases l JOIN sessions s ON s.key = l.session_key WHERE s.open_turn IS NULL AND ",
    holder_gone!(),
    " LIMIT $1)"
);
const EXPIRED: &str = concat!(
    "SELECT s.id FROM leases l JOIN sessions s ON s.key = l.session_key \
     WHERE s.open_turn IS NOT NULL AND ",
    holder_gone!(),
    " LIMIT $1"
);
const NOTIFY: &str = "SELECT pg_notify('sparky', $1)";

/// A name for this instance in leases and signals: random, so that two instances (or one
/// restarted) never share one.
pub(super) fn instance_name() -> Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::store(format!("no instance name could be drawn: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `application_name` of every connection of the instance named `instance`.
pub(super) fn application_name(instance: &str) -> String {
    format!("sparky {instance}")
}

fn lease_millis() -> i64 {
    LEASE_TTL.as_millis() as i64
}

impl Cluster for PostgresStore {
    fn shared(&self) -> bool {
        true
    }

    fn acquire(&self, id: &SessionId) -> Result<bool> {
        self.pool.run_once("take a lease", |connection| {
            let rows = connection
                .client
                .query(ACQUIRE, &[&id.as_str(), &self.instance, &lease_millis()])?;
            Ok(!rows.is_empty())
        })
    }

    fn release(&self, id: &SessionId) -> Result<bool> {
        self.pool.run("let a lease go", |connection| {
            connection
                .client
                .execute(RELEASE, &[&id.as_str(), &self.instance])
                .map(|rows| rows > 0)
        })
    }

    fn release_all(&self) -> Result<()> {
        self.pool.run("let every lease go", |connection| {
            connection
                .client
                .execute(RELEASE_ALL, &[&self.instance])
                .map(drop)
        })
    }

    fn renew(&self) -> Result<u64> {
        self.pool.run("renew leases", |connection| {
            connection
                .client
                .execute(RENEW, &[&self.instance, &lease_millis()])
        })
    }

    fn expired(&self, limit: usize) -> Result<Vec<SessionId>> {
        self.pool
            .run("find expired leases", |connection| {
                connection.client.execute(DROP_EXPIRED, &[&DROP_BATCH])?;
                let rows = connection
                    .client
                    .query(EXPIRED, &[&(limit.min(i64::MAX as usize) as i64)])?;
                rows.iter()
                    .map(|row| row.try_get::<_, String>(0))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map(|ids| ids.iter().filter_map(|id| SessionId::parse(id)).collect())
    }

    fn signal(&self, signal: Signal, id: &SessionId, detail: &str) -> Result<()> {
        let text = payload(signal, id.as_str(), &self.instance, detail);
        self.pool.run_once("signal other instances", |connection| {
            connection.client.execute(NOTIFY, &[&text]).map(drop)
        })
    }

    fn wait(&self, timeout: Duration) -> Result<Vec<Notice>> {
        let mut listener = self.listener.lock();
        if listener.as_ref().is_some_and(|c| c.client.is_closed()) {
            *listener = None;
        }
        let Some(connection) = listener.as_mut() else {
            let mut connection = self.pool.connector().connect()?;
            connection
                .client
                .batch_execute("LISTEN sparky")
                .map_err(|e| store_error("listen for other instances", e))?;
            *listener = Some(connection);
            return Ok(vec![Notice::Resync]);
        };
        let texts = match receive(&mut connection.client, timeout) {
            Ok(texts) if !connection.client.is_closed() => texts,
            Ok(_) => {
                *listener = None;
                return Err(Error::store(
                    "listen for other instances: the connection closed",
                ));
            }
            Err(e) => {
                *listener = None;
                return Err(store_error("listen for other instances", e));
            }
        };
        Ok(texts
            .iter()
            .filter_map(|text| parse_payload(text, &self.instance))
            .collect())
    }
}

/// The payloads of the notifications that arrive within `timeout`: the first one waited for,
/// the rest that came with it taken without waiting.
fn receive(
    client: &mut postgres::Client,
    timeout: Duration,
) -> Result<Vec<String>, postgres::Error> {
    let mut notifications = client.notifications();
    let mut texts = Vec::new();
    if let Some(first) = notifications.timeout_iter(timeout).next()? {
        texts.push(first.payload().to_owned());
    }
    let mut pending = notifications.iter();
    while let Some(more) = pending.next()? {
        texts.push(more.payload().to_owned());
    }
    Ok(texts)
}
