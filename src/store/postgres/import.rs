//! The PostgreSQL side of `sparky migrate-store`: [`Importer`] writes what the SQLite store
//! exported (users keep their ids, so that their principals `user:<id>` still own what they
//! own, and share links theirs, so that their URLs still work), inside the one transaction [`PostgresStore::import`] opens, with the rows of each
//! table sent as arrays a thousand at a time (a file's bytes a piece per statement).
//!
//! Depends on: `common::error`, `store`, `store::exported`, `store::plan`, `store::postgres`, `store::postgres::db`, `store::postgres::pool`.

use std::collections::HashMap;

use postgres::Transaction;
use sha2::{Digest, Sha256};

use super::super::exported::{
    CopyReport, Exported, ExportedAccounts, ExportedBlob, ExportedConversation, ExportedFile,
    ExportedShare, ExportedText,
};
use super::super::plan::{calls_to_json, role_name};
use super::db::SEARCH_TEXT_CHARS;
use super::pool::Connection;
use super::{PostgresStore, store_error};
use crate::common::error::{Error, Result};

/// Rows sent in one statement at most.
const CHUNK_ROWS: usize = 1000;

/// Writes exported things into the database, in the transaction it holds.
pub(in super::super) struct Importer<'a, 'b> {
    tx: &'a mut Transaction<'b>,
    report: CopyReport,
    /// SQLite node ids to the ids they have here: the same, except for a fact stored twice,
    /// which PostgreSQL keeps once.
    node_ids: HashMap<i64, i64>,
    /// SQLite blob keys to the keys they have here.
    blob_keys: HashMap<i64, i64>,
}

impl std::fmt::Debug for Importer<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Importer")
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Opens a transaction on the writer connection, checks that the database holds neither
    /// conversations nor nodes, lets `fill` add everything through an [`Importer`], moves the
    /// id sequences past what was copied, and commits.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the database is not empty or cannot be written, or what `fill`
    /// returns; nothing is then kept.
    pub(in super::super) fn import(
        &self,
        fill: &mut dyn FnMut(&mut Importer<'_, '_>) -> Result<()>,
    ) -> Result<CopyReport> {
        let target = self.target().to_owned();
        let mut writer = self.writer.lock();
        let connection: &mut Connection = self.writer_connection(&mut writer.connection)?;
        let failed = |e: postgres::Error| store_error("copy", e);
        let mut tx = connection.client.transaction().map_err(failed)?;
        let held: i64 = tx
            .query_one(
                "SELECT (SELECT count(*) FROM sessions) + (SELECT count(*) FROM nodes) \
                 + (SELECT count(*) FROM files) + (SELECT count(*) FROM users) \
                 + (SELECT count(*) FROM shares)",
                &[],
            )
            .and_then(|row| row.try_get(0))
            .map_err(failed)?;
        if held > 0 {
            return Err(Error::store(format!(
                "database {target} already holds conversations, facts, files, users or share \
                 links; migrate-store copies into an empty database only"
            )));
        }
        let mut importer = Importer {
            tx: &mut tx,
            report: CopyReport::default(),
            node_ids: HashMap::new(),
            blob_keys: HashMap::new(),
        };
        fill(&mut importer)?;
        let report = importer.report;
        tx.batch_execute(
            "SELECT setval(pg_get_serial_sequence('nodes', 'id'), \
                 (SELECT coalesce(max(id), 0) + 1 FROM nodes), false); \
             SELECT setval(pg_get_serial_sequence('edges', 'id'), \
                 (SELECT coalesce(max(id), 0) + 1 FROM edges), false);",
        )
        .map_err(failed)?;
        let nodes: i64 = tx
            .query_one("SELECT count(*) FROM nodes", &[])
            .and_then(|row| row.try_get(0))
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        writer.memory.keys.clear();
        self.counters.set_nodes(nodes);
        Ok(report)
    }
}

impl Importer<'_, '_> {
    /// What has been copied so far.
    pub(in super::super) fn report(&self) -> &CopyReport {
        &self.report
    }

    /// Writes one exported thing.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the database refuses it.
    pub(in super::super) fn add(&mut self, item: &Exported) -> Result<()> {
        let result = match item {
            Exported::Accounts(accounts) => self.accounts(accounts),
            Exported::Share(share) => self.share(share),
            Exported::Conversation(conversation) => self.conversation(conversation),
            Exported::Node(node) => {
                let digest = Sha256::digest(node.content.as_bytes()).to_vec();
                let stored: Result<Option<i64>, postgres::Error> = self
                    .tx
                    .query_opt(
                        "INSERT INTO nodes (id, owner, kind, label, content, content_sha256, \
                         properties, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (owner, content_sha256) WHERE kind = 'fact' DO NOTHING \
                         RETURNING id",
                        &[
                            &node.id,
                            &node.owner,
                            &node.kind,
                            &node.label,
                            &node.content,
                            &digest,
                            &node.properties,
                            &node.created_at,
                            &node.updated_at,
                        ],
                    )
                    .and_then(|row| row.map(|row| row.try_get(0)).transpose());
                match stored {
                    Ok(Some(id)) => {
                        self.report.nodes += 1;
                        self.node_ids.insert(node.id, id);
                        Ok(())
                    }
                    // The same fact twice: the copy keeps the first, and edges follow it.
                    Ok(None) => self
                        .tx
                        .query_one(
                            "SELECT id FROM nodes WHERE owner = $1 AND kind = 'fact' \
                             AND content_sha256 = $2",
                            &[&node.owner, &digest],
                        )
                        .and_then(|row| row.try_get(0))
                        .map(|id| {
                            self.node_ids.insert(node.id, id);
                        }),
                    Err(e) => Err(e),
                }
            }
            Exported::Edge(edge) => {
                let source = self.node_ids.get(&edge.source).copied();
                let target = self.node_ids.get(&edge.target).copied();
                let (Some(source), Some(target)) = (source, target) else {
                    return Ok(());
                };
                self.tx
                    .execute(
                        "INSERT INTO edges (source, target, kind, properties, created_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        &[
                            &source,
                            &target,
                            &edge.kind,
                            &edge.properties,
                            &edge.created_at,
                        ],
                    )
                    .map(|n| self.report.edges += n)
            }
            Exported::Blob(blob) => self.blob(blob),
            Exported::Piece(piece) => match self.blob_keys.get(&piece.blob) {
                Some(key) => self
                    .tx
                    .execute(
                        "INSERT INTO blob_chunks (blob_key, n, data) VALUES ($1, $2, $3)",
                        &[key, &piece.n, &piece.data],
                    )
                    .map(|_| ()),
                None => Ok(()),
            },
            Exported::Text(text) => self.text(text),
            Exported::File(file) => self.file(file),
        };
        result.map_err(|e| store_error("copy", e))
    }

    /// The users with their ids, their tokens, and the users' id sequence moved past the
    /// highest id SQLite ever gave.
    fn accounts(&mut self, accounts: &ExportedAccounts) -> Result<(), postgres::Error> {
        for user in &accounts.users {
            self.tx.execute(
                "INSERT INTO users (id, name, password_hash, admin, created_at, daily_turns, \
                 daily_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &user.id,
                    &user.name,
                    &user.password_hash,
                    &user.admin,
                    &user.created_at,
                    &user.daily_turns,
                    &user.daily_tokens,
                ],
            )?;
            self.report.users += 1;
        }
        for token in &accounts.tokens {
            self.tx.execute(
                "INSERT INTO api_tokens (id, user_id, name, secret_sha256, created_at, last_used) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &token.id,
                    &token.user_id,
                    &token.name,
                    &token.secret_sha256,
                    &token.created_at,
                    &token.last_used,
                ],
            )?;
            self.report.tokens += 1;
        }
        self.tx.execute(
            "SELECT setval(pg_get_serial_sequence('users', 'id'), \
             greatest($1::bigint, (SELECT coalesce(max(id), 0) FROM users)) + 1, false)",
            &[&accounts.highest_id],
        )?;
        Ok(())
    }

    /// A share link under its own id.
    fn share(&mut self, share: &ExportedShare) -> Result<(), postgres::Error> {
        self.tx.execute(
            "INSERT INTO shares (id, owner, session_id, title, copy, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &share.id,
                &share.owner,
                &share.session_id,
                &share.title,
                &share.copy,
                &share.created_at,
            ],
        )?;
        self.report.shares += 1;
        Ok(())
    }

    fn blob(&mut self, blob: &ExportedBlob) -> Result<(), postgres::Error> {
        // Complete: its writer is no one's, and no start sweeps it.
        let key: i64 = self
            .tx
            .query_one(
                "INSERT INTO blobs (owner, sha256, size, created_at, writer) \
                 VALUES ($1, $2, $3, $4, '') RETURNING key",
                &[&blob.owner, &blob.sha256, &blob.size, &blob.created_at],
            )?
            .try_get(0)?;
        self.blob_keys.insert(blob.key, key);
        self.report.file_bytes += blob.size.max(0) as u64;
        Ok(())
    }

    fn text(&mut self, text: &ExportedText) -> Result<(), postgres::Error> {
        let Some(&key) = self.blob_keys.get(&text.blob) else {
            return Ok(());
        };
        self.tx.execute(
            "INSERT INTO blob_text (blob_key, state, note, chunks, chars) \
             VALUES ($1, $2, $3, $4, $5)",
            &[&key, &text.state, &text.note, &text.chunks, &text.chars],
        )?;
        for chunk in text.text_chunks.chunks(CHUNK_ROWS) {
            let numbers: Vec<i64> = chunk.iter().map(|(n, _, _)| *n).collect();
            let labels: Vec<&str> = chunk.iter().map(|(_, label, _)| label.as_str()).collect();
            let texts: Vec<&str> = chunk.iter().map(|(_, _, text)| text.as_str()).collect();
            self.tx.execute(
                "INSERT INTO text_chunks (blob_key, n, owner, label, text) \
                 SELECT $1, u.n, $2, u.l, u.t \
                 FROM unnest($3::bigint[], $4::text[], $5::text[]) AS u (n, l, t)",
                &[&key, &text.owner, &numbers, &labels, &texts],
            )?;
        }
        for chunk in text.vectors.chunks(CHUNK_ROWS) {
            let numbers: Vec<i64> = chunk.iter().map(|(n, _, _)| *n).collect();
            let models: Vec<&str> = chunk.iter().map(|(_, model, _)| model.as_str()).collect();
            let vectors: Vec<&[u8]> = chunk.iter().map(|(_, _, v)| v.as_slice()).collect();
            self.tx.execute(
                "INSERT INTO chunk_vectors (blob_key, n, model, vector) \
                 SELECT $1, u.n, u.m, u.v \
                 FROM unnest($2::bigint[], $3::text[], $4::bytea[]) AS u (n, m, v)",
                &[&key, &numbers, &models, &vectors],
            )?;
        }
        Ok(())
    }

    fn file(&mut self, file: &ExportedFile) -> Result<(), postgres::Error> {
        let Some(&blob) = self.blob_keys.get(&file.blob) else {
            return Ok(());
        };
        let key: i64 = self
            .tx
            .query_one(
                "INSERT INTO files (id, owner, blob_key, name, content_type, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING key",
                &[
                    &file.id,
                    &file.owner,
                    &blob,
                    &file.name,
                    &file.content_type,
                    &file.created_at,
                ],
            )?
            .try_get(0)?;
        self.tx.execute(
            "INSERT INTO file_uses (file_key, session_id) SELECT $1, u FROM unnest($2::text[]) u",
            &[&key, &file.uses],
        )?;
        self.report.files += 1;
        Ok(())
    }

    fn conversation(&mut self, c: &ExportedConversation) -> Result<(), postgres::Error> {
        let key: i64 = self
            .tx
            .query_one(
                "INSERT INTO sessions (id, owner, user_id, personality, title, created_at, \
                 updated_at, last_seq, turns, open_turn, open_text, first_seq, leaf, \
                 model, prompt_tokens, completion_tokens) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                 RETURNING key",
                &[
                    &c.id,
                    &c.owner,
                    &c.user_id,
                    &c.personality,
                    &c.title,
                    &c.created_at,
                    &c.updated_at,
                    &c.last_seq,
                    &c.turns,
                    &c.open_turn,
                    &c.open_text,
                    &c.first_seq,
                    &c.leaf,
                    &c.model,
                    &c.prompt_tokens,
                    &c.completion_tokens,
                ],
            )?
            .try_get(0)?;
        for chunk in c.events.chunks(CHUNK_ROWS) {
            let seqs: Vec<i64> = chunk.iter().map(|(seq, _, _)| *seq).collect();
            let bodies: Vec<&str> = chunk.iter().map(|(_, body, _)| body.as_str()).collect();
            let texts: Vec<Option<&str>> =
                chunk.iter().map(|(_, _, text)| text.as_deref()).collect();
            // With the owner's lexeme, as the journal's batches write it.
            self.tx.execute(
                "INSERT INTO events (session_key, seq, body, search) \
                 SELECT $1, s, b, to_tsvector('sparky_english', left(t, $5::bigint::int)) \
                 || array_to_tsvector(ARRAY['@' || $6::text]) \
                 FROM unnest($2::bigint[], $3::text[], $4::text[]) AS u (s, b, t)",
                &[&key, &seqs, &bodies, &texts, &SEARCH_TEXT_CHARS, &c.owner],
            )?;
        }
        self.report.events += c.events.len() as u64;
        for chunk in c.messages.chunks(CHUNK_ROWS) {
            let indexes: Vec<i64> = chunk.iter().map(|(i, _, _)| *i).collect();
            let turns: Vec<i64> = chunk.iter().map(|(_, turn, _)| *turn).collect();
            let roles: Vec<&str> = chunk.iter().map(|(_, _, m)| role_name(m.role)).collect();
            let contents: Vec<&str> = chunk.iter().map(|(_, _, m)| m.content.as_str()).collect();
            let calls: Vec<Option<String>> = chunk
                .iter()
                .map(|(_, _, m)| calls_to_json(&m.tool_calls))
                .collect();
            let call_ids: Vec<Option<&str>> = chunk
                .iter()
                .map(|(_, _, m)| m.tool_call_id.as_deref())
                .collect();
            let errors: Vec<bool> = chunk.iter().map(|(_, _, m)| m.is_error).collect();
            self.tx.execute(
                "INSERT INTO messages \
                 (session_key, idx, role, content, tool_calls, tool_call_id, is_error, turn_id) \
                 SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], \
                 $6::text[], $7::bool[], $8::bigint[]) ON CONFLICT DO NOTHING",
                &[
                    &key, &indexes, &roles, &contents, &calls, &call_ids, &errors, &turns,
                ],
            )?;
        }
        self.report.messages += c.messages.len() as u64;
        for chunk in c.notes.chunks(CHUNK_ROWS) {
            self.tx.execute(
                "INSERT INTO notes (session_key, text) SELECT $1, t \
                 FROM unnest($2::text[]) WITH ORDINALITY AS u (t, n) ORDER BY n",
                &[&key, &chunk],
            )?;
        }
        self.report.notes += c.notes.len() as u64;
        for chunk in c.turn_rows.chunks(CHUNK_ROWS) {
            let ids: Vec<i64> = chunk.iter().map(|t| t.turn_id).collect();
            let parents: Vec<i64> = chunk.iter().map(|t| t.parent).collect();
            let client_ids: Vec<Option<&str>> =
                chunk.iter().map(|t| t.client_id.as_deref()).collect();
            let opened: Vec<i64> = chunk.iter().map(|t| t.opened_seq).collect();
            let closed: Vec<Option<i64>> = chunk.iter().map(|t| t.closed_seq).collect();
            let closings: Vec<Option<&str>> = chunk.iter().map(|t| t.closing.as_deref()).collect();
            let resets: Vec<bool> = chunk.iter().map(|t| t.reset).collect();
            let created: Vec<i64> = chunk.iter().map(|t| t.created_at).collect();
            self.tx.execute(
                "INSERT INTO turns (session_key, turn_id, parent, client_id, opened_seq, \
                 closed_seq, closing, reset, created_at) \
                 SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bigint[], \
                 $6::bigint[], $7::text[], $8::bool[], $9::bigint[]) ON CONFLICT DO NOTHING",
                &[
                    &key,
                    &ids,
                    &parents,
                    &client_ids,
                    &opened,
                    &closed,
                    &closings,
                    &resets,
                    &created,
                ],
            )?;
        }
        self.report.conversations += 1;
        Ok(())
    }
}
