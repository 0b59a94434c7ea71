//! The daily-use store's tests, each body run on both stores: turns counted until a limit
//! (the user's own over the defaults; none for a principal that is no user), another day
//! counted apart, tokens added by the journal's batch that closes a turn, users' limits set,
//! cleared and listed, and a store of the schema before daily use brought to it with its
//! users' limits kept; old days' use deleted.
//!
//! Depends on: `common::protocol`, `store`, `store::accounts`, `store::postgres`, `store::postgres::schema`, `store::sqlite`, `store::sqlite::schema`, `store::tests`, `store::usage`.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{cluster, create, event, id, postgres, temp_dir};
use crate::common::protocol::Usage;
use crate::store::accounts::AccountStore;
use crate::store::usage::{DayUsage, LimitChange, Limits, UsageStore, day_of};
use crate::store::{Closing, ConversationStore, PostgresStore, SqliteStore, TurnMark};

fn today() -> i64 {
    day_of(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    )
}

/// A change that sets both limits (`None`: back to the default).
fn set(turns: Option<u64>, tokens: Option<u64>) -> LimitChange {
    LimitChange {
        turns: Some(turns),
        tokens: Some(tokens),
    }
}

fn turns_and_tokens_are_counted_against_the_limits<S>(store: S)
where
    S: ConversationStore + AccountStore + UsageStore,
{
    let user = store.add_user("bob", "hash", false).unwrap().unwrap();
    let owner = format!("user:{}", user.id);
    let bob = Some(user.id);
    let defaults = Limits {
        turns: Some(2),
        tokens: None,
    };
    let day = today();
    for n in 1..=2 {
        let count = store.count_turn(&owner, bob, defaults, day).unwrap();
        assert!(count.counted);
        assert_eq!(count.usage.turns, n);
    }
    let count = store.count_turn(&owner, bob, defaults, day).unwrap();
    assert!(!count.counted, "past the default");
    assert_eq!(
        count.usage,
        DayUsage {
            turns: 2,
            tokens: 0
        }
    );
    assert_eq!(count.limits, defaults);
    assert!(
        store
            .count_turn(&owner, bob, defaults, day - 1)
            .unwrap()
            .counted
    );
    for _ in 0..3 {
        assert!(
            store
                .count_turn("token", None, defaults, day)
                .unwrap()
                .counted
        );
    }

    // The user's own limits win over the defaults; the batch that closes a turn adds its tokens.
    assert!(store.set_limits("bob", set(Some(5), Some(100))).unwrap());
    assert!(!store.set_limits("nobody", set(Some(5), None)).unwrap());
    let conversation = id(7);
    let closed = |seq, prompt_tokens, completion_tokens| {
        let usage = Usage {
            prompt_tokens,
            completion_tokens,
        };
        let turn = TurnMark::Closed {
            usage,
            closing: Closing::Message,
            reset: false,
        };
        event(&conversation, seq, turn, None)
    };
    store
        .apply(&[create(&conversation, &owner), closed(1, 60, 30)])
        .unwrap();
    store.apply(&[closed(2, 15, 5)]).unwrap();
    let usage = store.usage(&owner, bob, day).unwrap();
    assert_eq!(
        usage.today,
        DayUsage {
            turns: 2,
            tokens: 110
        }
    );
    assert_eq!(usage.tokens_used, 110);
    assert_eq!(
        usage.own,
        Limits {
            turns: Some(5),
            tokens: Some(100)
        }
    );
    let count = store.count_turn(&owner, bob, defaults, day).unwrap();
    assert!(!count.counted, "past the user's own tokens");
    assert_eq!(count.usage.tokens, 110);
    // Back to the default for tokens (none), kept for turns.
    let tokens_only = LimitChange {
        turns: None,
        tokens: Some(None),
    };
    assert!(store.set_limits("bob", tokens_only).unwrap());
    assert!(
        store
            .count_turn(&owner, bob, defaults, day)
            .unwrap()
            .counted
    );
    let listed = store.users().unwrap();
    assert_eq!(
        listed[0].limits,
        Limits {
            turns: Some(5),
            tokens: None
        }
    );
    // Nobody else's use is touched.
    let theirs = store.usage("token", None, day).unwrap();
    assert_eq!(
        theirs.today,
        DayUsage {
            turns: 3,
            tokens: 0
        }
    );
    assert_eq!(theirs.own, Limits::NONE);
}

#[test]
fn sqlite_daily_use() {
    turns_and_tokens_are_counted_against_the_limits(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_daily_use() {
    turns_and_tokens_are_counted_against_the_limits(postgres(&cluster::fresh_database()));
}

/// A user with own limits, in a store of the schema before daily use, is found with them in
/// today's, whose count works.
fn a_users_limits_survive_the_upgrade<S: AccountStore + UsageStore>(store: S) {
    let listed = store.users().unwrap();
    assert_eq!(listed[0].user.name, "ann");
    let own = Limits {
        turns: Some(1),
        tokens: None,
    };
    assert_eq!(listed[0].limits, own);
    let ann = Some(listed[0].user.id);
    let owner = format!("user:{}", listed[0].user.id);
    assert!(
        store
            .count_turn(&owner, ann, Limits::NONE, 5)
            .unwrap()
            .counted
    );
    assert!(
        !store
            .count_turn(&owner, ann, Limits::NONE, 5)
            .unwrap()
            .counted
    );
}

#[test]
fn sqlite_version_8_gains_daily_use() {
    let dir = temp_dir("v8-to-v9");
    std::fs::create_dir_all(&dir).unwrap();
    {
        let mut db = rusqlite::Connection::open(dir.join(crate::store::DATABASE_FILE)).unwrap();
        crate::store::sqlite::schema::migrate_to(&mut db, "test", 8).unwrap();
        db.execute_batch(
            "INSERT INTO users (name, password_hash, created_at, daily_turns) \
             VALUES ('ann', 'hash', 1, 1)",
        )
        .unwrap();
    }
    a_users_limits_survive_the_upgrade(SqliteStore::open(&dir).unwrap());
}

#[test]
fn postgres_version_7_gains_daily_use() {
    let url = cluster::fresh_database();
    {
        let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        crate::store::postgres::schema::migrate_to(&mut client, "test", 7).unwrap();
        client
            .batch_execute(
                "INSERT INTO users (name, password_hash, created_at, daily_turns) \
                 VALUES ('ann', 'hash', 1, 1)",
            )
            .unwrap();
    }
    let store: PostgresStore = postgres(&url);
    a_users_limits_survive_the_upgrade(store);
}

/// Rows of the days before the cut are deleted, every principal's; the cut day and later stay.
fn old_days_are_pruned<S: UsageStore>(store: S) {
    let day = today();
    let cut = day - 399;
    for (owner, on) in [
        ("token-a", day - 500),
        ("token-b", cut - 1),
        ("token-a", cut),
        ("token-b", day),
    ] {
        assert!(
            store
                .count_turn(owner, None, Limits::NONE, on)
                .unwrap()
                .counted
        );
    }
    let turns = |owner: &str, on: i64| store.usage(owner, None, on).unwrap().today.turns;
    assert_eq!(store.prune_usage(cut).unwrap(), 2);
    assert_eq!(turns("token-a", day - 500), 0);
    assert_eq!(turns("token-b", cut - 1), 0);
    assert_eq!(turns("token-a", cut), 1);
    assert_eq!(turns("token-b", day), 1);
    assert_eq!(store.prune_usage(cut).unwrap(), 0, "nothing left to delete");
}

#[test]
fn sqlite_old_days_are_pruned() {
    old_days_are_pruned(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_old_days_are_pruned() {
    old_days_are_pruned(postgres(&cluster::fresh_database()));
}
