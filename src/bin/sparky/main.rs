//! The `sparky` binary: reads flags, sets up logging, binds, and runs the server. No logic of
//! its own.

mod check;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};
use sparky::common::redact::Redactor;

use sparky::common::config::{
    Config, DESCRIPTORS_PER_CONNECTION, ModelKind, RESERVED_DESCRIPTORS, RateLimit,
    connections_for, parse_duration, parse_rate_limit,
};
use sparky::model::ModelBackend;
use sparky::model::offline::OfflineModel;
use sparky::model::openai::{AUTO_MODELS, RemoteModel, RemoteOptions};

/// A self-hosted chat-agent server: WebSocket chat with a thinking, tool-using bot.
#[derive(Debug, Parser)]
#[command(name = "sparky", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000", value_parser = parse_addr)]
    addr: SocketAddr,
    /// Directory for persistent data: the knowledge graph and durable sessions (SQLite).
    #[arg(long, default_value = "sparky-data")]
    data_dir: PathBuf,
    /// Keep everything in memory: no data directory is touched, nothing survives a restart.
    #[arg(long, conflicts_with = "store")]
    in_memory: bool,
    /// Keep everything in PostgreSQL instead of SQLite: postgres://USER[:PASSWORD]@HOST[:PORT]/DB
    /// (default: the SPARKY_DATABASE_URL environment variable, else SQLite in --data-dir).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// With a PostgreSQL store: connections its pool may open for reads and graph writes,
    /// besides the one the journal writes with.
    #[arg(
        long,
        value_name = "N",
        default_value_t = Config::default().store_pool,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000)
    )]
    store_pool: usize,
    /// Model steps (model calls) allowed in one turn.
    #[arg(long, default_value_t = Config::default().max_steps, value_parser = at_least_one::<usize>)]
    max_steps: usize,
    /// The model's context window in tokens (default: what llama.cpp's server reports, else
    /// 4096); older turns that do not fit are left out of what the model sees.
    #[arg(long, value_name = "N", value_parser = at_least_one::<usize>)]
    context_tokens: Option<usize>,
    /// The system message of conversations without a persona of their own; `{date}` becomes
    /// the date; "" sends none (default: a built-in one naming the tools and the date).
    #[arg(long, value_name = "TEXT", conflicts_with = "system_prompt_file")]
    system_prompt: Option<String>,
    /// Read the system prompt from FILE.
    #[arg(long, value_name = "FILE")]
    system_prompt_file: Option<PathBuf>,
    /// The model: the built-in offline one, or an OpenAI-compatible server (Ollama, llama.cpp,
    /// vLLM, OpenAI).
    #[arg(long, value_enum, default_value = "offline")]
    model: ModelArg,
    /// With --model openai: the API's base URL, up to and including /v1.
    #[arg(long, default_value_t = Config::default().model_url)]
    model_url: String,
    /// With --model openai: the model to ask for, e.g. llama3.1 (required); repeat it to let
    /// each new conversation choose (the first is the default), or `auto` for every model the
    /// server lists.
    #[arg(long, value_name = "NAME")]
    model_name: Vec<String>,
    /// Turns on semantic memory: the embedding model to ask for (POST /v1/embeddings), e.g.
    /// nomic-embed-text; facts are then found by meaning as well as by keywords.
    #[arg(long, value_name = "NAME")]
    embedding_model: Option<String>,
    /// With --embedding-model: the embedding server's base URL, up to and including /v1
    /// (default: --model-url).
    #[arg(long, value_name = "URL", requires = "embedding_model")]
    embedding_url: Option<String>,
    /// With --embedding-model: how long one embedding request may take, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    embedding_timeout: Duration,
    /// With --model openai: the environment variable holding the API key (read at start).
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// How long connecting to the model server may take, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    model_connect_timeout: Duration,
    /// How long the model server may stay silent before or while it answers, e.g. 300s.
    #[arg(long, default_value = "300s", value_parser = positive_duration)]
    model_read_timeout: Duration,
    /// With --model openai: the model takes images, so the images tools return are sent to it
    /// (as image_url content parts); without it, it reads a note for each.
    #[arg(long)]
    model_vision: bool,
    /// How long a conversation with no connection and no turn stays in memory, e.g. 90s, 60m.
    /// It only frees memory: the conversation stays stored and comes back on the next connect.
    #[arg(long, alias = "session-timeout", default_value = "60m", value_parser = positive_duration)]
    idle_timeout: Duration,
    /// Delete conversations with no activity for this long, e.g. 90d (default: keep them until
    /// their owner deletes them).
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    retention: Option<Duration>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: LevelFilter,
    /// Open WebSocket connections at most; an upgrade past it gets HTTP 503 (default: 20000,
    /// or fewer when the open-file limit allows fewer).
    #[arg(long, value_parser = at_least_one::<usize>)]
    max_connections: Option<usize>,
    /// Live connections per session; one more takes over from the oldest.
    #[arg(long, default_value_t = Config::default().max_connections_per_session, value_parser = at_least_one::<usize>)]
    max_connections_per_session: usize,
    /// Sessions at most; a connect past it gets server_busy.
    #[arg(long, default_value_t = Config::default().max_sessions, value_parser = at_least_one::<usize>)]
    max_sessions: usize,
    /// Cap the store at this many MiB; past it, new turns are refused as on a full disk
    /// (default: only the disk's size).
    #[arg(long, value_name = "MIB", value_parser = at_least_one::<u64>)]
    max_store_mib: Option<u64>,
    /// Conversations one principal (token) may keep; a connect that would create one more
    /// gets server_busy.
    #[arg(long, default_value_t = Config::default().max_conversations_per_principal, value_parser = at_least_one::<u64>)]
    max_conversations_per_principal: u64,
    /// New conversations per second per principal, as N, N/BURST or off.
    #[arg(long, default_value = "1/600", value_parser = parse_rate_setting)]
    new_conversation_rate: RateSetting,
    /// Turns running at once on the whole server; one more gets server_busy.
    #[arg(long, default_value_t = Config::default().max_running_turns, value_parser = at_least_one::<usize>)]
    max_running_turns: usize,
    /// Turns one principal (token) may run at once; one more gets server_busy.
    #[arg(long, default_value_t = Config::default().max_running_turns_per_principal, value_parser = at_least_one::<usize>)]
    max_running_turns_per_principal: usize,
    /// Largest WebSocket frame or message in bytes; a larger one closes the connection (1009).
    #[arg(long, default_value_t = Config::default().max_frame_bytes, value_parser = at_least_one::<usize>)]
    max_frame_bytes: usize,
    /// Longest message text in characters; a longer one gets too_large.
    #[arg(long, default_value_t = Config::default().max_text_chars, value_parser = at_least_one::<usize>)]
    max_text_chars: usize,
    /// Events a live conversation keeps in memory; a replay of older ones reads the store.
    #[arg(long, default_value_t = Config::default().event_log_capacity, value_parser = at_least_one::<usize>)]
    event_log_capacity: usize,
    /// How long a connection may be quiet before it is pinged, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    ping_interval: Duration,
    /// How long a write to a client may stall before the connection is dropped.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    write_timeout: Duration,
    /// How long a new connection has to send its request head; with tokens, also how long a
    /// WebSocket has to present a valid one before it is closed (1008).
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
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
    #[arg(long, default_value_t = Config::default().max_pending_message_bytes, value_parser = at_least_one::<usize>)]
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
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = positive_duration)]
    search_budget: Duration,
    /// How long a tool call that needs approval (see the MCP config's "approve") waits for a
    /// person to allow it; then it is denied, e.g. 5m.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = positive_duration)]
    approval_timeout: Duration,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What `sparky` does besides serving.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Copy a SQLite data directory (conversations, events, messages, notes, the knowledge
    /// graph) into an empty PostgreSQL database, in one transaction. Stop the server that uses
    /// the directory first.
    MigrateStore {
        /// The SQLite data directory (--data-dir of the server that wrote it).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The PostgreSQL database: postgres://USER[:PASSWORD]@HOST[:PORT]/DB (default: the
        /// SPARKY_DATABASE_URL environment variable).
        #[arg(long, value_name = "URL")]
        to: Option<String>,
    },
}

impl Args {
    fn into_config(self) -> Config {
        Config {
            addr: self.addr,
            data_dir: self.data_dir,
            in_memory: self.in_memory,
            database_url: self.store,
            store_pool: self.store_pool,
            max_steps: self.max_steps,
            system_prompt: self.system_prompt,
            context_tokens: self.context_tokens,
            model: match self.model {
                ModelArg::Offline => ModelKind::Offline,
                ModelArg::Openai => ModelKind::OpenAi,
            },
            model_url: self.model_url,
            model_names: self.model_name,
            embedding_model: self.embedding_model,
            embedding_url: self.embedding_url,
            embedding_timeout: self.embedding_timeout,
            api_key_env: self.api_key_env,
            model_connect_timeout: self.model_connect_timeout,
            model_read_timeout: self.model_read_timeout,
            model_vision: self.model_vision,
            idle_timeout: self.idle_timeout,
            retention: self.retention,
            max_connections: self
                .max_connections
                .unwrap_or(Config::default().max_connections),
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
            approval_timeout: self.approval_timeout,
            ..Config::default()
        }
    }
}

/// `sparky check`: one line per thing a start depends on; exit 1 at the first hard failure.
fn check(args: Args) -> ExitCode {
    let token_file = args.auth_token_file.clone();
    let log_level = args.log_level;
    let explicit = args.max_connections.is_some();
    let mut config = args.into_config();
    // Quiet unless asked: the lines of the check are the output.
    init_logging(log_level.min(LevelFilter::Error), &config.auth_tokens);
    let tokens =
        gather_tokens(&mut config, token_file.as_deref()).map(|()| config.auth_tokens.len());
    let model = build_model(&config);
    let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    let mut stdout = std::io::stdout();
    let files = (open_files, explicit);
    if check::run(&config, model, tokens, files, &mut stdout) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// How often the model server is asked whether it is there.
const PROBE_INTERVAL: Duration = Duration::from_secs(300);

/// Asks the model server at start, then every [`PROBE_INTERVAL`], and says so when it cannot be
/// reached or does not serve the model, and when it answers again. `/healthz` shows the last
/// answer (turns update it too).
fn watch_model(model: Arc<dyn ModelBackend>) {
    let watcher = std::thread::Builder::new()
        .name("model-probe".into())
        .spawn(move || {
            let mut answered = None;
            loop {
                let Some(outcome) = model.probe() else {
                    return;
                };
                match (&outcome, answered) {
                    (Err(e), None | Some(true)) => {
                        log::warn!("model: {e}; turns will fail until it answers");
                    }
                    (Ok(()), Some(false)) => log::info!("model: the model server answers again"),
                    (Ok(()), None) => {
                        log::info!("model: the model server serves {}", model.name());
                    }
                    _ => {}
                }
                answered = Some(outcome.is_ok());
                // A timer, not a wait for something.
                std::thread::sleep(PROBE_INTERVAL);
            }
        });
    if let Err(e) = watcher {
        log::warn!("model: cannot start the model probe: {e}");
    }
}

/// Raises the soft open-file limit to the hard one. When even that is too low for
/// `--max-connections`: a value the operator gave gets one warning that says what to do; the
/// default is lowered to what fits.
fn raise_open_file_limit(config: &mut Config, explicit: bool) {
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
    let per = DESCRIPTORS_PER_CONNECTION;
    let fits = connections_for(available);
    if config.max_connections <= fits {
        return;
    }
    if explicit {
        log::warn!(
            "server: --max-connections {} needs about {} open files ({per} per connection), but \
             the limit is {available}; past {fits} connections new ones wait. Raise the limit \
             (ulimit -n, or LimitNOFILE= under systemd) or lower --max-connections",
            config.max_connections,
            config.max_connections as u64 * per + RESERVED_DESCRIPTORS,
        );
    } else {
        log::info!(
            "server: at most {fits} connections, as the open-file limit of {available} allows"
        );
        config.max_connections = fits;
    }
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

/// A duration that must be longer than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(duration)
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
        let lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        for line in lines {
            // `name:token` names the principal; a bare token (or `:token`, for a token that
            // itself holds a colon) has none.
            match line.split_once(':') {
                Some((name, token)) if !token.is_empty() => {
                    if !name.is_empty() {
                        config.token_names.push((token.to_owned(), name.to_owned()));
                    }
                    config.auth_tokens.push(token.to_owned());
                }
                _ => config.auth_tokens.push(line.to_owned()),
            }
        }
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
    let mut names = config
        .model_names
        .iter()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty());
    let name = names
        .next()
        .ok_or("--model openai needs --model-name (e.g. llama3.1, or auto)")?;
    let mut options = RemoteOptions::new(config.model_url.clone(), name);
    options.other_models = names.collect();
    if options.model == AUTO_MODELS && !options.other_models.is_empty() {
        return Err("--model-name auto lists the server's models; give no other name".into());
    }
    options.connect_timeout = config.model_connect_timeout;
    options.read_timeout = config.model_read_timeout;
    options.vision = config.model_vision;
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
    // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org): escape
    // codes in a file or in journald are noise.
    let colour = if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let terminal = TermLogger::new(level, log_config, TerminalMode::Stderr, colour);
    let logger = Redactor::new(terminal, tokens.iter().cloned());
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(level);
    }
}

/// The database URL given with a flag, else the one in `SPARKY_DATABASE_URL`; checked to be a
/// PostgreSQL one.
fn database_url(flag: Option<String>, name: &str) -> Result<Option<String>, String> {
    let url = flag.or_else(|| {
        std::env::var("SPARKY_DATABASE_URL")
            .ok()
            .filter(|url| !url.trim().is_empty())
    });
    match url {
        Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => {
            Err(format!(
                "{name} takes a PostgreSQL URL like postgres://USER@HOST[:PORT]/DB, not {}",
                sparky::common::config::redact_url(&url)
            ))
        }
        url => Ok(url),
    }
}

/// `sparky migrate-store`: copies `from` into the database at `to`, printing what it copied.
fn migrate_store(from: &std::path::Path, to: &str, pool: usize) -> ExitCode {
    use sparky::store::{PostgresStore, SqliteStore, copy_sqlite_to_postgres};
    if !from.join(sparky::store::DATABASE_FILE).is_file() {
        eprintln!(
            "sparky: {} holds no {}; --from takes the --data-dir of a server",
            from.display(),
            sparky::store::DATABASE_FILE
        );
        return ExitCode::FAILURE;
    }
    let source = match SqliteStore::open(from) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("sparky: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = match PostgresStore::connect(to, pool) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("sparky: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut shown = std::time::Instant::now();
    let mut progress = |report: &sparky::store::CopyReport| {
        if shown.elapsed() >= Duration::from_secs(2) {
            shown = std::time::Instant::now();
            log::info!(
                "migrate-store: {} conversations, {} events so far",
                report.conversations,
                report.events
            );
        }
    };
    match copy_sqlite_to_postgres(&source, &target, &mut progress) {
        Ok(report) => {
            println!(
                "copied {} conversations ({} events, {} messages, {} notes) and {} nodes and \
                 {} edges from {} to {}",
                report.conversations,
                report.events,
                report.messages,
                report.notes,
                report.nodes,
                report.edges,
                from.display(),
                target.target()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sparky: migrate-store: {e}; nothing was copied");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // `sparky check [FLAGS]`: the same flags, checked instead of run.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let checking = argv.get(1).is_some_and(|first| first == "check");
    if checking {
        argv.remove(1);
    }
    let mut args = Args::parse_from(argv);
    if let Some(Command::MigrateStore { from, to }) = args.command.take() {
        init_logging(args.log_level, &[]);
        return match database_url(to, "--to") {
            Ok(Some(to)) => migrate_store(&from, &to, args.store_pool),
            Ok(None) => {
                eprintln!("sparky: migrate-store needs --to URL (or SPARKY_DATABASE_URL)");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("sparky: {e}");
                ExitCode::FAILURE
            }
        };
    }
    args.store = match database_url(args.store.take(), "--store") {
        Ok(url) if args.in_memory => {
            if url.is_some() {
                eprintln!(
                    "sparky: --in-memory keeps everything in memory; SPARKY_DATABASE_URL is ignored"
                );
            }
            None
        }
        Ok(url) => url,
        Err(e) => {
            eprintln!("sparky: {e}");
            return ExitCode::FAILURE;
        }
    };
    if checking {
        return check(args);
    }
    let log_level = args.log_level;
    let token_file = args.auth_token_file.clone();
    let max_connections_given = args.max_connections.is_some();
    let prompt_file = args.system_prompt_file.clone();
    let mut config = args.into_config();
    if let Err(e) = gather_tokens(&mut config, token_file.as_deref()) {
        eprintln!("sparky: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(path) = prompt_file {
        match std::fs::read_to_string(&path) {
            Ok(text) => config.system_prompt = Some(text.trim().to_owned()),
            Err(e) => {
                eprintln!(
                    "sparky: cannot read --system-prompt-file {}: {e}",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
        }
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
    raise_open_file_limit(&mut config, max_connections_given);
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
    let probed = model.clone();
    let handle = match sparky::net::server::spawn_with(listener, config, model) {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("sparky: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on http://{}", handle.addr());
    watch_model(probed);
    if handle.addr().ip().is_unspecified() {
        let port = handle.addr().port();
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        log::info!(
            "server: open http://127.0.0.1:{port}/ on this machine, or http://{host}:{port}/ \
             from another (with --allowed-host {host})"
        );
    }
    let _ = std::io::stdout().flush();
    if let Some(signal) = signals.forever().next() {
        log::info!(
            "server: signal {signal}; shutting down, letting turns in flight finish for up to \
             {grace:?} (press Ctrl-C again to stop at once)"
        );
    }
    // A second SIGINT or SIGTERM during the grace period ends it at once.
    let hurry = Arc::new(AtomicBool::new(false));
    let second = hurry.clone();
    let handle_signals = signals.handle();
    // Without this thread a second signal would only wait for the grace period to end.
    let watcher = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                log::warn!("server: signal {signal} again; stopping now");
                second.store(true, Ordering::SeqCst);
            }
        });
    handle.shutdown_gracefully_unless(grace, &hurry);
    handle_signals.close();
    if let Ok(watcher) = watcher {
        let _ = watcher.join();
    }
    ExitCode::SUCCESS
}
