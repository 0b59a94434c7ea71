//! `Config`: everything a server can be told at start, each setting declared once with its flag,
//! help text, default and check (clap's derive). Plain data; depends on nothing in the crate.
//! The binary parses it from the command line; tests start from its defaults and change fields.
//!
//! Depends on nothing in the crate.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as _, FromArgMatches as _};

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

/// The settings of one server. Each field is declared once, here, with everything about it: its
/// flag, its help text (the doc comment, which `sparky --help` shows), its default and the check
/// its value must pass. `sparky` parses them from its flags; [`Config::default`] is what it runs
/// with when given none; tests start from that and change fields by hand.
///
/// Its `Debug` form shows how many tokens there are, never the tokens, and no database
/// password.
#[derive(Clone, clap::Args)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000", value_parser = parse_addr)]
    pub addr: SocketAddr,
    /// Directory for persistent data: the knowledge graph and durable sessions (SQLite).
    #[arg(long, default_value = "sparky-data")]
    pub data_dir: PathBuf,
    /// Keep everything in memory: no data directory is touched, nothing survives a restart.
    // It wins over `database_url`.
    #[arg(long, conflicts_with = "database_url")]
    pub in_memory: bool,
    /// Keep everything in PostgreSQL instead of SQLite: postgres://USER[:PASSWORD]@HOST[:PORT]/DB
    /// (default: the SPARKY_DATABASE_URL environment variable, else SQLite in --data-dir).
    // The binary reads the environment variable; `Debug` hides the password. The doc comment is
    // also the help text, which shows `[:PORT]` as it is.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long = "store", value_name = "URL")]
    pub database_url: Option<String>,
    /// With a PostgreSQL store: connections its pool may open for reads and graph writes,
    /// besides the one the journal writes with.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 8,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000)
    )]
    pub store_pool: usize,
    /// Model steps (model calls) allowed in one turn.
    #[arg(long, default_value_t = 8, value_parser = at_least_one::<usize>)]
    pub max_steps: usize,
    /// The model's context window in tokens (default: what llama.cpp's server reports, else
    /// 4096); older turns that do not fit are left out of what the model sees.
    // `None`: ask the server, else assume `model::openai::DEFAULT_CONTEXT_TOKENS`.
    #[arg(long, value_name = "N", value_parser = at_least_one::<usize>)]
    pub context_tokens: Option<usize>,
    /// The system message of conversations without a persona of their own; `{date}` becomes
    /// the date; "" sends none (default: a built-in one naming the tools and the date).
    #[arg(long, value_name = "TEXT")]
    pub system_prompt: Option<String>,
    /// The model: the built-in offline one, or an OpenAI-compatible server (Ollama, llama.cpp,
    /// vLLM, OpenAI).
    #[arg(long, value_enum, default_value = "offline")]
    pub model: ModelKind,
    /// With --model openai: the API's base URL, up to and including /v1.
    #[arg(long, default_value = "http://127.0.0.1:11434/v1")]
    pub model_url: String,
    /// With --model openai: the model to ask for, e.g. llama3.1 (required); repeat it to let
    /// each new conversation choose (the first is the default), or `auto` for every model the
    /// server lists.
    #[arg(long = "model-name", value_name = "NAME")]
    pub model_names: Vec<String>,
    /// Turns on semantic memory: the embedding model to ask for (POST /v1/embeddings), e.g.
    /// nomic-embed-text; facts are then found by meaning as well as by keywords.
    #[arg(long, value_name = "NAME")]
    pub embedding_model: Option<String>,
    /// With --embedding-model: the embedding server's base URL, up to and including /v1
    /// (default: --model-url).
    #[arg(long, value_name = "URL", requires = "embedding_model")]
    pub embedding_url: Option<String>,
    /// With --embedding-model: how long one embedding request may take, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub embedding_timeout: Duration,
    /// With --model openai: the environment variable holding the API key (read at start).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// How long connecting to the model server may take, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub model_connect_timeout: Duration,
    /// How long the model server may stay silent before or while it answers, e.g. 300s.
    #[arg(long, default_value = "300s", value_parser = positive_duration)]
    pub model_read_timeout: Duration,
    /// With --model openai: the model takes images, so the images tools return are sent to it
    /// (as image_url content parts); without it, it reads a note for each.
    #[arg(long)]
    pub model_vision: bool,
    /// How long a conversation with no connection and no turn stays in memory, e.g. 90s, 60m.
    /// It only frees memory: the conversation stays stored and comes back on the next connect.
    #[arg(long, alias = "session-timeout", default_value = "60m", value_parser = positive_duration)]
    pub idle_timeout: Duration,
    /// Delete conversations with no activity for this long, e.g. 90d (default: keep them until
    /// their owner deletes them).
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub retention: Option<Duration>,
    /// Open WebSocket connections at most; an upgrade past it gets HTTP 503 (default: 20000,
    /// or fewer when the open-file limit allows fewer). A tenth is kept for connections that
    /// authenticated; one that has not yet is let go for a newer one when the rest is taken.
    // The binary lowers the default, never a value given on the command line.
    #[arg(
        long,
        default_value_t = 20_000,
        hide_default_value = true,
        value_parser = at_least_one::<usize>
    )]
    pub max_connections: usize,
    /// Live connections per session; one more takes over from the oldest.
    #[arg(long, default_value_t = 8, value_parser = at_least_one::<usize>)]
    pub max_connections_per_session: usize,
    /// Sessions at most; a connect past it gets server_busy.
    #[arg(long, default_value_t = 100_000, value_parser = at_least_one::<usize>)]
    pub max_sessions: usize,
    /// Cap the store at this many MiB; past it, new turns are refused as on a full disk
    /// (default: only the disk's size).
    // Held in bytes.
    #[arg(long = "max-store-mib", value_name = "MIB", value_parser = mib_as_bytes)]
    pub max_store_bytes: Option<u64>,
    /// The largest file one upload may be, in MiB; a larger one gets 413.
    // Held in bytes.
    #[arg(long = "max-upload-mib", value_name = "MIB", default_value = "25", value_parser = mib_as_bytes)]
    pub max_upload_bytes: u64,
    /// The most MiB one principal's files may hold (identical files counted once); an upload
    /// past it gets 507. `off`: no quota.
    // Held in bytes; the full path keeps clap from reading `Option` as "the flag may be absent".
    #[arg(long = "file-quota-mib", value_name = "MIB|off", default_value = "1024", value_parser = mib_or_off)]
    pub file_quota_bytes: std::option::Option<u64>,
    /// How long reading one document's text may take (PDF, HTML, DOCX), e.g. 30s; past it the
    /// file gets a note that its text could not be read.
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    pub extract_timeout: Duration,
    /// The most memory reading one document's text may use, in MiB (the reader is a child
    /// process held to it).
    #[arg(long = "extract-memory-mib", value_name = "MIB", default_value = "512", value_parser = mib_as_bytes)]
    pub extract_memory_bytes: u64,
    /// The program that reads documents' text, run as `PROGRAM extract-text` (default: this
    /// binary). Tests that run the server in process point it at the built `sparky`.
    #[arg(long, value_name = "PROGRAM", hide = true)]
    pub extractor: Option<PathBuf>,
    /// Conversations one principal (token) may keep; a connect that would create one more
    /// gets server_busy.
    #[arg(long, default_value_t = 50_000, value_parser = at_least_one::<u64>)]
    pub max_conversations_per_principal: u64,
    /// New conversations per second per principal, as N, N/BURST or off.
    // The full path keeps clap from reading `Option` as "the flag may be absent": `off` is `None`.
    #[arg(long, default_value = "1/600", value_parser = parse_rate_limit)]
    pub new_conversation_rate: std::option::Option<RateLimit>,
    /// Turns running at once on the whole server; one more gets server_busy.
    #[arg(long, default_value_t = 1_024, value_parser = at_least_one::<usize>)]
    pub max_running_turns: usize,
    /// Turns one principal (token) may run at once; one more gets server_busy.
    #[arg(long, default_value_t = 256, value_parser = at_least_one::<usize>)]
    pub max_running_turns_per_principal: usize,
    /// Turns a user account may start a day (UTC), unless an admin set the user's own; one
    /// more is closed at once with error quota. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub daily_turns: u64,
    /// Model tokens (prompt and completion) a user account's answers may take a day (UTC),
    /// unless an admin set the user's own; a turn past it gets error quota. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub daily_tokens: u64,
    /// Largest WebSocket frame or message in bytes; a larger one closes the connection (1009).
    #[arg(long, default_value_t = 1 << 20, value_parser = at_least_one::<usize>)]
    pub max_frame_bytes: usize,
    /// Longest message text in characters; a longer one gets too_large.
    #[arg(long, default_value_t = 100_000, value_parser = at_least_one::<usize>)]
    pub max_text_chars: usize,
    /// Events a live conversation keeps in memory; a replay of older ones reads the store.
    // Besides a bound in bytes.
    #[arg(long, default_value_t = 256, value_parser = at_least_one::<usize>)]
    pub event_log_capacity: usize,
    /// Frames queued for one connection at most; a connection that falls further behind is
    /// closed and catches up by replay when it reconnects. No flag.
    #[arg(skip = 1_024_usize)]
    pub outbox_capacity: usize,
    /// How long a connection may be quiet before it is pinged, e.g. 30s.
    // It is dropped when the next interval passes with no answer.
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    pub ping_interval: Duration,
    /// How long a write to a client may stall before the connection is dropped.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub write_timeout: Duration,
    /// How long a new connection has to send its request head; with tokens, also how long a
    /// WebSocket has to present a valid one before it is closed (1008).
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub handshake_timeout: Duration,
    /// A token clients must present (repeatable). Tokens are also read from
    /// --auth-token-file and from the SPARKY_AUTH_TOKENS environment variable (comma-separated),
    /// which keep them out of `ps`.
    // Any one of them will do; none means no authentication. The binary adds those of the file
    // and the variable.
    #[arg(long = "auth-token", value_name = "TOKEN")]
    pub auth_tokens: Vec<String>,
    /// Readable names of some of those tokens' principals, as `(token, name)`: for logs and the
    /// API. Ownership goes by the token, never by the name. No flag: `name:token` lines of
    /// `--auth-token-file`.
    #[arg(skip)]
    pub token_names: Vec<(String, String)>,
    /// An origin, besides the server's own, whose web pages may open a WebSocket (repeatable),
    /// e.g. https://chat.example.com.
    // The help text shows the URL as it is.
    #[allow(rustdoc::bare_urls)]
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// A host name requests may name in Host (repeatable, any port), besides localhost,
    /// loopback addresses and the bound address, e.g. chat.example.com. Others get 421.
    // HTTP 421 for any other `Host` is what stops DNS rebinding.
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// The URL people reach the server at, e.g. https://chat.example.com behind a reverse
    /// proxy. With https, the sign-in cookie is marked Secure (sent over HTTPS only).
    // The help text shows the URL as it is.
    #[allow(rustdoc::bare_urls)]
    #[arg(long = "public-url", value_name = "URL")]
    pub public_url: Option<String>,
    /// Open connections from one IP address at most (0: no cap); one more gets HTTP 429.
    /// Loopback peers are exempt unless --per-ip-loopback.
    // HTTP and WebSocket connections alike.
    #[arg(long, default_value_t = 64)]
    pub max_connections_per_ip: usize,
    /// Apply --max-connections-per-ip to loopback peers too (not behind a local reverse proxy,
    /// whose clients all arrive from loopback).
    #[arg(long)]
    pub per_ip_loopback: bool,
    /// The address of a reverse proxy in front of the server (repeatable), e.g. 127.0.0.1.
    /// For connections from it, the client's address is the last one in X-Forwarded-For (the
    /// one the proxy added), for --max-connections-per-ip and the log; the header is ignored
    /// from anyone else.
    #[arg(long = "trusted-proxy", value_name = "ADDR")]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Bytes that unfinished incoming messages may hold, all connections together; a connection
    /// that would pass it is closed with 1013.
    #[arg(long, default_value_t = 64 << 20, value_parser = at_least_one::<usize>)]
    pub max_pending_message_bytes: usize,
    /// Serve /metrics without a token even when tokens are configured.
    #[arg(long)]
    pub public_metrics: bool,
    /// Client frames per second per connection: N (bursts of 2N), N/BURST, or off.
    // The default is far above what a person types and low enough to cut off a flood. The full
    // path keeps clap from reading `Option` as "the flag may be absent": `off` is `None`.
    #[arg(long, default_value = "100/200", value_parser = parse_rate_limit)]
    pub rate_limit: std::option::Option<RateLimit>,
    /// At SIGINT or SIGTERM, how long turns in flight may finish before they are cancelled.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// An MCP config file ({"mcpServers": {"name": {"command", "args", "env"}}}): each server is
    /// started and its tools join the bot's tools as <server>__<tool>.
    // The help text shows `<server>` as it is.
    #[allow(rustdoc::invalid_html_tags)]
    #[arg(long, value_name = "FILE")]
    pub mcp_config: Option<PathBuf>,
    /// Longest tool result kept, in bytes; a longer one is cut, with a note saying so, before
    /// the model or a client sees it.
    // Built-in and MCP tools alike, before the result becomes an event.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 256 * 1024,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..)
    )]
    pub max_tool_result_bytes: usize,
    /// How long one full-text search (memory lookup, graph search, API search) may run; one
    /// that runs out answers with what it found so far, e.g. 200ms.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = positive_duration)]
    pub search_budget: Duration,
    /// How long a tool call that needs approval (see the MCP config's "approve") waits for a
    /// person to allow it; then it is denied, e.g. 5m.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = positive_duration)]
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

/// A flag's (or a config file's) value that cannot be read; the text says what is wrong with it
/// and what would be right, as `sparky --help` and clap show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue(pub String);

impl std::fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidValue {}

/// Reads a rate limit: `off`, `N` (frames per second, bursts of 2N) or `N/B`.
///
/// # Errors
///
/// [`InvalidValue`], saying what is wrong with the text.
pub fn parse_rate_limit(text: &str) -> Result<Option<RateLimit>, InvalidValue> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let (rate, burst) = text
        .split_once('/')
        .map_or((text, None), |(r, b)| (r, Some(b)));
    let number = |part: &str| -> Result<f64, InvalidValue> {
        part.trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n > 0.0)
            .ok_or_else(|| InvalidValue(format!("{text:?} is not a rate like 20, 20/40 or off")))
    };
    let per_second = number(rate)?;
    let burst = burst.map_or(Ok(per_second * 2.0), number)?;
    Ok(Some(RateLimit {
        per_second,
        burst: burst.max(1.0),
    }))
}

/// Which model backend a server runs: the values of `--model`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// The deterministic built-in model.
    #[default]
    Offline,
    /// An OpenAI-compatible chat-completions server.
    // Ollama, llama.cpp's server, vLLM, OpenAI.
    #[value(name = "openai")]
    OpenAi,
}

impl Default for Config {
    /// The flags' defaults: what `sparky` runs with when given no flags.
    // The defaults are constants, and a unit test parses them: this cannot fail at run time.
    #[allow(clippy::expect_used)]
    fn default() -> Self {
        let no_flags = Config::augment_args(clap::Command::new("sparky"))
            .try_get_matches_from(["sparky"])
            .and_then(|matches| Config::from_arg_matches(&matches));
        no_flags.expect("the defaults of Config's flags are valid")
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every field as itself but the secrets. The pattern names every field, so a new one
        // that is not listed here does not compile.
        macro_rules! fields_and_secrets {
            ($($field:ident),* $(,)?) => {{
                let Config { $($field,)* database_url, auth_tokens, token_names } = self;
                let mut out = f.debug_struct("Config");
                $(out.field(stringify!($field), $field);)*
                out.field("database_url", &database_url.as_deref().map(redact_url))
                    .field("auth_tokens", &format_args!("[{} redacted]", auth_tokens.len()))
                    .field("token_names", &format_args!("[{} redacted]", token_names.len()))
                    .finish()
            }};
        }
        fields_and_secrets!(
            addr,
            data_dir,
            in_memory,
            store_pool,
            max_steps,
            context_tokens,
            system_prompt,
            model,
            model_url,
            model_names,
            embedding_model,
            embedding_url,
            embedding_timeout,
            api_key_env,
            model_connect_timeout,
            model_read_timeout,
            model_vision,
            idle_timeout,
            retention,
            max_connections,
            max_connections_per_session,
            max_sessions,
            max_store_bytes,
            max_upload_bytes,
            file_quota_bytes,
            extract_timeout,
            extract_memory_bytes,
            extractor,
            max_conversations_per_principal,
            new_conversation_rate,
            max_running_turns,
            max_running_turns_per_principal,
            daily_turns,
            daily_tokens,
            max_frame_bytes,
            max_text_chars,
            event_log_capacity,
            outbox_capacity,
            ping_interval,
            write_timeout,
            handshake_timeout,
            allowed_origins,
            allowed_hosts,
            public_url,
            max_connections_per_ip,
            per_ip_loopback,
            trusted_proxies,
            max_pending_message_bytes,
            public_metrics,
            rate_limit,
            shutdown_grace,
            mcp_config,
            max_tool_result_bytes,
            search_budget,
            approval_timeout,
        )
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

/// Reads a duration written as a number and a unit, as humantime reads it: `500ms`, `90s`, `60m`,
/// `2h`, `1d`, or several at once (`1h 30m`). A bare number is seconds.
///
/// # Errors
///
/// [`InvalidValue`], saying what is wrong with the text.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        return text
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| InvalidValue(format!("{text:?} is too long")));
    }
    humantime::parse_duration(text).map_err(|e| {
        InvalidValue(match e {
            humantime::DurationError::UnknownUnit { unit, .. } => {
                format!("unknown unit {unit:?} in {text:?}; use ms, s, m, h or d")
            }
            humantime::DurationError::NumberOverflow => format!("{text:?} is too long"),
            _ => format!("{text:?} is not a duration like 90s, 60m or 2h"),
        })
    })
}

/// `HOST:PORT` where HOST is an address or a name (`localhost:8000`); a name that resolves to
/// several addresses listens on the first IPv4 one.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?} is not HOST:PORT ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?} names no address"))
}

/// A count that must be at least 1: a zero would make the server refuse everything (every
/// turn past `--max-steps 0` fails), so it is refused at start instead.
fn at_least_one<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
{
    match text.trim().parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        Ok(_) => Err("must be at least 1".to_owned()),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

/// A number of MiB as bytes, or `off` for none.
fn mib_or_off(text: &str) -> Result<Option<u64>, String> {
    if text == "off" {
        return Ok(None);
    }
    mib_as_bytes(text).map(Some)
}

/// A number of MiB, at least 1, as bytes.
fn mib_as_bytes(text: &str) -> Result<u64, String> {
    at_least_one::<u64>(text).map(|mib| mib.saturating_mul(1 << 20))
}

/// A duration that must be longer than zero.
fn positive_duration(text: &str) -> Result<Duration, InvalidValue> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(InvalidValue("must be longer than zero".to_owned()));
    }
    Ok(duration)
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
        assert_eq!(parse_duration(" 1d "), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90 s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        // humantime knows weeks; a unit it does not know is named in the error.
        assert_eq!(
            parse_duration("5 weeks"),
            Ok(Duration::from_secs(5 * 7 * 86_400))
        );
        assert_eq!(
            parse_duration("5 fortnights"),
            Err(InvalidValue(
                r#"unknown unit "fortnights" in "5 fortnights"; use ms, s, m, h or d"#.into()
            ))
        );
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
    }

    #[test]
    fn defaults_are_the_flags_defaults() {
        let config = Config::default();
        assert_eq!(config.addr, SocketAddr::from(([127, 0, 0, 1], 8000)));
        assert_eq!(config.data_dir, PathBuf::from("sparky-data"));
        assert_eq!(config.model, ModelKind::Offline);
        assert_eq!(config.max_connections, 20_000);
        assert_eq!(config.max_frame_bytes, 1 << 20);
        assert_eq!(config.outbox_capacity, 1_024);
        assert_eq!(config.idle_timeout, Duration::from_secs(3600));
        assert_eq!(config.search_budget, Duration::from_millis(200));
        assert_eq!(config.max_store_bytes, None);
        assert_eq!(config.retention, None);
        assert_eq!(parse_rate_limit("100/200"), Ok(config.rate_limit));
        assert_eq!(parse_rate_limit("1/600"), Ok(config.new_conversation_rate));
        assert!(config.auth_tokens.is_empty() && config.token_names.is_empty());
    }

    #[test]
    fn flags_fill_the_fields_they_name() {
        let matches = Config::augment_args(clap::Command::new("sparky"))
            .try_get_matches_from([
                "sparky",
                "--store",
                "postgres://db/x",
                "--max-store-mib",
                "2",
                "--model",
                "openai",
                "--model-name",
                "a",
                "--model-name",
                "b",
                "--session-timeout",
                "90s",
                "--rate-limit",
                "off",
            ])
            .unwrap();
        let config = Config::from_arg_matches(&matches).unwrap();
        assert_eq!(config.database_url.as_deref(), Some("postgres://db/x"));
        assert_eq!(config.max_store_bytes, Some(2 << 20));
        assert_eq!(config.model, ModelKind::OpenAi);
        assert_eq!(config.model_names, ["a", "b"]);
        assert_eq!(config.idle_timeout, Duration::from_secs(90));
        assert_eq!(config.rate_limit, None);
    }
}
