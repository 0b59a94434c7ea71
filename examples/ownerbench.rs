//! One principal's knowledge must not slow another's turns (issue 24, section 8): principal A
//! holds many large facts and searches them from 8 sockets at once; principal B has one fact,
//! and its turns are timed, with and without A's load.
//!
//! ```sh
//! cargo run --release --example ownerbench -- [FACTS] [FACT_KB] [TURNS] [postgres://…]
//! ```
//!
//! Defaults: 1,000 facts of 100 KB for A (100 MB of text), 40 turns of each kind for B, SQLite
//! in `$TMPDIR/sparky-ownerbench-…` (kept and reused by later runs with the same sizes and
//! schema: filling it takes a minute or two). With a PostgreSQL URL, that database is used
//! instead (it must be empty or hold an earlier run's graph). A server runs in this process on
//! `127.0.0.1:0` with two tokens, one per principal; B's turns are sent one after another over
//! one socket, each timed from the message sent to its answer received. B sends two kinds of
//! message:
//!
//! - `unrelated`: words that appear in no fact at all;
//! - `shared`: sixteen words, fifteen of which every one of A's facts holds (six of them are in
//!   B's fact too) and one only B's fact holds, so that B's memory lookup matches all of A's
//!   facts as well; the turn counts as *found* when the thought that lists what was recalled
//!   names B's own fact.
//!
//! Two phases: `idle` (A does nothing) and `attack` (A's 8 sockets each send 32 words its facts
//! hold, one turn after another, so that each turn's memory lookup ranks all of A's facts).
//! Prints one JSON line per phase and kind: B's turns, p50, p99 and max (ms), how many found
//! B's fact, and A's answered turns.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparky::Config;
use sparky::common::auth::Principal;
use sparky::model::offline::OfflineModel;
use sparky::store::{GraphStore, PostgresStore, SCHEMA_VERSION, SqliteStore};
use tungstenite::{Message, WebSocket};

const TOKEN_A: &str = "ownerbench-principal-a";
const TOKEN_B: &str = "ownerbench-principal-b";

/// Words of A's vocabulary; facts draw from it with a skew towards the first ones, so the
/// first hundred or so are in every fact.
const VOCABULARY: usize = 20_000;

/// A's sockets.
const ATTACKERS: usize = 8;

/// Words in each of A's messages.
const ATTACK_WORDS: usize = 32;

/// The word only B's fact holds.
const B_WORD: &str = "zanzibarlocker";

type Failure = Box<dyn std::error::Error + Send + Sync>;

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
    fn word(&mut self) -> usize {
        let uniform = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((uniform * uniform) * VOCABULARY as f64) as usize
    }
}

fn word(index: usize) -> String {
    format!("w{index:x}q")
}

/// B's fact: a few of the words every fact of A holds, and B's own word.
fn b_fact() -> String {
    let common: Vec<String> = (0..6).map(word).collect();
    format!("{} {B_WORD} is in the blue bag", common.join(" "))
}

/// Fills the graph with A's facts and B's one, unless an earlier run did; returns the id of
/// B's fact.
fn fill(graph: &dyn GraphStore, facts: usize, fact_kb: usize) -> Result<i64, Failure> {
    let (a, b) = (Principal::of_token(TOKEN_A), Principal::of_token(TOKEN_B));
    let marker = format!("ownerbench filled {facts} facts of {fact_kb} kb");
    let filled = !graph.search(a.as_str(), &marker, None, 1)?.is_empty()
        && graph.search(a.as_str(), &marker, None, 1)?[0].content == marker;
    if !filled {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let started = Instant::now();
        for n in 0..facts {
            let mut text = format!("fact{n}");
            while text.len() < fact_kb * 1000 {
                text.push(' ');
                text.push_str(&word(rng.word()));
            }
            graph.remember(a.as_str(), &text)?;
            if n % 100 == 99 {
                eprintln!("ownerbench: {} facts in {:?}", n + 1, started.elapsed());
            }
        }
        graph.remember(a.as_str(), &marker)?;
    } else {
        eprintln!("ownerbench: reusing the graph");
    }
    Ok(graph.remember(b.as_str(), &b_fact())?.0.id)
}

/// A WebSocket client on a new session of the server at `addr`.
struct Client {
    ws: WebSocket<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr, token: &str) -> Result<Self, Failure> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let (ws, _) = tungstenite::client(format!("ws://{addr}/ws"), stream)?;
        let mut client = Client { ws };
        client.send(json!({"type": "connect", "data": {"token": token}}))?;
        while client.next()?["type"] != "ready" {}
        Ok(client)
    }

    fn send(&mut self, value: Value) -> Result<(), Failure> {
        self.ws.send(Message::text(value.to_string()))?;
        Ok(())
    }

    fn next(&mut self) -> Result<Value, Failure> {
        loop {
            if let Message::Text(text) = self.ws.read()? {
                return Ok(serde_json::from_str(text.as_str())?);
            }
        }
    }

    /// Sends `text` and reads its turn to the end: the thoughts it showed, and whether it was
    /// answered.
    fn turn(&mut self, text: &str) -> Result<(Vec<String>, bool), Failure> {
        self.send(json!({"type": "message", "data": {"text": text}}))?;
        let mut thoughts = Vec::new();
        loop {
            let frame = self.next()?;
            match frame["type"].as_str() {
                Some("thought") => {
                    thoughts.push(frame["data"]["text"].as_str().unwrap_or("").to_owned())
                }
                Some("message") => return Ok((thoughts, true)),
                Some("error") => return Ok((thoughts, false)),
                _ => {}
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[index].as_secs_f64() * 100_000.0).round() / 100.0
}

/// A's message: 32 of the words every fact holds, different each time.
fn attack_text(rng: &mut Rng) -> String {
    let words: Vec<String> = (0..ATTACK_WORDS)
        .map(|_| word((rng.next() % 150) as usize))
        .collect();
    words.join(" ")
}

/// B's message of kind `kind`, the `n`th.
fn b_text(kind: &str, n: usize) -> String {
    match kind {
        "unrelated" => format!("hello there number{n}, how is it going today?"),
        _ => {
            let mine: Vec<String> = (0..6).rev().map(word).collect();
            let others: Vec<String> = (6..15).map(word).collect();
            format!(
                "where is {} {B_WORD} with {}",
                mine.join(" "),
                others.join(" ")
            )
        }
    }
}

/// Runs one phase: B's turns of each kind, with A attacking or not.
fn phase(addr: SocketAddr, name: &str, turns: usize, b_fact: i64) -> Result<(), Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    let attack_turns = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..if name == "attack" { ATTACKERS } else { 0 })
        .map(|i| {
            let (stop, count) = (stop.clone(), attack_turns.clone());
            thread::spawn(move || -> Result<(), String> {
                let mut client = Client::connect(addr, TOKEN_A).map_err(|e| e.to_string())?;
                let mut rng = Rng(42 + i as u64);
                while !stop.load(Ordering::Relaxed) {
                    let text = attack_text(&mut rng);
                    if client.turn(&text).map_err(|e| e.to_string())?.1 {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
        .collect();
    if !attackers.is_empty() {
        // Let the attack get going before measuring.
        thread::sleep(Duration::from_secs(1));
    }
    let mut b = Client::connect(addr, TOKEN_B)?;
    let mark = format!("#{b_fact} ");
    for kind in ["unrelated", "shared"] {
        let mut latencies = Vec::new();
        let mut found = 0;
        let started = Instant::now();
        let before = attack_turns.load(Ordering::Relaxed);
        for n in 0..turns {
            let sent = Instant::now();
            let (thoughts, answered) = b.turn(&b_text(kind, n))?;
            if !answered {
                return Err("a turn of B failed".into());
            }
            latencies.push(sent.elapsed());
            if thoughts.iter().any(|t| t.contains(&mark)) {
                found += 1;
            }
            thread::sleep(Duration::from_millis(20));
        }
        latencies.sort();
        let line = json!({
            "phase": name,
            "kind": kind,
            "b_turns": latencies.len(),
            "b_p50_ms": percentile(&latencies, 0.50),
            "b_p99_ms": percentile(&latencies, 0.99),
            "b_max_ms": percentile(&latencies, 1.0),
            "b_found": found,
            "a_turns": attack_turns.load(Ordering::Relaxed) - before,
            "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        });
        println!("{line}");
    }
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.join().map_err(|_| "an attacker panicked")??;
    }
    Ok(())
}

fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let facts: usize = args.next().map_or(Ok(1_000), |a| a.parse())?;
    let fact_kb: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let turns: usize = args.next().map_or(Ok(40), |a| a.parse())?;
    let url = args.next();
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "sparky-ownerbench-{facts}x{fact_kb}kb-v{SCHEMA_VERSION}"
    ));
    let b_fact = match &url {
        Some(url) => fill(&PostgresStore::connect(url, 2)?, facts, fact_kb)?,
        None => fill(&SqliteStore::open(&dir)?, facts, fact_kb)?,
    };
    let config = Config {
        addr: "127.0.0.1:0".parse()?,
        data_dir: dir,
        database_url: url,
        auth_tokens: vec![TOKEN_A.into(), TOKEN_B.into()],
        ..Config::default()
    };
    let listener = sparky::bind(config.addr)?;
    let handle = sparky::net::server::spawn_with(listener, config, Arc::new(OfflineModel))?;
    let addr = handle.addr();
    for name in ["idle", "attack"] {
        phase(addr, name, turns, b_fact)?;
    }
    handle.shutdown();
    Ok(())
}
