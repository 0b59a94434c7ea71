//! SQLite's side of `sparky migrate-store`: the accounts (users and their API tokens, not their
//! sign-ins), then every conversation, share link, node, edge and file the store holds, read on one reader connection and handed over one at a time as [`Exported`] things (a
//! file's bytes a piece at a time, so that no file is held whole).
//!
//! Depends on: `common::error`, `model`, `store`, `store::exported`, `store::plan`, `store::sqlite`.

use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;

use super::super::exported::{
    Exported, ExportedAccounts, ExportedBlob, ExportedConversation, ExportedEdge, ExportedFile,
    ExportedNode, ExportedPiece, ExportedShare, ExportedText, ExportedToken, ExportedTurn,
    ExportedUser,
};
use super::super::plan::{calls_from_json, role_from};
use super::{SqliteStore, store_error};
use crate::common::error::Result;
use crate::model::ChatMessage;

impl SqliteStore {
    /// Reads everything the store holds for `sparky migrate-store`, handing the accounts, then
    /// each conversation, then each share link, then each node, then each edge, then each blob (its pieces and text after it) and the
    /// files over it to `sink`, on one reader connection.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Store`] when the store cannot be read, or what `sink` returns.
    pub(in super::super) fn export(
        &self,
        sink: &mut dyn FnMut(&Exported) -> Result<()>,
    ) -> Result<()> {
        let connection = self.reader();
        let failed = |e: rusqlite::Error| store_error("read for the copy", e);
        let accounts = export_accounts(&connection).map_err(failed)?;
        sink(&Exported::Accounts(Box::new(accounts)))?;
        let keys: Vec<i64> = connection
            .prepare("SELECT key FROM sessions ORDER BY key")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(failed)?;
        for key in keys {
            let conversation = export_conversation(&connection, key).map_err(failed)?;
            sink(&Exported::Conversation(Box::new(conversation)))?;
        }
        export_shares(&connection, sink)?;
        let nodes: Vec<ExportedNode> = connection
            .prepare(
                "SELECT id, owner, kind, label, content, properties, created_at, updated_at \
                 FROM nodes ORDER BY id",
            )
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| {
                        let properties: String = row.get(5)?;
                        Ok(ExportedNode {
                            id: row.get(0)?,
                            owner: row.get(1)?,
                            kind: row.get(2)?,
                            label: row.get(3)?,
                            content: row.get(4)?,
                            properties: serde_json::from_str(&properties).unwrap_or(Value::Null),
                            created_at: row.get(6)?,
                            updated_at: row.get(7)?,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(failed)?;
        for node in nodes {
            sink(&Exported::Node(node))?;
        }
        let edges: Vec<ExportedEdge> = connection
            .prepare("SELECT source, target, kind, properties, created_at FROM edges ORDER BY id")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| {
                        let properties: String = row.get(3)?;
                        Ok(ExportedEdge {
                            source: row.get(0)?,
                            target: row.get(1)?,
                            kind: row.get(2)?,
                            properties: serde_json::from_str(&properties).unwrap_or(Value::Null),
                            created_at: row.get(4)?,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(failed)?;
        for edge in edges {
            sink(&Exported::Edge(edge))?;
        }
        export_files(&connection, sink)
    }
}

/// Every user with its API tokens, and the highest user id ever given.
fn export_accounts(connection: &Connection) -> rusqlite::Result<ExportedAccounts> {
    let users = connection
        .prepare(
            "SELECT id, name, password_hash, admin, created_at, daily_turns, daily_tokens \
             FROM users ORDER BY id",
        )?
        .query_map([], |row| {
            Ok(ExportedUser {
                id: row.get(0)?,
                name: row.get(1)?,
                password_hash: row.get(2)?,
                admin: row.get(3)?,
                created_at: row.get(4)?,
                daily_turns: row.get(5)?,
                daily_tokens: row.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let tokens = connection
        .prepare(
            "SELECT id, user_id, name, secret_sha256, created_at, last_used FROM api_tokens \
             ORDER BY user_id, id",
        )?
        .query_map([], |row| {
            Ok(ExportedToken {
                id: row.get(0)?,
                user_id: row.get(1)?,
                name: row.get(2)?,
                secret_sha256: row.get(3)?,
                created_at: row.get(4)?,
                last_used: row.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // `AUTOINCREMENT` remembers the highest id given, a removed user's too.
    let given: Option<i64> = connection
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'users'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let highest_id = users
        .iter()
        .map(|user| user.id)
        .chain(given)
        .max()
        .unwrap_or(0);
    Ok(ExportedAccounts {
        users,
        tokens,
        highest_id,
    })
}

/// Every share link, oldest first, one at a time.
fn export_shares(
    connection: &Connection,
    sink: &mut dyn FnMut(&Exported) -> Result<()>,
) -> Result<()> {
    let failed = |e: rusqlite::Error| store_error("read share links for the copy", e);
    let mut statement = connection
        .prepare("SELECT id, owner, session_id, title, copy, created_at FROM shares ORDER BY key")
        .map_err(failed)?;
    let mut rows = statement.query([]).map_err(failed)?;
    while let Some(row) = rows.next().map_err(failed)? {
        let share = ExportedShare {
            id: row.get(0).map_err(failed)?,
            owner: row.get(1).map_err(failed)?,
            session_id: row.get(2).map_err(failed)?,
            title: row.get(3).map_err(failed)?,
            copy: row.get(4).map_err(failed)?,
            created_at: row.get(5).map_err(failed)?,
        };
        sink(&Exported::Share(share))?;
    }
    Ok(())
}

/// Every complete blob, each followed by its pieces (one at a time), its text, and the files
/// over it with the conversations that use them.
fn export_files(
    connection: &Connection,
    sink: &mut dyn FnMut(&Exported) -> Result<()>,
) -> Result<()> {
    let failed = |e: rusqlite::Error| store_error("read files for the copy", e);
    let blobs: Vec<ExportedBlob> = connection
        .prepare(
            "SELECT key, owner, sha256, size, created_at FROM blobs \
             WHERE sha256 IS NOT NULL ORDER BY key",
        )
        .and_then(|mut statement| {
            statement
                .query_map([], |row| {
                    Ok(ExportedBlob {
                        key: row.get(0)?,
                        owner: row.get(1)?,
                        sha256: row.get(2)?,
                        size: row.get(3)?,
                        created_at: row.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(failed)?;
    let mut pieces = connection
        .prepare("SELECT n, data FROM blob_chunks WHERE blob_key = ?1 ORDER BY n")
        .map_err(failed)?;
    for blob in blobs {
        let key = blob.key;
        sink(&Exported::Blob(blob))?;
        let mut rows = pieces.query([key]).map_err(failed)?;
        while let Some(row) = rows.next().map_err(failed)? {
            let piece = ExportedPiece {
                blob: key,
                n: row.get(0).map_err(failed)?,
                data: row.get(1).map_err(failed)?,
            };
            sink(&Exported::Piece(piece))?;
        }
        if let Some(text) = export_text(connection, key).map_err(failed)? {
            sink(&Exported::Text(Box::new(text)))?;
        }
        for file in export_files_of(connection, key).map_err(failed)? {
            sink(&Exported::File(file))?;
        }
    }
    Ok(())
}

/// The text of blob `key`, when it has any.
fn export_text(connection: &Connection, key: i64) -> rusqlite::Result<Option<ExportedText>> {
    let Some(mut text) = connection
        .query_row(
            "SELECT t.state, t.note, t.chunks, t.chars, b.owner FROM blob_text t \
             JOIN blobs b ON b.key = t.blob_key WHERE t.blob_key = ?1",
            [key],
            |row| {
                Ok(ExportedText {
                    blob: key,
                    state: row.get(0)?,
                    note: row.get(1)?,
                    chunks: row.get(2)?,
                    chars: row.get(3)?,
                    owner: row.get(4)?,
                    ..ExportedText::default()
                })
            },
        )
        .optional()?
    else {
        return Ok(None);
    };
    text.text_chunks = connection
        .prepare("SELECT n, label, text FROM text_chunks WHERE blob_key = ?1 ORDER BY n")?
        .query_map([key], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    text.vectors = connection
        .prepare("SELECT n, model, vector FROM chunk_vectors WHERE blob_key = ?1 ORDER BY n")?
        .query_map([key], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(text))
}

/// The files over blob `key`, oldest first, with the conversations that use each.
fn export_files_of(connection: &Connection, key: i64) -> rusqlite::Result<Vec<ExportedFile>> {
    let mut files: Vec<(i64, ExportedFile)> = connection
        .prepare(
            "SELECT key, id, owner, name, content_type, created_at FROM files \
             WHERE blob_key = ?1 ORDER BY key",
        )?
        .query_map([key], |row| {
            Ok((
                row.get(0)?,
                ExportedFile {
                    id: row.get(1)?,
                    owner: row.get(2)?,
                    blob: key,
                    name: row.get(3)?,
                    content_type: row.get(4)?,
                    created_at: row.get(5)?,
                    uses: Vec::new(),
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut uses =
        connection.prepare("SELECT session_id FROM file_uses WHERE file_key = ?1 ORDER BY 1")?;
    for (file_key, file) in &mut files {
        file.uses = uses
            .query_map([*file_key], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(files.into_iter().map(|(_, file)| file).collect())
}

/// One conversation and everything in it, for the copy.
fn export_conversation(
    connection: &Connection,
    key: i64,
) -> rusqlite::Result<ExportedConversation> {
    let mut conversation = connection.query_row(
        "SELECT id, owner, user_id, personality, title, created_at, updated_at, last_seq, \
         turns, open_turn, open_text, first_seq, leaf, model, prompt_tokens, \
         completion_tokens FROM sessions WHERE key = ?1",
        [key],
        |row| {
            Ok(ExportedConversation {
                id: row.get(0)?,
                owner: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                user_id: row.get(2)?,
                personality: row.get(3)?,
                title: row.get(4)?,
                created_at: row.get(5)?,
                updated_at: row.get(6)?,
                last_seq: row.get(7)?,
                turns: row.get(8)?,
                open_turn: row.get(9)?,
                open_text: row.get(10)?,
                first_seq: row.get(11)?,
                leaf: row.get(12)?,
                model: row.get(13)?,
                prompt_tokens: row.get(14)?,
                completion_tokens: row.get(15)?,
                ..ExportedConversation::default()
            })
        },
    )?;
    conversation.events = connection
        .prepare(
            "SELECT e.seq, e.body, coalesce(t.text, e.search_text) FROM events e \
             LEFT JOIN event_text t ON t.rowid = e.rowid \
             WHERE e.session_key = ?1 ORDER BY e.seq",
        )?
        .query_map([key], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    conversation.messages = connection
        .prepare(
            "SELECT idx, role, content, tool_calls, tool_call_id, is_error, turn_id FROM messages \
             WHERE session_key = ?1 ORDER BY idx",
        )?
        .query_map([key], |row| {
            let role: String = row.get(1)?;
            Ok((
                row.get(0)?,
                row.get(6)?,
                ChatMessage {
                    role: role_from(&role),
                    content: row.get(2)?,
                    tool_calls: calls_from_json(row.get(3)?),
                    tool_call_id: row.get(4)?,
                    is_error: row.get(5)?,
                    images: Vec::new(),
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    conversation.turn_rows = connection
        .prepare(
            "SELECT turn_id, parent, client_id, opened_seq, closed_seq, closing, reset, \
             created_at FROM turns WHERE session_key = ?1 ORDER BY turn_id",
        )?
        .query_map([key], |row| {
            Ok(ExportedTurn {
                turn_id: row.get(0)?,
                parent: row.get(1)?,
                client_id: row.get(2)?,
                opened_seq: row.get(3)?,
                closed_seq: row.get(4)?,
                closing: row.get(5)?,
                reset: row.get(6)?,
                created_at: row.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    conversation.notes = connection
        .prepare("SELECT text FROM notes WHERE session_key = ?1 ORDER BY rowid")?
        .query_map([key], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(conversation)
}
