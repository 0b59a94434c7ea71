//! SQLite's side of the shared logic ([`Db`]): binding [`Param`]s and reading rows through
//! `rusqlite` with prepared statements cached per connection, the statements whose text is
//! SQLite's own ([`SQL`]), the batch written one row at a time, and FTS5 search.
//!
//! Depends on: `store`, `store::plan`, `store::plan::batch`, `store::plan::graph`.

use std::sync::atomic::Ordering;

use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, params, params_from_iter};
use serde_json::Value;

use super::super::plan::{
    BatchTable, Db, Dialect, EachRow, NodeSearch, Param, Query, Row, Rows, Table, node_columns,
    node_from_row, search_words, summary_columns,
};
use crate::store::Node;

/// What differs in SQLite's text. A fact is looked up by its content (the `nodes_owner`
/// index), and the conversation search reads the `event_text` and `title_text` full-text
/// indexes.
pub(super) const SQL: Dialect = Dialect {
    notes: "SELECT text FROM notes WHERE session_key = ?1 ORDER BY rowid",
    // Both indexes answer for the owner's rows alone: its token is ANDed into each query.
    search_conversations: concat!(
        "SELECT ",
        summary_columns!(),
        " FROM sessions WHERE owner = ?1 AND (key IN (SELECT session_key FROM event_text \
         WHERE event_text MATCH ('owner_token : ' || ?4 || ' AND (' || ?2 || ')')) \
         OR key IN (SELECT rowid FROM title_text \
         WHERE title_text MATCH ('owner_token : ' || ?4 || ' AND (' || ?2 || ')'))) \
         ORDER BY updated_at DESC, key DESC LIMIT ?3"
    ),
    // One statement: SQLite runs it atomically, so two calls at once store one fact.
    remember: concat!(
        "INSERT INTO nodes (owner, kind, label, content, properties, created_at, updated_at) \
         SELECT ?1, 'fact', ?2, ?3, '{}', ?5, ?5 WHERE NOT EXISTS \
         (SELECT 1 FROM nodes WHERE owner = ?1 AND kind = 'fact' AND content = ?4) RETURNING ",
        node_columns!(),
        ", true"
    ),
    remembered: concat!(
        "SELECT ",
        node_columns!(),
        " FROM nodes WHERE owner = ?1 AND kind = 'fact' AND content = ?2"
    ),
    add_node: "INSERT INTO nodes (owner, kind, label, content, properties, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?6, ?7, ?7) RETURNING id",
    store_embeddings: &[
        "INSERT OR REPLACE INTO embeddings (node_id, owner, model, vector) \
         SELECT id, owner, ?2, ?3 FROM nodes WHERE id = ?1",
    ],
    // A fact's label follows its content; another node keeps the label it was given.
    edit_node: concat!(
        "UPDATE nodes SET content = ?4, updated_at = ?6, \
         label = CASE WHEN kind = 'fact' THEN ?3 ELSE label END \
         WHERE id = ?1 AND owner = ?2 RETURNING ",
        node_columns!()
    ),
    // The conversation search's index keeps a copy of each event's owner token; the titles'
    // index follows `sessions.owner` by a trigger.
    reassign_conversations: &[
        "UPDATE event_text SET owner_token = 'o' || hex(?2) \
         WHERE event_text MATCH ('owner_token : o' || hex(?1))",
        "UPDATE sessions SET owner = ?2 WHERE owner = ?1",
    ],
    turn_times: &["UPDATE turns SET created_at = ?3 WHERE session_key = ?1 AND turn_id = ?2"],
    delete_session: &[
        "DELETE FROM event_text WHERE rowid IN (SELECT rowid FROM events WHERE session_key = ?1)",
        // Its events may be the newest, whose rowids SQLite hands out again: the index's mark
        // goes back to the newest event that stays (`text_index.rs`).
        "UPDATE text_index SET indexed_to = min(indexed_to, \
         (SELECT coalesce(max(rowid), 0) FROM events WHERE session_key <> ?1))",
        "DELETE FROM events WHERE session_key = ?1",
        "DELETE FROM messages WHERE session_key = ?1",
        "DELETE FROM notes WHERE session_key = ?1",
        "DELETE FROM sessions WHERE key = ?1",
    ],
    search_queries: fts_queries,
    fact_key: content_key,
    owner_term,
    // The directory's lock keeps every other process out: a blob half-written at start was
    // left by a crash.
    stale_blobs: "SELECT key FROM blobs WHERE sha256 IS NULL",
    // The one writer runs one upload's end at a time already.
    lock_digest: "SELECT length(?1)",
    put_chunks: &["INSERT INTO text_chunks (blob_key, n, owner, label, text) \
         VALUES (?1, ?2, ?3, ?4, ?5)"],
    put_chunk_vectors: &["INSERT INTO chunk_vectors (blob_key, n, model, vector) \
         SELECT ?1, ?2, ?3, ?4 WHERE EXISTS \
         (SELECT 1 FROM text_chunks WHERE blob_key = ?1 AND n = ?2) \
         ON CONFLICT (blob_key, n, model) DO UPDATE SET vector = excluded.vector"],
    // The owner's and the blob's tokens are ANDed in, so that the index answers for this
    // blob's chunks alone; BM25 (higher is better once negated) weighs the text only, and its
    // figures come from the whole index, so that two blobs' scores compare.
    search_chunks: "SELECT c.n, c.label, c.text, -bm25(chunk_text, 1.0, 0.0, 0.0) \
         FROM chunk_text JOIN text_chunks c ON c.key = chunk_text.rowid \
         WHERE chunk_text MATCH ('owner_token : ' || ?3 || ' AND blob_token : b' || ?1 \
         || ' AND (' || ?2 || ')') \
         ORDER BY bm25(chunk_text, 1.0, 0.0, 0.0) LIMIT ?4",
    // The ids come as a JSON array: each is looked up by its rowid.
    nodes_with_vectors: concat!(
        "SELECT ",
        node_columns!(),
        ", e.vector FROM nodes JOIN embeddings e ON e.node_id = nodes.id \
         WHERE nodes.id IN (SELECT value FROM json_each(?1)) AND nodes.owner = ?2 \
         AND e.owner = ?2 AND e.model = ?3"
    ),
};

/// How SQLite writes each table of a batch: statements run once per row, with the row's values
/// bound as `?1`, `?2`, … in the order [`BatchTable`] gives its columns (as many as each names).
fn batch_statements(table: BatchTable) -> &'static [&'static str] {
    match table {
        // The search text waits in its event's row for the full-text index (`text_index.rs`).
        BatchTable::Events => &["INSERT INTO events (session_key, seq, body, search_text) \
                  VALUES (?1, ?2, ?3, ?4)"],
        BatchTable::Messages => &["INSERT INTO messages \
             (session_key, idx, role, content, tool_calls, tool_call_id, is_error, turn_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"],
        BatchTable::Notes => &["INSERT INTO notes (session_key, text) VALUES (?1, ?2)"],
        BatchTable::Turns => &[
            "INSERT OR IGNORE INTO turns (session_key, turn_id, opened_seq, closed_seq, \
             parent, client_id, closing, reset, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        ],
        // Only one turn of a conversation is ever open: the one opened before the close.
        BatchTable::TurnCloses => &[
            "UPDATE turns SET closed_seq = ?2, closing = ?3, reset = ?4 \
             WHERE session_key = ?1 AND closed_seq IS NULL AND opened_seq < ?2",
        ],
        BatchTable::Sessions => &["UPDATE sessions SET \
             last_seq = MAX(last_seq, ?2), turns = MAX(turns, ?3), \
             open_turn = CASE WHEN ?4 THEN ?5 ELSE open_turn END, \
             open_text = CASE WHEN ?4 THEN ?6 ELSE open_text END, \
             title = coalesce(title, ?7), prompt_tokens = prompt_tokens + ?8, \
             completion_tokens = completion_tokens + ?9, leaf = coalesce(?10, leaf), \
             updated_at = ?11 WHERE key = ?1"],
    }
}

/// A new conversation's row, answering its key.
const INSERT_SESSION: &str = "INSERT INTO sessions \
     (id, owner, user_id, personality, model, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) RETURNING key";

/// A connection (or a transaction on one, through `Deref`) as the shared logic's [`Db`].
pub(super) struct Lite<'c>(pub(super) &'c Connection);

impl Db for Lite<'_> {
    type Error = rusqlite::Error;

    /// Steps through the rows as `row` reads them, so a [`Db::stream`] stops reading early.
    fn each(
        &mut self,
        query: Query<'_>,
        row: &mut EachRow<'_, rusqlite::Error>,
    ) -> rusqlite::Result<()> {
        let mut statement = self.0.prepare_cached(query.sql)?;
        let mut rows = statement.query(params_from_iter(query.params))?;
        while let Some(found) = rows.next()? {
            if !row(found)? {
                break;
            }
        }
        Ok(())
    }

    fn execute(&mut self, query: Query<'_>) -> rusqlite::Result<u64> {
        let mut statement = self.0.prepare_cached(query.sql)?;
        Ok(statement.execute(params_from_iter(query.params))? as u64)
    }

    fn search_nodes(
        &mut self,
        search: &NodeSearch<'_>,
        found: &mut Vec<Node>,
    ) -> rusqlite::Result<()> {
        add_matches(self.0, search, found)
    }

    fn insert_session(&mut self, values: &[Param<'_>]) -> rusqlite::Result<i64> {
        self.0
            .prepare_cached(INSERT_SESSION)?
            .query_row(params_from_iter(values), |row| row.get(0))
    }

    fn write_table(
        &mut self,
        statements: &'static [&'static str],
        table: &Table<'_>,
    ) -> rusqlite::Result<()> {
        write_each_row(self.0, statements, table)
    }

    fn write_rows(&mut self, rows: &Rows<'_>) -> rusqlite::Result<()> {
        for (kind, table) in rows.tables() {
            write_each_row(self.0, batch_statements(kind), &table)?;
        }
        Ok(())
    }
}

/// Runs `statements` for each row of `table` in turn, prepared once.
fn write_each_row(
    connection: &Connection,
    statements: &[&str],
    table: &Table<'_>,
) -> rusqlite::Result<()> {
    if table.rows == 0 {
        return Ok(());
    }
    let mut prepared = statements
        .iter()
        .map(|sql| connection.prepare_cached(sql))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for row in 0..table.rows {
        for statement in &mut prepared {
            let named = statement.parameter_count();
            for (index, column) in table.columns.iter().take(named).enumerate() {
                statement.raw_bind_parameter(index + 1, column.at(row))?;
            }
            statement.raw_execute()?;
        }
    }
    Ok(())
}

impl Row for rusqlite::Row<'_> {
    type Error = rusqlite::Error;

    fn opt_int(&self, column: usize) -> rusqlite::Result<Option<i64>> {
        self.get(column)
    }

    fn opt_text(&self, column: usize) -> rusqlite::Result<Option<String>> {
        self.get(column)
    }

    fn flag(&self, column: usize) -> rusqlite::Result<bool> {
        self.get(column)
    }

    fn json(&self, column: usize) -> rusqlite::Result<Value> {
        let text: String = self.get(column)?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn real(&self, column: usize) -> rusqlite::Result<f64> {
        self.get(column)
    }

    fn bytes(&self, column: usize) -> rusqlite::Result<&[u8]> {
        Ok(self.get_ref(column)?.as_blob()?)
    }
}

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let value = match self {
            Param::Int(n) | Param::OptInt(Some(n)) => ValueRef::Integer(*n),
            Param::OptInt(None) | Param::OptText(None) => ValueRef::Null,
            Param::Text(text) | Param::OptText(Some(text)) => ValueRef::Text(text.as_bytes()),
            Param::Flag(flag) => ValueRef::Integer(i64::from(*flag)),
            Param::Bytes(bytes) => ValueRef::Blob(bytes),
            // JSON is stored as its text.
            Param::Json(json) => return Ok(ToSqlOutput::Owned(SqlValue::Text(json.to_string()))),
            // A list goes as a JSON array, for `json_each`.
            Param::Ints(values) => {
                return Ok(ToSqlOutput::Owned(SqlValue::Text(json_ints(values))));
            }
        };
        Ok(ToSqlOutput::Borrowed(value))
    }
}

/// `values` as a JSON array.
fn json_ints(values: &[i64]) -> String {
    let mut text = String::with_capacity(values.len() * 8 + 2);
    text.push('[');
    for (n, value) in values.iter().enumerate() {
        if n > 0 {
            text.push(',');
        }
        text.push_str(&value.to_string());
    }
    text.push(']');
    text
}

/// A fact's content stands for itself in SQLite's lookups.
fn content_key(content: &str) -> Param<'_> {
    Param::Text(content)
}

/// The token that stands for `owner` in the `owner_token` column of every full-text table: `o`
/// and the owner's UTF-8 bytes in hex, as SQLite's `'o' || hex(owner)` spells it where a row
/// is indexed: one token whatever the owner's characters. A search's words are matched in
/// every column, the owner's too, and no column filter: with one, FTS5 reads each match's
/// positions to count the documents a word is in (BM25's weight of a word), which took twice
/// as long. A word that happens to be a principal's token matches only that principal's own
/// rows, since the query ANDs the searcher's token in, and weighs nothing in the ranking.
pub(super) fn owner_term(owner: &str) -> String {
    let mut term = String::with_capacity(1 + owner.len() * 2);
    term.push('o');
    for byte in owner.bytes() {
        term.push_str(&format!("{byte:02X}"));
    }
    term
}

/// The words of free text as quoted FTS5 terms (see [`search_words`]), so that no input is a
/// syntax error.
pub(super) fn fts_terms(text: &str) -> Vec<String> {
    search_words(text)
        .into_iter()
        .map(|word| format!("\"{word}\""))
        .collect()
}

/// FTS5 queries for free text, most selective first: nodes with every word, then (when there
/// are several words) nodes with any of them. BM25 ranks within each.
pub fn fts_queries(text: &str) -> Vec<String> {
    let terms = fts_terms(text);
    match terms.len() {
        0 => Vec::new(),
        1 => terms,
        _ => vec![terms.join(" AND "), terms.join(" OR ")],
    }
}

/// Adds to `found`, best first, the nodes of `search.owner` (of `search.kind`, when given) that
/// match the FTS5 query `search.query` and are not in it yet, until it holds `search.limit`.
///
/// The owner's token is ANDed into the query, so the index itself answers with the owner's
/// nodes only: FTS5 steps through the owner's postings and skips everyone else's, and ranks
/// (BM25, the owner column weighing nothing) only what is left. Ranking reads the full-text
/// index alone; a node's row is read only for the best-ranked candidates, one at a time,
/// checking its owner and kind. Joining `nodes` in the ranking query instead would read every
/// matching row, and `owner` sits after `content` in the row (version 2 added it), so checking
/// it walks every page of a long fact.
fn add_matches(
    connection: &Connection,
    search: &NodeSearch<'_>,
    found: &mut Vec<Node>,
) -> rusqlite::Result<()> {
    let NodeSearch {
        query,
        owner,
        kind,
        limit,
        read,
    } = *search;
    let mut ranked = connection.prepare_cached(
        "SELECT rowid FROM nodes_fts \
         WHERE nodes_fts MATCH ('owner_token : ' || ?2 || ' AND (' || ?1 || ')') \
         ORDER BY bm25(nodes_fts, 1.0, 1.0, 0.0)",
    )?;
    let mut candidate = connection.prepare_cached(concat!(
        "SELECT ",
        node_columns!(),
        " FROM nodes WHERE id = ?1 AND owner = ?2 AND (?3 IS NULL OR kind = ?3)"
    ))?;
    let mut ids = ranked.query([query, &owner_term(owner)])?;
    while found.len() < limit {
        let Some(row) = ids.next()? else {
            break;
        };
        read.fetch_add(1, Ordering::Relaxed);
        let id: i64 = row.get(0)?;
        if found.iter().any(|known| known.id == id) {
            continue;
        }
        if let Some(node) = candidate
            .query_row(params![id, owner, kind], |row| node_from_row(row))
            .optional()?
        {
            found.push(node);
        }
    }
    Ok(())
}
