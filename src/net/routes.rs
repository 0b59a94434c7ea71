//! The route table: every request the port answers over HTTP is one row, a method, a path
//! pattern and the function that answers it. Each function gets what it needs passed in, in a
//! [`RouteContext`] that `server.rs` builds once. This file has the table's machinery
//! ([`Route`], [`find`]) and the page's routes: the chat page and its `/assets/` (the
//! Content-Security-Policy; versioned assets cached for a year), a share link's page
//! (`/s/{share_id}`), `/healthz` (with the store's
//! state), `/metrics` (with the store's pool; figures only with a token when tokens are set)
//! and the WebSocket endpoint's upgrade. The `/api/` routes are `api.rs`'s table.
//!
//! Depends on: `common::auth`, `common::metrics`, `conversation::journal`, `conversation::session`, `files`, `model`, `net::accounts`, `net::assets`, `net::http`, `net::shutdown`, `store`, `store::shares`, `tools`, `tools::mcp`.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::common::auth::Auth;
use crate::common::metrics::Metrics;
use crate::conversation::journal::Journal;
use crate::conversation::session::SessionManager;
use crate::files::Library;
use crate::model::ModelBackend;
use crate::net::accounts::{Accounts, COOKIE};
use crate::net::assets;
use crate::net::http::{RequestHead, Response};
use crate::net::shutdown::Shutdown;
use crate::store::{ConversationStore, GraphStore, ShareStore};
use crate::tools::ToolChain;
use crate::tools::mcp::McpServers;

/// What the routes answer from, built once by `server.rs`: each route takes what it needs from
/// here.
pub struct RouteContext {
    /// The conversations: how many are live, and the API's operations on them.
    pub sessions: SessionManager,
    /// Where conversations are stored: whether it reaches its database, and its pool.
    pub store: Arc<dyn ConversationStore>,
    /// The journal: whether the store takes writes.
    pub journal: Journal,
    /// The knowledge graph: the API's memories.
    pub graph: Arc<dyn GraphStore>,
    /// The files: uploads (typed by their bytes, their text read in the background), their
    /// limits, and the store they are kept in.
    pub files: Library,
    /// Share links: the API's and `/s/{id}`'s.
    pub shares: Arc<dyn ShareStore>,
    /// The model, which `/healthz` names and asks whether it is reachable.
    pub model: Arc<dyn ModelBackend>,
    /// The tools, which `/healthz` counts.
    pub tools: Arc<ToolChain>,
    /// The MCP servers, whose states `/healthz` and `GET /api/mcp` show, and whose sign-ins
    /// the page starts; none without `--mcp-config`.
    pub mcp: Option<Arc<McpServers>>,
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// Where the server is in its life: `/healthz` answers `503` once it drains.
    pub shutdown: Shutdown,
    /// The tokens a request must present to see the server's figures and use the API.
    pub auth: Auth,
    /// User accounts: signing in and out, API tokens, the admin's list.
    pub accounts: Arc<Accounts>,
    /// When the server started.
    pub started: Instant,
    /// Serve `/metrics` to anyone (`--public-metrics`).
    pub public_metrics: bool,
}

impl fmt::Debug for RouteContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteContext")
            .field("sessions", &self.sessions)
            .field("public_metrics", &self.public_metrics)
            .finish_non_exhaustive()
    }
}

/// One row of a route table: requests with `method` whose path fits `pattern` go to `handler`.
#[derive(Debug)]
pub struct Route<H> {
    /// The method it answers; a `GET` route answers `HEAD` too (the caller leaves the body
    /// out).
    pub method: &'static str,
    /// The path: literal segments, `{name}` for any one segment (passed to the handler), and a
    /// last `*` for one or more segments.
    pub pattern: &'static str,
    /// The function that answers.
    pub handler: H,
}

/// What a route table holds for a request.
#[derive(Debug)]
pub enum Found<'t, 'p, H> {
    /// The route that answers it, and the segments its `{…}`s matched, in order.
    Route(&'t Route<H>, Vec<&'p str>),
    /// Routes have this path, but none this method: the methods they take, for the `Allow`
    /// header of a `405`.
    MethodNotAllowed(Vec<&'static str>),
    /// No route has this path.
    NotFound,
}

/// Looks a request up in `table`: the first route whose pattern fits `path` and whose method
/// is `method` (`HEAD` finds the `GET` routes).
pub fn find<'t, 'p, H>(table: &'t [Route<H>], method: &str, path: &'p str) -> Found<'t, 'p, H> {
    let method = if method == "HEAD" { "GET" } else { method };
    let mut allowed = Vec::new();
    for route in table {
        let Some(params) = fit(route.pattern, path) else {
            continue;
        };
        if route.method == method {
            return Found::Route(route, params);
        }
        if !allowed.contains(&route.method) {
            allowed.push(route.method);
        }
    }
    if allowed.is_empty() {
        Found::NotFound
    } else {
        Found::MethodNotAllowed(allowed)
    }
}

/// The segments of `path` that the `{…}`s of `pattern` stand for, or `None` when `path` does
/// not fit `pattern`.
fn fit<'p>(pattern: &str, path: &'p str) -> Option<Vec<&'p str>> {
    let mut params = Vec::new();
    let mut segments = path.split('/');
    for expected in pattern.split('/') {
        let segment = segments.next()?;
        if expected == "*" {
            return Some(params);
        }
        if expected.starts_with('{') && expected.ends_with('}') {
            params.push(segment);
        } else if expected != segment {
            return None;
        }
    }
    segments.next().is_none().then_some(params)
}

/// A request for one of the page's routes.
#[derive(Debug)]
pub struct PageRequest<'a> {
    /// Its head.
    pub head: &'a RequestHead,
    /// True when it may see the server's figures: no token is required, or it presented a
    /// valid one. Otherwise `/healthz` shows only the status, and `/metrics` answers `401`
    /// unless `--public-metrics`.
    pub authorized: bool,
    /// The path segments the route's `{…}`s matched, in order.
    pub params: Vec<&'a str>,
}

/// What a page route answers.
#[derive(Debug)]
pub enum Reply {
    /// Run a WebSocket on the connection: the chat endpoint's upgrade.
    Upgrade,
    /// A plain HTTP answer.
    Response(Response),
}

/// A page route.
pub type PageRoute = fn(&RouteContext, &PageRequest<'_>) -> Reply;

/// The page's routes: the WebSocket endpoint, the chat page and its assets, health and
/// metrics.
pub const PAGE_ROUTES: &[Route<PageRoute>] = &[
    Route {
        method: "GET",
        pattern: "/ws",
        handler: websocket,
    },
    Route {
        method: "GET",
        pattern: "/ws/chat",
        handler: websocket,
    },
    Route {
        method: "GET",
        pattern: "/",
        handler: page,
    },
    Route {
        method: "GET",
        pattern: "/index.html",
        handler: page,
    },
    Route {
        method: "GET",
        pattern: "/s/{share_id}",
        handler: share_page,
    },
    Route {
        method: "GET",
        pattern: "/assets/*",
        handler: asset_route,
    },
    Route {
        method: "GET",
        pattern: "/healthz",
        handler: health,
    },
    Route {
        method: "GET",
        pattern: "/metrics",
        handler: metrics,
    },
];

impl RouteContext {
    /// Answers a request for one of the page's routes (everything but `/api/`).
    pub fn page(&self, head: &RequestHead) -> Reply {
        let request = PageRequest {
            head,
            authorized: self
                .auth
                .check_either(head.token().as_deref(), head.cookie(COOKIE))
                .is_ok(),
            params: Vec::new(),
        };
        match find(PAGE_ROUTES, &head.method, &head.path) {
            Found::Route(route, params) => {
                (route.handler)(self, &PageRequest { params, ..request })
            }
            Found::MethodNotAllowed(methods) => Reply::Response(Response {
                allow: allow(methods).into(),
                ..Response::text(
                    405,
                    "Method Not Allowed",
                    "method not allowed on this path\n",
                )
            }),
            Found::NotFound => Reply::Response(not_found()),
        }
    }
}

/// What the `Allow` header of a `405` names, from the methods [`find`] found for a path
/// (PROTOCOL.md section 10): those, in the table's order, with `HEAD` after `GET`, since a
/// `GET` route answers `HEAD` too.
pub fn allow(methods: Vec<&'static str>) -> Vec<&'static str> {
    let mut allowed = Vec::with_capacity(methods.len() + 1);
    for method in methods {
        allowed.push(method);
        if method == "GET" {
            allowed.push("HEAD");
        }
    }
    allowed
}

fn not_found() -> Response {
    Response::text(404, "Not Found", "not found\n")
}

/// PROTOCOL.md section 10: anything that is not one of its answers is a 404, so a plain GET of
/// the WebSocket path is too (the body says what it wanted).
fn websocket_only() -> Response {
    Response::text(
        404,
        "Not Found",
        "this path speaks WebSocket only: send an Upgrade request\n",
    )
}

/// The chat endpoint: a `GET` that asks to upgrade to WebSocket gets one.
fn websocket(_: &RouteContext, request: &PageRequest<'_>) -> Reply {
    let head = request.head;
    if head.method == "GET" && head.header_has("upgrade", "websocket") {
        Reply::Upgrade
    } else {
        Reply::Response(websocket_only())
    }
}

/// `/` and `/index.html`: the chat page.
fn page(_: &RouteContext, _: &PageRequest<'_>) -> Reply {
    Reply::Response(chat_page())
}

/// `/s/{share_id}`: a share link's read-only page, for anyone who has the link; a `404` for an
/// id that is not a link (any more).
fn share_page(ctx: &RouteContext, request: &PageRequest<'_>) -> Reply {
    let Some(id) = request
        .params
        .first()
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return Reply::Response(not_found());
    };
    Reply::Response(match ctx.shares.share(id) {
        Ok(Some(_)) => Response {
            content_type: "text/html; charset=utf-8",
            extra_headers: CHAT_PAGE_HEADERS,
            ..Response::text(200, "OK", assets::share_page())
        },
        Ok(None) => not_found(),
        Err(e) => {
            log::error!("routes: {e}");
            Response::text(
                503,
                "Service Unavailable",
                "the store cannot be reached now\n",
            )
        }
    })
}

/// `/assets/…`: a file the chat page loads.
fn asset_route(_: &RouteContext, request: &PageRequest<'_>) -> Reply {
    Reply::Response(asset(&request.head.path, request.head))
}

/// `/metrics`: the counters in Prometheus' text format, for a request that may see them, or
/// for anyone with `--public-metrics`.
fn metrics(ctx: &RouteContext, request: &PageRequest<'_>) -> Reply {
    if !(request.authorized || ctx.public_metrics) {
        return Reply::Response(Response {
            extra_headers: &[("WWW-Authenticate", "Bearer")],
            ..Response::text(
                401,
                "Unauthorized",
                "a valid token is required (Authorization: Bearer, or ?token=)\n",
            )
        });
    }
    Reply::Response(Response {
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        ..Response::text(200, "OK", &metrics_text(ctx))
    })
}

/// Headers of the chat page and its assets. The policy lets the page run only the scripts and
/// style sheets served from `/assets/` (no inline script or style, no `eval`), fetch only from
/// this server and open WebSockets only to it (CSP Level 3: `'self'` covers `ws:` and `wss:`
/// on the page's own host and port); it loads no image but `data:` ones and `blob:` ones (the
/// thumbnails of attached images, fetched with the page's credentials; answers never fetch
/// images), no frame, no plugin, and no other site may frame it.
const CHAT_PAGE_HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src data: blob:; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
];

/// `Cache-Control` of an asset asked for by its versioned URL: its content never changes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `Cache-Control` of an asset asked for without its current version: keep, but check first.
const REVALIDATE: &str = "no-cache";

/// The server's counters, then the store's: whether it reaches its database, and its pool.
fn metrics_text(ctx: &RouteContext) -> String {
    let mut text = ctx.metrics.render(ctx.sessions.len());
    let store = ctx.store.status();
    let mut samples = vec![(
        "sparky_store_up",
        "gauge",
        "1 while the store reaches its database and takes writes.",
        u64::from(store.reachable && !ctx.journal.failing()),
    )];
    if let Some(pool) = store.pool {
        samples.extend([
            (
                "sparky_store_pool_size",
                "gauge",
                "Connections the store's pool may open (--store-pool).",
                pool.size,
            ),
            (
                "sparky_store_pool_open",
                "gauge",
                "Pool connections open, in use or idle.",
                pool.open,
            ),
            (
                "sparky_store_pool_in_use",
                "gauge",
                "Pool connections lent out.",
                pool.in_use,
            ),
            (
                "sparky_store_pool_waiting",
                "gauge",
                "Threads waiting for a pool connection.",
                pool.waiting,
            ),
            (
                "sparky_store_pool_checkouts_total",
                "counter",
                "Pool connections lent.",
                pool.checkouts_total,
            ),
            (
                "sparky_store_pool_waits_total",
                "counter",
                "Checkouts that waited for a connection to come back.",
                pool.waits_total,
            ),
            (
                "sparky_store_pool_timeouts_total",
                "counter",
                "Checkouts that gave up waiting.",
                pool.timeouts_total,
            ),
            (
                "sparky_store_connects_total",
                "counter",
                "Database connections opened, the writer's included.",
                pool.connects_total,
            ),
            (
                "sparky_store_connect_failures_total",
                "counter",
                "Attempts to connect to the database that failed.",
                pool.connect_failures_total,
            ),
        ]);
    }
    text.push_str(&Metrics::render_samples(&samples));
    text
}

/// The chat page, with the headers of [`CHAT_PAGE_HEADERS`].
fn chat_page() -> Response {
    Response {
        content_type: "text/html; charset=utf-8",
        extra_headers: CHAT_PAGE_HEADERS,
        ..Response::text(200, "OK", assets::page())
    }
}

/// A file of `/assets/`, kept for a year when asked for by its current versioned URL.
fn asset(path: &str, head: &RequestHead) -> Response {
    let Some(asset) = assets::find(path) else {
        return not_found();
    };
    let versioned = head.query.as_deref().is_some_and(|query| {
        form_urlencoded::parse(query.as_bytes())
            .any(|(name, value)| name == "v" && value == asset.version)
    });
    Response {
        content_type: asset.content_type,
        extra_headers: CHAT_PAGE_HEADERS,
        cache_control: if versioned { IMMUTABLE } else { REVALIDATE },
        ..Response::text(200, "OK", asset.body)
    }
}

/// `/healthz`: the status, and for a request that may see them the server's figures.
fn health(ctx: &RouteContext, request: &PageRequest<'_>) -> Reply {
    let store = ctx.store.status();
    let degraded = ctx.journal.failing() || !store.reachable;
    let shutting_down = ctx.shutdown.draining();
    let status = if shutting_down {
        "shutting_down"
    } else if degraded {
        "degraded"
    } else {
        "ok"
    };
    // Without a token only the status: counts and versions help whoever probes the server.
    let model = ctx.model.health();
    let body = if !request.authorized {
        json!({ "status": status })
    } else {
        json!({
            "status": status,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": ctx.started.elapsed().as_secs(),
            "connections": Metrics::get(&ctx.metrics.connections_open),
            "sessions": ctx.sessions.len(),
            "model": {
                "name": ctx.model.name(),
                "reachable": model.reachable,
                "last_error": model.last_error,
            },
            "tools_loaded": ctx.tools.len(),
            "mcp": mcp_states(ctx),
            "mcp_config_error": ctx.mcp.as_ref().and_then(|mcp| mcp.config_error()),
            "store": if degraded { "failing" } else { "ok" },
            "store_backend": store.backend,
        })
    };
    let (status, reason) = if shutting_down || degraded {
        (503, "Service Unavailable")
    } else {
        (200, "OK")
    };
    Reply::Response(Response {
        content_type: "application/json",
        ..Response::text(status, reason, &body.to_string())
    })
}

/// Each MCP server's state for `/healthz`: `{name: {state, auth?, reason?, restart_needed?}}`.
fn mcp_states(ctx: &RouteContext) -> serde_json::Value {
    let mut states = serde_json::Map::new();
    for status in ctx.mcp.as_ref().map(|m| m.status()).unwrap_or_default() {
        let mut state = json!({ "state": status.state });
        if status.restart_needed {
            state["restart_needed"] = true.into();
        }
        if let Some(auth) = &status.auth {
            state["auth"] = auth.name().into();
            if let crate::tools::mcp::AuthState::NeedsSignIn(reason) = auth {
                state["reason"] = reason.as_str().into();
            }
        }
        states.insert(status.name, state);
    }
    serde_json::Value::Object(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_finds_routes_by_method_and_pattern() {
        let table: &[Route<u8>] = &[
            Route {
                method: "GET",
                pattern: "/a/{id}",
                handler: 1,
            },
            Route {
                method: "DELETE",
                pattern: "/a/{id}",
                handler: 2,
            },
            Route {
                method: "GET",
                pattern: "/files/*",
                handler: 3,
            },
            Route {
                method: "GET",
                pattern: "/",
                handler: 4,
            },
        ];
        let handler = |method, path| match find(table, method, path) {
            Found::Route(route, params) => Some((route.handler, params)),
            _ => None,
        };
        assert_eq!(handler("GET", "/a/x"), Some((1, vec!["x"])));
        assert_eq!(handler("HEAD", "/a/"), Some((1, vec![""])));
        assert_eq!(handler("DELETE", "/a/y"), Some((2, vec!["y"])));
        assert_eq!(handler("GET", "/files/a/b"), Some((3, vec![])));
        assert_eq!(handler("GET", "/files/"), Some((3, vec![])));
        assert_eq!(handler("GET", "/"), Some((4, vec![])));
        for path in ["/files", "/a", "/a/x/y", "", "/b", "a/x", "*"] {
            assert!(
                matches!(find(table, "GET", path), Found::NotFound),
                "{path}"
            );
        }
        assert!(matches!(
            find(table, "POST", "/a/x"),
            Found::MethodNotAllowed(allowed) if allowed == ["GET", "DELETE"]
        ));
        assert!(matches!(
            find(table, "get", "/"),
            Found::MethodNotAllowed(allowed) if allowed == ["GET"]
        ));
    }

    #[test]
    fn allow_names_head_beside_get() {
        assert_eq!(allow(vec!["GET"]), ["GET", "HEAD"]);
        assert_eq!(
            allow(vec!["GET", "PATCH", "DELETE"]),
            ["GET", "HEAD", "PATCH", "DELETE"]
        );
        assert_eq!(allow(vec!["DELETE"]), ["DELETE"]);
    }

    #[test]
    fn assets_are_kept_for_a_year_only_under_their_current_version() {
        let app = assets::find("/assets/app.js").unwrap();
        let versioned =
            RequestHead::parse(format!("GET {} HTTP/1.1\r\n\r\n", app.url()).as_bytes());
        let answer = asset(&versioned.path, &versioned);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.cache_control, IMMUTABLE);
        assert_eq!(answer.content_type, "text/javascript; charset=utf-8");
        assert_eq!(answer.extra_headers, CHAT_PAGE_HEADERS);
        let stale = RequestHead::parse(b"GET /assets/app.js?v=0000 HTTP/1.1\r\n\r\n");
        assert_eq!(asset(&stale.path, &stale).cache_control, REVALIDATE);
        let missing = RequestHead::parse(b"GET /assets/nope.js HTTP/1.1\r\n\r\n");
        assert_eq!(asset(&missing.path, &missing).status, 404);
    }

    #[test]
    fn writes_extra_headers_after_the_fixed_ones() {
        let page = chat_page();
        let mut out = Vec::new();
        page.write_to(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"));
        assert!(
            head.contains("\r\nContent-Security-Policy: default-src 'none'; script-src 'self'; ")
        );
        assert!(head.ends_with("\r\nReferrer-Policy: no-referrer"), "{head}");
        assert!(head.contains("\r\nCache-Control: no-store\r\n"));
        assert_eq!(body, assets::page());
        assert!(body.contains("<title>Sparky</title>"));
    }
}
