//! Recall benchmark for semantic memory: quality on a labelled set, then latency by size.
//!
//! ```sh
//! cargo run --release --example recallbench -- [FACTS] [QUERIES]
//! RECALLBENCH_POSTGRES=postgres://… cargo run --release --example recallbench   # on PostgreSQL
//! RECALLBENCH_VECTORS=brute|scan|graph cargo run --release --example recallbench  # one way only
//! ```
//!
//! 1. The labelled set `examples/data/recall-set.tsv` (a fact and a question about it in other
//!    words, per line) is stored for one principal; each question is asked with keyword search
//!    alone (BM25, what Sparky does without `--embedding-model`) and with hybrid search (BM25
//!    and cosine fused by reciprocal rank), and recall@1 and recall@5 are printed: how often the
//!    question's own fact is first, or among the first five.
//! 2. Synthetic facts are added for the same principal up to `FACTS` (default 100,000), and at
//!    1,000, 10,000 and `FACTS` facts the latency of the brute-force vector scan and of a whole
//!    hybrid search is measured over `QUERIES` questions (default 100): p50 and p99, after the
//!    first search of each size has read the vectors into the store's index and its graph is
//!    linked (the cold first search and the linking time are printed beside them). At each
//!    size the labelled questions are asked again among all those facts: the hybrid search's
//!    recall@5, and how many of the store's 50 nearest (what the hybrid search fuses) are the
//!    exact 50 nearest, computed here by brute force.
//!
//! Embeddings come from `HashEmbedder` (hashed character trigrams and word stems), in process,
//! so that the figures repeat exactly on any machine. A real embedding model knows synonyms that
//! it does not; its vectors are also larger (768 dimensions for nomic-embed-text against 256),
//! which makes the scan about three times slower per fact. The store is SQLite in memory, or the
//! (empty) PostgreSQL database `RECALLBENCH_POSTGRES` names. `RECALLBENCH_VECTORS` makes the
//! store search one way at every size (`brute`: the table read, as before the index; `scan`: the
//! copy in memory; `graph`: the HNSW graph), to measure where each is faster; by default it
//! chooses by size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sparky::conversation::memory::SemanticGraph;
use sparky::model::embed::{Embed, HashEmbedder};
use sparky::store::{GraphStore, PostgresStore, SqliteStore};

const OWNER: &str = "bench";
const MODEL: &str = "hash";

/// Embeds everything the store holds without a vector, in batches, synchronously.
fn embed_all(store: &dyn GraphStore, embedder: &HashEmbedder) {
    loop {
        let pending = store.unembedded(MODEL, 1_000).unwrap();
        if pending.is_empty() {
            return;
        }
        let texts: Vec<String> = pending.iter().map(|(_, t)| t.clone()).collect();
        let vectors = embedder.embed(&texts).unwrap();
        let rows: Vec<(i64, Vec<f32>)> = pending.iter().map(|(id, _)| *id).zip(vectors).collect();
        store.store_embeddings(MODEL, &rows).unwrap();
    }
}

/// The position of the node whose content is `fact` in `found`, if any.
fn rank(found: &[sparky::store::Node], fact: &str) -> Option<usize> {
    found.iter().position(|node| node.content == fact)
}

fn millis(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("FACTS and QUERIES are numbers"))
        .collect();
    let facts_wanted = args.first().copied().unwrap_or(100_000);
    let queries = args.get(1).copied().unwrap_or(100);

    let set_path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/recall-set.tsv");
    let pairs: Vec<(String, String)> = std::fs::read_to_string(set_path)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (fact, question) = line.split_once('\t').expect("fact<TAB>question");
            (fact.to_owned(), question.to_owned())
        })
        .collect();

    let (index_from, graph_from) = match std::env::var("RECALLBENCH_VECTORS").as_deref() {
        Ok("brute") => (usize::MAX, usize::MAX),
        Ok("scan") => (0, usize::MAX),
        Ok("graph") => (0, 0),
        _ => (1_000, 20_000),
    };
    let (store, settle): (Arc<dyn GraphStore>, Box<dyn Fn() -> bool>) =
        match std::env::var("RECALLBENCH_POSTGRES") {
            Ok(url) => {
                let store = Arc::new(PostgresStore::connect(&url, 4).unwrap());
                store.tune_vector_search(index_from, graph_from);
                let handle = store.clone();
                (
                    store,
                    Box::new(move || handle.settle_vector_indexes(Duration::from_secs(600))),
                )
            }
            Err(_) => {
                let store = Arc::new(SqliteStore::in_memory().unwrap());
                store.tune_vector_search(index_from, graph_from);
                let handle = store.clone();
                (
                    store,
                    Box::new(move || handle.settle_vector_indexes(Duration::from_secs(600))),
                )
            }
        };
    let embedder = HashEmbedder::new(MODEL);
    for (fact, _) in &pairs {
        store.remember(OWNER, fact).unwrap();
    }
    embed_all(store.as_ref(), &embedder);
    let hybrid = SemanticGraph::start(store.clone(), Arc::new(embedder.clone())).unwrap();

    println!("## Recall on the labelled set ({} pairs)\n", pairs.len());
    println!("| search | recall@1 | recall@5 |\n|---|---|---|");
    for (name, graph) in [
        ("keyword (BM25)", store.clone()),
        (
            "hybrid (BM25 + cosine, RRF k=60)",
            hybrid.clone() as Arc<dyn GraphStore>,
        ),
    ] {
        let (mut at1, mut at5) = (0, 0);
        for (fact, question) in &pairs {
            let found = graph.search(OWNER, question, Some("fact"), 5).unwrap();
            match rank(&found, fact) {
                Some(0) => {
                    at1 += 1;
                    at5 += 1;
                }
                Some(_) => at5 += 1,
                None => {}
            }
        }
        let n = pairs.len() as f64;
        println!(
            "| {name} | {:.2} ({at1}/{}) | {:.2} ({at5}/{}) |",
            at1 as f64 / n,
            pairs.len(),
            at5 as f64 / n,
            pairs.len()
        );
    }

    // Synthetic facts: eight to twelve words each from a small vocabulary of real words.
    let words: Vec<&str> = pairs
        .iter()
        .flat_map(|(fact, question)| fact.split(' ').chain(question.split(' ')))
        .collect();
    let mut rng = Rng(0x5eed);
    println!("\n## Latency by facts held by one principal ({queries} queries each)\n");
    println!(
        "| facts | first search (cold) | graph linked in | nearest p50 | nearest p99 | \
         hybrid search p50 | hybrid search p99 |\n|---|---|---|---|---|---|---|"
    );
    let mut held = pairs.len();
    // Every fact's vector, for the exact nearest the index is checked against.
    let mut vectors: Vec<(String, Vec<f32>)> = pairs
        .iter()
        .map(|(fact, _)| (fact.clone(), HashEmbedder::vector(fact)))
        .collect();
    let mut quality = Vec::new();
    for size in [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, facts_wanted] {
        if size < held {
            continue;
        }
        while held < size {
            let count = 8 + (rng.next() % 5) as usize;
            let fact: Vec<&str> = (0..count)
                .map(|_| words[(rng.next() % words.len() as u64) as usize])
                .collect();
            let fact = format!("{} #{held}", fact.join(" "));
            store.remember(OWNER, &fact).unwrap();
            vectors.push((fact.clone(), HashEmbedder::vector(&fact)));
            held += 1;
        }
        embed_all(store.as_ref(), &embedder);
        // The first search reads the vectors into the index; its graph links on its own thread.
        let started = Instant::now();
        let vector = HashEmbedder::vector(&pairs[0].1);
        store
            .nearest(OWNER, MODEL, &vector, Some("fact"), 50)
            .unwrap();
        let cold = started.elapsed();
        let started = Instant::now();
        assert!(settle(), "the vector index did not finish linking");
        let linked = started.elapsed();
        let (mut scans, mut searches) = (Vec::new(), Vec::new());
        for i in 0..queries {
            let question = &pairs[i % pairs.len()].1;
            let vector = HashEmbedder::vector(question);
            let started = Instant::now();
            store
                .nearest(OWNER, MODEL, &vector, Some("fact"), 50)
                .unwrap();
            scans.push(started.elapsed());
            let started = Instant::now();
            hybrid.search(OWNER, question, Some("fact"), 5).unwrap();
            searches.push(started.elapsed());
        }
        scans.sort();
        searches.sort();
        let (mut at5, mut agreed) = (0, 0);
        for (fact, question) in &pairs {
            let found = hybrid.search(OWNER, question, Some("fact"), 5).unwrap();
            at5 += usize::from(rank(&found, fact).is_some());
            let query = HashEmbedder::vector(question);
            let mut exact: Vec<(f32, &str)> = vectors
                .iter()
                .map(|(text, v)| {
                    (
                        v.iter().zip(&query).map(|(a, b)| a * b).sum(),
                        text.as_str(),
                    )
                })
                .collect();
            exact.sort_by(|a, b| b.0.total_cmp(&a.0));
            exact.truncate(50);
            let near = store
                .nearest(OWNER, MODEL, &query, Some("fact"), 50)
                .unwrap();
            agreed += near
                .iter()
                .filter(|(node, _)| exact.iter().any(|(_, text)| *text == node.content))
                .count();
        }
        quality.push(format!(
            "| {held} | {:.2} ({at5}/{}) | {:.3} ({agreed}/{}) |",
            at5 as f64 / pairs.len() as f64,
            pairs.len(),
            agreed as f64 / (50 * pairs.len()) as f64,
            50 * pairs.len()
        ));
        println!(
            "| {held} | {:.1} ms | {:.1} s | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            cold.as_secs_f64() * 1000.0,
            linked.as_secs_f64(),
            millis(&scans, 0.5),
            millis(&scans, 0.99),
            millis(&searches, 0.5),
            millis(&searches, 0.99)
        );
    }
    println!(
        "\n## The labelled questions among all the facts\n\n\
         | facts | hybrid recall@5 | nearest 50 that are the exact 50 |\n|---|---|---|"
    );
    for line in quality {
        println!("{line}");
    }
}
