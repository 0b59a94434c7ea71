//! What a server asks of Sparky in the middle of a tool call (MCP's client features that need
//! a person): `elicitation/create` and `sampling/createMessage`, read from their MCP shape,
//! handed to the turn's [`AskUser`], and answered in MCP's shape. `client/rpc.rs` routes such
//! a request to the call it belongs to and sends the answer back; `ping` and `roots/list`,
//! which need nobody, it answers itself.
//!
//! Depends on: `common::protocol`, `tools::ask`, `tools::mcp::wire`.

use serde_json::{Value, json};

use crate::common::protocol::{ElicitAction, SampledMessage};
use crate::tools::ask::{AskUser, ElicitKind, Elicitation, Sampling};
use crate::tools::mcp::wire::{CreateMessageParams, ElicitParams, Request, RequestId, Response};

/// JSON-RPC's "invalid params": a request whose params Sparky cannot read.
const INVALID_PARAMS: i64 = -32602;

/// The code MCP's examples give a sampling request the user refused.
const USER_REFUSED: i64 = -1;

/// True for the methods that need a person, and so a call waiting on the server's answer.
pub(super) fn needs_a_person(method: &str) -> bool {
    matches!(method, "elicitation/create" | "sampling/createMessage")
}

/// Answers `request` (one [`needs_a_person`] accepts) from the server `server`, asking `ask`.
/// Blocks until the person (and, for sampling, the model) has answered.
pub(super) fn answer(server: &str, request: Request, ask: &dyn AskUser) -> Response {
    let id = Some(request.id.clone());
    let outcome = match request.method.as_str() {
        "elicitation/create" => elicit(server, request.params, ask),
        _ => sample(server, request.params, ask),
    };
    match outcome {
        Ok(result) => Response::ok(id, result),
        Err((code, message)) => Response::error(id, code, message),
    }
}

/// The refusal of a request for a person when no call of the server, or more than one (and
/// the transport does not say which), waits to take it.
pub(super) fn nobody_to_ask(id: RequestId, method: &str) -> Response {
    Response::error(
        Some(id),
        USER_REFUSED,
        format!(
            "sparky cannot tell which of its conversations {method} is for: none, or several, \
             wait on a call of this server"
        ),
    )
}

/// `elicitation/create`: the form or URL shown, the answer as MCP's `ElicitResult`.
fn elicit(server: &str, params: Option<Value>, ask: &dyn AskUser) -> Result<Value, (i64, String)> {
    let params: ElicitParams = read(params)?;
    let kind = match params.mode.as_deref() {
        Some("url") => {
            let url = params
                .url
                .filter(|url| url.starts_with("https://") || url.starts_with("http://"))
                .ok_or((INVALID_PARAMS, "url mode needs an http(s) url".to_owned()))?;
            ElicitKind::Url(url)
        }
        None | Some("form") => match params.requested_schema {
            Some(schema @ Value::Object(_)) => ElicitKind::Form(schema),
            _ => return Err((INVALID_PARAMS, "requestedSchema must be an object".into())),
        },
        Some(other) => return Err((INVALID_PARAMS, format!("unknown mode {other:?}"))),
    };
    let request = Elicitation {
        message: params.message,
        kind,
    };
    let answer = ask.elicit(server, request);
    let mut result = json!({"action": answer.action.as_str()});
    if let (ElicitAction::Accept, Some(content)) = (answer.action, answer.content) {
        result["content"] = Value::Object(content);
    }
    Ok(result)
}

/// `sampling/createMessage`: the conversation's model answers, once the person allows it.
fn sample(server: &str, params: Option<Value>, ask: &dyn AskUser) -> Result<Value, (i64, String)> {
    let params: CreateMessageParams = read(params)?;
    let request = Sampling {
        messages: params
            .messages
            .iter()
            .map(|message| SampledMessage {
                role: message.role.clone(),
                text: message.text(),
            })
            .collect(),
        system_prompt: params.system_prompt.filter(|text| !text.trim().is_empty()),
        max_tokens: params.max_tokens,
    };
    let sampled = ask
        .sample(server, request)
        .map_err(|reason| (USER_REFUSED, reason))?;
    Ok(json!({
        "role": "assistant",
        "content": {"type": "text", "text": sampled.text},
        "model": sampled.model,
        "stopReason": sampled.stop_reason,
    }))
}

/// Reads a request's params as `T`.
fn read<T: for<'de> serde::Deserialize<'de>>(params: Option<Value>) -> Result<T, (i64, String)> {
    serde_json::from_value(params.unwrap_or(Value::Null))
        .map_err(|e| (INVALID_PARAMS, format!("bad params: {e}")))
}
