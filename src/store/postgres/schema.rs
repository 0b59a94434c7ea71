//! The PostgreSQL schema, one migration per version, and the code that runs them at start.
//!
//! The version lives in a `schema_version` table (one row per migration run). Each migration
//! runs in a transaction of its own that first takes an advisory lock, so that instances
//! starting at once against one database migrate it once.
//!
//! Version 1 holds what SQLite's version 2 holds, with the database enforcing what one writer
//! only promised there: one event per `seq` and one turn per `turn_id` in a conversation
//! (primary keys), one copy of a fact per owner (a unique index over a digest of its content).
//! The busy tables (`events`, `messages`, `notes`) carry no foreign key to `sessions`: checking
//! one costs a trigger call per row, which measured as a third of a batch's time, and the one
//! writer deletes a conversation's rows itself, in one statement, as with SQLite. `turns` and
//! `leases` (a row per turn, or none) keep theirs.
//! Text is searched with `sparky_english`: PostgreSQL's English configuration with its
//! stemmer but without its stopwords, so that, as with SQLite's index, every word can be found
//! (the words a search keeps are chosen in Rust, alike for both stores). Full-text search is a
//! `tsvector` with a GIN index: over what people said, for the
//! conversation search, and over each node's label and content plus a lexeme naming its owner,
//! so that a search is scoped to one principal inside the index. `leases` is empty: it is where
//! an instance will record the conversations whose turns it runs, once several instances share
//! one database. Version 2 adds models, token totals and embeddings, version 3 the turn tree,
//! and version 4 the owner's lexeme in the events' search vectors and a search vector of each
//! title, so that the conversation search too is scoped to one principal inside its indexes. Version 5
//! adds files (see [`V5`] for why their bytes are `bytea` in pieces), version 6 share links
//! ([`V6_SHARES`]), version 7 user accounts ([`V7`]), version 8 each principal's use per day
//! ([`V8_USAGE`]).
//!
//! Depends on: `common::error`, `store::postgres::pool`.

use postgres::Client;

use crate::common::error::{Error, Result};

/// The schema version this build writes. A database with a higher one was migrated by a newer
/// Sparky and is refused.
pub const POSTGRES_SCHEMA_VERSION: i64 = 8;

/// The advisory lock each migration's transaction takes: `sparky-migrate` in ASCII.
const MIGRATION_LOCK: i64 = 0x7370_6172_6b79_6d67;

/// Version 0 to 1: the first schema.
const V1: &str = r#"
CREATE TEXT SEARCH DICTIONARY sparky_stem (TEMPLATE = snowball, LANGUAGE = english);
CREATE TEXT SEARCH CONFIGURATION sparky_english (COPY = english);
ALTER TEXT SEARCH CONFIGURATION sparky_english
    ALTER MAPPING FOR asciiword, asciihword, hword_asciipart, word, hword, hword_part
    WITH sparky_stem;

CREATE TABLE sessions (
    key bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    owner text NOT NULL,
    user_id text,
    personality text,
    title text,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    last_seq bigint NOT NULL DEFAULT 0,
    turns bigint NOT NULL DEFAULT 0,
    open_turn bigint,
    open_text text,
    first_seq bigint NOT NULL DEFAULT 1,
    first_message bigint NOT NULL DEFAULT 0
);
CREATE INDEX sessions_owner ON sessions (owner, updated_at DESC, key DESC);
CREATE INDEX sessions_updated ON sessions (updated_at);

CREATE TABLE events (
    session_key bigint NOT NULL,
    seq bigint NOT NULL,
    body text NOT NULL,
    search tsvector,
    PRIMARY KEY (session_key, seq)
);
CREATE INDEX events_search ON events USING gin (search);

CREATE TABLE turns (
    session_key bigint NOT NULL REFERENCES sessions (key) ON DELETE CASCADE,
    turn_id bigint NOT NULL,
    opened_seq bigint NOT NULL,
    closed_seq bigint,
    PRIMARY KEY (session_key, turn_id)
);

CREATE TABLE messages (
    session_key bigint NOT NULL,
    idx bigint NOT NULL,
    role text NOT NULL,
    content text NOT NULL,
    tool_calls text,
    tool_call_id text,
    is_error boolean NOT NULL DEFAULT false,
    PRIMARY KEY (session_key, idx)
);

CREATE TABLE notes (
    id bigserial PRIMARY KEY,
    session_key bigint NOT NULL,
    text text NOT NULL
);
CREATE INDEX notes_session ON notes (session_key, id);

CREATE TABLE leases (
    session_key bigint PRIMARY KEY REFERENCES sessions (key) ON DELETE CASCADE,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE TABLE nodes (
    id bigserial PRIMARY KEY,
    owner text NOT NULL,
    kind text NOT NULL,
    label text NOT NULL,
    content text NOT NULL,
    content_sha256 bytea NOT NULL,
    properties jsonb NOT NULL DEFAULT '{}',
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    search tsvector GENERATED ALWAYS AS (
        to_tsvector('sparky_english', label || ' ' || content) || array_to_tsvector(ARRAY['@' || owner])
    ) STORED
);
CREATE INDEX nodes_owner ON nodes (owner, kind, id);
CREATE UNIQUE INDEX nodes_fact ON nodes (owner, content_sha256) WHERE kind = 'fact';
CREATE INDEX nodes_search ON nodes USING gin (search);

CREATE TABLE edges (
    id bigserial PRIMARY KEY,
    source bigint NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    target bigint NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    kind text NOT NULL,
    properties jsonb NOT NULL DEFAULT '{}',
    created_at bigint NOT NULL,
    UNIQUE (source, target, kind)
);
CREATE INDEX edges_target ON edges (target);
"#;

/// Version 1 to 2: each conversation's model and token totals (summed from the closing
/// `message` events already stored), and the facts' embeddings (as SQLite's version 3): one
/// vector per node and embedding model, unit length, little-endian `f32`s in a `bytea`, with
/// the node's owner beside it so that a search reads one principal's vectors only.
const V2: &str = r#"
ALTER TABLE sessions ADD COLUMN model text,
    ADD COLUMN prompt_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN completion_tokens bigint NOT NULL DEFAULT 0;
UPDATE sessions s SET prompt_tokens = u.prompt, completion_tokens = u.completion
    FROM (SELECT session_key,
            coalesce(sum((body::jsonb #>> '{data,usage,prompt_tokens}')::bigint), 0) AS prompt,
            coalesce(sum((body::jsonb #>> '{data,usage,completion_tokens}')::bigint), 0)
                AS completion
          FROM events WHERE body::jsonb ->> 'type' = 'message' GROUP BY session_key) u
    WHERE u.session_key = s.key;
CREATE TABLE embeddings (
    node_id bigint PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    owner text NOT NULL,
    model text NOT NULL,
    vector bytea NOT NULL
);
CREATE INDEX embeddings_owner ON embeddings (owner, model);
"#;

/// Version 2 to 3: the turn tree, as SQLite's version 4: each turn's parent, client id,
/// closing, history-reset mark and start time, each message's turn, and each conversation's
/// leaf. What was stored before is one line, read as SQLite's migration reads it.
const V3: &str = r#"
ALTER TABLE turns ADD COLUMN parent bigint NOT NULL DEFAULT 0,
    ADD COLUMN client_id text,
    ADD COLUMN closing text,
    ADD COLUMN reset boolean NOT NULL DEFAULT false,
    ADD COLUMN created_at bigint NOT NULL DEFAULT 0;
UPDATE turns t SET parent = t.turn_id - 1, created_at = s.created_at
    FROM sessions s WHERE s.key = t.session_key;
UPDATE turns t SET closing = CASE e.body::jsonb ->> 'type'
        WHEN 'message' THEN 'message' WHEN 'error' THEN 'error' ELSE 'cancelled' END
    FROM events e WHERE e.session_key = t.session_key AND e.seq = t.closed_seq;
ALTER TABLE sessions ADD COLUMN leaf bigint NOT NULL DEFAULT 0;
UPDATE sessions SET leaf = turns;
ALTER TABLE messages ADD COLUMN turn_id bigint NOT NULL DEFAULT 0;
WITH n AS (
    SELECT session_key, idx,
        count(*) FILTER (WHERE role = 'user') OVER (PARTITION BY session_key ORDER BY idx) AS users,
        count(*) FILTER (WHERE role = 'user') OVER (PARTITION BY session_key) AS total
    FROM messages)
UPDATE messages m SET turn_id = greatest(0, least(s.turns, n.users - (n.total - s.turns)))
    FROM n, sessions s
    WHERE m.session_key = n.session_key AND m.idx = n.idx AND s.key = m.session_key;
UPDATE turns t SET reset = true FROM sessions s, messages m
    WHERE s.key = t.session_key AND s.first_message > 0 AND m.session_key = s.key
        AND m.idx = s.first_message AND m.turn_id = t.turn_id;
"#;

/// Version 3 to 4 (as SQLite's version 5): the owner inside every full-text index, and titles
/// searched. An event's search vector gains its conversation owner's lexeme (`@owner`, as a
/// node's already has), so that the conversation search ANDs it into its query and the GIN
/// index answers for one principal's events alone; each conversation gets a generated search
/// vector of its title and owner, with a GIN index of its own.
const V4: &str = r#"
UPDATE events e SET search = e.search || array_to_tsvector(ARRAY['@' || s.owner])
    FROM sessions s WHERE s.key = e.session_key AND e.search IS NOT NULL;
ALTER TABLE sessions ADD COLUMN title_search tsvector GENERATED ALWAYS AS (
    to_tsvector('sparky_english', coalesce(title, '')) || array_to_tsvector(ARRAY['@' || owner])
) STORED;
CREATE INDEX sessions_title_search ON sessions USING gin (title_search);
"#;

/// Version 4 to 5 (as SQLite's version 6): files, their blobs in pieces, the conversations
/// that use them, and their text with a search vector (and the owner's lexeme) per chunk.
///
/// The bytes are `bytea` in pieces of `BLOB_CHUNK` (256 KiB) rows rather than large objects:
/// the pieces go through the same pool and statements as every other row (a large object
/// needs its own descriptor calls, in a transaction, per read), `pg_dump` and any backup of
/// the database hold them with nothing to ask for (large objects need `--large-objects` and
/// their own privileges), and deleting a file's rows frees its bytes, where a large object
/// outlives a row that forgot to `lo_unlink` it. Nor is it slower, measured on a throwaway
/// cluster (default settings, two cores): 25 MiB of random bytes written a 256 KiB piece per
/// transaction took 0.5 to 0.8 s through `upload` and 0.8 to 1.0 s with `lo_put`, read back
/// 40 to 60 ms against 80 to 110 ms with `lo_get`, and three copies took 78 MiB of
/// `blob_chunks` against 100 MiB of `pg_largeobject` (whose 2 KiB pages PostgreSQL tries to
/// compress). The pieces are stored `EXTERNAL`: most files (images, PDFs, archives) are
/// compressed already, and PostgreSQL would try to compress each piece again in vain.
///
/// A blob being written carries its writer's `application_name` (every connection of an
/// instance carries the instance's name), so that an instance starting removes the pieces an
/// instance that is gone left half-written, and leaves those of one still uploading.
const V5: &str = r#"
CREATE TABLE blobs (
    key bigserial PRIMARY KEY,
    owner text NOT NULL,
    sha256 text,
    size bigint NOT NULL DEFAULT 0,
    writer text NOT NULL DEFAULT current_setting('application_name'),
    created_at bigint NOT NULL,
    UNIQUE (owner, sha256)
);
CREATE INDEX blobs_partial ON blobs (key) WHERE sha256 IS NULL;
CREATE TABLE blob_chunks (
    blob_key bigint NOT NULL REFERENCES blobs (key) ON DELETE CASCADE,
    n bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (blob_key, n)
);
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE files (
    key bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    owner text NOT NULL,
    blob_key bigint NOT NULL REFERENCES blobs (key),
    name text NOT NULL,
    content_type text NOT NULL,
    created_at bigint NOT NULL
);
CREATE INDEX files_owner ON files (owner, created_at DESC, key DESC);
CREATE INDEX files_blob ON files (blob_key);
CREATE TABLE file_uses (
    file_key bigint NOT NULL REFERENCES files (key) ON DELETE CASCADE,
    session_id text NOT NULL,
    PRIMARY KEY (file_key, session_id)
);
CREATE INDEX file_uses_session ON file_uses (session_id);
CREATE TABLE blob_text (
    blob_key bigint PRIMARY KEY REFERENCES blobs (key) ON DELETE CASCADE,
    state text NOT NULL CHECK (state IN ('pending', 'ready', 'failed')),
    note text,
    chunks bigint NOT NULL DEFAULT 0,
    chars bigint NOT NULL DEFAULT 0
);
CREATE TABLE text_chunks (
    blob_key bigint NOT NULL REFERENCES blobs (key) ON DELETE CASCADE,
    n bigint NOT NULL,
    owner text NOT NULL,
    label text NOT NULL,
    text text NOT NULL,
    search tsvector GENERATED ALWAYS AS (
        to_tsvector('sparky_english', left(text, 100000)) || array_to_tsvector(ARRAY['@' || owner])
    ) STORED,
    PRIMARY KEY (blob_key, n)
);
CREATE INDEX text_chunks_search ON text_chunks USING gin (search);
CREATE TABLE chunk_vectors (
    blob_key bigint NOT NULL,
    n bigint NOT NULL,
    model text NOT NULL,
    vector bytea NOT NULL,
    PRIMARY KEY (blob_key, n, model),
    FOREIGN KEY (blob_key, n) REFERENCES text_chunks (blob_key, n) ON DELETE CASCADE
);
"#;

/// Version 5 to 6: share links, each a frozen copy of a conversation's current path as JSON
/// text, readable by whoever has its 128-bit random id. Self-contained, so that it can be joined
/// with other version 6 tables into one migration.
const V6_SHARES: &str = r#"
CREATE TABLE shares (
    key bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    owner text NOT NULL,
    session_id text NOT NULL,
    title text,
    copy text NOT NULL,
    created_at bigint NOT NULL
);
CREATE INDEX shares_owner ON shares (owner, created_at DESC, key DESC);
"#;

/// Version 6 to 7: user accounts: users, their sign-ins (a cookie's SHA-256) and their named
/// API tokens.
const V7: &str = r#"
CREATE TABLE users (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    admin boolean NOT NULL DEFAULT false,
    created_at bigint NOT NULL,
    daily_turns bigint,
    daily_tokens bigint
);
CREATE TABLE login_sessions (
    secret_sha256 text PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf text NOT NULL,
    created_at bigint NOT NULL,
    last_used bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX login_sessions_user ON login_sessions (user_id);
CREATE TABLE api_tokens (
    id text PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name text NOT NULL,
    secret_sha256 text NOT NULL UNIQUE,
    created_at bigint NOT NULL,
    last_used bigint
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);
"#;

/// Version 7 to 8 (as SQLite's version 9): each principal's use per UTC day (`day`: days since
/// 1970-01-01): turns started and model tokens their answers took, against users' daily limits.
const V8_USAGE: &str = r#"
CREATE TABLE daily_usage (
    owner text NOT NULL,
    day bigint NOT NULL,
    turns bigint NOT NULL DEFAULT 0,
    tokens bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, day)
);
"#;

/// Entry `n` migrates from version `n` to `n + 1`.
const MIGRATIONS: [&str; POSTGRES_SCHEMA_VERSION as usize] =
    [V1, V2, V3, V4, V5, V6_SHARES, V7, V8_USAGE];

/// Brings the database to [`POSTGRES_SCHEMA_VERSION`], one version per transaction.
///
/// # Errors
///
/// [`Error::Store`] when the database was migrated by a newer build, the role may not create
/// tables, or a migration fails (nothing of that migration is then kept).
pub fn migrate(client: &mut Client, target: &str) -> Result<()> {
    migrate_to(client, target, POSTGRES_SCHEMA_VERSION)
}

/// Brings the database to version `version_wanted` (at most [`POSTGRES_SCHEMA_VERSION`]);
/// tests use it to build an older version's database.
pub(crate) fn migrate_to(client: &mut Client, target: &str, version_wanted: i64) -> Result<()> {
    loop {
        let failed = |e: postgres::Error| {
            Error::store(format!(
                "database {target}: migration failed: {}",
                super::pool::describe(&e)
            ))
        };
        let mut tx = client.transaction().map_err(failed)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(failed)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                version bigint PRIMARY KEY,
                migrated_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .map_err(failed)?;
        let version: i64 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .and_then(|row| row.try_get(0))
            .map_err(failed)?;
        if version > POSTGRES_SCHEMA_VERSION {
            return Err(Error::store(format!(
                "database {target} has schema version {version}, newer than this build's \
                 {POSTGRES_SCHEMA_VERSION}; run a newer sparky or point --store elsewhere"
            )));
        }
        let Some(sql) = MIGRATIONS
            .get(version.max(0) as usize)
            .filter(|_| version < version_wanted)
        else {
            return tx.commit().map_err(failed);
        };
        let to = version + 1;
        tx.batch_execute(sql).map_err(|e| {
            Error::store(format!(
                "database {target}: migration to version {to} failed: {}",
                super::pool::describe(&e)
            ))
        })?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&to])
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        log::info!("store: database {target} migrated to schema version {to}");
    }
}
