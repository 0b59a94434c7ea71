//! [`UsageStore`] for every [`Backend`]: a turn checked against the day's limits and counted
//! in one upsert (its `WHERE` refuses it once a limit is reached, atomically on either store),
//! the day's use read back, users' own limits changed, old days' use deleted; and [`add_tokens`], which the journal's
//! batch runs for the tokens of the turns it closes, per owner in owner order (so that two
//! instances' batches never wait on each other's rows).
//!
//! Depends on: `common::error`, `store::plan`, `store::usage`.

use std::collections::BTreeMap;

use super::{Backend, Db, Param, Row, View, Write, big, small};
use crate::common::error::Result;
use crate::store::usage::{DayUsage, LimitChange, Limits, TurnCount, UsageStore, UsageSummary};

const OWN_LIMITS: &str = "SELECT daily_turns, daily_tokens FROM users WHERE id = ?1";
const COUNT_TURN: &str = "INSERT INTO daily_usage (owner, day, turns, tokens) \
     VALUES (?1, ?2, 1, 0) ON CONFLICT (owner, day) DO UPDATE \
     SET turns = daily_usage.turns + 1 \
     WHERE daily_usage.turns < ?3 AND daily_usage.tokens < ?4 RETURNING turns, tokens";
const DAY_USAGE: &str = "SELECT turns, tokens FROM daily_usage WHERE owner = ?1 AND day = ?2";
const USAGE: &str = "SELECT \
     (SELECT turns FROM daily_usage WHERE owner = ?1 AND day = ?2), \
     (SELECT tokens FROM daily_usage WHERE owner = ?1 AND day = ?2), \
     (SELECT daily_turns FROM users WHERE id = ?3), \
     (SELECT daily_tokens FROM users WHERE id = ?3), \
     (SELECT CAST(coalesce(sum(prompt_tokens + completion_tokens), 0) AS bigint) \
      FROM sessions WHERE owner = ?1)";
const SET_LIMITS: &str = "UPDATE users SET \
     daily_turns = CASE WHEN ?2 THEN ?3 ELSE daily_turns END, \
     daily_tokens = CASE WHEN ?4 THEN ?5 ELSE daily_tokens END \
     WHERE name = ?1";
const PRUNE_USAGE: &str = "DELETE FROM daily_usage WHERE day < ?1";
const ADD_USE: &str = "INSERT INTO daily_usage (owner, day, turns, tokens) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (owner, day) DO UPDATE \
     SET turns = daily_usage.turns + excluded.turns, tokens = daily_usage.tokens + excluded.tokens";

/// A limit as the count's `WHERE` compares it: none is the largest integer.
fn bound(limit: Option<u64>) -> i64 {
    limit.map_or(i64::MAX, big)
}

/// A stored limit: NULL is none, a negative one (never written) is none too.
fn stored(limit: Option<i64>) -> Option<u64> {
    limit.filter(|n| *n >= 0).map(small)
}

impl<B: Backend> UsageStore for B {
    fn count_turn(
        &self,
        owner: &str,
        user: Option<i64>,
        defaults: Limits,
        day: i64,
    ) -> Result<TurnCount> {
        self.write("count a turn", Write::Insert, &mut |db| {
            let limits = match user {
                Some(id) => db
                    .row(OWN_LIMITS, &[Param::Int(id)], |row| {
                        Ok(Limits {
                            turns: stored(row.opt_int(0)?),
                            tokens: stored(row.opt_int(1)?),
                        })
                    })?
                    .unwrap_or_default()
                    .over(defaults),
                None => Limits::NONE,
            };
            let read = |row: &dyn Row<Error = B::Error>| {
                Ok(DayUsage {
                    turns: small(row.int(0)?),
                    tokens: small(row.int(1)?),
                })
            };
            let params = [
                Param::Text(owner),
                Param::Int(day),
                Param::Int(bound(limits.turns)),
                Param::Int(bound(limits.tokens)),
            ];
            if let Some(usage) = db.row(COUNT_TURN, &params, read)? {
                return Ok(TurnCount {
                    counted: true,
                    usage,
                    limits,
                });
            }
            let usage = db.row(DAY_USAGE, &params[..2], read)?;
            Ok(TurnCount {
                counted: false,
                usage: usage.unwrap_or_default(),
                limits,
            })
        })
    }

    fn usage(&self, owner: &str, user: Option<i64>, day: i64) -> Result<UsageSummary> {
        let usage = self.read("read the day's use", View::Snapshot, &mut |db| {
            db.row(
                USAGE,
                &[Param::Text(owner), Param::Int(day), Param::OptInt(user)],
                |row| {
                    Ok(UsageSummary {
                        today: DayUsage {
                            turns: small(row.int(0)?),
                            tokens: small(row.int(1)?),
                        },
                        own: Limits {
                            turns: stored(row.opt_int(2)?),
                            tokens: stored(row.opt_int(3)?),
                        },
                        tokens_used: small(row.int(4)?),
                    })
                },
            )
        })?;
        Ok(usage.unwrap_or_default())
    }

    fn set_limits(&self, name: &str, change: LimitChange) -> Result<bool> {
        let set = |limit: Option<Option<u64>>| {
            (
                Param::Flag(limit.is_some()),
                Param::OptInt(limit.flatten().map(big)),
            )
        };
        let (turns_set, turns) = set(change.turns);
        let (tokens_set, tokens) = set(change.tokens);
        self.write("set a user's limits", Write::Replace, &mut |db| {
            let params = [
                Param::Text(name),
                turns_set.clone(),
                turns.clone(),
                tokens_set.clone(),
                tokens.clone(),
            ];
            Ok(db.run(SET_LIMITS, &params)? > 0)
        })
    }

    fn prune_usage(&self, day: i64) -> Result<u64> {
        self.write("prune old daily use", Write::Delete, &mut |db| {
            db.run(PRUNE_USAGE, &[Param::Int(day)])
        })
    }
}

/// Whether `owner`'s turns are counted as they start ([`count_turn`](UsageStore::count_turn),
/// which enforces a quota): a user account's (`user:<id>`). Everyone else's are counted by the
/// journal's batch that opens them, with no write of their own.
pub(super) fn counted_at_start(owner: &str) -> bool {
    owner.starts_with("user:")
}

/// Adds what each owner used (`used`: owner to the turns the batch opened and the tokens its
/// answers took) to their use on `day`, in the batch's transaction, one owner after another in
/// order.
///
/// # Errors
///
/// The database's.
pub(super) fn add_use<E>(
    db: &mut dyn Db<Error = E>,
    used: &BTreeMap<String, DayUsage>,
    day: i64,
) -> Result<(), E> {
    for (owner, used) in used
        .iter()
        .filter(|(_, used)| **used != DayUsage::default())
    {
        db.run(
            ADD_USE,
            &[
                Param::Text(owner),
                Param::Int(day),
                Param::Int(big(used.turns)),
                Param::Int(big(used.tokens)),
            ],
        )?;
    }
    Ok(())
}
