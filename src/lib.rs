//! Sparky: a self-hosted chat-agent server.
//!
//! # Bird's-eye view
//!
//! One TCP port serves HTTP and WebSocket ([`net::server`]). Each connection gets one OS thread
//! that sleeps in `ppoll(2)` on its socket alone: the transport ([`net::connection`]) reads
//! frames, the handler ([`net::handler`]) decodes and dispatches them. A `connect` frame attaches
//! the connection to a [`conversation::session::Session`], which holds the bot, its short-term
//! knowledge and its event log. Each user message opens a turn that the session starts on a
//! thread of the server's [`conversation::worker::TurnPool`]; the turn's agent loop
//! ([`conversation::agent`]) asks the model ([`model`]), runs tools ([`tools`]) and hands every
//! event to the session, which numbers it, logs it through the journal into the [`store`], and
//! writes it to every attached connection's socket through its [`net::outbound::Outbound`].
//!
//! # Layers
//!
//! Each folder is one layer and imports only the layers below it:
//!
//! - [`client`]: the terminal client (`sparky chat`), beside the server rather than in it: it
//!   speaks the protocol over the network, and nothing of the server uses it.
//! - [`net`]: the edge; the only layer that knows a client exists.
//! - [`conversation`]: sessions, turns, the agent loop, the journal, memory.
//! - [`tools`]: the `ToolChain`, built-in tools, the knowledge graph's tools, MCP.
//! - [`files`]: files in the conversation: their type by their bytes, their text read in a
//!   bounded child process and chunked, uploads and waiting for a file's text
//!   ([`files::Library`]).
//! - [`store`]: what is stored, written once, over SQLite and PostgreSQL.
//! - [`model`]: the model backends and embeddings.
//! - [`common`]: the vocabulary every layer shares (protocol, config, errors, principals,
//!   metrics) and small leaf pieces.
//!
//! # Reading order
//!
//! [`common::protocol`], [`net::server`], [`net::handler`], [`net::connection`],
//! [`net::outbound`], [`conversation::session`], [`conversation::agent`], then the capabilities
//! ([`model`], [`tools`], [`store`]). ARCHITECTURE.md has the rules that hold between them.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod common;
pub mod conversation;
pub mod files;
pub mod model;
pub mod net;
pub mod store;
pub mod tools;

pub use common::config::Config;
pub use net::server::{ServerHandle, bind, spawn};
