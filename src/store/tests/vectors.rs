//! The semantic search through the vector index kept in memory, on both stores: the same best
//! nodes as brute force on a seeded set, deletions and edits honoured at once, a change made by
//! another handle on the same store seen, and never another principal's vectors.
//!
//! Depends on: `store::hnsw`, `store::plan`, `store::plan::vectors`, `store::tests`.

use std::collections::HashSet;

use super::super::plan::{Counters, Tuning};
use super::*;

/// The index from 50 vectors and the graph from 200, linked before a search answers, so that
/// a small seeded set goes through the graph itself.
const SMALL: Tuning = Tuning {
    index_from: 50,
    graph_from: 200,
    background: false,
};
const DIMS: usize = 16;

/// Unit vectors from a seeded generator, in eight clusters (facts about a few topics).
fn vectors(count: usize, seed: u64) -> Vec<Vec<f32>> {
    crate::store::hnsw::tests::vectors(count, DIMS, seed)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Stores `count` facts of `owner` with seeded vectors; returns `(id, vector)` for each.
fn seed<S: TestStore>(store: &S, owner: &str, count: usize, seed: u64) -> Vec<(i64, Vec<f32>)> {
    let rows: Vec<(i64, Vec<f32>)> = vectors(count, seed)
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            (
                store
                    .remember(owner, &format!("fact {i} of {owner}"))
                    .unwrap()
                    .0
                    .id,
                v,
            )
        })
        .collect();
    store.store_embeddings("m", &rows).unwrap();
    rows
}

/// The ids brute force ranks first among `rows` for `query`.
fn exact(rows: &[(i64, Vec<f32>)], query: &[f32], k: usize) -> Vec<i64> {
    let mut scored: Vec<(i64, f32)> = rows.iter().map(|(id, v)| (*id, dot(query, v))).collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.into_iter().take(k).map(|(id, _)| id).collect()
}

fn the_index_answers_as_brute_force_does<S: TestStore + AsRef<Counters>>(store: S, other: S) {
    store.as_ref().vectors().set_tuning(SMALL);
    other.as_ref().vectors().set_tuning(SMALL);
    let mut ann = seed(&store, "ann", 600, 7);
    // Bob's vectors are near ann's: any leak would rank among her best.
    let bobs: HashSet<i64> = seed(&store, "bob", 300, 7)
        .iter()
        .map(|(id, _)| *id)
        .collect();
    let person = store
        .add_node("ann", "person", "Tom", "a cat", &json!({}))
        .unwrap();
    store
        .store_embeddings("m", &[(person.id, vectors(1, 99)[0].clone())])
        .unwrap();
    let queries = vectors(40, 1234);
    let recall = |store: &S, ann: &[(i64, Vec<f32>)]| {
        let (mut hits, mut asked) = (0, 0);
        for query in &queries {
            let found = store.nearest("ann", "m", query, Some("fact"), 10).unwrap();
            for (node, similarity) in &found {
                assert!(!bobs.contains(&node.id), "bob's node {} came back", node.id);
                assert_eq!(node.kind, "fact");
                let stored = &ann.iter().find(|(id, _)| *id == node.id).unwrap().1;
                assert!((dot(query, stored) - similarity).abs() < 1e-5);
            }
            let want = exact(ann, query, 10);
            hits += want
                .iter()
                .filter(|id| found.iter().any(|(n, _)| n.id == **id))
                .count();
            asked += want.len();
        }
        hits as f64 / asked as f64
    };
    let first = recall(&store, &ann);
    assert!(first >= 0.95, "recall@10 {first}");
    // The person is found without the kind, and not with it.
    let near_person = vectors(1, 99)[0].clone();
    let found = store.nearest("ann", "m", &near_person, None, 1).unwrap();
    assert_eq!(found[0].0.id, person.id);

    // Deletions through the store leave the index at once.
    let gone = exact(&ann, &queries[0], 3);
    for id in &gone {
        assert!(store.delete("ann", *id).unwrap());
    }
    ann.retain(|(id, _)| !gone.contains(id));
    let found = store
        .nearest("ann", "m", &queries[0], Some("fact"), 10)
        .unwrap();
    assert!(
        found.iter().all(|(n, _)| !gone.contains(&n.id)),
        "{found:?}"
    );
    assert_eq!(found.len(), 10);

    // An edited fact loses its vector, and is found by its new one once embedded again.
    let edited = ann[5].0;
    store.edit("ann", edited, "fact edited").unwrap();
    ann.remove(5);
    let found = store
        .nearest("ann", "m", &queries[1], Some("fact"), 600)
        .unwrap();
    assert!(found.iter().all(|(n, _)| n.id != edited));
    store
        .store_embeddings("m", &[(edited, queries[1].clone())])
        .unwrap();
    ann.push((edited, queries[1].clone()));
    let found = store
        .nearest("ann", "m", &queries[1], Some("fact"), 1)
        .unwrap();
    assert_eq!(found[0].0.id, edited);

    // Another handle on the same store deletes and adds; this one sees both.
    let gone = exact(&ann, &queries[2], 2);
    for id in &gone {
        assert!(other.delete("ann", *id).unwrap());
    }
    ann.retain(|(id, _)| !gone.contains(id));
    let (added, _) = other.remember("ann", "added beside").unwrap();
    other
        .store_embeddings("m", &[(added.id, queries[3].clone())])
        .unwrap();
    ann.push((added.id, queries[3].clone()));
    let found = store
        .nearest("ann", "m", &queries[2], Some("fact"), 10)
        .unwrap();
    assert!(
        found.iter().all(|(n, _)| !gone.contains(&n.id)),
        "{found:?}"
    );
    let found = store
        .nearest("ann", "m", &queries[3], Some("fact"), 1)
        .unwrap();
    assert_eq!(found[0].0.id, added.id);
    let after = recall(&store, &ann);
    assert!(after >= 0.95, "recall@10 after the changes {after}");

    // Bob searches his own, through his own index.
    let found = store.nearest("bob", "m", &queries[0], None, 20).unwrap();
    assert_eq!(found.len(), 20);
    assert!(found.iter().all(|(n, _)| bobs.contains(&n.id)));
}

#[test]
fn sqlite_vector_index() {
    let dir = temp_dir("vector-index");
    let store = SqliteStore::open(&dir).unwrap();
    let other = SqliteStore::open_beside(&dir).unwrap();
    the_index_answers_as_brute_force_does(store, other);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn postgres_vector_index() {
    let url = cluster::fresh_database();
    the_index_answers_as_brute_force_does(postgres(&url), postgres(&url));
}
