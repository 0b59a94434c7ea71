//! The conversation search's index on SQLite, filled behind the commits
//! (`store/sqlite/text_index.rs`): a search finds what was just said though the index had not
//! taken it; the `checkpoint` thread takes it unasked; a start takes what a crash left; the
//! newest conversation deleted does not hide the texts of the next; a store of the schema
//! before keeps its index and loses its index of sessions by their last change; a store
//! without that thread (in memory) indexes in the batch that brings enough texts; a store whose
//! index cannot catch up (a full disk) still opens, searches and writes.
//!
//! Depends on: `store`, `store::sqlite`, `store::sqlite::schema`, `store::tests`.

use std::time::{Duration, Instant};

use super::{create, event, id, temp_dir};
use crate::store::{ConversationStore, DATABASE_FILE, SqliteStore, TurnMark, WriteOp};

/// The conversations of `owner` whose texts hold `words`.
fn found(store: &SqliteStore, owner: &str, words: &str) -> Vec<String> {
    store
        .list(owner, Some(words), 10)
        .unwrap()
        .iter()
        .map(|summary| summary.id.as_str().to_owned())
        .collect()
}

/// Texts the full-text index holds.
fn indexed(store: &SqliteStore) -> i64 {
    store.count_rows("event_text")
}

/// Texts waiting in their events for the index.
fn waiting(store: &SqliteStore) -> i64 {
    store.count_rows("events WHERE search_text IS NOT NULL")
}

#[test]
fn a_search_finds_what_was_just_said_and_the_index_takes_it_unasked() {
    let dir = temp_dir("text-index");
    let store = SqliteStore::open(&dir).unwrap();
    let one = id(1);
    store
        .apply(&[
            create(&one, "ann"),
            event(&one, 1, TurnMark::None, Some("otters hold hands")),
            event(&one, 2, TurnMark::None, None),
        ])
        .unwrap();
    // The commit left the text in its event; the search takes it into the index first.
    assert_eq!((indexed(&store), waiting(&store)), (0, 1));
    assert_eq!(found(&store, "ann", "otters"), [one.as_str()]);
    assert_eq!((indexed(&store), waiting(&store)), (1, 0));
    assert!(found(&store, "bob", "otters").is_empty());

    // Unasked, the `checkpoint` thread takes a text within its one-second wake.
    store
        .apply(&[event(&one, 3, TurnMark::None, Some("beavers build dams"))])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting(&store) > 0 {
        assert!(Instant::now() < deadline, "the text was never indexed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(indexed(&store), 2);
    assert_eq!(found(&store, "ann", "beavers"), [one.as_str()]);
}

#[test]
fn a_start_indexes_what_a_crash_left_waiting() {
    let dir = temp_dir("text-index-crash");
    let store = SqliteStore::open(&dir).unwrap();
    let one = id(1);
    store.apply(&[create(&one, "ann")]).unwrap();
    drop(store);
    // Committed, and the process gone before the index took it.
    let connection = rusqlite::Connection::open(dir.join(DATABASE_FILE)).unwrap();
    connection
        .execute_batch(
            "INSERT INTO events (session_key, seq, body, search_text) \
             SELECT key, 1, '{}', 'herons wade' FROM sessions",
        )
        .unwrap();
    drop(connection);
    let store = SqliteStore::open(&dir).unwrap();
    assert_eq!((indexed(&store), waiting(&store)), (1, 0));
    assert_eq!(found(&store, "ann", "herons"), [one.as_str()]);
}

#[test]
fn the_newest_conversation_deleted_does_not_hide_the_texts_of_the_next() {
    let dir = temp_dir("text-index-delete");
    let store = SqliteStore::open(&dir).unwrap();
    let (one, two, three) = (id(1), id(2), id(3));
    store
        .apply(&[
            create(&one, "ann"),
            event(&one, 1, TurnMark::None, Some("owls at dusk")),
            create(&two, "ann"),
            event(&two, 1, TurnMark::None, Some("newts in ponds")),
            event(&two, 2, TurnMark::None, Some("newts again")),
        ])
        .unwrap();
    assert_eq!(found(&store, "ann", "newts"), [two.as_str()]);
    // The newest events go, and SQLite hands their rowids to the next ones.
    store
        .apply(&[WriteOp::DeleteSession {
            session: two.clone(),
        }])
        .unwrap();
    store
        .apply(&[
            create(&three, "ann"),
            event(&three, 1, TurnMark::None, Some("voles under hedges")),
            event(&three, 2, TurnMark::None, Some("voles again")),
        ])
        .unwrap();
    assert_eq!(found(&store, "ann", "voles"), [three.as_str()]);
    assert!(found(&store, "ann", "newts").is_empty());
    assert_eq!(found(&store, "ann", "owls"), [one.as_str()]);
    assert_eq!(indexed(&store), 3);
    // A conversation deleted before the index took its texts.
    let four = id(4);
    store
        .apply(&[
            create(&four, "ann"),
            event(&four, 1, TurnMark::None, Some("shrews at night")),
        ])
        .unwrap();
    store
        .apply(&[WriteOp::DeleteSession { session: four }])
        .unwrap();
    assert!(found(&store, "ann", "shrews").is_empty());
    assert_eq!((indexed(&store), waiting(&store)), (3, 0));
}

#[test]
fn version_10_keeps_its_index_and_loses_the_index_by_last_change() {
    let dir = temp_dir("v10-to-v11");
    std::fs::create_dir_all(&dir).unwrap();
    {
        let mut db = rusqlite::Connection::open(dir.join(DATABASE_FILE)).unwrap();
        crate::store::sqlite::schema::migrate_to(&mut db, "test", 10).unwrap();
        // As version 10 wrote a turn: the text went into the index with its event.
        db.execute_batch(&format!(
            "INSERT INTO sessions (id, owner, created_at, updated_at) VALUES ('{}', 'ann', 1, 1); \
             INSERT INTO events (session_key, seq, body) VALUES (1, 1, '{{}}'), (1, 2, '{{}}'); \
             INSERT INTO event_text (rowid, text, owner_token, session_key) \
             VALUES (1, 'kestrels hover', 'o' || hex('ann'), 1);",
            id(1).as_str()
        ))
        .unwrap();
    }
    let store = SqliteStore::open(&dir).unwrap();
    assert_eq!(found(&store, "ann", "kestrels"), [id(1).as_str()]);
    assert_eq!(store.count_rows("text_index WHERE indexed_to = 2"), 1);
    assert_eq!(
        store.count_rows("sqlite_schema WHERE name = 'sessions_updated'"),
        0
    );
    store
        .apply(&[event(&id(1), 3, TurnMark::None, Some("kestrels dive"))])
        .unwrap();
    assert_eq!(found(&store, "ann", "dive"), [id(1).as_str()]);
    assert_eq!(indexed(&store), 2);
}

#[test]
fn without_the_checkpoint_thread_the_batch_that_brings_enough_texts_indexes_them() {
    let store = SqliteStore::in_memory().unwrap();
    let one = id(1);
    store.apply(&[create(&one, "ann")]).unwrap();
    for seq in 1..=5_000 {
        store
            .apply(&[event(&one, seq, TurnMark::None, Some("moles dig"))])
            .unwrap();
        if indexed(&store) > 0 {
            // Many batches' texts at once, and all of them.
            assert!(seq >= 100, "indexed after {seq} texts");
            assert_eq!((indexed(&store), waiting(&store)), (seq as i64, 0));
            return;
        }
    }
    panic!("5,000 texts and none indexed");
}

#[test]
fn a_store_whose_index_cannot_catch_up_still_opens_and_searches() {
    let dir = temp_dir("text-index-broken");
    let store = SqliteStore::open(&dir).unwrap();
    let one = id(1);
    store
        .apply(&[
            create(&one, "ann"),
            event(&one, 1, TurnMark::None, Some("stoats")),
        ])
        .unwrap();
    assert_eq!(found(&store, "ann", "stoats"), [one.as_str()]);
    store
        .apply(&[event(&one, 2, TurnMark::None, Some("weasels"))])
        .unwrap();
    drop(store);
    // Every step now fails, as one would on a full disk.
    let connection = rusqlite::Connection::open(dir.join(DATABASE_FILE)).unwrap();
    connection.execute_batch("DROP TABLE text_index").unwrap();
    drop(connection);
    let store = SqliteStore::open(&dir).unwrap();
    assert_eq!(found(&store, "ann", "stoats"), [one.as_str()]);
    store
        .apply(&[event(&one, 3, TurnMark::None, Some("martens"))])
        .unwrap();
}
