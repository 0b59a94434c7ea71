//! The MCP grants' tests, each body run against both stores: a grant written, replaced (its
//! version bumped, its lease freed) and forgotten, and the refresh lease: one claimant at a
//! time, none for a version already replaced, a lease past its time taken over.
//!
//! Depends on: `store::mcp_auth`, `store::sqlite`, `store::tests`.

use super::{cluster, postgres};
use crate::store::{McpAuthStore, SqliteStore};

fn grants_and_their_lease(store: &dyn McpAuthStore) {
    assert!(store.mcp_grant("s").unwrap().is_none());
    // Without a grant there is nothing to claim.
    assert!(!store.claim_mcp_refresh("s", 1, 100, 130).unwrap());
    let first = store.put_mcp_grant("s", "{\"a\":1}").unwrap();
    let stored = store.mcp_grant("s").unwrap().unwrap();
    assert_eq!(
        (stored.grant.as_str(), stored.version),
        ("{\"a\":1}", first)
    );
    assert_eq!(stored.refreshing_until, None);
    // The token is never in Debug.
    assert!(!format!("{stored:?}").contains("\"a\""));

    // One claimant at a time; a version already replaced cannot be claimed.
    assert!(store.claim_mcp_refresh("s", first, 100, 130).unwrap());
    assert!(!store.claim_mcp_refresh("s", first, 110, 140).unwrap());
    assert_eq!(
        store.mcp_grant("s").unwrap().unwrap().refreshing_until,
        Some(130)
    );
    let second = store.put_mcp_grant("s", "{\"a\":2}").unwrap();
    assert!(second > first);
    let stored = store.mcp_grant("s").unwrap().unwrap();
    assert_eq!(
        (stored.grant.as_str(), stored.refreshing_until),
        ("{\"a\":2}", None)
    );
    assert!(!store.claim_mcp_refresh("s", first, 200, 230).unwrap());

    // A lease past its time is taken over; a freed one can be claimed again.
    assert!(store.claim_mcp_refresh("s", second, 200, 230).unwrap());
    assert!(store.claim_mcp_refresh("s", second, 231, 260).unwrap());
    store.release_mcp_refresh("s").unwrap();
    assert!(store.claim_mcp_refresh("s", second, 232, 262).unwrap());

    // Another server's grant is its own; forgetting one leaves the other.
    store.put_mcp_grant("t", "{}").unwrap();
    assert!(store.forget_mcp_grant("s").unwrap());
    assert!(!store.forget_mcp_grant("s").unwrap());
    assert!(store.mcp_grant("s").unwrap().is_none());
    assert!(store.mcp_grant("t").unwrap().is_some());
}

#[test]
fn sqlite_mcp_grants() {
    grants_and_their_lease(&SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_mcp_grants() {
    grants_and_their_lease(&postgres(&cluster::fresh_database()));
}

fn sign_ins_are_taken_once(store: &dyn McpAuthStore) {
    store.put_mcp_sign_in("st", "s", "{\"v\":1}", 0).unwrap();
    assert!(store.take_mcp_sign_in("other", 0).unwrap().is_none());
    assert_eq!(
        store.take_mcp_sign_in("st", 0).unwrap(),
        Some(("s".to_owned(), "{\"v\":1}".to_owned()))
    );
    assert!(
        store.take_mcp_sign_in("st", 0).unwrap().is_none(),
        "once only"
    );
    // One made before `not_before` is not given (and is gone); old ones are swept.
    store.put_mcp_sign_in("old", "s", "{}", 0).unwrap();
    assert!(store.take_mcp_sign_in("old", i64::MAX).unwrap().is_none());
    store.put_mcp_sign_in("a", "s", "{}", 0).unwrap();
    store.put_mcp_sign_in("b", "s", "{}", i64::MAX).unwrap();
    assert!(store.take_mcp_sign_in("a", 0).unwrap().is_none(), "swept");
    assert!(store.take_mcp_sign_in("b", 0).unwrap().is_some());
}

#[test]
fn sqlite_mcp_sign_ins() {
    sign_ins_are_taken_once(&SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_mcp_sign_ins() {
    sign_ins_are_taken_once(&postgres(&cluster::fresh_database()));
}
