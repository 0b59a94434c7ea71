//! The edge: the accept loop ([`server`]) and who may hold a connection ([`admission`]: the caps
//! in all and per client address, trusted proxies), the HTTP wire ([`http`]), the
//! Host/Origin policy ([`policy`]), the route table ([`routes`]: the page's routes, each a
//! function that gets what it needs passed in) and the `/api/` routes ([`api`]; a stored file as
//! an answer: [`file_response`]), the bundled
//! page ([`assets`]), the WebSocket transport ([`connection`], [`inbound`], [`outbound`],
//! [`wake`]), dispatch of client frames ([`handler`]) and shutdown ([`shutdown`]). The only
//! folder that knows a client exists.
//!
//! Depends on nothing in the crate.

pub mod accounts;
pub mod admission;
pub mod api;
pub mod assets;
pub mod coalesce;
pub mod connection;
pub mod file_response;
pub mod handler;
pub mod http;
pub mod inbound;
pub mod mcp_auth;
pub mod outbound;
pub mod policy;
pub mod porting;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod wake;
