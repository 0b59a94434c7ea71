//! The store tests, each body run against both stores: [`SqliteStore`] on a temporary
//! directory (or in memory) and [`PostgresStore`] on a fresh database of the test server
//! (`tests/support/postgres.rs`, shared with the integration tests). Then what only one of them
//! has: PostgreSQL's shared databases, schema version, size cap and reconnection.
//!
//! Depends on: `common::protocol`, `model`, `store`, `store::files`, `store::plan`, `store::postgres`, `store::postgres::schema`, `store::sqlite`, `store::sqlite::schema`.

/// The test PostgreSQL server (`tests/support/postgres.rs`), for every unit test that wants a
/// database.
#[path = "../../tests/support/postgres.rs"]
pub(crate) mod cluster;
/// The sweep of temporary directories left by ended test processes, shared with the
/// integration tests.
#[path = "../../tests/support/leftovers.rs"]
mod leftovers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::plan::{Counters, LABEL_CHARS, label_for, search_words};
use super::{
    Closing, ConversationStore, DEFAULT_SEARCH_BUDGET, Edited, FileStore, GraphStore,
    MAX_SEARCH_WORDS, PageSize, PostgresStore, SqliteStore, TurnMark, WriteOp,
};
use crate::common::protocol::{SessionId, Usage};
use crate::model::{ChatMessage, Role, ToolCall};

mod files;
mod mcp_auth;
mod text_index;
mod usage;
mod vectors;

/// The three traits, and what the shared tests need to look inside.
trait TestStore: ConversationStore + GraphStore + FileStore + Send + Sync + 'static {
    /// Rows in `table` (`events`, `messages`, `notes`).
    fn rows(&self, table: &str) -> i64;
    fn set_budget(&self, budget: Duration);
    /// Candidate rows its full-text searches of nodes have read so far.
    fn searched_rows(&self) -> u64;
}

impl TestStore for SqliteStore {
    fn rows(&self, table: &str) -> i64 {
        self.count_rows(table)
    }
    fn set_budget(&self, budget: Duration) {
        self.set_search_budget(budget);
    }
    fn searched_rows(&self) -> u64 {
        AsRef::<Counters>::as_ref(self).searched_rows()
    }
}

impl TestStore for PostgresStore {
    fn rows(&self, table: &str) -> i64 {
        self.count_rows(table)
    }
    fn set_budget(&self, budget: Duration) {
        self.set_search_budget(budget);
    }
    fn searched_rows(&self) -> u64 {
        AsRef::<Counters>::as_ref(self).searched_rows()
    }
}

/// A fresh, empty directory for one store test, `sparky-store-PID-NAME`. It outlives the test;
/// the first call in a later test process removes those of processes that have ended.
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| {
        leftovers::sweep(|name| {
            let rest = name.strip_prefix("sparky-store-")?;
            rest.split('-').next()?.parse().ok()
        })
    });
    let dir = std::env::temp_dir().join(format!("sparky-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn postgres(url: &str) -> PostgresStore {
    PostgresStore::connect(url, 4).unwrap()
}

fn id(byte: u8) -> SessionId {
    SessionId::from_random_bytes([byte; 16])
}

fn create(id: &SessionId, owner: &str) -> WriteOp {
    WriteOp::CreateSession {
        id: id.clone(),
        owner: owner.into(),
        user_id: Some("ann".into()),
        personality: Some("be brief".into()),
        model: None,
    }
}

fn event(session: &SessionId, seq: u64, turn: TurnMark, text: Option<&str>) -> WriteOp {
    WriteOp::Event {
        session: session.clone(),
        seq,
        body: format!("event {seq}").into(),
        turn,
        search_text: text.map(str::to_owned),
    }
}

/// Writes a conversation of each of two owners, reopens the store with `reopen`, reads them
/// back every way there is, and deletes one whole.
fn round_trip<S: TestStore>(store: S, reopen: impl FnOnce() -> S) {
    let (one, two) = (id(1), id(2));
    let opened = TurnMark::Opened {
        turn_id: 1,
        text: "hello otters".into(),
        parent: 0,
        client_id: None,
    };
    let calls = ChatMessage::tool_calls(
        "",
        vec![ToolCall {
            id: "c".into(),
            name: "clock".into(),
            args: json!({}).into(),
        }],
    );
    store
        .apply(&[
            create(&one, "alice"),
            event(&one, 1, opened, Some("hello otters")),
            event(
                &one,
                2,
                TurnMark::Closed {
                    usage: Usage::default(),
                    closing: Closing::Message,
                    reset: false,
                },
                Some("You said: hello otters"),
            ),
            event(
                &one,
                3,
                TurnMark::Opened {
                    turn_id: 2,
                    text: "cut".into(),
                    parent: 1,
                    client_id: None,
                },
                None,
            ),
            WriteOp::Messages {
                session: one.clone(),
                first: 0,
                turn: 1,
                messages: vec![ChatMessage::text(Role::User, "hello otters"), calls.clone()],
            },
            WriteOp::Note {
                session: one.clone(),
                text: "n1".into(),
            },
            WriteOp::Note {
                session: one.clone(),
                text: "n2".into(),
            },
            create(&two, "bob"),
            event(&two, 1, TurnMark::None, Some("otters too")),
        ])
        .unwrap();
    drop(store);
    let store = reopen();
    let loaded = store.load(&one, 2, 100).unwrap().unwrap();
    assert_eq!(loaded.owner, "alice");
    assert_eq!(loaded.user_id.as_deref(), Some("ann"));
    assert_eq!(loaded.personality.as_deref(), Some("be brief"));
    assert_eq!((loaded.last_seq, loaded.tree.len()), (3, 2));
    assert_eq!(loaded.open_turn, Some((2, "cut".to_owned())));
    assert_eq!(
        loaded.tail,
        [(2, "event 2".to_owned()), (3, "event 3".to_owned())]
    );
    assert_eq!(loaded.messages.len(), 2);
    assert_eq!(loaded.messages[1], calls);
    assert_eq!(loaded.notes, ["n1", "n2"]);
    // A cut by count never starts inside an exchange.
    let cut = store.load(&one, 2, 1).unwrap().unwrap();
    assert!(cut.messages.is_empty());
    assert_eq!(cut.next_message, 2);
    assert!(store.load(&id(3), 2, 1).unwrap().is_none());
    let page = store.events(&one, 1, 3, usize::MAX).unwrap();
    assert_eq!(page.events.len(), 2);
    assert_eq!(page.first_seq, 1);
    assert_eq!(store.events(&one, 0, 3, 1).unwrap().events.len(), 1);
    assert!(store.events(&id(3), 0, 3, 1).unwrap().events.is_empty());
    let page = |limit, max_bytes| PageSize { limit, max_bytes };
    let before = store
        .events_before("alice", &one, Some(3), page(1, 100))
        .unwrap();
    assert_eq!(before, Some(vec!["event 2".to_owned()]));
    let all = store
        .events_before("alice", &one, None, page(10, 100))
        .unwrap();
    assert_eq!(all.map(|events| events.len()), Some(3));
    // A page stops at its bytes, counted from the newest event, but is never empty.
    let newest = store
        .events_before("alice", &one, None, page(10, 14))
        .unwrap();
    assert_eq!(newest, Some(vec!["event 2".into(), "event 3".into()]));
    let one_event = store
        .events_before("alice", &one, None, page(10, 1))
        .unwrap();
    assert_eq!(one_event, Some(vec!["event 3".to_owned()]));
    let titles: Vec<_> = store
        .list("alice", None, 10)
        .unwrap()
        .into_iter()
        .map(|s| s.title)
        .collect();
    assert_eq!(titles, [Some("hello otters".to_owned())]);
    assert_eq!(store.list("alice", Some("otters"), 10).unwrap().len(), 1);
    assert_eq!(store.list("alice", Some("OTTER"), 10).unwrap().len(), 1);
    assert_eq!(store.list("bob", Some("otters"), 10).unwrap().len(), 1);
    assert!(store.list("alice", Some("beavers"), 10).unwrap().is_empty());
    assert!(store.list("alice", Some("  ..."), 10).unwrap().is_empty());
    assert_eq!(store.count("alice").unwrap(), 1);
    assert_eq!(store.count("carol").unwrap(), 0);
    let summary = store.summary("alice", &one).unwrap().unwrap();
    assert_eq!(
        (summary.turns, summary.title.as_deref()),
        (2, Some("hello otters"))
    );
    assert!(store.summary("bob", &one).unwrap().is_none());
    assert!(
        store
            .events_before("bob", &one, None, page(10, 100))
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .idle(Duration::from_secs(3600), 10)
            .unwrap()
            .is_empty()
    );

    store
        .apply(&[
            WriteOp::Rename {
                session: one.clone(),
                owner: "bob".into(),
                title: "not yours".into(),
            },
            WriteOp::Rename {
                session: two.clone(),
                owner: "bob".into(),
                title: "renamed".into(),
            },
        ])
        .unwrap();
    assert_eq!(
        store
            .summary("bob", &two)
            .unwrap()
            .unwrap()
            .title
            .as_deref(),
        Some("renamed")
    );
    assert_eq!(
        store
            .summary("alice", &one)
            .unwrap()
            .unwrap()
            .title
            .as_deref(),
        Some("hello otters")
    );

    store
        .apply(&[WriteOp::DeleteSession {
            session: one.clone(),
        }])
        .unwrap();
    assert!(store.load(&one, 10, 10).unwrap().is_none());
    assert!(store.list("alice", Some("otters"), 10).unwrap().is_empty());
    // Writes for a deleted conversation are skipped, not failed.
    store
        .apply(&[event(&one, 4, TurnMark::None, None)])
        .unwrap();
    for (table, left) in [("events", 1), ("messages", 0), ("notes", 0)] {
        assert_eq!(store.rows(table), left, "{table}");
    }
}

/// One batch that deletes a conversation between writes to another: what came before the
/// deletion goes with it, a later write for it is skipped, and the other conversation's turn,
/// opened before the deletion and closed after it, ends up closed.
fn a_deletion_inside_a_batch_takes_only_its_own_rows<S: TestStore>(store: S) -> S {
    let (one, two) = (id(1), id(2));
    store
        .apply(&[create(&one, "ann"), create(&two, "ann")])
        .unwrap();
    let opened = TurnMark::Opened {
        turn_id: 1,
        text: "hi".into(),
        parent: 0,
        client_id: None,
    };
    let closed = TurnMark::Closed {
        usage: Usage::default(),
        closing: Closing::Message,
        reset: false,
    };
    store
        .apply(&[
            event(&one, 1, opened.clone(), Some("otters")),
            event(&two, 1, opened, Some("otters")),
            WriteOp::Note {
                session: one.clone(),
                text: "n".into(),
            },
            WriteOp::DeleteSession {
                session: one.clone(),
            },
            event(&one, 2, TurnMark::None, None),
            event(&two, 2, closed, None),
        ])
        .unwrap();
    assert!(store.load(&one, 10, 10).unwrap().is_none());
    let kept = store.load(&two, 10, 10).unwrap().unwrap();
    assert_eq!(
        (kept.last_seq, kept.tree.len(), kept.open_turn),
        (2, 1, None)
    );
    assert_eq!(kept.tail.len(), 2);
    assert_eq!((store.rows("events"), store.rows("notes")), (2, 0));
    assert_eq!(store.list("ann", Some("otters"), 10).unwrap().len(), 1);
    store
}

fn reassigning_an_owner_moves_its_conversations_and_nodes_only<S: TestStore>(store: S) {
    let (one, two) = (id(1), id(2));
    let opened = TurnMark::Opened {
        turn_id: 1,
        text: "owls at night".into(),
        parent: 0,
        client_id: None,
    };
    store
        .apply(&[
            create(&one, "old"),
            event(&one, 1, opened, Some("owls at night")),
            event(&one, 2, TurnMark::None, Some("You said: owls hoot")),
            create(&two, "other"),
        ])
        .unwrap();
    store.remember("old", "owls hoot").unwrap();
    store.remember("other", "owls hoot").unwrap();
    assert_eq!(store.reassign_owner("old", "new").unwrap(), 1);
    assert_eq!(store.reassign_nodes("old", "new").unwrap(), 1);
    assert_eq!(store.load(&one, 1, 1).unwrap().unwrap().owner, "new");
    assert_eq!(store.load(&two, 1, 1).unwrap().unwrap().owner, "other");
    assert_eq!(store.list("new", None, 10).unwrap().len(), 1);
    assert!(store.list("old", None, 10).unwrap().is_empty());
    assert_eq!(store.search("new", "owls", None, 5).unwrap().len(), 1);
    assert!(store.search("old", "owls", None, 5).unwrap().is_empty());
    // The conversation search follows the owner, by the messages and by the title.
    assert_eq!(store.list("new", Some("hoot"), 10).unwrap().len(), 1);
    assert_eq!(store.list("new", Some("night"), 10).unwrap().len(), 1);
    assert!(store.list("old", Some("owls"), 10).unwrap().is_empty());
    assert_eq!(store.reassign_owner("old", "new").unwrap(), 0, "idempotent");
}

/// A `message` event that closes turn `turn` having used `usage`.
fn answered(session: &SessionId, seq: u64, usage: Usage) -> WriteOp {
    event(
        session,
        seq,
        TurnMark::Closed {
            usage,
            closing: Closing::Message,
            reset: false,
        },
        Some("an answer"),
    )
}

fn a_conversation_keeps_its_model_and_token_totals<S: TestStore>(store: S) {
    let one = id(1);
    let WriteOp::CreateSession {
        id: session,
        owner,
        user_id,
        personality,
        ..
    } = create(&one, "ann")
    else {
        unreachable!()
    };
    let chosen = WriteOp::CreateSession {
        id: session,
        owner,
        user_id,
        personality,
        model: Some("beta".into()),
    };
    let opened = |turn_id| TurnMark::Opened {
        turn_id,
        text: "hi".into(),
        parent: 0,
        client_id: None,
    };
    let usage = Usage {
        prompt_tokens: 10,
        completion_tokens: 5,
    };
    store
        .apply(&[
            chosen,
            event(&one, 1, opened(1), None),
            answered(&one, 2, usage),
        ])
        .unwrap();
    // Two turns closed in one batch, one of them by an error (no usage).
    store
        .apply(&[
            event(&one, 3, opened(2), None),
            event(
                &one,
                4,
                TurnMark::Closed {
                    usage: Usage::default(),
                    closing: Closing::Message,
                    reset: false,
                },
                None,
            ),
            event(&one, 5, opened(3), None),
            answered(&one, 6, usage),
        ])
        .unwrap();
    let summary = store.summary("ann", &one).unwrap().unwrap();
    assert_eq!(summary.model.as_deref(), Some("beta"));
    assert_eq!(
        summary.usage,
        Usage {
            prompt_tokens: 20,
            completion_tokens: 10
        }
    );
    assert_eq!(store.list("ann", None, 5).unwrap()[0].usage, summary.usage);
    assert_eq!(
        store.load(&one, 1, 1).unwrap().unwrap().model.as_deref(),
        Some("beta")
    );
    let two = id(2);
    store.apply(&[create(&two, "ann")]).unwrap();
    assert_eq!(store.summary("ann", &two).unwrap().unwrap().model, None);
}

fn embeddings_are_stored_per_owner_and_found_by_similarity<S: TestStore>(store: S) {
    let (cat, _) = store.remember("ann", "Tom is a tabby").unwrap();
    let (bills, _) = store
        .remember("ann", "the bills are due on Friday")
        .unwrap();
    let (bobs, _) = store.remember("bob", "Tom is a tabby").unwrap();
    let pending: Vec<i64> = store
        .unembedded("m", 10)
        .unwrap()
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(pending, vec![cat.id, bills.id, bobs.id]);
    let vectors = vec![
        (cat.id, vec![1.0, 0.0]),
        (bills.id, vec![0.0, 1.0]),
        (bobs.id, vec![1.0, 0.0]),
    ];
    store.store_embeddings("m", &vectors).unwrap();
    assert!(store.unembedded("m", 10).unwrap().is_empty());
    assert_eq!(store.unembedded("other-model", 10).unwrap().len(), 3);
    let query = [0.8, 0.6];
    let near = store.nearest("ann", "m", &query, Some("fact"), 5).unwrap();
    let found: Vec<(i64, f32)> = near.iter().map(|(n, s)| (n.id, *s)).collect();
    assert_eq!(found.len(), 2, "ann's own facts only: {found:?}");
    assert_eq!(found[0].0, cat.id);
    assert!((found[0].1 - 0.8).abs() < 1e-6 && (found[1].1 - 0.6).abs() < 1e-6);
    assert!(
        store
            .nearest("ann", "other-model", &query, None, 5)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .nearest("ann", "m", &query, Some("person"), 5)
            .unwrap()
            .is_empty()
    );
    // A vector of another dimension is never compared; a deleted node takes its vector along.
    assert!(
        store
            .nearest("ann", "m", &[1.0, 0.0, 0.0], None, 5)
            .unwrap()
            .is_empty()
    );
    assert!(store.delete("ann", cat.id).unwrap());
    let left = store.nearest("ann", "m", &query, None, 5).unwrap();
    assert_eq!(
        left.iter().map(|(n, _)| n.id).collect::<Vec<_>>(),
        vec![bills.id]
    );
    // A new owner takes the vectors with the nodes.
    store.reassign_nodes("bob", "carol").unwrap();
    assert!(
        store
            .nearest("bob", "m", &query, None, 5)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.nearest("carol", "m", &query, None, 5).unwrap().len(),
        1
    );
}

fn the_graph_is_private_to_each_owner_and_remember_is_an_upsert<S: TestStore>(store: S) {
    let store = Arc::new(store);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || store.remember("ann", "cats purr").unwrap().0.id)
        })
        .collect();
    let ids: Vec<i64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let (again, new) = store.remember("ann", "cats purr").unwrap();
    assert!(!new && again.id == ids[0] && again.kind == "fact");
    let (theirs, new) = store.remember("bob", "cats purr").unwrap();
    assert!(new && theirs.id != ids[0]);
    assert_eq!(store.search("ann", "cats", None, 5).unwrap().len(), 1);
    assert_eq!(
        store.search("ann", "cat", None, 5).unwrap().len(),
        1,
        "stemmed"
    );
    assert_eq!(
        store.search("ann", "cats", Some("thing"), 5).unwrap().len(),
        0
    );
    assert_eq!(store.search("eve", "cats", None, 5).unwrap().len(), 0);
    assert!(store.get("eve", ids[0]).unwrap().is_none());
    assert!(!store.delete("eve", ids[0]).unwrap());
    assert!(
        store
            .add_edge("eve", ids[0], theirs.id, "likes", &json!({}))
            .is_err()
    );
    assert!(
        store
            .add_edge("ann", ids[0], theirs.id, "likes", &json!({}))
            .is_err()
    );
    let tea = store
        .add_node("ann", "thing", "tea", "green tea", &json!({"hot": true}))
        .unwrap();
    assert_eq!(tea.properties, json!({"hot": true}));
    let edge = store
        .add_edge("ann", ids[0], tea.id, "likes", &json!({"since": 2020}))
        .unwrap();
    let same = store
        .add_edge("ann", ids[0], tea.id, "likes", &json!({}))
        .unwrap();
    assert_eq!(same, edge, "an edge is added once");
    let around = store.get("ann", tea.id).unwrap().unwrap();
    assert_eq!(around.node, tea);
    assert_eq!(around.neighbours.len(), 1);
    assert_eq!(around.neighbours[0].0.properties, json!({"since": 2020}));
    assert_eq!(around.neighbours[0].1.id, ids[0]);
    let recent = store.recent("ann", None, 10).unwrap();
    assert_eq!(
        recent.iter().map(|n| n.id).collect::<Vec<_>>(),
        [tea.id, ids[0]]
    );
    assert_eq!(store.recent("ann", Some("fact"), 10).unwrap().len(), 1);
    assert_eq!(
        store.search("ann", "green tea", None, 5).unwrap(),
        std::slice::from_ref(&tea)
    );
    assert!(store.delete("ann", ids[0]).unwrap());
    assert!(
        store
            .get("ann", tea.id)
            .unwrap()
            .unwrap()
            .neighbours
            .is_empty()
    );
    assert!(
        store
            .search("ann", "\"unbalanced AND ( ' & | !", None, 5)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.node_count(), 2);
}

fn a_search_keeps_its_first_sixteen_distinct_words<S: TestStore>(store: S) {
    // A lookup over the cap still works: the words kept find the fact, and a fact that only
    // words past the cap would find is not searched for.
    let long: Vec<String> = (0..40).map(|i| format!("word{i}")).collect();
    store.remember("ann", "word3 and cats").unwrap();
    store.remember("ann", "only word39 here").unwrap();
    let found = store.search("ann", &long.join(" "), None, 5).unwrap();
    let contents: Vec<&str> = found.iter().map(|n| n.content.as_str()).collect();
    assert_eq!(contents, ["word3 and cats"]);
    // Every word first, then any of them: the fact with both ranks first.
    store.remember("ann", "otters swim in rivers").unwrap();
    store.remember("ann", "otters sleep").unwrap();
    let found = store.search("ann", "otters rivers", None, 5).unwrap();
    let contents: Vec<&str> = found.iter().map(|n| n.content.as_str()).collect();
    assert_eq!(contents, ["otters swim in rivers", "otters sleep"]);
}

fn a_search_out_of_time_answers_with_what_it_found_not_an_error<S: TestStore>(store: S) {
    for n in 0..300 {
        store
            .remember("ann", &format!("fact {n} about otters and rivers"))
            .unwrap();
    }
    let session = id(9);
    let mut ops = vec![create(&session, "ann")];
    ops.extend((1..=300).map(|seq| event(&session, seq, TurnMark::None, Some("otters swim"))));
    store.apply(&ops).unwrap();
    assert_eq!(
        store.search("ann", "otters rivers", None, 5).unwrap().len(),
        5
    );
    assert_eq!(store.list("ann", Some("otters"), 10).unwrap().len(), 1);

    // No time at all: the first query is stopped at once.
    store.set_budget(Duration::ZERO);
    assert!(
        store
            .search("ann", "otters rivers", None, 5)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.list("ann", Some("otters"), 10).unwrap().len(), 0);
    // Other reads have no budget, and the connections work on afterwards.
    assert_eq!(store.recent("ann", None, 3).unwrap().len(), 3);
    assert_eq!(store.list("ann", None, 10).unwrap().len(), 1);
    store.set_budget(DEFAULT_SEARCH_BUDGET);
    for _ in 0..8 {
        assert_eq!(store.search("ann", "otters", None, 5).unwrap().len(), 5);
    }
}

/// Principal A's facts all hold the words many times and are long; B's one fact holds each
/// once and is long too, so that it ranks below every one of A's (and C's facts, which do not
/// hold the words, give the words a weight). Before the owner was part of what the index looks
/// up, B's lookup ranked all of A's facts and read each one's row to find it was not B's, and
/// ran out of its budget before it reached B's fact. The store counts the candidate rows its
/// searches read ([`Counters::searched_rows`]): B's reads its own fact alone.
fn another_principals_matching_rows_cost_nothing<S: TestStore>(store: S) {
    let a_fact = "otters rivers ".repeat(3_000);
    for n in 0..800 {
        store
            .remember("alice", &format!("fact{n} {a_fact}"))
            .unwrap();
    }
    for n in 0..1_600 {
        store
            .remember("carol", &format!("carol's fact {n} about tea"))
            .unwrap();
    }
    let filler = "lorem ".repeat(2_000);
    let (bobs, _) = store
        .remember("bob", &format!("otters and rivers {filler}"))
        .unwrap();
    // Before, B's lookup read all 800 of A's facts (ranked above B's) to reach its own; now
    // the index answers B's rows alone. Counted rather than timed: at most B's one fact for
    // each of the search's queries (every word, then any of them). No budget to run out of:
    // what is checked is what the search read, not how long it took on a busy machine.
    store.set_budget(Duration::from_secs(600));
    for round in 0..40 {
        let before = store.searched_rows();
        let found = store.search("bob", "otters rivers", None, 5).unwrap();
        let ids: Vec<i64> = found.iter().map(|node| node.id).collect();
        assert_eq!(ids, [bobs.id], "round {round}");
        let read = store.searched_rows() - before;
        assert!(
            (1..=2).contains(&read),
            "round {round}: the search read {read} rows"
        );
    }
    let before = store.searched_rows();
    assert_eq!(store.search("alice", "otters", None, 5).unwrap().len(), 5);
    assert!(
        store.searched_rows() - before >= 5,
        "A's search is counted too"
    );
    store.set_budget(DEFAULT_SEARCH_BUDGET);
}

/// A conversation is found by its title as well as by what was said in it, the title as it was
/// made from the first message or as it was renamed; and only its owner's conversations are,
/// however many of another principal's match.
fn titles_are_searched_and_each_principal_searches_only_its_own<S: TestStore>(store: S) {
    let (one, two, theirs) = (id(1), id(2), id(3));
    let opened = |text: &str| TurnMark::Opened {
        turn_id: 1,
        text: text.into(),
        parent: 0,
        client_id: None,
    };
    let mut ops = vec![
        create(&one, "ann"),
        event(&one, 1, opened("plan the trip"), Some("plan the trip")),
        create(&two, "ann"),
        event(&two, 1, opened("/calc 6*7"), None),
        create(&theirs, "bob"),
        event(&theirs, 1, opened("lisbon trip"), Some("lisbon trip")),
    ];
    ops.extend((2..=300).map(|seq| event(&theirs, seq, TurnMark::None, Some("lisbon trip"))));
    store.apply(&ops).unwrap();
    let found = |owner: &str, words: &str| -> Vec<String> {
        let list = store.list(owner, Some(words), 10).unwrap();
        list.iter()
            .map(|summary| summary.id.as_str().to_owned())
            .collect()
    };
    assert_eq!(found("ann", "trip"), [one.as_str()]);
    assert!(found("ann", "lisbon").is_empty());
    // A title made from a command is searched too, though the command's text is not.
    assert_eq!(found("ann", "calc"), [two.as_str()]);
    store
        .apply(&[WriteOp::Rename {
            session: one.clone(),
            owner: "ann".into(),
            title: "Holiday in Lisbon".into(),
        }])
        .unwrap();
    assert_eq!(found("ann", "lisbon holidays"), [one.as_str()]);
    assert_eq!(
        found("ann", "trip"),
        [one.as_str()],
        "its messages still count"
    );
    assert_eq!(found("bob", "lisbon"), [theirs.as_str()]);
    assert!(found("bob", "holiday").is_empty());
    // A rename by someone else changes nothing; a deletion takes the title out of the index.
    store
        .apply(&[
            WriteOp::Rename {
                session: two.clone(),
                owner: "bob".into(),
                title: "lisbon".into(),
            },
            WriteOp::DeleteSession {
                session: one.clone(),
            },
        ])
        .unwrap();
    assert!(found("ann", "lisbon").is_empty());
    assert!(found("bob", "calc").is_empty());
}

/// A fact edited is found by its new words and not its old ones, waits to be embedded again,
/// keeps its id; a fact is never given another's content, and nobody edits another's.
fn an_edited_fact_is_searched_and_embedded_anew<S: TestStore>(store: S) {
    let (tea, _) = store.remember("ann", "I like green tea").unwrap();
    let (coffee, _) = store.remember("ann", "I drink coffee at nine").unwrap();
    store
        .store_embeddings("m", &[(tea.id, vec![1.0]), (coffee.id, vec![1.0])])
        .unwrap();
    assert!(store.unembedded("m", 5).unwrap().is_empty());
    let Edited::Changed(edited) = store
        .edit("ann", tea.id, "I like black tea with lemon")
        .unwrap()
    else {
        panic!("the fact was not edited");
    };
    assert_eq!(edited.id, tea.id);
    assert_eq!(edited.content, "I like black tea with lemon");
    assert_eq!(edited.label, "I like black tea with lemon");
    assert_eq!(edited.created_at, tea.created_at);
    let found = store.search("ann", "lemon", None, 5).unwrap();
    assert_eq!(found, std::slice::from_ref(&edited));
    assert!(store.search("ann", "green", None, 5).unwrap().is_empty());
    let pending: Vec<i64> = store
        .unembedded("m", 5)
        .unwrap()
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(pending, [tea.id]);
    // Remembering the new content finds the edited fact.
    assert_eq!(
        store
            .remember("ann", "I like black tea with lemon")
            .unwrap(),
        (edited.clone(), false)
    );
    match store.edit("ann", tea.id, "I drink coffee at nine").unwrap() {
        Edited::Duplicate(other) => assert_eq!(other.id, coffee.id),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.edit("bob", tea.id, "mine").unwrap(), Edited::Missing);
    assert_eq!(store.edit("ann", 999_999, "none").unwrap(), Edited::Missing);
    assert_eq!(store.search("ann", "lemon", None, 5).unwrap(), [edited]);
    // Another kind of node keeps the label it was given.
    let node = store
        .add_node("ann", "person", "Tom", "a tabby", &json!({}))
        .unwrap();
    let Edited::Changed(tom) = store.edit("ann", node.id, "a grey tabby").unwrap() else {
        panic!("the node was not edited");
    };
    assert_eq!(
        (tom.label.as_str(), tom.content.as_str()),
        ("Tom", "a grey tabby")
    );
}

#[test]
fn sqlite_another_principals_rows() {
    another_principals_matching_rows_cost_nothing(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_another_principals_rows() {
    another_principals_matching_rows_cost_nothing(postgres(&cluster::fresh_database()));
}

#[test]
fn sqlite_titles_searched() {
    titles_are_searched_and_each_principal_searches_only_its_own(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_titles_searched() {
    titles_are_searched_and_each_principal_searches_only_its_own(postgres(
        &cluster::fresh_database(),
    ));
}

#[test]
fn sqlite_edit() {
    an_edited_fact_is_searched_and_embedded_anew(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_edit() {
    an_edited_fact_is_searched_and_embedded_anew(postgres(&cluster::fresh_database()));
}

#[test]
fn sqlite_round_trip() {
    let dir = temp_dir("round-trip");
    round_trip(SqliteStore::open(&dir).unwrap(), || {
        SqliteStore::open(&dir).unwrap()
    });
}

#[test]
fn postgres_round_trip() {
    let url = cluster::fresh_database();
    round_trip(postgres(&url), || postgres(&url));
}

#[test]
fn sqlite_deletion_inside_a_batch() {
    a_deletion_inside_a_batch_takes_only_its_own_rows(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_deletion_inside_a_batch() {
    let store =
        a_deletion_inside_a_batch_takes_only_its_own_rows(postgres(&cluster::fresh_database()));
    // The turn went into PostgreSQL's table before the deletion, and was closed after it.
    assert_eq!(store.rows("turns WHERE closed_seq = 2"), 1);
    assert_eq!(store.rows("turns"), 1);
}

#[test]
fn sqlite_reassigning_an_owner() {
    reassigning_an_owner_moves_its_conversations_and_nodes_only(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_reassigning_an_owner() {
    reassigning_an_owner_moves_its_conversations_and_nodes_only(postgres(
        &cluster::fresh_database(),
    ));
}

#[test]
fn sqlite_graph() {
    the_graph_is_private_to_each_owner_and_remember_is_an_upsert(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_graph() {
    the_graph_is_private_to_each_owner_and_remember_is_an_upsert(postgres(
        &cluster::fresh_database(),
    ));
}

#[test]
fn sqlite_model_and_usage() {
    a_conversation_keeps_its_model_and_token_totals(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_model_and_usage() {
    a_conversation_keeps_its_model_and_token_totals(postgres(&cluster::fresh_database()));
}

#[test]
fn sqlite_embeddings() {
    embeddings_are_stored_per_owner_and_found_by_similarity(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_embeddings() {
    embeddings_are_stored_per_owner_and_found_by_similarity(postgres(&cluster::fresh_database()));
}

/// Events of a conversation as an earlier version stored them: a turn answered with usage, a
/// turn answered without, a failed turn.
const EARLIER_EVENTS: [&str; 5] = [
    r#"{"type":"user_message","seq":1,"data":{"turn_id":1,"text":"hi"}}"#,
    r#"{"type":"message","seq":2,"data":{"turn_id":1,"text":"a","usage":{"prompt_tokens":7,"completion_tokens":3}}}"#,
    r#"{"type":"message","seq":3,"data":{"turn_id":2,"text":"b"}}"#,
    r#"{"type":"error","seq":4,"data":{"turn_id":3,"code":"model_error","message":"x"}}"#,
    r#"{"type":"message","seq":5,"data":{"turn_id":4,"text":"c","usage":{"prompt_tokens":1,"completion_tokens":2}}}"#,
];

/// What the migration made of [`EARLIER_EVENTS`] and one fact: totals summed from the
/// answers, no model chosen, the fact waiting for the backfill.
fn earlier_conversation_migrated<S: TestStore>(store: &S) {
    let summary = store.summary("ann", &id(1)).unwrap().unwrap();
    let usage = Usage {
        prompt_tokens: 8,
        completion_tokens: 5,
    };
    assert_eq!(summary.usage, usage);
    assert_eq!(summary.model, None);
    assert_eq!(store.unembedded("m", 5).unwrap().len(), 1);
}

#[test]
fn sqlite_version_2_gains_models_totals_from_its_events_and_embeddings() {
    let dir = temp_dir("v2-to-v3");
    std::fs::create_dir_all(&dir).unwrap();
    {
        let mut db = rusqlite::Connection::open(dir.join(super::DATABASE_FILE)).unwrap();
        super::sqlite::schema::migrate_to(&mut db, "test", 2).unwrap();
        db.execute(
            "INSERT INTO sessions (id, owner, created_at, updated_at) VALUES (?1, 'ann', 1, 1)",
            [id(1).as_str()],
        )
        .unwrap();
        for (seq, body) in EARLIER_EVENTS.iter().enumerate() {
            db.execute(
                "INSERT INTO events (session_key, seq, body) VALUES (1, ?1, ?2)",
                rusqlite::params![seq as i64 + 1, body],
            )
            .unwrap();
        }
        db.execute(
            "INSERT INTO nodes (kind, label, content, owner, created_at, updated_at) \
             VALUES ('fact', 'owls', 'owls hoot', 'ann', 1, 1)",
            [],
        )
        .unwrap();
    }
    earlier_conversation_migrated(&SqliteStore::open(&dir).unwrap());
}

#[test]
fn postgres_version_1_gains_models_totals_from_its_events_and_embeddings() {
    let url = cluster::fresh_database();
    {
        let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        super::postgres::schema::migrate_to(&mut client, "test", 1).unwrap();
        let version: i64 = client
            .query_one("SELECT max(version) FROM schema_version", &[])
            .unwrap()
            .get(0);
        assert_eq!(version, 1);
        client
            .execute(
                "INSERT INTO sessions (id, owner, created_at, updated_at) VALUES ($1, 'ann', 1, 1)",
                &[&id(1).as_str()],
            )
            .unwrap();
        for (seq, body) in EARLIER_EVENTS.iter().enumerate() {
            client
                .execute(
                    "INSERT INTO events (session_key, seq, body) \
                     SELECT key, $1, $2 FROM sessions",
                    &[&(seq as i64 + 1), body],
                )
                .unwrap();
        }
    }
    let store = postgres(&url);
    store.remember("ann", "owls hoot").unwrap();
    earlier_conversation_migrated(&store);
}

/// A conversation as a version without branches stored it: a seeded exchange, turn 1
/// answered, turn 2 answered after the model rejected the history (the first message the model
/// saw was then turn 2's), and turn 3 cancelled.
const LINEAR_EVENTS: [&str; 6] = [
    r#"{"type":"user_message","seq":1,"data":{"turn_id":1,"text":"q1"}}"#,
    r#"{"type":"message","seq":2,"data":{"turn_id":1,"text":"a1"}}"#,
    r#"{"type":"user_message","seq":3,"data":{"turn_id":2,"text":"q2"}}"#,
    r#"{"type":"message","seq":4,"data":{"turn_id":2,"text":"a2"}}"#,
    r#"{"type":"user_message","seq":5,"data":{"turn_id":3,"text":"q3"}}"#,
    r#"{"type":"status","seq":6,"data":{"turn_id":3,"code":"cancelled","message":"x"}}"#,
];

/// The messages of [`LINEAR_EVENTS`]' conversation, by number, with their roles.
const LINEAR_MESSAGES: [(&str, &str); 8] = [
    ("user", "seed q"),
    ("assistant", "seed a"),
    ("user", "q1"),
    ("assistant", "a1"),
    ("user", "q2"),
    ("assistant", "a2"),
    ("user", "q3"),
    ("assistant", ""),
];

/// What the migration to the turn tree made of [`LINEAR_EVENTS`]: one line of turns, each
/// message in its turn, the reset on turn 2, the leaf at turn 3.
fn linear_conversation_became_a_tree<S: TestStore>(store: &S) {
    let loaded = store.load(&id(1), 10, 100).unwrap().unwrap();
    assert_eq!((loaded.tree.len(), loaded.tree.leaf()), (3, 3));
    assert_eq!(
        loaded.tree.path(3),
        [2, 3],
        "the reset cuts the path at turn 2"
    );
    assert_eq!(loaded.tree.path(1), [0, 1]);
    let seen: Vec<&str> = loaded.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(seen, ["q2", "a2", "q3", ""]);
    assert_eq!(loaded.next_message, 8);
    let first = store.path_messages(&id(1), &[0, 1], 100).unwrap();
    let first: Vec<&str> = first.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(first, ["seed q", "seed a", "q1", "a1"]);
    let page = store.turns("ann", &id(1)).unwrap().unwrap();
    assert_eq!(page.leaf, 3);
    let turns: Vec<(u64, u64, &str, Option<Closing>)> = page
        .turns
        .iter()
        .map(|t| (t.turn_id, t.parent, t.text.as_str(), t.closing))
        .collect();
    assert_eq!(
        turns,
        [
            (1, 0, "q1", Some(Closing::Message)),
            (2, 1, "q2", Some(Closing::Message)),
            (3, 2, "q3", Some(Closing::Cancelled)),
        ]
    );
    assert_eq!(store.turn_text(&id(1), 2).unwrap().as_deref(), Some("q2"));
    let all = PageSize {
        limit: 100,
        max_bytes: 1 << 20,
    };
    let events = store
        .turn_events("ann", &id(1), 3, 0, all)
        .unwrap()
        .unwrap();
    assert_eq!(events, [LINEAR_EVENTS[4], LINEAR_EVENTS[5]]);
    // A page of one event at a time, on from the last one seen, then an empty one.
    let small = PageSize {
        limit: 100,
        max_bytes: 1,
    };
    let first = store.turn_events("ann", &id(1), 3, 0, small).unwrap();
    assert_eq!(first, Some(vec![LINEAR_EVENTS[4].to_owned()]));
    let second = store.turn_events("ann", &id(1), 3, 5, small).unwrap();
    assert_eq!(second, Some(vec![LINEAR_EVENTS[5].to_owned()]));
    assert_eq!(
        store.turn_events("ann", &id(1), 3, 6, small).unwrap(),
        Some(vec![])
    );
    assert_eq!(store.turns("bob", &id(1)).unwrap(), None);
    assert_eq!(store.turn_events("ann", &id(1), 4, 0, all).unwrap(), None);
    assert_eq!(store.turn_events("bob", &id(1), 3, 0, all).unwrap(), None);
}

#[test]
fn sqlite_version_3_becomes_a_tree_of_turns() {
    let dir = temp_dir("v3-to-v4");
    std::fs::create_dir_all(&dir).unwrap();
    {
        let mut db = rusqlite::Connection::open(dir.join(super::DATABASE_FILE)).unwrap();
        super::sqlite::schema::migrate_to(&mut db, "test", 3).unwrap();
        db.execute(
            "INSERT INTO sessions (id, owner, created_at, updated_at, last_seq, turns, \
             first_message) VALUES (?1, 'ann', 1, 1, 6, 3, 4)",
            [id(1).as_str()],
        )
        .unwrap();
        for (seq, body) in LINEAR_EVENTS.iter().enumerate() {
            db.execute(
                "INSERT INTO events (session_key, seq, body) VALUES (1, ?1, ?2)",
                rusqlite::params![seq as i64 + 1, body],
            )
            .unwrap();
        }
        for (idx, (role, content)) in LINEAR_MESSAGES.iter().enumerate() {
            db.execute(
                "INSERT INTO messages (session_key, idx, role, content) VALUES (1, ?1, ?2, ?3)",
                rusqlite::params![idx as i64, role, content],
            )
            .unwrap();
        }
    }
    linear_conversation_became_a_tree(&SqliteStore::open(&dir).unwrap());
}

#[test]
fn postgres_version_2_becomes_a_tree_of_turns() {
    let url = cluster::fresh_database();
    {
        let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        super::postgres::schema::migrate_to(&mut client, "test", 2).unwrap();
        client
            .execute(
                "INSERT INTO sessions (id, owner, created_at, updated_at, last_seq, turns, \
                 first_message) VALUES ($1, 'ann', 1, 1, 6, 3, 4)",
                &[&id(1).as_str()],
            )
            .unwrap();
        for (seq, body) in LINEAR_EVENTS.iter().enumerate() {
            client
                .execute(
                    "INSERT INTO events (session_key, seq, body) SELECT key, $1, $2 FROM sessions",
                    &[&(seq as i64 + 1), body],
                )
                .unwrap();
        }
        for (turn, opened, closed) in [(1i64, 1i64, 2i64), (2, 3, 4), (3, 5, 6)] {
            client
                .execute(
                    "INSERT INTO turns (session_key, turn_id, opened_seq, closed_seq) \
                     SELECT key, $1, $2, $3 FROM sessions",
                    &[&turn, &opened, &closed],
                )
                .unwrap();
        }
        for (idx, (role, content)) in LINEAR_MESSAGES.iter().enumerate() {
            client
                .execute(
                    "INSERT INTO messages (session_key, idx, role, content) \
                     SELECT key, $1, $2, $3 FROM sessions",
                    &[&(idx as i64), role, content],
                )
                .unwrap();
        }
    }
    linear_conversation_became_a_tree(&postgres(&url));
}

/// What the migration that put owners into the full-text indexes made of a conversation of
/// ann's titled "Holiday plans" whose message says "otters", and a fact each of ann and bob
/// about owls: each found by its owner alone, the conversation by its title too.
fn owners_went_into_the_indexes<S: TestStore>(store: &S) {
    let found = |owner: &str, words: &str| store.list(owner, Some(words), 10).unwrap().len();
    assert_eq!(found("ann", "otters"), 1);
    assert_eq!(found("ann", "holiday"), 1);
    assert_eq!((found("bob", "otters"), found("bob", "holiday")), (0, 0));
    let owls = store.search("ann", "owls", None, 5).unwrap();
    assert_eq!(owls.len(), 1);
    assert_eq!(owls[0].content, "ann's owls hoot");
    assert_eq!(
        store.search("bob", "owls", None, 5).unwrap()[0].content,
        "bob's owls hoot"
    );
    // What is written from now on is indexed the same way.
    store
        .apply(&[event(&id(1), 3, TurnMark::None, Some("beavers"))])
        .unwrap();
    assert_eq!((found("ann", "beavers"), found("bob", "beavers")), (1, 0));
}

#[test]
fn sqlite_version_4_puts_owners_into_its_indexes_and_searches_titles() {
    let dir = temp_dir("v4-to-v5");
    std::fs::create_dir_all(&dir).unwrap();
    {
        let mut db = rusqlite::Connection::open(dir.join(super::DATABASE_FILE)).unwrap();
        super::sqlite::schema::migrate_to(&mut db, "test", 4).unwrap();
        db.execute_batch(&format!(
            "INSERT INTO sessions (id, owner, title, created_at, updated_at, last_seq) \
             VALUES ('{}', 'ann', 'Holiday plans', 1, 1, 2); \
             INSERT INTO events (session_key, seq, body) VALUES (1, 1, '{{}}'), (1, 2, '{{}}'); \
             INSERT INTO event_text (rowid, text, session_key) VALUES (1, 'tell me of otters', 1); \
             INSERT INTO nodes (owner, kind, label, content, created_at, updated_at) VALUES \
             ('ann', 'fact', 'owls', 'ann''s owls hoot', 1, 1), \
             ('bob', 'fact', 'owls', 'bob''s owls hoot', 1, 1);",
            id(1).as_str()
        ))
        .unwrap();
    }
    owners_went_into_the_indexes(&SqliteStore::open(&dir).unwrap());
}

#[test]
fn postgres_version_3_puts_owners_into_its_indexes_and_searches_titles() {
    let url = cluster::fresh_database();
    {
        let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        super::postgres::schema::migrate_to(&mut client, "test", 3).unwrap();
        client
            .batch_execute(&format!(
                "INSERT INTO sessions (id, owner, title, created_at, updated_at, last_seq) \
                 VALUES ('{}', 'ann', 'Holiday plans', 1, 1, 2); \
                 INSERT INTO events (session_key, seq, body, search) SELECT key, 1, '{{}}', \
                 to_tsvector('sparky_english', 'tell me of otters') FROM sessions; \
                 INSERT INTO events (session_key, seq, body) SELECT key, 2, '{{}}' FROM sessions; \
                 INSERT INTO nodes (owner, kind, label, content, content_sha256, created_at, \
                 updated_at) VALUES \
                 ('ann', 'fact', 'owls', 'ann''s owls hoot', sha256('ann''s owls hoot'), 1, 1), \
                 ('bob', 'fact', 'owls', 'bob''s owls hoot', sha256('bob''s owls hoot'), 1, 1);",
                id(1).as_str()
            ))
            .unwrap();
    }
    owners_went_into_the_indexes(&postgres(&url));
}

#[test]
fn sqlite_search_words() {
    a_search_keeps_its_first_sixteen_distinct_words(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_search_words() {
    a_search_keeps_its_first_sixteen_distinct_words(postgres(&cluster::fresh_database()));
}

#[test]
fn sqlite_search_budget() {
    let store = SqliteStore::in_memory().unwrap();
    assert!(store.reader_count() <= 8);
    a_search_out_of_time_answers_with_what_it_found_not_an_error(store);
}

#[test]
fn postgres_search_budget() {
    a_search_out_of_time_answers_with_what_it_found_not_an_error(postgres(
        &cluster::fresh_database(),
    ));
}

#[test]
fn search_words_keep_the_first_sixteen_distinct_ones() {
    let long: Vec<String> = (0..40).map(|i| format!("word{i}")).collect();
    let words = search_words(&format!("the {} word0 WORD1", long.join(" ")));
    assert_eq!(words.len(), MAX_SEARCH_WORDS);
    assert_eq!(words[0], "word0");
    assert_eq!(words[15], "word15");
    assert_eq!(search_words("what is the what"), ["what", "is", "the"]);
    assert!(search_words("  ...  ").is_empty());
}

#[test]
fn labels_are_cut_at_a_word() {
    assert_eq!(label_for("short  fact"), "short fact");
    let long = "word ".repeat(30);
    let label = label_for(&long);
    assert!(label.ends_with('…') && label.chars().count() <= LABEL_CHARS + 1);
}

#[test]
fn postgres_lets_instances_share_a_database_and_refuses_a_newer_schema_and_a_bad_url() {
    let url = cluster::fresh_database();
    let first = postgres(&url);
    // Several instances share one database (`session/lease.rs` keeps them apart).
    let second = PostgresStore::connect(&url, 2).unwrap();
    drop((first, second));
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .execute("INSERT INTO schema_version (version) VALUES (99)", &[])
        .unwrap();
    let newer = PostgresStore::connect(&url, 2).unwrap_err().to_string();
    assert!(newer.contains("newer than this build"), "{newer}");
    let bad = PostgresStore::connect("postgres://ann:s3cret@127.0.0.1:1/x", 2)
        .unwrap_err()
        .to_string();
    assert!(
        bad.contains("cannot connect") && !bad.contains("s3cret"),
        "{bad}"
    );
    let nonsense = PostgresStore::connect("postgres://[::", 2)
        .unwrap_err()
        .to_string();
    assert!(nonsense.contains("not a PostgreSQL URL"), "{nonsense}");
}

/// A store filled to its size cap: what adds is refused as `full`; a rename and deletions go
/// through, and a deleted conversation's room takes what was refused.
fn a_deletion_makes_room_in_a_full_store<S: TestStore>(store: S) {
    let (one, two) = (id(1), id(2));
    let big = |session: &SessionId, seq: u64| WriteOp::Event {
        session: session.clone(),
        seq,
        body: "b".repeat(100_000).into(),
        turn: TurnMark::None,
        search_text: Some(format!("otters {seq} ").repeat(2_000)),
    };
    let mut filling = vec![create(&one, "ann"), create(&two, "ann")];
    filling.extend((1..=8).map(|seq| big(&one, seq)));
    store.apply(&filling).unwrap();
    let words: String = (0..3000).map(|n| format!("word{n} ")).collect();
    let (fact, _) = store.remember("ann", &words).unwrap();
    store.set_size_limit(Some(1)).unwrap();

    // Filled to the last page: small facts until one is refused.
    let mut n = 0;
    while store
        .remember("ann", &format!("small fact {n} of many"))
        .is_ok()
    {
        n += 1;
        assert!(n < 100_000, "the cap refuses nothing");
    }
    let refused = store.apply(&[big(&two, 1)]).unwrap_err();
    assert!(refused.is_store_full(), "{refused}");
    let large_fact = "another fact ".repeat(20_000);
    assert!(
        store
            .remember("ann", &large_fact)
            .unwrap_err()
            .is_store_full()
    );
    let rename = WriteOp::Rename {
        session: two.clone(),
        owner: "ann".into(),
        title: "kept".into(),
    };
    store.apply(&[rename]).unwrap();
    assert!(store.delete("ann", fact.id).unwrap());
    store
        .apply(&[WriteOp::DeleteSession { session: one }])
        .unwrap();
    store.apply(&[big(&two, 1)]).unwrap();
    let summary = store.summary("ann", &two).unwrap().unwrap();
    assert_eq!(
        (summary.title.as_deref(), store.rows("events")),
        (Some("kept"), 1)
    );
    store.set_size_limit(None).unwrap();
}

#[test]
fn sqlite_a_deletion_makes_room_in_a_full_store() {
    a_deletion_makes_room_in_a_full_store(SqliteStore::open(&temp_dir("full")).unwrap());
}

#[test]
fn postgres_a_deletion_makes_room_in_a_full_store() {
    a_deletion_makes_room_in_a_full_store(postgres(&cluster::fresh_database()));
}

#[test]
fn postgres_a_size_cap_refuses_writes_that_add_but_lets_deletions_through() {
    let store = postgres(&cluster::fresh_database());
    let one = id(1);
    store.apply(&[create(&one, "ann")]).unwrap();
    store.set_size_limit(Some(1)).unwrap();
    let full = store
        .apply(&[event(&one, 1, TurnMark::None, None)])
        .unwrap_err()
        .to_string();
    assert!(full.contains("--max-store-mib"), "{full}");
    assert!(store.remember("ann", "a fact").is_err());
    store
        .apply(&[WriteOp::DeleteSession { session: one }])
        .unwrap();
    store.set_size_limit(None).unwrap();
    store.remember("ann", "a fact").unwrap();
}

#[test]
fn postgres_a_lost_database_fails_writes_then_takes_them_again() {
    let url = cluster::fresh_database();
    let store = postgres(&url);
    let one = id(1);
    store
        .apply(&[create(&one, "ann"), event(&one, 1, TurnMark::None, None)])
        .unwrap();
    store.remember("ann", "before").unwrap();
    assert!(store.status().reachable);

    cluster::cut_off(&url);
    let batch = [event(&one, 2, TurnMark::None, None)];
    assert!(store.apply(&batch).is_err());
    assert!(store.load(&one, 10, 10).is_err());
    assert!(!store.status().reachable);

    cluster::reopen(&url);
    // The writer reconnects (with backoff).
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.apply(&batch).is_err() {
        assert!(Instant::now() < deadline, "the store did not come back");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(store.status().reachable);
    let loaded = store.load(&one, 10, 10).unwrap().unwrap();
    assert_eq!(loaded.last_seq, 2);
    assert_eq!(store.search("ann", "before", None, 5).unwrap().len(), 1);
    // A restart of the server ends every connection: the pool's stale ones are replaced
    // without a read failing.
    cluster::terminate_connections(&url);
    assert_eq!(store.load(&one, 10, 10).unwrap().unwrap().last_seq, 2);
    assert_eq!(store.search("ann", "before", None, 5).unwrap().len(), 1);
    let status = store.status().pool.unwrap();
    assert!(
        status.connects_total >= 3 && status.connect_failures_total >= 1,
        "{status:?}"
    );
}
