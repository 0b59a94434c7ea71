//! The `sparky` binary: reads flags, sets up logging, binds, and runs the server. No logic of
//! its own.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};
use sparky::redact::Redactor;

use sparky::config::{Config, ModelKind, RateLimit, parse_duration, parse_rate_limit};
use sparky::model::ModelBackend;
use sparky::model::offline::OfflineModel;
use sparky::model::remote::{RemoteModel, RemoteOptions};

/// A self-hosted chat-agent server: WebSocket chat with a thinking, tool-using bot.
#[derive(Debug, Parser)]
#[command(name = "sparky", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// Directory for persistent data: the knowledge graph and durable sessions (SQLite).
    #[arg(long, default_value = "sparky-data")]
    data_dir: PathBuf,
    /// Keep everything in memory: no data directory is touched, nothing survives a restart.
    #[arg(long)]
    in_memory: bool,
    /// Model steps (model calls) allowed in one turn.
    #[arg(long, default_value_t = Config::default().max_steps)]
    max_steps: usize,
    /// The model: the built-in offline one, or an OpenAI-compatible server (Ollama, llama.cpp,
    /// vLLM, OpenAI).
    #[arg(long, value_enum, default_value = "offline")]
    model: ModelArg,
    /// With --model openai: the API's base URL, up to and including /v1.
    #[arg(long, default_value_t = Config::default().model_url)]
    model_url: String,
    /// With --model openai: the model to ask for, e.g. llama3.1 (required).
    #[arg(long, value_name = "NAME")]
    model_name: Option<String>,
    /// With --model openai: the environment variable holding the API key (read at start).
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// How long connecting to the model server may take, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    model_connect_timeout: Duration,
    /// How long the model server may stay silent before or while it answers, e.g. 300s.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    model_read_timeout: Duration,
    /// How long a conversation with no connection and no turn stays in memory, e.g. 90s, 60m.
    /// It only frees memory: the conversation stays stored and comes back on the next connect.
    #[arg(long, alias = "session-timeout", default_value = "60m", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Delete conversations with no activity for this long, e.g. 90d (default: keep them until
    /// their owner deletes them).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retention: Option<Duration>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: LevelFilter,
    /// Open WebSocket connections at most; an upgrade past it gets HTTP 503.
    #[arg(long, default_value_t = Config::default().max_connections)]
    max_connections: usize,
    /// Live connections per session; one more takes over from the oldest.
    #[arg(long, default_value_t = Config::default().max_connections_per_session)]
    max_connections_per_session: usize,
    /// Sessions at most; a connect past it gets server_busy.
    #[arg(long, default_value_t = Config::default().max_sessions)]
    max_sessions: usize,
    /// Cap the store at this many MiB; past it, new turns are refused as on a full disk
    /// (default: only the disk's size).
    #[arg(long, value_name = "MIB")]
    max_store_mib: Option<u64>,
    /// Conversations one principal (token) may keep; a connect that would create one more
    /// gets server_busy.
    #[arg(long, default_value_t = Config::default().max_conversations_per_principal)]
    max_conversations_per_principal: u64,
    /// New conversations per second per principal, as N, N/BURST or off.
    #[arg(long, default_value = "1/600", value_parser = parse_rate_setting)]
    new_conversation_rate: RateSetting,
    /// Turns running at once on the whole server; one more gets server_busy.
    #[arg(long, default_value_t = Config::default().max_running_turns)]
    max_running_turns: usize,
    /// Turns one principal (token) may run at once; one more gets server_busy.
    #[arg(long, default_value_t = Config::default().max_running_turns_per_principal)]
    max_running_turns_per_principal: usize,
    /// Largest WebSocket frame or message in bytes; a larger one closes the connection (1009).
    #[arg(long, default_value_t = Config::default().max_frame_bytes)]
    max_frame_bytes: usize,
    /// Longest message text in characters; a longer one gets too_large.
    #[arg(long, default_value_t = Config::default().max_text_chars)]
    max_text_chars: usize,
    /// Events a live conversation keeps in memory; a replay of older ones reads the store.
    #[arg(long, default_value_t = Config::default().event_log_capacity)]
    event_log_capacity: usize,
    /// How long a connection may be quiet before it is pinged, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    ping_interval: Duration,
    /// How long a write to a client may stall before the connection is dropped.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    write_timeout: Duration,
    /// How long a new connection has to send its request head; with tokens, also how long a
    /// WebSocket has to present a valid one before it is closed (1008).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// A token clients must present (repeatable). Tokens are also read from
    /// --auth-token-file and from the SPARKY_AUTH_TOKENS environment variable (comma-separated),
    /// which keep them out of `ps`.
    #[arg(long = "auth-token", value_name = "TOKEN")]
    auth_tokens: Vec<String>,
    /// A file with one token per line (blank lines and lines starting with # are ignored).
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// An origin, besides the server's own, whose web pages may open a WebSocket (repeatable),
    /// e.g. https://chat.example.com.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// A host name requests may name in Host (repeatable, any port), besides localhost,
    /// loopback addresses and the bound address, e.g. chat.example.com. Others get 421.
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Open connections from one IP address at most (0: no cap); one more gets HTTP 429.
    /// Loopback peers are exempt unless --per-ip-loopback.
    #[arg(long, default_value_t = Config::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Apply --max-connections-per-ip to loopback peers too (not behind a local reverse proxy,
    /// whose clients all arrive from loopback).
    #[arg(long)]
    per_ip_loopback: bool,
    /// Bytes that unfinished incoming messages may hold, all connections together; a connection
    /// that would pass it is closed with 1013.
    #[arg(long, default_value_t = Config::default().max_pending_message_bytes)]
    max_pending_message_bytes: usize,
    /// Serve /metrics without a token even when tokens are configured.
    #[arg(long)]
    public_metrics: bool,
    /// Client frames per second per connection: N (bursts of 2N), N/BURST, or off.
    #[arg(long, default_value = "100/200", value_parser = parse_rate_setting)]
    rate_limit: RateSetting,
    /// At SIGINT or SIGTERM, how long turns in flight may finish before they are cancelled.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// An MCP config file ({"mcpServers": {"name": {"command", "args", "env"}}}): each server is
    /// started and its tools join the bot's tools as <server>__<tool>.
    #[arg(long, value_name = "FILE")]
    mcp_config: Option<PathBuf>,
    /// Longest tool result kept, in bytes; a longer one is cut, with a note saying so, before
    /// the model or a client sees it.
    #[arg(
        long,
        value_name = "N",
        default_value_t = Config::default().max_tool_result_bytes,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..)
    )]
    max_tool_result_bytes: usize,
    /// How long one full-text search (memory lookup, graph search, API search) may run; one
    /// that runs out answers with what it found so far, e.g. 200ms.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = parse_duration)]
    search_budget: Duration,
}

impl Args {
    fn into_config(self) -> Config {
        Config {
            addr: self.addr,
            data_dir: self.data_dir,
            in_memory: self.in_memory,
            max_steps: self.max_steps,
            model: match self.model {
                ModelArg::Offline => ModelKind::Offline,
                ModelArg::Openai => ModelKind::OpenAi,
            },
            model_url: self.model_url,
            model_name: self.model_name,
            api_key_env: self.api_key_env,
            model_connect_timeout: self.model_connect_timeout,
            model_read_timeout: self.model_read_timeout,
            idle_timeout: self.idle_timeout,
            retention: self.retention,
            max_connections: self.max_connections,
            max_connections_per_session: self.max_connections_per_session,
            max_sessions: self.max_sessions,
            max_store_bytes: self.max_store_mib.map(|mib| mib.saturating_mul(1 << 20)),
            max_conversations_per_principal: self.max_conversations_per_principal,
            new_conversation_rate: self.new_conversation_rate.0,
            max_running_turns: self.max_running_turns,
            max_running_turns_per_principal: self.max_running_turns_per_principal,
            max_frame_bytes: self.max_frame_bytes,
            max_text_chars: self.max_text_chars,
            event_log_capacity: self.event_log_capacity,
            ping_interval: self.ping_interval,
            write_timeout: self.write_timeout,
            handshake_timeout: self.handshake_timeout,
            auth_tokens: self.auth_tokens,
            allowed_origins: self.allowed_origins,
            allowed_hosts: self.allowed_hosts,
            max_connections_per_ip: self.max_connections_per_ip,
            per_ip_loopback: self.per_ip_loopback,
            max_pending_message_bytes: self.max_pending_message_bytes,
            public_metrics: self.public_metrics,
            rate_limit: self.rate_limit.0,
            shutdown_grace: self.shutdown_grace,
            mcp_config: self.mcp_config,
            max_tool_result_bytes: self.max_tool_result_bytes,
            search_budget: self.search_budget,
            ..Config::default()
        }
    }
}

/// Raises the soft open-file limit to the hard one: each WebSocket holds one descriptor (its
/// socket). Warns when even the hard limit is too low for `max_connections`.
fn raise_open_file_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            log::warn!("server: cannot raise the open-file limit: {e}");
        }
    }
    let available = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let needed = max_connections as u64 + 64;
    if available < needed {
        log::warn!(
            "server: the open-file limit is {available}; {max_connections} connections need \
             about {needed} (one descriptor each). Past it, new connections wait in the listen queue."
        );
    }
}

/// A parsed rate (`--rate-limit`, `--new-conversation-rate`): a newtype, because clap reads a bare `Option` field as "flag may be
/// absent" rather than as the parsed value.
#[derive(Clone, Copy, Debug)]
struct RateSetting(Option<RateLimit>);

fn parse_rate_setting(text: &str) -> Result<RateSetting, String> {
    parse_rate_limit(text).map(RateSetting)
}

/// Adds the tokens of `file` and of `SPARKY_AUTH_TOKENS` to those given with --auth-token.
fn gather_tokens(config: &mut Config, file: Option<&std::path::Path>) -> Result<(), String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --auth-token-file {}: {e}", path.display()))?;
        let tokens = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        config.auth_tokens.extend(tokens.map(str::to_owned));
    }
    if let Ok(list) = std::env::var("SPARKY_AUTH_TOKENS") {
        let tokens = list.split(',').map(str::trim).filter(|t| !t.is_empty());
        config.auth_tokens.extend(tokens.map(str::to_owned));
    }
    Ok(())
}

/// The `--model` choices.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ModelArg {
    /// The deterministic built-in model.
    Offline,
    /// An OpenAI-compatible chat-completions server.
    Openai,
}

/// The model backend `config` asks for. The API key is read from its environment variable
/// here, once, and never logged.
fn build_model(config: &Config) -> Result<Arc<dyn ModelBackend>, String> {
    if config.model == ModelKind::Offline {
        return Ok(Arc::new(OfflineModel));
    }
    let name = config
        .model_name
        .clone()
        .filter(|name| !name.trim().is_empty())
        .ok_or("--model openai needs --model-name (e.g. llama3.1)")?;
    let mut options = RemoteOptions::new(config.model_url.clone(), name);
    options.connect_timeout = config.model_connect_timeout;
    options.read_timeout = config.model_read_timeout;
    if let Some(var) = &config.api_key_env {
        match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => options.api_key = Some(key.trim().to_owned()),
            _ => return Err(format!("--api-key-env {var}: the variable is not set")),
        }
    }
    let model = RemoteModel::new(options);
    log::info!(
        "model: {} at {}{}",
        model.name(),
        model.endpoint(),
        if config.api_key_env.is_some() {
            " (with an API key)"
        } else {
            ""
        }
    );
    Ok(Arc::new(model))
}

/// Sends logs to stderr (stdout carries only the `listening on` line), with every token taken
/// out of them at every level.
fn init_logging(level: LevelFilter, tokens: &[String]) {
    let log_config = ConfigBuilder::new()
        .set_thread_level(LevelFilter::Off)
        .build();
    let terminal = TermLogger::new(level, log_config, TerminalMode::Stderr, ColorChoice::Auto);
    let logger = Redactor::new(terminal, tokens.iter().cloned());
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(level);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let log_level = args.log_level;
    let token_file = args.auth_token_file.clone();
    let mut config = args.into_config();
    if let Err(e) = gather_tokens(&mut config, token_file.as_deref()) {
        eprintln!("sparky: {e}");
        return ExitCode::FAILURE;
    }
    // Once the tokens are known, so that the logger can keep them out.
    init_logging(log_level, &config.auth_tokens);
    if config.auth_tokens.is_empty() && !config.addr.ip().is_loopback() {
        log::warn!(
            "server: listening on {} with no --auth-token: anyone who can reach this address can \
             chat and use the tools",
            config.addr
        );
    }
    raise_open_file_limit(config.max_connections);
    let grace = config.shutdown_grace;
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("sparky: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };

    let listener = match sparky::bind(config.addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("sparky: cannot listen on {}: {e}", config.addr);
            return ExitCode::FAILURE;
        }
    };
    let model = match build_model(&config) {
        Ok(model) => model,
        Err(e) => {
            eprintln!("sparky: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = match sparky::server::spawn_with(listener, config, model) {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("sparky: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on http://{}", handle.addr());
    let _ = std::io::stdout().flush();
    if let Some(signal) = signals.forever().next() {
        log::info!("server: signal {signal}; shutting down (grace {grace:?})");
    }
    handle.shutdown_gracefully(grace);
    ExitCode::SUCCESS
}
