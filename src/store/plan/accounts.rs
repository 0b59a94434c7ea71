//! [`AccountStore`] for every [`Backend`]: users, their sign-ins and their API tokens, each a
//! statement or two, the same text in both dialects. A token's `last_used` is written at most
//! once a minute, so that a busy client does not make every request a write.
//!
//! Depends on: `common::error`, `store::accounts`, `store::plan`, `store::usage`.

use super::{Backend, Param, Row, View, Write, small, unix_now};
use crate::common::error::Result;
use crate::store::accounts::{AccountStore, ApiToken, User, UserSummary};
use crate::store::usage::Limits;

const ADD_USER: &str = "INSERT INTO users (name, password_hash, admin, created_at) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO NOTHING RETURNING id";
const USERS: &str = "SELECT u.id, u.name, u.admin, u.created_at, \
     (SELECT count(*) FROM api_tokens t WHERE t.user_id = u.id), \
     (SELECT max(t.last_used) FROM api_tokens t WHERE t.user_id = u.id), \
     u.daily_turns, u.daily_tokens \
     FROM users u ORDER BY u.name";
const USER_COUNTS: &str = "SELECT count(*), count(*) FILTER (WHERE admin) FROM users";
const USER_BY_NAME: &str =
    "SELECT id, name, admin, created_at, password_hash FROM users WHERE name = ?1";
const USER_ID: &str = "SELECT id FROM users WHERE name = ?1";
const REMOVE_USER: [&str; 3] = [
    "DELETE FROM login_sessions WHERE user_id = ?1",
    "DELETE FROM api_tokens WHERE user_id = ?1",
    "DELETE FROM users WHERE id = ?1",
];
const ADD_LOGIN: &str = "INSERT INTO login_sessions \
     (secret_sha256, user_id, csrf, created_at, last_used, expires_at) \
     VALUES (?1, ?2, ?3, ?4, ?4, ?5)";
const LOGIN: &str = "SELECT u.id, u.name, u.admin, u.created_at, l.csrf FROM login_sessions l \
     JOIN users u ON u.id = l.user_id WHERE l.secret_sha256 = ?1 AND l.expires_at > ?2";
const END_LOGIN: &str = "DELETE FROM login_sessions WHERE secret_sha256 = ?1";
const ADD_TOKEN: &str = "INSERT INTO api_tokens (id, user_id, name, secret_sha256, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5)";
const TOKENS: &str = "SELECT id, name, created_at, last_used FROM api_tokens \
     WHERE user_id = ?1 ORDER BY created_at DESC, id";
const TOKEN_USER: &str = "SELECT u.id, u.name, u.admin, u.created_at, t.last_used \
     FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.secret_sha256 = ?1";
const TOKEN_USED: &str = "UPDATE api_tokens SET last_used = ?2 WHERE secret_sha256 = ?1";
const REVOKE_TOKEN: &str = "DELETE FROM api_tokens WHERE user_id = ?1 AND id = ?2";

/// Seconds between two writes of a token's `last_used`.
const LAST_USED_STEP: i64 = 60;

/// A user from the first four columns of `row`: id, name, admin, created_at.
fn user_from_row<E>(row: &dyn Row<Error = E>) -> Result<User, E> {
    Ok(User {
        id: row.int(0)?,
        name: row.text(1)?,
        admin: row.flag(2)?,
        created_at: row.int(3)?,
    })
}

impl<B: Backend> AccountStore for B {
    fn add_user(&self, name: &str, password_hash: &str, admin: bool) -> Result<Option<User>> {
        let now = unix_now();
        let id = self.write("add a user", Write::Insert, &mut |db| {
            db.row(
                ADD_USER,
                &[
                    Param::Text(name),
                    Param::Text(password_hash),
                    Param::Flag(admin),
                    Param::Int(now),
                ],
                |row| row.int(0),
            )
        })?;
        Ok(id.map(|id| User {
            id,
            name: name.to_owned(),
            admin,
            created_at: now,
        }))
    }

    fn users(&self) -> Result<Vec<UserSummary>> {
        self.read("list users", View::Snapshot, &mut |db| {
            db.rows(USERS, &[], |row| {
                Ok(UserSummary {
                    user: user_from_row(row)?,
                    tokens: row.int(4)?.max(0) as u64,
                    token_last_used: row.opt_int(5)?,
                    limits: Limits {
                        turns: row.opt_int(6)?.map(small),
                        tokens: row.opt_int(7)?.map(small),
                    },
                })
            })
        })
    }

    fn user_counts(&self) -> Result<(u64, u64)> {
        let counts = self.read("count users", View::Statement, &mut |db| {
            db.row(USER_COUNTS, &[], |row| Ok((row.int(0)?, row.int(1)?)))
        })?;
        let (users, admins) = counts.unwrap_or((0, 0));
        Ok((users.max(0) as u64, admins.max(0) as u64))
    }

    fn user_by_name(&self, name: &str) -> Result<Option<(User, String)>> {
        self.read("find a user", View::Statement, &mut |db| {
            db.row(USER_BY_NAME, &[Param::Text(name)], |row| {
                Ok((user_from_row(row)?, row.text(4)?))
            })
        })
    }

    fn remove_user(&self, name: &str) -> Result<bool> {
        self.write("remove a user", Write::Delete, &mut |db| {
            let Some(id) = db.row(USER_ID, &[Param::Text(name)], |row| row.int(0))? else {
                return Ok(false);
            };
            for sql in REMOVE_USER {
                db.run(sql, &[Param::Int(id)])?;
            }
            Ok(true)
        })
    }

    fn add_login(&self, user: i64, secret_sha256: &str, csrf: &str, expires_at: i64) -> Result<()> {
        let now = unix_now();
        self.write("record a sign-in", Write::Insert, &mut |db| {
            db.run(
                ADD_LOGIN,
                &[
                    Param::Text(secret_sha256),
                    Param::Int(user),
                    Param::Text(csrf),
                    Param::Int(now),
                    Param::Int(expires_at),
                ],
            )?;
            Ok(())
        })
    }

    fn login(&self, secret_sha256: &str, now: i64) -> Result<Option<(User, String)>> {
        self.read("find a sign-in", View::Statement, &mut |db| {
            db.row(
                LOGIN,
                &[Param::Text(secret_sha256), Param::Int(now)],
                |row| Ok((user_from_row(row)?, row.text(4)?)),
            )
        })
    }

    fn end_login(&self, secret_sha256: &str) -> Result<bool> {
        self.write("end a sign-in", Write::Delete, &mut |db| {
            Ok(db.run(END_LOGIN, &[Param::Text(secret_sha256)])? > 0)
        })
    }

    fn add_token(&self, user: i64, id: &str, name: &str, secret_sha256: &str) -> Result<ApiToken> {
        let now = unix_now();
        self.write("add an API token", Write::Insert, &mut |db| {
            db.run(
                ADD_TOKEN,
                &[
                    Param::Text(id),
                    Param::Int(user),
                    Param::Text(name),
                    Param::Text(secret_sha256),
                    Param::Int(now),
                ],
            )?;
            Ok(())
        })?;
        Ok(ApiToken {
            id: id.to_owned(),
            name: name.to_owned(),
            created_at: now,
            last_used: None,
        })
    }

    fn tokens(&self, user: i64) -> Result<Vec<ApiToken>> {
        self.read("list API tokens", View::Statement, &mut |db| {
            db.rows(TOKENS, &[Param::Int(user)], |row| {
                Ok(ApiToken {
                    id: row.text(0)?,
                    name: row.text(1)?,
                    created_at: row.int(2)?,
                    last_used: row.opt_int(3)?,
                })
            })
        })
    }

    fn token_user(&self, secret_sha256: &str, now: i64) -> Result<Option<User>> {
        let found = self.read("find an API token", View::Statement, &mut |db| {
            db.row(TOKEN_USER, &[Param::Text(secret_sha256)], |row| {
                Ok((user_from_row(row)?, row.opt_int(4)?))
            })
        })?;
        let Some((user, last_used)) = found else {
            return Ok(None);
        };
        if last_used.is_none_or(|used| now - used >= LAST_USED_STEP) {
            self.write("note an API token's use", Write::Replace, &mut |db| {
                db.run(TOKEN_USED, &[Param::Text(secret_sha256), Param::Int(now)])?;
                Ok(())
            })?;
        }
        Ok(Some(user))
    }

    fn revoke_token(&self, user: i64, id: &str) -> Result<bool> {
        self.write("revoke an API token", Write::Delete, &mut |db| {
            Ok(db.run(REVOKE_TOKEN, &[Param::Int(user), Param::Text(id)])? > 0)
        })
    }
}
