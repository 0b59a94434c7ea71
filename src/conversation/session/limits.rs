//! `TurnLimits`: how many turns may run at once, on the whole server and for one principal.
//! A turn holds a [`TurnPermit`] from the moment it opens until its worker thread has finished
//! with it, cancelled turns winding down included, so the caps bound threads, not just
//! sessions with a turn.
//!
//! Depends on: `common::auth`.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::common::auth::Principal;

/// The caps and the counts they hold against.
#[derive(Debug)]
pub struct TurnLimits {
    max_total: usize,
    max_per_principal: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_principal: HashMap<Principal, usize>,
}

/// Why a turn may not start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// The server runs `--max-running-turns` turns.
    Server,
    /// This principal runs `--max-running-turns-per-principal` turns.
    Principal,
}

impl Full {
    /// What to tell the user.
    pub fn message(self) -> &'static str {
        match self {
            Full::Server => "the server is running as many turns as it may; try again shortly",
            Full::Principal => {
                "you are running as many turns at once as you may; wait for one to finish"
            }
        }
    }
}

/// One running turn's place under the caps; given back when dropped.
#[derive(Debug)]
pub struct TurnPermit {
    limits: Arc<TurnLimits>,
    principal: Principal,
}

impl TurnLimits {
    /// Caps of `max_total` turns in all and `max_per_principal` for any one principal (each
    /// at least 1).
    pub fn new(max_total: usize, max_per_principal: usize) -> Arc<Self> {
        Arc::new(TurnLimits {
            max_total: max_total.max(1),
            max_per_principal: max_per_principal.max(1),
            counts: Mutex::default(),
        })
    }

    /// A place for one more turn of `principal`.
    ///
    /// # Errors
    ///
    /// [`Full`] when a cap is reached.
    pub fn acquire(self: &Arc<Self>, principal: &Principal) -> Result<TurnPermit, Full> {
        let mut counts = self.counts.lock();
        if counts.total >= self.max_total {
            return Err(Full::Server);
        }
        let mine = counts.per_principal.entry(principal.clone()).or_default();
        if *mine >= self.max_per_principal {
            return Err(Full::Principal);
        }
        *mine += 1;
        counts.total += 1;
        Ok(TurnPermit {
            limits: self.clone(),
            principal: principal.clone(),
        })
    }

    /// Turns running now.
    pub fn running(&self) -> usize {
        self.counts.lock().total
    }
}

impl Drop for TurnPermit {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(mine) = counts.per_principal.get_mut(&self.principal) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                counts.per_principal.remove(&self.principal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_the_server_and_each_principal_and_gives_places_back() {
        let limits = TurnLimits::new(3, 2);
        let (a, b) = (
            Principal::from_stored("a".into()),
            Principal::from_stored("b".into()),
        );
        let a1 = limits.acquire(&a).unwrap();
        let _a2 = limits.acquire(&a).unwrap();
        assert_eq!(limits.acquire(&a).unwrap_err(), Full::Principal);
        let _b1 = limits.acquire(&b).unwrap();
        assert_eq!(limits.acquire(&b).unwrap_err(), Full::Server);
        assert_eq!(limits.running(), 3);
        drop(a1);
        assert_eq!(limits.running(), 2);
        assert!(limits.acquire(&b).is_ok());
    }
}
