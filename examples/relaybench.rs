//! Measures what relaying streamed frames to another instance adds (PROTOCOL.md section 5:
//! `message_delta` reaches every live connection of a conversation, whichever instance it is
//! on). Two instances in this process share one PostgreSQL database; a model streams one
//! piece every `--gap-ms`, each naming its number; a phone on A (which runs the turn) and a
//! laptop on B (which gets the pieces relayed through the database) note when each piece
//! arrives. Prints one JSON line: the added delay per piece (B's arrival minus A's) at p50,
//! p99 and max, and how many pieces arrived on each.
//!
//! ```text
//! cargo run --release --example relaybench -- --database postgres://… [--turns 20] [--pieces 50] [--gap-ms 10]
//! ```

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use sparky::common::config::Config;
use sparky::common::error::Result;
use sparky::model::{Conversation, ModelBackend, ModelReply, ReplySink, ToolSpec};
use tungstenite::{Message, WebSocket};

#[derive(Parser)]
struct Args {
    /// The PostgreSQL database both instances share (a fresh one is best).
    #[arg(long)]
    database: String,
    /// Turns to measure.
    #[arg(long, default_value_t = 20)]
    turns: usize,
    /// Pieces each answer streams.
    #[arg(long, default_value_t = 50)]
    pieces: usize,
    /// Time between two pieces, in milliseconds.
    #[arg(long, default_value_t = 10)]
    gap_ms: u64,
}

/// A model that streams `pieces` numbered pieces, one every `gap`.
struct Pacer {
    pieces: usize,
    gap: Duration,
}

impl ModelBackend for Pacer {
    fn name(&self) -> String {
        "pacer".into()
    }

    fn complete(
        &self,
        _conversation: Conversation<'_>,
        _tools: &[ToolSpec],
        sink: &mut dyn ReplySink,
    ) -> Result<ModelReply> {
        let mut text = String::new();
        for n in 0..self.pieces {
            let piece = format!("<{n}>");
            sink.delta(&piece);
            text.push_str(&piece);
            if sink.sleep(self.gap) {
                break;
            }
        }
        Ok(ModelReply {
            text,
            ..ModelReply::default()
        })
    }
}

fn open(addr: std::net::SocketAddr, connect: Value) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/ws"), stream).expect("handshake");
    ws.send(Message::text(
        json!({"type": "connect", "data": connect}).to_string(),
    ))
    .expect("send");
    ws
}

fn say(ws: &mut WebSocket<TcpStream>, text: &str) {
    let frame = json!({"type": "message", "data": {"text": text}});
    ws.send(Message::text(frame.to_string())).expect("send");
}

fn next(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        if let Message::Text(text) = ws.read().expect("read") {
            return serde_json::from_str(text.as_str()).expect("json");
        }
    }
}

/// Reads one turn's frames up to its `message`; returns when each piece number first
/// arrived (pieces coalesced into one frame arrive together).
fn pieces(ws: &mut WebSocket<TcpStream>, count: usize) -> Vec<Option<Instant>> {
    let mut seen = vec![None; count];
    loop {
        let frame = next(ws);
        match frame["type"].as_str() {
            Some("message_delta") => {
                let now = Instant::now();
                let text = frame["data"]["text"].as_str().unwrap_or_default();
                for number in text.split('<').filter_map(|p| p.strip_suffix('>')) {
                    if let Some(slot) = number.parse::<usize>().ok().and_then(|n| seen.get_mut(n)) {
                        slot.get_or_insert(now);
                    }
                }
            }
            Some("message") => return seen,
            _ => {}
        }
    }
}

fn main() {
    let args = Args::parse();
    let model = Arc::new(Pacer {
        pieces: args.pieces,
        gap: Duration::from_millis(args.gap_ms),
    });
    let start = |name: &str| {
        let config = Config {
            addr: "127.0.0.1:0".parse().expect("addr"),
            data_dir: std::env::temp_dir().join(format!("relaybench-{name}")),
            database_url: Some(args.database.clone()),
            rate_limit: None,
            ..Config::default()
        };
        let listener = sparky::bind(config.addr).expect("bind");
        sparky::net::server::spawn_with(listener, config, model.clone()).expect("start")
    };
    let (a, b) = (start("a"), start("b"));
    let mut phone = open(a.addr(), json!({}));
    let id = next(&mut phone)["data"]["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    next(&mut phone);
    // A conversation is stored with its first message: only then can B bring it back.
    say(&mut phone, "hello");
    pieces(&mut phone, args.pieces);
    let mut laptop = open(b.addr(), json!({"session_id": id}));
    next(&mut laptop);
    next(&mut laptop);
    let mut added: Vec<Duration> = Vec::new();
    let (mut on_a, mut on_b) = (0, 0);
    for turn in 0..args.turns {
        say(&mut phone, &format!("turn {turn}"));
        // Both read at once: each piece's arrival is noted as it comes.
        let count = args.pieces;
        let reader = std::thread::spawn(move || {
            let there = pieces(&mut laptop, count);
            (laptop, there)
        });
        let here = pieces(&mut phone, args.pieces);
        let there;
        (laptop, there) = reader.join().expect("the laptop's reader");
        for (at_a, at_b) in here.iter().zip(&there) {
            on_a += usize::from(at_a.is_some());
            on_b += usize::from(at_b.is_some());
            if let (Some(at_a), Some(at_b)) = (at_a, at_b) {
                added.push(at_b.saturating_duration_since(*at_a));
            }
        }
    }
    added.sort();
    let ms = |q: f64| {
        added
            .get(((added.len().max(1) - 1) as f64 * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        json!({
            "measure": "relay",
            "turns": args.turns,
            "pieces_per_turn": args.pieces,
            "gap_ms": args.gap_ms,
            "pieces_on_a": on_a,
            "pieces_on_b": on_b,
            "added_ms_p50": ms(0.5),
            "added_ms_p99": ms(0.99),
            "added_ms_max": ms(1.0),
        })
    );
}
