//! Authentication: the tokens a server accepts, the principal each one stands for, and the
//! constant-time check. Plain data and hashing; depends on nothing in the crate.

use std::fmt;

use sha1::{Digest, Sha1};

/// Who a client is, as far as session ownership goes: a fingerprint of the token it presented
/// (never the token itself, which is why it can be stored beside the session).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Principal(String);

impl Principal {
    /// The principal that a token stands for.
    pub fn of_token(token: &str) -> Self {
        let digest = Sha1::digest(token.as_bytes());
        let mut hex = String::with_capacity(16);
        for byte in &digest[..8] {
            hex.push_str(&format!("{byte:02x}"));
        }
        Principal(hex)
    }

    /// A principal as stored.
    pub fn from_stored(fingerprint: String) -> Self {
        Principal(fingerprint)
    }

    /// The one principal of a server that requires no token: everything belongs to it.
    pub fn local() -> Self {
        Principal("local".to_owned())
    }

    /// The fingerprint, for storage and logs.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({})", self.0)
    }
}

/// The tokens a server accepts. With none, every client may connect and sessions have no owner.
#[derive(Clone, Default)]
pub struct Auth {
    /// SHA-1 digests of the accepted tokens: comparing fixed-length digests in constant time
    /// leaks neither a token's content nor its length.
    digests: Vec<[u8; 20]>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.digests.len())
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
        let digests = tokens
            .into_iter()
            .filter(|token| !token.is_empty())
            .map(|token| Sha1::digest(token.as_bytes()).into())
            .collect();
        Auth { digests }
    }

    /// True when the server requires a token.
    pub fn required(&self) -> bool {
        !self.digests.is_empty()
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
        let presented: [u8; 20] = Sha1::digest(token.as_bytes()).into();
        // Look at every accepted token whatever the outcome, so timing says nothing.
        let mut found = false;
        for digest in &self.digests {
            found |= constant_time_eq(digest, &presented);
        }
        if found {
            Ok(Some(Principal::of_token(token)))
        } else {
            Err(Refused::Wrong)
        }
    }
}

/// Compares two digests in time that depends only on their (fixed) length.
fn constant_time_eq(a: &[u8; 20], b: &[u8; 20]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
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
        assert_eq!(alpha.as_str().len(), 16);
        assert!(!alpha.as_str().contains("alpha"));
    }
}
