//! The conversation API of PROTOCOL.md section 10 as a route table: list, search, read, rename
//! and delete conversations; list, search, add, edit and delete memories; upload, list, read
//! and delete files; export and import conversations (`porting.rs`); make, list and revoke
//! share links. A share link's copy and the files it lists are read without a token
//! (`PUBLIC_ROUTES`): its 128-bit id is the secret. One route function per row, serde types
//! for every body. The caller is a
//! principal (the local one when the server requires no token); anything that is not theirs is
//! a `404`, so that nobody learns which ids exist.
//!
//! A body is read whole before its route runs (at most [`MAX_BODY_BYTES`]), but for an upload
//! ([`streams`]): that one is handed to `files::Library::upload` as a stream straight from the
//! socket, after the caller's token and the declared length have been checked, so that a file
//! is never held whole and one too large is refused before a byte of it is read. A file is
//! served as `file_response.rs` says.
//!
//! Depends on: `common::auth`, `common::error`, `common::metrics`, `common::protocol`, `conversation::session`, `net::accounts`, `net::file_response`, `net::http`, `net::mcp_auth`, `net::porting`, `net::routes`, `store`, `store::files`, `store::shares`.

use std::io::Read;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::common::auth::{Auth, Principal};
use crate::common::error::Error;
use crate::common::metrics::Metrics;
use crate::common::protocol::{Attachment, ServerEnvelope, ServerFrame, SessionId, Usage};
use crate::conversation::session::Conversation;
use crate::net::accounts::{COOKIE, CSRF_HEADER, csrf_matches};
use crate::net::file_response;
use crate::net::http::{Body, Framing, JsonList, RequestBody, RequestHead, Response};
use crate::net::mcp_auth;
use crate::net::porting;
use crate::net::routes::{Found, Route, RouteContext, allow, find};
use crate::store::{Edited, Node, PageSize, Share, StoredFile, TurnsPage, Upload};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Events one page holds when the caller gives no `limit`.
const DEFAULT_EVENTS: usize = 200;

/// Events one page holds at most.
const MAX_EVENTS: usize = 1_000;

/// The most events a page of `?turn_id=T` holds: more than any turn makes (it is bounded by
/// `--max-steps`), and a bound on the answer whatever is stored.
const MAX_TURN_EVENTS: usize = 10_000;

/// Bytes of event bodies one page of events holds at most, whatever its `limit`: a page of
/// large events is shorter, and the client pages on (`before_seq`, or `after_seq` for one
/// turn). A page always holds at least one event, however large. Each page is read from the
/// store whole, so that no reader connection waits on a slow client, and written to the socket
/// piece by piece, so that it is never copied into one string.
pub const MAX_PAGE_BYTES: usize = 4 << 20;

/// Conversations one list holds at most (and by default).
const MAX_CONVERSATIONS: usize = 5_000;

/// Files one list holds at most.
const MAX_FILES: usize = 10_000;

/// Memories one list holds at most (and by default).
const MAX_MEMORIES: usize = 1_000;

/// Characters a memory added or edited by hand may hold at most: a fact a person types, with
/// room to spare, and far below what a model's context can take in one lookup.
pub const MAX_MEMORY_CHARS: usize = 10_000;

/// One API request, authenticated.
#[derive(Debug)]
pub struct ApiRequest<'a> {
    /// The query string, if any.
    pub query: Option<&'a str>,
    /// The body, when it was read whole.
    pub body: &'a [u8],
    /// The body as a stream, for an upload ([`streams`]); `body` is then empty.
    pub upload: Option<&'a RequestBody<'a>>,
    /// The request's `Content-Type`, if any.
    pub content_type: Option<&'a str>,
    /// Who asks.
    pub principal: &'a Principal,
    /// The sign-in cookie the request carries, if any.
    pub cookie: Option<&'a str>,
    /// The address the request came from (for sign-ins' limits), when known.
    pub client: Option<IpAddr>,
    /// The path segments the route's `{…}`s matched, in order.
    pub params: Vec<&'a str>,
}

/// An API route.
pub type ApiRoute = fn(&RouteContext, &ApiRequest<'_>) -> Response;

/// The API's routes.
pub const API_ROUTES: &[Route<ApiRoute>] = &[
    Route {
        method: "GET",
        pattern: "/api/mcp",
        handler: mcp_servers,
    },
    Route {
        method: "POST",
        pattern: "/api/mcp/{name}/connect",
        handler: mcp_connect,
    },
    Route {
        method: "GET",
        pattern: "/api/conversations",
        handler: list_conversations,
    },
    Route {
        method: "GET",
        pattern: "/api/conversations/{id}",
        handler: conversation,
    },
    Route {
        method: "PATCH",
        pattern: "/api/conversations/{id}",
        handler: rename,
    },
    Route {
        method: "DELETE",
        pattern: "/api/conversations/{id}",
        handler: delete_conversation,
    },
    Route {
        method: "GET",
        pattern: "/api/conversations/{id}/events",
        handler: events,
    },
    Route {
        method: "GET",
        pattern: "/api/conversations/{id}/turns",
        handler: turns,
    },
    Route {
        method: "POST",
        pattern: "/api/conversations/{id}/share",
        handler: share,
    },
    Route {
        method: "GET",
        pattern: "/api/shares",
        handler: list_shares,
    },
    Route {
        method: "GET",
        pattern: "/api/shares/{share_id}",
        handler: shared_route,
    },
    Route {
        method: "DELETE",
        pattern: "/api/shares/{share_id}",
        handler: revoke_share,
    },
    Route {
        method: "GET",
        pattern: "/api/shares/{share_id}/files/{file_id}",
        handler: shared_file_route,
    },
    Route {
        method: "GET",
        pattern: "/api/conversations/{id}/export",
        handler: export,
    },
    Route {
        method: "POST",
        pattern: "/api/import",
        handler: import,
    },
    Route {
        method: "GET",
        pattern: "/api/memories",
        handler: memories,
    },
    Route {
        method: "POST",
        pattern: "/api/memories",
        handler: add_memory,
    },
    Route {
        method: "PATCH",
        pattern: "/api/memories/{id}",
        handler: edit_memory,
    },
    Route {
        method: "DELETE",
        pattern: "/api/memories/{id}",
        handler: delete_memory,
    },
    Route {
        method: "GET",
        pattern: "/api/files",
        handler: list_files,
    },
    Route {
        method: "POST",
        pattern: "/api/login",
        handler: login,
    },
    Route {
        method: "POST",
        pattern: "/api/logout",
        handler: logout,
    },
    Route {
        method: "GET",
        pattern: "/api/me",
        handler: me,
    },
    Route {
        method: "GET",
        pattern: "/api/tokens",
        handler: list_tokens,
    },
    Route {
        method: "POST",
        pattern: "/api/tokens",
        handler: create_token,
    },
    Route {
        method: "DELETE",
        pattern: "/api/tokens/{id}",
        handler: revoke_token,
    },
    Route {
        method: "GET",
        pattern: "/api/users",
        handler: list_users,
    },
    Route {
        method: "POST",
        pattern: "/api/users",
        handler: create_user,
    },
    Route {
        method: "PATCH",
        pattern: "/api/users/{name}",
        handler: set_limits,
    },
    Route {
        method: "DELETE",
        pattern: "/api/users/{name}",
        handler: remove_user,
    },
    Route {
        method: "GET",
        pattern: "/api/usage",
        handler: usage,
    },
    Route {
        method: "POST",
        pattern: "/api/files",
        handler: upload,
    },
    Route {
        method: "GET",
        pattern: "/api/files/{id}",
        handler: file,
    },
    Route {
        method: "DELETE",
        pattern: "/api/files/{id}",
        handler: delete_file,
    },
];

/// A route anyone may take, without a token: what a share link shows.
type PublicRoute = fn(&RouteContext, &[&str]) -> Response;

/// The routes of [`API_ROUTES`] that need no token: a share link's copy and its files. The id
/// is the secret (128 random bits); a revoked or unknown one is a `404`.
const PUBLIC_ROUTES: &[Route<PublicRoute>] = &[
    Route {
        method: "GET",
        pattern: "/api/shares/{share_id}",
        handler: shared,
    },
    Route {
        method: "GET",
        pattern: "/api/shares/{share_id}/files/{file_id}",
        handler: shared_file,
    },
];

/// True for the paths the API answers: `/api` and everything under `/api/`.
pub fn serves(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// True for the requests whose body is read as a stream rather than whole: `POST /api/files`
/// and `POST /api/import` (read by their routes, once the token and the length are checked).
/// The caller hands [`answer`] a [`RequestBody`] for them.
pub fn streams(head: &RequestHead) -> bool {
    head.method == "POST"
        && matches!(
            head.path.trim_end_matches('/'),
            "/api/files" | "/api/import"
        )
}

/// Answers one API request, whose head is `head` and body `body` (read whole), or `upload`
/// (a stream, for a request [`streams`] names), from `client`: a `401` unless it presents a
/// valid bearer token or sign-in cookie (or none is required; `POST /api/login` needs none),
/// a `403` for a change authenticated by the cookie without its CSRF header, else its route's
/// answer. A trailing `/` is ignored; a path no route has is a `404`, a method its routes do
/// not take a `405`.
pub fn answer(
    ctx: &RouteContext,
    head: &RequestHead,
    body: &[u8],
    upload: Option<&RequestBody<'_>>,
    client: Option<IpAddr>,
) -> Response {
    let path = head.path.trim_end_matches('/');
    if let Found::Route(route, params) = find(PUBLIC_ROUTES, &head.method, path) {
        return (route.handler)(ctx, &params);
    }
    if let Some(response) = mcp_auth::public(ctx, head) {
        return response;
    }
    let cookie = head.cookie(COOKIE);
    let signing_in = path == "/api/login";
    let (principal, csrf) = if signing_in {
        (Principal::local(), None)
    } else {
        let Some(found) = principal(head, &ctx.auth) else {
            return Response {
                content_type: "application/json",
                extra_headers: &[("WWW-Authenticate", "Bearer")],
                ..Response::text(
                    401,
                    "Unauthorized",
                    r#"{"error":"a valid bearer token or sign-in is required"}"#,
                )
            };
        };
        found
    };
    if let Some(csrf) = csrf
        && !matches!(head.method.as_str(), "GET" | "HEAD")
        && !csrf_matches(head.header(CSRF_HEADER), &csrf)
    {
        return error(
            403,
            "Forbidden",
            "a change made with the sign-in cookie needs the X-Sparky-CSRF header that \
             POST /api/login answered",
        );
    }
    match find(API_ROUTES, &head.method, path) {
        Found::Route(route, params) => (route.handler)(
            ctx,
            &ApiRequest {
                query: head.query.as_deref(),
                body,
                upload,
                content_type: head.header("content-type"),
                principal: &principal,
                cookie,
                client,
                params,
            },
        ),
        Found::MethodNotAllowed(methods) => method_not_allowed(methods),
        Found::NotFound => not_found(),
    }
}

/// Who an API request comes from: the bearer token's principal (a configured token's, or a
/// user's API token's); else, with a sign-in cookie, its user, with the sign-in's CSRF token;
/// else the local principal when the server requires no token. `None` when a token is
/// required and missing or wrong.
fn principal(head: &RequestHead, auth: &Auth) -> Option<(Principal, Option<String>)> {
    let token = head
        .header("authorization")
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    if token.is_none()
        && let Some(cookie) = head.cookie(COOKIE).filter(|c| !c.is_empty())
        && auth.required()
    {
        return auth
            .check_cookie(cookie)
            .map(|(principal, csrf)| (principal, Some(csrf)));
    }
    match auth.check(token) {
        Ok(principal) => Some((principal.unwrap_or_else(Principal::local), None)),
        Err(_) => None,
    }
}

/// One conversation in a list or a `PATCH` answer.
#[derive(Debug, Serialize)]
struct ConversationJson {
    id: String,
    title: Option<String>,
    created_at: String,
    updated_at: String,
    turns: u64,
    running: bool,
    /// The model its turns use. Beyond PROTOCOL.md's fields, which clients ignore.
    model: String,
    /// The tokens its answered turns used, summed from each closing `message`'s `usage`.
    usage: Usage,
}

#[derive(Debug, Serialize)]
struct ConversationsJson<'a> {
    conversations: Vec<ConversationJson>,
    /// Whose they are: the token's name (`name:token` in the token file), else its
    /// fingerprint. A field beyond PROTOCOL.md's, which clients ignore.
    principal: &'a str,
}

/// The tree of a conversation, as `GET /api/conversations/{id}/turns` answers.
#[derive(Debug, Serialize)]
struct TurnsJson {
    leaf: u64,
    turns: Vec<TurnJson>,
}

/// One turn of [`TurnsJson`].
#[derive(Debug, Serialize)]
struct TurnJson {
    turn_id: u64,
    parent: u64,
    text: String,
    /// The files its user message carried.
    attachments: Vec<Attachment>,
    created_at: String,
    closing: Option<&'static str>,
}

impl From<TurnsPage> for TurnsJson {
    fn from(page: TurnsPage) -> Self {
        TurnsJson {
            leaf: page.leaf,
            turns: page
                .turns
                .into_iter()
                .map(|turn| TurnJson {
                    turn_id: turn.turn_id,
                    parent: turn.parent,
                    text: turn.text,
                    attachments: turn.attachments,
                    created_at: rfc3339(turn.created_at),
                    closing: turn.closing.map(|closing| closing.as_str()),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
struct MemoryJson {
    id: i64,
    kind: String,
    content: String,
    created_at: String,
}

#[derive(Debug, Serialize)]
struct MemoriesJson {
    memories: Vec<MemoryJson>,
}

/// A file as `GET /api/files` lists it.
#[derive(Debug, Serialize)]
struct FileJson {
    id: String,
    name: String,
    content_type: String,
    size: u64,
    created_at: String,
}

#[derive(Debug, Serialize)]
struct FilesJson {
    files: Vec<FileJson>,
}

/// A file as `POST /api/files` answers it.
#[derive(Debug, Serialize)]
struct UploadedJson {
    id: String,
    name: String,
    content_type: String,
    size: u64,
    sha256: String,
}

impl From<StoredFile> for FileJson {
    fn from(file: StoredFile) -> Self {
        FileJson {
            id: file.id,
            name: file.name,
            content_type: file.content_type,
            size: file.size,
            created_at: rfc3339(file.created_at),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RenameJson {
    title: String,
}

/// The body of `POST /api/memories` and `PATCH /api/memories/{id}`.
#[derive(Debug, Deserialize)]
struct ContentJson {
    content: String,
}

#[derive(Debug, Serialize)]
struct ErrorJson<'a> {
    error: &'a str,
    /// `storage` when the store failed (section 7's code for the same cause on the WebSocket).
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
}

/// An RFC 3339 UTC time for unix seconds.
fn rfc3339(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl From<Conversation> for ConversationJson {
    fn from(conversation: Conversation) -> Self {
        let summary = conversation.summary;
        ConversationJson {
            id: summary.id.as_str().to_owned(),
            title: summary.title,
            created_at: rfc3339(summary.created_at),
            updated_at: rfc3339(summary.updated_at),
            turns: summary.turns,
            running: conversation.running,
            model: conversation.model,
            usage: summary.usage,
        }
    }
}

impl From<Node> for MemoryJson {
    fn from(node: Node) -> Self {
        MemoryJson {
            id: node.id,
            kind: node.kind,
            content: node.content,
            created_at: rfc3339(node.created_at),
        }
    }
}

/// `GET /api/mcp`: see `mcp_auth.rs`.
fn mcp_servers(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    mcp_auth::servers(ctx, request.principal)
}

/// `POST /api/mcp/{name}/connect`: see `mcp_auth.rs`.
fn mcp_connect(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    mcp_auth::connect(
        ctx,
        request.principal,
        request.params.first().copied().unwrap_or(""),
    )
}

fn json(status: u16, reason: &'static str, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    Response {
        content_type: "application/json",
        ..Response::text(status, reason, &text)
    }
}

fn error(status: u16, reason: &'static str, message: &str) -> Response {
    json(
        status,
        reason,
        &ErrorJson {
            error: message,
            code: None,
        },
    )
}

fn not_found() -> Response {
    error(404, "Not Found", "not found")
}

fn no_content() -> Response {
    Response::text(204, "No Content", "")
}

/// A `405` whose `Allow` names the methods the path's routes take.
fn method_not_allowed(methods: Vec<&'static str>) -> Response {
    Response {
        allow: allow(methods).into(),
        ..error(405, "Method Not Allowed", "method not allowed on this path")
    }
}

/// The answer to a failure of the store, with the code `storage`: `507` when it refused a
/// write for lack of room (a full disk, `--max-store-mib`), else `503` (it cannot be reached,
/// or did not answer in time). Either way, a request that would change something changed
/// nothing.
fn failed(e: &Error) -> Response {
    let (status, reason, message) = if e.is_store_full() {
        log::warn!("api: {e}");
        (
            507,
            "Insufficient Storage",
            "the store is full; nothing was changed (deleting conversations or memories makes room)",
        )
    } else {
        log::error!("api: {e}");
        (
            503,
            "Service Unavailable",
            "the store cannot be reached now; nothing was changed",
        )
    };
    json(
        status,
        reason,
        &ErrorJson {
            error: message,
            code: Some("storage"),
        },
    )
}

/// The value of `name` in a query string, decoded.
fn param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// A numeric parameter: `Ok(None)` when absent, `Err` (a `400`) when not a number.
fn number(query: Option<&str>, name: &str) -> Result<Option<u64>, Response> {
    match param(query, name) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            error(
                400,
                "Bad Request",
                &format!("{name} must be a whole number"),
            )
        }),
    }
}

/// `GET /api/conversations[?q=words]`.
fn list_conversations(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let query = param(request.query, "q").filter(|q| !q.trim().is_empty());
    match ctx
        .sessions
        .list(request.principal, query.as_deref(), MAX_CONVERSATIONS)
    {
        Ok(list) => json(
            200,
            "OK",
            &ConversationsJson {
                conversations: list.into_iter().map(Into::into).collect(),
                principal: request.principal.name(),
            },
        ),
        Err(e) => failed(&e),
    }
}

/// `GET /api/conversations/{id}`: one entry of the list.
fn conversation(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let Some(id) = session_id(request) else {
        return not_found();
    };
    match ctx.sessions.conversation(request.principal, &id) {
        Ok(Some(conversation)) => json(200, "OK", &ConversationJson::from(conversation)),
        Ok(None) => not_found(),
        Err(e) => failed(&e),
    }
}

/// `GET /api/conversations/{id}/events?before_seq=N&limit=M`, or
/// `?turn_id=T[&after_seq=N]` for one turn's: a page of at most [`MAX_PAGE_BYTES`] of events.
fn events(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let Some(id) = session_id(request) else {
        return not_found();
    };
    let turn = match number(request.query, "turn_id") {
        Ok(turn) => turn,
        Err(response) => return response,
    };
    let bodies = match turn {
        Some(turn) => {
            let after = match number(request.query, "after_seq") {
                Ok(after) => after.unwrap_or(0),
                Err(response) => return response,
            };
            let size = PageSize {
                limit: MAX_TURN_EVENTS,
                max_bytes: MAX_PAGE_BYTES,
            };
            ctx.sessions
                .turn_events(request.principal, &id, turn, after, size)
        }
        None => match page(request.query) {
            Ok((before, limit)) => {
                let size = PageSize {
                    limit,
                    max_bytes: MAX_PAGE_BYTES,
                };
                ctx.sessions.events(request.principal, &id, before, size)
            }
            Err(response) => return response,
        },
    };
    match bodies {
        Ok(Some(bodies)) => {
            // Every body is an event the server encoded; one that is not JSON (a damaged row)
            // is left out rather than breaking the whole answer.
            let items = bodies
                .into_iter()
                .filter(|body| serde_json::from_str::<&RawValue>(body).is_ok())
                .collect();
            Response {
                content_type: "application/json",
                body: Body::JsonList(Box::new(JsonList {
                    key: "events",
                    items,
                })),
                ..Response::text(200, "OK", "")
            }
        }
        Ok(None) => not_found(),
        Err(e) => failed(&e),
    }
}

/// The `before_seq` and `limit` of an events page.
fn page(query: Option<&str>) -> Result<(Option<u64>, usize), Response> {
    let (before, limit) = match (number(query, "before_seq"), number(query, "limit")) {
        (Ok(before), Ok(limit)) => (before, limit),
        (Err(response), _) | (_, Err(response)) => return Err(response),
    };
    let limit = limit.map_or(DEFAULT_EVENTS, |n| {
        usize::try_from(n)
            .unwrap_or(MAX_EVENTS)
            .clamp(1, MAX_EVENTS)
    });
    Ok((before, limit))
}

/// `GET /api/conversations/{id}/turns`: the tree and the leaf.
fn turns(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let Some(id) = session_id(request) else {
        return not_found();
    };
    match ctx.sessions.turns(request.principal, &id) {
        Ok(Some(page)) => json(200, "OK", &TurnsJson::from(page)),
        Ok(None) => not_found(),
        Err(e) => failed(&e),
    }
}

/// `PATCH /api/conversations/{id}` with `{"title": "…"}`.
fn rename(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let Some(id) = session_id(request) else {
        return not_found();
    };
    let title = match serde_json::from_slice::<RenameJson>(request.body) {
        Ok(body) if !body.title.trim().is_empty() => body.title,
        Ok(_) => return error(400, "Bad Request", "title must not be empty"),
        Err(e) => {
            return error(
                400,
                "Bad Request",
                &format!("the body must be {{\"title\": \"…\"}}: {e}"),
            );
        }
    };
    match ctx.sessions.rename(request.principal, &id, &title) {
        Ok(Some(conversation)) => json(200, "OK", &ConversationJson::from(conversation)),
        Ok(None) => not_found(),
        Err(e) => failed(&e),
    }
}

/// `DELETE /api/conversations/{id}`.
fn delete_conversation(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let Some(id) = session_id(request) else {
        return not_found();
    };
    match ctx.sessions.delete(request.principal, &id) {
        Ok(true) => no_content(),
        Ok(false) => not_found(),
        Err(e) => failed(&e),
    }
}

/// `GET /api/conversations/{id}/export`: the whole conversation, as `porting.rs` writes it.
fn export(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let Some(id) = session_id(request) else {
        return not_found();
    };
    porting::export(ctx, request.principal, &id).unwrap_or_else(|failure| answer_failure(&failure))
}

/// `POST /api/import`: a Sparky, ChatGPT or Claude export, as `porting.rs` reads it.
fn import(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    porting::import(ctx, request.principal, request.body, request.upload)
        .unwrap_or_else(|failure| answer_failure(&failure))
}

/// The answer to an export or import that was not made.
fn answer_failure(failure: &porting::Failure) -> Response {
    match failure {
        porting::Failure::NotFound => not_found(),
        porting::Failure::Store(e) => failed(e),
        porting::Failure::Refused(status, reason, message) => error(*status, reason, message),
    }
}

/// `GET /api/memories[?q=words]`.
fn memories(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let owner = request.principal.as_str();
    let found = match param(request.query, "q").filter(|q| !q.trim().is_empty()) {
        Some(query) => ctx.graph.search(owner, &query, None, MAX_MEMORIES),
        None => ctx.graph.recent(owner, None, MAX_MEMORIES),
    };
    match found {
        Ok(nodes) => json(
            200,
            "OK",
            &MemoriesJson {
                memories: nodes.into_iter().map(Into::into).collect(),
            },
        ),
        Err(e) => failed(&e),
    }
}

/// `POST /api/memories` with `{"content": "…"}`: a fact added by hand, whatever the model.
/// `201` with the new memory, or `200` with the one the caller had already, word for word.
fn add_memory(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let content = match memory_content(request.body) {
        Ok(content) => content,
        Err(response) => return response,
    };
    match ctx.graph.remember(request.principal.as_str(), &content) {
        Ok((node, true)) => json(201, "Created", &MemoryJson::from(node)),
        Ok((node, false)) => json(200, "OK", &MemoryJson::from(node)),
        Err(e) => failed(&e),
    }
}

/// `PATCH /api/memories/{id}` with `{"content": "…"}`: `200` with the memory as changed (it is
/// embedded again, when semantic memory is on); `409` when another of the caller's memories
/// says exactly that already.
fn edit_memory(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let Some(Ok(id)) = request.params.first().map(|id| id.parse::<i64>()) else {
        return not_found();
    };
    let content = match memory_content(request.body) {
        Ok(content) => content,
        Err(response) => return response,
    };
    match ctx.graph.edit(request.principal.as_str(), id, &content) {
        Ok(Edited::Changed(node)) => json(200, "OK", &MemoryJson::from(node)),
        Ok(Edited::Missing) => not_found(),
        Ok(Edited::Duplicate(other)) => error(
            409,
            "Conflict",
            &format!("memory {} says exactly this already", other.id),
        ),
        Err(e) => failed(&e),
    }
}

/// The content of a memory's body, trimmed: a `400` naming what is wrong unless it is JSON
/// with a non-empty `content` of at most [`MAX_MEMORY_CHARS`] characters.
fn memory_content(body: &[u8]) -> Result<String, Response> {
    let content = match serde_json::from_slice::<ContentJson>(body) {
        Ok(body) => body.content,
        Err(e) => {
            return Err(error(
                400,
                "Bad Request",
                &format!("the body must be {{\"content\": \"…\"}}: {e}"),
            ));
        }
    };
    let content = content.trim();
    if content.is_empty() {
        return Err(error(400, "Bad Request", "content must not be empty"));
    }
    if content.chars().count() > MAX_MEMORY_CHARS {
        return Err(error(
            400,
            "Bad Request",
            &format!("content must be at most {MAX_MEMORY_CHARS} characters"),
        ));
    }
    Ok(content.to_owned())
}

/// `DELETE /api/memories/{id}`.
fn delete_memory(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let Some(Ok(id)) = request.params.first().map(|id| id.parse::<i64>()) else {
        return not_found();
    };
    match ctx.graph.delete(request.principal.as_str(), id) {
        Ok(true) => no_content(),
        Ok(false) => not_found(),
        Err(e) => failed(&e),
    }
}

/// `POST /api/files?name=N`, the file's bytes as the body and its type as `Content-Type`:
/// `201` with the stored file. The declared length is checked before a byte is read: `411`
/// without one (a `Transfer-Encoding` is not read here), `413` past `--max-upload-mib`; then
/// the body is streamed to the store. `507` past the caller's quota; nothing is kept of a
/// refused file. A file of no bytes is a file like any other.
fn upload(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let metrics = &ctx.metrics;
    let response = store_upload(ctx, request);
    match response.status {
        201 => Metrics::bump(&metrics.file_uploads),
        411 | 413 | 507 => Metrics::bump(&metrics.file_uploads_refused),
        _ => {}
    }
    response
}

/// [`upload`]'s work: the answer, which [`upload`] counts.
fn store_upload(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let length = match request.upload.map(RequestBody::framing) {
        Some(Framing::Length(length)) => length,
        Some(Framing::Encoded) => {
            return error(
                411,
                "Length Required",
                "send the file with a Content-Length: a Transfer-Encoding (chunked) is not read \
                 here (curl --data-binary @FILE sends one)",
            );
        }
        Some(Framing::None) => {
            return error(
                411,
                "Length Required",
                "send the file's bytes as the body, with a Content-Length",
            );
        }
        None => request.body.len() as u64,
    };
    let limit = ctx.files.limits().max_bytes;
    if length > limit {
        return too_large(limit);
    }
    let name = param(request.query, "name").unwrap_or_default();
    let declared = request
        .content_type
        .map(str::trim)
        .filter(|value| !value.is_empty());
    let mut whole = request.body;
    let mut stream;
    let body: &mut dyn Read = match request.upload {
        Some(upload) => {
            stream = upload;
            &mut stream
        }
        None => &mut whole,
    };
    let owner = request.principal.as_str();
    match ctx.files.upload(owner, &name, declared, body, None) {
        Ok(Upload::Stored(file)) => {
            Metrics::add(&ctx.metrics.file_upload_bytes, file.size);
            json(
                201,
                "Created",
                &UploadedJson {
                    id: file.id,
                    name: file.name,
                    content_type: file.content_type,
                    size: file.size,
                    sha256: file.sha256,
                },
            )
        }
        Ok(Upload::TooLarge) => too_large(limit),
        Ok(Upload::OverQuota) => error(
            507,
            "Insufficient Storage",
            &format!(
                "this file would take your files past your storage quota{}; nothing was kept \
                 (deleting files makes room)",
                ctx.files
                    .limits()
                    .quota
                    .map(|quota| format!(" of {}", mib(quota)))
                    .unwrap_or_default()
            ),
        ),
        Err(e) => match request.upload.and_then(RequestBody::failure) {
            Some(std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => error(
                408,
                "Request Timeout",
                "the file's bytes did not arrive in time; nothing was kept",
            ),
            Some(_) => error(
                400,
                "Bad Request",
                "the body ended before its Content-Length; nothing was kept",
            ),
            None => failed(&e),
        },
    }
}

/// The `413` of a file past `--max-upload-mib` (`limit` bytes).
fn too_large(limit: u64) -> Response {
    error(
        413,
        "Content Too Large",
        &format!("a file may be {} at most; nothing was kept", mib(limit)),
    )
}

/// `bytes` in MiB, for a person: `25 MiB`, `0.5 MiB`.
fn mib(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if bytes.is_multiple_of(1024 * 1024) {
        format!("{mib:.0} MiB")
    } else {
        format!("{mib:.1} MiB")
    }
}

/// `GET /api/files[?conversation=id]`: the caller's files, newest first, all of them or those
/// the conversation uses (a `404` when it is not the caller's).
fn list_files(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let conversation = match param(request.query, "conversation") {
        None => None,
        Some(text) => {
            let Some(id) = SessionId::parse(&text) else {
                return not_found();
            };
            match ctx.sessions.conversation(request.principal, &id) {
                Ok(Some(_)) => Some(id),
                Ok(None) => return not_found(),
                Err(e) => return failed(&e),
            }
        }
    };
    let owner = request.principal.as_str();
    match ctx.files.store().list_files(owner, conversation.as_ref()) {
        Ok(files) => json(
            200,
            "OK",
            &FilesJson {
                files: files.into_iter().take(MAX_FILES).map(Into::into).collect(),
            },
        ),
        Err(e) => failed(&e),
    }
}

/// `GET /api/files/{id}`: the file's bytes, streamed from the store, with the headers of
/// `file_response.rs`.
fn file(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let Some(id) = file_id(request) else {
        return not_found();
    };
    let owner = request.principal.as_str();
    let store = ctx.files.store();
    match store.file(owner, id) {
        Ok(Some(file)) => file_response::response(store.clone(), owner, &file),
        Ok(None) => not_found(),
        Err(e) => failed(&e),
    }
}

/// `DELETE /api/files/{id}`.
fn delete_file(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let Some(id) = file_id(request) else {
        return not_found();
    };
    match ctx
        .files
        .store()
        .delete_file(request.principal.as_str(), id)
    {
        Ok(true) => no_content(),
        Ok(false) => not_found(),
        Err(e) => failed(&e),
    }
}

/// The file id the route's `{id}` names, if it can be one (32 hex characters).
fn file_id<'a>(request: &ApiRequest<'a>) -> Option<&'a str> {
    request.params.first().copied().filter(|id| hex_id(id))
}
/// The frozen copy a share link keeps: the conversation's current path when it was made.
#[derive(Debug, Serialize, Deserialize)]
struct SharedCopy {
    turns: Vec<SharedTurn>,
}

/// One turn of a [`SharedCopy`].
#[derive(Debug, Serialize, Deserialize)]
struct SharedTurn {
    /// What the person wrote.
    text: String,
    /// The files their message carried.
    attachments: Vec<Attachment>,
    created_at: String,
    /// `message`, `error`, `cancelled`, or `null` for a turn that was still running.
    closing: Option<String>,
    /// The answer (for an error, what had streamed before it), as the model wrote it: the page
    /// renders it as sanitised markdown.
    answer: Option<String>,
    /// What went wrong, for a turn that closed with an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The files the turn's tools returned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    files: Vec<Attachment>,
}

impl SharedCopy {
    /// True when `file_id` is one of the files the copy lists.
    fn lists(&self, file_id: &str) -> bool {
        self.turns.iter().any(|turn| {
            turn.attachments
                .iter()
                .chain(&turn.files)
                .any(|file| file.id == file_id)
        })
    }
}

/// `GET /api/shares/{share_id}`: the copy, without a token.
#[derive(Debug, Serialize)]
struct SharedJson {
    share_id: String,
    title: Option<String>,
    created_at: String,
    turns: Vec<SharedTurn>,
}

/// `POST /api/conversations/{id}/share`'s answer.
#[derive(Debug, Serialize)]
struct NewShareJson {
    share_id: String,
    url: String,
}

/// One link of `GET /api/shares`.
#[derive(Debug, Serialize)]
struct ShareEntryJson {
    share_id: String,
    url: String,
    conversation: String,
    title: Option<String>,
    created_at: String,
}

#[derive(Debug, Serialize)]
struct SharesJson {
    shares: Vec<ShareEntryJson>,
}

/// Where a share link's page is: `/s/{share_id}`.
fn share_url(share_id: &str) -> String {
    format!("/s/{share_id}")
}

/// `POST /api/conversations/{id}/share`: a frozen copy of the current path as it is now, under
/// a new link. `201` `{share_id, url}`.
fn share(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let Some(id) = session_id(request) else {
        return not_found();
    };
    let title = match ctx.sessions.conversation(request.principal, &id) {
        Ok(Some(conversation)) => conversation.summary.title,
        Ok(None) => return not_found(),
        Err(e) => return failed(&e),
    };
    let copy = match frozen_copy(ctx, request.principal, &id) {
        Ok(Some(copy)) => copy,
        Ok(None) => return not_found(),
        Err(e) => return failed(&e),
    };
    let text = serde_json::to_string(&copy).unwrap_or_else(|_| r#"{"turns":[]}"#.into());
    let owner = request.principal.as_str();
    match ctx.shares.create_share(owner, &id, title.as_deref(), &text) {
        Ok(share) => json(
            201,
            "Created",
            &NewShareJson {
                url: share_url(&share.id),
                share_id: share.id,
            },
        ),
        Err(e) => failed(&e),
    }
}

/// The current path of `principal`'s conversation `id`, each turn with its closing answer;
/// `None` when it is not theirs.
fn frozen_copy(
    ctx: &RouteContext,
    principal: &Principal,
    id: &SessionId,
) -> Result<Option<SharedCopy>, Error> {
    let Some(page) = ctx.sessions.turns(principal, id)? else {
        return Ok(None);
    };
    // The path: from the leaf up its parents (bounded, whatever the store holds), then
    // reversed.
    let mut path = Vec::new();
    let mut at = page.leaf;
    while at != 0 && path.len() < page.turns.len() {
        let Some(turn) = page.turns.iter().find(|turn| turn.turn_id == at) else {
            break;
        };
        path.push(turn);
        at = turn.parent;
    }
    path.reverse();
    let mut turns = Vec::with_capacity(path.len());
    for turn in path {
        let mut shared = SharedTurn {
            text: turn.text.clone(),
            attachments: turn.attachments.clone(),
            created_at: rfc3339(turn.created_at),
            closing: turn.closing.map(|closing| closing.as_str().to_owned()),
            answer: None,
            error: None,
            files: Vec::new(),
        };
        closing_of(ctx, principal, id, turn.turn_id, &mut shared)?;
        turns.push(shared);
    }
    Ok(Some(SharedCopy { turns }))
}

/// Reads turn `turn`'s events, as `GET /api/conversations/{id}/events?turn_id=T` does, page
/// after page, into `shared`: its answer or error, and the files its tools returned.
fn closing_of(
    ctx: &RouteContext,
    principal: &Principal,
    id: &SessionId,
    turn: u64,
    shared: &mut SharedTurn,
) -> Result<(), Error> {
    let size = PageSize {
        limit: MAX_TURN_EVENTS,
        max_bytes: MAX_PAGE_BYTES,
    };
    let mut after = 0;
    loop {
        let Some(bodies) = ctx.sessions.turn_events(principal, id, turn, after, size)? else {
            return Ok(());
        };
        let mut last = after;
        for body in &bodies {
            let Ok(event) = serde_json::from_str::<ServerEnvelope>(body) else {
                continue;
            };
            last = last.max(event.seq.unwrap_or(last));
            match event.frame {
                ServerFrame::Message { text, .. } => shared.answer = Some(text),
                ServerFrame::Error {
                    turn_id: Some(_),
                    message,
                    text,
                    ..
                } => {
                    shared.error = Some(message);
                    shared.answer = text;
                }
                ServerFrame::ToolResult { attachments, .. } => shared.files.extend(attachments),
                _ => {}
            }
        }
        if bodies.is_empty() || last == after {
            return Ok(());
        }
        after = last;
    }
}

/// `GET /api/shares`: the caller's links, newest first.
fn list_shares(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    match ctx.shares.shares(request.principal.as_str()) {
        Ok(shares) => json(
            200,
            "OK",
            &SharesJson {
                shares: shares
                    .into_iter()
                    .map(|share| ShareEntryJson {
                        url: share_url(&share.id),
                        share_id: share.id,
                        conversation: share.conversation,
                        title: share.title,
                        created_at: rfc3339(share.created_at),
                    })
                    .collect(),
            },
        ),
        Err(e) => failed(&e),
    }
}

/// `DELETE /api/shares/{share_id}`: the owner's only; the link stops working at once.
fn revoke_share(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    let Some(share_id) = request.params.first().copied().filter(|id| hex_id(id)) else {
        return not_found();
    };
    match ctx
        .shares
        .delete_share(request.principal.as_str(), share_id)
    {
        Ok(true) => no_content(),
        Ok(false) => not_found(),
        Err(e) => failed(&e),
    }
}

/// The share link `params[0]` names and its copy, or the answer when there is none.
fn found_share(ctx: &RouteContext, params: &[&str]) -> Result<(Share, SharedCopy), Response> {
    let Some(share_id) = params.first().copied().filter(|id| hex_id(id)) else {
        return Err(not_found());
    };
    match ctx.shares.share(share_id) {
        Ok(Some(share)) => match serde_json::from_str::<SharedCopy>(&share.copy) {
            Ok(copy) => Ok((share, copy)),
            Err(e) => {
                log::error!("api: share link {share_id} holds an unreadable copy: {e}");
                Err(not_found())
            }
        },
        Ok(None) => Err(not_found()),
        Err(e) => Err(failed(&e)),
    }
}

/// `GET /api/shares/{share_id}` through [`API_ROUTES`] (the request is answered by
/// [`PUBLIC_ROUTES`] first; this row makes the path's methods known for a `405`).
fn shared_route(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    shared(ctx, &request.params)
}

/// `GET /api/shares/{share_id}/files/{file_id}` through [`API_ROUTES`], as [`shared_route`].
fn shared_file_route(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    shared_file(ctx, &request.params)
}

/// `GET /api/shares/{share_id}`, without a token: the frozen copy, its text as it was written
/// (the page renders it as sanitised markdown).
fn shared(ctx: &RouteContext, params: &[&str]) -> Response {
    match found_share(ctx, params) {
        Ok((share, copy)) => json(
            200,
            "OK",
            &SharedJson {
                share_id: share.id,
                title: share.title,
                created_at: rfc3339(share.created_at),
                turns: copy.turns,
            },
        ),
        Err(response) => response,
    }
}

/// `GET /api/shares/{share_id}/files/{file_id}`, without a token: a file the copy lists, with
/// the headers of `file_response.rs`; any other file is a `404`.
fn shared_file(ctx: &RouteContext, params: &[&str]) -> Response {
    let (share, copy) = match found_share(ctx, params) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(file_id) = params.get(1).copied().filter(|id| hex_id(id)) else {
        return not_found();
    };
    if !copy.lists(file_id) {
        return not_found();
    }
    let store = ctx.files.store();
    match store.file(&share.owner, file_id) {
        Ok(Some(file)) => file_response::response(store.clone(), &share.owner, &file),
        Ok(None) => not_found(),
        Err(e) => failed(&e),
    }
}

/// True when `id` can be a file's or a share link's id: 32 hex characters.
fn hex_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The conversation id the route's `{id}` names, if it is one.
fn session_id(request: &ApiRequest<'_>) -> Option<SessionId> {
    request.params.first().and_then(|id| SessionId::parse(id))
}

/// `POST /api/login`.
fn login(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    ctx.accounts.sign_in(request.body, request.client)
}

/// `POST /api/logout`.
fn logout(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    ctx.accounts.sign_out(request.cookie)
}

/// `GET /api/me`.
fn me(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    ctx.accounts.me(request.principal)
}

/// `GET /api/tokens`.
fn list_tokens(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    ctx.accounts.list_tokens(request.principal)
}

/// `POST /api/tokens`.
fn create_token(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    ctx.accounts.create_token(request.principal, request.body)
}

/// `DELETE /api/tokens/{id}`.
fn revoke_token(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    ctx.accounts.revoke_token(
        request.principal,
        request.params.first().copied().unwrap_or(""),
    )
}

/// How many conversations `user` has, for the admin's list of users (`None`: the store
/// failed).
fn conversations_of(ctx: &RouteContext, user: &Principal) -> Option<u64> {
    ctx.store
        .count(user.as_str())
        .inspect_err(|e| log::error!("api: {e}"))
        .ok()
}

/// `GET /api/users`.
fn list_users(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    ctx.accounts
        .list_users(request.principal, &|user| conversations_of(ctx, user))
}

/// `PATCH /api/users/{name}`.
fn set_limits(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    ctx.accounts.set_limits(
        request.principal,
        request.params.first().copied().unwrap_or(""),
        request.body,
        &|user| conversations_of(ctx, user),
    )
}

/// `GET /api/usage`.
fn usage(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    ctx.accounts.usage(request.principal)
}

/// `POST /api/users`.
fn create_user(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    ctx.accounts.create_user(request.principal, request.body)
}

/// `DELETE /api/users/{name}`.
fn remove_user(ctx: &RouteContext, request: &ApiRequest<'_>) -> Response {
    ctx.accounts.remove_user(
        request.principal,
        request.params.first().copied().unwrap_or(""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn a_store_failure_is_a_storage_error_507_when_full_and_503_otherwise() {
        let body = |response: &Response| match &response.body {
            Body::Text(text) => serde_json::from_str::<serde_json::Value>(text).unwrap(),
            other => panic!("not text: {other:?}"),
        };
        let full = failed(&Error::store_full("write: database or disk is full"));
        assert_eq!(full.status, 507);
        assert_eq!(body(&full)["code"], "storage");
        let lost = failed(&Error::store("write: connection refused"));
        assert_eq!(lost.status, 503);
        assert_eq!(body(&lost)["code"], "storage");
        assert!(body(&not_found()).get("code").is_none());
    }

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            param(Some("a=1&q=caf%C3%A9+au+lait"), "q").as_deref(),
            Some("café au lait")
        );
        assert_eq!(param(Some("a=1"), "q"), None);
        assert!(number(Some("limit=x"), "limit").is_err());
        assert_eq!(number(Some("limit=5"), "limit").ok(), Some(Some(5)));
    }
}
