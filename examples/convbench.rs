//! The conversations benchmark: a data directory of 10,000 stored conversations of 100 turns
//! each (ten principals of 1,000), then the release server started on it, measured from
//! outside over loopback.
//!
//! ```text
//! cargo build --release && cargo run --release --example convbench [-- --server target/release/sparky]
//! ```
//!
//! It prints one Markdown table: time to listen and RSS at start, cold resumes with
//! `last_seq: 0` (300 events each), a 10,002-event replay, the conversation list with and
//! without a search, and memory after idle conversations left it. The data directory is built
//! once, through the store's own batch writes, under `target/convbench/` and reused while its
//! marker matches.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparky::common::auth::Principal;
use sparky::common::protocol::{ServerFrame, SessionId, TurnId, Usage, encode};
use sparky::model::{ChatMessage, Role};
use sparky::store::{Closing, ConversationStore, SqliteStore, TurnMark, WriteOp};
use tungstenite::Message;

/// Principals, each with `PER_PRINCIPAL` conversations.
const PRINCIPALS: usize = 10;
const PER_PRINCIPAL: usize = 1_000;
const TURNS: u64 = 100;
/// Turns of the one long conversation (3 events a turn: 10,002 events).
const LONG_TURNS: u64 = 3_334;
/// Turns of each conversation of the branch figures, linear or branched.
const TREE_TURNS: u64 = 1_000;
/// Every fifth turn of a branched conversation is a branch: 200 in 1,000 turns.
const BRANCH_EVERY: u64 = 5;
/// Conversations of each shape (linear, branched) the branch figures measure.
const TREE_SAMPLES: usize = 100;
/// Topics: a conversation's messages name one, so that a search finds 1 in 50.
const TOPICS: [&str; 50] = [
    "otters",
    "beavers",
    "herons",
    "tulips",
    "saturn",
    "granite",
    "violins",
    "sourdough",
    "glaciers",
    "kestrels",
    "lanterns",
    "marble",
    "nebulae",
    "orchids",
    "pelicans",
    "quartz",
    "rivers",
    "sparrows",
    "teapots",
    "umbrellas",
    "volcanoes",
    "walruses",
    "yaks",
    "zebras",
    "anchors",
    "bridges",
    "cactus",
    "dunes",
    "eclipses",
    "ferns",
    "geysers",
    "harbors",
    "icebergs",
    "jasmine",
    "kayaks",
    "lichens",
    "meteors",
    "narwhals",
    "oases",
    "penguins",
    "quilts",
    "reindeer",
    "sequoias",
    "tornados",
    "urchins",
    "vineyards",
    "wombats",
    "xylophones",
    "yarrow",
    "zeppelins",
];
/// Bump to rebuild cached data after a change of what is generated.
const DATA_VERSION: &str = "convbench-3";

fn token(principal: usize) -> String {
    format!("bench-token-{principal}")
}

/// The `n`th linear conversation of [`TREE_TURNS`] turns (principal 0's).
fn linear_id(n: usize) -> SessionId {
    session_id(0, PER_PRINCIPAL + 1 + n)
}

/// The `n`th conversation of [`TREE_TURNS`] turns with a branch every [`BRANCH_EVERY`].
fn branched_id(n: usize) -> SessionId {
    session_id(0, PER_PRINCIPAL + 1 + TREE_SAMPLES + n)
}

fn session_id(principal: usize, n: usize) -> SessionId {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&(principal as u64).to_be_bytes());
    bytes[8..].copy_from_slice(&(n as u64 + 1).to_be_bytes());
    SessionId::from_random_bytes(bytes)
}

/// The writes of one conversation of `turns` turns, as the server would make them.
fn conversation(id: &SessionId, owner: &str, turns: u64, topic: &str) -> Vec<WriteOp> {
    branched(id, owner, turns, topic, None)
}

/// [`conversation`], where every `every`th turn (when given) is another answer beside the turn
/// before it (a `regenerate`): a tree with `turns / every` branches, its leaf the last turn.
fn branched(
    id: &SessionId,
    owner: &str,
    turns: u64,
    topic: &str,
    every: Option<u64>,
) -> Vec<WriteOp> {
    // parents[t] is turn t's parent.
    let mut parents = vec![0u64];
    let mut ops = vec![WriteOp::CreateSession {
        id: id.clone(),
        owner: owner.to_owned(),
        user_id: None,
        personality: None,
        model: None,
    }];
    let mut seq = 0;
    let mut event = |frame: ServerFrame, turn: TurnMark, search: Option<String>| {
        seq += 1;
        WriteOp::Event {
            session: id.clone(),
            seq,
            body: encode(&frame, Some(id), Some(seq)).into(),
            turn,
            search_text: search,
        }
    };
    for turn in 1..=turns {
        let text = format!("tell me something new about {topic}, part {turn}");
        let answer = format!("You said: {text}");
        let turn_id = TurnId(turn);
        let beside = every.is_some_and(|k| turn > 1 && turn % k == 0);
        let parent = if beside {
            parents[turn as usize - 1]
        } else {
            turn - 1
        };
        parents.push(parent);
        ops.push(event(
            ServerFrame::UserMessage {
                attachments: Vec::new(),
                turn_id,
                parent: Some(TurnId(parent)),
                text: text.clone(),
                client_id: None,
                edit_of: None,
                regenerate_of: beside.then_some(TurnId(turn - 1)),
            },
            TurnMark::Opened {
                turn_id: turn,
                text: text.clone(),
                parent,
                client_id: None,
            },
            Some(text.clone()),
        ));
        ops.push(event(
            ServerFrame::Thought {
                turn_id,
                text: "No command here, so I echo the text back.".into(),
            },
            TurnMark::None,
            None,
        ));
        ops.push(event(
            ServerFrame::Message {
                turn_id,
                text: answer.clone(),
                usage: None,
            },
            TurnMark::Closed {
                usage: Usage::default(),
                closing: Closing::Message,
                reset: false,
            },
            Some(answer.clone()),
        ));
        ops.push(WriteOp::Messages {
            session: id.clone(),
            first: (turn - 1) * 2,
            turn,
            messages: vec![
                ChatMessage::text(Role::User, text),
                ChatMessage::text(Role::Assistant, answer),
            ],
        });
    }
    ops
}

/// Builds (or reuses) the data directory.
fn data_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/convbench");
    let marker = dir.join("READY");
    let expected = format!("{DATA_VERSION} {}", Principal::of_token(&token(0)).as_str());
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(expected.as_str()) {
        return dir.join("data");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let started = Instant::now();
    let store = SqliteStore::open(&dir.join("data")).expect("open the store");
    for principal in 0..PRINCIPALS {
        let owner = Principal::of_token(&token(principal));
        for chunk in (0..PER_PRINCIPAL).collect::<Vec<_>>().chunks(50) {
            let batch: Vec<WriteOp> = chunk
                .iter()
                .flat_map(|&n| {
                    let topic = TOPICS[n % TOPICS.len()];
                    conversation(&session_id(principal, n), owner.as_str(), TURNS, topic)
                })
                .collect();
            store.apply(&batch).expect("write a batch");
        }
        eprintln!(
            "convbench: principal {principal} written ({:?})",
            started.elapsed()
        );
    }
    let owner = Principal::of_token(&token(0));
    let long = conversation(
        &session_id(0, PER_PRINCIPAL),
        owner.as_str(),
        LONG_TURNS,
        "comets",
    );
    store.apply(&long).expect("write the long conversation");
    for n in 0..TREE_SAMPLES {
        for (at, every) in [(linear_id(n), None), (branched_id(n), Some(BRANCH_EVERY))] {
            let ops = branched(&at, owner.as_str(), TREE_TURNS, "trees", every);
            store.apply(&ops).expect("write a tree conversation");
        }
    }
    drop(store);
    std::fs::write(&marker, expected).expect("write the marker");
    eprintln!("convbench: data written in {:?}", started.elapsed());
    dir.join("data")
}

/// The server process; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &Path, data: &Path, tokens: &Path) -> (Server, Duration) {
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args([
            "--addr",
            "127.0.0.1:0",
            "--idle-timeout",
            "2s",
            "--rate-limit",
            "off",
        ])
        .arg("--data-dir")
        .arg(data)
        .arg("--auth-token-file")
        .arg(tokens)
        .args(["--log-level", "warn"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the first line");
    let took = started.elapsed();
    let addr = line
        .trim()
        .rsplit('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"));
    (Server { child, addr }, took)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Resumes `id` from `last_seq: 0` and returns the time until event `last` arrived.
fn resume(addr: SocketAddr, token: &str, id: &SessionId, last: u64) -> Duration {
    resume_from(addr, token, id, 0, last)
}

/// Resumes `id` from `from` and returns the time until event `last` arrived, or `ready` when
/// there is nothing to replay.
fn resume_from(addr: SocketAddr, token: &str, id: &SessionId, from: u64, last: u64) -> Duration {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let url = format!("ws://{addr}/ws?token={token}");
    let (mut ws, _) = tungstenite::client(url, stream).expect("handshake");
    let connect = json!({"type": "connect", "data": {"session_id": id.as_str(), "last_seq": from}});
    ws.send(Message::text(connect.to_string())).expect("send");
    loop {
        match ws.read().expect("read") {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(text.as_str()).expect("json");
                if frame["seq"].as_u64() == Some(last) || (from == last && frame["type"] == "ready")
                {
                    return started.elapsed();
                }
                assert_ne!(frame["type"], "error", "{frame}");
                assert_ne!(frame["data"]["is_new"], true, "{id:?} is not stored");
            }
            _ => continue,
        }
    }
}

fn get(addr: SocketAddr, path: &str, token: &str) -> (Duration, String) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let took = started.elapsed();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "{}",
        &response[..80.min(response.len())]
    );
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (took, body)
}

/// p50, p99 and max of `samples`, in ms.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99), at(1.0))
}

fn healthz_sessions(addr: SocketAddr, token: &str) -> u64 {
    let (_, body) = get(addr, "/healthz", token);
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["sessions"].as_u64())
        .unwrap_or(0)
}

fn main() {
    let binary = std::env::args()
        .skip_while(|a| a != "--server")
        .nth(1)
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/sparky"),
            PathBuf::from,
        );
    let data = data_dir();
    let tokens = data.parent().unwrap().join("tokens");
    let lines: Vec<String> = (0..PRINCIPALS).map(token).collect();
    std::fs::write(&tokens, lines.join("\n")).unwrap();
    let (server, listen) = start(&binary, &data, &tokens);
    let pid = server.child.id();
    let rss_start = rss_mib(pid);
    let addr = server.addr;
    let me = token(0);

    // Cold resumes: 200 conversations, none in memory yet.
    let resumes: Vec<Duration> = (0..200)
        .map(|n| resume(addr, &me, &session_id(0, n * 5), TURNS * 3))
        .collect();
    let resume_stats = percentiles(resumes);
    let rss_after_resumes = rss_mib(pid);

    // One conversation of 10,002 events, cold and then warm.
    let long = session_id(0, PER_PRINCIPAL);
    let long_cold = resume(addr, &me, &long, LONG_TURNS * 3);
    let long_warm = percentiles(
        (0..5)
            .map(|_| resume(addr, &me, &long, LONG_TURNS * 3))
            .collect(),
    );

    // Branches: conversations of 1,000 turns, linear and with 200 branches, each brought back
    // from the store once (no replay: the time to `ready`), then their trees read by the API.
    let tree_events = TREE_TURNS * 3;
    let tree_resume = |id: fn(usize) -> SessionId| {
        percentiles(
            (0..TREE_SAMPLES)
                .map(|n| resume_from(addr, &me, &id(n), tree_events, tree_events))
                .collect(),
        )
    };
    let (linear_resume, branched_resume) = (tree_resume(linear_id), tree_resume(branched_id));
    let tree_api = |id: fn(usize) -> SessionId| {
        let (_, body) = get(
            addr,
            &format!("/api/conversations/{}/turns", id(0).as_str()),
            &me,
        );
        let turns = serde_json::from_str::<Value>(&body).unwrap()["turns"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(turns as u64, TREE_TURNS);
        percentiles(
            (0..TREE_SAMPLES * 2)
                .map(|n| {
                    let path =
                        format!("/api/conversations/{}/turns", id(n % TREE_SAMPLES).as_str());
                    get(addr, &path, &me).0
                })
                .collect(),
        )
    };
    let (linear_api, branched_api) = (tree_api(linear_id), tree_api(branched_id));

    // The list, and a search that matches one conversation in 50.
    let list: Vec<Duration> = (0..200)
        .map(|_| get(addr, "/api/conversations", &me).0)
        .collect();
    let (_, body) = get(addr, "/api/conversations", &me);
    let listed = serde_json::from_str::<Value>(&body).unwrap()["conversations"]
        .as_array()
        .map_or(0, Vec::len);
    let search: Vec<Duration> = (0..200)
        .map(|i| {
            get(
                addr,
                &format!("/api/conversations?q={}", TOPICS[i % TOPICS.len()]),
                &me,
            )
            .0
        })
        .collect();
    let (_, found) = get(addr, "/api/conversations?q=otters", &me);
    let found = serde_json::from_str::<Value>(&found).unwrap()["conversations"]
        .as_array()
        .map_or(0, Vec::len);

    // Eviction: wait until every conversation left memory, then cycle 1,000 more through.
    let wait_empty = || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while healthz_sessions(addr, &me) > 0 {
            assert!(Instant::now() < deadline, "sessions did not leave memory");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_empty();
    let rss_evicted = rss_mib(pid);
    // Two rounds of 1,000 other conversations coming into memory and leaving it: the second
    // round reuses what the first freed, so an evicted conversation leaves nothing behind.
    let round = |offset: usize| {
        for n in 0..1_000 {
            let principal = 1 + n % (PRINCIPALS - 1);
            let conversation = (n + offset) % PER_PRINCIPAL;
            resume(
                addr,
                &token(principal),
                &session_id(principal, conversation),
                TURNS * 3,
            );
        }
        let live = healthz_sessions(addr, &me);
        wait_empty();
        (live, rss_mib(pid))
    };
    // Four rounds: the allocator settles over the first two, and the last must not have grown
    // past the second.
    let rounds: Vec<(u64, f64)> = (0..4).map(round).collect();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| figure | value | target | met? |");
    println!("|---|--:|---|---|");
    let row = |figure: &str, value: String, target: &str, met: bool| {
        println!(
            "| {figure} | {value} | {target} | {} |",
            if met { "met" } else { "**missed**" }
        );
    };
    row(
        "time from start to `listening on`, ms",
        format!("{:.0}", ms(listen)),
        "< 1000",
        listen < Duration::from_secs(1),
    );
    row(
        "RSS when listening, MiB",
        format!("{rss_start:.1}"),
        "< 40",
        rss_start < 40.0,
    );
    row(
        "cold resume, `last_seq: 0`, 300 events: p50 / p99 / max, ms (200 conversations)",
        format!(
            "{:.2} / {:.2} / {:.2}",
            resume_stats.0, resume_stats.1, resume_stats.2
        ),
        "p99 < 25",
        resume_stats.1 < 25.0,
    );
    row(
        "replay of 10,002 events, cold, ms",
        format!("{:.0}", ms(long_cold)),
        "< 300",
        long_cold < Duration::from_millis(300),
    );
    row(
        "replay of 10,002 events, in memory: p50 / max, ms (5 runs)",
        format!("{:.0} / {:.0}", long_warm.0, long_warm.2),
        "< 300",
        long_warm.2 < 300.0,
    );
    let list_stats = percentiles(list);
    row(
        &format!("`GET /api/conversations` ({listed} listed): p50 / p99, ms (200 requests)"),
        format!("{:.2} / {:.2}", list_stats.0, list_stats.1),
        "p99 < 20",
        list_stats.1 < 20.0,
    );
    let search_stats = percentiles(search);
    row(
        &format!("`GET /api/conversations?q=topic` ({found} found): p50 / p99, ms (200 requests)"),
        format!("{:.2} / {:.2}", search_stats.0, search_stats.1),
        "p99 < 50",
        search_stats.1 < 50.0,
    );
    for (what, linear, branched) in [
        (
            "cold resume to `ready` (no replay), 1,000 turns",
            linear_resume,
            branched_resume,
        ),
        (
            "`GET /api/conversations/{id}/turns`, 1,000 turns",
            linear_api,
            branched_api,
        ),
    ] {
        row(
            &format!("{what}, linear: p50 / p99, ms ({TREE_SAMPLES} conversations)"),
            format!("{:.2} / {:.2}", linear.0, linear.1),
            "",
            true,
        );
        row(
            &format!("{what}, 200 branches: p50 / p99, ms; p99 ratio to linear"),
            format!(
                "{:.2} / {:.2}; {:.2}x",
                branched.0,
                branched.1,
                branched.1 / linear.1
            ),
            "within 2x of linear",
            branched.1 <= linear.1 * 2.0,
        );
    }
    row(
        "RSS after 200 cold resumes and the long replay, MiB",
        format!("{rss_after_resumes:.1}"),
        "",
        true,
    );
    row(
        "RSS once they left memory, MiB",
        format!("{rss_evicted:.1}"),
        "",
        true,
    );
    for (n, (live, rss)) in rounds.iter().enumerate() {
        let last = n + 1 == rounds.len();
        let settled = rounds.get(1).map_or(0.0, |(_, rss)| *rss);
        row(
            &format!(
                "RSS after round {} of 1,000 other conversations coming into memory and leaving \
                 it, MiB",
                n + 1
            ),
            format!("{rss:.1} ({live} live before they left)"),
            if last {
                "no growth: within 8 MiB of round 2"
            } else {
                ""
            },
            !last || *rss < settled + 8.0,
        );
    }
}
