//! The server: binding, the accept loop, one thread per connection, the connection limits (in
//! all and per client address, as `admission.rs` decides), the `Host` check, the dispatch of a
//! request to the page's routes or the API's (with the [`RouteContext`] they are handed, built
//! here once), the session reaper, and shutdown. [`spawn`] returns a [`ServerHandle`]; [`run`]
//! blocks.
//!
//! Only this file, `http.rs`, `outbound.rs` and `connection.rs` touch client sockets.
//!
//! Depends on: `common::auth`, `common::config`, `common::error`, `common::metrics`,
//! `conversation::bot`, `conversation::cluster`, `conversation::journal`, `conversation::memory`,
//! `conversation::quota`, `conversation::session`, `files`, `model`, `model::embed`,
//! `model::offline`, `net::accounts`, `net::admission`, `net::api`, `net::connection`,
//! `net::handler`, `net::http`, `net::inbound`, `net::outbound`, `net::policy`, `net::routes`,
//! `net::shutdown`, `net::wake`, `store`, `store::accounts`, `store::cluster`, `store::files`,
//! `store::mcp_auth`, `store::postgres`, `store::shares`, `store::sqlite`, `store::usage`, `tools`,
//! `tools::files`, `tools::mcp`.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, select, tick};
use tungstenite::WebSocket;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::common::auth::{Auth, Principal};
use crate::common::config::Config;
use crate::common::error::{Error, Result};
use crate::common::metrics::Metrics;
use crate::conversation::bot::Engine;
use crate::conversation::cluster::ClusterThread;
use crate::conversation::journal::Journal;
use crate::conversation::memory::SemanticGraph;
use crate::conversation::quota::Quotas;
use crate::conversation::session::{SessionManager, Turns};
use crate::files::Library;
use crate::model::ModelBackend;
use crate::model::embed::{Embed, EmbedOptions, RemoteEmbedder};
use crate::model::offline::OfflineModel;
use crate::net::accounts::{Accounts, COOKIE};
use crate::net::admission::Admission;
use crate::net::api;
use crate::net::connection::{Connection, Wire};
use crate::net::handler::{ConnectionContext, Handler, Upgrade};
use crate::net::http::{self, HeadError, Response};
use crate::net::inbound::{MessageBudget, MeteredStream};
use crate::net::outbound::{Outbound, PendingLimit};
use crate::net::policy::{self, HostPolicy};
use crate::net::routes::{Reply, RouteContext};
use crate::net::shutdown::Shutdown;
use crate::net::wake::{self, Sleeper};
use crate::store::{
    AccountStore, Cluster, ConversationStore, FileStore, GraphStore, McpAuthStore, PostgresStore,
    ShareStore, Solo, SqliteStore, UsageStore,
};
use crate::tools::ToolChain;
use crate::tools::mcp::{self, McpServers, OAuthOptions};

/// How often the grace period of a shutdown looks whether a second Ctrl-C asked to hurry.
const HURRY_CHECK: Duration = Duration::from_millis(100);

/// Stack of a connection thread. Only touched pages count towards memory, and a connection
/// touches little: this leaves room for serde_json's recursion limit of 128 on hostile input.
const CONNECTION_STACK_BYTES: usize = 256 * 1024;

/// The listen backlog. std's 128 makes a burst of a few hundred connects wait a second for SYN
/// retries.
const LISTEN_BACKLOG: i32 = 4096;

/// tungstenite's read buffer per connection. Chat frames are small; the default 128 KiB, zeroed
/// on each read, costs memory and throughput.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Bytes tungstenite gathers before it writes: none. It writes only its own control frames,
/// and those go straight to the connection's `Outbound`, which never refuses bytes.
const WRITE_BUFFER_BYTES: usize = 0;

/// Bytes waiting for a peer that does not read, past which its sessions let it go (it resumes
/// by replay); at least twice `--max-frame-bytes`, so that a slow reader of one event as
/// large as a client may send is not let go for the frames that follow it. Frames are bounded
/// by `--outbox-capacity` too.
const PENDING_LIMIT_BYTES: usize = 4 << 20;

/// Unsent bytes a WebSocket's socket holds at most (`TCP_NOTSENT_LOWAT`); the rest waits in
/// its `Outbound`. Without it, the kernel takes megabytes for a peer that reads slowly, and
/// the server cannot tell whether a ping behind them has reached the peer or how fast the
/// peer reads. Bytes in flight are not limited by it, so throughput is not either.
const UNSENT_LOWAT_BYTES: u32 = 128 * 1024;

/// How long a graceful shutdown waits for connections to finish their closing handshakes.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long shutdown waits for the journal to commit what is queued.
const JOURNAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server keeps reading (and dropping) what a client still sends after an upload
/// was answered before its body was read to the end (a `413`, a `507`), so that the client
/// reads the answer rather than a reset connection.
const UPLOAD_LINGER: Duration = Duration::from_secs(2);

/// How long a connection refused by the per-IP cap has to send its request head before it is
/// answered `429` anyway: the answer should reach an honest client, but a refused connection
/// must not hold its thread for the whole handshake timeout.
const REFUSED_HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds a listener with a large backlog.
///
/// # Errors
///
/// When the address cannot be bound.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(|e| Error::io("socket", e))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| Error::io("SO_REUSEADDR", e))?;
    socket
        .bind(&addr.into())
        .map_err(|e| Error::io("bind", e))?;
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(|e| Error::io("listen", e))?;
    Ok(socket.into())
}

/// Starts a server on `listener` with the built-in offline model, and returns at once.
///
/// # Errors
///
/// When the store cannot be opened (see [`SqliteStore::open`] and
/// [`PostgresStore::connect`]), the listener's address cannot
/// be read, or a thread cannot be started.
pub fn spawn(listener: TcpListener, config: Config) -> Result<ServerHandle> {
    spawn_with(listener, config, Arc::new(OfflineModel))
}

/// Starts a server on `listener` that answers with `model`, and returns at once. Opens the
/// store (or an in-memory one), starts the journal, and restores the sessions the store held.
///
/// # Errors
///
/// As [`spawn`].
pub fn spawn_with(
    listener: TcpListener,
    config: Config,
    model: Arc<dyn ModelBackend>,
) -> Result<ServerHandle> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("local_addr", e))?;
    let config = Arc::new(config);
    for origin in config
        .allowed_origins
        .iter()
        .filter(|o| !policy::is_origin(o))
    {
        log::warn!(
            "server: --allowed-origin {origin:?} is not an origin like https://host[:port]; ignored"
        );
    }
    // Before any connection: the signal that wakes a connection thread needs its handler.
    wake::install().map_err(|e| Error::io("wake-up signal", e))?;
    let metrics = Arc::new(Metrics::default());
    let Stores {
        conversations,
        graph,
        cluster,
        files,
        shares,
        accounts: account_store,
        usage,
        mcp_auth,
    } = open_store(&config)?;
    let quotas = Arc::new(Quotas::new(usage, &config));
    // MCP servers start in the background, beside the listener: an unreadable config stops
    // the server here, while a server that fails to start is logged and tried again. The
    // grants of OAuth servers are in the store.
    let mcp = match &config.mcp_config {
        Some(path) => Some(Arc::new(mcp::spawn_with(
            path,
            mcp::FIRST_RETRY_DELAY,
            OAuthOptions {
                store: Some(mcp_auth),
                public_url: config.public_url.clone(),
                local_base: Some(local_base(addr)),
            },
        )?)),
        None => None,
    };
    // Before the journal starts, so that nothing else writes meanwhile.
    migrate_owners(conversations.as_ref(), graph.as_ref(), &config.auth_tokens)?;
    let embedder = embedder(&config);
    let graph = with_embeddings(graph, embedder.as_ref())?;
    // Made once: its `extract` threads read every file's text, whoever asks.
    let library = Library::new(files.clone(), &config, metrics.clone());
    if let Some(embedder) = embedder {
        library.embed_with(embedder)?;
    }
    let api_graph = graph.clone();
    let store = conversations.clone();
    let journal = if config.in_memory {
        Journal::spawn_in_background(conversations.clone(), metrics.clone())?
    } else {
        Journal::spawn(conversations.clone(), metrics.clone())?
    };
    let mut tools = ToolChain::standard(&graph);
    for tool in crate::tools::files::all(&library) {
        tools.add(tool);
    }
    if let Some(mcp) = &mcp {
        tools.set_source(mcp.source());
    }
    tools.set_metrics(metrics.clone());
    tools.set_max_result_bytes(config.max_tool_result_bytes);
    let tools = Arc::new(tools);
    let engine = Engine {
        model: model.clone(),
        tools: tools.clone(),
        max_steps: config.max_steps,
        memory: Some(graph),
        metrics: metrics.clone(),
        context_tokens: config.context_tokens,
        approval_timeout: config.approval_timeout,
        files: Some(library.clone()),
        system_prompt: match &config.system_prompt {
            Some(prompt) => Some(prompt.as_str().into()),
            None => Some(crate::conversation::bot::DEFAULT_SYSTEM_PROMPT.into()),
        },
    };
    let turns = Turns::new();
    // Nothing is loaded at start: a conversation comes into memory when a client asks for it.
    let sessions = SessionManager::new(
        config.clone(),
        engine,
        metrics.clone(),
        journal.clone(),
        (conversations, cluster.clone(), files.clone()),
        turns.clone(),
        quotas.clone(),
    );
    let cluster = ClusterThread::spawn(sessions.clone(), cluster, metrics.clone())?;
    let shutdown = Shutdown::new();
    let secure = config
        .public_url
        .as_deref()
        .is_some_and(|url| url.to_ascii_lowercase().starts_with("https://"));
    let accounts = Arc::new(Accounts::new(account_store, quotas.clone(), secure));
    let auth = Auth::named(
        config.auth_tokens.iter().map(String::as_str),
        &config.token_names,
    )
    .with_accounts(accounts.clone());
    let admission = Admission::new(&config, metrics.clone());
    let shared = Arc::new(Shared {
        routes: RouteContext {
            sessions: sessions.clone(),
            store,
            journal: journal.clone(),
            graph: api_graph,
            files: library,
            shares,
            model,
            tools,
            mcp: mcp.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            auth: auth.clone(),
            accounts,
            started: Instant::now(),
            public_metrics: config.public_metrics,
        },
        ctx: ConnectionContext {
            config: config.clone(),
            sessions,
            files,
            metrics,
            shutdown,
            auth,
        },
        hosts: HostPolicy::new(addr, &config.allowed_hosts),
        budget: Arc::new(MessageBudget::new(config.max_pending_message_bytes)),
        admission,
        next_id: AtomicU64::new(1),
    });

    let accept_shared = shared.clone();
    let accept = thread::Builder::new()
        .name("accept".into())
        .spawn(move || accept_loop(&listener, &accept_shared))
        .map_err(Error::Spawn)?;

    let (reaper_stop, stopped) = crossbeam_channel::bounded::<()>(1);
    let reaper_sessions = shared.ctx.sessions.clone();
    let every = (config.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
    let (idle_timeout, retention) = (config.idle_timeout, config.retention);
    let reaper_quotas = quotas.clone();
    let reaper = thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            let ticker = tick(every);
            loop {
                select! {
                    recv(ticker) -> _ => {
                        reaper_sessions.evict_idle(idle_timeout);
                        if let Some(retention) = retention {
                            reaper_sessions.expire(retention);
                        }
                        // Once a day, the first tick of each: the store keeps a bounded history.
                        match reaper_quotas.prune() {
                            Ok(0) => {}
                            Ok(rows) => log::info!("quota: deleted {rows} rows of old daily use"),
                            Err(e) => log::error!("quota: old daily use not deleted: {e}"),
                        }
                    }
                    recv(stopped) -> _ => return,
                }
            }
        })
        .map_err(Error::Spawn)?;

    log::info!("server: listening on {addr}");
    Ok(ServerHandle {
        addr,
        shared,
        accept: Some(accept),
        reaper: Some(reaper),
        reaper_stop: Some(reaper_stop),
        cluster,
        journal,
        turns,
        mcp,
    })
}

/// Runs a server on `listener` until the process ends.
///
/// # Errors
///
/// As [`spawn`].
pub fn run(listener: TcpListener, config: Config) -> Result<()> {
    spawn(listener, config)?.wait();
    Ok(())
}

/// A running server. Dropping it shuts the server down.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    reaper: Option<JoinHandle<()>>,
    reaper_stop: Option<Sender<()>>,
    /// With several instances on one database: the thread that listens to the others.
    cluster: Option<ClusterThread>,
    /// What every session writes through; shutdown waits for it.
    journal: Journal,
    /// The threads turns run on; a graceful shutdown waits for them to be idle.
    turns: Turns,
    /// The MCP server processes; stopped with the server.
    mcp: Option<Arc<McpServers>>,
}

impl ServerHandle {
    /// The address the server listens on (with the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The session map, for tests and tools that look inside.
    pub fn sessions(&self) -> &SessionManager {
        &self.shared.ctx.sessions
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.ctx.metrics
    }

    /// The journal every session writes through.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The store conversations are kept in.
    pub fn store(&self) -> &Arc<dyn ConversationStore> {
        &self.shared.routes.store
    }

    /// WebSocket connections open now.
    pub fn connection_count(&self) -> usize {
        self.shared.admission.open()
    }

    /// Bytes that unfinished incoming messages hold now, all connections together.
    pub fn pending_message_bytes(&self) -> usize {
        self.shared.budget.held()
    }

    /// Blocks until the server is shut down from another thread (or the process ends).
    pub fn wait(mut self) {
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }

    /// Stops accepting, closes every WebSocket with 1001, cancels turns in flight, and waits
    /// for the accept and reaper threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Shuts down gracefully: stops accepting, refuses new turns, lets turns in flight run for
    /// up to `grace`, then cancels the rest, writes everything to the store, closes every
    /// WebSocket with 1001, and waits (briefly) for the connections to finish.
    pub fn shutdown_gracefully(self, grace: Duration) {
        self.shutdown_gracefully_unless(grace, &AtomicBool::new(false));
    }

    /// [`shutdown_gracefully`](Self::shutdown_gracefully), except that the grace period ends
    /// at once when `hurry` is set (a second Ctrl-C).
    pub fn shutdown_gracefully_unless(mut self, grace: Duration, hurry: &AtomicBool) {
        self.stop_accepting();
        let turns = &self.turns;
        let running = turns.running();
        if running > 0 {
            log::info!(
                "server: waiting up to {grace:?} for {running} turn{} to finish",
                if running == 1 { "" } else { "s" }
            );
        }
        // The grace period: until every turn is done, the deadline, or a second Ctrl-C
        // (`hurry`, looked at between waits of at most a tenth of a second).
        let deadline = Instant::now() + grace;
        while !hurry.load(Ordering::SeqCst) && Instant::now() < deadline {
            let slice = (Instant::now() + HURRY_CHECK).min(deadline);
            if turns.wait_idle(slice) {
                break;
            }
        }
        self.stop();
        self.shared
            .ctx
            .shutdown
            .wait_closed(Instant::now() + CLOSE_WAIT);
    }

    /// Stops the accept loop and refuses new turns; idempotent.
    fn stop_accepting(&mut self) {
        self.shared.ctx.shutdown.drain();
        let Some(accept) = self.accept.take() else {
            return;
        };
        // A connection to ourselves wakes the blocking accept(); it sees the flag and returns.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        let _ = accept.join();
    }

    fn stop(&mut self) {
        if self.reaper.is_none() {
            return;
        }
        self.stop_accepting();
        self.shared.ctx.sessions.cancel_all();
        if let Some(mcp) = &self.mcp {
            mcp.shutdown();
        }
        if !self.journal.sync(JOURNAL_FLUSH_TIMEOUT) {
            log::error!("server: the journal did not finish writing in {JOURNAL_FLUSH_TIMEOUT:?}");
        }
        // With everything written, the other instances may take this one's conversations.
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.stop();
        }
        // Only now, with every event written, are the connections told to close.
        self.shared.ctx.shutdown.close();
        drop(self.reaper_stop.take());
        if let Some(reaper) = self.reaper.take() {
            let _ = reaper.join();
        }
        log::info!("server: stopped");
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An address that reaches the listener: an unspecified bind address is reached on loopback.
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let mut target = addr;
    if addr.ip().is_unspecified() {
        target.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    target
}

/// The embedder `config` names (`--embedding-model`), if any: embedding through
/// `--embedding-url`, else the model's URL, with the model's API key when it is the same server.
/// Semantic memory and files' chunks share it.
fn embedder(config: &Config) -> Option<Arc<dyn Embed>> {
    let embedder = RemoteEmbedder::new(EmbedOptions::from_config(config)?);
    log::info!(
        "memory and files: semantic, embedded by {} at {}",
        embedder.model(),
        embedder.endpoint()
    );
    Some(Arc::new(embedder))
}

/// `graph` with semantic memory when there is an `embedder`.
fn with_embeddings(
    graph: Arc<dyn GraphStore>,
    embedder: Option<&Arc<dyn Embed>>,
) -> Result<Arc<dyn GraphStore>> {
    match embedder {
        Some(embedder) => Ok(SemanticGraph::start(graph, embedder.clone())?),
        None => Ok(graph),
    }
}

/// The store `config` asks for: in memory with `in_memory`, else PostgreSQL with
/// `database_url`, else SQLite in `data_dir`, with its size cap and search budget set.
fn open_store(config: &Config) -> Result<Stores> {
    if let Some(url) = config.database_url.as_ref().filter(|_| !config.in_memory) {
        let store = Arc::new(PostgresStore::connect(url, config.store_pool)?);
        store.set_size_limit(config.max_store_bytes)?;
        store.set_search_budget(config.search_budget);
        let cluster: Arc<dyn Cluster> = store.clone();
        return Ok(Stores::of(&store, cluster));
    }
    let store = Arc::new(if config.in_memory {
        SqliteStore::in_memory()?
    } else {
        SqliteStore::open(&config.data_dir)?
    });
    if let Some(bytes) = config.max_store_bytes {
        store.set_size_limit(Some(bytes))?;
    }
    store.set_search_budget(config.search_budget);
    Ok(Stores::of(&store, Arc::new(Solo)))
}

/// Where the page's sign-in callback reaches this server when it has no public URL.
fn local_base(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

/// Every store the server uses, each the one store seen through one interface: SQLite (with
/// `Solo` for its cluster of one) or PostgreSQL. `--in-memory` keeps all of it in its in-memory
/// SQLite database.
struct Stores {
    conversations: Arc<dyn ConversationStore>,
    graph: Arc<dyn GraphStore>,
    cluster: Arc<dyn Cluster>,
    files: Arc<dyn FileStore>,
    shares: Arc<dyn ShareStore>,
    accounts: Arc<dyn AccountStore>,
    usage: Arc<dyn UsageStore>,
    mcp_auth: Arc<dyn McpAuthStore>,
}

impl Stores {
    /// `store` through each interface, beside `cluster`.
    fn of<S>(store: &Arc<S>, cluster: Arc<dyn Cluster>) -> Self
    where
        S: ConversationStore
            + GraphStore
            + FileStore
            + ShareStore
            + AccountStore
            + UsageStore
            + McpAuthStore
            + 'static,
    {
        Stores {
            conversations: store.clone(),
            graph: store.clone(),
            cluster,
            files: store.clone(),
            shares: store.clone(),
            accounts: store.clone(),
            usage: store.clone(),
            mcp_auth: store.clone(),
        }
    }
}

/// Moves what earlier versions stored under a token's SHA-1 fingerprint to its SHA-256 one, for
/// every configured token. Cheap when there is nothing to move (indexed lookups), so it runs at
/// every start.
fn migrate_owners(
    conversations: &dyn ConversationStore,
    graph: &dyn GraphStore,
    tokens: &[String],
) -> Result<()> {
    for token in tokens.iter().filter(|token| !token.is_empty()) {
        let old = Principal::legacy_of_token(token);
        let new = Principal::of_token(token);
        let moved = conversations.reassign_owner(old.as_str(), new.as_str())?
            + graph.reassign_nodes(old.as_str(), new.as_str())?;
        if moved > 0 {
            log::info!(
                "store: moved {moved} conversations and facts of one token from its SHA-1 \
                 fingerprint to its SHA-256 one"
            );
        }
    }
    Ok(())
}

/// What the accept loop and every connection thread share.
struct Shared {
    ctx: ConnectionContext,
    /// What the HTTP routes answer from.
    routes: RouteContext,
    /// The `Host` values the server answers to.
    hosts: HostPolicy,
    /// The bytes unfinished incoming messages may hold, all connections together.
    budget: Arc<MessageBudget>,
    /// The connection caps, in all and per client address.
    admission: Admission,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut accept_failing = false;
    loop {
        let accepted = listener.accept();
        if shared.ctx.shutdown.draining() {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning, and say so once
                // per episode rather than once per attempt.
                if !accept_failing {
                    log::warn!("server: accept failed: {e}; retrying every 100 ms");
                    accept_failing = true;
                }
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if accept_failing {
            log::info!("server: accepting again");
            accept_failing = false;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let thread_shared = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("conn-{peer}"))
            .stack_size(CONNECTION_STACK_BYTES)
            .spawn(move || {
                if let Err(e) = serve(stream, peer, &thread_shared, id) {
                    log::debug!("connection {id} ({peer}): {e}");
                }
            });
        if let Err(e) = spawned {
            // The stream went down with the closure: the peer sees its connection closed.
            log::warn!("server: no thread for {peer}: {e}");
        }
    }
}

/// Serves one accepted socket: reads the request head, checks its `Host`, then answers HTTP or
/// runs a WebSocket.
fn serve(mut stream: TcpStream, peer: SocketAddr, shared: &Shared, id: u64) -> Result<()> {
    let config = &shared.ctx.config;
    stream
        .set_nodelay(true)
        .map_err(|e| Error::io("nodelay", e))?;
    stream
        .set_write_timeout(Some(config.write_timeout))
        .map_err(|e| Error::io("write timeout", e))?;
    // A trusted proxy's own address is exempt: its clients are counted once their addresses
    // are read from the request head.
    let admission = &shared.admission;
    let Some(_ip_place) = admission.ip_place(peer.ip()) else {
        // The head is read first, so that an honest client sees the answer, but briefly: a
        // refused connection must not hold its thread for the whole handshake timeout.
        let deadline = Instant::now() + REFUSED_HEAD_TIMEOUT.min(config.handshake_timeout);
        if let Err(HeadError::Gone(_)) = http::read_head(&mut stream, deadline) {
            return Ok(());
        }
        return refuse_address(&mut stream, peer.ip(), config, id);
    };
    let head = match http::read_head(&mut stream, Instant::now() + config.handshake_timeout) {
        Ok(head) => head,
        Err(HeadError::Gone(_)) => return Ok(()),
        Err(HeadError::Bad(response)) => return respond(&mut stream, &response),
    };
    // The client's address: the peer's, or the one a trusted proxy names for it.
    let mut client = Some(peer.ip());
    let _client_place = if admission.trusts(peer.ip()) {
        let named = admission.client_address(peer.ip(), &head);
        client = Some(named);
        let client = named;
        log::debug!("connection {id}: from {client} by way of {peer}");
        match admission.ip_place(client) {
            Some(place) => Some(place),
            None => return refuse_address(&mut stream, client, config, id),
        }
    } else {
        None
    };
    if let Err(response) = shared.hosts.check(&head) {
        log::warn!(
            "connection {id}: refused a request for Host {:?} with {}",
            head.header("host"),
            response.status
        );
        return respond(&mut stream, &response);
    }
    let reply = if api::serves(&head.path) {
        if api::streams(&head) {
            // An upload: the route reads the body straight from the socket, once it has checked
            // the token and the length.
            let body = http::RequestBody::new(&stream, &head, config.handshake_timeout);
            let response = api::answer(&shared.routes, &head, &[], Some(&body), client);
            let written = response.write(&mut &stream, true);
            body.linger(UPLOAD_LINGER);
            return written.map_err(|e| Error::io("http response", e));
        }
        let deadline = Instant::now() + config.handshake_timeout;
        let body = match http::read_body(&mut stream, &head, api::MAX_BODY_BYTES, deadline) {
            Ok(body) => body,
            Err(HeadError::Gone(_)) => return Ok(()),
            Err(HeadError::Bad(response)) => return respond(&mut stream, &response),
        };
        Reply::Response(api::answer(&shared.routes, &head, &body, None, client))
    } else {
        shared.routes.page(&head)
    };
    match reply {
        Reply::Response(response) => response
            .write(&mut stream, head.method != "HEAD")
            .map_err(|e| Error::io("http response", e)),
        Reply::Upgrade => serve_websocket(stream, head, shared, id),
    }
}

/// Runs a WebSocket on `stream`, whose request head was `head`. Not inlined into [`serve`]:
/// its locals (the WebSocket, the transport, the handler) would otherwise deepen the stack
/// under every request head that is read, and an idle connection's thread would touch one
/// more page.
#[inline(never)]
fn serve_websocket(
    mut stream: TcpStream,
    head: http::RequestHead,
    shared: &Shared,
    id: u64,
) -> Result<()> {
    let config = &shared.ctx.config;
    if !policy::origin_allowed(&head, &config.allowed_origins) {
        log::warn!(
            "connection {id}: refused an upgrade from origin {:?}",
            head.header("origin")
        );
        let forbidden = Response::text(403, "Forbidden", "this origin may not open a session\n");
        return respond(&mut stream, &forbidden);
    }
    let answer = match http::upgrade_response(&head) {
        Ok(answer) => answer,
        Err(response) => return respond(&mut stream, &response),
    };
    let limit = PendingLimit {
        frames: config.outbox_capacity.max(1),
        bytes: PENDING_LIMIT_BYTES.max(config.max_frame_bytes.saturating_mul(2)),
    };
    let outbound = Arc::new(Outbound::new(id, stream, limit, shared.ctx.metrics.clone()));
    let token = head.token();
    let cookie = head.cookie(COOKIE).map(str::to_owned);
    let authenticated = shared
        .ctx
        .auth
        .check_either(token.as_deref(), cookie.as_deref())
        .is_ok();
    let Some(place) = shared.admission.place(id, authenticated, &outbound) else {
        let busy = Response::text(503, "Service Unavailable", "too many connections\n");
        return respond(&mut outbound.socket(), &busy);
    };
    if let Err(e) =
        socket2::SockRef::from(outbound.socket()).set_tcp_notsent_lowat(UNSENT_LOWAT_BYTES)
    {
        log::debug!("connection {id}: TCP_NOTSENT_LOWAT not set: {e}");
    }
    let mut stream = MeteredStream::new(Wire::new(outbound.clone()), shared.budget.clone());
    if stream.observe(&head.rest).is_err() {
        let busy = Response::text(503, "Service Unavailable", "server busy\n");
        return respond(&mut outbound.socket(), &busy);
    }
    // Still blocking (with the write timeout): the answer goes out whole.
    outbound
        .socket()
        .write_all(answer.as_bytes())
        .map_err(|e| Error::io("handshake", e))?;
    outbound
        .socket()
        .set_nonblocking(true)
        .map_err(|e| Error::io("nonblocking", e))?;
    let sleeper = Sleeper::new().map_err(|e| Error::io("signal mask", e))?;
    let _registration = shared.ctx.shutdown.register(id, outbound.clone());
    let upgrade = Upgrade {
        token,
        cookie,
        place,
    };
    let mut handler = handler(stream, head.rest, outbound, sleeper, shared, id, upgrade);
    handler.run()
}

/// The transport and the handler of a WebSocket, on the heap. Built in a frame of its own that
/// is gone before the handler runs, so that its temporaries do not deepen the stack under
/// every frame the handler handles.
#[inline(never)]
fn handler<'a>(
    stream: MeteredStream<Wire>,
    read_ahead: Vec<u8>,
    outbound: Arc<Outbound>,
    sleeper: Sleeper,
    shared: &'a Shared,
    id: u64,
    upgrade: Upgrade<'a>,
) -> Box<Handler<'a>> {
    let config = &shared.ctx.config;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes));
    let ws = WebSocket::from_partially_read(stream, read_ahead, Role::Server, Some(ws_config));
    let connection = Connection::new(
        ws,
        outbound,
        sleeper,
        shared.ctx.shutdown.clone(),
        id,
        config,
    );
    Box::new(Handler::new(connection, &shared.ctx, upgrade))
}

/// Answers `429` to a connection from `client`, which has as many open as it may.
fn refuse_address(
    stream: &mut TcpStream,
    client: std::net::IpAddr,
    config: &Config,
    id: u64,
) -> Result<()> {
    log::warn!(
        "connection {id}: {client} has {} connections open already; answering 429",
        config.max_connections_per_ip
    );
    let refused = Response::text(
        429,
        "Too Many Requests",
        "too many connections from your address\n",
    );
    respond(stream, &refused)
}

fn respond(stream: &mut impl Write, response: &Response) -> Result<()> {
    response
        .write_to(stream)
        .map_err(|e| Error::io("http response", e))
}
