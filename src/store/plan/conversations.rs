//! [`ConversationStore`] for every [`Backend`]: what a conversation is read back as (loading
//! it, paging its events, the list and its search, summaries), and moving owners. The batch
//! that writes conversations is `batch.rs`.
//!
//! Depends on: `common::error`, `common::protocol`, `model`, `store`, `store::plan`, `store::tree`.

use std::time::Duration;

use super::{
    Backend, Counters, Db, Param, Query, Row, View, Write, big, calls_from_json,
    messages_from_newest, role_from, small, summary_columns, unix_now,
};
use crate::common::error::Result;
use crate::common::protocol::{Attachment, ServerEnvelope, ServerFrame, SessionId, Usage};
use crate::model::ChatMessage;
use crate::store::{Closing, TreeTurn, TurnSummary, TurnTree, TurnsPage};
use crate::store::{
    ConversationStore, ConversationSummary, EventPage, PageSize, StoreStatus, StoredConversation,
    WriteOp,
};

const LOAD_SESSION: &str = "SELECT key, owner, user_id, personality, last_seq, turns, \
     open_turn, open_text, leaf, model FROM sessions WHERE id = ?1";
/// Each turn, and its `user_message` when that carried files (the event is where a turn's
/// files are kept; the pattern cannot match inside a JSON string, where quotes are escaped).
const LOAD_TREE: &str = "SELECT t.turn_id, t.parent, t.reset, t.client_id, \
     CASE WHEN e.body LIKE '%\"attachments\":[%' THEN e.body END FROM turns t \
     LEFT JOIN events e ON e.session_key = t.session_key AND e.seq = t.opened_seq \
     WHERE t.session_key = ?1 ORDER BY t.turn_id";
const NEXT_MESSAGE: &str = "SELECT coalesce(max(idx) + 1, 0) FROM messages WHERE session_key = ?1";
/// Messages newest first, from `?2` down, of every turn: a path's are picked from them as they
/// stream, and the read stops once it has enough.
const PATH_MESSAGES: &str = "SELECT turn_id, role, content, tool_calls, tool_call_id, is_error \
     FROM messages WHERE session_key = ?1 ORDER BY idx DESC";
const SESSION_KEY: &str = "SELECT key FROM sessions WHERE id = ?1";
const TURN_TEXT: &str = "SELECT e.body FROM turns t JOIN events e \
     ON e.session_key = t.session_key AND e.seq = t.opened_seq \
     WHERE t.session_key = ?1 AND t.turn_id = ?2";
const LEAF: &str = "SELECT leaf, turns FROM sessions WHERE key = ?1";
const TURNS: &str = "SELECT t.turn_id, t.parent, t.created_at, t.closing, e.body FROM turns t \
     JOIN events e ON e.session_key = t.session_key AND e.seq = t.opened_seq \
     WHERE t.session_key = ?1 ORDER BY t.turn_id";
const TURN_EVENTS: &str = "SELECT e.body FROM turns t JOIN events e \
     ON e.session_key = t.session_key AND e.seq >= t.opened_seq \
     AND e.seq <= coalesce(t.closed_seq, ?3) AND e.seq > ?5 \
     WHERE t.session_key = ?1 AND t.turn_id = ?2 ORDER BY e.seq LIMIT ?4";
const HAS_TURN: &str = "SELECT 1 FROM turns WHERE session_key = ?1 AND turn_id = ?2";
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

    fn path_messages(
        &self,
        id: &SessionId,
        path: &[u64],
        limit: usize,
    ) -> Result<Vec<ChatMessage>> {
        self.read("load messages", View::Snapshot, &mut |db| {
            let Some(key) = db.row(SESSION_KEY, &[Param::Text(id.as_str())], |row| row.int(0))?
            else {
                return Ok(Vec::new());
            };
            path_messages(db, key, path, limit)
        })
    }

    fn turn_text(&self, id: &SessionId, turn: u64) -> Result<Option<String>> {
        self.read("read a turn", View::Snapshot, &mut |db| {
            let Some(key) = db.row(SESSION_KEY, &[Param::Text(id.as_str())], |row| row.int(0))?
            else {
                return Ok(None);
            };
            let body = db.row(
                TURN_TEXT,
                &[Param::Int(key), Param::Int(big(turn))],
                |row| row.text(0),
            )?;
            Ok(body.map(|body| user_text(&body)))
        })
    }

    fn turns(&self, owner: &str, id: &SessionId) -> Result<Option<TurnsPage>> {
        self.read("read turns", View::Snapshot, &mut |db| {
            let owned = [Param::Text(id.as_str()), Param::Text(owner)];
            let Some(key) = db.row(OWNED_SESSION_KEY, &owned, |row| row.int(0))? else {
                return Ok(None);
            };
            let (leaf, count) = db
                .row(LEAF, &[Param::Int(key)], |row| {
                    Ok((row.int(0)?, row.int(1)?))
                })?
                .unwrap_or((0, 0));
            let turns = db.rows(TURNS, &[Param::Int(key)], |row| {
                Ok(TurnSummary {
                    turn_id: small(row.int(0)?),
                    parent: small(row.int(1)?),
                    created_at: row.int(2)?,
                    closing: row.opt_text(3)?.as_deref().and_then(Closing::parse),
                    ..TurnSummary::opened(&row.text(4)?)
                })
            })?;
            // The leaf as a session would read it: a stored leaf out of range is the newest.
            let leaf = TurnTree::from_rows(small(count), Vec::new(), small(leaf)).leaf();
            Ok(Some(TurnsPage { leaf, turns }))
        })
    }

    fn turn_events(
        &self,
        owner: &str,
        id: &SessionId,
        turn: u64,
        after: u64,
        size: PageSize,
    ) -> Result<Option<Vec<String>>> {
        self.read("read events", View::Snapshot, &mut |db| {
            let owned = [Param::Text(id.as_str()), Param::Text(owner)];
            let Some(key) = db.row(OWNED_SESSION_KEY, &owned, |row| row.int(0))? else {
                return Ok(None);
            };
            let turn = Param::Int(big(turn));
            if db
                .row(HAS_TURN, &[Param::Int(key), turn.clone()], |_| Ok(()))?
                .is_none()
            {
                return Ok(None);
            }
            let params = [
                Param::Int(key),
                turn,
                Param::Int(i64::MAX),
                Param::Int(count(size.limit)),
                Param::Int(big(after)),
            ];
            let query = Query {
                sql: TURN_EVENTS,
                params: &params,
            };
            page_of(db, query, size).map(Some)
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
        size: PageSize,
    ) -> Result<Option<Vec<String>>> {
        let before = before.map_or(i64::MAX, big);
        self.read("read events", View::Snapshot, &mut |db| {
            let owned = [Param::Text(id.as_str()), Param::Text(owner)];
            let Some(key) = db.row(OWNED_SESSION_KEY, &owned, |row| row.int(0))? else {
                return Ok(None);
            };
            let params = [
                Param::Int(key),
                Param::Int(before),
                Param::Int(count(size.limit)),
            ];
            let query = Query {
                sql: EVENTS_BEFORE,
                params: &params,
            };
            let mut bodies = page_of(db, query, size)?;
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
        let owner_term = (B::SQL.owner_term)(owner);
        let Some(_turn) = Counters::of(self).search_turn(owner) else {
            return Ok(Vec::new());
        };
        self.catch_up_search();
        self.read("search conversations", View::Search, &mut |db| {
            if !db.time_left()? {
                return Ok(Vec::new());
            }
            let params = [
                Param::Text(owner),
                Param::Text(&words),
                limit.clone(),
                Param::Text(&owner_term),
            ];
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
            let mut moved = 0;
            for statement in B::SQL.reassign_conversations {
                moved = db.run(statement, &[Param::Text(old), Param::Text(new)])?;
            }
            // The last statement moves the conversations themselves.
            Ok(moved)
        })
    }

    fn status(&self) -> StoreStatus {
        self.health()
    }
}

/// The bodies `query` answers (one per row, its first column), until a page of `size` is
/// full. Rows are read as they come, so that a page stops at its bytes without reading more.
fn page_of<E>(
    db: &mut dyn Db<Error = E>,
    query: Query<'_>,
    size: PageSize,
) -> Result<Vec<String>, E> {
    let mut bodies = Vec::new();
    let mut bytes = 0;
    db.stream(query, &mut |row| {
        let body = row.text(0)?;
        bytes += body.len();
        bodies.push(body);
        Ok(!size.full(bodies.len(), bytes))
    })?;
    Ok(bodies)
}

/// A row count or limit as SQL's integer.
pub(super) fn count(n: usize) -> i64 {
    big(n as u64)
}

/// Conversation `id` with its newest `tail` events and at most `messages` messages of its
/// current path; `notes` is the dialect's statement for its notes.
fn load<E>(
    db: &mut dyn Db<Error = E>,
    notes: &'static str,
    id: &SessionId,
    tail: usize,
    messages: usize,
) -> Result<Option<StoredConversation>, E> {
    let Some((key, turns, leaf, mut conversation)) =
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
                tree: TurnTree::default(),
                open_turn,
                next_message: 0,
                messages: Vec::new(),
                notes: Vec::new(),
                tail: Vec::new(),
            };
            Ok((row.int(0)?, row.int(5)?, row.int(8)?, conversation))
        })?
    else {
        return Ok(None);
    };
    let known = db.rows(LOAD_TREE, &[Param::Int(key)], |row| {
        Ok((
            small(row.int(0)?),
            TreeTurn {
                parent: small(row.int(1)?),
                reset: row.flag(2)?,
                client_id: row.opt_text(3)?,
                attachments: row
                    .opt_text(4)?
                    .map(|body| opened_with(&body).1)
                    .unwrap_or_default(),
            },
        ))
    })?;
    conversation.tree = TurnTree::from_rows(small(turns), known, small(leaf));
    let path = conversation.tree.path(conversation.tree.leaf());
    conversation.messages = path_messages(db, key, &path, messages)?;
    conversation.next_message = small(
        db.row(NEXT_MESSAGE, &[Param::Int(key)], |row| row.int(0))?
            .unwrap_or(0),
    );
    conversation.notes = db.rows(notes, &[Param::Int(key)], |row| row.text(0))?;
    let newest = [Param::Int(key), Param::Int(count(tail))];
    conversation.tail = db.rows(LOAD_TAIL, &newest, |row| {
        Ok((small(row.int(0)?), row.text(1)?))
    })?;
    conversation.tail.reverse();
    Ok(Some(conversation))
}

/// The newest `limit` messages of conversation `key` on the turns `path` (sorted), oldest
/// first, starting at a user message. The messages stream newest first, and the read stops as
/// soon as it has `limit` of them, or has passed the path's first turn.
fn path_messages<E>(
    db: &mut dyn Db<Error = E>,
    key: i64,
    path: &[u64],
    limit: usize,
) -> Result<Vec<ChatMessage>, E> {
    let first = path.first().copied().unwrap_or(0);
    let mut found = Vec::new();
    if limit > 0 && !path.is_empty() {
        let params = [Param::Int(key)];
        let query = Query {
            sql: PATH_MESSAGES,
            params: &params,
        };
        db.stream(query, &mut |row| {
            let turn = small(row.int(0)?);
            if turn < first {
                return Ok(false);
            }
            if path.binary_search(&turn).is_ok() {
                found.push(message_from_row(row)?);
            }
            Ok(found.len() < limit)
        })?;
    }
    Ok(messages_from_newest(found))
}

/// The user's text in a stored `user_message` event (empty when it cannot be read).
fn user_text(body: &str) -> String {
    opened_with(body).0
}

/// The text and the files of the `user_message` event `body`.
fn opened_with(body: &str) -> (String, Vec<Attachment>) {
    match serde_json::from_str::<ServerEnvelope>(body).map(|envelope| envelope.frame) {
        Ok(ServerFrame::UserMessage {
            text, attachments, ..
        }) => (text, attachments),
        _ => (String::new(), Vec::new()),
    }
}

impl TurnSummary {
    /// A turn as its `user_message` event `body` opened it; the rest is left empty.
    fn opened(body: &str) -> Self {
        let (text, attachments) = opened_with(body);
        TurnSummary {
            turn_id: 0,
            parent: 0,
            text,
            attachments,
            created_at: 0,
            closing: None,
        }
    }
}

/// A message as [`PATH_MESSAGES`] reads it (its first column is its turn).
fn message_from_row<E>(row: &dyn Row<Error = E>) -> Result<ChatMessage, E> {
    Ok(ChatMessage {
        role: role_from(&row.text(1)?),
        content: row.text(2)?,
        tool_calls: calls_from_json(row.opt_text(3)?),
        tool_call_id: row.opt_text(4)?,
        is_error: row.flag(5)?,
        images: Vec::new(),
    })
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
