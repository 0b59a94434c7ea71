//! PostgreSQL's side of the shared logic ([`Db`]): binding [`Param`]s and [`Column`]s (a
//! column as one array), reading rows, the statements whose text is PostgreSQL's own ([`SQL`]),
//! a batch's rows in one statement ([`WRITE_ROWS`]), and search with `tsvector` within
//! `statement_timeout`.
//!
//! Depends on: `store`, `store::cluster`, `store::plan`, `store::plan::batch`, `store::plan::graph`.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::Instant;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, Statement, Transaction};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::super::cluster::payload;
use super::super::plan::{
    BatchTable, Column, Db, Dialect, EachRow, NodeSearch, Param, Query, Row, Rows, Table, big,
    node_columns, node_from_row, search_words, summary_columns,
};
use crate::store::{LEASE_TTL, Node};

/// Characters of a message indexed for the conversation search at most: a `tsvector` holds at
/// most 1 MiB, and a batch that failed on one would be retried for ever.
pub(super) const SEARCH_TEXT_CHARS: i64 = 100_000;

/// What differs in PostgreSQL's text. A fact is looked up by a digest of its content (a unique
/// index stores it once), and text is searched through `tsvector` columns.
pub(super) const SQL: Dialect = Dialect {
    notes: "SELECT text FROM notes WHERE session_key = $1 ORDER BY id",
    // Titles and events carry their owner's lexeme, ANDed into the query, so that each GIN
    // index answers for the owner's rows alone.
    search_conversations: concat!(
        "WITH q AS (SELECT to_tsquery('sparky_english', $2) AS words, \
         to_tsquery('sparky_english', $2) && $4::text::tsquery AS mine) SELECT ",
        summary_columns!(),
        " FROM sessions s, q WHERE numnode(q.words) > 0 AND s.owner = $1 \
         AND (s.title_search @@ q.mine \
         OR s.key IN (SELECT e.session_key FROM events e WHERE e.search @@ q.mine)) \
         ORDER BY s.updated_at DESC, s.key DESC LIMIT $3"
    ),
    // The insert is tried only when the fact is not there, so that a known fact uses up no id
    // (ids have no gaps, as with SQLite, unless two calls race); the unique index stores it
    // once either way, and the one statement answers the row whether new or found.
    remember: concat!(
        "WITH found AS (SELECT ",
        node_columns!(),
        " FROM nodes WHERE owner = $1 AND kind = 'fact' AND content_sha256 = $4), \
         ins AS (INSERT INTO nodes \
         (owner, kind, label, content, content_sha256, properties, created_at, updated_at) \
         SELECT $1, 'fact', $2, $3, $4, '{}', $5, $5 WHERE NOT EXISTS (SELECT 1 FROM found) \
         ON CONFLICT (owner, content_sha256) WHERE kind = 'fact' DO NOTHING RETURNING ",
        node_columns!(),
        ") SELECT *, true FROM ins UNION ALL SELECT *, false FROM found"
    ),
    remembered: concat!(
        "SELECT ",
        node_columns!(),
        " FROM nodes WHERE owner = $1 AND kind = 'fact' AND content_sha256 = $2"
    ),
    add_node: "INSERT INTO nodes \
         (owner, kind, label, content, content_sha256, properties, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id",
    // A fact's label follows its content; another node keeps the label it was given.
    edit_node: concat!(
        "UPDATE nodes SET content = $4, content_sha256 = $5, updated_at = $6, \
         label = CASE WHEN kind = 'fact' THEN $3 ELSE label END \
         WHERE id = $1 AND owner = $2 RETURNING ",
        node_columns!()
    ),
    // Events keep a copy of their owner's lexeme; titles follow `sessions.owner` (a generated
    // column).
    reassign_conversations: &[
        "UPDATE events e SET search = ts_delete(e.search, '@' || $1) \
         || array_to_tsvector(ARRAY['@' || $2]) FROM sessions s \
         WHERE s.key = e.session_key AND s.owner = $1 AND e.search IS NOT NULL",
        "UPDATE sessions SET owner = $2 WHERE owner = $1",
    ],
    store_embeddings: &["INSERT INTO embeddings (node_id, owner, model, vector) \
         SELECT n.id, n.owner, $2, u.v FROM unnest($1::bigint[], $3::bytea[]) AS u (id, v) \
         JOIN nodes n ON n.id = u.id \
         ON CONFLICT (node_id) DO UPDATE SET owner = excluded.owner, model = excluded.model, \
         vector = excluded.vector"],
    turn_times: &["UPDATE turns t SET created_at = u.c \
         FROM unnest($2::bigint[], $3::bigint[]) AS u (n, c) \
         WHERE t.session_key = $1::bigint AND t.turn_id = u.n"],
    // `turns` and `leases` follow by their foreign keys.
    delete_session: &["WITH \
         ev AS (DELETE FROM events WHERE session_key = $1), \
         ms AS (DELETE FROM messages WHERE session_key = $1), \
         nt AS (DELETE FROM notes WHERE session_key = $1) \
         DELETE FROM sessions WHERE key = $1"],
    search_queries: tsqueries,
    fact_key: content_digest,
    owner_term: owner_lexeme,
    // A blob being written carries its writer's `application_name` (see schema version 5):
    // one whose writer has no connection left will never be finished.
    stale_blobs: "SELECT b.key FROM blobs b WHERE b.sha256 IS NULL AND NOT EXISTS \
         (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = b.writer)",
    lock_digest: "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
    put_chunks: &["INSERT INTO text_chunks (blob_key, n, owner, label, text) \
         SELECT $1::bigint, u.n, $3::text, u.l, u.t \
         FROM unnest($2::bigint[], $4::text[], $5::text[]) AS u (n, l, t)"],
    put_chunk_vectors: &["INSERT INTO chunk_vectors (blob_key, n, model, vector) \
         SELECT u.b, u.n, $3::text, u.v FROM unnest($1::bigint[], $2::bigint[], $4::bytea[]) \
         AS u (b, n, v) WHERE EXISTS \
         (SELECT 1 FROM text_chunks c WHERE c.blob_key = u.b AND c.n = u.n) \
         ON CONFLICT (blob_key, n, model) DO UPDATE SET vector = excluded.vector"],
    // The owner's lexeme is ANDed in, as for every search; `ts_rank_cd` ranks a chunk on its
    // own text, so that two blobs' scores compare.
    search_chunks: "WITH q AS (SELECT to_tsquery('sparky_english', $2) AS words) \
         SELECT c.n, c.label, c.text, ts_rank_cd(c.search, q.words)::float8 AS score \
         FROM text_chunks c, q WHERE numnode(q.words) > 0 AND c.blob_key = $1 \
         AND c.search @@ (q.words && $3::text::tsquery) \
         ORDER BY score DESC, c.n LIMIT $4",
    nodes_with_vectors: concat!(
        "SELECT ",
        node_columns!(),
        ", e.vector FROM nodes JOIN embeddings e ON e.node_id = nodes.id \
         WHERE nodes.id = ANY($1::bigint[]) AND nodes.owner = $2 AND e.owner = $2 \
         AND e.model = $3"
    ),
};

/// Every row of a batch in one statement (one round trip), the notifications for other
/// instances (sent when the transaction commits), and the transaction's id. Built once from
/// [`batch_part`]: each table's part numbers its parameters from `?1` in its columns' order,
/// and is renumbered after the tables before it, so that a new column is one change to its
/// table's part.
///
/// The parts all see the database as it was before the statement, which is why a turn opened
/// and closed in one batch is inserted closed, and only turns opened earlier are updated. An
/// event or turn whose number is taken already is left out rather than failing the batch: only
/// an instance that lost its lease (stalled past [`LEASE_TTL`]) can write one, and the numbers
/// belong to the instance that took the lease over.
pub(super) static WRITE_ROWS: LazyLock<String> = LazyLock::new(|| {
    let mut parts = Vec::new();
    let mut taken = 0;
    for (kind, table) in Rows::default().tables() {
        parts.push(numbered(&batch_part(kind), taken));
        taken += table.columns.len();
    }
    format!(
        "WITH {} SELECT pg_current_xact_id()::text, (SELECT count(*) FROM \
         (SELECT pg_notify('sparky', n) FROM unnest(${}::text[]) n) x)",
        parts.join(", "),
        taken + 1
    )
});

/// One table's part of [`WRITE_ROWS`]: a common table expression over its columns as arrays.
fn batch_part(table: BatchTable) -> Cow<'static, str> {
    match table {
        // The search vector holds the owner's lexeme, as a node's does (`NULL` without text).
        BatchTable::Events => format!(
            "ev AS (INSERT INTO events (session_key, seq, body, search) \
             SELECT u.k, u.s, u.b, to_tsvector('sparky_english', left(u.t, {SEARCH_TEXT_CHARS})) \
             || array_to_tsvector(ARRAY['@' || o.owner]) \
             FROM unnest(?1::bigint[], ?2::bigint[], ?3::text[], ?4::text[]) AS u (k, s, b, t) \
             JOIN sessions o ON o.key = u.k \
             ON CONFLICT (session_key, seq) DO NOTHING)"
        )
        .into(),
        BatchTable::Messages => "ms AS (INSERT INTO messages \
             (session_key, idx, role, content, tool_calls, tool_call_id, is_error, turn_id) \
             SELECT * FROM unnest(?1::bigint[], ?2::bigint[], ?3::text[], ?4::text[], \
             ?5::text[], ?6::text[], ?7::bool[], ?8::bigint[]) \
             ON CONFLICT (session_key, idx) DO NOTHING)"
            .into(),
        BatchTable::Notes => "nt AS (INSERT INTO notes (session_key, text) \
             SELECT k, t FROM unnest(?1::bigint[], ?2::text[]) WITH ORDINALITY AS u (k, t, n) \
             ORDER BY n)"
            .into(),
        BatchTable::Turns => "tu AS (INSERT INTO turns (session_key, turn_id, opened_seq, \
             closed_seq, parent, client_id, closing, reset, created_at) \
             SELECT *, CAST(?9 AS bigint) FROM unnest(?1::bigint[], ?2::bigint[], ?3::bigint[], \
             ?4::bigint[], ?5::bigint[], ?6::text[], ?7::text[], ?8::bool[]) \
             ON CONFLICT (session_key, turn_id) DO NOTHING)"
            .into(),
        BatchTable::TurnCloses => "cl AS (UPDATE turns t SET closed_seq = u.s, closing = u.c, \
             reset = u.r FROM unnest(?1::bigint[], ?2::bigint[], ?3::text[], ?4::bool[]) \
             AS u (k, s, c, r) \
             WHERE t.session_key = u.k AND t.closed_seq IS NULL AND t.opened_seq < u.s)"
            .into(),
        BatchTable::Sessions => "se AS (UPDATE sessions s SET \
             last_seq = greatest(s.last_seq, u.last_seq), turns = greatest(s.turns, u.turns), \
             open_turn = CASE WHEN u.open_set THEN u.open_turn ELSE s.open_turn END, \
             open_text = CASE WHEN u.open_set THEN u.open_text ELSE s.open_text END, \
             title = coalesce(s.title, u.title), \
             prompt_tokens = s.prompt_tokens + u.prompt, \
             completion_tokens = s.completion_tokens + u.completion, \
             leaf = coalesce(u.leaf, s.leaf), updated_at = ?11 \
             FROM unnest(?1::bigint[], ?2::bigint[], ?3::bigint[], ?4::bool[], ?5::bigint[], \
             ?6::text[], ?7::text[], ?8::bigint[], ?9::bigint[], ?10::bigint[]) \
             AS u (key, last_seq, turns, open_set, open_turn, open_text, title, prompt, completion, \
             leaf) \
             WHERE s.key = u.key)"
            .into(),
    }
}

/// A new conversation, leased to the instance that creates it (`$7`) for `$8` milliseconds.
const INSERT_SESSION: &str = "WITH s AS (INSERT INTO sessions \
     (id, owner, user_id, personality, model, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING key), \
     l AS (INSERT INTO leases (session_key, holder, expires_at) \
     SELECT key, $7, now() + $8::bigint * interval '1 millisecond' FROM s) \
     SELECT key FROM s";
/// `$2`'s nodes (of kind `$3`, when given) that match the text-search query `$1`, best first,
/// at most `$4`. `$1` is the owner's lexeme: every node's search vector holds its owner's, so
/// the index alone keeps a search to one principal.
const SEARCH_NODES: &str = concat!(
    "WITH q AS (SELECT to_tsquery('sparky_english', $2) AS words) SELECT ",
    node_columns!(),
    " FROM nodes n, q WHERE numnode(q.words) > 0 AND n.search @@ (q.words && $1::text::tsquery) \
     AND ($3::text IS NULL OR n.kind = $3) \
     ORDER BY ts_rank_cd(n.search, q.words) DESC, n.id DESC LIMIT $4"
);
/// Arms a search's budget, for the rest of its (read-only) transaction, and keeps the planner
/// off sequential scans: a table of a thousand large facts looks small to it (their text and
/// search vectors live in TOAST), so it would scan every principal's rows and unpack each one's
/// vector (140 ms for 1,000 facts of 100 KB) rather than ask the GIN index for the caller's
/// (0.1 ms).
const SET_TIMEOUT: &str = "SELECT set_config('statement_timeout', $1, true), \
     set_config('enable_seqscan', 'off', true)";

/// Rows of a replay page fetched first; each later fetch takes four times as many, up to
/// [`MAX_EVENT_ROWS`].
const FIRST_EVENT_ROWS: i32 = 64;

/// Rows of a replay page fetched at once at most.
const MAX_EVENT_ROWS: i32 = 1024;

/// The statements prepared on one connection, by their text.
pub(super) type Statements = std::collections::HashMap<&'static str, Statement>;

/// The statement `sql`, prepared on `client` the first time (its `?N` placeholders renumbered
/// as `$N`) and taken from `statements` after. `client` is the connection or a transaction on
/// it.
///
/// # Errors
///
/// The database's, when `sql` cannot be prepared.
pub(super) fn prepared(
    statements: &mut Statements,
    client: &mut impl GenericClient,
    sql: &'static str,
) -> Result<Statement, postgres::Error> {
    if let Some(statement) = statements.get(sql) {
        return Ok(statement.clone());
    }
    let statement = client.prepare(&numbered(sql, 0))?;
    statements.insert(sql, statement.clone());
    Ok(statement)
}

/// A connection or a transaction on one (`C`) as the shared logic's [`Db`].
pub(super) struct Pg<'c, C> {
    client: &'c mut C,
    statements: &'c mut Statements,
    /// This instance's name: a conversation it creates is leased to it, and the signals of a
    /// batch carry it.
    instance: &'c str,
    /// When a search must stop ([`super::super::plan::View::Search`]).
    pub(super) deadline: Option<Instant>,
    /// The transaction's id, as the last [`Db::write_rows`] answered it.
    pub(super) xid: Option<String>,
}

impl<'c, C> Pg<'c, C> {
    /// `client`, with the statements prepared on its connection, for instance `instance`.
    pub(super) fn new(
        client: &'c mut C,
        statements: &'c mut Statements,
        instance: &'c str,
    ) -> Self {
        Pg {
            client,
            statements,
            instance,
            deadline: None,
            xid: None,
        }
    }
}

impl<C: Fetch> Pg<'_, C> {
    fn prepare(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        prepared(self.statements, self.client, sql)
    }
}

impl<C: Fetch> Db for Pg<'_, C> {
    type Error = postgres::Error;

    /// Fetches every row at once (one round trip), then hands them over.
    fn each(
        &mut self,
        query: Query<'_>,
        row: &mut EachRow<'_, Self::Error>,
    ) -> Result<(), Self::Error> {
        let statement = self.prepare(query.sql)?;
        every_row(self.client, &statement, &bound(query.params), row)
    }

    fn stream(
        &mut self,
        query: Query<'_>,
        row: &mut EachRow<'_, Self::Error>,
    ) -> Result<(), Self::Error> {
        let statement = self.prepare(query.sql)?;
        self.client.fetch(&statement, &bound(query.params), row)
    }

    fn execute(&mut self, query: Query<'_>) -> Result<u64, Self::Error> {
        let statement = self.prepare(query.sql)?;
        self.client.execute(&statement, &bound(query.params))
    }

    /// Sets the transaction's `statement_timeout` to what is left before the deadline.
    fn time_left(&mut self) -> Result<bool, Self::Error> {
        let Some(deadline) = self.deadline else {
            return Ok(true);
        };
        let Some(left) = remaining_millis(deadline) else {
            return Ok(false);
        };
        let timeout = [Param::Text(&left)];
        self.execute(Query {
            sql: SET_TIMEOUT,
            params: &timeout,
        })?;
        Ok(true)
    }

    /// One statement: the owner's lexeme keeps the index's answer to one principal.
    fn search_nodes(
        &mut self,
        search: &NodeSearch<'_>,
        found: &mut Vec<Node>,
    ) -> Result<(), Self::Error> {
        let owner = owner_lexeme(search.owner);
        let params = [
            Param::Text(&owner),
            Param::Text(search.query),
            Param::OptText(search.kind),
            Param::Int(big(search.limit as u64)),
        ];
        let matches = Query {
            sql: SEARCH_NODES,
            params: &params,
        };
        self.each(matches, &mut |row| {
            search.read.fetch_add(1, Ordering::Relaxed);
            let node = node_from_row(row)?;
            if found.len() < search.limit && !found.iter().any(|known| known.id == node.id) {
                found.push(node);
            }
            Ok(true)
        })
    }

    fn insert_session(&mut self, values: &[Param<'_>]) -> Result<i64, Self::Error> {
        let statement = self.prepare(INSERT_SESSION)?;
        let instance = self.instance;
        let lease_ms = LEASE_TTL.as_millis() as i64;
        let mut params = bound(values);
        params.extend([&instance as &(dyn ToSql + Sync), &lease_ms]);
        self.client.query_one(&statement, &params)?.try_get(0)
    }

    fn write_table(
        &mut self,
        statements: &'static [&'static str],
        table: &Table<'_>,
    ) -> Result<(), Self::Error> {
        let columns: Vec<_> = table.columns.iter().map(array).collect();
        for sql in statements {
            let statement = self.prepare(sql)?;
            self.client.execute(&statement, &columns)?;
        }
        Ok(())
    }

    fn write_rows(&mut self, rows: &Rows<'_>) -> Result<(), Self::Error> {
        let notices: Vec<String> = rows
            .signals()
            .iter()
            .map(|(signal, session, detail)| payload(*signal, session, self.instance, detail))
            .collect();
        let tables = rows.tables();
        let mut params: Vec<&(dyn ToSql + Sync)> = tables
            .iter()
            .flat_map(|(_, table)| table.columns.iter().map(array))
            .collect();
        params.push(&notices);
        let statement = self.prepare(WRITE_ROWS.as_str())?;
        self.xid = Some(self.client.query_one(&statement, &params)?.try_get(0)?);
        Ok(())
    }
}

/// How a client hands over a result read in part: a transaction through a portal, a few rows
/// at a time, so that a page of large events does not bring every later one over the wire with
/// it; a connection outside a transaction all at once.
pub(super) trait Fetch: GenericClient {
    /// Hands the rows of `statement` to `row` until it returns false.
    ///
    /// # Errors
    ///
    /// The database's, or what `row` returns.
    fn fetch(
        &mut self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
        row: &mut EachRow<'_, postgres::Error>,
    ) -> Result<(), postgres::Error>;
}

impl Fetch for Client {
    fn fetch(
        &mut self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
        row: &mut EachRow<'_, postgres::Error>,
    ) -> Result<(), postgres::Error> {
        every_row(self, statement, params, row)
    }
}

impl Fetch for Transaction<'_> {
    fn fetch(
        &mut self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
        row: &mut EachRow<'_, postgres::Error>,
    ) -> Result<(), postgres::Error> {
        let portal = self.bind(statement, params)?;
        let mut chunk = FIRST_EVENT_ROWS;
        loop {
            let rows = self.query_portal(&portal, chunk)?;
            for found in &rows {
                if !row(found)? {
                    return Ok(());
                }
            }
            if rows.len() < chunk as usize {
                return Ok(());
            }
            chunk = (chunk * 4).min(MAX_EVENT_ROWS);
        }
    }
}

/// Runs `statement` and hands its rows, all fetched at once, to `row` until it returns false.
fn every_row(
    client: &mut impl GenericClient,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
    row: &mut EachRow<'_, postgres::Error>,
) -> Result<(), postgres::Error> {
    for found in client.query(statement, params)? {
        if !row(&found)? {
            break;
        }
    }
    Ok(())
}

impl Row for postgres::Row {
    type Error = postgres::Error;

    fn opt_int(&self, column: usize) -> Result<Option<i64>, Self::Error> {
        self.try_get(column)
    }

    fn opt_text(&self, column: usize) -> Result<Option<String>, Self::Error> {
        self.try_get(column)
    }

    fn flag(&self, column: usize) -> Result<bool, Self::Error> {
        self.try_get(column)
    }

    fn json(&self, column: usize) -> Result<Value, Self::Error> {
        self.try_get(column)
    }

    fn real(&self, column: usize) -> Result<f64, Self::Error> {
        self.try_get(column)
    }

    fn bytes(&self, column: usize) -> Result<&[u8], Self::Error> {
        self.try_get(column)
    }
}

/// `params` as the client binds them.
fn bound<'p>(params: &'p [Param<'_>]) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(value).collect()
}

/// A parameter as the client binds it.
fn value<'p>(param: &'p Param<'_>) -> &'p (dyn ToSql + Sync) {
    match param {
        Param::Int(n) => n,
        Param::OptInt(n) => n,
        Param::Text(text) => text,
        Param::OptText(text) => text,
        Param::Flag(flag) => flag,
        Param::Bytes(Cow::Borrowed(bytes)) => bytes,
        Param::Bytes(Cow::Owned(bytes)) => bytes,
        Param::Json(json) => json,
        Param::Ints(values) => values,
    }
}

/// A column bound as one array (a value for every row as that value).
fn array<'p>(column: &'p Column<'_>) -> &'p (dyn ToSql + Sync) {
    match column {
        Column::Ints(values) => values,
        Column::OptInts(values) => values,
        Column::Texts(values) => values,
        Column::OptTexts(values) => values,
        Column::OptStrings(values) => values,
        Column::Flags(values) => values,
        Column::Blobs(values) => values,
        Column::Same(same) => value(same),
    }
}

/// `sql` with each `?N` placeholder as PostgreSQL's `$M`, `M` being `N + offset`. The shared
/// logic writes `?N`; a `?` followed by digits is never anything else in the store's SQL.
pub(super) fn numbered(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(at) = rest.find('?') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&format!("${}", n + offset)),
            Err(_) => out.push('?'),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// The digest PostgreSQL's unique index keeps of a fact's content.
fn content_digest(content: &str) -> Param<'_> {
    Param::Bytes(Cow::Owned(Sha256::digest(content.as_bytes()).to_vec()))
}

/// The `tsquery` lexeme that stands for `owner` in each node's search vector, quoted. User
/// words are letters and digits only, so none of them can name an owner.
fn owner_lexeme(owner: &str) -> String {
    format!("'@{}'", owner.replace('\\', "\\\\").replace('\'', "''"))
}

/// The text-search queries for free text, most selective first: every word, then (when there
/// are several) any of them; each word quoted, for `to_tsquery('sparky_english', …)`.
fn tsqueries(text: &str) -> Vec<String> {
    let words: Vec<String> = search_words(text)
        .into_iter()
        .map(|word| format!("'{word}'"))
        .collect();
    match words.len() {
        0 => Vec::new(),
        1 => words,
        _ => vec![words.join(" & "), words.join(" | ")],
    }
}

/// The budget left before `deadline`, in whole milliseconds (at least one), or `None` when
/// none is left. `statement_timeout` counts milliseconds, and zero would mean no limit.
fn remaining_millis(deadline: Instant) -> Option<String> {
    let left = deadline.checked_duration_since(Instant::now())?;
    if left.is_zero() {
        return None;
    }
    Some(format!("{}ms", left.as_millis().max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The highest `?N` in `sql`.
    fn highest_placeholder(sql: &str) -> usize {
        sql.split('?')
            .skip(1)
            .filter_map(|after| {
                let digits = after.bytes().take_while(u8::is_ascii_digit).count();
                after[..digits].parse().ok()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn each_batch_part_binds_exactly_its_tables_columns() {
        for (kind, table) in Rows::default().tables() {
            assert_eq!(
                highest_placeholder(&batch_part(kind)),
                table.columns.len(),
                "{kind:?}"
            );
        }
        // The notifications come after every table's columns.
        let columns: usize = Rows::default()
            .tables()
            .iter()
            .map(|(_, table)| table.columns.len())
            .sum();
        let notices = format!("unnest(${}::text[]) n", columns + 1);
        assert!(!WRITE_ROWS.contains('?'));
        assert!(WRITE_ROWS.contains(&notices), "{}", *WRITE_ROWS);
    }

    #[test]
    fn placeholders_are_renumbered() {
        assert_eq!(
            numbered("a = ?1 AND b = ?12 OR ?", 3),
            "a = $4 AND b = $15 OR ?"
        );
        assert_eq!(numbered("no placeholders", 0), "no placeholders");
    }
}
