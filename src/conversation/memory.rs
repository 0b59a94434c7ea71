//! Semantic memory: [`SemanticGraph`], a [`GraphStore`] that adds embeddings to another one.
//!
//! - **Storing.** A stored node is embedded in the background, never in the turn that stored
//!   it: one worker thread (`embedder`) asks the store for nodes without a vector by the
//!   embedding model ([`GraphStore::unembedded`]), up to [`BATCH`] at a time, embeds them in
//!   one request and stores the vectors. The same loop backfills the facts stored before
//!   embeddings were turned on (or by another model). A failed request (server down, a `500`,
//!   a timeout, an answer that is not one vector per text) is tried again after a backoff that
//!   doubles from 1 s to 5 min; the facts wait in the store meanwhile, and recall keeps finding
//!   them by keywords.
//! - **Searching.** [`search`](GraphStore::search) (what `recall`, `graph_search` and each
//!   turn's memory lookup use) ranks by hybrid search: the keyword search of the store below
//!   (BM25) and the nearest vectors of the principal's own nodes (cosine, brute force), each
//!   up to [`CANDIDATES`], fused by reciprocal rank (`1 / (60 + rank)` summed over both lists).
//!   When the query cannot be embedded (the server is down, slow or answers garbage), the
//!   keyword results alone are the answer: a turn never fails because of embeddings.
//!
//! Everything stays per principal: the vectors are stored under their node's owner and a
//! search reads only the caller's.
//!
//! Depends on: `common::error`, `model::embed`, `model::error`, `store`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::Value;

use crate::common::error::{Error, Result};
use crate::model::embed::Embed;
use crate::model::error::ModelError;
use crate::store::{Edge, Edited, GraphStore, Neighbourhood, Node};

/// Nodes embedded in one request at most.
pub const BATCH: usize = 32;

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

/// The first wait after a failed embedding request; each later one doubles, up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between two failed embedding requests.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How often the worker looks for unembedded nodes when nothing woke it (nodes stored by
/// another path, or a wake-up lost to a full channel).
const IDLE_LOOK: Duration = Duration::from_secs(60);

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
        let (wake, woken) = crossbeam_channel::bounded(1);
        let worker = Worker {
            inner: inner.clone(),
            embedder: embedder.clone(),
            woken,
        };
        thread::Builder::new()
            .name("embedder".into())
            .spawn(move || worker.run())
            .map_err(|e| crate::common::error::Error::io("the embedding worker", e))?;
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

/// The background worker: embeds what has no vector, in batches, with backoff on failure.
struct Worker {
    inner: Arc<dyn GraphStore>,
    embedder: Arc<dyn Embed>,
    woken: Receiver<()>,
}

impl Worker {
    fn run(self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let wait = match self.embed_some() {
                // A full batch: there may be more at once.
                Ok(n) if n == BATCH => {
                    backoff = FIRST_BACKOFF;
                    continue;
                }
                Ok(_) => {
                    backoff = FIRST_BACKOFF;
                    IDLE_LOOK
                }
                Err(e) => {
                    let wait = backoff;
                    log::warn!(
                        "memory: embedding failed; trying again in {} s: {e}",
                        wait.as_secs()
                    );
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            // A wake-up during a backoff waits for the backoff's end: a server that just
            // failed is not asked again sooner because someone stored a fact.
            let deadline = std::time::Instant::now() + wait;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match self.woken.recv_timeout(left) {
                    Ok(()) if backoff == FIRST_BACKOFF => break,
                    Ok(()) => {}
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    /// Embeds one batch; how many nodes it held.
    fn embed_some(&self) -> std::result::Result<usize, BatchError> {
        let model = self.embedder.model();
        let pending = self
            .inner
            .unembedded(model, BATCH)
            .map_err(BatchError::Store)?;
        if pending.is_empty() {
            return Ok(0);
        }
        let texts: Vec<String> = pending.iter().map(|(_, text)| text.clone()).collect();
        let vectors = self.embedder.embed(&texts).map_err(BatchError::Embed)?;
        if vectors.len() != pending.len() {
            return Err(BatchError::Count {
                vectors: vectors.len(),
                texts: pending.len(),
            });
        }
        let rows: Vec<(i64, Vec<f32>)> = pending.iter().map(|(id, _)| *id).zip(vectors).collect();
        self.inner
            .store_embeddings(model, &rows)
            .map_err(BatchError::Store)?;
        log::debug!("memory: embedded {} nodes", rows.len());
        Ok(rows.len())
    }
}

/// Why a batch was not embedded, as the worker logs it.
enum BatchError {
    /// The store could not list the nodes without a vector, or keep their vectors.
    Store(Error),
    /// The embedding server failed.
    Embed(ModelError),
    /// The embedder returned another number of vectors than it was given texts.
    Count { vectors: usize, texts: usize },
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Store(e) => write!(f, "{e}"),
            BatchError::Embed(e) => write!(f, "{e}"),
            BatchError::Count { vectors, texts } => {
                write!(f, "{vectors} vectors for {texts} texts")
            }
        }
    }
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
