//! Secrets of user accounts: passwords hashed with Argon2id (the `argon2` crate's default
//! parameters, a PHC string that carries its salt and parameters) and checked by the crate in
//! constant time; random secrets for cookies, CSRF tokens, API tokens and new passwords; and
//! the SHA-256 under which the store keeps a cookie or token.
//!
//! Depends on: `common::error`.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use data_encoding::{BASE64URL_NOPAD, HEXLOWER};
use sha2::{Digest, Sha256};

use crate::common::error::{Error, Result};

/// The hash of a made-up password, checked against when a sign-in names no account, so that
/// an unknown name costs the same time as a wrong password.
const DUMMY_PASSWORD: &str = "not a password of anyone's";

/// Hashes `password` with Argon2id and a fresh random salt, as a PHC string.
///
/// # Errors
///
/// When the OS's random source fails, or the crate refuses the input.
pub fn hash(password: &str) -> Result<String> {
    let mut salt = [0_u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::store(format!("random source: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::store(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Error::store(format!("password hash: {e}")))
}

/// True when `password` is the one `hash` was made from (compared by the crate in constant
/// time). A hash that cannot be read matches nothing.
pub fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Spends the time of one [`verify`] on nothing: for a sign-in with a name no account has.
pub fn verify_nothing(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash(DUMMY_PASSWORD).unwrap_or_default());
    let _ = verify(password, dummy);
}

/// A new random secret of `bytes` bytes from the OS's random source, URL-safe base64.
///
/// # Errors
///
/// When the OS's random source fails.
pub fn secret(bytes: usize) -> Result<String> {
    let mut raw = vec![0_u8; bytes];
    getrandom::fill(&mut raw).map_err(|e| Error::store(format!("random source: {e}")))?;
    Ok(BASE64URL_NOPAD.encode(&raw))
}

/// A new random id: 16 bytes, 32 lowercase hex characters.
///
/// # Errors
///
/// When the OS's random source fails.
pub fn random_id() -> Result<String> {
    let mut raw = [0_u8; 16];
    getrandom::fill(&mut raw).map_err(|e| Error::store(format!("random source: {e}")))?;
    Ok(HEXLOWER.encode(&raw))
}

/// The SHA-256 of a secret, lowercase hex: what the store keeps of a cookie or token.
pub fn digest(secret: &str) -> String {
    HEXLOWER.encode(&Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_is_argon2id_and_checks_its_password_only() {
        let hashed = hash("correct horse").unwrap();
        assert!(hashed.starts_with("$argon2id$"), "{hashed}");
        assert!(verify("correct horse", &hashed));
        assert!(!verify("correct horse ", &hashed));
        assert!(!verify("correct horse", "not a hash"));
        assert_ne!(hash("correct horse").unwrap(), hashed, "salted");
        verify_nothing("anything");
    }

    #[test]
    fn secrets_are_random_and_digests_hex() {
        assert_ne!(secret(32).unwrap(), secret(32).unwrap());
        assert_eq!(secret(32).unwrap().len(), 43);
        assert_eq!(random_id().unwrap().len(), 32);
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
