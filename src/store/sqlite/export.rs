//! SQLite's side of `sparky migrate-store`: every conversation, node and edge the store holds,
//! read on one reader connection and handed over one at a time as [`Exported`] things.
//!
//! Depends on: `common::error`, `model`, `store`, `store::exported`, `store::plan`, `store::sqlite`.

use rusqlite::Connection;
use serde_json::Value;

use super::super::exported::{
    Exported, ExportedConversation, ExportedEdge, ExportedNode, ExportedTurn,
};
use super::super::plan::{calls_from_json, role_from};
use super::{SqliteStore, store_error};
use crate::common::error::Result;
use crate::model::ChatMessage;

impl SqliteStore {
    /// Reads everything the store holds for `sparky migrate-store`, handing each conversation,
    /// then each node, then each edge to `sink`, on one reader connection.
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
        Ok(())
    }
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
            "SELECT e.seq, e.body, t.text FROM events e \
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
