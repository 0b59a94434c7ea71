//! Knowledge-graph benchmark: `remember` throughput while filling a graph, then `recall`
//! latency on it (one million nodes by default).
//!
//! ```sh
//! cargo run --release --example graphbench -- [NODES] [QUERIES]
//! ```
//!
//! Facts are sentences of 8 to 12 words drawn from a 20,000-word vocabulary with a skew towards
//! common words, so posting lists look like text; queries are 2 or 3 words drawn evenly from the
//! vocabulary, as a person looks things up by distinctive words. Prints one JSON
//! line. The store goes in a temporary directory that is removed afterwards.

use std::time::{Duration, Instant};

use serde_json::json;
use sparky::store::{GraphStore, SqliteStore};

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A word index, skewed towards small indexes like word frequencies in text.
    fn word(&mut self, vocabulary: usize) -> usize {
        let uniform = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((uniform * uniform) * vocabulary as f64) as usize
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let queries: usize = args.next().map_or(Ok(2_000), |a| a.parse())?;
    let dir = std::env::temp_dir().join(format!("sparky-graphbench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqliteStore::open(&dir)?;

    let vocabulary: Vec<String> = (0..20_000).map(|i| format!("w{i:x}q")).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    for n in 0..nodes {
        let length = 8 + (rng.next() % 5) as usize;
        let mut words: Vec<&str> = (0..length)
            .map(|_| vocabulary[rng.word(vocabulary.len())].as_str())
            .collect();
        let tag = format!("fact{n}");
        words.push(&tag);
        store.remember("local", &words.join(" "))?;
    }
    let fill = started.elapsed();

    let mut latencies = Vec::with_capacity(queries);
    let mut hits = 0;
    for _ in 0..queries {
        let count = 2 + (rng.next() % 2) as usize;
        let query: Vec<&str> = (0..count)
            .map(|_| vocabulary[rng.word(vocabulary.len())].as_str())
            .collect();
        let started = Instant::now();
        hits += store.search("local", &query.join(" "), None, 5)?.len();
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let result = json!({
        "benchmark": "graph",
        "nodes": nodes,
        "remember_per_second": (nodes as f64 / fill.as_secs_f64()).round(),
        "fill_seconds": (fill.as_secs_f64() * 10.0).round() / 10.0,
        "recall_queries": queries,
        "recall_hits": hits,
        "recall_p50_ms": percentile(&latencies, 0.50),
        "recall_p99_ms": percentile(&latencies, 0.99),
        "recall_max_ms": percentile(&latencies, 1.0),
        "db_bytes": std::fs::metadata(dir.join("sparky.db")).map(|m| m.len()).unwrap_or(0),
    });
    println!("{result}");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
