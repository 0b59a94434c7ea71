//! The journal's batch on PostgreSQL: one transaction on the writer connection, in which the
//! shared plan runs ([`super::super::plan::apply`]), written exactly once even when the
//! connection drops during its `COMMIT`.
//!
//! Depends on: `store`, `store::plan::batch`, `store::postgres`, `store::postgres::db`, `store::postgres::pool`.

use super::super::plan::apply;
use super::WriterMemory;
use super::db::{Pg, SQL};
use super::pool::{Connection, broken};
use crate::store::WriteOp;

/// Applies `batch` in one transaction, unless it is the batch whose `COMMIT` was cut off and
/// the database says that transaction committed.
///
/// A batch costs three round trips (`BEGIN`, [`super::db::WRITE_ROWS`], `COMMIT`), plus one
/// for each new conversation, each conversation the writer has not seen yet, and each rename,
/// trim or deletion: with many sessions busy, the round trips are what a batch costs, not the
/// rows.
pub(super) fn apply_batch(
    connection: &mut Connection,
    memory: &mut WriterMemory,
    instance: &str,
    batch: &[WriteOp],
) -> Result<(), postgres::Error> {
    let Connection { client, statements } = connection;
    let WriterMemory { keys, uncertain } = memory;
    if let Some((xid, ops)) = uncertain.take() {
        let status: Option<String> = client
            .query_one("SELECT pg_xact_status($1::text::xid8)", &[&xid])?
            .try_get(0)?;
        if status.as_deref() == Some("committed") && ops == batch {
            log::warn!("store: a batch whose commit was cut off had been committed");
            return Ok(());
        }
    }
    let mut tx = client.transaction()?;
    let mut db = Pg::new(&mut tx, statements, instance);
    apply(&mut db, &SQL, keys, batch)?;
    let xid = db.xid.take().unwrap_or_default();
    match tx.commit() {
        Ok(()) => Ok(()),
        Err(e) => {
            if broken(&e, client) {
                *uncertain = Some((xid, batch.to_vec()));
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::tests::cluster;
    use super::super::PostgresStore;
    use super::*;
    use crate::common::protocol::SessionId;
    use crate::store::{ConversationStore, TurnMark};

    /// An event and a note: a note has no key, so a batch written twice shows as two notes.
    fn batch(id: &SessionId, seq: u64) -> Vec<WriteOp> {
        vec![
            WriteOp::Event {
                session: id.clone(),
                seq,
                body: format!("event {seq}").into(),
                turn: TurnMark::None,
                search_text: None,
            },
            WriteOp::Note {
                session: id.clone(),
                text: format!("note {seq}"),
            },
        ]
    }

    /// The transaction id that wrote event `seq` (a fresh cluster's ids need no epoch).
    fn writer_of(store: &PostgresStore, seq: i64) -> String {
        store
            .pool
            .run("xmin", |connection| {
                connection
                    .client
                    .query_one("SELECT xmin::text FROM events WHERE seq = $1", &[&seq])?
                    .try_get(0)
            })
            .unwrap()
    }

    #[test]
    fn a_batch_whose_commit_was_cut_off_is_written_exactly_once() {
        let store = PostgresStore::connect(&cluster::fresh_database(), 2).unwrap();
        let id = SessionId::from_random_bytes([5; 16]);
        let create = WriteOp::CreateSession {
            id: id.clone(),
            owner: "ann".into(),
            user_id: None,
            personality: None,
            model: None,
        };
        store.apply(&[create]).unwrap();
        store.apply(&batch(&id, 1)).unwrap();

        // The commit went through, but the writer lost the connection before hearing so: the
        // same batch, tried again, is not written twice (its note would be).
        let committed = writer_of(&store, 1);
        store.writer.lock().memory.uncertain = Some((committed, batch(&id, 1)));
        store.apply(&batch(&id, 1)).unwrap();
        assert_eq!(store.count_rows("events"), 1);
        assert_eq!(store.count_rows("notes"), 1);

        // The commit did not go through: the batch is written.
        let aborted: String = {
            let mut writer = store.writer.lock();
            let client = &mut writer.connection.as_mut().unwrap().client;
            let mut tx = client.transaction().unwrap();
            let xid = tx
                .query_one("SELECT pg_current_xact_id()::text", &[])
                .unwrap()
                .get(0);
            tx.rollback().unwrap();
            xid
        };
        store.writer.lock().memory.uncertain = Some((aborted, batch(&id, 2)));
        store.apply(&batch(&id, 2)).unwrap();
        assert_eq!(store.count_rows("events"), 2);
        assert_eq!(store.count_rows("notes"), 2);

        // An event whose `seq` the conversation has used already (written by an instance that
        // lost its lease) is left out, and the first one kept; the batch is not stuck on it.
        let stale = WriteOp::Event {
            session: id.clone(),
            seq: 2,
            body: "a stale writer's event 2".into(),
            turn: TurnMark::None,
            search_text: None,
        };
        store.apply(&[stale]).unwrap();
        assert_eq!(store.count_rows("events"), 2);
        let page = store.events(&id, 1, 2, 1 << 20).unwrap();
        assert_eq!(page.events, vec![(2, "event 2".to_owned())]);
        assert_eq!(store.load(&id, 10, 10).unwrap().unwrap().last_seq, 2);
    }
}
