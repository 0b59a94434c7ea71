//! The journal's batch, planned once: [`apply`] walks a batch of [`WriteOp`]s in order and
//! gathers the rows they write per table, as columns ([`Rows`]), with each conversation's row
//! updated once for the whole batch; the statements that cannot wait (a new conversation's
//! key, a rename, a deletion) run as they come. The dialect writes the gathered rows
//! ([`Db::write_rows`]) in the batch's transaction, which its backend opened and commits; then
//! the tokens of the turns the batch closes are added to their owners' use of the day
//! (`usage.rs`), where the conversation rows' totals are summed.
//!
//! Depends on: `common::protocol`, `store`, `store::cluster`, `store::plan`, `store::plan::files`,
//! `store::plan::shares`, `store::plan::usage`, `store::usage`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use super::files::forget_conversation;
use super::shares::forget_shares;
use super::usage::{add_use, counted_at_start};
use super::{
    Column, Db, Dialect, Param, Table, big, calls_to_json, role_name, title_for, unix_now,
};
use crate::common::protocol::{SessionId, Usage};
use crate::store::usage::{DayUsage, day_of};
use crate::store::{Signal, TurnMark, WriteOp};

/// Conversation id to its integer key, as the writer learnt them. A backend clears it when a
/// batch fails: keys learnt in a transaction that did not commit may name nothing.
pub type Keys = HashMap<SessionId, i64>;

/// The tables a batch writes, in the order [`Rows::tables`] hands them over. A dialect says
/// for each how it writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchTable {
    /// `events`: key, `seq`, body, the text the conversation search looks at.
    Events,
    /// `messages`: key, number, role, content, tool calls, tool call id, whether an error,
    /// turn.
    Messages,
    /// `notes`: key, text.
    Notes,
    /// Turns opened in the batch: key, turn id, the `seq` that opened it, the `seq` that
    /// closed it when that is in the batch too, parent, client id, how it closed, whether it
    /// reset the history, and the time (one value for every row).
    Turns,
    /// Turns opened before the batch and closed in it: key, the closing `seq`, how it closed,
    /// whether it reset the history.
    TurnCloses,
    /// Conversation rows: key, last `seq`, turns, whether the open turn changed, the open turn
    /// and its text, a title for a row that has none, prompt tokens and completion tokens to
    /// add, the new leaf (when it changed), and the time (one value for every row).
    Sessions,
}

/// The rows of a batch, gathered per table and handed to the dialect as columns.
#[derive(Debug, Default)]
pub struct Rows<'a> {
    event_keys: Vec<i64>,
    event_seqs: Vec<i64>,
    event_bodies: Vec<&'a str>,
    event_texts: Vec<Option<&'a str>>,
    message_keys: Vec<i64>,
    message_indexes: Vec<i64>,
    message_roles: Vec<&'a str>,
    message_contents: Vec<&'a str>,
    message_calls: Vec<Option<String>>,
    message_call_ids: Vec<Option<&'a str>>,
    message_errors: Vec<bool>,
    message_turns: Vec<i64>,
    note_keys: Vec<i64>,
    note_texts: Vec<&'a str>,
    turn_keys: Vec<i64>,
    turn_ids: Vec<i64>,
    turn_opened: Vec<i64>,
    turn_closed: Vec<Option<i64>>,
    turn_parents: Vec<i64>,
    turn_client_ids: Vec<Option<&'a str>>,
    turn_closings: Vec<Option<&'static str>>,
    turn_resets: Vec<bool>,
    close_keys: Vec<i64>,
    close_seqs: Vec<i64>,
    close_closings: Vec<&'static str>,
    close_resets: Vec<bool>,
    session_keys: Vec<i64>,
    session_last_seqs: Vec<i64>,
    session_turns: Vec<i64>,
    session_open_set: Vec<bool>,
    session_open_turns: Vec<Option<i64>>,
    session_open_texts: Vec<Option<&'a str>>,
    session_titles: Vec<Option<String>>,
    session_prompt_tokens: Vec<i64>,
    session_completion_tokens: Vec<i64>,
    session_leaves: Vec<Option<i64>>,
    /// Unix seconds of the batch: every updated conversation's `updated_at`.
    now: i64,
    /// What other instances sharing the store hear of, per conversation (PostgreSQL).
    signals: Vec<(Signal, &'a str, Cow<'a, str>)>,
}

impl<'a> Rows<'a> {
    /// Every table, with its columns in the order [`BatchTable`] lists them.
    pub fn tables(&self) -> [(BatchTable, Table<'_>); 6] {
        use Column::{Flags, Ints, OptInts, OptStrings, OptTexts, Same, Texts};
        let table = |rows: &[i64], columns| Table {
            rows: rows.len(),
            columns,
        };
        [
            (
                BatchTable::Events,
                table(
                    &self.event_keys,
                    vec![
                        Ints(&self.event_keys),
                        Ints(&self.event_seqs),
                        Texts(&self.event_bodies),
                        OptTexts(&self.event_texts),
                    ],
                ),
            ),
            (
                BatchTable::Messages,
                table(
                    &self.message_keys,
                    vec![
                        Ints(&self.message_keys),
                        Ints(&self.message_indexes),
                        Texts(&self.message_roles),
                        Texts(&self.message_contents),
                        OptStrings(&self.message_calls),
                        OptTexts(&self.message_call_ids),
                        Flags(&self.message_errors),
                        Ints(&self.message_turns),
                    ],
                ),
            ),
            (
                BatchTable::Notes,
                table(
                    &self.note_keys,
                    vec![Ints(&self.note_keys), Texts(&self.note_texts)],
                ),
            ),
            (
                BatchTable::Turns,
                table(
                    &self.turn_keys,
                    vec![
                        Ints(&self.turn_keys),
                        Ints(&self.turn_ids),
                        Ints(&self.turn_opened),
                        OptInts(&self.turn_closed),
                        Ints(&self.turn_parents),
                        OptTexts(&self.turn_client_ids),
                        OptTexts(&self.turn_closings),
                        Flags(&self.turn_resets),
                        Same(Param::Int(self.now)),
                    ],
                ),
            ),
            (
                BatchTable::TurnCloses,
                table(
                    &self.close_keys,
                    vec![
                        Ints(&self.close_keys),
                        Ints(&self.close_seqs),
                        Texts(&self.close_closings),
                        Flags(&self.close_resets),
                    ],
                ),
            ),
            (
                BatchTable::Sessions,
                table(
                    &self.session_keys,
                    vec![
                        Ints(&self.session_keys),
                        Ints(&self.session_last_seqs),
                        Ints(&self.session_turns),
                        Flags(&self.session_open_set),
                        OptInts(&self.session_open_turns),
                        OptTexts(&self.session_open_texts),
                        OptStrings(&self.session_titles),
                        Ints(&self.session_prompt_tokens),
                        Ints(&self.session_completion_tokens),
                        OptInts(&self.session_leaves),
                        Same(Param::Int(self.now)),
                    ],
                ),
            ),
        ]
    }

    /// The signals the batch raises, in order: `(signal, conversation, detail)`. Streamed
    /// frames first, as the batch's ops relayed them, then new events in a conversation, or
    /// its deletion (one per conversation).
    pub fn signals(&self) -> &[(Signal, &'a str, Cow<'a, str>)] {
        &self.signals
    }

    fn new(now: i64) -> Self {
        Rows {
            now,
            ..Rows::default()
        }
    }

    /// Takes the conversation rows of `updates` in.
    fn sessions(&mut self, updates: BTreeMap<i64, RowUpdate<'a>>) {
        for (key, update) in updates {
            self.session_keys.push(key);
            self.session_last_seqs.push(big(update.last_seq));
            self.session_turns.push(big(update.turns));
            self.session_open_set.push(update.open.is_some());
            let open = update.open.flatten();
            self.session_open_turns
                .push(open.map(|(turn, _)| big(turn)));
            self.session_open_texts.push(open.map(|(_, text)| text));
            self.session_titles.push(update.title);
            self.session_prompt_tokens
                .push(big(update.usage.prompt_tokens));
            self.session_completion_tokens
                .push(big(update.usage.completion_tokens));
            self.session_leaves.push(update.leaf.map(big));
        }
    }
}

/// What a batch changes in one conversation's row, gathered so that each row is updated once.
#[derive(Default)]
struct RowUpdate<'a> {
    last_seq: u64,
    /// The highest turn opened.
    turns: u64,
    /// `Some(None)`: the open turn closed; `Some(Some(..))`: a turn opened.
    open: Option<Option<(u64, &'a str)>>,
    /// The first turn opened in the batch: a title, when the row has none yet.
    title: Option<String>,
    /// The turn opened in this batch, not closed yet and not written yet: its place in
    /// [`Rows`]'s turn columns.
    open_here: Option<usize>,
    /// Tokens the turns closed in the batch used.
    usage: Usage,
    /// The leaf the batch leaves the conversation at, when it moved.
    leaf: Option<u64>,
}

/// Applies `batch` on `db`, inside the transaction its backend opened; `sql` is the dialect's
/// text for what differs. A write for a conversation the store does not hold (deleted
/// meanwhile) is skipped.
///
/// # Errors
///
/// The database's; the backend then rolls the transaction back.
pub fn apply<'a, E>(
    db: &mut dyn Db<Error = E>,
    sql: &Dialect,
    keys: &mut Keys,
    batch: &'a [WriteOp],
) -> Result<(), E> {
    let now = unix_now();
    let mut rows = Rows::new(now);
    // Ordered by key, so that two writers would lock conversation rows in one order.
    let mut updates: BTreeMap<i64, RowUpdate<'a>> = BTreeMap::new();
    // Conversations whose events or deletion the other instances hear of.
    let mut signals: BTreeMap<&'a str, Signal> = BTreeMap::new();
    // Streamed frames, in the order the ops relayed them.
    let mut relayed: Vec<(Signal, &'a str, Cow<'a, str>)> = Vec::new();
    // The newest event of each conversation in the batch: an `Events` signal names it, so that
    // another instance reads up to it and no further before the signals after it.
    let mut newest: HashMap<&'a str, u64> = HashMap::new();
    // The owners of the conversations whose turns opened or closed with tokens, and per owner
    // the turns and tokens that adds to their use of the day (`plan/usage.rs`). An account's
    // turns were counted as they started (`count_turn`, which enforces its quota); everyone
    // else's are counted here, with no write of their own.
    let mut owners: HashMap<i64, String> = HashMap::new();
    let mut used: BTreeMap<String, DayUsage> = BTreeMap::new();
    // Imported conversations' own times, set after the rows (which carry the batch's time).
    let mut dates: Vec<&'a WriteOp> = Vec::new();
    for op in batch {
        match op {
            WriteOp::CreateSession {
                id,
                owner,
                user_id,
                personality,
                model,
            } => {
                let key = db.insert_session(&[
                    Param::Text(id.as_str()),
                    Param::Text(owner),
                    Param::OptText(user_id.as_deref()),
                    Param::OptText(personality.as_deref()),
                    Param::OptText(model.as_deref()),
                    Param::Int(now),
                ])?;
                keys.insert(id.clone(), key);
                owners.insert(key, owner.clone());
            }
            WriteOp::Event {
                session,
                seq,
                body,
                turn,
                search_text,
            } => {
                // Skipped rather than failing the whole batch; so are the others below.
                let Some(key) = session_key(db, keys, session)? else {
                    continue;
                };
                signals.entry(session.as_str()).or_insert(Signal::Events);
                let last = newest.entry(session.as_str()).or_default();
                *last = (*last).max(*seq);
                rows.event_keys.push(key);
                rows.event_seqs.push(big(*seq));
                rows.event_bodies.push(body);
                rows.event_texts.push(search_text.as_deref());
                let update = updates.entry(key).or_default();
                update.last_seq = update.last_seq.max(*seq);
                match turn {
                    TurnMark::None => {}
                    TurnMark::Opened {
                        turn_id,
                        text,
                        parent,
                        client_id,
                    } => {
                        if let Some(owner) = owner_of(db, &mut owners, key)?
                            && !counted_at_start(&owner)
                        {
                            used.entry(owner).or_default().turns += 1;
                        }
                        update.open = Some(Some((*turn_id, text)));
                        update.turns = update.turns.max(*turn_id);
                        update.leaf = Some(*turn_id);
                        update.title.get_or_insert_with(|| title_for(text));
                        update.open_here = Some(rows.turn_keys.len());
                        rows.turn_keys.push(key);
                        rows.turn_ids.push(big(*turn_id));
                        rows.turn_opened.push(big(*seq));
                        rows.turn_closed.push(None);
                        rows.turn_parents.push(big(*parent));
                        rows.turn_client_ids.push(client_id.as_deref());
                        rows.turn_closings.push(None);
                        rows.turn_resets.push(false);
                    }
                    TurnMark::Closed {
                        usage,
                        closing,
                        reset,
                    } => {
                        update.open = Some(None);
                        update.usage = update.usage.plus(*usage);
                        let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
                        if tokens > 0
                            && let Some(owner) = owner_of(db, &mut owners, key)?
                        {
                            used.entry(owner).or_default().tokens += tokens;
                        }
                        match update.open_here.take() {
                            Some(at) => {
                                rows.turn_closed[at] = Some(big(*seq));
                                rows.turn_closings[at] = Some(closing.as_str());
                                rows.turn_resets[at] = *reset;
                            }
                            None => {
                                rows.close_keys.push(key);
                                rows.close_seqs.push(big(*seq));
                                rows.close_closings.push(closing.as_str());
                                rows.close_resets.push(*reset);
                            }
                        }
                    }
                    TurnMark::Branch { leaf } => update.leaf = Some(*leaf),
                }
            }
            WriteOp::Messages {
                session,
                first,
                turn,
                messages,
            } => {
                let Some(key) = session_key(db, keys, session)? else {
                    continue;
                };
                for (i, message) in messages.iter().enumerate() {
                    rows.message_keys.push(key);
                    rows.message_indexes.push(big(*first + i as u64));
                    rows.message_roles.push(role_name(message.role));
                    rows.message_contents.push(&message.content);
                    rows.message_calls.push(calls_to_json(&message.tool_calls));
                    rows.message_call_ids.push(message.tool_call_id.as_deref());
                    rows.message_errors.push(message.is_error);
                    rows.message_turns.push(big(*turn));
                }
            }
            WriteOp::Note { session, text } => {
                if let Some(key) = session_key(db, keys, session)? {
                    rows.note_keys.push(key);
                    rows.note_texts.push(text);
                }
            }
            WriteOp::Rename {
                session,
                owner,
                title,
            } => {
                db.run(
                    RENAME,
                    &[
                        Param::Text(session.as_str()),
                        Param::Text(owner),
                        Param::Text(title),
                    ],
                )?;
            }
            WriteOp::KeepDates { .. } => dates.push(op),
            WriteOp::Relay { session, detail } => {
                relayed.push((Signal::Stream, session.as_str(), Cow::Borrowed(detail)));
            }
            WriteOp::DeleteSession { session } => {
                let Some(key) = session_key(db, keys, session)? else {
                    continue;
                };
                // Rows gathered so far go in first, and go with the conversation. Turns they
                // open are in the table from then on, so a later close updates them there.
                updates.remove(&key);
                db.write_rows(&rows)?;
                rows = Rows::new(now);
                for update in updates.values_mut() {
                    update.open_here = None;
                }
                keys.remove(session);
                signals.insert(session.as_str(), Signal::Deleted);
                // The files only it used go with it (it is read from its row, still there).
                forget_conversation(db, key)?;
                forget_shares(db, session.as_str())?;
                for statement in sql.delete_session {
                    db.run(statement, &[Param::Int(key)])?;
                }
            }
        }
    }
    rows.sessions(updates);
    rows.signals = relayed;
    rows.signals
        .extend(signals.into_iter().map(|(session, signal)| {
            let detail = match (signal, newest.get(session)) {
                (Signal::Events, Some(seq)) => Cow::Owned(seq.to_string()),
                _ => Cow::Borrowed(""),
            };
            (signal, session, detail)
        }));
    db.write_rows(&rows)?;
    for op in dates {
        keep_dates(db, sql, keys, op)?;
    }
    add_use(db, &used, day_of(now))
}

const KEEP_DATES: &str = "UPDATE sessions SET created_at = coalesce(?2, created_at), \
     updated_at = coalesce(?3, updated_at), model = coalesce(?4, model) WHERE key = ?1";

/// Sets the times and model a [`WriteOp::KeepDates`] carries, on a conversation the store
/// holds.
fn keep_dates<E>(
    db: &mut dyn Db<Error = E>,
    sql: &Dialect,
    keys: &mut Keys,
    op: &WriteOp,
) -> Result<(), E> {
    let WriteOp::KeepDates {
        session,
        created_at,
        updated_at,
        model,
        turns,
    } = op
    else {
        return Ok(());
    };
    let Some(key) = session_key(db, keys, session)? else {
        return Ok(());
    };
    db.run(
        KEEP_DATES,
        &[
            Param::Int(key),
            Param::OptInt(*created_at),
            Param::OptInt(*updated_at),
            Param::OptText(model.as_deref()),
        ],
    )?;
    if turns.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = turns.iter().map(|(turn, _)| big(*turn)).collect();
    let times: Vec<i64> = turns.iter().map(|(_, at)| *at).collect();
    let table = Table {
        rows: turns.len(),
        columns: vec![
            Column::Same(Param::Int(key)),
            Column::Ints(&ids),
            Column::Ints(&times),
        ],
    };
    db.write_table(sql.turn_times, &table)
}

const SESSION_KEY: &str = "SELECT key FROM sessions WHERE id = ?1";
const SESSION_OWNER: &str = "SELECT owner FROM sessions WHERE key = ?1";
const RENAME: &str = "UPDATE sessions SET title = ?3 WHERE id = ?1 AND owner = ?2";

/// The integer key of a conversation, or `None` when the store does not hold it.
fn session_key<E>(
    db: &mut dyn Db<Error = E>,
    keys: &mut Keys,
    id: &SessionId,
) -> Result<Option<i64>, E> {
    if let Some(&key) = keys.get(id) {
        return Ok(Some(key));
    }
    let found = db.row(SESSION_KEY, &[Param::Text(id.as_str())], |row| row.int(0))?;
    if let Some(key) = found {
        keys.insert(id.clone(), key);
    }
    Ok(found)
}

/// The owner of the conversation whose key is `key`, or `None` when the store does not hold
/// it; `owners` keeps those already read.
fn owner_of<E>(
    db: &mut dyn Db<Error = E>,
    owners: &mut HashMap<i64, String>,
    key: i64,
) -> Result<Option<String>, E> {
    if let Some(owner) = owners.get(&key) {
        return Ok(Some(owner.clone()));
    }
    let found = db.row(SESSION_OWNER, &[Param::Int(key)], |row| row.text(0))?;
    if let Some(owner) = &found {
        owners.insert(key, owner.clone());
    }
    Ok(found)
}
