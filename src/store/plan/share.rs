//! [`SearchShare`]: how many full-text searches each principal runs at once.
//!
//! A store has few connections to read with (SQLite's four readers, PostgreSQL's pool), and a
//! search may hold one for its whole budget. Without a share, one principal that sends many
//! lookups at once (eight sockets of long messages over a large graph) would hold every
//! connection and every core, and another principal's turn would wait behind them. So each
//! principal's searches take at most half of the store's read connections, and of the
//! machine's cores (a search keeps one busy while it runs); the next one waits for one of them
//! to end, at most for the search budget, and then finds nothing, as a search out of time
//! does. Waiting threads hold no connection and use no CPU. Measured with
//! `examples/ownerbench.rs` on two cores: a share of two searches left another principal's
//! turns a p99 of 38 to 58 ms under the attack, a share of one 10 to 26 ms.
//!
//! Depends on nothing in the crate.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Full-text searches running, per principal, and how many one principal may run at once.
///
/// The lock guards the counts only, and is held to read or change one; a search never runs
/// under it.
#[derive(Debug)]
pub struct SearchShare {
    running: Mutex<HashMap<String, usize>>,
    /// Signalled whenever a search ends.
    ended: Condvar,
    per_principal: usize,
}

/// One principal's search while it runs: ending it (dropping it) lets the next one start.
#[derive(Debug)]
pub struct SearchTurn<'a> {
    share: &'a SearchShare,
    owner: String,
}

impl SearchShare {
    /// A share for a store with `connections` read connections on this machine: each
    /// principal may run half of them, and no more than half the machine's cores (at least
    /// one), since a search keeps a core busy for as long as it runs.
    pub fn new(connections: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::with(connections.min(cores))
    }

    /// A share of half of `parallel` searches per principal (at least one).
    fn with(parallel: usize) -> Self {
        SearchShare {
            running: Mutex::new(HashMap::new()),
            ended: Condvar::new(),
            per_principal: (parallel / 2).max(1),
        }
    }

    /// Waits until `owner` runs fewer searches than its share, at most until `deadline`, and
    /// counts the search in; `None` when the deadline came first.
    pub fn enter(&self, owner: &str, deadline: Instant) -> Option<SearchTurn<'_>> {
        let mut running = self.running.lock();
        loop {
            let count = running.get(owner).copied().unwrap_or(0);
            if count < self.per_principal {
                running.insert(owner.to_owned(), count + 1);
                return Some(SearchTurn {
                    share: self,
                    owner: owner.to_owned(),
                });
            }
            if self.ended.wait_until(&mut running, deadline).timed_out() {
                return None;
            }
        }
    }
}

impl Drop for SearchTurn<'_> {
    fn drop(&mut self) {
        let mut running = self.share.running.lock();
        match running.get_mut(&self.owner) {
            Some(count) if *count > 1 => *count -= 1,
            _ => {
                running.remove(&self.owner);
            }
        }
        drop(running);
        self.share.ended.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_principal_runs_its_share_and_others_are_not_held_up() {
        // Four at once: two searches per principal.
        let share = SearchShare::with(4);
        let soon = || Instant::now() + Duration::from_millis(50);
        let first = share.enter("a", soon()).unwrap();
        let _second = share.enter("a", soon()).unwrap();
        // A third of "a"'s waits, and gives up at its deadline.
        let started = Instant::now();
        assert!(share.enter("a", soon()).is_none());
        assert!(started.elapsed() >= Duration::from_millis(40));
        // Another principal starts at once.
        let _other = share.enter("b", Instant::now()).unwrap();
        // A search that ends lets a waiting one in.
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| {
                share
                    .enter("a", Instant::now() + Duration::from_secs(10))
                    .is_some()
            });
            drop(first);
            assert!(waiting.join().unwrap());
        });
        // One connection: one search, never none.
        let single = SearchShare::new(1);
        assert_eq!(single.per_principal, 1);
        let _only = single.enter("a", soon()).unwrap();
        assert!(single.enter("a", Instant::now()).is_none());
    }
}
