//! Chaos: many clients send, cancel, drop their connections at random moments (mid-frame too),
//! reconnect with `last_seq` and get taken over, all at once; afterwards every session's events
//! as its client assembled them equal the server's log, every turn is closed exactly once, and
//! nothing leaks.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use sparky::common::protocol::{ServerEnvelope, ServerFrame, SessionId, TurnId};
use support::{Client, Rng, TestServer, WAIT, wait_until};

const SESSIONS: usize = 16;
const ACTIONS: usize = 60;
const TIME_BUDGET: Duration = Duration::from_secs(8);

#[derive(Default)]
struct Tally {
    events: AtomicUsize,
    disconnects: AtomicUsize,
    takeovers: AtomicUsize,
    cancels: AtomicUsize,
    messages: AtomicUsize,
}

/// One session's client: the events it assembled across all its connections.
struct Driver {
    addr: SocketAddr,
    id: SessionId,
    events: Vec<ServerEnvelope>,
    client: Option<Client>,
}

impl Driver {
    /// Takes in a frame, checking that events arrive in order with no gap and no repeat.
    fn take(&mut self, frame: ServerEnvelope, tally: &Tally) {
        let Some(seq) = frame.seq else {
            return;
        };
        let expected = self.events.len() as u64 + 1;
        assert_eq!(
            seq,
            expected,
            "session {}: got seq {seq}, expected {expected}",
            self.id.short()
        );
        tally.events.fetch_add(1, Ordering::Relaxed);
        self.events.push(frame);
    }

    /// The live connection, reconnecting with `last_seq` when there is none.
    fn client(&mut self, tally: &Tally) -> &mut Client {
        if self.client.is_none() {
            let last_seq = self.events.len() as u64;
            let client = Client::connect(
                self.addr,
                json!({"session_id": self.id.as_str(), "last_seq": last_seq}),
            );
            let greeting: Vec<_> = client.seen.clone();
            self.client = Some(client);
            for frame in greeting {
                self.take(frame, tally);
            }
        }
        self.client.as_mut().unwrap()
    }

    /// Reads whatever is waiting (up to `for_at_most`), following takeovers and drops.
    fn drain(&mut self, tally: &Tally, for_at_most: Duration) {
        let until = Instant::now() + for_at_most;
        while Instant::now() < until {
            let Some(client) = self.client.as_mut() else {
                return;
            };
            match poll_frame(client) {
                Polled::Frame(frame) => {
                    if matches!(&frame.frame, ServerFrame::Status(s) if s.code == sparky::common::protocol::StatusCode::TakenOver)
                    {
                        tally.takeovers.fetch_add(1, Ordering::Relaxed);
                    }
                    self.take(frame, tally);
                }
                Polled::Nothing => return,
                Polled::Closed => {
                    self.client = None;
                    return;
                }
            }
        }
    }
}

enum Polled {
    Frame(ServerEnvelope),
    Nothing,
    Closed,
}

/// One read with the client's short read timeout.
fn poll_frame(client: &mut Client) -> Polled {
    match client.ws.read() {
        Ok(tungstenite::Message::Text(text)) => {
            Polled::Frame(serde_json::from_str(text.as_str()).unwrap())
        }
        Ok(tungstenite::Message::Close(_)) => Polled::Closed,
        Ok(_) => Polled::Nothing,
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Polled::Nothing
        }
        Err(_) => Polled::Closed,
    }
}

fn drive(
    addr: SocketAddr,
    seed: u64,
    tally: &Tally,
    deadline: Instant,
) -> (SessionId, Vec<ServerEnvelope>) {
    let mut rng = Rng(seed);
    let first = Client::connect(addr, json!({}));
    let id = first.session_id.clone().unwrap();
    let mut driver = Driver {
        addr,
        id,
        events: Vec::new(),
        client: Some(first),
    };
    for _ in 0..ACTIONS {
        if Instant::now() > deadline {
            break;
        }
        match rng.below(10) {
            0..=3 => {
                let text = match rng.below(3) {
                    0 => format!("/wait {}", 5 + rng.below(60)),
                    1 => format!("/calc {} * {}", rng.below(100), rng.below(100)),
                    _ => format!("hello {}", rng.below(1000)),
                };
                let client = driver.client(tally);
                let _ = client.ws.send(tungstenite::Message::text(
                    json!({"type": "message", "data": {"text": text}}).to_string(),
                ));
                tally.messages.fetch_add(1, Ordering::Relaxed);
            }
            4 => {
                let client = driver.client(tally);
                let _ = client
                    .ws
                    .send(tungstenite::Message::text(r#"{"type":"cancel","data":{}}"#));
                tally.cancels.fetch_add(1, Ordering::Relaxed);
            }
            5 => {
                // Drop abruptly, sometimes in the middle of a frame.
                if let Some(mut client) = driver.client.take() {
                    if rng.below(2) == 0 {
                        let _ = client.ws.get_mut().write_all(&[0x81, 0xfe, 0x01]);
                    }
                    let _ = client.ws.get_ref().shutdown(std::net::Shutdown::Both);
                    tally.disconnects.fetch_add(1, Ordering::Relaxed);
                }
            }
            6 => {
                // Two more devices join: past the limit of 2, the oldest is taken over.
                let others: Vec<Client> = (0..2)
                    .map(|_| Client::connect(addr, json!({"session_id": driver.id.as_str()})))
                    .collect();
                drop(others);
            }
            _ => {}
        }
        driver.drain(tally, Duration::from_millis(rng.below(30)));
    }
    // Settle: wait for the last turn to close and read everything that is left.
    let session_deadline = Instant::now() + WAIT;
    loop {
        driver.client(tally);
        driver.drain(tally, Duration::from_millis(50));
        let closed = last_turn_closed(&driver.events);
        if closed && driver.client.is_some() {
            break;
        }
        assert!(
            Instant::now() < session_deadline,
            "session {} never settled",
            driver.id.short()
        );
    }
    (driver.id, driver.events)
}

fn last_turn_closed(events: &[ServerEnvelope]) -> bool {
    let Some(last_turn) = events
        .iter()
        .rev()
        .filter_map(|e| match e.frame {
            ServerFrame::UserMessage { turn_id, .. } => Some(turn_id),
            _ => None,
        })
        .next()
    else {
        return true;
    };
    events
        .iter()
        .any(|e| e.frame.turn_id() == Some(last_turn) && e.frame.closes_turn())
}

/// Every turn is opened once, closed exactly once, and sends nothing after its close.
fn check_turns(id: &SessionId, events: &[ServerEnvelope]) {
    let mut state: HashMap<TurnId, (bool, bool)> = HashMap::new();
    for event in events {
        let Some(turn) = event.frame.turn_id() else {
            continue;
        };
        let entry = state.entry(turn).or_default();
        assert!(
            !entry.1,
            "session {}: turn {turn} sent {:?} after it closed",
            id.short(),
            event.frame
        );
        if matches!(event.frame, ServerFrame::UserMessage { .. }) {
            assert!(!entry.0, "session {}: turn {turn} opened twice", id.short());
            entry.0 = true;
        } else {
            assert!(
                entry.0,
                "session {}: turn {turn} sent {:?} before it opened",
                id.short(),
                event.frame
            );
        }
        if event.frame.closes_turn() {
            entry.1 = true;
        }
    }
    for (turn, (_, closed)) in state {
        assert!(closed, "session {}: turn {turn} never closed", id.short());
    }
}

#[test]
fn chaos_loses_repeats_and_leaks_nothing() {
    let server = TestServer::with_config(|config| {
        config.rate_limit = None;
        config.max_connections_per_session = 2;
        config.event_log_capacity = 100_000;
    });
    let addr = server.addr;
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + TIME_BUDGET;
    let drivers: Vec<_> = (0..SESSIONS as u64)
        .map(|n| {
            let tally = tally.clone();
            thread::spawn(move || {
                drive(
                    addr,
                    0x9e37_79b9 ^ ((n + 1) * 0x1234_5678_9abc),
                    &tally,
                    deadline,
                )
            })
        })
        .collect();
    let results: Vec<_> = drivers.into_iter().map(|d| d.join().unwrap()).collect();

    for (id, assembled) in &results {
        check_turns(id, assembled);
        let session = server.handle.sessions().get(id).unwrap();
        assert_eq!(
            session.last_seq(),
            assembled.len() as u64,
            "session {}",
            id.short()
        );
        let mut full = Client::resume(addr, id, 0);
        let log: Vec<_> = (0..assembled.len()).map(|_| full.next()).collect();
        assert_eq!(
            &log,
            assembled,
            "session {}: the client's view differs from the log",
            id.short()
        );
    }
    drop(results);
    wait_until("every connection to close", || {
        server.handle.connection_count() == 0
    });
    assert_eq!(
        server.handle.sessions().len(),
        SESSIONS,
        "no session leaked or lost"
    );
    assert_eq!(server.handle.sessions().turns_in_flight(), 0);
    println!(
        "chaos: {SESSIONS} sessions, {} messages, {} cancels, {} disconnects, {} takeovers, {} events",
        tally.messages.load(Ordering::Relaxed),
        tally.cancels.load(Ordering::Relaxed),
        tally.disconnects.load(Ordering::Relaxed),
        tally.takeovers.load(Ordering::Relaxed),
        tally.events.load(Ordering::Relaxed),
    );
}
