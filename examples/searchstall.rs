//! One search must not stall everyone (issue 12, row 6): fills the knowledge graph with large
//! facts, then measures plain turns of other sessions while one session sends long messages
//! whose memory lookup is an expensive full-text search.
//!
//! ```sh
//! cargo run --release --example searchstall -- [FACTS] [FACT_KB] [SECONDS]
//! ```
//!
//! Defaults: 1,500 facts of 100 KB (150 MB of text), 20 s per attack. The graph goes in
//! `$TMPDIR/sparky-searchstall` and is reused by later runs with the same sizes (filling it
//! takes a minute or two). A server runs in this process on `127.0.0.1:0`; four victim
//! sessions send a short plain message every 20 ms and time each turn (message sent to answer
//! received). Three phases:
//!
//! - `baseline`: victims alone;
//! - `sequential`: one attacker session sends a 32-word message (31 words every fact holds and
//!   one no fact holds), waits for its answer, and sends the next;
//! - `flood`: the attacker sends such a message every 100 ms without waiting, so each one
//!   cancels the turn before it.
//!
//! Prints one JSON line per phase: victim turns, p50, p99 and max (ms), and the attacker's
//! answered turns and their p50 and max.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparky::Config;
use sparky::model::offline::OfflineModel;
use sparky::store::{GraphStore, SqliteStore};
use tungstenite::{Message, WebSocket};

/// Words of the vocabulary; facts draw from it with a skew towards the first ones.
const VOCABULARY: usize = 20_000;

/// Words in the attacker's message.
const ATTACK_WORDS: usize = 32;

/// A victim's plain message: none of its words is in the graph, so its own lookup is cheap.
const VICTIM_TEXT: &str = "hello there, how is it going today?";

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

/// Fills `dir` with `facts` facts of about `fact_kb` KB each, unless it already holds them.
fn fill(dir: &Path, facts: usize, fact_kb: usize) -> Result<(), Box<dyn std::error::Error>> {
    let marker = dir.join(format!("filled-{facts}x{fact_kb}kb"));
    if marker.exists() {
        eprintln!("searchstall: reusing the graph in {}", dir.display());
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dir);
    let store = SqliteStore::open(dir)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    for n in 0..facts {
        let mut text = format!("fact{n}");
        while text.len() < fact_kb * 1000 {
            text.push(' ');
            text.push_str(&word(rng.word()));
        }
        store.remember("local", &text)?;
        if n % 100 == 99 {
            eprintln!("searchstall: {} facts in {:?}", n + 1, started.elapsed());
        }
    }
    drop(store);
    std::fs::write(marker, b"")?;
    Ok(())
}

/// A WebSocket client on a new session of the server at `addr`.
struct Client {
    ws: WebSocket<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Self, Box<dyn std::error::Error>> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let (ws, _) = tungstenite::client(format!("ws://{addr}/ws"), stream)?;
        let mut client = Client { ws };
        client.send(json!({"type": "connect", "data": {}}))?;
        while client.next()?["type"] != "ready" {}
        Ok(client)
    }

    fn send(&mut self, value: Value) -> Result<(), Box<dyn std::error::Error>> {
        self.ws.send(Message::text(value.to_string()))?;
        Ok(())
    }

    fn say(&mut self, text: &str) -> Result<(), Box<dyn std::error::Error>> {
        self.send(json!({"type": "message", "data": {"text": text}}))
    }

    fn next(&mut self) -> Result<Value, Box<dyn std::error::Error>> {
        loop {
            if let Message::Text(text) = self.ws.read()? {
                return Ok(serde_json::from_str(text.as_str())?);
            }
        }
    }

    /// Reads until a frame closes a turn; true when it was an answer.
    fn finish_turn(&mut self) -> Result<bool, Box<dyn std::error::Error>> {
        loop {
            let frame = self.next()?;
            match frame["type"].as_str() {
                Some("message") => return Ok(true),
                Some("error") => return Ok(false),
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

/// The attacker's message: `ATTACK_WORDS` words, different each time. All but one are common
/// words that every fact holds; the last is in no fact, so the lookup's first query (facts with
/// every word) finds nothing and its second (facts with any word) ranks every fact.
fn attack_text(rng: &mut Rng) -> String {
    let mut words: Vec<String> = (1..ATTACK_WORDS)
        .map(|_| word((rng.next() % 200) as usize))
        .collect();
    words.push(format!("nowhere{}", rng.next() % 1000));
    words.join(" ")
}

/// Runs one phase for `seconds` and prints its line.
fn phase(
    addr: SocketAddr,
    name: &str,
    seconds: u64,
    victims: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let attacker = (name != "baseline").then(|| {
        let (stop, flood) = (stop.clone(), name == "flood");
        thread::spawn(move || -> Result<Vec<Duration>, String> {
            let mut client = Client::connect(addr).map_err(|e| e.to_string())?;
            // Reads a flood's frames as they come, so that the server never waits on us.
            if flood {
                client
                    .ws
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .map_err(|e| e.to_string())?;
            }
            let mut rng = Rng(42);
            let mut answered = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                client
                    .say(&attack_text(&mut rng))
                    .map_err(|e| e.to_string())?;
                if flood {
                    // Drain for 100 ms; a read timeout ends the slice.
                    while sent.elapsed() < Duration::from_millis(100) {
                        match client.ws.read() {
                            Ok(_) => {}
                            Err(tungstenite::Error::Io(e))
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                } else if client.finish_turn().map_err(|e| e.to_string())? {
                    answered.push(sent.elapsed());
                }
            }
            Ok(answered)
        })
    });
    // Let the attack start before measuring.
    if attacker.is_some() {
        thread::sleep(Duration::from_millis(500));
    }
    let measure_until = Instant::now() + Duration::from_secs(seconds);
    let handles: Vec<_> = (0..victims)
        .map(|_| {
            thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut client = Client::connect(addr).map_err(|e| e.to_string())?;
                let mut latencies = Vec::new();
                while Instant::now() < measure_until {
                    let sent = Instant::now();
                    client.say(VICTIM_TEXT).map_err(|e| e.to_string())?;
                    if !client.finish_turn().map_err(|e| e.to_string())? {
                        return Err("a victim's turn failed".into());
                    }
                    latencies.push(sent.elapsed());
                    thread::sleep(Duration::from_millis(20));
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.join().map_err(|_| "a victim panicked")??);
    }
    stop.store(true, Ordering::Relaxed);
    let mut attack = match attacker {
        Some(handle) => handle.join().map_err(|_| "the attacker panicked")??,
        None => Vec::new(),
    };
    latencies.sort();
    attack.sort();
    let line = json!({
        "phase": name,
        "victim_turns": latencies.len(),
        "victim_p50_ms": percentile(&latencies, 0.50),
        "victim_p99_ms": percentile(&latencies, 0.99),
        "victim_max_ms": percentile(&latencies, 1.0),
        "attacker_answers": attack.len(),
        "attacker_p50_ms": percentile(&attack, 0.50),
        "attacker_max_ms": percentile(&attack, 1.0),
        "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    println!("{line}");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let facts: usize = args.next().map_or(Ok(1_500), |a| a.parse())?;
    let fact_kb: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(20), |a| a.parse())?;
    let dir = std::env::temp_dir().join("sparky-searchstall");
    fill(&dir, facts, fact_kb)?;

    let config = Config {
        addr: "127.0.0.1:0".parse()?,
        data_dir: dir,
        // The attacker's flood is ten messages a second, well within the default rate limit.
        ..Config::default()
    };
    let listener = sparky::bind(config.addr)?;
    let handle = sparky::net::server::spawn_with(listener, config, Arc::new(OfflineModel))?;
    let addr = handle.addr();
    for name in ["baseline", "sequential", "flood"] {
        phase(addr, name, seconds, 4)?;
    }
    handle.shutdown();
    Ok(())
}
