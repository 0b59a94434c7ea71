//! Recall benchmark for semantic memory: quality on a labelled set, then latency by size.
//!
//! ```sh
//! cargo run --release --example recallbench -- [FACTS] [QUERIES]
//! ```
//!
//! 1. The labelled set `examples/data/recall-set.tsv` (a fact and a question about it in other
//!    words, per line) is stored for one principal; each question is asked with keyword search
//!    alone (BM25, what Sparky does without `--embedding-model`) and with hybrid search (BM25
//!    and cosine fused by reciprocal rank), and recall@1 and recall@5 are printed: how often the
//!    question's own fact is first, or among the first five.
//! 2. Synthetic facts are added for the same principal up to `FACTS` (default 100,000), and at
//!    1,000, 10,000 and `FACTS` facts the latency of the brute-force vector scan and of a whole
//!    hybrid search is measured over `QUERIES` questions (default 100).
//!
//! Embeddings come from `HashEmbedder` (hashed character trigrams and word stems), in process,
//! so that the figures repeat exactly on any machine. A real embedding model knows synonyms that
//! it does not; its vectors are also larger (768 dimensions for nomic-embed-text against 256),
//! which makes the scan about three times slower per fact. The store is SQLite in memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sparky::conversation::memory::SemanticGraph;
use sparky::model::embed::{Embed, HashEmbedder};
use sparky::store::{GraphStore, SqliteStore};

const OWNER: &str = "bench";
const MODEL: &str = "hash";

/// Embeds everything the store holds without a vector, in batches, synchronously.
fn embed_all(store: &SqliteStore, embedder: &HashEmbedder) {
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

    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let embedder = HashEmbedder::new(MODEL);
    for (fact, _) in &pairs {
        store.remember(OWNER, fact).unwrap();
    }
    embed_all(&store, &embedder);
    let hybrid = SemanticGraph::start(store.clone(), Arc::new(embedder.clone())).unwrap();

    println!("## Recall on the labelled set ({} pairs)\n", pairs.len());
    println!("| search | recall@1 | recall@5 |\n|---|---|---|");
    for (name, graph) in [
        ("keyword (BM25)", store.clone() as Arc<dyn GraphStore>),
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
        "| facts | vector scan p50 | vector scan p95 | hybrid search p50 | hybrid search p95 |\n\
         |---|---|---|---|---|"
    );
    let mut held = pairs.len();
    for size in [1_000, 10_000, facts_wanted] {
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
            held += 1;
        }
        embed_all(&store, &embedder);
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
        println!(
            "| {held} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            millis(&scans, 0.5),
            millis(&scans, 0.95),
            millis(&searches, 0.5),
            millis(&searches, 0.95)
        );
    }
}
