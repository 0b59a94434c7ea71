//! The vocabulary every layer shares, and small leaf pieces with no IO of their own: the wire
//! protocol's types, the configuration, the error type, who a client is, the metrics, the cancel
//! flag, the rate bucket and log redaction. Nothing here depends on another folder.
//!
//! Depends on nothing in the crate.

pub mod auth;
pub mod cancel;
pub mod config;
pub mod error;
pub mod metrics;
pub mod password;
pub mod protocol;
pub mod rate;
pub mod redact;
pub mod sse;
