//! Conversations: live sessions and their map ([`session`]), a session's conversation
//! ([`bot`]), the agent loop that runs a turn on it ([`agent`]) and a step's tool calls
//! ([`tool_calls`]), what a turn and its session agree on ([`events`]), the turn pool
//! ([`worker`]), tool approval ([`approval`]), the context budget ([`context`]), the journal
//! that writes every event ([`journal`]), semantic memory ([`memory`]) and what an instance
//! does for the others sharing its store ([`cluster`]), and users' daily quotas ([`quota`]). Knows no client: a bot works the same
//! with no one connected.
//!
//! Depends on nothing in the crate.

pub mod agent;
pub mod approval;
pub mod attached;
pub mod bot;
pub mod cluster;
pub mod context;
pub mod events;
pub mod journal;
pub mod memory;
pub mod porting;
pub mod quota;
pub mod session;
pub mod tool_calls;
pub mod worker;
