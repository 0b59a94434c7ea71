//! User accounts in the store: users (a name, an Argon2id hash of the password, an admin flag),
//! their sign-ins (a login session per cookie) and their named API tokens. Secrets are never
//! stored: a cookie or token is kept as the SHA-256 of its secret (lowercase hex), which the
//! caller computes; the password only as its PHC hash string.
//!
//! Depends on: `common::error`, `store::usage`.

use crate::common::error::Result;
use crate::store::usage::Limits;

/// A user account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Its number, never given to another account (the principal is `user:<id>`).
    pub id: i64,
    /// Its name, unique.
    pub name: String,
    /// True for an admin, who manages accounts.
    pub admin: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// A named API token, as listed: never its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    /// Its id: 32 hex characters.
    pub id: String,
    /// The name its user gave it.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, when it was last presented (to the minute), if ever.
    pub last_used: Option<i64>,
}

/// A user's account, as `sparky user list` and `GET /api/users` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    /// The account.
    pub user: User,
    /// Its API tokens.
    pub tokens: u64,
    /// When one of its tokens was last used, if ever (Unix seconds).
    pub token_last_used: Option<i64>,
    /// Its own daily limits (`None` each: the server's default).
    pub limits: Limits,
}

/// User accounts, their sign-ins and API tokens. Implemented once for both stores
/// (`plan/accounts.rs`).
pub trait AccountStore: Send + Sync {
    /// Adds an account. `Ok(None)` when the name is taken.
    ///
    /// # Errors
    ///
    /// The store's.
    fn add_user(&self, name: &str, password_hash: &str, admin: bool) -> Result<Option<User>>;

    /// Every account, by name, with its tokens' use.
    ///
    /// # Errors
    ///
    /// The store's.
    fn users(&self) -> Result<Vec<UserSummary>>;

    /// How many accounts there are, and how many of them are admins.
    ///
    /// # Errors
    ///
    /// The store's.
    fn user_counts(&self) -> Result<(u64, u64)>;

    /// An account by name, with its password hash.
    ///
    /// # Errors
    ///
    /// The store's.
    fn user_by_name(&self, name: &str) -> Result<Option<(User, String)>>;

    /// Removes an account, its sign-ins and its tokens. False when there was none.
    ///
    /// # Errors
    ///
    /// The store's.
    fn remove_user(&self, name: &str) -> Result<bool>;

    /// Records a sign-in: the SHA-256 of its cookie's secret, its CSRF token, its end.
    ///
    /// # Errors
    ///
    /// The store's.
    fn add_login(&self, user: i64, secret_sha256: &str, csrf: &str, expires_at: i64) -> Result<()>;

    /// The user and CSRF token of a sign-in that has not ended nor expired by `now`.
    ///
    /// # Errors
    ///
    /// The store's.
    fn login(&self, secret_sha256: &str, now: i64) -> Result<Option<(User, String)>>;

    /// Ends a sign-in. False when there was none.
    ///
    /// # Errors
    ///
    /// The store's.
    fn end_login(&self, secret_sha256: &str) -> Result<bool>;

    /// Adds a named token for `user`.
    ///
    /// # Errors
    ///
    /// The store's.
    fn add_token(&self, user: i64, id: &str, name: &str, secret_sha256: &str) -> Result<ApiToken>;

    /// A user's tokens, newest first.
    ///
    /// # Errors
    ///
    /// The store's.
    fn tokens(&self, user: i64) -> Result<Vec<ApiToken>>;

    /// The user a token stands for (and notes its use, to the minute).
    ///
    /// # Errors
    ///
    /// The store's.
    fn token_user(&self, secret_sha256: &str, now: i64) -> Result<Option<User>>;

    /// Revokes a user's token. False when `user` has no token `id`.
    ///
    /// # Errors
    ///
    /// The store's.
    fn revoke_token(&self, user: i64, id: &str) -> Result<bool>;
}
