//! [`VectorIndexes`]: the vector indexes a store keeps in memory, one per principal and
//! embedding model, so that a semantic search past a few thousand facts reads a graph rather
//! than every vector. The `embeddings` table stays the only truth; an index is a copy of it,
//! and every search checks the copy first:
//!
//! - **In step.** Each search reads the highest id of the principal's vectors by the model (one
//!   step down the `(owner, model)` index) and reads and adds the vectors past the highest the
//!   copy holds (new nodes), and those of nodes edited or embedded again here (their vectors
//!   come back under the same id; [`VectorIndexes::stored`]). Deletions and edits made through
//!   this store take their vectors out of the copy at once ([`VectorIndexes::forget`]). When an
//!   index is new, and every 30 seconds, the search reads the whole fingerprint instead: the
//!   store's count and id sum of those vectors (one pass over the index). When they differ from
//!   the copy's after what is new was added, something else changed the store (another process:
//!   `sparky user`, a restore, a cluster peer), and the copy is read again whole. So another
//!   process's new facts are found at once, and what it deleted or re-embedded under the same
//!   id is in step within 30 seconds.
//! - **Checked.** What the graph finds is read back from the store, node and vector, under the
//!   principal's name, in one statement for all of them (`Dialect::nodes_with_vectors`), and
//!   scored from the stored vector: a node deleted or edited elsewhere is never answered with a
//!   stale score, and no other principal's node ever is.
//! - **Bounded.** The copies together stay under [`MAX_INDEX_BYTES`]; the least recently
//!   searched go first. A principal whose vectors alone are past it gets the brute-force scan.
//! - **Brute force where it is faster.** Below [`Tuning::index_from`] vectors a search reads
//!   them from the store as before; below [`Tuning::graph_from`] the copy is scanned (in memory,
//!   an order of magnitude faster than reading the rows); past it the graph ([`Hnsw`]) is built
//!   a batch at a time on a `vector-index` thread, and until it is done the part not yet linked
//!   is scanned, so that a search is exact-or-better at every moment of a build.
//!
//! Depends on: `store::hnsw`, `store::plan`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::{Db, Param, Query, vector_bytes};
use crate::store::hnsw::Hnsw;

/// Most bytes the vector indexes of a store hold together (vectors and links).
pub const MAX_INDEX_BYTES: usize = 1 << 30;

/// Fewest candidates a graph search keeps (`ef`); it keeps four times what it is asked for
/// when that is more. At 128 the 50 nearest of 100,000 hashed-trigram vectors were 92% the
/// exact 50 (`examples/recallbench.rs`); this is the price of more.
const EF_SEARCH: usize = 256;

/// Vectors linked into a graph per hold of its lock while it is built: a few milliseconds, so
/// that searches of the same principal wait little.
const LINK_BATCH: usize = 64;

/// How long an index goes on its highest id alone before the whole fingerprint is read again.
const FULL_CHECK: Duration = Duration::from_secs(30);

/// Edited nodes whose vectors an index waits for; past this it is read again whole.
const MAX_PENDING: usize = 1_024;

/// Where each way of searching starts (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Fewest vectors (of a principal by a model) for which the copy in memory is used.
    pub index_from: usize,
    /// Fewest vectors for which the copy is linked into a graph.
    pub graph_from: usize,
    /// Whether the graph is built on a thread of its own (false: before the search that
    /// needs it returns, which tests use to reach the graph's own answers).
    pub background: bool,
}

impl Default for Tuning {
    /// The crossovers measured with `examples/recallbench.rs --crossover` (BENCHMARKS.md).
    fn default() -> Self {
        Tuning {
            index_from: 1_000,
            graph_from: 20_000,
            background: true,
        }
    }
}

/// The in-memory vector indexes of one store. The map's lock is held only to find, add or drop
/// an index; each index has its own lock, held for reading by a search and for writing while
/// vectors are added or a batch is linked.
#[derive(Debug, Default)]
pub struct VectorIndexes {
    state: Mutex<Cache>,
}

/// The indexes and when each was last searched.
#[derive(Debug, Default)]
struct Cache {
    tuning: Option<Tuning>,
    /// Each index and the clock's time when it was last searched.
    indexes: HashMap<(String, String), (Shared, u64)>,
    clock: u64,
}

type Shared = Arc<RwLock<VectorIndex>>;

/// A copy of one principal's vectors by one model.
#[derive(Debug)]
struct VectorIndex {
    graph: Hnsw,
    /// Each slot's node.
    ids: Vec<i64>,
    /// Each slot's node kind, as a number in `kinds`.
    kind_of: Vec<u16>,
    kinds: Vec<String>,
    /// Slots whose vector was dropped or replaced since it was added.
    dead: Vec<bool>,
    dead_count: usize,
    /// Each node's live slot.
    slot_of: HashMap<i64, u32>,
    /// Nodes whose vector is of another dimension: counted, not indexed.
    odd: HashSet<i64>,
    /// Nodes edited here whose vectors may come back under the same id.
    pending: HashSet<i64>,
    /// The fingerprint of what the copy holds: count and id sum.
    count: i64,
    sum: i64,
    /// The highest id ever added.
    seen_max: i64,
    /// True while a thread links the graph.
    building: bool,
    /// When the whole fingerprint last matched.
    checked: Option<Instant>,
}

/// Rows read for an index: node, kind, vector.
type Rows = Vec<(i64, String, Vec<u8>)>;

/// The fingerprint of a principal's vectors by a model: one pass over `(owner, model)`.
const FINGERPRINT: &str = "SELECT count(*), CAST(coalesce(sum(node_id), 0) AS BIGINT) \
     FROM embeddings WHERE owner = ?1 AND model = ?2";
/// The highest id of a principal's vectors by a model: one step down the `(owner, model)`
/// index (SQLite's holds the id as its rowid; PostgreSQL's `embeddings_owner_node`). The bare
/// `max` is what both planners answer from the index's end; wrapped in another function, SQLite
/// reads the whole range.
const HIGHEST: &str = "SELECT max(node_id) FROM embeddings WHERE owner = ?1 AND model = ?2";
/// The vectors past `?3`, in id order.
const VECTORS_AFTER: &str = "SELECT e.node_id, n.kind, e.vector FROM embeddings e \
     JOIN nodes n ON n.id = e.node_id \
     WHERE e.owner = ?1 AND e.model = ?2 AND e.node_id > ?3 ORDER BY e.node_id";
/// One node's vector, if it has one.
const VECTOR_OF: &str = "SELECT e.node_id, n.kind, e.vector FROM embeddings e \
     JOIN nodes n ON n.id = e.node_id \
     WHERE e.owner = ?1 AND e.model = ?2 AND e.node_id = ?3";

/// What [`VectorIndexes::candidates`] answers.
#[derive(Debug)]
pub enum Candidates {
    /// Too few vectors for an index, or too many for memory: scan the store.
    Scan,
    /// The nodes to read back and score, best first by the copy's vectors.
    Found(Vec<i64>),
}

impl VectorIndexes {
    /// Sets where each way of searching starts, dropping every index.
    #[cfg(test)]
    pub fn set_tuning(&self, tuning: Tuning) {
        let mut cache = self.state.lock();
        cache.tuning = Some(tuning);
        cache.indexes.clear();
    }

    /// Sets [`Tuning::index_from`] and [`Tuning::graph_from`], dropping every index.
    pub fn tune(&self, index_from: usize, graph_from: usize) {
        let mut cache = self.state.lock();
        cache.tuning = Some(Tuning {
            index_from,
            graph_from,
            ..Tuning::default()
        });
        cache.indexes.clear();
    }

    /// The tuning in force.
    pub fn tuning(&self) -> Tuning {
        self.state.lock().tuning.unwrap_or_default()
    }

    /// Waits up to `timeout` until no index is linking its graph; true when none is.
    pub fn settle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let building = {
                let cache = self.state.lock();
                cache
                    .indexes
                    .values()
                    .any(|(index, _)| index.read().building)
            };
            if !building {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Forgets node `id`'s vectors in `owner`'s indexes, after the store dropped them (the
    /// node deleted or edited); with `edited`, its next vector is looked for.
    pub fn forget(&self, owner: &str, id: i64, edited: bool) {
        for index in self.matching(|(o, _)| o == owner) {
            let mut index = index.write();
            index.drop_node(id);
            if edited {
                index.pending.insert(id);
            }
        }
    }

    /// Drops every index of `owner` (its nodes moved to another principal).
    pub fn drop_owner(&self, owner: &str) {
        self.state.lock().indexes.retain(|(o, _), _| o != owner);
    }

    /// The `want` nodes of `owner` (of `kind`, when given) whose `model` vectors are nearest
    /// `query` by the copy in memory, brought in step with the store first; or
    /// [`Candidates::Scan`] when the store should be scanned instead.
    ///
    /// # Errors
    ///
    /// The database's.
    pub fn candidates<E>(
        &self,
        db: &mut dyn Db<Error = E>,
        owner: &str,
        model: &str,
        query: &[f32],
        kind: Option<&str>,
        want: usize,
    ) -> Result<Candidates, E> {
        let tuning = self.tuning();
        let key = (owner.to_owned(), model.to_owned());
        let dims = query.len();
        let known = {
            let mut cache = self.state.lock();
            cache.clock += 1;
            let clock = cache.clock;
            cache.indexes.get_mut(&key).and_then(|(index, used)| {
                *used = clock;
                (index.read().graph.dims() == dims).then(|| index.clone())
            })
        };
        // An index checked lately is brought in step by its highest id alone (one step down the
        // `(owner, model)` index) and what this store told it; every `FULL_CHECK`, and when it
        // is new, by the whole fingerprint, which also sees what other processes deleted.
        let index = match known {
            Some(index)
                if index
                    .read()
                    .checked
                    .is_some_and(|t| t.elapsed() < FULL_CHECK) =>
            {
                let (after, pending) = {
                    let copy = index.read();
                    (copy.seen_max, !copy.pending.is_empty())
                };
                if pending || highest(db, owner, model)? > after {
                    catch_up(db, &index, owner, model)?;
                }
                index
            }
            known => {
                let (count, sum) = fingerprint(db, owner, model)?;
                if count < i64::try_from(tuning.index_from).unwrap_or(i64::MAX) {
                    self.state.lock().indexes.remove(&key);
                    return Ok(Candidates::Scan);
                }
                let index = known.unwrap_or_else(|| {
                    let fresh = Arc::new(RwLock::new(VectorIndex::new(dims)));
                    let clock = self.state.lock().clock;
                    self.state
                        .lock()
                        .indexes
                        .insert(key.clone(), (fresh.clone(), clock));
                    fresh
                });
                if !self.check(db, &index, owner, model, (count, sum))? {
                    self.state.lock().indexes.remove(&key);
                    return Ok(Candidates::Scan);
                }
                index
            }
        };
        {
            let mut copy = index.write();
            if copy.dead_count > copy.ids.len() / 4 && copy.ids.len() > tuning.index_from {
                copy.compact();
            }
        }
        if !self.fits(&key, &index) {
            self.state.lock().indexes.remove(&key);
            return Ok(Candidates::Scan);
        }
        self.link(&index, tuning);
        let copy = index.read();
        let kind_number = match kind {
            Some(kind) => match copy.kinds.iter().position(|k| k == kind) {
                Some(n) => Some(n as u16),
                None => return Ok(Candidates::Found(Vec::new())),
            },
            None => None,
        };
        let keep = |slot: u32| {
            !copy.dead[slot as usize]
                && kind_number.is_none_or(|kind| copy.kind_of[slot as usize] == kind)
        };
        let found = copy
            .graph
            .search(query, want, EF_SEARCH.max(4 * want), &keep);
        Ok(Candidates::Found(
            found
                .into_iter()
                .map(|(slot, _)| copy.ids[slot as usize])
                .collect(),
        ))
    }

    /// Brings `index` in step with the store's fingerprint `(count, sum)`: what is new read
    /// and added, or, when that is not enough, everything read again. False when the store
    /// changed while it was read.
    fn check<E>(
        &self,
        db: &mut dyn Db<Error = E>,
        index: &Shared,
        owner: &str,
        model: &str,
        (count, sum): (i64, i64),
    ) -> Result<bool, E> {
        let mut in_step = index.read().matches(count, sum);
        if !in_step && index.read().pending.len() <= MAX_PENDING {
            catch_up(db, index, owner, model)?;
            in_step = index.read().matches(count, sum);
        }
        if !in_step {
            log::debug!(
                "graph: {owner}'s vectors by {model} changed outside this store; reading them \
                 again"
            );
            let dims = index.read().graph.dims();
            let (rows, _) = read_rows(db, owner, model, 0, &HashSet::new())?;
            let mut fresh = VectorIndex::new(dims);
            for (id, kind, bytes) in rows {
                fresh.add(id, &kind, &bytes);
            }
            in_step = fresh.matches(count, sum);
            *index.write() = fresh;
        }
        index.write().checked = Some(Instant::now());
        Ok(in_step)
    }

    /// Marks the nodes `ids`, just given `model` vectors here, to be read again by the indexes
    /// that may hold an older vector of theirs (ids at or below the highest they hold).
    pub fn stored(&self, model: &str, ids: &[i64]) {
        for index in self.matching(|(_, m)| m == model) {
            let mut copy = index.write();
            let seen_max = copy.seen_max;
            for &id in ids.iter().filter(|&&id| id <= seen_max) {
                copy.pending.insert(id);
            }
        }
    }

    /// The indexes whose `(owner, model)` `which` picks, taken out of the map's lock.
    fn matching(&self, which: impl Fn(&(String, String)) -> bool) -> Vec<Shared> {
        let cache = self.state.lock();
        cache
            .indexes
            .iter()
            .filter(|(key, _)| which(key))
            .map(|(_, (index, _))| index.clone())
            .collect()
    }

    /// True when the indexes fit in [`MAX_INDEX_BYTES`] with `index` among them, after the
    /// least recently searched others are dropped.
    fn fits(&self, key: &(String, String), index: &Shared) -> bool {
        let own = index.read().graph.bytes();
        if own > MAX_INDEX_BYTES {
            log::info!(
                "graph: {}'s vectors by {} take {own} bytes, past the index's bound; searching \
                 them by brute force",
                key.0,
                key.1
            );
            return false;
        }
        let mut cache = self.state.lock();
        loop {
            let mut sizes: Vec<(u64, usize, (String, String))> = cache
                .indexes
                .iter()
                .map(|(k, (index, used))| (*used, index.read().graph.bytes(), k.clone()))
                .collect();
            let total: usize = sizes.iter().map(|(_, bytes, _)| bytes).sum();
            if total <= MAX_INDEX_BYTES {
                return true;
            }
            sizes.sort();
            match sizes.into_iter().find(|(_, _, k)| k != key) {
                Some((_, _, oldest)) => {
                    cache.indexes.remove(&oldest);
                }
                None => return true,
            }
        }
    }

    /// Starts linking `index`'s graph when it is large enough and has vectors left unlinked.
    fn link(&self, index: &Shared, tuning: Tuning) {
        {
            let mut copy = index.write();
            let unlinked = copy.graph.len() - copy.graph.linked();
            if copy.building || unlinked == 0 || copy.graph.len() < tuning.graph_from {
                return;
            }
            if !tuning.background {
                copy.graph.link_next(usize::MAX);
                return;
            }
            copy.building = true;
        }
        let weak = Arc::downgrade(index);
        let spawned = std::thread::Builder::new()
            .name("vector-index".into())
            .spawn(move || {
                // The thread ends when the graph is linked, or when the index is dropped.
                while let Some(index) = weak.upgrade() {
                    let mut copy = index.write();
                    if copy.graph.link_next(LINK_BATCH) == 0 {
                        copy.building = false;
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("graph: could not start a thread to build a vector index: {e}");
            index.write().building = false;
        }
    }
}

impl VectorIndex {
    fn new(dims: usize) -> Self {
        VectorIndex {
            graph: Hnsw::new(dims),
            ids: Vec::new(),
            kind_of: Vec::new(),
            kinds: Vec::new(),
            dead: Vec::new(),
            dead_count: 0,
            slot_of: HashMap::new(),
            odd: HashSet::new(),
            pending: HashSet::new(),
            count: 0,
            sum: 0,
            seen_max: 0,
            building: false,
            checked: None,
        }
    }

    /// True when the copy's fingerprint is the store's `count`, `sum`.
    fn matches(&self, count: i64, sum: i64) -> bool {
        (self.count, self.sum) == (count, sum)
    }

    /// Adds node `id`'s vector (replacing one it had).
    fn add(&mut self, id: i64, kind: &str, bytes: &[u8]) {
        self.drop_node(id);
        self.count += 1;
        self.sum = self.sum.wrapping_add(id);
        self.seen_max = self.seen_max.max(id);
        if bytes.len() != self.graph.dims() * 4 {
            self.odd.insert(id);
            return;
        }
        let vector: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let kind = match self.kinds.iter().position(|k| k == kind) {
            Some(n) => n as u16,
            None => {
                self.kinds.push(kind.to_owned());
                (self.kinds.len() - 1) as u16
            }
        };
        let slot = self.graph.push(&vector);
        self.ids.push(id);
        self.kind_of.push(kind);
        self.dead.push(false);
        self.slot_of.insert(id, slot);
    }

    /// Takes node `id`'s vector out of the copy, if it holds one.
    fn drop_node(&mut self, id: i64) {
        let held = if let Some(slot) = self.slot_of.remove(&id) {
            self.dead[slot as usize] = true;
            self.dead_count += 1;
            true
        } else {
            self.odd.remove(&id)
        };
        if held {
            self.count -= 1;
            self.sum = self.sum.wrapping_sub(id);
        }
    }

    /// The copy without its dropped slots, to be linked again.
    fn compact(&mut self) {
        let mut fresh = VectorIndex::new(self.graph.dims());
        for slot in 0..self.ids.len() {
            if !self.dead[slot] {
                let bytes = vector_bytes(self.graph.vector(slot as u32));
                let kind = self.kinds[self.kind_of[slot] as usize].clone();
                fresh.add(self.ids[slot], &kind, &bytes);
            }
        }
        fresh.odd = std::mem::take(&mut self.odd);
        fresh.pending = std::mem::take(&mut self.pending);
        fresh.count = self.count;
        fresh.sum = self.sum;
        fresh.seen_max = self.seen_max;
        fresh.building = self.building;
        fresh.checked = self.checked;
        *self = fresh;
    }
}

/// Reads and adds to `index` the vectors with ids past the highest it holds and those of its
/// pending nodes. The store is read with no lock held; what was read is added under the
/// index's own.
fn catch_up<E>(
    db: &mut dyn Db<Error = E>,
    index: &Shared,
    owner: &str,
    model: &str,
) -> Result<(), E> {
    let (after, pending) = {
        let copy = index.read();
        (copy.seen_max, copy.pending.clone())
    };
    let (rows, missing) = read_rows(db, owner, model, after, &pending)?;
    let mut copy = index.write();
    copy.pending
        .retain(|id| missing.contains(id) || !pending.contains(id));
    for (id, kind, bytes) in rows {
        copy.add(id, &kind, &bytes);
    }
    Ok(())
}

/// `owner`'s vectors by `model` with ids past `after`, and those of the nodes `pending`; and
/// which of `pending` have none.
fn read_rows<E>(
    db: &mut dyn Db<Error = E>,
    owner: &str,
    model: &str,
    after: i64,
    pending: &HashSet<i64>,
) -> Result<(Rows, HashSet<i64>), E> {
    let params = [Param::Text(owner), Param::Text(model), Param::Int(after)];
    let mut rows: Rows = Vec::new();
    db.each(
        Query {
            sql: VECTORS_AFTER,
            params: &params,
        },
        &mut |row| {
            rows.push((row.int(0)?, row.text(1)?, row.bytes(2)?.to_vec()));
            Ok(true)
        },
    )?;
    let mut missing = HashSet::new();
    for &id in pending {
        let params = [Param::Text(owner), Param::Text(model), Param::Int(id)];
        let row = db.row(VECTOR_OF, &params, |row| {
            Ok((row.int(0)?, row.text(1)?, row.bytes(2)?.to_vec()))
        })?;
        match row {
            Some(row) if row.0 > after => {}
            Some(row) => rows.push(row),
            None => {
                missing.insert(id);
            }
        }
    }
    Ok((rows, missing))
}

/// The store's highest id of `owner`'s vectors by `model`.
fn highest<E>(db: &mut dyn Db<Error = E>, owner: &str, model: &str) -> Result<i64, E> {
    let params = [Param::Text(owner), Param::Text(model)];
    Ok(db
        .row(HIGHEST, &params, |row| row.opt_int(0))?
        .flatten()
        .unwrap_or(0))
}

/// The store's count and id sum of `owner`'s vectors by `model`.
fn fingerprint<E>(db: &mut dyn Db<Error = E>, owner: &str, model: &str) -> Result<(i64, i64), E> {
    let params = [Param::Text(owner), Param::Text(model)];
    let found = db.row(FINGERPRINT, &params, |row| Ok((row.int(0)?, row.int(1)?)))?;
    Ok(found.unwrap_or((0, 0)))
}
