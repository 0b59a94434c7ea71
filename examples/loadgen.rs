//! A load generator for Sparky (and for the benchmark floor, `examples/floor.rs`), built on the
//! synchronous tungstenite client. Each scenario is bounded in count and in time, and prints
//! exactly one JSON line of results to stdout.
//!
//! ```text
//! cargo run --release --example loadgen -- --url ws://127.0.0.1:PORT/ws SCENARIO [OPTIONS]
//!
//! turns   --clients N --turns M [--pid P]   closed-loop plain turns; latency = send to final message;
//!                                           with --pid, the server's CPU and context switches per turn
//! connect --clients N                       TCP connect + handshake + `connect` until `ready`
//! idle    --clients N --seconds S --pid P   hold N sessions; server RSS, threads and idle CPU
//! cancel  --clients N --turns M             `/wait 10000` cut short by a new message
//! resume  --clients N --events E            reconnect with `last_seq`; time until replay is done
//! stream  --clients N --tokens T --tokens-per-s R -- SERVER ARGS… {model_url} …
//!                                           N conversations at once, each streaming answers of T
//!                                           tokens at R tokens/s from a fake OpenAI-compatible
//!                                           model server run by this process; loadgen starts the
//!                                           server under test itself, pointed at the fake model
//! ```
//!
//! `stream` measures the delay each streamed piece adds: every chunk the fake model writes says
//! `w<N> `, where N indexes a table of send times in this process; a client that receives a
//! `message_delta` looks each N up, so `p50_ms`..`max_ms` are per chunk (model write to client
//! read), and `frame_delay_*` the same for the newest chunk of each delta frame. It adds the
//! server's CPU time per delta frame and per chunk (utime + stime from `/proc/PID/stat` over the
//! run, until it settles) and its peak RSS. Every turn's deltas, put together, must equal its
//! closing `message`, or the turn counts as an error.
//!
//! Every line has `scenario`, `label`, `round`, `clients`, `count` (successful operations),
//! `expected`, `errors` (timeouts included), `timeouts`, `elapsed_s`, `throughput_per_s`,
//! `p50_ms`, `p90_ms`, `p99_ms`, `p999_ms`, `max_ms` and `mean_ms`, plus fields of the scenario.
//! `--label` and `--round` are copied into the line so that `scripts/bench.sh` can tell runs
//! apart.
//!
//! Every socket has a read and write timeout (`--timeout-ms`), and every scenario stops starting
//! new work after `--max-seconds`, so the generator never hangs on a stuck server. One thread
//! per client for `turns`, `connect`, `cancel` and `resume` (256 KiB stacks); `idle` opens its
//! sessions from a few worker threads and then holds every socket in the main thread, so it
//! can hold 10,000 connections. That needs an open-file limit above the number of clients:
//! run `ulimit -n 65536` first (the script does).

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{Map, Value, json};
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// Stack of a client thread: a client only holds a socket and a few small buffers.
const CLIENT_STACK_BYTES: usize = 256 * 1024;

/// tungstenite's read buffer per client socket, the same size the server uses.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// The kernel's clock tick for `/proc/PID/stat` times (`USER_HZ`, 100 on every Linux build that
/// matters here).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "Load generator for the Sparky chat server; prints one JSON line per run")]
struct Cli {
    /// WebSocket URL of the server; several, comma-separated, spread the clients over them in
    /// turn (several instances sharing one database).
    #[arg(long, global = true, default_value = "ws://127.0.0.1:8000/ws")]
    url: String,
    /// A name for the server under test, copied into the result line (e.g. sparky, floor).
    #[arg(long, global = true, default_value = "")]
    label: String,
    /// A round number, copied into the result line.
    #[arg(long, global = true, default_value_t = 0)]
    round: u32,
    /// Bound on TCP connect, on each socket read and on each write, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    timeout_ms: u64,
    /// No new operation starts after this many seconds of measuring.
    #[arg(long, global = true, default_value_t = 60)]
    max_seconds: u64,
    #[command(subcommand)]
    scenario: Scenario,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
enum Scenario {
    /// N clients, each running M closed-loop plain turns.
    Turns {
        /// Concurrent clients.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Turns per client.
        #[arg(long, default_value_t = 100)]
        turns: usize,
        /// The server's process id: its CPU time over the run (until it settles afterwards:
        /// work it deferred counts) is reported per turn.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// N clients connecting at once: TCP connect, handshake, `connect` until `ready`.
    Connect {
        /// Concurrent clients.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Connections each client makes, one after another.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Hold N connected sessions for S seconds and look at the server meanwhile.
    Idle {
        /// Sessions to open and hold.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// How long to hold the sessions once all are open.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The server's process id, for its RSS, thread count and CPU time.
        #[arg(long)]
        pid: Option<u32>,
        /// Threads that open the sessions.
        #[arg(long, default_value_t = 16)]
        workers: usize,
    },
    /// N clients, each cancelling M `/wait 10000` turns by sending a new message.
    Cancel {
        /// Concurrent clients.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Turns per client.
        #[arg(long, default_value_t = 20)]
        turns: usize,
    },
    /// N clients, each resuming a session with E missed events, several times.
    Resume {
        /// Concurrent clients.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Events each resume has missed (a plain turn makes three).
        #[arg(long, default_value_t = 100)]
        events: u64,
        /// Resumes per client.
        #[arg(long, default_value_t = 10)]
        repeat: usize,
    },
    /// N conversations at once, each streaming answers from a fake model server (this
    /// process runs it) through the server under test, which loadgen starts itself.
    Stream {
        /// Concurrent conversations.
        #[arg(long, default_value_t = 500)]
        clients: usize,
        /// Tokens (chunks) per answer.
        #[arg(long, default_value_t = 300)]
        tokens: usize,
        /// The pace of each answer.
        #[arg(long, default_value_t = 30.0)]
        tokens_per_s: f64,
        /// Answers per conversation, one after another.
        #[arg(long, default_value_t = 1)]
        turns: usize,
        /// The server to start, after `--`; `{model_url}` in its arguments becomes the fake
        /// model's base URL (`http://ADDR/v1`). It must print `listening on http://ADDR` as its
        /// first line on stdout.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Scenario::Stream {
        clients,
        tokens,
        tokens_per_s,
        turns,
        command,
    } = &cli.scenario
    {
        let plan = StreamPlan {
            clients: *clients,
            tokens: *tokens,
            interval: Duration::from_secs_f64(1.0 / tokens_per_s.max(0.001)),
            turns: *turns,
        };
        let timeout = Duration::from_millis(cli.timeout_ms);
        let limit = Duration::from_secs(cli.max_seconds);
        return match run_stream(&plan, command, timeout, limit) {
            Ok(result) => {
                print_line(&cli, result);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let target = match Target::parse(&cli.url, Duration::from_millis(cli.timeout_ms)) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let limit = Duration::from_secs(cli.max_seconds);
    let result = match cli.scenario {
        Scenario::Turns {
            clients,
            turns,
            pid,
        } => run_turns(&target, clients, turns, pid, limit),
        Scenario::Connect { clients, repeat } => run_connect(&target, clients, repeat, limit),
        Scenario::Idle {
            clients,
            seconds,
            pid,
            workers,
        } => run_idle(&target, clients, seconds, pid, workers, limit),
        Scenario::Cancel { clients, turns } => run_cancel(&target, clients, turns, limit),
        Scenario::Resume {
            clients,
            events,
            repeat,
        } => run_resume(&target, clients, events, repeat, limit),
        Scenario::Stream { .. } => return ExitCode::FAILURE,
    };
    print_line(&cli, result);
    ExitCode::SUCCESS
}

/// Prints a scenario's one JSON line.
fn print_line(cli: &Cli, result: Outcome) {
    let mut line = Map::new();
    line.insert("scenario".into(), json!(result.scenario));
    line.insert("label".into(), json!(cli.label));
    line.insert("round".into(), json!(cli.round));
    line.extend(result.into_json());
    println!("{}", Value::Object(line));
}

// ---------------------------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------------------------

fn run_turns(
    target: &Target,
    clients: usize,
    turns: usize,
    pid: Option<u32>,
    limit: Duration,
) -> Outcome {
    let run = run_clients(
        target,
        clients,
        limit,
        pid,
        move |ws, target, deadline, tally| {
            for turn in 0..turns {
                if Instant::now() >= deadline {
                    break;
                }
                let started = Instant::now();
                match plain_turn(ws, target, &format!("hello {turn}")) {
                    Ok(_) => tally.record(started.elapsed()),
                    Err(e) => {
                        tally.fail(&e);
                        return;
                    }
                }
            }
        },
    );
    let cpu_ticks = run.cpu_ticks_since_start(pid);
    let switches = run.switches;
    let finishes = run.finishes.clone();
    let mut outcome = run.into_outcome("turns", clients, clients * turns);
    outcome
        .extra
        .insert("turns_per_client".into(), json!(turns));
    if let Some(ticks) = cpu_ticks {
        let seconds = ticks as f64 / CLOCK_TICKS_PER_SECOND;
        outcome
            .extra
            .insert("server_cpu_s".into(), json!(round3(seconds)));
        let count = outcome.tally.latencies.len();
        if count > 0 {
            let micros = seconds * 1e6 / count as f64;
            outcome
                .extra
                .insert("server_cpu_us_per_turn".into(), json!(round3(micros)));
        }
    }
    if let Some(switches) = switches {
        outcome
            .extra
            .insert("server_context_switches".into(), json!(switches));
        let count = outcome.tally.latencies.len();
        if count > 0 {
            outcome.extra.insert(
                "server_context_switches_per_turn".into(),
                json!(round3(switches as f64 / count as f64)),
            );
        }
    }
    // Fairness: when each client finished its turns, from the start of the window.
    let mut finishes: Vec<f64> = finishes.iter().map(Duration::as_secs_f64).collect();
    finishes.sort_by(f64::total_cmp);
    if let (Some(first), Some(last)) = (finishes.first(), finishes.last()) {
        let median = finishes[finishes.len() / 2];
        outcome
            .extra
            .insert("client_finish_min_s".into(), json!(round3(*first)));
        outcome
            .extra
            .insert("client_finish_median_s".into(), json!(round3(median)));
        outcome
            .extra
            .insert("client_finish_max_s".into(), json!(round3(*last)));
        if *first > 0.0 {
            outcome
                .extra
                .insert("client_finish_spread".into(), json!(round3(last / first)));
        }
    }
    outcome
}

fn run_connect(target: &Target, clients: usize, repeat: usize, limit: Duration) -> Outcome {
    let gate = Gate::new();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut handles = Vec::with_capacity(clients);
    let mut spawn_failures = Tally::default();
    for index in 0..clients {
        let gate = gate.clone();
        let ready_tx = ready_tx.clone();
        let target = target.clone();
        let spawned = client_thread(index, move || {
            let _ = ready_tx.send(());
            let (start, deadline) = gate.wait(limit);
            let mut tally = Tally::default();
            for _ in 0..repeat {
                if Instant::now() >= deadline {
                    break;
                }
                let started = Instant::now();
                match open(&target).and_then(|mut ws| {
                    let session = connect_new(&mut ws, &target)?;
                    close(&mut ws);
                    Ok(session)
                }) {
                    Ok(_) => tally.record(started.elapsed()),
                    Err(e) => tally.fail(&e),
                }
            }
            (tally, Instant::now().max(start))
        });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => spawn_failures.fail(&e),
        }
    }
    let mut run = ClientRun::start_and_join(handles, ready_tx, &ready_rx, &gate);
    run.tally.merge(spawn_failures);
    let mut outcome = run.into_outcome("connect", clients, clients * repeat);
    outcome
        .extra
        .insert("connects_per_client".into(), json!(repeat));
    outcome
}

fn run_idle(
    target: &Target,
    clients: usize,
    seconds: u64,
    pid: Option<u32>,
    workers: usize,
    limit: Duration,
) -> Outcome {
    let rss_before = pid.and_then(|pid| proc_status(pid).map(|status| status.rss_kib));
    let workers = workers.clamp(1, clients.max(1));
    let open_started = Instant::now();
    let deadline = open_started + limit;
    let mut handles = Vec::with_capacity(workers);
    let mut tally = Tally::default();
    for worker in 0..workers {
        let target = target.clone();
        // Worker w opens clients w, w + workers, w + 2 * workers, …
        let share = (clients + workers - 1 - worker) / workers;
        let spawned = client_thread(worker, move || {
            let mut held = Vec::with_capacity(share);
            let mut tally = Tally::default();
            for _ in 0..share {
                if Instant::now() >= deadline {
                    break;
                }
                let started = Instant::now();
                match open(&target).and_then(|mut ws| connect_new(&mut ws, &target).map(|_| ws)) {
                    Ok(ws) => {
                        tally.record(started.elapsed());
                        held.push(ws);
                    }
                    Err(e) => tally.fail(&e),
                }
            }
            (held, tally)
        });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => tally.fail(&e),
        }
    }
    let mut held = Vec::with_capacity(clients);
    for handle in handles {
        match handle.join() {
            Ok((sockets, worker_tally)) => {
                held.extend(sockets);
                tally.merge(worker_tally);
            }
            Err(_) => tally.fail(&LoadError::Protocol("a worker thread panicked".into())),
        }
    }
    let open_window = open_started.elapsed();
    let opened = held.len();

    // The hold: nothing is sent; the server should be asleep.
    let cpu_before = pid.and_then(proc_cpu_ticks);
    let hold_started = Instant::now();
    thread::sleep(Duration::from_secs(seconds));
    let hold = hold_started.elapsed();
    let cpu_after = pid.and_then(proc_cpu_ticks);
    let status = pid.and_then(proc_status);

    // A non-blocking read tells an open socket (nothing to read) from a closed one.
    let mut still_open = 0usize;
    for ws in &mut held {
        match is_open(ws) {
            Ok(()) => still_open += 1,
            Err(e) => tally.fail(&e),
        }
    }
    for ws in &mut held {
        close(ws);
    }
    drop(held);

    let mut outcome = Outcome {
        scenario: "idle",
        clients,
        expected: clients,
        window: open_window,
        tally,
        extra: Map::new(),
    };
    let extra = &mut outcome.extra;
    extra.insert("opened".into(), json!(opened));
    extra.insert("held".into(), json!(still_open));
    extra.insert("hold_s".into(), json!(round3(hold.as_secs_f64())));
    extra.insert("open_s".into(), json!(round3(open_window.as_secs_f64())));
    if let Some(status) = status {
        extra.insert("server_rss_kib".into(), json!(status.rss_kib));
        extra.insert("server_threads".into(), json!(status.threads));
        if still_open > 0 {
            let per_session = status.rss_kib as f64 / still_open as f64;
            extra.insert("rss_per_session_kib".into(), json!(round3(per_session)));
        }
    }
    if let Some(before) = rss_before {
        extra.insert("server_rss_before_kib".into(), json!(before));
    }
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let busy_s = after.saturating_sub(before) as f64 / CLOCK_TICKS_PER_SECOND;
        let percent = 100.0 * busy_s / hold.as_secs_f64();
        extra.insert("server_cpu_percent".into(), json!(round3(percent)));
    }
    outcome
}

fn run_cancel(target: &Target, clients: usize, turns: usize, limit: Duration) -> Outcome {
    let run = run_clients(
        target,
        clients,
        limit,
        None,
        move |ws, target, deadline, tally| {
            for turn in 0..turns {
                if Instant::now() >= deadline {
                    break;
                }
                match cancel_turn(ws, target, turn) {
                    Ok(took) => tally.record(took),
                    Err(e) => {
                        tally.fail(&e);
                        return;
                    }
                }
            }
        },
    );
    let mut outcome = run.into_outcome("cancel", clients, clients * turns);
    outcome
        .extra
        .insert("turns_per_client".into(), json!(turns));
    outcome
}

fn run_resume(
    target: &Target,
    clients: usize,
    events: u64,
    repeat: usize,
    limit: Duration,
) -> Outcome {
    let gate = Gate::new();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut handles = Vec::with_capacity(clients);
    let mut tally = Tally::default();
    for index in 0..clients {
        let gate = gate.clone();
        let ready_tx = ready_tx.clone();
        let target = target.clone();
        let spawned = client_thread(index, move || {
            let mut tally = Tally::default();
            let prepared = prepare_resume(&target, events);
            let _ = ready_tx.send(());
            let (start, deadline) = gate.wait(limit);
            let (session_id, highest) = match prepared {
                Ok(prepared) => prepared,
                Err(e) => {
                    tally.fail(&e);
                    return (tally, start);
                }
            };
            for _ in 0..repeat {
                if Instant::now() >= deadline {
                    break;
                }
                match resume_once(&target, &session_id, highest, events) {
                    Ok(took) => tally.record(took),
                    Err(e) => tally.fail(&e),
                }
            }
            (tally, Instant::now())
        });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => tally.fail(&e),
        }
    }
    let mut run = ClientRun::start_and_join(handles, ready_tx, &ready_rx, &gate);
    run.tally.merge(tally);
    let mut outcome = run.into_outcome("resume", clients, clients * repeat);
    outcome.extra.insert("missed_events".into(), json!(events));
    outcome
        .extra
        .insert("resumes_per_client".into(), json!(repeat));
    outcome
}

// ---------------------------------------------------------------------------------------------
// Streamed answers: the fake model server and the `stream` scenario.
// ---------------------------------------------------------------------------------------------

/// What `stream` runs.
struct StreamPlan {
    clients: usize,
    tokens: usize,
    interval: Duration,
    turns: usize,
}

/// When each chunk the fake model wrote was written: chunk N says `w<N> `, and `sent[N]` holds
/// nanoseconds since `base`, plus one (zero: not written yet). Shared by the model's threads
/// and the clients of this process.
struct Stamps {
    base: Instant,
    sent: Vec<AtomicU64>,
    next: AtomicUsize,
    tokens: usize,
    interval: Duration,
}

/// The one table of this process (the client bodies of `run_clients` capture nothing).
static STAMPS: OnceLock<Stamps> = OnceLock::new();

/// What the clients of `stream` measured beyond their tally, merged as each one ends.
#[derive(Default)]
struct StreamStats {
    /// `message_delta` frames received.
    deltas: u64,
    /// Chunks found in them.
    chunks: u64,
    /// For each delta frame, the delay of the newest chunk it carries.
    frame_delays: Vec<Duration>,
}

static STREAM_STATS: Mutex<StreamStats> = Mutex::new(StreamStats {
    deltas: 0,
    chunks: 0,
    frame_delays: Vec::new(),
});

/// Listen backlog of the fake model server: all conversations ask at once.
const MODEL_BACKLOG: i32 = 4096;

fn run_stream(
    plan: &StreamPlan,
    command: &[String],
    timeout: Duration,
    limit: Duration,
) -> Result<Outcome, String> {
    let slots = plan.clients * plan.turns * plan.tokens + plan.tokens;
    let stamps = STAMPS.get_or_init(|| Stamps {
        base: Instant::now(),
        sent: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        next: AtomicUsize::new(0),
        tokens: plan.tokens,
        interval: plan.interval,
    });
    let model_addr = spawn_fake_model(stamps).map_err(|e| format!("fake model: {e}"))?;
    let model_url = format!("http://{model_addr}/v1");
    let mut server = ServerUnderTest::start(command, &model_url)?;
    let pid = server.child.id();
    let target = Target::parse(&format!("ws://{}/ws", server.addr), timeout)?;
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak_rss, sampling) = (peak_rss.clone(), sampling.clone());
        thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                while sampling.load(Ordering::Relaxed) {
                    if let Some(status) = proc_status(pid) {
                        peak_rss.fetch_max(status.rss_kib, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
            .map_err(|e| format!("sampler: {e}"))?
    };
    let turns = plan.turns;
    let run = run_clients(
        &target,
        plan.clients,
        limit,
        Some(pid),
        move |ws, target, deadline, tally| {
            for turn in 0..turns {
                if Instant::now() >= deadline {
                    break;
                }
                if let Err(e) = streamed_turn(ws, target, turn, tally) {
                    tally.fail(&e);
                    return;
                }
            }
        },
    );
    let cpu_ticks = run.cpu_ticks_since_start(Some(pid));
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let rss_end = proc_status(pid).map(|status| status.rss_kib);
    server.stop();
    let stats = std::mem::take(&mut *STREAM_STATS.lock().unwrap_or_else(|e| e.into_inner()));
    let mut outcome = run.into_outcome("stream", plan.clients, slots - plan.tokens);
    let extra = &mut outcome.extra;
    extra.insert("tokens_per_answer".into(), json!(plan.tokens));
    extra.insert(
        "tokens_per_s".into(),
        json!(round3(1.0 / plan.interval.as_secs_f64())),
    );
    extra.insert("turns_per_client".into(), json!(plan.turns));
    extra.insert(
        "chunks_written".into(),
        json!(stamps.next.load(Ordering::Relaxed)),
    );
    extra.insert("chunks_received".into(), json!(stats.chunks));
    extra.insert("deltas_received".into(), json!(stats.deltas));
    let mut frames = stats.frame_delays;
    frames.sort_unstable();
    for (name, fraction) in [
        ("frame_delay_p50_ms", 0.5),
        ("frame_delay_p99_ms", 0.99),
        ("frame_delay_max_ms", 1.0),
    ] {
        extra.insert(name.into(), json!(millis(percentile(&frames, fraction))));
    }
    if let Some(ticks) = cpu_ticks {
        let seconds = ticks as f64 / CLOCK_TICKS_PER_SECOND;
        extra.insert("server_cpu_s".into(), json!(round3(seconds)));
        if stats.deltas > 0 {
            let per_delta = seconds * 1e6 / stats.deltas as f64;
            extra.insert("server_cpu_us_per_delta".into(), json!(round3(per_delta)));
        }
        if stats.chunks > 0 {
            let per_chunk = seconds * 1e6 / stats.chunks as f64;
            extra.insert("server_cpu_us_per_chunk".into(), json!(round3(per_chunk)));
        }
    }
    extra.insert(
        "server_rss_peak_kib".into(),
        json!(peak_rss.load(Ordering::Relaxed)),
    );
    if let Some(rss) = rss_end {
        extra.insert("server_rss_end_kib".into(), json!(rss));
    }
    Ok(outcome)
}

/// One streamed turn: sends a message, reads every `message_delta` up to the closing
/// `message`, and records each chunk's delay. The deltas put together must be the answer.
fn streamed_turn(
    ws: &mut Socket,
    target: &Target,
    turn: usize,
    tally: &mut Tally,
) -> Result<(), LoadError> {
    let stamps = STAMPS
        .get()
        .ok_or_else(|| LoadError::Protocol("no stamps".into()))?;
    send(
        ws,
        &json!({"type": "message", "data": {"text": format!("stream {turn}")}}),
    )?;
    let answer_time = stamps.interval.saturating_mul(stamps.tokens as u32);
    let deadline = Instant::now() + answer_time * 3 + target.timeout;
    let mut streamed = String::new();
    let mut stats = StreamStats::default();
    let result = loop {
        let frame = match next_frame(ws, deadline, "the streamed answer") {
            Ok(frame) => frame,
            Err(e) => break Err(e),
        };
        match frame_type(&frame) {
            "message_delta" => {
                let now = stamps.base.elapsed();
                let text = frame["data"]["text"].as_str().unwrap_or_default();
                if frame["data"]["replace"] == true {
                    streamed.clear();
                }
                streamed.push_str(text);
                stats.deltas += 1;
                let mut newest = None;
                for word in text.split(' ') {
                    let Some(index) = word.strip_prefix('w').and_then(|n| n.parse::<usize>().ok())
                    else {
                        continue;
                    };
                    let Some(sent) = stamps.sent.get(index).map(|at| at.load(Ordering::Acquire))
                    else {
                        continue;
                    };
                    if sent == 0 {
                        continue;
                    }
                    let delay = now.saturating_sub(Duration::from_nanos(sent - 1));
                    tally.record(delay);
                    stats.chunks += 1;
                    newest = Some(delay);
                }
                if let Some(delay) = newest {
                    stats.frame_delays.push(delay);
                }
            }
            "message" => {
                let text = frame["data"]["text"].as_str().unwrap_or_default();
                break if text == streamed {
                    Ok(())
                } else {
                    Err(LoadError::Protocol(format!(
                        "the deltas ({} bytes) differ from the answer ({} bytes)",
                        streamed.len(),
                        text.len()
                    )))
                };
            }
            "error" => break Err(LoadError::from_error_frame(&frame)),
            _ => {}
        }
    };
    let mut shared = STREAM_STATS.lock().unwrap_or_else(|e| e.into_inner());
    shared.deltas += stats.deltas;
    shared.chunks += stats.chunks;
    shared.frame_delays.extend(stats.frame_delays);
    result
}

/// The server under test, started by `stream` with the fake model's URL.
struct ServerUnderTest {
    child: Child,
    addr: String,
}

impl ServerUnderTest {
    /// Starts `command` (its `{model_url}` replaced) and waits (10 s at most) for its
    /// `listening on http://ADDR` line.
    fn start(command: &[String], model_url: &str) -> Result<Self, String> {
        let (program, args) = command
            .split_first()
            .ok_or("stream needs the server's command after --")?;
        let mut child = Command::new(program)
            .args(args.iter().map(|arg| arg.replace("{model_url}", model_url)))
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (line_tx, line_rx) = mpsc::channel();
        // The server's stdout is read to its end, so that it never blocks on a full pipe.
        thread::Builder::new()
            .name("server-stdout".into())
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                if let Some(Ok(line)) = lines.next() {
                    let _ = line_tx.send(line);
                }
                for _ in lines {}
            })
            .map_err(|e| format!("stdout reader: {e}"))?;
        let mut server = ServerUnderTest {
            child,
            addr: String::new(),
        };
        match line_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => match line.strip_prefix("listening on http://") {
                Some(addr) => server.addr = addr.trim().to_owned(),
                None => {
                    server.stop();
                    return Err(format!("the server's first line was {line:?}"));
                }
            },
            Err(_) => {
                server.stop();
                return Err("the server did not say where it listens within 10 s".into());
            }
        }
        Ok(server)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerUnderTest {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the fake OpenAI-compatible model server on 127.0.0.1: one thread per connection,
/// `GET /v1/models` and streamed `POST /v1/chat/completions`. Returns its address.
fn spawn_fake_model(stamps: &'static Stamps) -> std::io::Result<SocketAddr> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.listen(MODEL_BACKLOG)?;
    let listener: TcpListener = socket.into();
    let addr = listener.local_addr()?;
    thread::Builder::new()
        .name("model-accept".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = thread::Builder::new()
                    .name("model-conn".into())
                    .stack_size(CLIENT_STACK_BYTES)
                    .spawn(move || {
                        if let Err(e) = serve_model(stream, stamps) {
                            eprintln!("loadgen: fake model: {e}");
                        }
                    });
            }
        })?;
    Ok(addr)
}

/// One connection to the fake model: requests until one is answered with a stream (which
/// closes the connection) or the peer leaves.
fn serve_model(stream: TcpStream, stamps: &Stamps) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        if method == "POST" && path.ends_with("/chat/completions") {
            return stream_answer(&mut writer, stamps);
        }
        let (status, body) = if method == "GET" && path.ends_with("/models") {
            (
                "200 OK",
                r#"{"object":"list","data":[{"id":"fake","object":"model","owned_by":"loadgen"}]}"#,
            )
        } else {
            ("404 Not Found", r#"{"error":{"message":"not here"}}"#)
        };
        write!(
            writer,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
}

/// Streams one answer of `stamps.tokens` chunks, one every `stamps.interval` (on a fixed
/// schedule, so that a late write does not push the rest back), each stamped as it is written.
fn stream_answer(writer: &mut TcpStream, stamps: &Stamps) -> std::io::Result<()> {
    writer.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
          Connection: close\r\n\r\n",
    )?;
    let start = Instant::now();
    for token in 0..stamps.tokens {
        let due = start + stamps.interval.saturating_mul(token as u32);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        let index = stamps.next.fetch_add(1, Ordering::Relaxed);
        let chunk = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{index} \"}}}}]}}\n\n"
        );
        if let Some(slot) = stamps.sent.get(index) {
            let nanos = u64::try_from(stamps.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            slot.store(nanos + 1, Ordering::Release);
        }
        writer.write_all(chunk.as_bytes())?;
    }
    let usage = stamps.tokens;
    let end = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n\
         data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":10,\"completion_tokens\":{usage}}}}}\n\n\
         data: [DONE]\n\n"
    );
    writer.write_all(end.as_bytes())?;
    writer.flush()
}

// ---------------------------------------------------------------------------------------------
// Protocol steps.
// ---------------------------------------------------------------------------------------------

/// One plain turn: sends a message and waits for the `message` that closes it. Returns the
/// closing frame's `seq`.
fn plain_turn(ws: &mut Socket, target: &Target, text: &str) -> Result<u64, LoadError> {
    send(ws, &json!({"type": "message", "data": {"text": text}}))?;
    let deadline = Instant::now() + target.timeout;
    loop {
        let frame = next_frame(ws, deadline, "the turn's message")?;
        match frame_type(&frame) {
            "message" => return Ok(frame["seq"].as_u64().unwrap_or(0)),
            "error" => return Err(LoadError::from_error_frame(&frame)),
            "status" if frame["data"]["code"] == "cancelled" => {
                return Err(LoadError::Protocol("plain turn was cancelled".into()));
            }
            _ => {}
        }
    }
}

/// Starts a `/wait 10000` turn, waits for its `tool_use`, then sends a new message and times
/// how long that message takes to be answered.
fn cancel_turn(ws: &mut Socket, target: &Target, turn: usize) -> Result<Duration, LoadError> {
    send(
        ws,
        &json!({"type": "message", "data": {"text": "/wait 10000"}}),
    )?;
    let deadline = Instant::now() + target.timeout;
    let waiting_turn = loop {
        let frame = next_frame(ws, deadline, "the wait turn's tool_use")?;
        match frame_type(&frame) {
            "tool_use" => break frame["data"]["turn_id"].as_u64().unwrap_or(0),
            "message" => {
                return Err(LoadError::Protocol(
                    "the wait turn answered before it was cancelled".into(),
                ));
            }
            "error" => return Err(LoadError::from_error_frame(&frame)),
            _ => {}
        }
    };
    let started = Instant::now();
    send(
        ws,
        &json!({"type": "message", "data": {"text": format!("after cancel {turn}")}}),
    )?;
    let deadline = Instant::now() + target.timeout;
    loop {
        let frame = next_frame(ws, deadline, "the new turn's message")?;
        let turn_id = frame["data"]["turn_id"].as_u64().unwrap_or(0);
        match frame_type(&frame) {
            "message" if turn_id > waiting_turn => return Ok(started.elapsed()),
            "message" => {
                return Err(LoadError::Protocol(
                    "the wait turn answered instead of being cancelled".into(),
                ));
            }
            "error" => return Err(LoadError::from_error_frame(&frame)),
            _ => {}
        }
    }
}

/// Creates a session with at least `events` events in its log and leaves it. Returns the
/// session id and the highest `seq`.
fn prepare_resume(target: &Target, events: u64) -> Result<(String, u64), LoadError> {
    let mut ws = open(target)?;
    let session_id = connect_new(&mut ws, target)?;
    // A plain turn makes three events: user_message, thought, message.
    let turns = events.div_ceil(3);
    let mut highest = 0;
    for turn in 0..turns {
        highest = plain_turn(&mut ws, target, &format!("event filler {turn}"))?;
    }
    close(&mut ws);
    if highest < events {
        return Err(LoadError::Protocol(format!(
            "the session has {highest} events, fewer than {events}"
        )));
    }
    Ok((session_id, highest))
}

/// Reconnects to `session_id` having seen all but the last `events` events, and times from
/// sending `connect` to receiving the event with seq `highest`.
fn resume_once(
    target: &Target,
    session_id: &str,
    highest: u64,
    events: u64,
) -> Result<Duration, LoadError> {
    let mut ws = open(target)?;
    let last_seq = highest - events;
    let started = Instant::now();
    send(
        &mut ws,
        &json!({"type": "connect", "data": {"session_id": session_id, "last_seq": last_seq}}),
    )?;
    let deadline = Instant::now() + target.timeout;
    let mut replayed = 0u64;
    let mut expected_seq = last_seq + 1;
    let result = loop {
        let frame = next_frame(&mut ws, deadline, "the last replayed event")?;
        match frame_type(&frame) {
            "session_info" => {
                let data = &frame["data"];
                if data["session_id"] != session_id || data["reconnected"] != true {
                    break Err(LoadError::Protocol(format!(
                        "resume did not reconnect to the session: {data}"
                    )));
                }
            }
            "error" => break Err(LoadError::from_error_frame(&frame)),
            "status" if frame["data"]["code"] == "gap" => {
                break Err(LoadError::Protocol(format!(
                    "replay has a gap: {}",
                    frame["data"]
                )));
            }
            _ => {}
        }
        if let Some(seq) = frame["seq"].as_u64() {
            if seq != expected_seq {
                break Err(LoadError::Protocol(format!(
                    "replay sent seq {seq}, expected {expected_seq}"
                )));
            }
            expected_seq += 1;
            replayed += 1;
            if seq == highest {
                break Ok(started.elapsed());
            }
        }
    };
    close(&mut ws);
    match result {
        Ok(_) if replayed != events => Err(LoadError::Protocol(format!(
            "replayed {replayed} events, expected {events}"
        ))),
        other => other,
    }
}

/// Sends `connect` for a new session and waits for `ready`. Returns the session id.
fn connect_new(ws: &mut Socket, target: &Target) -> Result<String, LoadError> {
    send(ws, &json!({"type": "connect", "data": {}}))?;
    let deadline = Instant::now() + target.timeout;
    let mut session_id = String::new();
    loop {
        let frame = next_frame(ws, deadline, "ready")?;
        match frame_type(&frame) {
            "session_info" => {
                session_id = frame["data"]["session_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
            "ready" => return Ok(session_id),
            "error" => return Err(LoadError::from_error_frame(&frame)),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets.
// ---------------------------------------------------------------------------------------------

type Socket = WebSocket<TcpStream>;

/// Where to connect, and how long any one step may take.
#[derive(Clone, Debug)]
struct Target {
    url: String,
    addr: SocketAddr,
    timeout: Duration,
    /// Every server given, this one first: client `i` goes to the `i`-th, round the list.
    spread: Vec<(String, SocketAddr)>,
}

impl Target {
    fn parse(urls: &str, timeout: Duration) -> Result<Self, String> {
        let mut spread = Vec::new();
        for url in urls.split(',') {
            let rest = url
                .strip_prefix("ws://")
                .ok_or_else(|| format!("{url:?} is not a ws:// URL"))?;
            let host_port = rest.split('/').next().unwrap_or_default();
            let addr = host_port
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {host_port:?}: {e}"))?
                .next()
                .ok_or_else(|| format!("{host_port:?} resolves to no address"))?;
            spread.push((url.to_owned(), addr));
        }
        let (url, addr) = spread[0].clone();
        Ok(Target {
            url,
            addr,
            timeout,
            spread,
        })
    }

    /// The server client `index` talks to.
    fn for_client(&self, index: usize) -> Target {
        let (url, addr) = self.spread[index % self.spread.len()].clone();
        Target {
            url,
            addr,
            ..self.clone()
        }
    }
}

/// Opens a TCP connection with timeouts and performs the WebSocket handshake.
fn open(target: &Target) -> Result<Socket, LoadError> {
    let stream = TcpStream::connect_timeout(&target.addr, target.timeout)
        .map_err(|e| LoadError::io("tcp connect", e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| LoadError::io("nodelay", e))?;
    stream
        .set_read_timeout(Some(target.timeout))
        .map_err(|e| LoadError::io("read timeout", e))?;
    stream
        .set_write_timeout(Some(target.timeout))
        .map_err(|e| LoadError::io("write timeout", e))?;
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    match tungstenite::client::client_with_config(target.url.as_str(), stream, Some(config)) {
        Ok((ws, _response)) => Ok(ws),
        // A blocking socket is only interrupted by its read timeout.
        Err(HandshakeError::Interrupted(_)) => Err(LoadError::Timeout("the handshake")),
        Err(HandshakeError::Failure(e)) => Err(LoadError::websocket("handshake", e)),
    }
}

fn send(ws: &mut Socket, frame: &Value) -> Result<(), LoadError> {
    ws.send(Message::text(frame.to_string()))
        .map_err(|e| LoadError::websocket("send", e))
}

/// Reads the next JSON text frame, skipping pings and pongs, until `deadline`.
fn next_frame(
    ws: &mut Socket,
    deadline: Instant,
    waiting_for: &'static str,
) -> Result<Value, LoadError> {
    loop {
        if Instant::now() >= deadline {
            return Err(LoadError::Timeout(waiting_for));
        }
        match ws.read() {
            Ok(Message::Text(text)) => {
                return serde_json::from_str(text.as_str())
                    .map_err(|e| LoadError::Protocol(format!("frame is not JSON: {e}")));
            }
            Ok(Message::Close(_)) => return Err(LoadError::Closed),
            Ok(Message::Binary(_)) => {
                return Err(LoadError::Protocol("unexpected binary frame".into()));
            }
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return Err(LoadError::Timeout(waiting_for));
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Err(LoadError::Closed);
            }
            Err(e) => return Err(LoadError::websocket("read", e)),
        }
    }
}

/// Checks without waiting that the server has not closed the socket.
fn is_open(ws: &mut Socket) -> Result<(), LoadError> {
    ws.get_mut()
        .set_nonblocking(true)
        .map_err(|e| LoadError::io("nonblocking", e))?;
    loop {
        match ws.read() {
            // Pings (answered by tungstenite) and stray frames still mean the socket is open.
            Ok(Message::Close(_)) => return Err(LoadError::Closed),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Err(LoadError::Closed);
            }
            Err(e) => return Err(LoadError::websocket("read", e)),
        }
    }
}

/// Starts the closing handshake and leaves; the server sees the Close frame or the EOF.
fn close(ws: &mut Socket) {
    let _ = ws.close(None);
    let _ = ws.flush();
}

fn frame_type(frame: &Value) -> &str {
    frame["type"].as_str().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Running many clients.
// ---------------------------------------------------------------------------------------------

/// Starts a named client thread with a small stack.
fn client_thread<T: Send + 'static>(
    index: usize,
    body: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<T>, LoadError> {
    thread::Builder::new()
        .name(format!("client-{index}"))
        .stack_size(CLIENT_STACK_BYTES)
        .spawn(body)
        .map_err(|e| LoadError::io("spawn", e))
}

/// Runs `clients` threads that each open a session, wait at the gate until every one of them
/// is connected, then run `body` on their socket. The measuring window starts at the gate.
fn run_clients<F>(
    target: &Target,
    clients: usize,
    limit: Duration,
    pid: Option<u32>,
    body: F,
) -> ClientRun
where
    F: Fn(&mut Socket, &Target, Instant, &mut Tally) + Send + Copy + 'static,
{
    let gate = Gate::new();
    // With `pid`, each client keeps its socket open after its work until the server's context
    // switches are read: a server thread that ends (a connection's, when its socket closes)
    // takes its count with it.
    let measured = Gate::new();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut handles = Vec::with_capacity(clients);
    let mut failures = Tally::default();
    for index in 0..clients {
        let gate = gate.clone();
        let measured = measured.clone();
        let done_tx = done_tx.clone();
        let hold_open = pid.is_some();
        let ready_tx = ready_tx.clone();
        let target = target.for_client(index);
        let spawned = client_thread(index, move || {
            let mut tally = Tally::default();
            let connected = open(&target).and_then(|mut ws| {
                connect_new(&mut ws, &target)?;
                Ok(ws)
            });
            let _ = ready_tx.send(());
            let (start, deadline) = gate.wait(limit);
            let mut ws = match connected {
                Ok(ws) => ws,
                Err(e) => {
                    tally.fail(&e);
                    return (tally, start);
                }
            };
            body(&mut ws, &target, deadline, &mut tally);
            let finished = Instant::now();
            if hold_open {
                let _ = done_tx.send(());
                drop(done_tx);
                measured.wait(limit);
            }
            close(&mut ws);
            (tally, finished)
        });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => failures.fail(&e),
        }
    }
    drop(done_tx);
    let mut run = ClientRun::start_and_join_measuring(
        handles,
        ready_tx,
        &ready_rx,
        &gate,
        pid.map(|pid| (pid, done_rx, measured)),
    );
    run.tally.merge(failures);
    run
}

/// A one-shot gate: client threads wait at it until the main thread opens it, and learn when
/// the measuring window started.
#[derive(Clone)]
struct Gate {
    state: Arc<(Mutex<Option<Instant>>, Condvar)>,
}

impl Gate {
    fn new() -> Self {
        Gate {
            state: Arc::new((Mutex::new(None), Condvar::new())),
        }
    }

    /// Opens the gate; returns the start of the measuring window.
    fn open(&self) -> Instant {
        let (lock, opened) = &*self.state;
        let start = Instant::now();
        // A poisoned lock only means a client thread panicked; the gate still opens.
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        *state = Some(start);
        opened.notify_all();
        start
    }

    /// Waits until the gate opens; returns the start and the deadline for new work.
    fn wait(&self, limit: Duration) -> (Instant, Instant) {
        let (lock, opened) = &*self.state;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(start) = *state {
                return (start, start + limit);
            }
            state = opened.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What the client threads of one run measured together.
struct ClientRun {
    tally: Tally,
    window: Duration,
    /// When each client finished, from the start of the window.
    finishes: Vec<Duration>,
    /// The server's CPU ticks when the window opened, when asked for.
    cpu_at_start: Option<u64>,
    /// The server's context switches over the window, when asked for.
    switches: Option<u64>,
}

impl ClientRun {
    /// Waits until every client thread is parked at the gate, opens it (so that the clients
    /// start as one burst), and joins them.
    fn start_and_join(
        handles: Vec<thread::JoinHandle<(Tally, Instant)>>,
        ready_tx: mpsc::Sender<()>,
        ready_rx: &mpsc::Receiver<()>,
        gate: &Gate,
    ) -> Self {
        Self::start_and_join_measuring(handles, ready_tx, ready_rx, gate, None)
    }

    /// [`ClientRun::start_and_join`], noting the CPU time and context switches of process
    /// `pid` as the gate opens, and its context switches again once every client is done (each
    /// says so on `done` and waits at `measured` before it closes its socket).
    fn start_and_join_measuring(
        handles: Vec<thread::JoinHandle<(Tally, Instant)>>,
        ready_tx: mpsc::Sender<()>,
        ready_rx: &mpsc::Receiver<()>,
        gate: &Gate,
        measure: Option<(u32, mpsc::Receiver<()>, Gate)>,
    ) -> Self {
        drop(ready_tx);
        for _ in 0..handles.len() {
            if ready_rx.recv().is_err() {
                break;
            }
        }
        let pid = measure.as_ref().map(|(pid, _, _)| *pid);
        let switches_at_start = pid.and_then(proc_context_switches);
        let cpu_at_start = pid.and_then(proc_cpu_ticks);
        let start = gate.open();
        let mut switches = None;
        if let Some((pid, done, measured)) = measure {
            // Every client sends once, or ends (its sender goes) without sending.
            while done.recv().is_ok() {}
            switches = proc_context_switches(pid)
                .zip(switches_at_start)
                .map(|(end, start)| end.saturating_sub(start));
            measured.open();
        }
        let mut run = Self::join(handles, start);
        run.cpu_at_start = cpu_at_start;
        run.switches = switches;
        run
    }

    /// The CPU ticks process `pid` spent since the window opened, once it has settled (no
    /// tick for 300 ms, or 5 s at most): work a server deferred past the last answer counts.
    fn cpu_ticks_since_start(&self, pid: Option<u32>) -> Option<u64> {
        let (pid, start) = (pid?, self.cpu_at_start?);
        let mut last = proc_cpu_ticks(pid)?;
        let give_up = Instant::now() + Duration::from_secs(5);
        let mut quiet = 0;
        while quiet < 3 && Instant::now() < give_up {
            thread::sleep(Duration::from_millis(100));
            let now = proc_cpu_ticks(pid)?;
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
        }
        Some(last.saturating_sub(start))
    }

    /// Joins the client threads; the window runs from `start` to the last one's finish.
    fn join(handles: Vec<thread::JoinHandle<(Tally, Instant)>>, start: Instant) -> Self {
        let mut tally = Tally::default();
        let mut end = start;
        let mut finishes = Vec::with_capacity(handles.len());
        for handle in handles {
            match handle.join() {
                Ok((client, finished)) => {
                    tally.merge(client);
                    end = end.max(finished);
                    finishes.push(finished.saturating_duration_since(start));
                }
                Err(_) => tally.fail(&LoadError::Protocol("a client thread panicked".into())),
            }
        }
        ClientRun {
            tally,
            window: end - start,
            finishes,
            cpu_at_start: None,
            switches: None,
        }
    }

    fn into_outcome(self, scenario: &'static str, clients: usize, expected: usize) -> Outcome {
        Outcome {
            scenario,
            clients,
            expected,
            window: self.window,
            tally: self.tally,
            extra: Map::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results.
// ---------------------------------------------------------------------------------------------

/// Latencies and failures.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: usize,
    timeouts: usize,
    first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, latency: Duration) {
        self.latencies.push(latency);
    }

    fn fail(&mut self, error: &LoadError) {
        self.errors += 1;
        if matches!(error, LoadError::Timeout(_)) {
            self.timeouts += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One scenario's result, before it becomes a JSON line.
struct Outcome {
    scenario: &'static str,
    clients: usize,
    expected: usize,
    window: Duration,
    tally: Tally,
    extra: Map<String, Value>,
}

impl Outcome {
    fn into_json(mut self) -> Map<String, Value> {
        let latencies = &mut self.tally.latencies;
        latencies.sort_unstable();
        let count = latencies.len();
        let seconds = self.window.as_secs_f64();
        let throughput = if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        };
        let mean_ms = if count > 0 {
            latencies.iter().sum::<Duration>().as_secs_f64() * 1000.0 / count as f64
        } else {
            0.0
        };
        let mut line = Map::new();
        line.insert("clients".into(), json!(self.clients));
        line.insert("count".into(), json!(count));
        line.insert("expected".into(), json!(self.expected));
        line.insert("errors".into(), json!(self.tally.errors));
        line.insert("timeouts".into(), json!(self.tally.timeouts));
        line.insert("elapsed_s".into(), json!(round3(seconds)));
        line.insert("throughput_per_s".into(), json!(round3(throughput)));
        for (name, fraction) in [
            ("p50_ms", 0.5),
            ("p90_ms", 0.9),
            ("p99_ms", 0.99),
            ("p999_ms", 0.999),
            ("max_ms", 1.0),
        ] {
            line.insert(name.into(), json!(millis(percentile(latencies, fraction))));
        }
        line.insert("mean_ms".into(), json!(round3(mean_ms)));
        if let Some(error) = self.tally.first_error {
            line.insert("first_error".into(), json!(error));
        }
        line.extend(self.extra);
        line
    }
}

/// The nearest-rank percentile of sorted latencies; zero when there are none.
fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(duration: Duration) -> f64 {
    round3(duration.as_secs_f64() * 1000.0)
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------------------------
// The server's process, from /proc.
// ---------------------------------------------------------------------------------------------

struct ProcStatus {
    rss_kib: u64,
    threads: u64,
}

/// VmRSS and Threads from `/proc/PID/status`.
fn proc_status(pid: u32) -> Option<ProcStatus> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse::<u64>().ok())
    };
    Some(ProcStatus {
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")?,
    })
}

/// Context switches (`voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches`) summed over the
/// live threads of process `pid`, from `/proc/PID/task/*/status`: `/proc/PID/status` counts
/// the main thread alone. A thread that ended takes its count with it, so the clients keep
/// their sockets (and so the server's connection threads) open until it is read.
fn proc_context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(text) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in text.lines() {
            let count = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"));
            if let Some(count) = count.and_then(|count| count.trim().parse::<u64>().ok()) {
                total += count;
            }
        }
    }
    Some(total)
}

/// utime + stime of the whole process from `/proc/PID/stat`, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after it are plain.
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted from the state field (3) after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

// ---------------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------------

/// Why one operation of a client failed.
#[derive(Debug)]
enum LoadError {
    /// No answer within `--timeout-ms`; names what was awaited.
    Timeout(&'static str),
    /// The server closed the connection.
    Closed,
    /// A socket call failed.
    Io {
        step: &'static str,
        source: std::io::Error,
    },
    /// tungstenite failed.
    WebSocket {
        step: &'static str,
        source: tungstenite::Error,
    },
    /// The server answered something unexpected.
    Protocol(String),
}

impl LoadError {
    fn io(step: &'static str, source: std::io::Error) -> Self {
        if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            return LoadError::Timeout(step);
        }
        LoadError::Io { step, source }
    }

    fn websocket(step: &'static str, source: tungstenite::Error) -> Self {
        match source {
            tungstenite::Error::Io(e) => LoadError::io(step, e),
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                LoadError::Closed
            }
            source => LoadError::WebSocket { step, source },
        }
    }

    fn from_error_frame(frame: &Value) -> Self {
        LoadError::Protocol(format!("server error frame: {}", frame["data"]))
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Timeout(what) => write!(f, "timeout: waiting for {what}"),
            LoadError::Closed => f.write_str("closed: the server closed the connection"),
            LoadError::Io { step, source } => write!(f, "io: {step}: {source}"),
            LoadError::WebSocket { step, source } => write!(f, "websocket: {step}: {source}"),
            LoadError::Protocol(detail) => write!(f, "protocol: {detail}"),
        }
    }
}
