//! Authentication: the tokens a server accepts, the principal each one stands for, and the
//! constant-time check. Plain data and hashing; depends on nothing in the crate. User accounts
//! (`net/accounts.rs`) plug in through [`AccountCheck`]: their API tokens and sign-in cookies
//! are checked after the configured tokens, and a user's principal is `user:<id>`.
//!
//! Depends on nothing in the crate.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use data_encoding::HEXLOWER;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Bytes of a token's SHA-256 digest that make up its fingerprint (32 hex characters): plenty
/// to tell tokens apart, and less of the digest stored beside the data it owns.
const FINGERPRINT_BYTES: usize = 16;

/// Who a client is, as far as session ownership goes: a fingerprint of the token it presented
/// (never the token itself, which is why it can be stored beside the session), and the name the
/// operator gave that token, if any. Two principals are the same when their fingerprints are:
/// the name is for people reading logs and the API.
#[derive(Clone)]
pub struct Principal {
    fingerprint: String,
    name: Option<Arc<str>>,
}

impl PartialEq for Principal {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for Principal {}

impl Hash for Principal {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state);
    }
}

impl Principal {
    /// The principal that a token stands for: the first 16 bytes of the token's SHA-256
    /// digest, in hex.
    pub fn of_token(token: &str) -> Self {
        let digest = Sha256::digest(token.as_bytes());
        Principal::from_stored(HEXLOWER.encode(&digest[..FINGERPRINT_BYTES]))
    }

    /// The fingerprint that versions before SHA-256 stored for a token (the first 8 bytes of
    /// its SHA-1 digest, in hex). Only the start-up migration that moves old rows to
    /// [`Principal::of_token`] uses it.
    pub fn legacy_of_token(token: &str) -> Self {
        use sha1::{Digest as _, Sha1};
        Principal::from_stored(HEXLOWER.encode(&Sha1::digest(token.as_bytes())[..8]))
    }

    /// A principal as stored.
    pub fn from_stored(fingerprint: String) -> Self {
        Principal {
            fingerprint,
            name: None,
        }
    }

    /// The one principal of a server that requires no token: everything belongs to it.
    pub fn local() -> Self {
        Principal::from_stored("local".to_owned())
    }

    /// The principal of user account `id` named `name`: `user:<id>` (the number is never
    /// given to another account, so a name used again does not inherit a removed user's data).
    pub fn user(id: i64, name: &str) -> Self {
        Principal {
            fingerprint: format!("{USER_PREFIX}{id}"),
            name: Some(Arc::from(name)),
        }
    }

    /// The account number of a user's principal; `None` for any other.
    pub fn user_id(&self) -> Option<i64> {
        self.fingerprint.strip_prefix(USER_PREFIX)?.parse().ok()
    }

    /// The fingerprint, for storage.
    pub fn as_str(&self) -> &str {
        &self.fingerprint
    }

    /// The operator's name for it (`name:token` in the token file), else the fingerprint: for
    /// logs and the API.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.fingerprint)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({})", self.name())
    }
}

/// What a user's principal starts with.
const USER_PREFIX: &str = "user:";

/// User accounts as authentication sees them: whether there are any, and the principal an
/// account's API token or sign-in cookie stands for. A store that fails answers as if the
/// credential were unknown.
pub trait AccountCheck: Send + Sync {
    /// True when at least one account exists: then every client must authenticate.
    fn any(&self) -> bool;

    /// The user whose API token `secret` is.
    fn token(&self, secret: &str) -> Option<Principal>;

    /// The user signed in with cookie `secret`, and the sign-in's CSRF token.
    fn cookie(&self, secret: &str) -> Option<(Principal, String)>;
}

/// The tokens a server accepts. With none, and no user accounts, every client may connect and
/// sessions have no owner.
#[derive(Clone, Default)]
pub struct Auth {
    /// SHA-256 digests of the accepted tokens, with each one's name: comparing fixed-length
    /// digests in constant time leaks neither a token's content nor its length.
    digests: Vec<([u8; 32], Option<Arc<str>>)>,
    /// User accounts, when the server keeps them.
    accounts: Option<Arc<dyn AccountCheck>>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.digests.len())
            .field("accounts", &self.accounts.is_some())
            .finish()
    }
}

/// Why a client was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Tokens are required and none was presented.
    Missing,
    /// The token presented is not one of the server's.
    Wrong,
}

impl Auth {
    /// Accepts exactly `tokens` (empty strings are ignored).
    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Self {
        Self::named(tokens, &[])
    }

    /// Accepts exactly `tokens`; a token listed in `names` (as `(token, name)`) stands for a
    /// principal with that name.
    pub fn named<'a>(
        tokens: impl IntoIterator<Item = &'a str>,
        names: &[(String, String)],
    ) -> Self {
        let digests = tokens
            .into_iter()
            .filter(|token| !token.is_empty())
            .map(|token| {
                let name = names
                    .iter()
                    .find(|(named, _)| named == token)
                    .map(|(_, name)| Arc::from(name.as_str()));
                (Sha256::digest(token.as_bytes()).into(), name)
            })
            .collect();
        Auth {
            digests,
            accounts: None,
        }
    }

    /// Accepts user accounts' credentials too (after the configured tokens).
    #[must_use]
    pub fn with_accounts(mut self, accounts: Arc<dyn AccountCheck>) -> Self {
        self.accounts = Some(accounts);
        self
    }

    /// True when the server requires a token: tokens are configured, or accounts exist.
    pub fn required(&self) -> bool {
        !self.digests.is_empty() || self.accounts.as_ref().is_some_and(|a| a.any())
    }

    /// Checks what a request presents: a token (`Authorization: Bearer`, `?token=`, `connect`)
    /// if any, else a sign-in cookie. As [`Auth::check`].
    ///
    /// # Errors
    ///
    /// [`Refused`] when a token is required and none valid was presented.
    pub fn check_either(
        &self,
        token: Option<&str>,
        cookie: Option<&str>,
    ) -> Result<Option<Principal>, Refused> {
        let token = token.filter(|t| !t.is_empty());
        if token.is_none()
            && let Some(cookie) = cookie.filter(|c| !c.is_empty())
            && self.required()
        {
            return match self.check_cookie(cookie) {
                Some((principal, _)) => Ok(Some(principal)),
                None => Err(Refused::Wrong),
            };
        }
        self.check(token)
    }

    /// The user signed in with cookie `secret`, and its CSRF token; `None` when it is not a
    /// live sign-in (or the server keeps no accounts).
    pub fn check_cookie(&self, secret: &str) -> Option<(Principal, String)> {
        self.accounts.as_ref()?.cookie(secret)
    }

    /// Checks a presented token. `Ok(None)` when no token is required, `Ok(Some(principal))`
    /// for a good token.
    ///
    /// # Errors
    ///
    /// [`Refused`] when a token is required and the one given is missing or wrong.
    pub fn check(&self, token: Option<&str>) -> Result<Option<Principal>, Refused> {
        if !self.required() {
            return Ok(None);
        }
        let token = token.filter(|t| !t.is_empty()).ok_or(Refused::Missing)?;
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Look at every accepted token whatever the outcome, so timing says nothing.
        let mut found = None;
        for (digest, name) in &self.digests {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(name.clone());
            }
        }
        match found {
            Some(name) => Ok(Some(Principal {
                name,
                ..Principal::of_token(token)
            })),
            None => self
                .accounts
                .as_ref()
                .and_then(|accounts| accounts.token(token))
                .map(Some)
                .ok_or(Refused::Wrong),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_tokens_and_names_principals() {
        let open = Auth::default();
        assert_eq!(open.check(None), Ok(None));
        let auth = Auth::new(["alpha", "beta", ""]);
        assert!(auth.required());
        assert_eq!(auth.check(None), Err(Refused::Missing));
        assert_eq!(auth.check(Some("")), Err(Refused::Missing));
        assert_eq!(auth.check(Some("gamma")), Err(Refused::Wrong));
        let alpha = auth.check(Some("alpha")).unwrap().unwrap();
        let beta = auth.check(Some("beta")).unwrap().unwrap();
        assert_ne!(alpha, beta);
        assert_eq!(alpha, Principal::of_token("alpha"));
        assert_eq!(alpha.as_str().len(), 32);
        assert!(!alpha.as_str().contains("alpha"));
    }

    #[test]
    fn fingerprints_are_sha_256_and_the_legacy_ones_sha_1() {
        // SHA-256("abc") and SHA-1("abc") from FIPS 180-2's examples.
        assert_eq!(
            Principal::of_token("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223"
        );
        assert_eq!(
            Principal::legacy_of_token("abc").as_str(),
            "a9993e364706816a"
        );
        assert_ne!(
            Principal::of_token("abc"),
            Principal::legacy_of_token("abc")
        );
    }
}
