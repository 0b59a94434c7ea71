//! What the store alone costs a turn: the journal's batches of a plain turn (a `user_message`
//! that opens it, a `thought`, a `message` that closes it, and the two messages the model will
//! see), applied to a [`SqliteStore`] in this process, with no server, socket or thread
//! hand-off around them. The CPU time of the whole process (the `checkpoint` thread and the
//! search index's steps included, which a search at the end brings up to date) is divided by
//! the turns.
//!
//! ```text
//! cargo run --release --example storebench [-- --turns 20000]
//! ```
//!
//! It prints one Markdown table: one turn per commit (one client), and one turn of each of 50
//! conversations per commit (what the journal's write groups gather at 50 clients), on a data
//! directory and in memory. Set beside the floor's CPU per turn in BENCHMARKS.md, it is the
//! least a durable turn can cost whatever the server around the store does.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;
use sparky::common::protocol::{ServerFrame, SessionId, TurnId, Usage, encode};
use sparky::model::{ChatMessage, Role};
use sparky::store::{Closing, ConversationStore, SqliteStore, TurnMark, WriteOp};

#[derive(Parser)]
struct Args {
    /// Turns in each measurement.
    #[arg(long, default_value_t = 20_000)]
    turns: u64,
}

/// The process's user and system CPU time so far, every thread's, in microseconds.
fn cpu_us() -> u64 {
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return 0;
    };
    let micros = |time: TimeVal| time.tv_sec() as u64 * 1_000_000 + time.tv_usec() as u64;
    micros(usage.user_time()) + micros(usage.system_time())
}

/// The batch of turn `turn` of `session`, as the journal writes it when the model answers at
/// once.
fn turn_ops(session: &SessionId, turn: u64, ops: &mut Vec<WriteOp>) {
    let id = TurnId(turn);
    let text = format!("hello {turn}");
    let answer = format!("You said: hello {turn}");
    let seq = 3 * turn;
    let frames = [
        (
            ServerFrame::UserMessage {
                attachments: Vec::new(),
                turn_id: id,
                parent: Some(TurnId(turn - 1)),
                text: text.clone(),
                client_id: None,
                edit_of: None,
                regenerate_of: None,
            },
            TurnMark::Opened {
                turn_id: turn,
                text: text.clone(),
                parent: turn - 1,
                client_id: None,
            },
            Some(text.clone()),
        ),
        (
            ServerFrame::Thought {
                turn_id: id,
                text: "No command here, so I echo the text back.".into(),
            },
            TurnMark::None,
            None,
        ),
        (
            ServerFrame::Message {
                turn_id: id,
                text: answer.clone(),
                usage: Some(Usage::default()),
            },
            TurnMark::Closed {
                usage: Usage::default(),
                closing: Closing::Message,
                reset: false,
            },
            Some(answer.clone()),
        ),
    ];
    for (offset, (frame, mark, search_text)) in frames.into_iter().enumerate() {
        let seq = seq - 2 + offset as u64;
        ops.push(WriteOp::Event {
            session: session.clone(),
            seq,
            body: encode(&frame, Some(session), Some(seq)).into(),
            turn: mark,
            search_text,
        });
    }
    ops.push(WriteOp::Messages {
        session: session.clone(),
        first: 2 * (turn - 1),
        turn,
        messages: vec![
            ChatMessage::text(Role::User, text),
            ChatMessage::text(Role::Assistant, answer),
        ],
    });
}

/// CPU microseconds a turn, `turns` turns in commits of one turn of each of `conversations`.
fn measure(store: &SqliteStore, conversations: usize, turns: u64) -> f64 {
    let sessions: Vec<SessionId> = (0..conversations)
        .map(|n| {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&(n as u64 + 1).to_le_bytes());
            bytes[8] = conversations as u8;
            SessionId::from_random_bytes(bytes)
        })
        .collect();
    let created: Vec<WriteOp> = sessions
        .iter()
        .map(|id| WriteOp::CreateSession {
            id: id.clone(),
            owner: "local".into(),
            user_id: None,
            personality: None,
            model: None,
        })
        .collect();
    store.apply(&created).expect("create");
    let rounds = turns / conversations as u64;
    let started = (cpu_us(), Instant::now());
    let mut ops = Vec::new();
    for turn in 1..=rounds {
        ops.clear();
        for session in &sessions {
            turn_ops(session, turn, &mut ops);
        }
        store.apply(&ops).expect("apply");
    }
    // The search index's steps that were left are part of the cost.
    store.list("local", Some("hello"), 1).expect("search");
    let used = cpu_us() - started.0;
    eprintln!(
        "{conversations} a commit: {} turns in {:.2?}",
        rounds * conversations as u64,
        started.1.elapsed()
    );
    used as f64 / (rounds * conversations as u64) as f64
}

fn main() {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("sparky-storebench-{}", std::process::id()));
    println!("| store | turns a commit | CPU µs a turn |");
    println!("|---|--:|--:|");
    for conversations in [1, 50] {
        let path: PathBuf = dir.join(conversations.to_string());
        let _ = std::fs::remove_dir_all(&path);
        let store = SqliteStore::open(&path).expect("open");
        let on_disk = measure(&store, conversations, args.turns);
        drop(store);
        let _ = std::fs::remove_dir_all(&path);
        let store = SqliteStore::in_memory().expect("in memory");
        let in_memory = measure(&store, conversations, args.turns);
        println!("| SQLite, data directory | {conversations} | {on_disk:.1} |");
        println!("| SQLite, in memory | {conversations} | {in_memory:.1} |");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
