//! `Config`: everything a server can be told at start. Plain data; depends on nothing in the
//! crate. `main.rs` fills it from the command line; tests fill it by hand.
//!
//! Depends on nothing in the crate.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Largest frame or message, in bytes, that a connection may send before it has authenticated
/// (when tokens are required and none came with the upgrade request): room for a `connect`
/// frame, not for a flood held in memory by a stranger.
pub const UNAUTHENTICATED_FRAME_BYTES: usize = 64 * 1024;

/// Descriptors one WebSocket holds: its socket (a thread-directed signal wakes its thread).
pub const DESCRIPTORS_PER_CONNECTION: u64 = 1;

/// Descriptors kept for everything but connections: the listener, the store's files, MCP
/// pipes, logs.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// How many connections `open_files` descriptors hold.
pub fn connections_for(open_files: u64) -> usize {
    usize::try_from(open_files.saturating_sub(RESERVED_DESCRIPTORS) / DESCRIPTORS_PER_CONNECTION)
        .unwrap_or(usize::MAX)
}

/// The settings of one server. [`Config::default`] is what `sparky` runs with when given no flags.
///
/// Its `Debug` form shows how many tokens there are, never the tokens.
#[derive(Clone)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Where persistent data lives.
    pub data_dir: PathBuf,
    /// Keep everything in memory: no data directory, nothing survives a restart.
    pub in_memory: bool,
    /// A PostgreSQL database to keep everything in (`postgres://USER@HOST[:PORT]/DB`), instead
    /// of the SQLite file in `data_dir` (`in_memory` wins over it). Its Debug form hides any
    /// password.
    pub database_url: Option<String>,
    /// Connections the PostgreSQL store's pool may open, besides the writer's own.
    pub store_pool: usize,
    /// A cap on the store's size in bytes; past it, writes fail as on a full disk (new turns
    /// are refused until there is room). `None`: only the disk's size.
    pub max_store_bytes: Option<u64>,
    /// Model steps allowed in one turn.
    pub max_steps: usize,
    /// The model's context window in tokens; `None`: ask the server (llama.cpp's `/props`),
    /// else assume [`crate::model::openai::DEFAULT_CONTEXT_TOKENS`].
    pub context_tokens: Option<usize>,
    /// The system message of conversations without a personality of their own (`{date}` is
    /// replaced by the date); `None`: the built-in one; empty: none at all.
    pub system_prompt: Option<String>,
    /// Which model answers.
    pub model: ModelKind,
    /// With [`ModelKind::OpenAi`]: the API's base URL, up to and including `/v1`.
    pub model_url: String,
    /// With [`ModelKind::OpenAi`]: the models a conversation may choose, e.g. `llama3.1`, the
    /// first being the default; `["auto"]` for whatever the server lists.
    pub model_names: Vec<String>,
    /// The embedding model that turns on semantic memory (`POST /v1/embeddings`); `None`:
    /// keyword search alone.
    pub embedding_model: Option<String>,
    /// The embedding server's base URL, up to and including `/v1`; `None`: `model_url`.
    pub embedding_url: Option<String>,
    /// How long one embedding request may take, connecting included.
    pub embedding_timeout: Duration,
    /// With [`ModelKind::OpenAi`]: the environment variable that holds the API key, read at
    /// start; `None` sends no key.
    pub api_key_env: Option<String>,
    /// How long connecting to the model server may take.
    pub model_connect_timeout: Duration,
    /// How long the model server may stay silent before its answer starts or between two
    /// pieces of it.
    pub model_read_timeout: Duration,
    /// True when the model takes images: those tools return are sent to it as content parts
    /// (`--model-vision`); otherwise it reads a note for each.
    pub model_vision: bool,
    /// How long a session with no connection and no turn stays in memory. It only frees
    /// memory: the conversation stays in the store, and the next `connect` brings it back.
    pub idle_timeout: Duration,
    /// The operator's opt-in to deleting conversations with no event for this long; `None`
    /// (the default) keeps every conversation until its owner deletes it.
    pub retention: Option<Duration>,
    /// Open WebSocket connections at most; an upgrade past it gets HTTP 503.
    pub max_connections: usize,
    /// Live connections of one session at most; one more takes over from the oldest.
    pub max_connections_per_session: usize,
    /// Sessions at most; a `connect` that would create one more gets `server_busy`.
    pub max_sessions: usize,
    /// Conversations one principal may keep at most; a `connect` that would create one more
    /// gets `server_busy`.
    pub max_conversations_per_principal: u64,
    /// How fast one principal may create conversations; `None` for no limit.
    pub new_conversation_rate: Option<RateLimit>,
    /// Turns running at once on the whole server, at most; one more gets `server_busy`.
    pub max_running_turns: usize,
    /// Turns one principal may run at once, at most; one more gets `server_busy`.
    pub max_running_turns_per_principal: usize,
    /// Largest WebSocket frame or message, in bytes; a larger one closes the connection (1009).
    pub max_frame_bytes: usize,
    /// Longest `text` of a message, in characters; a longer one gets `too_large`.
    pub max_text_chars: usize,
    /// Events a live session keeps in memory (besides a bound in bytes); a replay of older
    /// ones reads the store.
    pub event_log_capacity: usize,
    /// Frames queued for one connection at most; a connection that falls further behind is
    /// closed and catches up by replay when it reconnects.
    pub outbox_capacity: usize,
    /// How long a connection may sit idle before the server pings it; it is dropped when the
    /// next interval passes with no answer.
    pub ping_interval: Duration,
    /// How long a write to a client may stall before the connection is dropped.
    pub write_timeout: Duration,
    /// How long a new TCP connection has to send its request head, and, when tokens are
    /// required, how long a WebSocket has to authenticate before it is closed (1008).
    pub handshake_timeout: Duration,
    /// Tokens a client must present (any one of them); empty means no authentication.
    pub auth_tokens: Vec<String>,
    /// Readable names of some of those tokens' principals, as `(token, name)`: for logs and the
    /// API. Ownership goes by the token, never by the name.
    pub token_names: Vec<(String, String)>,
    /// Origins, besides the server's own, whose pages may open a WebSocket (e.g.
    /// `https://chat.example.com`).
    pub allowed_origins: Vec<String>,
    /// Host names that requests may carry in `Host` (with any port), besides loopback names and
    /// addresses and the address the server is bound to; any other `Host` gets HTTP 421, which
    /// is what stops DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Open connections (HTTP and WebSocket) from one IP address at most; one more gets HTTP
    /// 429. `0` turns the cap off. Loopback peers are exempt unless `per_ip_loopback` is set.
    pub max_connections_per_ip: usize,
    /// Count loopback peers against `max_connections_per_ip` too. Off by default: behind a
    /// reverse proxy on the same machine every client arrives from loopback, and a cap on that
    /// one address would be a cap on everyone.
    pub per_ip_loopback: bool,
    /// Bytes that unfinished incoming WebSocket messages (fragments, or a frame still arriving)
    /// may hold across all connections; a connection whose data would pass it is closed with
    /// 1013 (try again later).
    pub max_pending_message_bytes: usize,
    /// Serve `/metrics` without a token even when tokens are configured.
    pub public_metrics: bool,
    /// Client frames per second per connection, with bursts up to `burst`; `None` for no limit.
    pub rate_limit: Option<RateLimit>,
    /// At shutdown, how long turns in flight may run on before they are cancelled.
    pub shutdown_grace: Duration,
    /// An MCP config file (`{"mcpServers": {...}}`) whose servers' tools join the ToolChain.
    pub mcp_config: Option<PathBuf>,
    /// Longest tool result kept, in bytes; a longer one (built-in or MCP) is cut with a note
    /// before it becomes an event or reaches the model.
    pub max_tool_result_bytes: usize,
    /// How long one full-text search (a memory lookup, `graph_search`, `recall`, or a search
    /// of the API) may run; one that runs out answers with what it found so far.
    pub search_budget: Duration,
    /// How long a tool call that needs approval waits for a person before it is denied.
    pub approval_timeout: Duration,
}

/// A token bucket: `per_second` frames a second on average, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained frames per second.
    pub per_second: f64,
    /// Frames allowed at once.
    pub burst: f64,
}

impl RateLimit {
    /// The default: 100 frames a second, bursts of 200: far above what a person types, low
    /// enough to cut off a flood.
    pub const DEFAULT: RateLimit = RateLimit {
        per_second: 100.0,
        burst: 200.0,
    };
}

/// Reads a rate limit: `off`, `N` (frames per second, bursts of 2N) or `N/B`.
///
/// # Errors
///
/// A message saying what is wrong with the text.
pub fn parse_rate_limit(text: &str) -> Result<Option<RateLimit>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let (rate, burst) = text
        .split_once('/')
        .map_or((text, None), |(r, b)| (r, Some(b)));
    let number = |part: &str| -> Result<f64, String> {
        part.trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n > 0.0)
            .ok_or_else(|| format!("{text:?} is not a rate like 20, 20/40 or off"))
    };
    let per_second = number(rate)?;
    let burst = burst.map_or(Ok(per_second * 2.0), number)?;
    Ok(Some(RateLimit {
        per_second,
        burst: burst.max(1.0),
    }))
}

/// Which model backend a server runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelKind {
    /// The deterministic built-in model (`--model offline`).
    #[default]
    Offline,
    /// An OpenAI-compatible chat-completions server (`--model openai`): Ollama, llama.cpp's
    /// server, vLLM, OpenAI.
    OpenAi,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("sparky-data"),
            in_memory: false,
            database_url: None,
            store_pool: 8,
            max_store_bytes: None,
            max_steps: 8,
            context_tokens: None,
            system_prompt: None,
            model: ModelKind::Offline,
            model_url: "http://127.0.0.1:11434/v1".into(),
            model_names: Vec::new(),
            embedding_model: None,
            embedding_url: None,
            embedding_timeout: Duration::from_secs(10),
            api_key_env: None,
            model_connect_timeout: Duration::from_secs(10),
            model_read_timeout: Duration::from_secs(300),
            model_vision: false,
            idle_timeout: Duration::from_secs(60 * 60),
            retention: None,
            max_connections: 20_000,
            max_connections_per_session: 8,
            max_sessions: 100_000,
            max_conversations_per_principal: 50_000,
            new_conversation_rate: Some(RateLimit {
                per_second: 1.0,
                burst: 600.0,
            }),
            max_running_turns: 1_024,
            max_running_turns_per_principal: 256,
            max_frame_bytes: 1 << 20,
            max_text_chars: 100_000,
            event_log_capacity: 256,
            outbox_capacity: 1_024,
            ping_interval: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            auth_tokens: Vec::new(),
            token_names: Vec::new(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_connections_per_ip: 64,
            per_ip_loopback: false,
            max_pending_message_bytes: 64 << 20,
            public_metrics: false,
            rate_limit: Some(RateLimit::DEFAULT),
            shutdown_grace: Duration::from_secs(10),
            mcp_config: None,
            max_tool_result_bytes: 256 * 1024,
            search_budget: Duration::from_millis(200),
            approval_timeout: Duration::from_secs(5 * 60),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every field but the tokens, which are secrets: only their number is shown.
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("data_dir", &self.data_dir)
            .field("in_memory", &self.in_memory)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("store_pool", &self.store_pool)
            .field("max_steps", &self.max_steps)
            .field("model", &self.model)
            .field("model_url", &self.model_url)
            .field("model_names", &self.model_names)
            .field("embedding_model", &self.embedding_model)
            .field("embedding_url", &self.embedding_url)
            .field("embedding_timeout", &self.embedding_timeout)
            .field("api_key_env", &self.api_key_env)
            .field("model_connect_timeout", &self.model_connect_timeout)
            .field("model_read_timeout", &self.model_read_timeout)
            .field("model_vision", &self.model_vision)
            .field("idle_timeout", &self.idle_timeout)
            .field("retention", &self.retention)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_session",
                &self.max_connections_per_session,
            )
            .field("max_sessions", &self.max_sessions)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_text_chars", &self.max_text_chars)
            .field("event_log_capacity", &self.event_log_capacity)
            .field("outbox_capacity", &self.outbox_capacity)
            .field("ping_interval", &self.ping_interval)
            .field("write_timeout", &self.write_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field(
                "auth_tokens",
                &format_args!("[{} redacted]", self.auth_tokens.len()),
            )
            .field("allowed_origins", &self.allowed_origins)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("per_ip_loopback", &self.per_ip_loopback)
            .field("max_pending_message_bytes", &self.max_pending_message_bytes)
            .field("approval_timeout", &self.approval_timeout)
            .field("public_metrics", &self.public_metrics)
            .field("rate_limit", &self.rate_limit)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("mcp_config", &self.mcp_config)
            .finish()
    }
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let mut text = url.to_owned();
    if let Some(scheme_end) = text.find("://") {
        let rest = &text[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let start = scheme_end + 3 + colon + 1;
            text.replace_range(start..scheme_end + 3 + at, "***");
        }
    }
    // `password=` in a query string or in the key=value form.
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("password=") {
        let value = at + "password=".len();
        out.push_str(&rest[..value]);
        out.push_str("***");
        let end = rest[value..]
            .find(['&', ' '])
            .map_or(rest.len(), |end| value + end);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Reads a duration written as a number and a unit: `500ms`, `90s`, `60m`, `2h`, `1d`. A bare
/// number is seconds.
///
/// # Errors
///
/// A message saying what is wrong with the text.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 60m or 2h"))?;
    let millis_per_unit = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use ms, s, m, h or d"
            ));
        }
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rate_limits() {
        assert_eq!(parse_rate_limit("off"), Ok(None));
        assert_eq!(
            parse_rate_limit("5"),
            Ok(Some(RateLimit {
                per_second: 5.0,
                burst: 10.0
            }))
        );
        assert_eq!(
            parse_rate_limit("5/3"),
            Ok(Some(RateLimit {
                per_second: 5.0,
                burst: 3.0
            }))
        );
        assert!(parse_rate_limit("fast").is_err());
        assert!(parse_rate_limit("0").is_err());
    }

    #[test]
    fn debug_output_counts_tokens_without_showing_them() {
        let config = Config {
            auth_tokens: vec!["hunter2-secret".into()],
            ..Config::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert!(text.contains("[1 redacted]"), "{text}");
    }

    #[test]
    fn database_passwords_are_kept_out_of_messages() {
        assert_eq!(
            redact_url("postgres://ann:s3cret@db.example:5433/sparky"),
            "postgres://ann:***@db.example:5433/sparky"
        );
        assert_eq!(
            redact_url("postgres://ann@db/sparky?password=s3cret&sslmode=disable"),
            "postgres://ann@db/sparky?password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("host=db user=ann password=s3cret dbname=sparky"),
            "host=db user=ann password=*** dbname=sparky"
        );
        assert_eq!(redact_url("postgres://ann@db/x"), "postgres://ann@db/x");
        let config = Config {
            database_url: Some("postgres://ann:s3cret@db/sparky".into()),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn parses_durations_with_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("60m"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
