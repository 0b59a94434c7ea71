//! `TurnLimits`: how many turns may run at once, on the whole server and for one principal.
//! A turn holds a [`TurnPermit`] from the moment it opens until its worker thread has finished
//! with it, cancelled turns winding down included, so the caps bound threads, not just
//! sessions with a turn.
//!
//! The server's cap is shared fairly: its last places ([`TurnLimits::reserved`], an eighth of
//! the cap) are kept for principals that run no turn. A few principals that start turns as
//! fast as they may fill the rest, never the whole, so a newcomer's turn still starts: each
//! principal running nothing can take one of the kept places, and those that run turns
//! already wait for a place below them.
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
    /// The last places of `max_total`, kept for principals that run no turn.
    reserved: usize,
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
    /// The server is nearly full, and its last places are kept for principals that run no
    /// turn; this one runs some.
    Share,
}

impl Full {
    /// What to tell the user.
    pub fn message(self) -> &'static str {
        match self {
            Full::Server => "the server is running as many turns as it may; try again shortly",
            Full::Principal => {
                "you are running as many turns at once as you may; wait for one to finish"
            }
            Full::Share => {
                "the server is nearly full and keeps its last places for people with no turn \
                 running; wait for one of yours to finish"
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
        let max_total = max_total.max(1);
        Arc::new(TurnLimits {
            max_total,
            max_per_principal: max_per_principal.max(1),
            reserved: Self::reserved(max_total),
            counts: Mutex::default(),
        })
    }

    /// How many of `max_total` places are kept for principals that run no turn: an eighth,
    /// and at least one once there are two places.
    pub fn reserved(max_total: usize) -> usize {
        if max_total < 2 {
            0
        } else {
            (max_total / 8).max(1)
        }
    }

    /// A place for one more turn of `principal`.
    ///
    /// # Errors
    ///
    /// [`Full`] when a cap is reached, or when only the places kept for principals that run
    /// no turn are left and `principal` runs one.
    pub fn acquire(self: &Arc<Self>, principal: &Principal) -> Result<TurnPermit, Full> {
        let mut counts = self.counts.lock();
        if counts.total >= self.max_total {
            return Err(Full::Server);
        }
        let open = self.max_total - self.reserved;
        let total = counts.total;
        let mine = counts.per_principal.entry(principal.clone()).or_default();
        if *mine >= self.max_per_principal {
            return Err(Full::Principal);
        }
        if *mine > 0 && total >= open {
            return Err(Full::Share);
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

    fn principal(name: &str) -> Principal {
        Principal::from_stored(name.into())
    }

    #[test]
    fn caps_the_server_and_each_principal_and_gives_places_back() {
        // Three places, one kept for a principal running nothing.
        let limits = TurnLimits::new(3, 2);
        let (a, b, c) = (principal("a"), principal("b"), principal("c"));
        let a1 = limits.acquire(&a).unwrap();
        let _a2 = limits.acquire(&a).unwrap();
        assert_eq!(limits.acquire(&a).unwrap_err(), Full::Principal);
        let _b1 = limits.acquire(&b).unwrap();
        assert_eq!(limits.acquire(&c).unwrap_err(), Full::Server);
        assert_eq!(limits.running(), 3);
        drop(a1);
        assert_eq!(limits.running(), 2);
        assert!(limits.acquire(&c).is_ok());
    }

    #[test]
    fn the_last_places_are_kept_for_principals_running_nothing() {
        // Sixteen places, two kept; each principal may run up to sixteen.
        let limits = TurnLimits::new(16, 16);
        assert_eq!(TurnLimits::reserved(16), 2);
        let attackers: Vec<Principal> = (0..4).map(|i| principal(&format!("a{i}"))).collect();
        let mut held = Vec::new();
        for attacker in attackers.iter().cycle().take(64) {
            if let Ok(permit) = limits.acquire(attacker) {
                held.push(permit);
            }
        }
        assert_eq!(held.len(), 14, "the attackers took the kept places");
        assert_eq!(limits.acquire(&attackers[0]).unwrap_err(), Full::Share);
        // Two newcomers each get one of the kept places; their second turn waits.
        let (b, c) = (principal("b"), principal("c"));
        let b1 = limits.acquire(&b).unwrap();
        assert_eq!(limits.acquire(&b).unwrap_err(), Full::Share);
        let c1 = limits.acquire(&c).unwrap();
        assert_eq!(limits.acquire(&principal("d")).unwrap_err(), Full::Server);
        // A place given back below the kept ones is anyone's again.
        drop((b1, c1, held.pop()));
        assert_eq!(limits.running(), 13);
        held.push(limits.acquire(&attackers[1]).unwrap());
        assert_eq!(limits.acquire(&attackers[1]).unwrap_err(), Full::Share);
        // Small caps: one place keeps nothing; two keep one.
        let one = TurnLimits::new(1, 1);
        let _only = one.acquire(&b).unwrap();
        let two = TurnLimits::new(2, 2);
        let _first = two.acquire(&b).unwrap();
        assert_eq!(two.acquire(&b).unwrap_err(), Full::Share);
        assert!(two.acquire(&c).is_ok());
    }
}
