//! Daily use as the store keeps it: per principal and per UTC day, the turns started and the
//! model tokens (prompt and completion, as each closing `message`'s `usage` says) their answers
//! took, and the daily limits a user account may have of its own. A turn is counted as it
//! starts ([`UsageStore::count_turn`], refused there once a limit is reached), its tokens as
//! its closing `message` is written (the journal's batch, `plan/batch.rs`). Both live in the
//! store, so that instances sharing a PostgreSQL database count together.
//!
//! Depends on: `common::error`.

use crate::common::error::Result;

/// Seconds in a day: a day is `unix_seconds / DAY_SECONDS`, counted in UTC.
pub const DAY_SECONDS: i64 = 86_400;

/// Days of daily use the store keeps, today included: older days' rows are deleted
/// ([`UsageStore::prune_usage`], once a day). Nothing reads them: a limit looks at its own
/// day alone, and the tokens a principal used ever are summed from its conversations.
pub const USAGE_KEPT_DAYS: i64 = 400;

/// The UTC day (days since 1970-01-01) that Unix second `unix` falls in.
pub fn day_of(unix: i64) -> i64 {
    unix.div_euclid(DAY_SECONDS)
}

/// Daily limits: turns and model tokens a day. `None` is no limit, or, for a user's own
/// setting, "the server's default".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Turns a day.
    pub turns: Option<u64>,
    /// Model tokens (prompt and completion) a day.
    pub tokens: Option<u64>,
}

impl Limits {
    /// No limit at all.
    pub const NONE: Limits = Limits {
        turns: None,
        tokens: None,
    };

    /// The limits that apply to a user whose own setting is `self`, on a server whose defaults
    /// are `defaults`: each of the user's own that is set wins over the default, and `0` is no
    /// limit (in a user's setting as in a default).
    pub fn over(self, defaults: Limits) -> Limits {
        let pick = |own: Option<u64>, default: Option<u64>| own.or(default).filter(|n| *n > 0);
        Limits {
            turns: pick(self.turns, defaults.turns),
            tokens: pick(self.tokens, defaults.tokens),
        }
    }
}

/// A change to a user's own limits: for each, `None` keeps it, `Some(None)` clears it back to
/// the default, `Some(Some(n))` sets it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitChange {
    /// Turns a day.
    pub turns: Option<Option<u64>>,
    /// Model tokens a day.
    pub tokens: Option<Option<u64>>,
}

/// One principal's use on one day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DayUsage {
    /// Turns started (those a limit refused are not counted).
    pub turns: u64,
    /// Model tokens the answers took, prompt and completion.
    pub tokens: u64,
}

impl DayUsage {
    /// The limit of `limits` this use has reached, if any: turns first.
    pub fn reached(self, limits: Limits) -> Option<Reached> {
        if limits.turns.is_some_and(|limit| self.turns >= limit) {
            Some(Reached::Turns)
        } else if limits.tokens.is_some_and(|limit| self.tokens >= limit) {
            Some(Reached::Tokens)
        } else {
            None
        }
    }
}

/// Which daily limit was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reached {
    /// Turns a day.
    Turns,
    /// Model tokens a day.
    Tokens,
}

/// What [`UsageStore::count_turn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnCount {
    /// True when the turn was counted; false when a limit was reached and it was not.
    pub counted: bool,
    /// The day's use, this turn included when it was counted.
    pub usage: DayUsage,
    /// The limits that applied.
    pub limits: Limits,
}

/// A principal's use, as `GET /api/usage` and the admin's list show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageSummary {
    /// The day's use.
    pub today: DayUsage,
    /// The user's own limits (`None` each: the default); none for a principal that is no user.
    pub own: Limits,
    /// Model tokens of every conversation the principal has, ever.
    pub tokens_used: u64,
}

/// Daily use and users' limits. Implemented once for both stores (`plan/usage.rs`).
pub trait UsageStore: Send + Sync {
    /// Counts a turn of `owner` on `day`, unless the day's use has reached the limits that
    /// apply: user `user`'s own over `defaults`, or none for a principal that is no user
    /// (`user` is `None`). Checked and counted in one statement, so that turns started at once
    /// (on any instance) never pass a limit together.
    ///
    /// # Errors
    ///
    /// The store's.
    fn count_turn(
        &self,
        owner: &str,
        user: Option<i64>,
        defaults: Limits,
        day: i64,
    ) -> Result<TurnCount>;

    /// `owner`'s use on `day`, user `user`'s own limits, and the tokens of all its
    /// conversations.
    ///
    /// # Errors
    ///
    /// The store's.
    fn usage(&self, owner: &str, user: Option<i64>, day: i64) -> Result<UsageSummary>;

    /// Changes the own limits of the user named `name`; false when there is none.
    ///
    /// # Errors
    ///
    /// The store's.
    fn set_limits(&self, name: &str, change: LimitChange) -> Result<bool>;

    /// Deletes every principal's use on the days before `day`; answers how many rows went.
    ///
    /// # Errors
    ///
    /// The store's.
    fn prune_usage(&self, day: i64) -> Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_own_limit_wins_over_the_default_and_zero_is_none() {
        let defaults = Limits {
            turns: Some(10),
            tokens: Some(0),
        };
        assert_eq!(
            Limits::NONE.over(defaults),
            Limits {
                turns: Some(10),
                tokens: None
            }
        );
        let own = Limits {
            turns: Some(0),
            tokens: Some(500),
        };
        assert_eq!(
            own.over(defaults),
            Limits {
                turns: None,
                tokens: Some(500)
            }
        );
        let usage = DayUsage {
            turns: 10,
            tokens: 600,
        };
        assert_eq!(
            usage.reached(Limits::NONE.over(defaults)),
            Some(Reached::Turns)
        );
        assert_eq!(usage.reached(own.over(defaults)), Some(Reached::Tokens));
        assert_eq!(usage.reached(Limits::NONE), None);
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_SECONDS - 1), 0);
        assert_eq!(day_of(-1), -1);
    }
}
