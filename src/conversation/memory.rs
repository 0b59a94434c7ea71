//! Semantic memory: [`SemanticGraph`], a [`GraphStore`] that adds embeddings to another one.
//!
//! - **Storing.** A stored node is embedded in the background, never in the turn that stored
//!   it: one worker thread (`embedder`, `model/backfill.rs`) asks the store for nodes without a
//!   vector by the embedding model ([`GraphStore::unembedded`]), a batch at a time, embeds
//!   them in one request and stores the vectors. The same loop backfills the facts stored
//!   before embeddings were turned on (or by another model). A failed request is tried again
//!   after a backoff; the facts wait in the store meanwhile, and recall keeps finding them by
//!   keywords.
//! - **Searching.** [`search`](GraphStore::search) (what `recall`, `graph_search` and each
//!   turn's memory lookup use) ranks by hybrid search: the keyword search of the store below
//!   (BM25) and the nearest vectors of the principal's own nodes (cosine, the store's index), each
//!   up to [`CANDIDATES`], fused by reciprocal rank (`1 / (60 + rank)` summed over both lists).
//!   When the query cannot be embedded (the server is down, slow or answers garbage), the
//!   keyword results alone are the answer: a turn never fails because of embeddings.
//!
//! Everything stays per principal: the vectors are stored under their node's owner and a
//! search reads only the caller's.
//!
//! Depends on: `common::error`, `model::backfill`, `model::embed`, `store`.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::Sender;
use serde_json::Value;

use crate::common::error::Result;
use crate::model::backfill::{self, BATCH, BatchError};
use crate::model::embed::Embed;
use crate::store::{Edge, Edited, GraphStore, Neighbourhood, Node};

/// Results taken from each of the keyword and the vector search before they are fused.
pub const CANDIDATES: usize = 50;

/// The `k` of reciprocal rank fusion: a result's score is the sum of `1 / (k + rank)` over
/// the lists it is in (rank 1 first). 60 is the value of the paper that introduced it
/// (Cormack, Clarke and Büttcher, 2009) and what most hybrid search engines use.
pub const RRF_K: f64 = 60.0;

/// Nodes whose vector is less similar to the query than this (cosine) are no candidates:
/// nearly orthogonal ones say nothing about it, and without this floor every search would
/// return something.
pub const MIN_SIMILARITY: f32 = 0.1;

/// A knowledge graph whose nodes are also found by meaning. Cheap to share (`Arc`); the
/// embedding worker stops when the last one is dropped.
pub struct SemanticGraph {
    inner: Arc<dyn GraphStore>,
    embedder: Arc<dyn Embed>,
    /// Wakes the worker: something was stored. Bounded at one: a wake-up pending is enough.
    wake: Sender<()>,
}

impl std::fmt::Debug for SemanticGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemanticGraph")
            .field("model", &self.embedder.model())
            .finish_non_exhaustive()
    }
}

impl SemanticGraph {
    /// `inner` with embeddings by `embedder`, and the worker that embeds what `inner` holds
    /// without a vector (at once: the backfill) and whatever is stored from now on.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Io`] when the worker thread cannot be started.
    pub fn start(inner: Arc<dyn GraphStore>, embedder: Arc<dyn Embed>) -> Result<Arc<Self>> {
        let wake = {
            let (inner, embedder) = (inner.clone(), embedder.clone());
            let thread = std::thread::Builder::new().name("embedder".into());
            backfill::start(thread, "memory", move || {
                embed_some(inner.as_ref(), embedder.as_ref())
            })?
        };
        Ok(Arc::new(SemanticGraph {
            inner,
            embedder,
            wake,
        }))
    }

    /// Tells the worker that there is something to embed.
    fn stored(&self) {
        let _ = self.wake.try_send(());
    }

    /// The query's vector, or `None` (said in the log) when it cannot be had.
    fn embed_query(&self, query: &str) -> Option<Vec<f32>> {
        match self.embedder.embed(&[query.to_owned()]) {
            Ok(mut vectors) => vectors.pop(),
            Err(e) => {
                log::warn!("memory: searching by keywords alone; the query was not embedded: {e}");
                None
            }
        }
    }
}

/// Fuses ranked lists by reciprocal rank ([`RRF_K`]): the `limit` nodes with the highest sum
/// of `1 / (k + rank)`, best first; ties go to the node found first.
pub fn fuse(lists: &[Vec<Node>], limit: usize) -> Vec<Node> {
    let mut scores: HashMap<i64, (f64, usize)> = HashMap::new();
    let mut nodes: Vec<Node> = Vec::new();
    for list in lists {
        for (rank, node) in list.iter().enumerate() {
            let score = 1.0 / (RRF_K + rank as f64 + 1.0);
            match scores.get_mut(&node.id) {
                Some((total, _)) => *total += score,
                None => {
                    scores.insert(node.id, (score, nodes.len()));
                    nodes.push(node.clone());
                }
            }
        }
    }
    let mut ranked: Vec<(f64, usize)> = scores.into_values().collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked
        .into_iter()
        .take(limit)
        .map(|(_, at)| nodes[at].clone())
        .collect()
}

impl GraphStore for SemanticGraph {
    fn remember(&self, owner: &str, content: &str) -> Result<(Node, bool)> {
        let stored = self.inner.remember(owner, content)?;
        if stored.1 {
            self.stored();
        }
        Ok(stored)
    }

    fn search(
        &self,
        owner: &str,
        query: &str,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Node>> {
        let keywords = self
            .inner
            .search(owner, query, kind, limit.max(CANDIDATES))?;
        let Some(vector) = self.embed_query(query) else {
            return Ok(keywords.into_iter().take(limit).collect());
        };
        let model = self.embedder.model();
        let semantic: Vec<Node> = self
            .inner
            .nearest(owner, model, &vector, kind, limit.max(CANDIDATES))?
            .into_iter()
            .filter(|(_, similarity)| *similarity >= MIN_SIMILARITY)
            .map(|(node, _)| node)
            .collect();
        Ok(fuse(&[keywords, semantic], limit))
    }

    fn recent(&self, owner: &str, kind: Option<&str>, limit: usize) -> Result<Vec<Node>> {
        self.inner.recent(owner, kind, limit)
    }

    fn add_node(
        &self,
        owner: &str,
        kind: &str,
        label: &str,
        content: &str,
        properties: &Value,
    ) -> Result<Node> {
        let node = self
            .inner
            .add_node(owner, kind, label, content, properties)?;
        self.stored();
        Ok(node)
    }

    fn add_edge(
        &self,
        owner: &str,
        source: i64,
        target: i64,
        kind: &str,
        properties: &Value,
    ) -> Result<Edge> {
        self.inner.add_edge(owner, source, target, kind, properties)
    }

    fn get(&self, owner: &str, id: i64) -> Result<Option<Neighbourhood>> {
        self.inner.get(owner, id)
    }

    /// The store drops the node's vectors; the worker is woken to embed its new content.
    fn edit(&self, owner: &str, id: i64, content: &str) -> Result<Edited> {
        let edited = self.inner.edit(owner, id, content)?;
        if matches!(edited, Edited::Changed(_)) {
            self.stored();
        }
        Ok(edited)
    }

    fn delete(&self, owner: &str, id: i64) -> Result<bool> {
        self.inner.delete(owner, id)
    }

    fn node_count(&self) -> u64 {
        self.inner.node_count()
    }

    fn reassign_nodes(&self, old: &str, new: &str) -> Result<u64> {
        self.inner.reassign_nodes(old, new)
    }

    fn unembedded(&self, model: &str, limit: usize) -> Result<Vec<(i64, String)>> {
        self.inner.unembedded(model, limit)
    }

    fn store_embeddings(&self, model: &str, vectors: &[(i64, Vec<f32>)]) -> Result<()> {
        self.inner.store_embeddings(model, vectors)
    }

    fn nearest(
        &self,
        owner: &str,
        model: &str,
        query: &[f32],
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Node, f32)>> {
        self.inner.nearest(owner, model, query, kind, limit)
    }
}

/// Embeds one batch of nodes without a vector; how many it held.
fn embed_some(graph: &dyn GraphStore, embedder: &dyn Embed) -> Result<usize, BatchError> {
    let model = embedder.model();
    let pending = graph.unembedded(model, BATCH).map_err(BatchError::Store)?;
    if pending.is_empty() {
        return Ok(0);
    }
    let rows = backfill::embed_all(embedder, pending)?;
    graph
        .store_embeddings(model, &rows)
        .map_err(BatchError::Store)?;
    log::debug!("memory: embedded {} nodes", rows.len());
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: i64) -> Node {
        Node::created(id, "fact", "", "", &Value::Null, 0)
    }

    #[test]
    fn reciprocal_rank_fusion_rewards_agreement() {
        let keywords = vec![node(1), node(2), node(3)];
        let semantic = vec![node(3), node(4)];
        let fused: Vec<i64> = fuse(&[keywords, semantic], 3)
            .iter()
            .map(|n| n.id)
            .collect();
        // 3: 1/63 + 1/61; 1: 1/61; 4: 1/62; 2: 1/62 (found first, so before 4).
        assert_eq!(fused, vec![3, 1, 2]);
    }
}
