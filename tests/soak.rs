//! A short soak: the attacks of the hostile suites at once, beside normal clients. The normal
//! clients keep being answered, none of their turns waits past a generous liveness bound, and
//! after a restart every event they saw is in the store.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Client, TestServer, events_seen, test_config};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::{Message, WebSocket};

/// How long the attacks and the normal clients run side by side.
const SOAK: Duration = Duration::from_secs(6);

/// The longest a normal client's turn may take while under attack: a liveness bound (a stall
/// behind an attacker), not a speed target; speed is measured in BENCHMARKS.md.
const LIVENESS: Duration = Duration::from_secs(3);

/// The pause between two turns of a normal client.
const PACE: Duration = Duration::from_millis(30);

/// A raw WebSocket for an attacker: every failure is only the end of that attack's round.
fn open(addr: SocketAddr, path: &str) -> Option<WebSocket<TcpStream>> {
    let stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    tungstenite::client(format!("ws://{addr}{path}"), stream)
        .ok()
        .map(|(ws, _)| ws)
}

/// Reads (answering pings) until the server closes the socket or `hold` passes.
fn drain(ws: &mut WebSocket<TcpStream>, hold: Duration) {
    let until = Instant::now() + hold;
    while Instant::now() < until && ws.read().is_ok() {}
}

fn send(ws: &mut WebSocket<TcpStream>, value: Value) -> bool {
    ws.send(Message::text(value.to_string())).is_ok()
}

/// Runs `attack` in a loop on a thread of its own until `stop` is set; counts its rounds.
fn attacker(
    stop: &Arc<AtomicBool>,
    rounds: &Arc<AtomicU64>,
    attack: impl Fn() + Send + 'static,
) -> thread::JoinHandle<()> {
    let (stop, rounds) = (stop.clone(), rounds.clone());
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            attack();
            rounds.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[test]
fn attacks_beside_normal_clients_leave_them_served_with_nothing_lost() {
    let config = test_config();
    let data_dir = config.data_dir.clone();
    let server = TestServer::with_config(|c| {
        *c = config.clone();
        c.auth_tokens = vec!["victim".into(), "attacker".into()];
        c.handshake_timeout = Duration::from_millis(500);
        c.ping_interval = Duration::from_millis(300);
        c.max_running_turns = 64;
        c.max_running_turns_per_principal = 16;
        c.max_pending_message_bytes = 4 << 20;
    });
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let mut attacks = Vec::new();

    // Sockets that never authenticate and keep answering pings.
    attacks.push(attacker(&stop, &rounds, move || {
        let mut held: Vec<_> = (0..10).filter_map(|_| open(addr, "/ws")).collect();
        for ws in &mut held {
            let _ = ws.read();
        }
    }));
    // A ping flood.
    attacks.push(attacker(&stop, &rounds, move || {
        if let Some(mut ws) = open(addr, "/ws?token=attacker") {
            for _ in 0..500 {
                if ws.write(Message::Ping("p".into())).is_err() {
                    break;
                }
            }
            drain(&mut ws, Duration::from_secs(1));
        }
    }));
    // Long turns in new conversations, abandoned at once (turn threads and conversations).
    attacks.push(attacker(&stop, &rounds, move || {
        if let Some(mut ws) = open(addr, "/ws?token=attacker") {
            send(&mut ws, json!({"type": "connect", "data": {}}));
            send(
                &mut ws,
                json!({"type": "message", "data": {"text": "/wait 60000"}}),
            );
        }
    }));
    // Unfinished messages held open.
    attacks.push(attacker(&stop, &rounds, move || {
        if let Some(mut ws) = open(addr, "/ws?token=attacker") {
            send(&mut ws, json!({"type": "connect", "data": {}}));
            let frame = Frame::message("x".repeat(900 * 1024), OpCode::Data(Data::Text), false);
            let _ = ws.send(Message::Frame(frame));
            drain(&mut ws, Duration::from_secs(1));
        }
    }));
    // The largest messages, one after another, in one conversation.
    attacks.push(attacker(&stop, &rounds, move || {
        if let Some(mut ws) = open(addr, "/ws?token=attacker") {
            send(&mut ws, json!({"type": "connect", "data": {}}));
            let text = "y".repeat(99_000);
            for _ in 0..20 {
                if !send(&mut ws, json!({"type": "message", "data": {"text": text}})) {
                    break;
                }
            }
        }
    }));

    // Three normal clients, each asking in turn for as long as the attacks run.
    let victims: Vec<_> = (0..3)
        .map(|n| {
            thread::spawn(move || {
                let mut client = Client::connect(addr, json!({"token": "victim"}));
                let mut latencies = Vec::new();
                let started = Instant::now();
                let mut turn = 0;
                while started.elapsed() < SOAK {
                    let text = format!("victim {n} turn {turn}");
                    let asked = Instant::now();
                    assert_eq!(client.ask(&text), format!("You said: {text}"));
                    latencies.push(asked.elapsed());
                    turn += 1;
                    // A brisk person's pace, well under the rate limit: not a wait.
                    thread::sleep(PACE);
                }
                (client, latencies)
            })
        })
        .collect();
    let results: Vec<(Client, Vec<Duration>)> = victims
        .into_iter()
        .map(|victim| victim.join().expect("a normal client failed"))
        .collect();
    // The turn flood held no more than its principal's cap (plus a victim's turn winding down).
    assert!(server.handle.sessions().turns_running() <= 16 + 3);
    stop.store(true, Ordering::Relaxed);
    for attack in attacks {
        attack.join().expect("an attacker panicked");
    }

    let mut latencies: Vec<Duration> = results.iter().flat_map(|(_, l)| l.clone()).collect();
    latencies.sort();
    let worst = *latencies.last().unwrap();
    let p99 = latencies[(latencies.len() - 1) * 99 / 100];
    eprintln!(
        "soak: {} normal turns, p99 {p99:?}, worst {worst:?}; {} attack rounds",
        latencies.len(),
        rounds.load(Ordering::Relaxed)
    );
    assert!(latencies.len() >= 30, "{} turns", latencies.len());
    assert!(worst < LIVENESS, "a normal turn waited {worst:?}");
    assert!(rounds.load(Ordering::Relaxed) > 20);

    // After a restart, every event a normal client saw is in the store, unchanged.
    let seen: Vec<_> = results
        .iter()
        .map(|(client, _)| (client.session_id.clone().unwrap(), events_seen(client)))
        .collect();
    drop(results);
    drop(server);
    let server = TestServer::restart_with(&data_dir, |c| {
        c.auth_tokens = vec!["victim".into()];
    });
    for (id, events) in &seen {
        assert_eq!(&replay_as_victim(server.addr, id, events.len()), events);
    }
}

/// `replay` with the victim's token.
fn replay_as_victim(
    addr: SocketAddr,
    id: &sparky::common::protocol::SessionId,
    count: usize,
) -> Vec<Value> {
    let mut client = Client::connect(
        addr,
        json!({"token": "victim", "session_id": id.as_str(), "last_seq": 0}),
    );
    (0..count)
        .map(|_| serde_json::to_value(client.next()).unwrap())
        .collect()
}
