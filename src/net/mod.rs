//! The edge: the accept loop and its limits ([`server`]), HTTP heads and the Host/Origin policy
//! ([`http`]), the `/api/` routes ([`api`]), the bundled page ([`assets`]), the WebSocket
//! transport ([`connection`], [`inbound`], [`outbound`], [`wake`]), dispatch of client frames
//! ([`handler`]) and shutdown ([`shutdown`]). The only folder that knows a client exists.
//!
//! Depends on nothing in the crate.

pub mod api;
pub mod assets;
pub mod connection;
pub mod handler;
pub mod http;
pub mod inbound;
pub mod outbound;
pub mod server;
pub mod shutdown;
pub mod wake;
