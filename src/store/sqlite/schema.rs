//! The SQLite schema, one migration per version, and the code that runs them at start.
//!
//! Version 1 kept a window of events and loaded every session at start. Version 2 keeps every
//! event with an index per conversation, turn bookkeeping and titles in the session row, a
//! full-text index over what people said, and an owner on every node of the graph. Version 3
//! adds each conversation's model and token totals, and the facts' embeddings. Version 4 makes
//! a conversation a tree of turns: a table of turns, each message's turn, and the leaf. Version
//! 5 puts each row's owner into the full-text indexes, so that a search reads only its
//! principal's postings, and indexes titles for the conversation search. Version 6 adds files:
//! their bytes in pieces, the conversations that use them, and their text, indexed. Version 7
//! adds share links ([`V7_SHARES`]), version 8 user accounts ([`V8`]), version 9 each
//! principal's use per day ([`V9_USAGE`]), version 10 MCP servers' OAuth grants ([`V10_MCP_OAUTH`]).
//!
//! Depends on: `common::error`, `store`.

use rusqlite::{Connection, Transaction};

use super::super::{LOCAL_OWNER, SCHEMA_VERSION};
use crate::common::error::{Error, Result};

/// Version 0 to 1: the first schema.
const V1: &str = r#"
CREATE TABLE sessions (
    key INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    user_id TEXT,
    personality TEXT,
    owner TEXT,
    created_at INTEGER NOT NULL,
    last_active INTEGER NOT NULL,
    first_seq INTEGER NOT NULL DEFAULT 1,
    first_message INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE events (session_key INTEGER NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE messages (
    session_key INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    tool_calls TEXT,
    tool_call_id TEXT,
    is_error INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE notes (session_key INTEGER NOT NULL, text TEXT NOT NULL);
CREATE TABLE nodes (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    label TEXT NOT NULL,
    content TEXT NOT NULL,
    properties TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX nodes_kind_content ON nodes (kind, content);
CREATE TABLE edges (
    id INTEGER PRIMARY KEY,
    source INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    target INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    properties TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    UNIQUE (source, target, kind)
);
CREATE INDEX edges_target ON edges (target);
CREATE VIRTUAL TABLE nodes_fts USING fts5 (
    label, content, content = 'nodes', content_rowid = 'id', tokenize = 'porter unicode61'
);
CREATE TRIGGER nodes_after_insert AFTER INSERT ON nodes BEGIN
    INSERT INTO nodes_fts (rowid, label, content) VALUES (new.id, new.label, new.content);
END;
CREATE TRIGGER nodes_after_delete AFTER DELETE ON nodes BEGIN
    INSERT INTO nodes_fts (nodes_fts, rowid, label, content)
        VALUES ('delete', old.id, old.label, old.content);
END;
CREATE TRIGGER nodes_after_update AFTER UPDATE ON nodes BEGIN
    INSERT INTO nodes_fts (nodes_fts, rowid, label, content)
        VALUES ('delete', old.id, old.label, old.content);
    INSERT INTO nodes_fts (rowid, label, content) VALUES (new.id, new.label, new.content);
END;
"#;

/// Version 1 to 2. Rows that version 1 had trimmed or orphaned (it deleted lazily) go first,
/// then the new columns are filled from the events that are left.
const V2: &str = r#"
DELETE FROM events WHERE NOT EXISTS (SELECT 1 FROM sessions s
    WHERE s.key = events.session_key AND events.seq >= s.first_seq);
DELETE FROM messages WHERE NOT EXISTS (SELECT 1 FROM sessions s
    WHERE s.key = messages.session_key AND messages.idx >= s.first_message);
DELETE FROM notes WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.key = notes.session_key);
ALTER TABLE sessions RENAME COLUMN last_active TO updated_at;
ALTER TABLE sessions ADD COLUMN title TEXT;
ALTER TABLE sessions ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN turns INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN open_turn INTEGER;
ALTER TABLE sessions ADD COLUMN open_text TEXT;
UPDATE sessions SET owner = 'local' WHERE owner IS NULL;
CREATE INDEX sessions_owner ON sessions (owner, updated_at);
CREATE INDEX sessions_updated ON sessions (updated_at);
CREATE INDEX events_session ON events (session_key, seq);
CREATE INDEX messages_session ON messages (session_key, idx);
CREATE INDEX notes_session ON notes (session_key);
UPDATE sessions SET
    last_seq = COALESCE((SELECT MAX(seq) FROM events WHERE session_key = sessions.key), first_seq - 1),
    turns = COALESCE((SELECT MAX(json_extract(body, '$.data.turn_id')) FROM events
        WHERE session_key = sessions.key), 0),
    title = (SELECT substr(json_extract(body, '$.data.text'), 1, 80) FROM events
        WHERE session_key = sessions.key AND json_extract(body, '$.type') = 'user_message'
        ORDER BY seq LIMIT 1);
CREATE VIRTUAL TABLE event_text USING fts5 (
    text, session_key UNINDEXED, tokenize = 'porter unicode61'
);
INSERT INTO event_text (rowid, text, session_key)
    SELECT rowid, json_extract(body, '$.data.text'), session_key FROM events
    WHERE json_extract(body, '$.type') IN ('user_message', 'message');
ALTER TABLE nodes ADD COLUMN owner TEXT NOT NULL DEFAULT 'local';
DROP INDEX nodes_kind_content;
CREATE INDEX nodes_owner ON nodes (owner, kind, content);
"#;

/// Version 2 to 3: each conversation's model and token totals (the totals summed from the
/// closing `message` events already stored), and a table of fact embeddings for semantic
/// memory: one vector per node and embedding model, unit length, stored as little-endian
/// `f32`s, with the node's owner beside it so that a search reads one principal's vectors only.
const V3: &str = r#"
ALTER TABLE sessions ADD COLUMN model TEXT;
ALTER TABLE sessions ADD COLUMN prompt_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN completion_tokens INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET
    prompt_tokens = COALESCE((SELECT SUM(json_extract(body, '$.data.usage.prompt_tokens'))
        FROM events WHERE session_key = sessions.key
        AND json_extract(body, '$.type') = 'message'), 0),
    completion_tokens = COALESCE((SELECT SUM(json_extract(body, '$.data.usage.completion_tokens'))
        FROM events WHERE session_key = sessions.key
        AND json_extract(body, '$.type') = 'message'), 0);
CREATE TABLE embeddings (
    node_id INTEGER PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX embeddings_owner ON embeddings (owner, model);
"#;

/// Version 3 to 4: the turn tree (PROTOCOL.md section 5, "Branches"). A table of turns (the
/// same as PostgreSQL's), each message's turn, and each conversation's leaf. What was stored
/// before is one line: each turn follows the one before, its span and closing are read from its
/// events, and its messages are found by counting user messages back from the last (each turn
/// committed exactly one; those before the first turn were the seeded history, turn 0). A
/// history reset, kept until now as the first message the model sees, becomes its turn's mark.
const V4: &str = r#"
CREATE TABLE turns (
    session_key INTEGER NOT NULL,
    turn_id INTEGER NOT NULL,
    parent INTEGER NOT NULL DEFAULT 0,
    client_id TEXT,
    opened_seq INTEGER NOT NULL,
    closed_seq INTEGER,
    closing TEXT,
    reset INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_key, turn_id)
) WITHOUT ROWID;
ALTER TABLE sessions ADD COLUMN leaf INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN turn_id INTEGER NOT NULL DEFAULT 0;
INSERT OR IGNORE INTO turns (session_key, turn_id, parent, opened_seq, created_at)
    SELECT e.session_key, json_extract(e.body, '$.data.turn_id'),
        json_extract(e.body, '$.data.turn_id') - 1, e.seq, s.created_at
    FROM events e JOIN sessions s ON s.key = e.session_key
    WHERE json_extract(e.body, '$.type') = 'user_message'
        AND json_extract(e.body, '$.data.turn_id') IS NOT NULL;
UPDATE turns SET (closed_seq, closing) = (
    SELECT e.seq, CASE json_extract(e.body, '$.type')
            WHEN 'message' THEN 'message' WHEN 'error' THEN 'error' ELSE 'cancelled' END
    FROM events e WHERE e.session_key = turns.session_key AND e.seq > turns.opened_seq
        AND json_extract(e.body, '$.data.turn_id') = turns.turn_id
        AND (json_extract(e.body, '$.type') IN ('message', 'error')
            OR json_extract(e.body, '$.data.code') = 'cancelled')
    ORDER BY e.seq LIMIT 1);
UPDATE sessions SET leaf = turns;
WITH numbered AS (
    SELECT rowid AS r, session_key,
        sum(role = 'user') OVER (PARTITION BY session_key ORDER BY idx) AS users,
        sum(role = 'user') OVER (PARTITION BY session_key) AS total
    FROM messages)
UPDATE messages SET turn_id = max(0, min(s.turns, n.users - (n.total - s.turns)))
    FROM numbered n JOIN sessions s ON s.key = n.session_key
    WHERE messages.rowid = n.r;
UPDATE turns SET reset = 1 WHERE EXISTS (
    SELECT 1 FROM sessions s JOIN messages m ON m.session_key = s.key AND m.idx = s.first_message
    WHERE s.key = turns.session_key AND s.first_message > 0 AND m.turn_id = turns.turn_id);
"#;

/// Version 4 to 5: the owner inside the full-text indexes, and titles searched.
///
/// Each full-text table gains an `owner_token` column holding one token that stands for the
/// row's owner (`o` and the owner's bytes in hex, so that every owner is one token, whatever
/// its characters, and none is a word people write); a search ANDs it into its query, so that
/// FTS5 skips other principals' rows inside the index rather than ranking them and reading each
/// one's row to drop it. Before this, one principal's large graph made every other principal's
/// lookups run out of time. For the nodes' index (whose content lives in `nodes`), the token is
/// a virtual generated column of `nodes`, so that the external-content table reads it like the
/// others; the conversation search's index keeps its own copy and takes the token from the
/// conversation's row as each event is indexed. `title_text` indexes each conversation's
/// title under the conversation's key, kept by triggers (a rename, a first title, a deletion,
/// a new owner).
const V5: &str = r#"
ALTER TABLE nodes ADD COLUMN owner_token TEXT GENERATED ALWAYS AS ('o' || hex(owner)) VIRTUAL;
DROP TRIGGER nodes_after_insert;
DROP TRIGGER nodes_after_delete;
DROP TRIGGER nodes_after_update;
DROP TABLE nodes_fts;
CREATE VIRTUAL TABLE nodes_fts USING fts5 (
    label, content, owner_token, content = 'nodes', content_rowid = 'id',
    tokenize = 'porter unicode61'
);
INSERT INTO nodes_fts (nodes_fts) VALUES ('rebuild');
CREATE TRIGGER nodes_after_insert AFTER INSERT ON nodes BEGIN
    INSERT INTO nodes_fts (rowid, label, content, owner_token)
        VALUES (new.id, new.label, new.content, new.owner_token);
END;
CREATE TRIGGER nodes_after_delete AFTER DELETE ON nodes BEGIN
    INSERT INTO nodes_fts (nodes_fts, rowid, label, content, owner_token)
        VALUES ('delete', old.id, old.label, old.content, old.owner_token);
END;
CREATE TRIGGER nodes_after_update AFTER UPDATE ON nodes BEGIN
    INSERT INTO nodes_fts (nodes_fts, rowid, label, content, owner_token)
        VALUES ('delete', old.id, old.label, old.content, old.owner_token);
    INSERT INTO nodes_fts (rowid, label, content, owner_token)
        VALUES (new.id, new.label, new.content, new.owner_token);
END;

CREATE VIRTUAL TABLE event_words USING fts5 (
    text, owner_token, session_key UNINDEXED, tokenize = 'porter unicode61'
);
INSERT INTO event_words (rowid, text, owner_token, session_key)
    SELECT t.rowid, t.text, 'o' || hex(s.owner), t.session_key
    FROM event_text t JOIN sessions s ON s.key = t.session_key;
DROP TABLE event_text;
ALTER TABLE event_words RENAME TO event_text;

CREATE VIRTUAL TABLE title_text USING fts5 (title, owner_token, tokenize = 'porter unicode61');
INSERT INTO title_text (rowid, title, owner_token)
    SELECT key, title, 'o' || hex(owner) FROM sessions WHERE title IS NOT NULL;
CREATE TRIGGER sessions_title_insert AFTER INSERT ON sessions WHEN new.title IS NOT NULL BEGIN
    INSERT INTO title_text (rowid, title, owner_token)
        VALUES (new.key, new.title, 'o' || hex(new.owner));
END;
CREATE TRIGGER sessions_title_update AFTER UPDATE OF title, owner ON sessions
    WHEN old.title IS NOT new.title OR old.owner IS NOT new.owner BEGIN
    DELETE FROM title_text WHERE rowid = old.key;
    INSERT INTO title_text (rowid, title, owner_token)
        SELECT new.key, new.title, 'o' || hex(new.owner) WHERE new.title IS NOT NULL;
END;
CREATE TRIGGER sessions_title_delete AFTER DELETE ON sessions BEGIN
    DELETE FROM title_text WHERE rowid = old.key;
END;
"#;

/// Version 5 to 6: files (`store/files.rs`). A file is a row of its own over a *blob*, the
/// bytes kept once per owner and SHA-256, in pieces of `BLOB_CHUNK` bytes (`blob_chunks`), so
/// that no file is ever held whole in memory; a blob's `sha256` is NULL while it is being
/// written, and such a blob left by a crash is removed at the next start. `file_uses` records
/// the conversations that use a file, by the conversation's id rather than its key: a message
/// may carry a file before the journal has written its new conversation's row. A blob's text
/// is its `blob_text` state and its `text_chunks`, indexed by `chunk_text` (FTS5 over the
/// chunks, with the owner's token as the other indexes have it, and a token naming the blob,
/// so that a search of a few files reads only their postings); `chunk_vectors` holds their
/// embeddings.
const V6: &str = r#"
CREATE TABLE blobs (
    key INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    sha256 TEXT,
    size INTEGER NOT NULL DEFAULT 0,
    writer TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    UNIQUE (owner, sha256)
);
CREATE INDEX blobs_partial ON blobs (key) WHERE sha256 IS NULL;
CREATE TABLE blob_chunks (
    blob_key INTEGER NOT NULL REFERENCES blobs (key) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (blob_key, n)
);
CREATE TABLE files (
    key INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    blob_key INTEGER NOT NULL REFERENCES blobs (key),
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX files_owner ON files (owner, created_at);
CREATE INDEX files_blob ON files (blob_key);
CREATE TABLE file_uses (
    file_key INTEGER NOT NULL REFERENCES files (key) ON DELETE CASCADE,
    session_id TEXT NOT NULL,
    PRIMARY KEY (file_key, session_id)
) WITHOUT ROWID;
CREATE INDEX file_uses_session ON file_uses (session_id);
CREATE TABLE blob_text (
    blob_key INTEGER PRIMARY KEY REFERENCES blobs (key) ON DELETE CASCADE,
    state TEXT NOT NULL CHECK (state IN ('pending', 'ready', 'failed')),
    note TEXT,
    chunks INTEGER NOT NULL DEFAULT 0,
    chars INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE text_chunks (
    key INTEGER PRIMARY KEY,
    blob_key INTEGER NOT NULL REFERENCES blobs (key) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    owner TEXT NOT NULL,
    label TEXT NOT NULL,
    text TEXT NOT NULL,
    owner_token TEXT GENERATED ALWAYS AS ('o' || hex(owner)) VIRTUAL,
    blob_token TEXT GENERATED ALWAYS AS ('b' || blob_key) VIRTUAL,
    UNIQUE (blob_key, n)
);
CREATE VIRTUAL TABLE chunk_text USING fts5 (
    text, owner_token, blob_token, content = 'text_chunks', content_rowid = 'key',
    tokenize = 'porter unicode61'
);
CREATE TRIGGER text_chunks_after_insert AFTER INSERT ON text_chunks BEGIN
    INSERT INTO chunk_text (rowid, text, owner_token, blob_token)
        VALUES (new.key, new.text, new.owner_token, new.blob_token);
END;
CREATE TRIGGER text_chunks_after_delete AFTER DELETE ON text_chunks BEGIN
    INSERT INTO chunk_text (chunk_text, rowid, text, owner_token, blob_token)
        VALUES ('delete', old.key, old.text, old.owner_token, old.blob_token);
END;
CREATE TABLE chunk_vectors (
    blob_key INTEGER NOT NULL,
    n INTEGER NOT NULL,
    model TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (blob_key, n, model),
    FOREIGN KEY (blob_key, n) REFERENCES text_chunks (blob_key, n) ON DELETE CASCADE
);
"#;

/// Fills in the open turn of each conversation from its last event: version 1 kept that only
/// in the events.
fn v2_open_turns(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let open: Vec<(i64, i64, String)> = tx
        .prepare(
            "SELECT s.key, json_extract(e.body, '$.data.turn_id'), e.body FROM sessions s \
             JOIN events e ON e.session_key = s.key AND e.seq = s.last_seq",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .filter_map(|row| match row {
            Ok((key, Some(turn), body)) => Some(Ok((key, turn, body))),
            Ok((_, None, _)) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<rusqlite::Result<_>>()?;
    for (key, turn, body) in open {
        let closed = body.contains(r#""type":"message""#)
            || body.contains(r#""code":"cancelled""#)
            || (body.contains(r#""type":"error""#) && body.contains(r#""turn_id""#));
        if closed {
            continue;
        }
        let text: Option<String> = tx
            .query_row(
                "SELECT json_extract(body, '$.data.text') FROM events WHERE session_key = ?1 \
             AND json_extract(body, '$.type') = 'user_message' \
             AND json_extract(body, '$.data.turn_id') = ?2",
                rusqlite::params![key, turn],
                |row| row.get(0),
            )
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        tx.execute(
            "UPDATE sessions SET open_turn = ?2, open_text = ?3 WHERE key = ?1",
            rusqlite::params![key, turn, text.unwrap_or_default()],
        )?;
    }
    Ok(())
}

/// Version 6 to 7: share links, each a frozen copy of a conversation's current path as JSON
/// text, readable by whoever has its 128-bit random id. Self-contained, so that it can be joined
/// with other version 7 tables into one migration.
const V7_SHARES: &str = r#"
CREATE TABLE shares (
    key INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    session_id TEXT NOT NULL,
    title TEXT,
    copy TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX shares_owner ON shares (owner, created_at);
"#;

/// Version 7 to 8: user accounts: users, their sign-ins (a cookie's SHA-256) and their named
/// API tokens.
/// `AUTOINCREMENT`, so that a removed user's number (its principal) is never given again.
const V8: &str = r#"
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    daily_turns INTEGER,
    daily_tokens INTEGER
);
CREATE TABLE login_sessions (
    secret_sha256 TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX login_sessions_user ON login_sessions (user_id);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    last_used INTEGER
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);
"#;

/// Version 8 to 9: each principal's use per UTC day (`day`: days since 1970-01-01): turns
/// started and model tokens their answers took, against users' daily limits.
const V9_USAGE: &str = r#"
CREATE TABLE daily_usage (
    owner TEXT NOT NULL,
    day INTEGER NOT NULL,
    turns INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, day)
) WITHOUT ROWID;
"#;

/// Version 9 to 10: the grants of OAuth-protected MCP servers, one row per server name, with
/// the refresh lease, and the sign-ins waiting for their callback (`store/mcp_auth.rs`).
const V10_MCP_OAUTH: &str = r#"
CREATE TABLE mcp_oauth (
    server TEXT PRIMARY KEY,
    grant_json TEXT NOT NULL,
    version INTEGER NOT NULL,
    refreshing_until INTEGER,
    updated_at INTEGER NOT NULL
);
CREATE TABLE mcp_oauth_sign_ins (
    state TEXT PRIMARY KEY,
    server TEXT NOT NULL,
    sign_in_json TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"#;

/// Version 10 to 11: the conversation search's index is filled behind the commits
/// (`text_index.rs`): an event keeps its search text in `events.search_text` until the index
/// has it, and `text_index` holds the newest event rowid indexed (every one stored so far is).
/// The index of sessions by their last change goes: every turn rewrote it, and only the
/// retention pass (opt-in, on the reaper's tick) looked rows up by it; it scans the table now.
const V11_TEXT_INDEX: &str = r#"
ALTER TABLE events ADD COLUMN search_text TEXT;
CREATE TABLE text_index (indexed_to INTEGER NOT NULL);
INSERT INTO text_index (indexed_to) SELECT coalesce(max(rowid), 0) FROM events;
DROP INDEX sessions_updated;
"#;

/// One migration: SQL, then an optional step in code.
type Migration = (
    &'static str,
    Option<fn(&Transaction<'_>) -> rusqlite::Result<()>>,
);

/// Entry `n` migrates from version `n` to `n + 1`.
const MIGRATIONS: [Migration; SCHEMA_VERSION as usize] = [
    (V1, None),
    (V2, Some(v2_open_turns)),
    (V3, None),
    (V4, None),
    (V5, None),
    (V6, None),
    (V7_SHARES, None),
    (V8, None),
    (V9_USAGE, None),
    (V10_MCP_OAUTH, None),
    (V11_TEXT_INDEX, None),
];

/// Brings the database to [`SCHEMA_VERSION`], one version per transaction.
///
/// # Errors
///
/// [`Error::Store`] when the file is not a database, was written by a newer build, or a
/// migration fails (nothing of that migration is then kept).
pub fn migrate(connection: &mut Connection, context: &str) -> Result<()> {
    migrate_to(connection, context, SCHEMA_VERSION)
}

/// Brings the database to version `target` (at most [`SCHEMA_VERSION`]); tests use it to
/// build an older version's database.
pub(in super::super) fn migrate_to(
    connection: &mut Connection,
    context: &str,
    target: i64,
) -> Result<()> {
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| {
            Error::store(format!(
                "{context} cannot be read (is it a Sparky database?): {e}"
            ))
        })?;
    if version > SCHEMA_VERSION {
        return Err(Error::store(format!(
            "{context} has schema version {version}, newer than this build's {SCHEMA_VERSION}; \
             run a newer sparky or point --data-dir elsewhere"
        )));
    }
    debug_assert_eq!(LOCAL_OWNER, "local", "V2 writes the local owner literally");
    for (from, (sql, step)) in MIGRATIONS
        .iter()
        .enumerate()
        .take(target.max(0) as usize)
        .skip(version.max(0) as usize)
    {
        let to = from as i64 + 1;
        let failed = |e: rusqlite::Error| {
            Error::store(format!("{context}: migration to version {to} failed: {e}"))
        };
        let tx = connection.transaction().map_err(failed)?;
        tx.execute_batch(sql).map_err(failed)?;
        if let Some(step) = step {
            step(&tx).map_err(failed)?;
        }
        tx.pragma_update(None, "user_version", to).map_err(failed)?;
        tx.commit().map_err(failed)?;
    }
    if version == 0 {
        log::info!("store: {context} created at schema version {SCHEMA_VERSION}");
    } else if version < SCHEMA_VERSION {
        log::info!("store: {context} migrated from schema version {version} to {SCHEMA_VERSION}");
    }
    Ok(())
}
