//! [`GraphStore`] for every [`Backend`]: remembering a fact (an upsert), the full-text search
//! around the dialect's own matching, nodes and edges, a node's neighbourhood, editing,
//! deletion, embeddings and the nearest vectors, and moving nodes to a new owner.
//!
//! Depends on: `common::error`, `store`, `store::plan`, `store::plan::conversations`,
//! `store::plan::vectors`.

use serde_json::Value;

use super::conversations::count;
use super::vectors::Candidates;
use super::{
    Backend, Column, Counters, Db, NodeSearch, Param, Query, Row, Table, View, Write, best,
    label_for, node_columns, stored_similarity, unix_now, vector_bytes,
};
use crate::common::error::{Error, Result};
use crate::store::{Edge, Edited, GraphStore, Neighbourhood, Node};

const GET_NODE: &str = concat!(
    "SELECT ",
    node_columns!(),
    " FROM nodes WHERE id = ?1 AND owner = ?2"
);
const RECENT: &str = concat!(
    "SELECT ",
    node_columns!(),
    " FROM nodes WHERE owner = ?1 AND (CAST(?2 AS TEXT) IS NULL OR kind = ?2) \
     ORDER BY id DESC LIMIT ?3"
);
const ADD_EDGE: &str = "INSERT INTO edges (source, target, kind, properties, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (source, target, kind) DO NOTHING";
const GET_EDGE: &str = "SELECT id, source, target, kind, properties FROM edges \
     WHERE source = ?1 AND target = ?2 AND kind = ?3";
const NODE_EDGES: &str = "SELECT id, source, target, kind, properties FROM edges \
     WHERE source = ?1 OR target = ?1 ORDER BY id";
const DELETE_NODE: &str = "DELETE FROM nodes WHERE id = ?1 AND owner = ?2";
/// A node's vectors, dropped when its content changes: the worker embeds it again.
const DROP_EMBEDDINGS: &str = "DELETE FROM embeddings WHERE node_id = ?1";
const REASSIGN_EMBEDDINGS: &str = "UPDATE embeddings SET owner = ?2 WHERE owner = ?1";
const REASSIGN_NODES: &str = "UPDATE nodes SET owner = ?2 WHERE owner = ?1";
/// Nodes without a `?1` vector, oldest first, at most `?2`, with what their embedding is made
/// from: a fact's content, another node's label and content.
const UNEMBEDDED: &str = "SELECT id, \
     CASE WHEN kind = 'fact' THEN content ELSE label || '. ' || content END \
     FROM nodes WHERE NOT EXISTS (SELECT 1 FROM embeddings e \
     WHERE e.node_id = nodes.id AND e.model = ?1) ORDER BY id LIMIT ?2";
const VECTORS: &str = "SELECT e.node_id, e.vector FROM embeddings e \
     JOIN nodes n ON n.id = e.node_id \
     WHERE e.owner = ?1 AND e.model = ?2 AND (CAST(?3 AS TEXT) IS NULL OR n.kind = ?3)";

impl<B: Backend> GraphStore for B {
    fn remember(&self, owner: &str, content: &str) -> Result<(Node, bool)> {
        let now = unix_now();
        let label = label_for(content);
        let key = (B::SQL.fact_key)(content);
        let (node, new) = self.write("remember", Write::Upsert, &mut |db| {
            // One statement: the database stores a fact once however many ask at once.
            let fact = [
                Param::Text(owner),
                Param::Text(&label),
                Param::Text(content),
                key.clone(),
                Param::Int(now),
            ];
            let stored = db.row(B::SQL.remember, &fact, |row| {
                Ok((node_from_row(row)?, row.flag(7)?))
            })?;
            if let Some((node, new)) = stored {
                return Ok((Some(node), new));
            }
            let known = [Param::Text(owner), key.clone()];
            Ok((db.row(B::SQL.remembered, &known, node_from_row)?, false))
        })?;
        let node = node.ok_or_else(|| Error::store("a fact vanished as it was stored"))?;
        if new {
            Counters::of(self).node_added();
        }
        Ok((node, new))
    }

    fn search(
        &self,
        owner: &str,
        query: &str,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Node>> {
        let queries = (B::SQL.search_queries)(query);
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let Some(_turn) = Counters::of(self).search_turn(owner) else {
            return Ok(Vec::new());
        };
        self.read("search", View::Search, &mut |db| {
            let mut found: Vec<Node> = Vec::new();
            for words in &queries {
                if found.len() >= limit || !db.time_left()? {
                    break;
                }
                let search = NodeSearch {
                    query: words,
                    owner,
                    kind,
                    limit,
                    read: &Counters::of(self).searched_rows,
                };
                match db.search_nodes(&search, &mut found) {
                    Ok(()) => {}
                    Err(e) if B::out_of_time(&e) => {
                        log::debug!(
                            "graph: a search ran out of time; answering with {} nodes",
                            found.len()
                        );
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(found)
        })
    }

    fn recent(&self, owner: &str, kind: Option<&str>, limit: usize) -> Result<Vec<Node>> {
        self.read("list nodes", View::Statement, &mut |db| {
            let params = [
                Param::Text(owner),
                Param::OptText(kind),
                Param::Int(count(limit)),
            ];
            db.rows(RECENT, &params, node_from_row)
        })
    }

    fn add_node(
        &self,
        owner: &str,
        kind: &str,
        label: &str,
        content: &str,
        properties: &Value,
    ) -> Result<Node> {
        let now = unix_now();
        let key = (B::SQL.fact_key)(content);
        let id = self.write("add node", Write::Insert, &mut |db| {
            let node = [
                Param::Text(owner),
                Param::Text(kind),
                Param::Text(label),
                Param::Text(content),
                key.clone(),
                Param::Json(properties),
                Param::Int(now),
            ];
            db.row(B::SQL.add_node, &node, |row| row.int(0))
        })?;
        let id = id.ok_or_else(|| Error::store("add node: no id came back"))?;
        Counters::of(self).node_added();
        Ok(Node::created(id, kind, label, content, properties, now))
    }

    fn add_edge(
        &self,
        owner: &str,
        source: i64,
        target: i64,
        kind: &str,
        properties: &Value,
    ) -> Result<Edge> {
        let now = unix_now();
        let edge = self.write("add edge", Write::Upsert, &mut |db| {
            for id in [source, target] {
                if get_node(db, owner, id)?.is_none() {
                    return Ok(Err(id));
                }
            }
            let edge = [
                Param::Int(source),
                Param::Int(target),
                Param::Text(kind),
                Param::Json(properties),
                Param::Int(now),
            ];
            db.run(ADD_EDGE, &edge)?;
            let ends = [Param::Int(source), Param::Int(target), Param::Text(kind)];
            Ok(Ok(db.row(GET_EDGE, &ends, edge_from_row)?))
        })?;
        match edge {
            Ok(Some(edge)) => Ok(edge),
            Ok(None) => Err(Error::store("an edge vanished as it was stored")),
            Err(id) => Err(Error::store(format!("there is no node #{id}"))),
        }
    }

    fn get(&self, owner: &str, id: i64) -> Result<Option<Neighbourhood>> {
        self.read("get", View::Statement, &mut |db| {
            let Some(node) = get_node(db, owner, id)? else {
                return Ok(None);
            };
            let edges = db.rows(NODE_EDGES, &[Param::Int(id)], edge_from_row)?;
            let mut neighbours = Vec::with_capacity(edges.len());
            for edge in edges {
                let other = if edge.source == id {
                    edge.target
                } else {
                    edge.source
                };
                if let Some(node) = get_node(db, owner, other)? {
                    neighbours.push((edge, node));
                }
            }
            Ok(Some(Neighbourhood { node, neighbours }))
        })
    }

    fn edit(&self, owner: &str, id: i64, content: &str) -> Result<Edited> {
        let now = unix_now();
        let label = label_for(content);
        let key = (B::SQL.fact_key)(content);
        let edited = self.write("edit", Write::Upsert, &mut |db| {
            let Some(node) = get_node(db, owner, id)? else {
                return Ok(Edited::Missing);
            };
            if node.kind == "fact" {
                let known = [Param::Text(owner), key.clone()];
                let same = db.row(B::SQL.remembered, &known, node_from_row)?;
                if let Some(other) = same.filter(|other| other.id != id) {
                    return Ok(Edited::Duplicate(other));
                }
            }
            let edit = [
                Param::Int(id),
                Param::Text(owner),
                Param::Text(&label),
                Param::Text(content),
                key.clone(),
                Param::Int(now),
            ];
            let Some(node) = db.row(B::SQL.edit_node, &edit, node_from_row)? else {
                return Ok(Edited::Missing);
            };
            db.run(DROP_EMBEDDINGS, &[Param::Int(id)])?;
            Ok(Edited::Changed(node))
        })?;
        if let Edited::Changed(_) = edited {
            Counters::of(self).vectors().forget(owner, id, true);
        }
        Ok(edited)
    }

    fn delete(&self, owner: &str, id: i64) -> Result<bool> {
        let deleted = self.write("delete", Write::Delete, &mut |db| {
            Ok(db.run(DELETE_NODE, &[Param::Int(id), Param::Text(owner)])? > 0)
        })?;
        if deleted {
            Counters::of(self).node_deleted();
            Counters::of(self).vectors().forget(owner, id, false);
        }
        Ok(deleted)
    }

    fn node_count(&self) -> u64 {
        Counters::of(self).nodes()
    }

    fn unembedded(&self, model: &str, limit: usize) -> Result<Vec<(i64, String)>> {
        self.read("find facts to embed", View::Statement, &mut |db| {
            let params = [Param::Text(model), Param::Int(count(limit))];
            db.rows(UNEMBEDDED, &params, |row| Ok((row.int(0)?, row.text(1)?)))
        })
    }

    fn store_embeddings(&self, model: &str, vectors: &[(i64, Vec<f32>)]) -> Result<()> {
        let ids: Vec<i64> = vectors.iter().map(|(id, _)| *id).collect();
        let bytes: Vec<Vec<u8>> = vectors.iter().map(|(_, v)| vector_bytes(v)).collect();
        let table = Table {
            rows: ids.len(),
            columns: vec![
                Column::Ints(&ids),
                Column::Same(Param::Text(model)),
                Column::Blobs(&bytes),
            ],
        };
        self.write("store embeddings", Write::Replace, &mut |db| {
            db.write_table(B::SQL.store_embeddings, &table)
        })?;
        Counters::of(self).vectors().stored(model, &ids);
        Ok(())
    }

    fn nearest(
        &self,
        owner: &str,
        model: &str,
        query: &[f32],
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Node, f32)>> {
        let indexes = Counters::of(self).vectors();
        let asked = Nearest {
            sql: B::SQL.nodes_with_vectors,
            owner,
            model,
            query,
            kind,
        };
        // One snapshot: the index's fingerprint and what it reads to catch up agree.
        self.read("semantic search", View::Snapshot, &mut |db| {
            match indexes.candidates(db, owner, model, query, kind, limit)? {
                Candidates::Scan => scan(db, &asked, limit),
                Candidates::Found(ids) => {
                    // Scored again from the stored vector, under the owner's name: the index
                    // is a copy, the table the truth.
                    let (found, missing) = read_back(db, &asked, &ids)?;
                    // Gone from the table (another process deleted it or dropped its vector):
                    // gone from the copy too.
                    for id in missing {
                        indexes.forget(owner, id, false);
                    }
                    Ok(found)
                }
            }
        })
    }

    fn reassign_nodes(&self, old: &str, new: &str) -> Result<u64> {
        let moved = self.write("reassign nodes", Write::Owners, &mut |db| {
            let owners = [Param::Text(old), Param::Text(new)];
            db.run(REASSIGN_EMBEDDINGS, &owners)?;
            db.run(REASSIGN_NODES, &owners)
        })?;
        for owner in [old, new] {
            Counters::of(self).vectors().drop_owner(owner);
        }
        Ok(moved)
    }
}

/// A node as [`node_columns`] reads it.
pub(crate) fn node_from_row<E>(row: &dyn Row<Error = E>) -> Result<Node, E> {
    Ok(Node {
        id: row.int(0)?,
        kind: row.text(1)?,
        label: row.text(2)?,
        content: row.text(3)?,
        properties: row.json(4)?,
        created_at: row.int(5)?,
        updated_at: row.int(6)?,
    })
}

fn edge_from_row<E>(row: &dyn Row<Error = E>) -> Result<Edge, E> {
    Ok(Edge {
        id: row.int(0)?,
        source: row.int(1)?,
        target: row.int(2)?,
        kind: row.text(3)?,
        properties: row.json(4)?,
    })
}

/// Nodes and their similarity to a query, best first.
type Scored = Vec<(Node, f32)>;

/// What a semantic search asks for.
struct Nearest<'a> {
    /// The dialect's [`Dialect::nodes_with_vectors`].
    ///
    /// [`Dialect::nodes_with_vectors`]: super::Dialect::nodes_with_vectors
    sql: &'static str,
    owner: &'a str,
    model: &'a str,
    query: &'a [f32],
    kind: Option<&'a str>,
}

/// The brute-force search: every one of the owner's vectors by the model read and scored.
fn scan<E>(db: &mut dyn Db<Error = E>, asked: &Nearest<'_>, limit: usize) -> Result<Scored, E> {
    let Nearest {
        owner,
        model,
        query,
        kind,
        ..
    } = *asked;
    let mut scored: Vec<(i64, f32)> = Vec::new();
    let params = [Param::Text(owner), Param::Text(model), Param::OptText(kind)];
    let vectors = Query {
        sql: VECTORS,
        params: &params,
    };
    db.each(vectors, &mut |row| {
        if let Some(similarity) = stored_similarity(query, row.bytes(1)?) {
            scored.push((row.int(0)?, similarity));
        }
        Ok(true)
    })?;
    let ids: Vec<i64> = best(scored.into_iter(), limit)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    Ok(read_back(db, asked, &ids)?.0)
}

/// The owner's nodes among `ids` (of the kind asked for, when given) that have a vector by the
/// model, scored by it against the query, best first, in one statement; and the ids that have
/// no such node or vector in the table.
fn read_back<E>(
    db: &mut dyn Db<Error = E>,
    asked: &Nearest<'_>,
    ids: &[i64],
) -> Result<(Scored, Vec<i64>), E> {
    let Nearest {
        sql,
        owner,
        model,
        query,
        kind,
    } = *asked;
    let mut found = Vec::with_capacity(ids.len());
    let mut present = Vec::with_capacity(ids.len());
    if !ids.is_empty() {
        let params = [Param::Ints(ids), Param::Text(owner), Param::Text(model)];
        let nodes = Query {
            sql,
            params: &params,
        };
        db.each(nodes, &mut |row| {
            let node = node_from_row(row)?;
            present.push(node.id);
            if let Some(similarity) = stored_similarity(query, row.bytes(7)?)
                && kind.is_none_or(|kind| node.kind == kind)
            {
                found.push((node, similarity));
            }
            Ok(true)
        })?;
    }
    found.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.id.cmp(&a.0.id)));
    let missing = ids
        .iter()
        .filter(|id| !present.contains(id))
        .copied()
        .collect();
    Ok((found, missing))
}

/// One of `owner`'s nodes, or `None`.
fn get_node<E>(db: &mut dyn Db<Error = E>, owner: &str, id: i64) -> Result<Option<Node>, E> {
    db.row(
        GET_NODE,
        &[Param::Int(id), Param::Text(owner)],
        node_from_row,
    )
}
