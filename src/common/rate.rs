//! `Bucket`: a token bucket, for the rates the server allows (client frames per connection,
//! new conversations per principal).
//!
//! Depends on: `common::config`.

use std::time::Instant;

use crate::common::config::RateLimit;

/// A token bucket: full at start, refilled at `limit.per_second`, holding `limit.burst` at most.
#[derive(Debug)]
pub struct Bucket {
    limit: RateLimit,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> Self {
        Bucket {
            limit,
            tokens: limit.burst,
            refilled: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self) -> bool {
        if self.ready() {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// True when a token is there to take (none is taken): for limits that charge only what
    /// fails, such as sign-ins.
    pub fn ready(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.limit.per_second;
        self.tokens = (self.tokens + earned).min(self.limit.burst);
        self.refilled = now;
        self.tokens >= 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_refuses() {
        let mut bucket = Bucket::new(RateLimit {
            per_second: 0.001,
            burst: 3.0,
        });
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take());
    }
}
