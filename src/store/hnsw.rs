//! [`Hnsw`]: a hierarchical navigable small world graph (Malkov and Yashunin, 2016) over unit
//! vectors, scored by their dot product (the cosine similarity). It owns the vectors, in one flat
//! array, and links them in the order they came: slots `0..linked()` are in the graph, the ones
//! after it are appended but not linked yet, and [`Hnsw::search`] reads those one by one, so a
//! search is right at every moment of a build that a caller runs a batch at a time
//! ([`Hnsw::link_next`]). Nothing is removed from the graph: a caller passes a filter that
//! leaves out what it has deleted, and builds a new graph when too much of it is.
//!
//! Depends on: `store`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Neighbours a node keeps on the levels above the bottom one (`M` in the paper).
const NEIGHBOURS: usize = 16;
/// Neighbours a node keeps on the bottom level, where every node is (`M0`, twice `M`).
const BOTTOM_NEIGHBOURS: usize = 2 * NEIGHBOURS;
/// How many candidates an insertion looks at on each level (`efConstruction`).
const EF_CONSTRUCTION: usize = 100;

/// A graph of unit vectors of one dimension; see the module's documentation.
#[derive(Debug, Clone)]
pub struct Hnsw {
    dims: usize,
    /// Every vector, `dims` floats each, slot after slot.
    vectors: Vec<f32>,
    /// Each linked slot's neighbours, per level, bottom first.
    links: Vec<Vec<Vec<u32>>>,
    /// The slot a search starts from: one on the top level.
    entry: Option<u32>,
    /// The state of the generator that draws each node's top level.
    seed: u64,
}

/// A slot and its similarity to what is searched for, ordered by similarity (then by slot, so
/// that the order is total).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(other.1.cmp(&self.1))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The dot product of two vectors of one dimension, summed in eight lanes so that the compiler
/// can use the machine's vector instructions.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..8 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

impl Hnsw {
    /// An empty graph of vectors of `dims` floats.
    pub fn new(dims: usize) -> Self {
        Hnsw {
            dims,
            vectors: Vec::new(),
            links: Vec::new(),
            entry: None,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// The dimension of the vectors.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// How many vectors were appended.
    pub fn len(&self) -> usize {
        self.vectors.len() / self.dims.max(1)
    }

    /// True when no vector was appended.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// How many of the vectors are linked into the graph (the first ones).
    pub fn linked(&self) -> usize {
        self.links.len()
    }

    /// About how many bytes the graph holds: its vectors, and for each linked one a full list
    /// of bottom-level neighbours and the lists' own headers (the levels above add a sixteenth).
    /// Counted without walking the lists, since every search asks.
    pub fn bytes(&self) -> usize {
        self.vectors.len() * 4 + self.links.len() * (BOTTOM_NEIGHBOURS * 4 + 2 * 24)
    }

    /// The vector in `slot`.
    pub fn vector(&self, slot: u32) -> &[f32] {
        let start = slot as usize * self.dims;
        &self.vectors[start..start + self.dims]
    }

    /// Appends `vector` (of [`Hnsw::dims`] floats; it is cut or padded with zeros otherwise)
    /// unlinked, and returns its slot.
    pub fn push(&mut self, vector: &[f32]) -> u32 {
        let slot = self.len() as u32;
        self.vectors
            .extend((0..self.dims).map(|i| vector.get(i).copied().unwrap_or(0.0)));
        slot
    }

    /// Links up to `count` of the unlinked vectors into the graph, oldest first; returns how many
    /// are left unlinked.
    pub fn link_next(&mut self, count: usize) -> usize {
        for _ in 0..count {
            if self.linked() == self.len() {
                break;
            }
            self.link();
        }
        self.len() - self.linked()
    }

    /// The `k` slots most similar to `query` among those `keep` lets through, best first, with
    /// their similarity: the graph searched with `ef` candidates (at least `k`), and every
    /// unlinked slot read.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: &dyn Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        let mut best: Vec<Scored> = Vec::new();
        if self.is_empty() {
            return Vec::new();
        }
        if let Some(entry) = self.entry {
            let top = self.links[entry as usize].len() - 1;
            let mut at = entry;
            for level in (1..=top).rev() {
                at = self.greedy(query, at, level);
            }
            best = self.search_level(query, at, ef.max(k), 0, keep);
        }
        for slot in self.linked()..self.len() {
            let slot = slot as u32;
            if keep(slot) {
                best.push(Scored(dot(query, self.vector(slot)), slot));
            }
        }
        best.sort_unstable_by(|a, b| b.cmp(a));
        best.truncate(k);
        best.into_iter().map(|Scored(s, slot)| (slot, s)).collect()
    }

    /// Links the first unlinked vector into the graph.
    fn link(&mut self) {
        let slot = self.linked() as u32;
        let level = self.draw_level();
        self.links.push(vec![Vec::new(); level + 1]);
        let Some(entry) = self.entry else {
            self.entry = Some(slot);
            return;
        };
        let query = self.vector(slot).to_vec();
        let top = self.links[entry as usize].len() - 1;
        let mut at = entry;
        for l in (level + 1..=top).rev() {
            at = self.greedy(&query, at, l);
        }
        for l in (0..=level.min(top)).rev() {
            let found = self.search_level(&query, at, EF_CONSTRUCTION, l, &|_| true);
            let limit = if l == 0 {
                BOTTOM_NEIGHBOURS
            } else {
                NEIGHBOURS
            };
            let chosen = self.diverse(&found, NEIGHBOURS);
            for &Scored(_, other) in &chosen {
                self.links[slot as usize][l].push(other);
                self.links[other as usize][l].push(slot);
                if self.links[other as usize][l].len() > limit {
                    self.prune(other, l, limit);
                }
            }
            if let Some(first) = found.first() {
                at = first.1;
            }
        }
        if level > top {
            self.entry = Some(slot);
        }
    }

    /// Cuts `slot`'s neighbours on `level` down to `limit`, keeping a diverse set.
    fn prune(&mut self, slot: u32, level: usize, limit: usize) {
        let base = self.vector(slot);
        let mut scored: Vec<Scored> = self.links[slot as usize][level]
            .iter()
            .map(|&other| Scored(dot(base, self.vector(other)), other))
            .collect();
        scored.sort_unstable_by(|a, b| b.cmp(a));
        let kept = self.diverse(&scored, limit);
        self.links[slot as usize][level] = kept.into_iter().map(|Scored(_, s)| s).collect();
    }

    /// At most `limit` of `candidates` (best first), chosen by the paper's heuristic: a candidate
    /// is kept when it is nearer the base than any already kept one is to it, so that the links
    /// reach out in several directions; the nearest of the others fill what is left.
    fn diverse(&self, candidates: &[Scored], limit: usize) -> Vec<Scored> {
        let mut kept: Vec<Scored> = Vec::with_capacity(limit);
        let mut passed: Vec<Scored> = Vec::new();
        for &candidate in candidates {
            if kept.len() == limit {
                break;
            }
            let vector = self.vector(candidate.1);
            let crowded = kept
                .iter()
                .any(|&Scored(_, other)| dot(vector, self.vector(other)) > candidate.0);
            if crowded {
                passed.push(candidate);
            } else {
                kept.push(candidate);
            }
        }
        for candidate in passed {
            if kept.len() == limit {
                break;
            }
            kept.push(candidate);
        }
        kept
    }

    /// The slot on `level` most similar to `query`, walking greedily from `from`.
    fn greedy(&self, query: &[f32], from: u32, level: usize) -> u32 {
        let mut at = Scored(dot(query, self.vector(from)), from);
        loop {
            let mut moved = false;
            for &other in &self.links[at.1 as usize][level] {
                let score = Scored(dot(query, self.vector(other)), other);
                if score > at {
                    at = score;
                    moved = true;
                }
            }
            if !moved {
                return at.1;
            }
        }
    }

    /// The best `ef` slots on `level` that `keep` lets through, best first, found from `from`:
    /// candidates are explored nearest first until the nearest left is worse than the worst of
    /// a full result list. Slots `keep` refuses are walked through but not kept.
    fn search_level(
        &self,
        query: &[f32],
        from: u32,
        ef: usize,
        level: usize,
        keep: &dyn Fn(u32) -> bool,
    ) -> Vec<Scored> {
        let mut visited = vec![0u64; self.linked().div_ceil(64)];
        let mut visit = |slot: u32| {
            let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
            let new = visited[word] & bit == 0;
            visited[word] |= bit;
            new
        };
        visit(from);
        let start = Scored(dot(query, self.vector(from)), from);
        let mut candidates = BinaryHeap::from([start]);
        // The results as a min-heap (by `Reverse`), so the worst is at the top.
        let mut results: BinaryHeap<std::cmp::Reverse<Scored>> = BinaryHeap::new();
        if keep(from) {
            results.push(std::cmp::Reverse(start));
        }
        while let Some(nearest) = candidates.pop() {
            if results.len() >= ef && results.peek().is_some_and(|worst| nearest < worst.0) {
                break;
            }
            for &other in &self.links[nearest.1 as usize][level] {
                if !visit(other) {
                    continue;
                }
                let score = Scored(dot(query, self.vector(other)), other);
                let full = results.len() >= ef;
                if full && results.peek().is_some_and(|worst| score < worst.0) {
                    continue;
                }
                candidates.push(score);
                if keep(other) {
                    results.push(std::cmp::Reverse(score));
                    if results.len() > ef {
                        results.pop();
                    }
                }
            }
        }
        let mut found: Vec<Scored> = results.into_iter().map(|r| r.0).collect();
        found.sort_unstable_by(|a, b| b.cmp(a));
        found
    }

    /// A node's top level: 0 with probability 1 - 1/M, each higher one 1/M as likely as the
    /// one below (an xorshift generator, so that a graph built twice is the same graph).
    fn draw_level(&mut self) -> usize {
        let mut level = 0;
        loop {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            if !self.seed.is_multiple_of(NEIGHBOURS as u64) || level == 16 {
                return level;
            }
            level += 1;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Unit vectors of `dims` floats from a seeded generator, in a few clusters so that the
    /// graph meets the data it is built for (nearby facts), not uniform noise. The store's
    /// tests use them too.
    pub(crate) fn vectors(count: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 10_000) as f32 / 10_000.0 - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..8)
            .map(|_| (0..dims).map(|_| next()).collect())
            .collect();
        (0..count)
            .map(|i| {
                let v: Vec<f32> = centres[i % 8].iter().map(|c| c + next() * 0.8).collect();
                let norm = dot(&v, &v).sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect()
    }

    fn exact(all: &[Vec<f32>], query: &[f32], k: usize, keep: &dyn Fn(u32) -> bool) -> Vec<u32> {
        let mut scored: Vec<Scored> = (0..all.len() as u32)
            .filter(|&s| keep(s))
            .map(|s| Scored(dot(query, &all[s as usize]), s))
            .collect();
        scored.sort_unstable_by(|a, b| b.cmp(a));
        scored.into_iter().take(k).map(|s| s.1).collect()
    }

    #[test]
    fn finds_what_brute_force_finds_while_built_and_after() {
        let all = vectors(3_000, 32, 7);
        let queries = vectors(50, 32, 99);
        let mut graph = Hnsw::new(32);
        for v in &all {
            graph.push(v);
        }
        // Half linked: the unlinked half is read one by one, and the answer is still right.
        graph.link_next(1_500);
        assert_eq!(graph.linked(), 1_500);
        for phase in 0..2 {
            let (mut hits, mut asked) = (0, 0);
            for query in &queries {
                let odd = |slot: u32| slot % 2 == 1;
                let want = exact(&all, query, 10, &odd);
                let got: Vec<u32> = graph
                    .search(query, 10, 64, &odd)
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect();
                assert!(got.iter().all(|s| s % 2 == 1), "a filtered slot came back");
                hits += want.iter().filter(|s| got.contains(s)).count();
                asked += want.len();
            }
            let recall = hits as f64 / asked as f64;
            assert!(recall >= 0.95, "phase {phase}: recall {recall}");
            assert_eq!(graph.link_next(10_000), 0);
        }
    }

    #[test]
    fn an_empty_graph_finds_nothing() {
        let graph = Hnsw::new(4);
        assert!(
            graph
                .search(&[1.0, 0.0, 0.0, 0.0], 5, 10, &|_| true)
                .is_empty()
        );
        assert!(graph.is_empty());
    }
}
