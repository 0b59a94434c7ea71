//! Sparky: a self-hosted chat-agent server.
//!
//! # Bird's-eye view
//!
//! One TCP port serves HTTP and WebSocket ([`server`]). Each connection gets one OS thread
//! that sleeps in `ppoll(2)` on its socket alone: the transport ([`connection`]) reads frames,
//! the handler ([`handler`]) decodes and dispatches them. A `connect` frame attaches the
//! connection to a [`session::Session`], which holds the bot, its short-term knowledge and its
//! event log. Each user message opens a turn that the session starts on a thread of the
//! server's [`worker::TurnPool`]; the turn's agent loop ([`bot`]) asks the model ([`model`]),
//! runs tools ([`tools`]) and hands every event to the session, which numbers it, logs it and
//! writes it to every attached connection's socket through its [`outbound::Outbound`].
//!
//! # Reading order
//!
//! [`protocol`], [`server`], [`handler`], [`connection`], [`outbound`], [`session`], [`bot`],
//! then the capabilities ([`model`], [`tools`], [`knowledge`]). ARCHITECTURE.md has the rules
//! that hold between them.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

// Vocabulary: plain data, no IO, no threads.
pub mod approval;
pub mod auth;
pub mod cancel;
pub mod config;
pub mod error;
pub mod metrics;
pub mod protocol;
pub mod rate;
pub mod redact;
// Capabilities: may do IO, never touch client sockets.
pub mod context;
pub mod journal;
pub mod knowledge;
pub mod memory;
pub mod model;
pub mod store;
pub mod tools;
// Domain.
pub mod bot;
pub mod session;
pub mod worker;
// Transport.
pub mod api;
pub mod assets;
pub mod check;
pub mod cluster;
pub mod connection;
pub mod handler;
pub mod http;
pub mod inbound;
pub mod outbound;
pub mod server;
pub mod shutdown;
pub mod wake;

pub use config::Config;
pub use server::{ServerHandle, bind, spawn};
