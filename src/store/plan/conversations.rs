//! [`ConversationStore`] for every [`Backend`]: what a conversation is read back as (loading
//! it, paging its events, the list and its search, summaries), and moving owners. The batch
//! that writes conversations is `batch.rs`.
//!
//! Depends on: `common::error`, `common::protocol`, `model`, `store`, `store::plan`.

use std::time::Duration;

use super::{
    Backend, Db, Param, Query, Row, View, Write, big, calls_from_json, messages_from_newest,
    role_from, small, summary_columns, unix_now,
};
use crate::common::error::Result;
use crate::common::protocol::{SessionId, Usage};
use crate::model::ChatMessage;
use crate::store::{
    ConversationStore, ConversationSummary, EventPage, StoreStatus, StoredConversation, WriteOp,
};

const LOAD_SESSION: &str = "SELECT key, owner, user_id, personality, last_seq, turns, \
     open_turn, open_text, first_message, model FROM sessions WHERE id = ?1";
const LOAD_MESSAGES: &str = "SELECT idx, role, content, tool_calls, tool_call_id, is_error \
     FROM messages WHERE session_key = ?1 AND idx >= ?2 ORDER BY idx DESC LIMIT ?3";
const LOAD_TAIL: &str =
    "SELECT seq, body FROM events WHERE session_key = ?1 ORDER BY seq DESC LIMIT ?2";
const SESSION_FIRST_SEQ: &str = "SELECT key, first_seq FROM sessions WHERE id = ?1";
const EVENT_RANGE: &str = "SELECT seq, body FROM events \
     WHERE session_key = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq";
const OWNED_SESSION_KEY: &str = "SELECT key FROM sessions WHERE id = ?1 AND owner = ?2";
const EVENTS_BEFORE: &str = "SELECT body FROM events WHERE session_key = ?1 AND seq < ?2 \
     ORDER BY seq DESC LIMIT ?3";
const LIST: &str = concat!(
    "SELECT ",
    summary_columns!(),
    " FROM sessions WHERE owner = ?1 ORDER BY updated_at DESC, key DESC LIMIT ?2"
);
const SUMMARY: &str = concat!(
    "SELECT ",
    summary_columns!(),
    " FROM sessions WHERE id = ?1 AND owner = ?2"
);
const IDLE: &str = "SELECT id FROM sessions WHERE updated_at < ?1 LIMIT ?2";
const COUNT: &str = "SELECT count(*) FROM sessions WHERE owner = ?1";
const REASSIGN: &str = "UPDATE sessions SET owner = ?2 WHERE owner = ?1";

impl<B: Backend> ConversationStore for B {
    fn apply(&self, batch: &[WriteOp]) -> Result<()> {
        self.write_batch(batch)
    }

    fn load(
        &self,
        id: &SessionId,
        tail: usize,
        messages: usize,
    ) -> Result<Option<StoredConversation>> {
        self.read("load conversation", View::Snapshot, &mut |db| {
            load(db, B::SQL.notes, id, tail, messages)
        })
    }

    fn events(
        &self,
        id: &SessionId,
        after: u64,
        up_to: u64,
        max_bytes: usize,
    ) -> Result<EventPage> {
        self.read("read events", View::Snapshot, &mut |db| {
            let Some((key, first_seq)) =
                db.row(SESSION_FIRST_SEQ, &[Param::Text(id.as_str())], |row| {
                    Ok((row.int(0)?, row.int(1)?))
                })?
            else {
                return Ok(EventPage::default());
            };
            let mut events = Vec::new();
            let mut bytes = 0;
            if max_bytes > 0 {
                let range = [
                    Param::Int(key),
                    Param::Int(big(after)),
                    Param::Int(big(up_to)),
                ];
                let range = Query {
                    sql: EVENT_RANGE,
                    params: &range,
                };
                db.stream(range, &mut |row| {
                    let body = row.text(1)?;
                    bytes += body.len();
                    events.push((small(row.int(0)?), body));
                    Ok(bytes < max_bytes)
                })?;
            }
            Ok(EventPage {
                events,
                first_seq: small(first_seq).max(1),
            })
        })
    }

    fn events_before(
        &self,
        owner: &str,
        id: &SessionId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Option<Vec<String>>> {
        let before = before.map_or(i64::MAX, big);
        self.read("read events", View::Snapshot, &mut |db| {
            let owned = [Param::Text(id.as_str()), Param::Text(owner)];
            let Some(key) = db.row(OWNED_SESSION_KEY, &owned, |row| row.int(0))? else {
                return Ok(None);
            };
            let page = [
                Param::Int(key),
                Param::Int(before),
                Param::Int(count(limit)),
            ];
            let mut bodies = db.rows(EVENTS_BEFORE, &page, |row| row.text(0))?;
            bodies.reverse();
            Ok(Some(bodies))
        })
    }

    fn list(
        &self,
        owner: &str,
        query: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>> {
        let limit = Param::Int(count(limit));
        let Some(text) = query else {
            return self.read("list conversations", View::Statement, &mut |db| {
                let rows = db.rows(LIST, &[Param::Text(owner), limit.clone()], summary_from_row)?;
                Ok(rows.into_iter().flatten().collect())
            });
        };
        let Some(words) = (B::SQL.search_queries)(text).into_iter().next() else {
            return Ok(Vec::new());
        };
        self.read("search conversations", View::Search, &mut |db| {
            if !db.time_left()? {
                return Ok(Vec::new());
            }
            let params = [Param::Text(owner), Param::Text(&words), limit.clone()];
            match db.rows(B::SQL.search_conversations, &params, summary_from_row) {
                Ok(rows) => Ok(rows.into_iter().flatten().collect()),
                Err(e) if B::out_of_time(&e) => {
                    log::debug!("store: a conversation search ran out of time");
                    Ok(Vec::new())
                }
                Err(e) => Err(e),
            }
        })
    }

    fn summary(&self, owner: &str, id: &SessionId) -> Result<Option<ConversationSummary>> {
        self.read("read conversation", View::Statement, &mut |db| {
            let params = [Param::Text(id.as_str()), Param::Text(owner)];
            Ok(db.row(SUMMARY, &params, summary_from_row)?.flatten())
        })
    }

    fn idle(&self, idle: Duration, limit: usize) -> Result<Vec<SessionId>> {
        let cutoff = unix_now().saturating_sub(i64::try_from(idle.as_secs()).unwrap_or(i64::MAX));
        self.read("find idle conversations", View::Statement, &mut |db| {
            let params = [Param::Int(cutoff), Param::Int(count(limit))];
            let ids = db.rows(IDLE, &params, |row| row.text(0))?;
            Ok(ids.iter().filter_map(|id| SessionId::parse(id)).collect())
        })
    }

    fn count(&self, owner: &str) -> Result<u64> {
        self.read("count conversations", View::Statement, &mut |db| {
            let n = db.row(COUNT, &[Param::Text(owner)], |row| row.int(0))?;
            Ok(small(n.unwrap_or(0)))
        })
    }

    fn set_size_limit(&self, bytes: Option<u64>) -> Result<()> {
        self.cap_size(bytes)
    }

    fn reassign_owner(&self, old: &str, new: &str) -> Result<u64> {
        self.write("reassign conversations", Write::Owners, &mut |db| {
            db.run(REASSIGN, &[Param::Text(old), Param::Text(new)])
        })
    }

    fn status(&self) -> StoreStatus {
        self.health()
    }
}

/// A row count or limit as SQL's integer.
pub(super) fn count(n: usize) -> i64 {
    big(n as u64)
}

/// Conversation `id` with its newest `tail` events and at most `messages` messages; `notes` is
/// the dialect's statement for its notes.
fn load<E>(
    db: &mut dyn Db<Error = E>,
    notes: &'static str,
    id: &SessionId,
    tail: usize,
    messages: usize,
) -> Result<Option<StoredConversation>, E> {
    let Some((key, first, mut conversation)) =
        db.row(LOAD_SESSION, &[Param::Text(id.as_str())], |row| {
            let open_turn = match row.opt_int(6)? {
                Some(turn) => Some((small(turn), row.opt_text(7)?.unwrap_or_default())),
                None => None,
            };
            let conversation = StoredConversation {
                id: id.clone(),
                owner: row.text(1)?,
                user_id: row.opt_text(2)?,
                personality: row.opt_text(3)?,
                model: row.opt_text(9)?,
                last_seq: small(row.int(4)?),
                turns: small(row.int(5)?),
                open_turn,
                first_message: 0,
                messages: Vec::new(),
                notes: Vec::new(),
                tail: Vec::new(),
            };
            Ok((row.int(0)?, row.int(8)?, conversation))
        })?
    else {
        return Ok(None);
    };
    let newest = [
        Param::Int(key),
        Param::Int(first),
        Param::Int(count(messages)),
    ];
    let loaded = db.rows(LOAD_MESSAGES, &newest, message_from_row)?;
    (conversation.first_message, conversation.messages) = messages_from_newest(loaded, first);
    conversation.notes = db.rows(notes, &[Param::Int(key)], |row| row.text(0))?;
    let newest = [Param::Int(key), Param::Int(count(tail))];
    conversation.tail = db.rows(LOAD_TAIL, &newest, |row| {
        Ok((small(row.int(0)?), row.text(1)?))
    })?;
    conversation.tail.reverse();
    Ok(Some(conversation))
}

/// A message as [`LOAD_MESSAGES`] reads it, with its number.
fn message_from_row<E>(row: &dyn Row<Error = E>) -> Result<(u64, ChatMessage), E> {
    Ok((
        small(row.int(0)?),
        ChatMessage {
            role: role_from(&row.text(1)?),
            content: row.text(2)?,
            tool_calls: calls_from_json(row.opt_text(3)?),
            tool_call_id: row.opt_text(4)?,
            is_error: row.flag(5)?,
            images: Vec::new(),
        },
    ))
}

/// A summary from [`summary_columns`]; `None` for an id that is not one. A column that cannot
/// be read reads as empty rather than failing the list.
fn summary_from_row<E>(row: &dyn Row<Error = E>) -> Result<Option<ConversationSummary>, E> {
    let id = row.text(0)?;
    Ok(SessionId::parse(&id).map(|id| ConversationSummary {
        id,
        title: row.opt_text(1).ok().flatten(),
        created_at: row.int(2).unwrap_or(0),
        updated_at: row.int(3).unwrap_or(0),
        turns: small(row.int(4).unwrap_or(0)),
        model: row.opt_text(5).ok().flatten(),
        usage: Usage {
            prompt_tokens: small(row.int(6).unwrap_or(0)),
            completion_tokens: small(row.int(7).unwrap_or(0)),
        },
        open: row.flag(8).unwrap_or(false),
    }))
}
