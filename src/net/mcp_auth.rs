//! The routes of signing in to OAuth-protected MCP servers from the page: `GET /api/mcp` (each
//! server's state, for the tools panel), `POST /api/mcp/{name}/connect` (`{authorize_url}`,
//! for whoever may manage tools: the local user or a token holder without accounts, an admin
//! with them), and, without a token, `GET /api/mcp/oauth/callback` (the authorization
//! server's redirect: its single-use `state`, at most ten minutes old, is the credential; the
//! answer is a small page that says the tab may close) and `GET /api/mcp/oauth/client.json`
//! (Sparky's Client ID Metadata Document, with an `https` `--public-url`).
//!
//! Depends on: `common::auth`, `net::http`, `net::routes`, `tools::mcp`.

use serde_json::json;

use crate::common::auth::Principal;
use crate::net::http::{RequestHead, Response};
use crate::net::routes::RouteContext;
use crate::tools::mcp::{self, AuthState, CALLBACK_PATH, CLIENT_DOCUMENT_PATH};

/// The page the callback answers with: a title and one line.
fn page(status: u16, reason: &'static str, text: &str) -> Response {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let body = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>Sparky</title>\
         <p style=\"font-family:sans-serif\">{escaped}</p>\n"
    );
    Response {
        content_type: "text/html; charset=utf-8",
        ..Response::text(status, reason, &body)
    }
}

fn json_response(status: u16, reason: &'static str, body: &serde_json::Value) -> Response {
    Response {
        content_type: "application/json",
        ..Response::text(status, reason, &body.to_string())
    }
}

fn error(status: u16, reason: &'static str, message: &str) -> Response {
    json_response(status, reason, &json!({ "error": message }))
}

/// The routes that need no token: the callback and the client document. `None` for any
/// other request.
pub fn public(ctx: &RouteContext, head: &RequestHead) -> Option<Response> {
    let path = head.path.trim_end_matches('/');
    if head.method != "GET" || (path != CALLBACK_PATH && path != CLIENT_DOCUMENT_PATH) {
        return None;
    }
    let Some(servers) = &ctx.mcp else {
        return Some(error(404, "Not Found", "not found"));
    };
    let sign_ins = servers.sign_ins();
    if path == CLIENT_DOCUMENT_PATH {
        return Some(match sign_ins.public_url() {
            Some(public) if public.starts_with("https://") => {
                json_response(200, "OK", &mcp::client_document(public))
            }
            _ => error(404, "Not Found", "not found"),
        });
    }
    let (mut code, mut state, mut refused) = (None, None, None);
    for (name, value) in form_urlencoded::parse(head.query.as_deref().unwrap_or("").as_bytes()) {
        match &*name {
            "code" => code = Some(value.into_owned()),
            "state" => state = Some(value.into_owned()),
            "error" => refused = Some(value.into_owned()),
            _ => {}
        }
    }
    Some(match (code, state, refused) {
        (_, _, Some(refused)) => page(
            400,
            "Bad Request",
            &format!("The sign-in was refused ({refused}). You can close this tab."),
        ),
        (Some(code), Some(state), None) => match sign_ins.finish(&state, &code) {
            Ok(name) => page(
                200,
                "OK",
                &format!("Connected to {name}. You can close this tab."),
            ),
            Err(e) => {
                log::warn!("mcp: a sign-in's callback failed: {e}");
                page(400, "Bad Request", &format!("The sign-in failed: {e}."))
            }
        },
        _ => page(400, "Bad Request", "This is not a sign-in's answer."),
    })
}

/// `GET /api/mcp`: each MCP server's state (`up`, `starting`, `needs_sign_in`), its sign-in
/// (`auth`: `open`, `signed_in`, `needs_sign_in`, or null for a server without OAuth) and why
/// it needs one; `can_connect` when the caller may press Connect.
pub fn servers(ctx: &RouteContext, principal: &Principal) -> Response {
    let can_connect = ctx.accounts.may_manage_tools(principal).is_ok();
    let list: Vec<serde_json::Value> = ctx
        .mcp
        .as_ref()
        .map(|servers| servers.status())
        .unwrap_or_default()
        .into_iter()
        .map(|status| {
            let reason = match &status.auth {
                Some(AuthState::NeedsSignIn(reason)) => Some(reason.clone()),
                _ => None,
            };
            json!({
                "name": status.name,
                "state": status.state,
                "auth": status.auth.as_ref().map(AuthState::name),
                "reason": reason,
            })
        })
        .collect();
    json_response(
        200,
        "OK",
        &json!({ "servers": list, "can_connect": can_connect }),
    )
}

/// `POST /api/mcp/{name}/connect`: starts a sign-in to server `name` and answers
/// `{authorize_url}` for the page to open. `403` for a caller who may not manage tools, `404`
/// for a server that does not sign in with OAuth, `502` when discovery or registration fails.
pub fn connect(ctx: &RouteContext, principal: &Principal, name: &str) -> Response {
    if let Err(response) = ctx.accounts.may_manage_tools(principal) {
        return response;
    }
    let Some(servers) = &ctx.mcp else {
        return error(
            404,
            "Not Found",
            "no MCP server of that name signs in with OAuth",
        );
    };
    let sign_ins = servers.sign_ins();
    let Some(redirect) = sign_ins.page_redirect_uri() else {
        return error(
            503,
            "Service Unavailable",
            "this server has no address to come back to",
        );
    };
    match sign_ins.begin(name, &redirect) {
        Ok(url) => json_response(200, "OK", &json!({ "authorize_url": url })),
        Err(mcp::OAuthError::UnknownServer(_)) => error(
            404,
            "Not Found",
            "no MCP server of that name signs in with OAuth",
        ),
        Err(e) => {
            log::warn!("mcp {name}: cannot start a sign-in: {e}");
            error(502, "Bad Gateway", &e.to_string())
        }
    }
}
