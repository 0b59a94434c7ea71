//! `Quotas`: each user's turns and model tokens per UTC day (issue 25, "Quotas per user"). A
//! user's own limits, set by an admin, win over the server's defaults (`--daily-turns`,
//! `--daily-tokens`); principals that are no user account (a configured token, the local user)
//! are counted but never limited. An account's turn is counted as its worker starts it
//! ([`Quotas::start_turn`]), and refused there, before the model is asked, once a limit is
//! reached; anyone else's is counted by the journal's batch that writes it, at no cost of its
//! own; the tokens are counted as the answer is written (the journal's batch). Both counts
//! are the store's, so instances sharing a database count together. The server's `reaper`
//! thread has days older than `USAGE_KEPT_DAYS` deleted, once a day ([`Quotas::prune`]).
//!
//! Depends on: `common::auth`, `common::config`, `common::error`, `store::usage`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::auth::Principal;
use crate::common::config::Config;
use crate::common::error::Result;
use crate::store::{
    DAY_SECONDS, DayUsage, LimitChange, Limits, Reached, USAGE_KEPT_DAYS, UsageStore, day_of,
};

/// Daily quotas, over the store. Cheap to share behind an `Arc`.
pub struct Quotas {
    store: Arc<dyn UsageStore>,
    defaults: Limits,
    /// The UTC day old use was last deleted on ([`Quotas::prune`]); `i64::MIN` before that.
    pruned_on: AtomicI64,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

/// A principal's use today and the limits that apply to it, as `GET /api/usage` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Today {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Its use so far.
    pub usage: DayUsage,
    /// The limits that apply (`None`: no limit).
    pub limits: Limits,
}

/// Unix seconds now.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// UTC day `day` (days since 1970-01-01) as `YYYY-MM-DD`.
pub fn day_name(day: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(day.saturating_mul(DAY_SECONDS))
        .map_or_else(|_| day.to_string(), |at| at.date().to_string())
}

/// The words a refused turn's `error` `quota` carries: the limit, the use, and when the day
/// ends (`now`, Unix seconds).
fn refusal(reached: Reached, usage: DayUsage, limits: Limits, now: i64) -> String {
    let (used, limit, what) = match reached {
        Reached::Turns => (usage.turns, limits.turns, "turns"),
        Reached::Tokens => (usage.tokens, limits.tokens, "model tokens"),
    };
    let day = day_of(now);
    let left = (day + 1) * DAY_SECONDS - now;
    format!(
        "daily quota reached: {used} of your {} {what} a day are used; it resets at 00:00 UTC \
         ({} 00:00 UTC, in {}h {:02}m)",
        limit.unwrap_or_default(),
        day_name(day + 1),
        left / 3600,
        left % 3600 / 60,
    )
}

impl Quotas {
    /// Quotas kept in `store`, with `config`'s defaults (`0`: none).
    pub fn new(store: Arc<dyn UsageStore>, config: &Config) -> Self {
        let limit = |n: u64| Some(n).filter(|n| *n > 0);
        Quotas {
            store,
            defaults: Limits {
                turns: limit(config.daily_turns),
                tokens: limit(config.daily_tokens),
            },
            pruned_on: AtomicI64::new(i64::MIN),
        }
    }

    /// Deletes the daily use of the days before the last [`USAGE_KEPT_DAYS`], the first time
    /// it is called on each UTC day (later calls that day return at once); answers how many
    /// rows went. A store that fails is asked again on the next call.
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn prune(&self) -> Result<u64> {
        let today = day_of(now());
        if self.pruned_on.swap(today, Ordering::Relaxed) == today {
            return Ok(0);
        }
        self.store
            .prune_usage(today - USAGE_KEPT_DAYS + 1)
            .inspect_err(|_| self.pruned_on.store(i64::MIN, Ordering::Relaxed))
    }

    /// The server's default limits (`--daily-turns`, `--daily-tokens`).
    pub fn defaults(&self) -> Limits {
        self.defaults
    }

    /// Counts a turn of `principal` starting now. `Err` holds what to tell the user when a
    /// daily limit is reached: the turn was not counted and must not run. A store that cannot
    /// count lets the turn run (it is logged): the turn will meet the store's failure itself.
    pub fn start_turn(&self, principal: &Principal) -> std::result::Result<(), String> {
        // No account, no quota: the journal's batch counts the turn as it writes it, and a
        // turn pays no store write of its own.
        let Some(user) = principal.user_id() else {
            return Ok(());
        };
        let now = now();
        let count =
            self.store
                .count_turn(principal.as_str(), Some(user), self.defaults, day_of(now));
        match count {
            Ok(count) if count.counted => Ok(()),
            Ok(count) => {
                let reached = count.usage.reached(count.limits).unwrap_or(Reached::Turns);
                log::info!(
                    "quota: a turn of {} refused: {reached:?} a day reached",
                    principal.name()
                );
                Err(refusal(reached, count.usage, count.limits, now))
            }
            Err(e) => {
                log::error!("quota: a turn of {} not counted: {e}", principal.name());
                Ok(())
            }
        }
    }

    /// `principal`'s use today and the limits that apply to it.
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn today(&self, principal: &Principal) -> Result<Today> {
        let day = day_of(now());
        let user = principal.user_id();
        let usage = self.store.usage(principal.as_str(), user, day)?;
        Ok(Today {
            day: day_name(day),
            usage: usage.today,
            limits: match user {
                Some(_) => usage.own.over(self.defaults),
                None => Limits::NONE,
            },
        })
    }

    /// Changes the own limits of the user named `name`; false when there is none.
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn set_limits(&self, name: &str, change: LimitChange) -> Result<bool> {
        self.store.set_limits(name, change)
    }

    /// `principal`'s use today and the tokens of all its conversations, ever.
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn used(&self, principal: &Principal) -> Result<(DayUsage, u64)> {
        let usage = self
            .store
            .usage(principal.as_str(), principal.user_id(), day_of(now()))?;
        Ok((usage.today, usage.tokens_used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_use_is_pruned_on_the_first_call_of_a_day_only() {
        let store = Arc::new(crate::store::SqliteStore::in_memory().unwrap());
        let quotas = Quotas::new(store.clone(), &Config::default());
        let oldest_kept = day_of(now()) - USAGE_KEPT_DAYS + 1;
        for day in [oldest_kept - 1, oldest_kept] {
            store.count_turn("token", None, Limits::NONE, day).unwrap();
        }
        assert_eq!(quotas.prune().unwrap(), 1);
        let kept = store.usage("token", None, oldest_kept).unwrap().today.turns;
        assert_eq!(kept, 1);
        store
            .count_turn("token", None, Limits::NONE, oldest_kept - 1)
            .unwrap();
        assert_eq!(quotas.prune().unwrap(), 0, "once a day");
    }

    #[test]
    fn a_refusal_names_the_limit_and_when_it_resets() {
        assert_eq!(day_name(0), "1970-01-01");
        assert_eq!(day_name(20_429), "2025-12-07");
        let limits = Limits {
            turns: Some(2),
            tokens: Some(1000),
        };
        let usage = DayUsage {
            turns: 2,
            tokens: 10,
        };
        // 22:30 UTC on 2025-12-07.
        let now = 20_429 * DAY_SECONDS + 22 * 3600 + 30 * 60;
        assert_eq!(
            refusal(Reached::Turns, usage, limits, now),
            "daily quota reached: 2 of your 2 turns a day are used; it resets at 00:00 UTC \
             (2025-12-08 00:00 UTC, in 1h 30m)"
        );
        let usage = DayUsage {
            turns: 1,
            tokens: 1200,
        };
        assert!(
            refusal(Reached::Tokens, usage, limits, now)
                .starts_with("daily quota reached: 1200 of your 1000 model tokens a day")
        );
    }
}
