//! OAuth 2.1 for MCP `url` servers, as MCP's authorization spec (2025-06-18, 2025-11-25)
//! describes it. Files, in reading order:
//!
//! - `error.rs`: `OAuthError`;
//! - `http.rs`: the agent that talks to authorization servers;
//! - `discovery.rs`: protected resource and authorization server metadata;
//! - `registration.rs`: which client Sparky is (config, metadata document, registration);
//! - `grant.rs`: what a sign-in won, as the store keeps it;
//! - `flow.rs`: the authorization URL, the code exchange and the refresh (the `oauth2` crate);
//! - `loopback.rs`: `sparky mcp login`'s redirect listener;
//! - this file: [`ServerAuth`] (one server's sign-in state and its token, refreshed single-
//!   flight) and [`SignIns`] (every server's; the sign-ins in progress, kept in the store so
//!   that the callback may reach any instance, taken once by it).
//!
//! A server's grant lives in the store (`store/mcp_auth.rs`), so that a restart and every
//! instance use it. Its access token is read from the store for each request and refreshed
//! [`REFRESH_AHEAD_SECONDS`] before it expires, by one thread at a time in this process (a
//! mutex) and by one instance at a time (the store's refresh lease, claimed for the version
//! just read, so that a rotated refresh token is never sent twice). A refresh the server
//! refuses forgets the grant: the server then needs a sign-in, and nothing retries it.
//!
//! Tokens never reach the log: `Grant`, `Client` and `StoredGrant` leave them out of `Debug`.
//!
//! Depends on: `common::cancel`, `common::error`, `store::mcp_auth`, `tools::mcp::oauth::discovery`, `tools::mcp::oauth::grant`, `tools::mcp::oauth::registration`.

mod discovery;
mod error;
mod flow;
mod grant;
mod http;
pub(super) mod loopback;
mod registration;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use ureq::Agent;

use crate::common::cancel::CancelFlag;
use crate::store::McpAuthStore;

use self::discovery::{Challenge, Discovered, discover, parse_challenge};
use self::grant::Grant;
use self::registration::client_for;

pub use self::error::OAuthError;
pub use self::grant::REFRESH_AHEAD_SECONDS;
pub use self::registration::{
    CALLBACK_PATH, CLIENT_DOCUMENT_PATH, ConfiguredClient, client_document,
};

/// How long a started sign-in waits for its callback.
pub const SIGN_IN_TTL: Duration = Duration::from_secs(600);

/// How long a refresh may hold the store's lease, in seconds; past it another may take over.
const LEASE_SECONDS: i64 = 30;

/// How long a caller waits for another instance's refresh before it gives up.
const REFRESH_WAIT: Duration = Duration::from_secs(35);

/// How often a caller looks whether another instance's refresh has landed.
const REFRESH_POLL: Duration = Duration::from_millis(100);

/// How often a server waiting for a sign-in looks whether the store has a new grant.
const SIGN_IN_POLL: Duration = Duration::from_secs(5);

/// The least time between two refreshes forced by the server refusing a token.
const FORCED_REFRESH_GAP: Duration = Duration::from_secs(60);

/// Where a server stands with its sign-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthState {
    /// It never asked for a sign-in.
    Open,
    /// It has a grant that works as far as we know.
    SignedIn,
    /// It needs a person to sign in (Connect on the page, or `sparky mcp login`), for the
    /// reason given.
    NeedsSignIn(String),
}

impl AuthState {
    /// The state's name on the wire: `open`, `signed_in` or `needs_sign_in`.
    pub fn name(&self) -> &'static str {
        match self {
            AuthState::Open => "open",
            AuthState::SignedIn => "signed_in",
            AuthState::NeedsSignIn(_) => "needs_sign_in",
        }
    }
}

/// What every server's sign-in shares: the store, Sparky's addresses, the agent, and the
/// sign-ins waiting for their callback.
pub(crate) struct Shared {
    store: Option<Arc<dyn McpAuthStore>>,
    /// `--public-url`, when set.
    public_url: Option<String>,
    /// Where the page's callback is reached when there is no public URL:
    /// `http://127.0.0.1:PORT`.
    local_base: Option<String>,
    agent: Agent,
}

/// A sign-in waiting for its callback, as the store keeps it under its `state` (so that the
/// callback may reach any instance). Its verifier is a secret: never logged.
#[derive(Serialize, Deserialize)]
struct Pending {
    discovered: Discovered,
    client: registration::Client,
    verifier: String,
}

/// How the sign-ins of one config reach the store and the page.
#[derive(Clone, Default)]
pub struct OAuthOptions {
    /// Where grants are kept; without one, no server can be signed in to.
    pub store: Option<Arc<dyn McpAuthStore>>,
    /// `--public-url`, when set.
    pub public_url: Option<String>,
    /// `http://127.0.0.1:PORT` of the running server, for the page's callback.
    pub local_base: Option<String>,
}

impl std::fmt::Debug for OAuthOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthOptions")
            .field("store", &self.store.is_some())
            .field("public_url", &self.public_url)
            .field("local_base", &self.local_base)
            .finish()
    }
}

/// Every OAuth-capable server of one config: what the page's Connect button, its callback
/// and `sparky mcp login` use.
#[derive(Clone)]
pub struct SignIns {
    shared: Arc<Shared>,
    servers: Arc<BTreeMap<String, Arc<ServerAuth>>>,
}

impl std::fmt::Debug for SignIns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIns")
            .field("servers", &self.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SignIns {
    /// Sign-ins for `servers` (name, URL, configured client).
    pub(crate) fn new(
        options: OAuthOptions,
        servers: impl IntoIterator<Item = (String, String, ConfiguredClient)>,
    ) -> Self {
        let shared = Arc::new(Shared {
            store: options.store,
            public_url: options.public_url,
            local_base: options.local_base,
            agent: http::agent(),
        });
        let servers = servers
            .into_iter()
            .map(|(name, url, configured)| {
                let auth = Arc::new(ServerAuth {
                    name: name.clone(),
                    url,
                    configured,
                    shared: shared.clone(),
                    state: Mutex::new(AuthState::Open),
                    changed: Condvar::new(),
                    challenge: Mutex::new(None),
                    refreshing: Mutex::new(None),
                    needed_at: AtomicI64::new(0),
                });
                (name, auth)
            })
            .collect();
        SignIns {
            shared,
            servers: Arc::new(servers),
        }
    }

    /// The sign-in of server `name`, when it is a `url` server.
    pub(crate) fn server(&self, name: &str) -> Option<Arc<ServerAuth>> {
        self.servers.get(name).cloned()
    }

    /// Each `url` server's sign-in state, by name.
    pub fn states(&self) -> Vec<(String, AuthState)> {
        self.servers
            .iter()
            .map(|(name, auth)| (name.clone(), auth.state()))
            .collect()
    }

    /// The redirect URI of the page's sign-ins: under `--public-url`, else the local address.
    pub fn page_redirect_uri(&self) -> Option<String> {
        let base = self
            .shared
            .public_url
            .as_deref()
            .or(self.shared.local_base.as_deref())?;
        Some(format!("{}{CALLBACK_PATH}", base.trim_end_matches('/')))
    }

    /// `--public-url`, for the client metadata document.
    pub fn public_url(&self) -> Option<&str> {
        self.shared.public_url.as_deref()
    }

    /// Starts a sign-in to server `name` that comes back to `redirect_uri`: discovery, the
    /// client, and the authorization URL a person opens.
    ///
    /// # Errors
    ///
    /// [`OAuthError::UnknownServer`], or what discovery or registration failed with.
    pub fn begin(&self, name: &str, redirect_uri: &str) -> Result<String, OAuthError> {
        let server = self
            .server(name)
            .ok_or_else(|| OAuthError::UnknownServer(name.to_owned()))?;
        let shared = &self.shared;
        let challenge = server.challenge.lock().clone();
        let challenge = match challenge {
            Some(challenge) => challenge,
            None => http::probe(&shared.agent, &server.url)
                .map(|header| parse_challenge(&header))
                .unwrap_or_default(),
        };
        let discovered = discover(&shared.agent, &server.url, &challenge)?;
        let client = client_for(
            &shared.agent,
            &discovered.server,
            &server.configured,
            redirect_uri,
            shared.public_url.as_deref(),
        )?;
        let scope = server
            .configured
            .scope
            .clone()
            .or_else(|| discovered.scope.clone());
        let started = flow::start(&flow::Request {
            authorization_endpoint: &discovered.server.authorization_endpoint,
            token_endpoint: &discovered.server.token_endpoint,
            client: &client,
            resource: &discovered.resource,
            scope: scope.as_deref(),
        })?;
        log::info!(
            "mcp {name}: sign-in started (client {} by {})",
            client.id,
            client.how
        );
        let mut discovered = discovered;
        discovered.scope = scope;
        let pending = Pending {
            discovered,
            client,
            verifier: started.verifier,
        };
        let text = serde_json::to_string(&pending)
            .map_err(|e| OAuthError::Http(format!("cannot encode the sign-in: {e}")))?;
        let store = shared.store.as_ref().ok_or_else(no_store)?;
        let expired = unix_now() - SIGN_IN_TTL.as_secs() as i64;
        store.put_mcp_sign_in(&started.state, name, &text, expired)?;
        Ok(started.url)
    }

    /// Finishes the sign-in whose `state` came back with `code`: exchanges it, stores the
    /// grant, and wakes the server's start. Returns the server's name. A `state` works once.
    ///
    /// # Errors
    ///
    /// [`OAuthError::UnknownSignIn`] for a `state` unknown, used or older than
    /// [`SIGN_IN_TTL`]; what the exchange or the store failed with.
    pub fn finish(&self, state: &str, code: &str) -> Result<String, OAuthError> {
        let store = self.shared.store.as_ref().ok_or_else(no_store)?;
        let not_before = unix_now() - SIGN_IN_TTL.as_secs() as i64;
        let Some((name, text)) = store.take_mcp_sign_in(state, not_before)? else {
            return Err(OAuthError::UnknownSignIn);
        };
        let Some(server) = self.server(&name) else {
            return Err(OAuthError::UnknownServer(name));
        };
        let pending: Pending =
            serde_json::from_str(&text).map_err(|_| OAuthError::UnknownSignIn)?;
        let grant = flow::exchange(
            &self.shared.agent,
            &flow::Request {
                authorization_endpoint: &pending.discovered.server.authorization_endpoint,
                token_endpoint: &pending.discovered.server.token_endpoint,
                client: &pending.client,
                resource: &pending.discovered.resource,
                scope: pending.discovered.scope.as_deref(),
            },
            &server.url,
            code,
            &pending.verifier,
        )?;
        server.keep(&grant)?;
        log::info!("mcp {}: signed in", server.name);
        server.set_state(AuthState::SignedIn);
        Ok(server.name.clone())
    }
}

/// A server's sign-in as its endpoint carries it to the HTTP transport: none for a server
/// whose config sends its own `Authorization` header (or before the servers are set up).
/// Runtime state, not configuration: any two compare equal.
#[derive(Clone, Default)]
pub(crate) struct Authorizer(pub(crate) Option<Arc<ServerAuth>>);

impl PartialEq for Authorizer {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Authorizer {}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "oauth" } else { "none" })
    }
}

impl Authorizer {
    /// The access token to send, if any (see [`ServerAuth::bearer`]).
    pub(crate) fn bearer(&self) -> Option<String> {
        self.0.as_ref()?.bearer()
    }
}

/// One `url` server's sign-in: its state, what its last 401 said, and its token.
pub(crate) struct ServerAuth {
    pub(crate) name: String,
    url: String,
    configured: ConfiguredClient,
    shared: Arc<Shared>,
    state: Mutex<AuthState>,
    /// Notified when the state changes.
    changed: Condvar,
    /// What its last 401 said.
    challenge: Mutex<Option<Challenge>>,
    /// Held by the one thread of this process that refreshes; holds when the server last
    /// refused a token (a forced refresh).
    refreshing: Mutex<Option<Instant>>,
    /// The version of the stored grant (0 for none) when it last came to need a sign-in: a
    /// newer one (a sign-in on another instance, or by `sparky mcp login`) ends the wait.
    needed_at: AtomicI64,
}

/// The error of a sign-in without a store to keep it in.
fn no_store() -> OAuthError {
    OAuthError::Store(crate::common::error::Error::Config(
        "no store to keep the sign-in in".into(),
    ))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl ServerAuth {
    /// Its state.
    pub(crate) fn state(&self) -> AuthState {
        self.state.lock().clone()
    }

    fn set_state(&self, state: AuthState) {
        if matches!(state, AuthState::NeedsSignIn(_)) {
            let version = self.stored().map_or(0, |(_, version)| version);
            self.needed_at.store(version, Ordering::SeqCst);
        }
        let mut current = self.state.lock();
        if *current != state {
            if let AuthState::NeedsSignIn(reason) = &state {
                log::warn!(
                    "mcp {}: needs a sign-in ({reason}): use Connect on the page or `sparky mcp \
                     login {}`",
                    self.name,
                    self.name
                );
            }
            *current = state;
            self.changed.notify_all();
        }
    }

    /// True while a person must sign in (after a look at the store: a sign-in on another
    /// instance, or by `sparky mcp login`, counts).
    pub(crate) fn needs_sign_in(&self) -> bool {
        if !matches!(*self.state.lock(), AuthState::NeedsSignIn(_)) {
            return false;
        }
        self.recheck();
        matches!(*self.state.lock(), AuthState::NeedsSignIn(_))
    }

    /// Marks the server signed in when the store holds a grant newer than the one it needed a
    /// sign-in with.
    fn recheck(&self) {
        if let Some((_, version)) = self.stored()
            && version > self.needed_at.load(Ordering::SeqCst)
        {
            self.set_state(AuthState::SignedIn);
        }
    }

    /// Waits until the server is signed in again, here or elsewhere (the store is looked at
    /// every [`SIGN_IN_POLL`]), or `stopping` is set; true when signed in.
    pub(crate) fn wait_for_sign_in(self: &Arc<Self>, stopping: &CancelFlag) -> bool {
        let auth = self.clone();
        let _hook = stopping.on_cancel(move || {
            let _state = auth.state.lock();
            auth.changed.notify_all();
        });
        loop {
            {
                let mut state = self.state.lock();
                if !matches!(*state, AuthState::NeedsSignIn(_)) || stopping.is_cancelled() {
                    return !stopping.is_cancelled();
                }
                self.changed.wait_for(&mut state, SIGN_IN_POLL);
            }
            self.recheck();
        }
    }

    /// The grant stored for this server, with its version, when it is for this URL.
    fn stored(&self) -> Option<(Grant, i64)> {
        let store = self.shared.store.as_ref()?;
        let stored = match store.mcp_grant(&self.name) {
            Ok(stored) => stored?,
            Err(e) => {
                log::warn!("mcp {}: cannot read its grant: {e}", self.name);
                return None;
            }
        };
        let grant: Grant = serde_json::from_str(&stored.grant).ok()?;
        (grant.server_url == self.url).then_some((grant, stored.version))
    }

    /// Stores `grant` as this server's.
    fn keep(&self, grant: &Grant) -> Result<i64, OAuthError> {
        let store = self.shared.store.as_ref().ok_or_else(no_store)?;
        let text = serde_json::to_string(grant)
            .map_err(|e| OAuthError::Http(format!("cannot encode the grant: {e}")))?;
        Ok(store.put_mcp_grant(&self.name, &text)?)
    }

    /// The access token to send, refreshed first when it expires within
    /// [`REFRESH_AHEAD_SECONDS`]; `None` when there is no grant (the server then says whether
    /// it wants one).
    pub(crate) fn bearer(&self) -> Option<String> {
        let (grant, version) = self.stored()?;
        if !grant.expiring(unix_now()) {
            return Some(grant.access_token);
        }
        match self.refresh(version) {
            Ok(fresh) => Some(fresh.access_token),
            Err(e) => {
                log::warn!("mcp {}: its token could not be refreshed: {e}", self.name);
                let still_valid = grant.expires_at.is_some_and(|at| at > unix_now());
                still_valid.then_some(grant.access_token)
            }
        }
    }

    /// Refreshes the grant last read at `seen`, single-flight: in this process (a mutex), and
    /// across instances (the store's lease, claimed for the version read after taking the
    /// mutex). A grant another refresh replaced meanwhile is returned as it is.
    ///
    /// # Errors
    ///
    /// [`OAuthError::Refused`] when the server refused the refresh token (the grant is then
    /// forgotten and the server needs a sign-in), [`OAuthError::Http`] otherwise.
    pub(crate) fn refresh(&self, seen: i64) -> Result<Grant, OAuthError> {
        let Some(store) = self.shared.store.clone() else {
            return Err(OAuthError::Refused("no store".into()));
        };
        let _one = self.refreshing.lock();
        let deadline = Instant::now() + REFRESH_WAIT;
        let mut seen = seen;
        loop {
            let Some((grant, version)) = self.stored() else {
                self.set_state(AuthState::NeedsSignIn("it was signed out".into()));
                return Err(OAuthError::Refused("it was signed out".into()));
            };
            let now = unix_now();
            // Another refresh landed since `seen` was read: its grant is the one to use.
            if version != seen && !grant.expiring(now) {
                self.set_state(AuthState::SignedIn);
                return Ok(grant);
            }
            if grant.refresh_token.is_none() {
                self.set_state(AuthState::NeedsSignIn(
                    "its token expired and it gave no refresh token".into(),
                ));
                return Err(OAuthError::Refused("no refresh token".into()));
            }
            if store.claim_mcp_refresh(&self.name, version, now, now + LEASE_SECONDS)? {
                return self.refresh_claimed(&grant);
            }
            if Instant::now() >= deadline {
                return Err(OAuthError::Http(
                    "another instance has been refreshing its token for too long".into(),
                ));
            }
            seen = version;
            std::thread::sleep(REFRESH_POLL);
        }
    }

    /// Refreshes `grant` with the lease held; stores the new grant (freeing the lease), or
    /// forgets a refused one.
    fn refresh_claimed(&self, grant: &Grant) -> Result<Grant, OAuthError> {
        let Some(store) = &self.shared.store else {
            return Err(OAuthError::Refused("no store".into()));
        };
        log::info!("mcp {}: refreshing its token", self.name);
        match flow::refresh(&self.shared.agent, grant) {
            Ok(fresh) => {
                self.keep(&fresh)?;
                self.set_state(AuthState::SignedIn);
                Ok(fresh)
            }
            Err(OAuthError::Refused(detail)) => {
                store.forget_mcp_grant(&self.name)?;
                self.set_state(AuthState::NeedsSignIn(format!(
                    "its refresh token was refused ({detail})"
                )));
                Err(OAuthError::Refused(detail))
            }
            Err(e) => {
                if let Err(release) = store.release_mcp_refresh(&self.name) {
                    log::warn!(
                        "mcp {}: cannot free its refresh lease: {release}",
                        self.name
                    );
                }
                Err(e)
            }
        }
    }

    /// The server answered 401 with `www_authenticate`, to a request that carried `sent` (the
    /// token, if any). A refused token is refreshed once (at most once a minute); without a
    /// grant, or when that fails, the server needs a sign-in.
    pub(crate) fn challenged(&self, www_authenticate: Option<&str>, sent: Option<&str>) {
        *self.challenge.lock() = Some(www_authenticate.map(parse_challenge).unwrap_or_default());
        let Some((grant, version)) = self.stored() else {
            // A reason already given (a refused refresh token) says more: it stays.
            if !matches!(*self.state.lock(), AuthState::NeedsSignIn(_)) {
                self.set_state(AuthState::NeedsSignIn("it is not signed in".into()));
            }
            return;
        };
        if sent.is_some_and(|sent| sent != grant.access_token) {
            // Another thread refreshed meanwhile: the next request carries the new token.
            return;
        }
        let recently = self
            .refreshing
            .lock()
            .is_some_and(|at| at.elapsed() < FORCED_REFRESH_GAP);
        if recently || grant.refresh_token.is_none() {
            self.set_state(AuthState::NeedsSignIn(
                "the server refused its token".into(),
            ));
            return;
        }
        *self.refreshing.lock() = Some(Instant::now());
        if let Err(e) = self.refresh(version) {
            log::warn!("mcp {}: refreshing a refused token failed: {e}", self.name);
            self.set_state(AuthState::NeedsSignIn(
                "the server refused its token".into(),
            ));
        }
    }

    /// Marks the server as signed in (a request with its token was accepted).
    pub(crate) fn accepted(&self) {
        if matches!(*self.state.lock(), AuthState::NeedsSignIn(_)) {
            return;
        }
        if self.stored().is_some() {
            self.set_state(AuthState::SignedIn);
        }
    }
}
