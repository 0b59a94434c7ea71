//! Measures what crosses between two Sparky instances sharing one PostgreSQL database, and
//! prints one JSON line per measure (`scripts/cluster-bench.sh` runs it).
//!
//! ```text
//! cargo run --release --example clusterbench -- --a ws://A/ws --b ws://B/ws delivery --rounds 200
//! cargo run --release --example clusterbench -- --a ws://A/ws --b ws://B/ws cancel --rounds 100
//! cargo run --release --example clusterbench -- --a ws://A/ws --b ws://B/ws takeover --pid PID_OF_A
//! ```
//!
//! - `delivery`: a phone on A and a laptop on B share a conversation; the phone sends plain
//!   messages, and each answer's `message` event reaches the phone (from A, which runs the turn)
//!   and then the laptop (through the database and B). The figure is the time between the two.
//! - `cancel`: the phone starts a minute-long tool on A; the laptop sends `cancel` through B.
//!   The figure is the time from sending it to the laptop's `status cancelled`.
//! - `takeover`: the phone starts a minute-long tool on A; A is killed (`kill -9 PID`). The
//!   figure is the time from the kill to the laptop's `error` for that turn (B took the lease).
//!
//! Every read has a timeout (`--timeout-ms`), so a stuck server fails the run instead of hanging.

use std::net::TcpStream;
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<TcpStream>;

#[derive(Debug, Parser)]
#[command(about = "Cross-instance latencies of Sparky on one PostgreSQL database")]
struct Cli {
    /// The instance that runs the turns.
    #[arg(long)]
    a: String,
    /// The other instance.
    #[arg(long)]
    b: String,
    /// Bound on every read, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    #[command(subcommand)]
    measure: Measure,
}

#[derive(Debug, Subcommand)]
enum Measure {
    /// An event's way from A's client to B's.
    Delivery {
        /// Messages sent.
        #[arg(long, default_value_t = 200)]
        rounds: usize,
    },
    /// A cancel through B of a turn running on A.
    Cancel {
        /// Turns cancelled.
        #[arg(long, default_value_t = 100)]
        rounds: usize,
    },
    /// B closing the turn of A after `kill -9`.
    Takeover {
        /// A's process id.
        #[arg(long)]
        pid: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let timeout = Duration::from_millis(cli.timeout_ms);
    match run(&cli, timeout) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("clusterbench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli, timeout: Duration) -> Result<Value, String> {
    let mut phone = open(&cli.a, timeout)?;
    let id = connect(&mut phone, json!({}))?;
    say(&mut phone, "hello")?;
    let last = read_until(&mut phone, |f| f["type"] == "message")?.0["seq"]
        .as_u64()
        .unwrap_or(0);
    let mut laptop = open(&cli.b, timeout)?;
    connect(&mut laptop, json!({"session_id": id, "last_seq": last}))?;
    match cli.measure {
        Measure::Delivery { rounds } => delivery(phone, laptop, rounds),
        Measure::Cancel { rounds } => cancel(phone, laptop, rounds),
        Measure::Takeover { pid } => takeover(phone, laptop, pid),
    }
}

fn delivery(mut phone: Socket, laptop: Socket, rounds: usize) -> Result<Value, String> {
    // The laptop reads on a thread of its own, so that both arrivals are timed as they happen.
    let (arrivals, arrived) = mpsc::channel::<(u64, Instant)>();
    let reader = thread::spawn(move || -> Result<(), String> {
        let mut laptop = laptop;
        for _ in 0..rounds {
            let (frame, at) = read_until(&mut laptop, |f| f["type"] == "message")?;
            let _ = arrivals.send((frame["seq"].as_u64().unwrap_or(0), at));
        }
        Ok(())
    });
    let mut lags = Vec::with_capacity(rounds);
    for round in 0..rounds {
        say(&mut phone, &format!("hello {round}"))?;
        let (frame, at_phone) = read_until(&mut phone, |f| f["type"] == "message")?;
        let (seq, at_laptop) = arrived
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "the laptop got no answer".to_owned())?;
        if Some(seq) != frame["seq"].as_u64() {
            return Err(format!(
                "the laptop got event {seq}, the phone {}",
                frame["seq"]
            ));
        }
        lags.push(at_laptop.saturating_duration_since(at_phone));
    }
    reader
        .join()
        .map_err(|_| "the reader panicked".to_owned())??;
    Ok(summary("delivery", &mut lags))
}

fn cancel(mut phone: Socket, mut laptop: Socket, rounds: usize) -> Result<Value, String> {
    let mut took = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        say(&mut phone, r#"/tool wait {"ms": 60000}"#)?;
        read_until(&mut laptop, |f| f["type"] == "tool_use")?;
        let sent = Instant::now();
        send(&mut laptop, json!({"type": "cancel", "data": {}}))?;
        let (_, at) = read_until(&mut laptop, |f| {
            f["type"] == "status" && f["data"]["code"] == "cancelled"
        })?;
        took.push(at.duration_since(sent));
        read_until(&mut phone, |f| f["type"] == "status")?;
    }
    Ok(summary("cancel", &mut took))
}

fn takeover(mut phone: Socket, mut laptop: Socket, pid: u32) -> Result<Value, String> {
    say(&mut phone, r#"/tool wait {"ms": 60000}"#)?;
    read_until(&mut laptop, |f| f["type"] == "tool_use")?;
    let killed = Instant::now();
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    if !status.success() {
        return Err(format!("kill -9 {pid} failed"));
    }
    let (frame, at) = read_until(&mut laptop, |f| f["type"] == "error")?;
    let mut took = vec![at.duration_since(killed)];
    let mut line = summary("takeover", &mut took);
    line["code"] = frame["data"]["code"].clone();
    Ok(line)
}

/// A JSON line: the measure, how many, and milliseconds at p50, p99 and max.
fn summary(measure: &str, figures: &mut [Duration]) -> Value {
    figures.sort();
    let at = |q: f64| {
        let index = ((figures.len() as f64 * q).ceil() as usize).clamp(1, figures.len()) - 1;
        (figures[index].as_secs_f64() * 1e5).round() / 100.0
    };
    json!({
        "measure": measure,
        "count": figures.len(),
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": at(1.0),
    })
}

fn open(url: &str, timeout: Duration) -> Result<Socket, String> {
    let host = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| format!("{url:?} is not a ws:// URL"))?;
    let stream = TcpStream::connect(host).map_err(|e| format!("connect {host}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| format!("socket: {e}"))?;
    tungstenite::client(url, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| format!("handshake with {url}: {e}"))
}

fn send(ws: &mut Socket, frame: Value) -> Result<(), String> {
    ws.send(Message::text(frame.to_string()))
        .map_err(|e| format!("send: {e}"))
}

fn say(ws: &mut Socket, text: &str) -> Result<(), String> {
    send(ws, json!({"type": "message", "data": {"text": text}}))
}

/// Sends `connect` and reads until `ready`; returns the session id.
fn connect(ws: &mut Socket, data: Value) -> Result<String, String> {
    send(ws, json!({"type": "connect", "data": data}))?;
    let (info, _) = read_until(ws, |f| f["type"] == "session_info")?;
    read_until(ws, |f| f["type"] == "ready")?;
    Ok(info["data"]["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Reads frames until one that `wanted` accepts, and returns it with when it arrived.
fn read_until(
    ws: &mut Socket,
    wanted: impl Fn(&Value) -> bool,
) -> Result<(Value, Instant), String> {
    loop {
        match ws.read().map_err(|e| format!("read: {e}"))? {
            Message::Text(text) => {
                let at = Instant::now();
                let frame: Value =
                    serde_json::from_str(text.as_str()).map_err(|e| format!("frame: {e}"))?;
                if frame["type"] == "error" && !wanted(&frame) {
                    return Err(format!("the server answered {frame}"));
                }
                if wanted(&frame) {
                    return Ok((frame, at));
                }
            }
            Message::Close(close) => return Err(format!("closed: {close:?}")),
            _ => {}
        }
    }
}
