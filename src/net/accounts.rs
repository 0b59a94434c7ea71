//! User accounts on the server (PROTOCOL.md section 8, "Accounts"): signing in and out, the
//! session cookie and its CSRF token, failed sign-ins slowed per name and per address, a
//! user's named API tokens, and the admin's list of accounts. [`Accounts`] is also the
//! [`AccountCheck`] that `common::auth::Auth` asks about account credentials, on every request
//! and, once a second, for every live WebSocket of a user (so that a revoked token, an ended
//! sign-in or a removed user stops working at once, on every instance: each asks the store).
//!
//! A user's principal is `user:<id>` ([`Principal::user`]). The routes' answers are built here
//! and the `/api/` table (`api.rs`) hands requests to them: a caller's use of the day
//! (`GET /api/usage`), and each user's use and daily limits in the admin's list, set by an
//! admin (`PATCH /api/users/{name}`), from `conversation::quota`.
//!
//! Depends on: `common::auth`, `common::config`, `common::error`, `common::password`,
//! `common::rate`, `conversation::quota`, `net::http`, `store::accounts`, `store::usage`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::common::auth::{AccountCheck, Principal};
use crate::common::config::RateLimit;
use crate::common::error::Error;
use crate::common::password;
use crate::common::rate::Bucket;
use crate::conversation::quota::Quotas;
use crate::net::http::{Response, SetCookie};
use crate::store::{AccountStore, DayUsage, LimitChange, Limits, User, UserSummary};

/// The session cookie's name.
pub const COOKIE: &str = "sparky_session";

/// The header a state-changing request authenticated by the cookie must carry, holding the
/// CSRF token `POST /api/login` answered.
pub const CSRF_HEADER: &str = "x-sparky-csrf";

/// How long a sign-in lasts.
const SIGN_IN_SECONDS: i64 = 14 * 24 * 3600;

/// Failed sign-ins one name may have in a row, then one more a minute.
const PER_NAME: RateLimit = RateLimit {
    per_second: 1.0 / 60.0,
    burst: 5.0,
};

/// Failed sign-ins one address may have in a row, then one more every 6 seconds.
const PER_ADDRESS: RateLimit = RateLimit {
    per_second: 1.0 / 6.0,
    burst: 20.0,
};

/// Names (and addresses) whose failures are remembered at most; past it they are forgotten
/// all at once (the other map still holds its limits).
const MAX_TRACKED: usize = 10_000;

/// Characters of a user's or a token's name at most.
pub const MAX_NAME_CHARS: usize = 64;

/// Bytes of a password at most (Argon2 hashes any length; this bounds the work per request).
const MAX_PASSWORD_BYTES: usize = 1024;

/// What a wrong name and a wrong password both answer.
const WRONG: &str = "wrong name or password";

/// User accounts, over the store. See the module's header.
pub struct Accounts {
    store: Arc<dyn AccountStore>,
    /// Users' daily use and limits.
    quotas: Arc<Quotas>,
    /// Mark the cookie `Secure` (`--public-url https://…`).
    secure: bool,
    failures: Mutex<Failures>,
    /// Whether accounts existed when the store last said: the answer while it cannot say.
    any_known: AtomicBool,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

/// Failed sign-ins, per name and per address.
#[derive(Default)]
struct Failures {
    names: HashMap<String, Bucket>,
    addresses: HashMap<IpAddr, Bucket>,
}

/// `POST /api/login`'s body.
#[derive(Deserialize)]
struct SignIn {
    name: String,
    password: String,
}

/// `POST /api/tokens`'s body.
#[derive(Deserialize)]
struct NewToken {
    name: String,
}

/// `POST /api/users`'s body.
#[derive(Deserialize)]
struct NewUser {
    name: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    admin: bool,
    /// The user's own turns a day; absent or null: the default.
    #[serde(default)]
    daily_turns: Option<u64>,
    /// The user's own model tokens a day; absent or null: the default.
    #[serde(default)]
    daily_tokens: Option<u64>,
}

/// `PATCH /api/users/{name}`'s body: each limit absent (kept), null (back to the default) or a
/// number (`0`: no limit).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLimits {
    #[serde(default, deserialize_with = "present")]
    daily_turns: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    daily_tokens: Option<Option<u64>>,
}

/// A field that is present, null or not: `Some` of its value, so that an absent one (serde's
/// `default`, `None`) is told from a null one (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// Daily use as the API shows it.
fn day_usage(usage: DayUsage) -> Value {
    json!({ "turns": usage.turns, "tokens": usage.tokens })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds as an RFC 3339 UTC string.
fn rfc3339(seconds: i64) -> String {
    humantime::format_rfc3339_seconds(
        UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0) as u64),
    )
    .to_string()
}

fn reply(status: u16, reason: &'static str, body: &Value) -> Response {
    Response {
        content_type: "application/json",
        ..Response::text(status, reason, &body.to_string())
    }
}

fn refuse(status: u16, reason: &'static str, message: &str) -> Response {
    reply(status, reason, &json!({ "error": message }))
}

fn forbidden(message: &str) -> Response {
    refuse(403, "Forbidden", message)
}

fn failed(e: &Error) -> Response {
    log::error!("accounts: {e}");
    reply(
        503,
        "Service Unavailable",
        &json!({ "error": "the store cannot be reached now; nothing was changed", "code": "storage" }),
    )
}

fn body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Response> {
    serde_json::from_slice(bytes)
        .map_err(|e| refuse(400, "Bad Request", &format!("the body cannot be read: {e}")))
}

/// Refuses a name that is empty, too long, or has characters beyond letters, digits, `.`,
/// `_`, `-` and `@`.
///
/// # Errors
///
/// What is wrong with it.
pub fn check_name(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || !name.chars().all(plain) {
        return Err(format!(
            "a user's name is 1 to {MAX_NAME_CHARS} letters, digits, '.', '_', '-' or '@'"
        ));
    }
    Ok(())
}

impl Accounts {
    /// Accounts kept in `store`, their daily use and limits in `quotas`; `secure`: the cookie
    /// is marked `Secure`.
    pub fn new(store: Arc<dyn AccountStore>, quotas: Arc<Quotas>, secure: bool) -> Self {
        Accounts {
            store,
            quotas,
            secure,
            failures: Mutex::new(Failures::default()),
            any_known: AtomicBool::new(false),
        }
    }

    /// The cookie that carries `secret` (an empty one, expired, to end it).
    fn cookie(&self, secret: &str, max_age: i64) -> Option<Box<SetCookie>> {
        let secure = if self.secure { "; Secure" } else { "" };
        Some(Box::new(SetCookie(format!(
            "{COOKIE}={secret}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
        ))))
    }

    /// True when sign-ins for `name` or from `client` have failed too often lately.
    fn locked(&self, name: &str, client: Option<IpAddr>) -> bool {
        let name = tracked(name);
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let name_locked = failures
            .names
            .get_mut(name)
            .is_some_and(|bucket| !bucket.ready());
        let address_locked = client.is_some_and(|client| {
            failures
                .addresses
                .get_mut(&client)
                .is_some_and(|bucket| !bucket.ready())
        });
        name_locked || address_locked
    }

    /// Counts a failed sign-in against `name` and `client`.
    fn failed_sign_in(&self, name: &str, client: Option<IpAddr>) {
        let name = tracked(name);
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.names.len() >= MAX_TRACKED {
            failures.names.clear();
        }
        failures
            .names
            .entry(name.to_owned())
            .or_insert_with(|| Bucket::new(PER_NAME))
            .take();
        if let Some(client) = client {
            if failures.addresses.len() >= MAX_TRACKED {
                failures.addresses.clear();
            }
            failures
                .addresses
                .entry(client)
                .or_insert_with(|| Bucket::new(PER_ADDRESS))
                .take();
        }
    }

    /// `POST /api/login`: `200` `{name, admin, csrf}` with the cookie; `401` (the same body and
    /// about the same time for an unknown name and a wrong password); `429` once the name or
    /// address has failed too often.
    pub fn sign_in(&self, bytes: &[u8], client: Option<IpAddr>) -> Response {
        let sign_in: SignIn = match body(bytes) {
            Ok(sign_in) => sign_in,
            Err(response) => return response,
        };
        if self.locked(&sign_in.name, client) {
            log::warn!("accounts: sign-in for a locked name or address refused (429)");
            return Response {
                extra_headers: &[("Retry-After", "60")],
                ..refuse(
                    429,
                    "Too Many Requests",
                    "too many failed sign-ins; wait a minute and try again",
                )
            };
        }
        let password = &sign_in.password;
        let found = if password.len() > MAX_PASSWORD_BYTES {
            None
        } else {
            match self.store.user_by_name(&sign_in.name) {
                Ok(found) => found,
                Err(e) => return failed(&e),
            }
        };
        let user = match found {
            Some((user, hash)) if password::verify(password, &hash) => user,
            Some(_) => {
                self.failed_sign_in(&sign_in.name, client);
                return refuse(401, "Unauthorized", WRONG);
            }
            None => {
                password::verify_nothing(password);
                self.failed_sign_in(&sign_in.name, client);
                return refuse(401, "Unauthorized", WRONG);
            }
        };
        let (secret, csrf) = match (password::secret(32), password::secret(24)) {
            (Ok(secret), Ok(csrf)) => (secret, csrf),
            (Err(e), _) | (_, Err(e)) => return failed(&e),
        };
        if let Err(e) = self.store.add_login(
            user.id,
            &password::digest(&secret),
            &csrf,
            now() + SIGN_IN_SECONDS,
        ) {
            return failed(&e);
        }
        log::info!("accounts: {} signed in", user.name);
        Response {
            set_cookie: self.cookie(&secret, SIGN_IN_SECONDS),
            ..reply(
                200,
                "OK",
                &json!({ "name": user.name, "admin": user.admin, "csrf": csrf }),
            )
        }
    }

    /// `POST /api/logout`: ends the sign-in of `cookie` (if any) at once; `204`, with a cookie
    /// that expires the browser's.
    pub fn sign_out(&self, cookie: Option<&str>) -> Response {
        if let Some(cookie) = cookie
            && let Err(e) = self.store.end_login(&password::digest(cookie))
        {
            return failed(&e);
        }
        Response {
            set_cookie: self.cookie("", 0),
            ..Response::text(204, "No Content", "")
        }
    }

    /// The account of `principal`, or a `403` for a principal that is no user's.
    fn user(&self, principal: &Principal) -> Result<User, Response> {
        let Some(id) = principal.user_id() else {
            return Err(forbidden(
                "only a user signed in (or with one of their API tokens) has this",
            ));
        };
        match self.store.user_by_name(principal.name()) {
            Ok(Some((user, _))) if user.id == id => Ok(user),
            Ok(_) => Err(forbidden("this user no longer exists")),
            Err(e) => Err(failed(&e)),
        }
    }

    /// The admin account of `principal`, or a `403`.
    fn admin(&self, principal: &Principal) -> Result<User, Response> {
        let user = self.user(principal)?;
        if user.admin {
            Ok(user)
        } else {
            Err(forbidden("only an admin manages accounts"))
        }
    }

    /// `Ok` when `principal` may manage the server's tools (sign MCP servers in): without
    /// accounts the local user or a token holder, with them an admin; else a `403`.
    pub fn may_manage_tools(&self, principal: &Principal) -> Result<(), Response> {
        if principal.user_id().is_none() {
            return Ok(());
        }
        match self.user(principal) {
            Ok(user) if user.admin => Ok(()),
            Ok(_) => Err(forbidden("only an admin manages tools")),
            Err(response) => Err(response),
        }
    }

    /// `GET /api/me`: who the caller is, as the page needs it to show the account and the
    /// admin's panels, `{name, admin, kind}` (the shape `POST /api/login` answers, less the
    /// CSRF token). `kind` is `user` for a sign-in or one of a user's API tokens (`name` and
    /// `admin` are the account's), `token` for a configured `--auth-token` (`name` is its name,
    /// else its fingerprint) and `local` on a server that requires no token (`name` is
    /// `null`). A `token` or `local` caller is `admin`: it manages the server's tools
    /// ([`Accounts::may_manage_tools`]), though it has no account, and so no API tokens and
    /// no list of users.
    pub fn me(&self, principal: &Principal) -> Response {
        let me = if principal.user_id().is_some() {
            match self.user(principal) {
                Ok(user) => json!({ "name": user.name, "admin": user.admin, "kind": "user" }),
                Err(response) => return response,
            }
        } else if *principal == Principal::local() {
            json!({ "name": null, "admin": true, "kind": "local" })
        } else {
            json!({ "name": principal.name(), "admin": true, "kind": "token" })
        };
        reply(200, "OK", &me)
    }

    /// `GET /api/tokens`: the caller's tokens, never their secrets.
    pub fn list_tokens(&self, principal: &Principal) -> Response {
        let user = match self.user(principal) {
            Ok(user) => user,
            Err(response) => return response,
        };
        match self.store.tokens(user.id) {
            Ok(tokens) => reply(
                200,
                "OK",
                &json!({ "tokens": tokens.into_iter().map(|t| json!({
                    "id": t.id,
                    "name": t.name,
                    "created_at": rfc3339(t.created_at),
                    "last_used": t.last_used.map(rfc3339),
                })).collect::<Vec<_>>() }),
            ),
            Err(e) => failed(&e),
        }
    }

    /// `POST /api/tokens` `{name}`: `201` `{id, name, created_at, token}`, the secret shown
    /// this once.
    pub fn create_token(&self, principal: &Principal, bytes: &[u8]) -> Response {
        let user = match self.user(principal) {
            Ok(user) => user,
            Err(response) => return response,
        };
        let new: NewToken = match body(bytes) {
            Ok(new) => new,
            Err(response) => return response,
        };
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return refuse(
                400,
                "Bad Request",
                &format!("a token's name is 1 to {MAX_NAME_CHARS} characters"),
            );
        }
        let (id, secret) = match (password::random_id(), password::secret(32)) {
            (Ok(id), Ok(secret)) => (id, format!("sparky_{secret}")),
            (Err(e), _) | (_, Err(e)) => return failed(&e),
        };
        match self
            .store
            .add_token(user.id, &id, name, &password::digest(&secret))
        {
            Ok(token) => reply(
                201,
                "Created",
                &json!({
                    "id": token.id,
                    "name": token.name,
                    "created_at": rfc3339(token.created_at),
                    "token": secret,
                }),
            ),
            Err(e) => failed(&e),
        }
    }

    /// `DELETE /api/tokens/{id}`: `204`, the token refused from now on; `404` for a token that
    /// is not the caller's.
    pub fn revoke_token(&self, principal: &Principal, id: &str) -> Response {
        let user = match self.user(principal) {
            Ok(user) => user,
            Err(response) => return response,
        };
        match self.store.revoke_token(user.id, id) {
            Ok(true) => Response::text(204, "No Content", ""),
            Ok(false) => refuse(404, "Not Found", "not found"),
            Err(e) => failed(&e),
        }
    }

    /// `GET /api/usage`: the caller's use today (UTC) and the daily limits that apply to it
    /// (`null`: none), whoever it is.
    pub fn usage(&self, principal: &Principal) -> Response {
        match self.quotas.today(principal) {
            Ok(today) => reply(
                200,
                "OK",
                &json!({
                    "day": today.day,
                    "turns": today.usage.turns,
                    "tokens": today.usage.tokens,
                    "daily_turns": today.limits.turns,
                    "daily_tokens": today.limits.tokens,
                }),
            ),
            Err(e) => failed(&e),
        }
    }

    /// One user as the admin's list shows it: the account, its tokens' use, how many
    /// conversations it has, the model tokens they took, its use today and its own limits.
    fn user_entry(
        &self,
        summary: &UserSummary,
        conversations: &dyn Fn(&Principal) -> Option<u64>,
    ) -> crate::common::error::Result<Value> {
        let user = &summary.user;
        let principal = Principal::user(user.id, &user.name);
        let (today, tokens_used) = self.quotas.used(&principal)?;
        Ok(json!({
            "name": user.name,
            "admin": user.admin,
            "created_at": rfc3339(user.created_at),
            "conversations": conversations(&principal),
            "tokens": summary.tokens,
            "token_last_used": summary.token_last_used.map(rfc3339),
            "tokens_used": tokens_used,
            "today": day_usage(today),
            "daily_turns": summary.limits.turns,
            "daily_tokens": summary.limits.tokens,
        }))
    }

    /// `GET /api/users` (admin only): every account with its tokens' use, how many
    /// conversations it has (`conversations` counts them for a principal), its use and its
    /// own daily limits, and the server's default limits; nothing of anyone's content.
    pub fn list_users(
        &self,
        principal: &Principal,
        conversations: &dyn Fn(&Principal) -> Option<u64>,
    ) -> Response {
        if let Err(response) = self.admin(principal) {
            return response;
        }
        let entries = self.store.users().and_then(|users| {
            users
                .iter()
                .map(|summary| self.user_entry(summary, conversations))
                .collect::<crate::common::error::Result<Vec<_>>>()
        });
        let defaults = self.quotas.defaults();
        match entries {
            Ok(users) => reply(
                200,
                "OK",
                &json!({
                    "users": users,
                    "defaults": { "daily_turns": defaults.turns, "daily_tokens": defaults.tokens },
                }),
            ),
            Err(e) => failed(&e),
        }
    }

    /// `PATCH /api/users/{name}` `{daily_turns?, daily_tokens?}` (admin only): sets or clears
    /// (null: the default) the user's own daily limits; `200` with the user as the list shows
    /// it, `404` for no such user, `400` for a body that is not such an object.
    pub fn set_limits(
        &self,
        principal: &Principal,
        name: &str,
        bytes: &[u8],
        conversations: &dyn Fn(&Principal) -> Option<u64>,
    ) -> Response {
        if let Err(response) = self.admin(principal) {
            return response;
        }
        // An object only: serde would read a struct from a list too.
        let limits = match body::<Value>(bytes) {
            Ok(value @ Value::Object(_)) => serde_json::from_value::<NewLimits>(value),
            Ok(_) => return refuse(400, "Bad Request", "the body is not a JSON object"),
            Err(response) => return response,
        };
        let limits = match limits {
            Ok(limits) => limits,
            Err(e) => {
                return refuse(400, "Bad Request", &format!("the body cannot be read: {e}"));
            }
        };
        let change = LimitChange {
            turns: limits.daily_turns,
            tokens: limits.daily_tokens,
        };
        match self.quotas.set_limits(name, change) {
            Ok(true) => {}
            Ok(false) => return refuse(404, "Not Found", "not found"),
            Err(e) => return failed(&e),
        }
        let found = self
            .store
            .users()
            .map(|users| users.into_iter().find(|u| u.user.name == name));
        match found.and_then(|found| {
            found
                .map(|summary| self.user_entry(&summary, conversations))
                .transpose()
        }) {
            Ok(Some(entry)) => reply(200, "OK", &entry),
            // Removed meanwhile.
            Ok(None) => refuse(404, "Not Found", "not found"),
            Err(e) => failed(&e),
        }
    }

    /// `POST /api/users` `{name, password?, admin?, daily_turns?, daily_tokens?}` (admin only):
    /// `201` `{name, admin, daily_turns, daily_tokens}`, with `password` when one was made
    /// (shown this once); `409` for a name taken.
    pub fn create_user(&self, principal: &Principal, bytes: &[u8]) -> Response {
        if let Err(response) = self.admin(principal) {
            return response;
        }
        let new: NewUser = match body(bytes) {
            Ok(new) => new,
            Err(response) => return response,
        };
        if let Err(why) = check_name(&new.name) {
            return refuse(400, "Bad Request", &why);
        }
        let (password, made) = match new.password.filter(|p| !p.is_empty()) {
            Some(password) if password.len() > MAX_PASSWORD_BYTES => {
                return refuse(400, "Bad Request", "the password is too long");
            }
            Some(password) => (password, false),
            None => match password::secret(15) {
                Ok(password) => (password, true),
                Err(e) => return failed(&e),
            },
        };
        let hash = match password::hash(&password) {
            Ok(hash) => hash,
            Err(e) => return failed(&e),
        };
        let limits = Limits {
            turns: new.daily_turns,
            tokens: new.daily_tokens,
        };
        let added = self
            .store
            .add_user(&new.name, &hash, new.admin)
            .and_then(|user| {
                if user.is_some() && limits != Limits::default() {
                    let change = LimitChange {
                        turns: Some(limits.turns),
                        tokens: Some(limits.tokens),
                    };
                    self.quotas.set_limits(&new.name, change)?;
                }
                Ok(user)
            });
        match added {
            Ok(Some(user)) => {
                let mut answer = json!({
                    "name": user.name,
                    "admin": user.admin,
                    "daily_turns": limits.turns,
                    "daily_tokens": limits.tokens,
                });
                if made {
                    answer["password"] = Value::String(password);
                }
                reply(201, "Created", &answer)
            }
            Ok(None) => refuse(409, "Conflict", "there is already a user with this name"),
            Err(e) => failed(&e),
        }
    }

    /// `DELETE /api/users/{name}` (admin only): `204`; the user's sign-ins, tokens and live
    /// connections stop working at once.
    pub fn remove_user(&self, principal: &Principal, name: &str) -> Response {
        if let Err(response) = self.admin(principal) {
            return response;
        }
        match self.store.remove_user(name) {
            Ok(true) => Response::text(204, "No Content", ""),
            Ok(false) => refuse(404, "Not Found", "not found"),
            Err(e) => failed(&e),
        }
    }

    /// How many accounts there are, and how many admins.
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn counts(&self) -> crate::common::error::Result<(u64, u64)> {
        self.store.user_counts()
    }
}

/// What failures are counted under for `name`: its first [`MAX_NAME_CHARS`] characters (no
/// account has a longer one), so that what is remembered per name stays small.
fn tracked(name: &str) -> &str {
    name.char_indices()
        .nth(MAX_NAME_CHARS)
        .map_or(name, |(end, _)| &name[..end])
}

/// True when `presented` is `expected` (a CSRF token), compared in constant time.
pub fn csrf_matches(presented: Option<&str>, expected: &str) -> bool {
    presented.is_some_and(|presented| bool::from(presented.as_bytes().ct_eq(expected.as_bytes())))
}

impl AccountCheck for Accounts {
    fn any(&self) -> bool {
        match self.store.user_counts() {
            Ok((users, _)) => {
                self.any_known.store(users > 0, Ordering::Relaxed);
                users > 0
            }
            Err(e) => {
                // What the store last said: a server with accounts stays closed (and their
                // credentials cannot be checked now), one without goes on as it was.
                log::error!("accounts: {e}");
                self.any_known.load(Ordering::Relaxed)
            }
        }
    }

    fn token(&self, secret: &str) -> Option<Principal> {
        match self.store.token_user(&password::digest(secret), now()) {
            Ok(user) => user.map(|user| Principal::user(user.id, &user.name)),
            Err(e) => {
                log::error!("accounts: {e}");
                None
            }
        }
    }

    fn cookie(&self, secret: &str) -> Option<(Principal, String)> {
        match self.store.login(&password::digest(secret), now()) {
            Ok(found) => found.map(|(user, csrf)| (Principal::user(user.id, &user.name), csrf)),
            Err(e) => {
                log::error!("accounts: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_failures_counted_under_a_bounded_key() {
        assert!(check_name("alice.b-c_d@x").is_ok());
        for bad in ["", "a b", "a/b", "é", &"a".repeat(MAX_NAME_CHARS + 1)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let long = "n".repeat(10 * MAX_NAME_CHARS);
        assert_eq!(tracked(&long).len(), MAX_NAME_CHARS);
        assert_eq!(tracked("bob"), "bob");
        assert!(csrf_matches(Some("abc"), "abc"));
        assert!(!csrf_matches(Some("abd"), "abc"));
        assert!(!csrf_matches(None, "abc"));
    }
}
