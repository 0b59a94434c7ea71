//! Wire types: JSON-RPC 2.0 messages as MCP's transports carry them, the parts of MCP results
//! Sparky reads, and how a tool result's content becomes text and images. Plain serde types;
//! the MCP JSON shapes stay private to `tools/mcp/`.
//!
//! Depends on: `model`, `tools`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::model::{Image, describe_bytes};
use crate::tools::ToolFile;

/// The MCP revision Sparky asks for in `initialize`. It is the newest revision with the
/// `initialize` handshake: 2026-07-28 made the protocol stateless, and servers that speak it
/// still accept this handshake from older clients.
pub const PROTOCOL_VERSION: &str = "2025-11-25";

/// JSON-RPC's "method not found", the answer to every request a server makes of us but `ping`.
pub(super) const METHOD_NOT_FOUND: i64 = -32601;

/// The `"jsonrpc": "2.0"` member every message carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct JsonRpc;

impl Serialize for JsonRpc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("2.0")
    }
}

/// A request id: we send numbers; servers may use strings for theirs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub(super) enum RequestId {
    Number(i64),
    Text(String),
}

/// Any message on the wire. Encoded as the variant's own object; decoded by looking at which
/// of `id` and `method` are present (a request has both, a notification only `method`, a
/// response only `id`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged, try_from = "RawMessage")]
pub(super) enum Message {
    Request(Request),
    Response(Response),
    Notification(Notification),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct Request {
    pub(super) jsonrpc: JsonRpc,
    pub(super) id: RequestId,
    pub(super) method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) params: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct Notification {
    pub(super) jsonrpc: JsonRpc,
    pub(super) method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) params: Option<Value>,
}

/// A response. `id` is null only in an error about a request the server could not read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct Response {
    pub(super) jsonrpc: JsonRpc,
    pub(super) id: Option<RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<RpcError>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct RpcError {
    pub(super) code: i64,
    pub(super) message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) data: Option<Value>,
}

/// Every member a message may have, before we know which kind it is.
#[derive(Deserialize)]
struct RawMessage {
    jsonrpc: String,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    method: Option<String>,
    params: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    result: Option<Value>,
    error: Option<RpcError>,
}

/// Deserialises a member that is present as `Some`, even when it is `null`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl TryFrom<RawMessage> for Message {
    type Error = String;

    fn try_from(raw: RawMessage) -> Result<Self, String> {
        if raw.jsonrpc != "2.0" {
            return Err(format!("jsonrpc is {:?}, not \"2.0\"", raw.jsonrpc));
        }
        let has_id = raw.id.is_some();
        let id = match raw.id {
            None | Some(Value::Null) => None,
            Some(id) => Some(
                serde_json::from_value::<RequestId>(id.clone())
                    .map_err(|_| format!("{id} is not a request id"))?,
            ),
        };
        match (raw.method, id) {
            (Some(method), Some(id)) => Ok(Message::Request(Request {
                jsonrpc: JsonRpc,
                id,
                method,
                params: raw.params,
            })),
            (Some(method), None) => Ok(Message::Notification(Notification {
                jsonrpc: JsonRpc,
                method,
                params: raw.params,
            })),
            (None, id) if has_id => {
                if raw.result.is_none() && raw.error.is_none() {
                    return Err("a response with neither result nor error".into());
                }
                Ok(Message::Response(Response {
                    jsonrpc: JsonRpc,
                    id,
                    result: raw.result,
                    error: raw.error,
                }))
            }
            (None, _) => Err("neither a request, a response nor a notification".into()),
        }
    }
}

impl Message {
    pub(super) fn request(id: i64, method: &str, params: Value) -> Self {
        Message::Request(Request {
            jsonrpc: JsonRpc,
            id: RequestId::Number(id),
            method: method.to_owned(),
            params: Some(params),
        })
    }

    pub(super) fn notification(method: &str, params: Option<Value>) -> Self {
        Message::Notification(Notification {
            jsonrpc: JsonRpc,
            method: method.to_owned(),
            params,
        })
    }
}

impl Response {
    pub(super) fn ok(id: Option<RequestId>, result: Value) -> Self {
        Response {
            jsonrpc: JsonRpc,
            id,
            result: Some(result),
            error: None,
        }
    }

    pub(super) fn error(id: Option<RequestId>, code: i64, message: String) -> Self {
        Response {
            jsonrpc: JsonRpc,
            id,
            result: None,
            error: Some(RpcError {
                code,
                message,
                data: None,
            }),
        }
    }
}

/// The part of the `initialize` result we use.
#[derive(Debug, Deserialize)]
pub(super) struct InitializeResult {
    #[serde(rename = "protocolVersion")]
    pub(super) protocol_version: String,
    /// What the server offers besides tools.
    #[serde(default)]
    pub(super) capabilities: ServerCapabilities,
    #[serde(rename = "serverInfo")]
    pub(super) server_info: Option<Implementation>,
    /// How to use the server, for the model's system prompt.
    pub(super) instructions: Option<String>,
}

/// The server's capabilities we look at: present (even as `{}`) means offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub(super) struct ServerCapabilities {
    /// `resources/list` and `resources/read`.
    #[serde(default, deserialize_with = "offered")]
    pub(super) resources: bool,
    /// `prompts/list` and `prompts/get`.
    #[serde(default, deserialize_with = "offered")]
    pub(super) prompts: bool,
}

/// A capability is offered when its member is present and not `null`.
fn offered<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(!Value::deserialize(deserializer)?.is_null())
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Implementation {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) version: String,
}

/// One page of `tools/list`.
#[derive(Debug, Deserialize)]
pub(super) struct ToolsPage {
    pub(super) tools: Vec<RemoteTool>,
    #[serde(rename = "nextCursor")]
    pub(super) next_cursor: Option<String>,
}

/// A tool as its server describes it.
#[derive(Debug, Deserialize)]
pub(super) struct RemoteTool {
    pub(super) name: String,
    pub(super) title: Option<String>,
    pub(super) description: Option<String>,
    #[serde(rename = "inputSchema")]
    pub(super) input_schema: Option<Value>,
    /// How the tool may be run; absent means plain `tools/call`.
    pub(super) execution: Option<ToolExecution>,
    /// The JSON Schema its `structuredContent` follows, when it declares one.
    #[serde(rename = "outputSchema")]
    pub(super) output_schema: Option<Value>,
    /// What the server says about the tool's behaviour (hints, not guarantees).
    #[serde(default)]
    pub(super) annotations: ToolAnnotations,
}

/// A tool's `annotations`: the hints Sparky reads when it decides whether a call asks a person
/// first.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ToolAnnotations {
    /// The tool changes nothing.
    #[serde(rename = "readOnlyHint")]
    pub(super) read_only_hint: Option<bool>,
    /// The tool may destroy or overwrite something.
    #[serde(rename = "destructiveHint")]
    pub(super) destructive_hint: Option<bool>,
}

/// A tool's `execution`: whether it runs as a task (MCP 2025-11-25).
#[derive(Debug, Default, Deserialize)]
pub(super) struct ToolExecution {
    /// `"forbidden"` (the default), `"optional"` or `"required"`.
    #[serde(rename = "taskSupport")]
    pub(super) task_support: Option<String>,
}

impl RemoteTool {
    /// True when the tool can be called only as a task, which Sparky does not support.
    pub(super) fn requires_tasks(&self) -> bool {
        self.execution
            .as_ref()
            .and_then(|execution| execution.task_support.as_deref())
            == Some("required")
    }
}

/// The `params` of `notifications/progress`.
#[derive(Debug, Deserialize)]
pub(super) struct ProgressParams {
    /// The token the request carried: we send the request's id.
    #[serde(rename = "progressToken")]
    pub(super) progress_token: RequestId,
    pub(super) progress: f64,
    pub(super) total: Option<f64>,
    pub(super) message: Option<String>,
}

impl ProgressParams {
    /// The id of the request the report is for, when its token is one we sent.
    pub(super) fn request_id(&self) -> Option<i64> {
        match &self.progress_token {
            RequestId::Number(id) => Some(*id),
            RequestId::Text(text) => text.parse().ok(),
        }
    }

    /// The report as the ToolChain's tools give it.
    pub(super) fn into_progress(self) -> crate::tools::Progress {
        crate::tools::Progress {
            progress: self.progress,
            total: self.total,
            message: self.message,
        }
    }
}

/// The `params` of a server's `elicitation/create` (form or URL mode).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ElicitParams {
    /// What the server wants, for a person.
    pub(super) message: String,
    /// `form` (the default) or `url`.
    #[serde(default)]
    pub(super) mode: Option<String>,
    /// In form mode: the JSON Schema of the form.
    #[serde(default)]
    pub(super) requested_schema: Option<Value>,
    /// In URL mode: where to go.
    #[serde(default)]
    pub(super) url: Option<String>,
}

/// The `params` of a server's `sampling/createMessage`: what Sparky reads of them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreateMessageParams {
    /// The conversation to answer.
    pub(super) messages: Vec<SamplingMessage>,
    /// The system prompt the server asks for.
    #[serde(default)]
    pub(super) system_prompt: Option<String>,
    /// The most tokens the answer may take.
    pub(super) max_tokens: u32,
}

/// One message of a sampling request: a role, and one content block or (2025-11-25) a list.
#[derive(Debug, Deserialize)]
pub(super) struct SamplingMessage {
    /// `user` or `assistant`.
    pub(super) role: String,
    /// A content block, or a list of them.
    pub(super) content: Value,
}

impl SamplingMessage {
    /// Its text: text blocks as they are, anything else as a note naming its type.
    pub(super) fn text(&self) -> String {
        let blocks = match &self.content {
            Value::Array(blocks) => blocks.iter().collect(),
            block => vec![block],
        };
        let parts: Vec<String> = blocks
            .into_iter()
            .map(|block| match block["type"].as_str() {
                Some("text") => block["text"].as_str().unwrap_or_default().to_owned(),
                Some(other) => format!("[{other} content left out]"),
                None => "[content left out]".to_owned(),
            })
            .collect();
        parts.join("\n")
    }
}

/// The result of `resources/read`.
#[derive(Debug, Deserialize)]
pub(super) struct ReadResourceResult {
    pub(super) contents: Vec<ResourceContents>,
}

/// One resource's contents: text, or a base64 blob.
#[derive(Debug, Deserialize)]
pub(super) struct ResourceContents {
    pub(super) uri: String,
    #[serde(rename = "mimeType")]
    pub(super) mime_type: Option<String>,
    pub(super) text: Option<String>,
    pub(super) blob: Option<String>,
}

impl ReadResourceResult {
    /// The contents as text: each text part as it is, a blob as a short note (its type and
    /// about how many bytes), parts after the first each under its URI.
    pub(super) fn render(&self) -> String {
        let parts: Vec<String> = self
            .contents
            .iter()
            .enumerate()
            .map(|(index, part)| {
                let body = match (&part.text, &part.blob) {
                    (Some(text), _) => text.clone(),
                    (None, Some(blob)) => format!(
                        "[binary resource: {}, about {} bytes, not shown]",
                        part.mime_type.as_deref().unwrap_or("unknown type"),
                        blob.len() / 4 * 3
                    ),
                    (None, None) => "(empty)".to_owned(),
                };
                if index == 0 {
                    body
                } else {
                    format!("--- {}\n{body}", part.uri)
                }
            })
            .collect();
        if parts.is_empty() {
            "(no contents)".to_owned()
        } else {
            parts.join("\n")
        }
    }
}

/// One page of `prompts/list`.
#[derive(Debug, Deserialize)]
pub(super) struct PromptsPage {
    pub(super) prompts: Vec<RemotePrompt>,
    #[serde(rename = "nextCursor")]
    pub(super) next_cursor: Option<String>,
}

/// A prompt as its server describes it.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct RemotePrompt {
    pub(super) name: String,
    pub(super) title: Option<String>,
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) arguments: Vec<PromptArgument>,
}

/// One argument of a prompt.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct PromptArgument {
    pub(super) name: String,
    #[serde(default)]
    pub(super) required: bool,
}

/// The result of `prompts/get`.
#[derive(Debug, Deserialize)]
pub(super) struct GetPromptResult {
    pub(super) messages: Vec<PromptMessage>,
}

/// One message of a prompt.
#[derive(Debug, Deserialize)]
pub(super) struct PromptMessage {
    pub(super) role: String,
    pub(super) content: Value,
}

impl GetPromptResult {
    /// The prompt as one user message: each message's content as text (see
    /// [`render_content`]), an assistant's marked as such, separated by blank lines.
    pub(super) fn render(&self) -> String {
        let parts: Vec<String> = self
            .messages
            .iter()
            .map(|message| {
                let text = describe_content(&message.content);
                if message.role == "assistant" {
                    format!("(assistant) {text}")
                } else {
                    text
                }
            })
            .collect();
        parts.join("\n\n")
    }
}

/// The part of a `tools/call` result we use.
#[derive(Debug, Deserialize)]
pub(super) struct CallToolResult {
    #[serde(default)]
    pub(super) content: Vec<Value>,
    #[serde(default, rename = "isError")]
    pub(super) is_error: bool,
    #[serde(rename = "structuredContent")]
    pub(super) structured_content: Option<Value>,
}

/// What a `tools/call` result's content comes to: text, and the images it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Rendered {
    pub(super) text: String,
    pub(super) images: Vec<Image>,
    /// Audio and embedded resources' blobs, with their data.
    pub(super) files: Vec<ToolFile>,
}

/// Turns a `tools/call` result's content into text and images. With `structuredContent`, its
/// JSON is the text (the text items only repeat it, as MCP asks servers to do); otherwise text
/// items are joined with newlines. Images with data are kept apart (their notes are added
/// where they are shown); an embedded resource gives its text; other kinds are summarised in
/// brackets. A result with nothing at all reads `(no output)`.
pub(super) fn render_content(content: &[Value], structured: Option<&Value>) -> Rendered {
    let mut parts: Vec<String> = structured.map(Value::to_string).into_iter().collect();
    let mut images = Vec::new();
    let mut files = Vec::new();
    for item in content {
        let kind = item.get("type").and_then(Value::as_str);
        if structured.is_some() && kind == Some("text") {
            continue;
        }
        let data = item.get("data").and_then(Value::as_str);
        let mime = item.get("mimeType").and_then(Value::as_str);
        match (kind, data, mime) {
            (Some("image"), Some(data), Some(mime)) => images.push(Image {
                mime_type: mime.to_owned(),
                data: data.to_owned(),
            }),
            _ => {
                files.extend(binary_file(item));
                parts.push(describe_content(item));
            }
        }
    }
    if parts.is_empty() && images.is_empty() {
        parts.push("(no output)".to_owned());
    }
    Rendered {
        text: parts.join("\n"),
        images,
        files,
    }
}

/// The bytes of an audio item or of an embedded resource's blob, as a file to keep.
fn binary_file(item: &Value) -> Option<ToolFile> {
    let text = |value: &Value, key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    match item.get("type").and_then(Value::as_str)? {
        "audio" => Some(ToolFile {
            name: "audio".to_owned(),
            mime_type: text(item, "mimeType")?,
            data: text(item, "data")?,
        }),
        "resource" => {
            let resource = item.get("resource")?;
            let uri = text(resource, "uri").unwrap_or_default();
            let name = uri
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty())
                .unwrap_or("resource");
            Some(ToolFile {
                name: name.to_owned(),
                mime_type: text(resource, "mimeType")
                    .unwrap_or_else(|| "application/octet-stream".to_owned()),
                data: text(resource, "blob")?,
            })
        }
        _ => None,
    }
}

/// One content item as text.
fn describe_content(item: &Value) -> String {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let field =
        |value: &Value, key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    match kind {
        "text" => field(item, "text").unwrap_or_default(),
        "image" | "audio" => {
            let size = field(item, "data").map(|data| {
                let image = Image {
                    mime_type: String::new(),
                    data,
                };
                describe_bytes(image.bytes())
            });
            match (field(item, "mimeType"), size) {
                (Some(mime), Some(size)) => format!("[{kind}: {mime}, {size}]"),
                (Some(mime), None) => format!("[{kind}: {mime}]"),
                (None, _) => format!("[{kind}]"),
            }
        }
        "resource" => {
            let resource = item.get("resource").unwrap_or(&Value::Null);
            field(resource, "text").unwrap_or_else(|| {
                format!("[resource: {}]", field(resource, "uri").unwrap_or_default())
            })
        }
        "resource_link" => format!(
            "[resource link: {}]",
            field(item, "uri").unwrap_or_default()
        ),
        other => format!("[{other} content]"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn messages_encode_to_golden_json_and_decode_back() {
        let cases = [
            (
                Message::request(7, "tools/list", json!({"cursor": "c"})),
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"cursor":"c"}}"#,
            ),
            (
                Message::Request(Request {
                    jsonrpc: JsonRpc,
                    id: RequestId::Text("srv-1".into()),
                    method: "ping".into(),
                    params: None,
                }),
                r#"{"jsonrpc":"2.0","id":"srv-1","method":"ping"}"#,
            ),
            (
                Message::notification("notifications/initialized", None),
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            ),
            (
                Message::notification(
                    "notifications/cancelled",
                    Some(json!({"requestId": 3, "reason": "stop"})),
                ),
                r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"reason":"stop","requestId":3}}"#,
            ),
            (
                Message::Response(Response::ok(
                    Some(RequestId::Number(3)),
                    json!({"tools": []}),
                )),
                r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[]}}"#,
            ),
            (
                Message::Response(Response::ok(Some(RequestId::Number(4)), Value::Null)),
                r#"{"jsonrpc":"2.0","id":4,"result":null}"#,
            ),
            (
                Message::Response(Response::error(
                    Some(RequestId::Text("x".into())),
                    METHOD_NOT_FOUND,
                    "no".into(),
                )),
                r#"{"jsonrpc":"2.0","id":"x","error":{"code":-32601,"message":"no"}}"#,
            ),
            (
                Message::Response(Response::error(None, -32700, "parse error".into())),
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}"#,
            ),
        ];
        for (message, golden) in cases {
            assert_eq!(serde_json::to_string(&message).unwrap(), golden);
            assert_eq!(
                serde_json::from_str::<Message>(golden).unwrap(),
                message,
                "{golden}"
            );
        }
    }

    #[test]
    fn a_tool_that_requires_tasks_is_recognised() {
        let tool = |value: Value| serde_json::from_value::<RemoteTool>(value).unwrap();
        let required = tool(
            json!({"name": "research", "inputSchema": {"type": "object"},
                                   "execution": {"taskSupport": "required"}}),
        );
        assert!(required.requires_tasks());
        for other in [
            json!({"name": "a"}),
            json!({"name": "a", "execution": {}}),
            json!({"name": "a", "execution": {"taskSupport": "optional"}}),
            json!({"name": "a", "execution": {"taskSupport": "forbidden"}}),
        ] {
            assert!(!tool(other.clone()).requires_tasks(), "{other}");
        }
    }

    #[test]
    fn decoding_refuses_what_is_not_json_rpc() {
        for bad in [
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0"}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            r#"[1, 2]"#,
        ] {
            assert!(serde_json::from_str::<Message>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn capabilities_prompts_and_resources_are_read() {
        let init: InitializeResult = serde_json::from_value(json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}, "resources": {"subscribe": true}, "prompts": null}
        }))
        .unwrap();
        assert_eq!(
            init.capabilities,
            ServerCapabilities {
                resources: true,
                prompts: false
            }
        );
        let bare: InitializeResult =
            serde_json::from_value(json!({"protocolVersion": "2025-06-18"})).unwrap();
        assert_eq!(bare.capabilities, ServerCapabilities::default());

        let read: ReadResourceResult = serde_json::from_value(json!({"contents": [
            {"uri": "demo://a", "mimeType": "text/plain", "text": "alpha"},
            {"uri": "demo://b", "mimeType": "image/png", "blob": "AAAAAAAA"}
        ]}))
        .unwrap();
        assert_eq!(
            read.render(),
            "alpha\n--- demo://b\n[binary resource: image/png, about 6 bytes, not shown]"
        );

        let prompt: GetPromptResult = serde_json::from_value(json!({"messages": [
            {"role": "user", "content": {"type": "text", "text": "Weather in Paris?"}},
            {"role": "assistant", "content": {"type": "text", "text": "Sunny."}},
            {"role": "user", "content": {"type": "resource",
                                         "resource": {"uri": "demo://r", "text": "inside"}}}
        ]}))
        .unwrap();
        assert_eq!(
            prompt.render(),
            "Weather in Paris?\n\n(assistant) Sunny.\n\ninside"
        );
        let page: PromptsPage = serde_json::from_value(json!({"prompts": [
            {"name": "args-prompt", "arguments": [{"name": "city", "required": true},
                                                  {"name": "state"}]}
        ]}))
        .unwrap();
        assert_eq!(page.prompts[0].arguments[0].name, "city");
        assert!(page.prompts[0].arguments[0].required);
        assert!(!page.prompts[0].arguments[1].required);
    }

    #[test]
    fn content_is_joined_and_other_kinds_are_summarised() {
        let content = [
            json!({"type": "text", "text": "one"}),
            json!({"type": "image", "data": "AAAA", "mimeType": "image/png"}),
            json!({"type": "audio", "data": "AAAA"}),
            json!({"type": "resource", "resource": {"uri": "file:///a", "text": "inside"}}),
            json!({"type": "resource", "resource": {"uri": "file:///b", "blob": "AAAA"}}),
            json!({"type": "resource_link", "uri": "file:///c", "name": "c"}),
            json!({"type": "hologram"}),
            json!({"type": "text", "text": "two"}),
        ];
        let rendered = render_content(&content, None);
        assert_eq!(
            rendered.text,
            "one\n[audio]\ninside\n[resource: file:///b]\n\
             [resource link: file:///c]\n[hologram content]\ntwo"
        );
        assert_eq!(
            rendered.images,
            [Image {
                mime_type: "image/png".into(),
                data: "AAAA".into()
            }]
        );
        // The blob is kept as a file; audio without a type is only described.
        assert_eq!(
            rendered.files,
            [ToolFile {
                name: "b".into(),
                mime_type: "application/octet-stream".into(),
                data: "AAAA".into()
            }]
        );
        let text = |content: &[Value], structured: Option<&Value>| {
            render_content(content, structured).text
        };
        // An image without data, or without a type, is only described.
        assert_eq!(
            text(&[json!({"type": "image", "mimeType": "image/png"})], None),
            "[image: image/png]"
        );
        assert_eq!(
            text(
                &[json!({"type": "audio", "data": "AAAA", "mimeType": "audio/wav"})],
                None
            ),
            "[audio: audio/wav, 3 B]"
        );
        // structuredContent is the text; text items (its copy) are left out, others kept.
        let both = [
            json!({"type": "text", "text": "{\"n\": 1}"}),
            json!({"type": "resource_link", "uri": "file:///d"}),
        ];
        assert_eq!(
            text(&both, Some(&json!({"n": 1}))),
            "{\"n\":1}\n[resource link: file:///d]"
        );
        assert_eq!(text(&[], Some(&json!({"n": 1}))), r#"{"n":1}"#);
        assert_eq!(text(&[], None), "(no output)");
    }
}
