//! [`ShareStore`] for every [`Backend`]: a link written once under a fresh random id, read
//! back by its id alone (whoever asks holds the link), listed and revoked by its owner, and
//! revoked with its conversation ([`forget_shares`], in the journal's batch that deletes it).
//!
//! Depends on: `common::error`, `common::protocol`, `store::plan`, `store::shares`.

use data_encoding::HEXLOWER;

use super::{Backend, Db, Param, Row, View, Write, unix_now};
use crate::common::error::{Error, Result};
use crate::common::protocol::SessionId;
use crate::store::shares::{Share, ShareStore};

const NEW_SHARE: &str = "INSERT INTO shares (id, owner, session_id, title, copy, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SHARE: &str =
    "SELECT id, owner, session_id, title, copy, created_at FROM shares WHERE id = ?1";
const SHARES: &str = "SELECT id, owner, session_id, title, '', created_at FROM shares \
     WHERE owner = ?1 ORDER BY created_at DESC, key DESC";
const DELETE_SHARE: &str = "DELETE FROM shares WHERE id = ?1 AND owner = ?2";
const FORGET_SHARES: &str = "DELETE FROM shares WHERE session_id = ?1";

impl<B: Backend> ShareStore for B {
    fn create_share(
        &self,
        owner: &str,
        conversation: &SessionId,
        title: Option<&str>,
        copy: &str,
    ) -> Result<Share> {
        let share = Share {
            id: new_share_id()?,
            owner: owner.to_owned(),
            conversation: conversation.as_str().to_owned(),
            title: title.map(str::to_owned),
            copy: copy.to_owned(),
            created_at: unix_now(),
        };
        self.write("make a share link", Write::Insert, &mut |db| {
            db.run(
                NEW_SHARE,
                &[
                    Param::Text(&share.id),
                    Param::Text(&share.owner),
                    Param::Text(&share.conversation),
                    Param::OptText(share.title.as_deref()),
                    Param::Text(&share.copy),
                    Param::Int(share.created_at),
                ],
            )
        })?;
        Ok(share)
    }

    fn share(&self, id: &str) -> Result<Option<Share>> {
        self.read("read a share link", View::Statement, &mut |db| {
            db.row(SHARE, &[Param::Text(id)], share_from_row)
        })
    }

    fn shares(&self, owner: &str) -> Result<Vec<Share>> {
        self.read("list share links", View::Statement, &mut |db| {
            db.rows(SHARES, &[Param::Text(owner)], share_from_row)
        })
    }

    fn delete_share(&self, owner: &str, id: &str) -> Result<bool> {
        self.write("revoke a share link", Write::Delete, &mut |db| {
            Ok(db.run(DELETE_SHARE, &[Param::Text(id), Param::Text(owner)])? > 0)
        })
    }
}

/// Revokes every link to conversation `session`: its deletion leaves nothing of it readable.
/// Runs in the journal's batch that deletes it.
///
/// # Errors
///
/// The database's.
pub(super) fn forget_shares<E>(db: &mut dyn Db<Error = E>, session: &str) -> Result<(), E> {
    db.run(FORGET_SHARES, &[Param::Text(session)])?;
    Ok(())
}

/// A link as [`SHARE`] and [`SHARES`] read it.
fn share_from_row<E>(row: &dyn Row<Error = E>) -> Result<Share, E> {
    Ok(Share {
        id: row.text(0)?,
        owner: row.text(1)?,
        conversation: row.text(2)?,
        title: row.opt_text(3)?,
        copy: row.text(4)?,
        created_at: row.int(5)?,
    })
}

/// A new link's id: 32 hex characters (128 bits) from the OS's cryptographic random source.
fn new_share_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::store(format!("no share id could be drawn: {e}")))?;
    Ok(HEXLOWER.encode(&bytes))
}
