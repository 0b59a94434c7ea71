//! Upgrades: a store of every schema version this project shipped is brought to today's with
//! nothing lost, and a store newer than the binary is refused with a clear message and exit 1.
//!
//! The fixtures (`tests/fixtures/`) were written by the builds that shipped each schema:
//! SQLite 1 (`v1.db`) by hand-driven version 1, SQLite 2 to 5 (`sqlite-vN.db`) and PostgreSQL 1
//! to 4 (`postgres-vN.sql`, pg_dump as INSERTs) by `scripts/fixtures.sh`, which builds each
//! from git and holds the same conversations with it (`examples/fixture_writer.rs`): two
//! principals, a persona, notes, facts, nodes and an edge, a tool call, a cancelled turn, a
//! renamed title, a seeded history and (schema 4) an edited turn. What each held is read from
//! it with plain SQL before today's build touches it, and then looked for in what today's
//! store answers: every event unchanged, every message on some path of the tree, every note,
//! fact, node, edge, title and turn. A conversation then goes on where it stopped.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

use sparky::common::auth::Principal;
use sparky::common::protocol::{ServerFrame, SessionId};
use sparky::model::Role;
use sparky::store::{ConversationStore, GraphStore, PostgresStore, SqliteStore};
use support::{Client, TestServer};

/// The tokens `scripts/fixtures.sh` ran the shipped builds with.
const TOKEN: &str = "fixture-token-one";
const OTHER: &str = "fixture-token-two";

/// One stored version of the fixtures.
#[derive(Clone, Copy, Debug)]
enum Fixture {
    /// `tests/fixtures/v1.db` or `sqlite-vN.db`.
    Sqlite(u32),
    /// `tests/fixtures/postgres-vN.sql`.
    Postgres(u32),
}

impl Fixture {
    fn path(self) -> PathBuf {
        let name = match self {
            Fixture::Sqlite(1) => "v1.db".to_owned(),
            Fixture::Sqlite(n) => format!("sqlite-v{n}.db"),
            Fixture::Postgres(n) => format!("postgres-v{n}.sql"),
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// Version 1 kept no owners and no titles, and was run without tokens.
    fn has_tokens(self) -> bool {
        !matches!(self, Fixture::Sqlite(1))
    }
}

/// What a fixture held, read with plain SQL before today's build opened it.
#[derive(Debug, Default)]
struct Held {
    conversations: Vec<HeldConversation>,
    /// Every node: `(id, owner, kind, label, content)`.
    nodes: Vec<(i64, String, String, String, String)>,
    /// Every edge: `(source, target, kind)`.
    edges: Vec<(i64, i64, String)>,
}

#[derive(Debug, Default)]
struct HeldConversation {
    id: String,
    owner: String,
    title: Option<String>,
    /// `(seq, body)`, by `seq`.
    events: Vec<(u64, String)>,
    /// `(role, content)`, by number.
    messages: Vec<(String, String)>,
    notes: Vec<String>,
}

impl HeldConversation {
    /// The user's texts, by turn.
    fn user_messages(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|(_, body)| {
                let event: serde_json::Value = serde_json::from_str(body).unwrap();
                (event["type"] == "user_message")
                    .then(|| event["data"]["text"].as_str().unwrap().to_owned())
            })
            .collect()
    }
}

/// Rows as text (SQL `NULL` as `None`), from whichever dialect.
trait Read {
    fn rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>>;
}

impl Read for rusqlite::Connection {
    fn rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        let mut statement = self.prepare(sql).unwrap();
        let columns = statement.column_count();
        statement
            .query_map([], |row| {
                (0..columns)
                    .map(|i| row.get::<_, Option<String>>(i))
                    .collect()
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

impl Read for postgres::Client {
    fn rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.query(sql, &[])
            .unwrap()
            .iter()
            .map(|row| (0..row.len()).map(|i| row.get(i)).collect())
            .collect()
    }
}

/// What `db` holds, with SQL that both dialects and every version read (`v1`: no owners, no
/// titles, notes without ids). Numbers are read as text, under names of their own: PostgreSQL
/// names a cast after its column, and `ORDER BY` would then sort the text.
fn held(db: &mut dyn Read, v1: bool) -> Held {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let number = |value: &Option<String>| value.as_deref().unwrap().parse::<i64>().unwrap();
    let (owner, title) = if v1 {
        ("NULL", "NULL")
    } else {
        ("owner", "title")
    };
    let mut conversations = BTreeMap::new();
    for row in db.rows(&format!(
        "SELECT CAST(key AS TEXT) AS key_text, id, {owner}, {title} FROM sessions ORDER BY key"
    )) {
        conversations.insert(
            number(&row[0]),
            HeldConversation {
                id: text(&row[1]),
                // Version 1's conversations became the local principal's.
                owner: row[2].clone().unwrap_or_else(|| "local".into()),
                title: row[3].clone(),
                ..HeldConversation::default()
            },
        );
    }
    for row in db.rows(
        "SELECT CAST(session_key AS TEXT) AS session_key_text, CAST(seq AS TEXT) AS seq_text, body FROM events \
         ORDER BY session_key, seq",
    ) {
        let seq = u64::try_from(number(&row[1])).unwrap();
        conversations
            .get_mut(&number(&row[0]))
            .unwrap()
            .events
            .push((seq, text(&row[2])));
    }
    for row in db.rows(
        "SELECT CAST(session_key AS TEXT) AS session_key_text, role, content FROM messages ORDER BY session_key, idx",
    ) {
        conversations
            .get_mut(&number(&row[0]))
            .unwrap()
            .messages
            .push((text(&row[1]), text(&row[2])));
    }
    for row in db.rows("SELECT CAST(session_key AS TEXT) AS session_key_text, text FROM notes") {
        conversations
            .get_mut(&number(&row[0]))
            .unwrap()
            .notes
            .push(text(&row[1]));
    }
    let nodes = db
        .rows(&format!(
            "SELECT CAST(id AS TEXT) AS id_text, {owner}, kind, label, content FROM nodes ORDER BY id"
        ))
        .iter()
        .map(|row| {
            (
                number(&row[0]),
                row[1].clone().unwrap_or_else(|| "local".into()),
                text(&row[2]),
                text(&row[3]),
                text(&row[4]),
            )
        })
        .collect();
    let edges = db
        .rows("SELECT CAST(source AS TEXT) AS source_text, CAST(target AS TEXT) AS target_text, kind FROM edges")
        .iter()
        .map(|row| (number(&row[0]), number(&row[1]), text(&row[2])))
        .collect();
    Held {
        conversations: conversations.into_values().collect(),
        nodes,
        edges,
    }
}

/// A fixture made ready to open: a SQLite data directory holding a copy of the file, or a
/// fresh PostgreSQL database loaded from the script. `None` for a data directory's URL.
fn install(fixture: Fixture) -> (PathBuf, Option<String>) {
    let dir = support::temp_dir(&format!("upgrade-{fixture:?}").to_lowercase());
    std::fs::create_dir_all(&dir).unwrap();
    match fixture {
        Fixture::Sqlite(_) => {
            std::fs::copy(fixture.path(), dir.join(sparky::store::DATABASE_FILE)).unwrap();
            (dir, None)
        }
        Fixture::Postgres(_) => {
            let url = support::postgres::fresh_database();
            let script = std::fs::read_to_string(fixture.path()).unwrap();
            // pg_dump's script empties the search path: a connection of its own.
            let mut loader = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            loader.batch_execute(&script).unwrap();
            (dir, Some(url))
        }
    }
}

/// What the fixture holds, read before anything of today's opened it.
fn read_held(fixture: Fixture, dir: &Path, url: Option<&str>) -> Held {
    match (fixture, url) {
        (Fixture::Sqlite(version), None) => {
            let mut db =
                rusqlite::Connection::open(dir.join(sparky::store::DATABASE_FILE)).unwrap();
            let stored: i64 = db
                .query_row("PRAGMA user_version", [], |row| row.get(0))
                .unwrap();
            assert_eq!(stored, i64::from(version), "{fixture:?}");
            held(&mut db, version == 1)
        }
        (Fixture::Postgres(version), Some(url)) => {
            let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
            let stored: i64 = db
                .query_one("SELECT max(version) FROM schema_version", &[])
                .unwrap()
                .get(0);
            assert_eq!(stored, i64::from(version), "{fixture:?}");
            held(&mut db, false)
        }
        _ => unreachable!(),
    }
}

/// Today's store on the installed fixture: opening it migrates it.
fn open(dir: &Path, url: Option<&str>) -> (Arc<dyn ConversationStore>, Arc<dyn GraphStore>) {
    match url {
        Some(url) => {
            let store = Arc::new(PostgresStore::connect(url, 2).unwrap());
            (store.clone(), store)
        }
        None => {
            let store = Arc::new(SqliteStore::open(dir).unwrap());
            (store.clone(), store)
        }
    }
}

/// Sorted, so that two lists compare as multisets.
fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut items = items.to_vec();
    items.sort();
    items
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// Every part of `held` is in today's store.
fn nothing_lost(
    fixture: Fixture,
    held: &Held,
    store: &dyn ConversationStore,
    graph: &dyn GraphStore,
) {
    assert!(held.conversations.len() >= 3, "{fixture:?}: {held:#?}");
    for conversation in &held.conversations {
        let what = format!("{fixture:?} conversation {}", conversation.id);
        let id = SessionId::parse(&conversation.id).unwrap();
        let loaded = store.load(&id, 0, 10_000).unwrap().expect(&what);
        assert_eq!(loaded.owner, conversation.owner, "{what}");
        assert_eq!(sorted(&loaded.notes), sorted(&conversation.notes), "{what}");

        // Every event, unchanged and in its place.
        let last = conversation.events.last().map_or(0, |(seq, _)| *seq);
        assert!(loaded.last_seq >= last, "{what}");
        let page = store.events(&id, 0, loaded.last_seq, usize::MAX).unwrap();
        let served: BTreeMap<u64, String> = page.events.into_iter().collect();
        for (seq, body) in &conversation.events {
            assert_eq!(served.get(seq), Some(body), "{what}: event {seq}");
        }

        // Every turn, with its user's text; the title as it was (version 1 had none).
        let turns = store.turns(&conversation.owner, &id).unwrap().expect(&what);
        let texts: Vec<String> = turns.turns.iter().map(|t| t.text.clone()).collect();
        assert_eq!(texts, conversation.user_messages(), "{what}");
        let summary = store
            .summary(&conversation.owner, &id)
            .unwrap()
            .expect(&what);
        match &conversation.title {
            Some(title) => assert_eq!(summary.title.as_ref(), Some(title), "{what}"),
            None => assert!(summary.title.is_some_and(|t| !t.is_empty()), "{what}"),
        }

        // Every message, on the path of some turn (a branch holds its own).
        let mut on_paths = BTreeSet::new();
        for turn in 0..=loaded.tree.len() {
            let path = loaded.tree.path(turn);
            for message in store.path_messages(&id, &path, 10_000).unwrap() {
                on_paths.insert((role_name(message.role).to_owned(), message.content));
            }
        }
        for message in &conversation.messages {
            assert!(on_paths.contains(message), "{what}: {message:?} is lost");
        }
    }

    // Every node, its owner's alone, and every edge.
    let owners: BTreeSet<&String> = held.nodes.iter().map(|node| &node.1).collect();
    for owner in owners {
        let found: BTreeSet<(i64, String, String, String)> = graph
            .recent(owner, None, 10_000)
            .unwrap()
            .into_iter()
            .map(|node| (node.id, node.kind, node.label, node.content))
            .collect();
        let wanted: BTreeSet<(i64, String, String, String)> = held
            .nodes
            .iter()
            .filter(|node| &node.1 == owner)
            .map(|(id, _, kind, label, content)| {
                (*id, kind.clone(), label.clone(), content.clone())
            })
            .collect();
        assert_eq!(found, wanted, "{fixture:?}: {owner}'s nodes");
    }
    for (source, target, kind) in &held.edges {
        let owner = &held.nodes.iter().find(|node| node.0 == *source).unwrap().1;
        let around = graph.get(owner, *source).unwrap().unwrap();
        assert!(
            around
                .neighbours
                .iter()
                .any(|(edge, node)| edge.kind == *kind && node.id == *target),
            "{fixture:?}: edge {source} -{kind}-> {target} is lost"
        );
    }
}

/// Today's server on the upgraded store: the token's renamed conversation goes on where it
/// stopped, its notes and facts in reach of the bot.
fn goes_on(fixture: Fixture, held: &Held, dir: &Path, url: Option<String>) {
    let server = TestServer::with_config(|config| {
        config.data_dir = dir.to_owned();
        config.database_url = url.clone();
        if fixture.has_tokens() {
            config.auth_tokens = vec![TOKEN.into(), OTHER.into()];
        }
    });
    let owner = if fixture.has_tokens() {
        Principal::of_token(TOKEN).as_str().to_owned()
    } else {
        "local".to_owned()
    };
    let conversation = held
        .conversations
        .iter()
        .find(|c| c.owner == owner && !c.notes.is_empty())
        .expect("a conversation with notes");
    let id = SessionId::parse(&conversation.id).unwrap();
    let last = conversation.events.last().unwrap().0;
    let mut client = Client::connect(
        server.addr,
        serde_json::json!({"session_id": id.as_str(), "last_seq": last, "token": TOKEN}),
    );
    assert_eq!(client.session_id.as_ref(), Some(&id), "{fixture:?}");
    let answer = client.ask("/notes");
    for note in &conversation.notes {
        assert!(answer.contains(note.as_str()), "{fixture:?}: {answer}");
    }
    let opened = client
        .seen
        .iter()
        .find(|frame| matches!(frame.frame, ServerFrame::UserMessage { .. }))
        .unwrap();
    // Numbering goes on: no seq or turn is used twice (a turn cut off by the stop may have
    // been closed first).
    assert!(opened.seq.unwrap() > last, "{fixture:?}");
    let turns = conversation.user_messages().len() as u64;
    assert_eq!(opened.frame.turn_id().unwrap().0, turns + 1, "{fixture:?}");
    if let Some((_, _, _, _, fact)) = held
        .nodes
        .iter()
        .find(|node| node.1 == owner && node.2 == "fact")
    {
        let word = fact.split_whitespace().next().unwrap();
        let recalled = client.ask(&format!("/recall {word}"));
        assert!(recalled.contains(fact.as_str()), "{fixture:?}: {recalled}");
    }
}

/// Installs `fixture`, reads what it held, upgrades it, and checks that nothing was lost and
/// that it goes on.
fn upgrade(fixture: Fixture) {
    let (dir, url) = install(fixture);
    let held = read_held(fixture, &dir, url.as_deref());
    {
        let (store, graph) = open(&dir, url.as_deref());
        nothing_lost(fixture, &held, store.as_ref(), graph.as_ref());
    }
    goes_on(fixture, &held, &dir, url);
}

#[test]
fn sqlite_1_upgrades_with_nothing_lost() {
    upgrade(Fixture::Sqlite(1));
}

#[test]
fn sqlite_2_upgrades_with_nothing_lost() {
    upgrade(Fixture::Sqlite(2));
}

#[test]
fn sqlite_3_upgrades_with_nothing_lost() {
    upgrade(Fixture::Sqlite(3));
}

#[test]
fn sqlite_4_upgrades_with_nothing_lost() {
    upgrade(Fixture::Sqlite(4));
}

#[test]
fn sqlite_5_upgrades_with_nothing_lost() {
    upgrade(Fixture::Sqlite(5));
}

#[test]
fn sqlite_8_upgrades_with_nothing_lost() {
    upgrade(Fixture::Sqlite(8));
}

#[test]
fn postgres_1_upgrades_with_nothing_lost() {
    upgrade(Fixture::Postgres(1));
}

#[test]
fn postgres_2_upgrades_with_nothing_lost() {
    upgrade(Fixture::Postgres(2));
}

#[test]
fn postgres_3_upgrades_with_nothing_lost() {
    upgrade(Fixture::Postgres(3));
}

#[test]
fn postgres_4_upgrades_with_nothing_lost() {
    upgrade(Fixture::Postgres(4));
}

#[test]
fn postgres_7_upgrades_with_nothing_lost() {
    upgrade(Fixture::Postgres(7));
}

#[test]
fn the_fixtures_cover_every_schema_version_this_build_knows() {
    // Every version that shipped has its fixture, written by the last build that had it
    // (scripts/fixtures.sh), and a test above. SQLite 6 and 7 and PostgreSQL 5 and 6 never
    // shipped on their own: they landed together with 8 and 7 (fc9be25). This build's own
    // (SQLite 11: the search's index filled behind the commits; SQLite 10, PostgreSQL 9: MCP
    // OAuth grants; SQLite 9, PostgreSQL 8: daily use) is what they upgrade to; once they have
    // shipped, their fixtures join them and these numbers move on. (SQLite 10 to 11 is tested
    // on a store that version 10's migrations built: `store/tests/text_index.rs`.)
    assert_eq!(sparky::store::SCHEMA_VERSION, 11);
    assert_eq!(sparky::store::POSTGRES_SCHEMA_VERSION, 9);
    for fixture in [1, 2, 3, 4, 5, 8]
        .map(Fixture::Sqlite)
        .into_iter()
        .chain([1, 2, 3, 4, 7].map(Fixture::Postgres))
    {
        assert!(fixture.path().is_file(), "{fixture:?}");
    }
}

#[test]
fn instances_starting_at_once_migrate_a_postgres_database_once() {
    let (_, url) = install(Fixture::Postgres(1));
    let url = url.unwrap();
    let held = read_held(Fixture::Postgres(1), Path::new("."), Some(&url));
    const INSTANCES: usize = 4;
    let start = Barrier::new(INSTANCES);
    let stores: Vec<PostgresStore> = std::thread::scope(|scope| {
        let started: Vec<_> = (0..INSTANCES)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    PostgresStore::connect(&url, 1)
                })
            })
            .collect();
        started
            .into_iter()
            .map(|instance| instance.join().unwrap().unwrap())
            .collect()
    });
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let versions: Vec<i64> = db
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let current = sparky::store::POSTGRES_SCHEMA_VERSION;
    assert_eq!(versions, (1..=current).collect::<Vec<i64>>());
    // Each migration ran once: a column added twice, or totals summed twice, would show.
    let store = &stores[0];
    nothing_lost(Fixture::Postgres(1), &held, store, store);
}

/// `sparky ARGS` (a server that must not start): its exit code and stderr.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(["--addr", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_store_newer_than_the_binary_is_refused_with_exit_1() {
    let dir = support::temp_dir("newer-sqlite");
    std::fs::create_dir_all(&dir).unwrap();
    let db = rusqlite::Connection::open(dir.join(sparky::store::DATABASE_FILE)).unwrap();
    db.pragma_update(None, "user_version", 99).unwrap();
    drop(db);
    let (code, err) = refused(&["--data-dir", dir.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "schema version 99, newer than this build's {}",
            sparky::store::SCHEMA_VERSION
        )) && err.contains("run a newer sparky"),
        "{err}"
    );

    let (_, url) = install(Fixture::Postgres(3));
    let url = url.unwrap();
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    db.execute("INSERT INTO schema_version (version) VALUES (99)", &[])
        .unwrap();
    let (code, err) = refused(&["--store", &url]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "schema version 99, newer than this build's {}",
            sparky::store::POSTGRES_SCHEMA_VERSION
        )) && err.contains("run a newer sparky"),
        "{err}"
    );
    // Nothing was changed: the newer build still finds its version.
    let version: i64 = db
        .query_one("SELECT max(version) FROM schema_version", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, 99);
}
