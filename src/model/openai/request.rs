//! Encoding a chat-completions request: the conversation as OpenAI's messages (every system
//! message in one at the start, failure notes sent as empty replies), tool calls and their
//! results, the images tools returned as `image_url` parts (with `--model-vision`), and the
//! tools as functions with an object schema.
//!
//! Depends on: `model`, `model::openai::retry`.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::retry::Failure;
use crate::model::{Conversation, Role, ToolSpec, is_failure_note};

/// The encoded request body for one step, with or without the usage chunk asked for
/// (`stream_options`, which some servers refuse).
pub(super) fn encode_request(
    model: &str,
    conversation: Conversation<'_>,
    tools: &[ToolSpec],
    usage: bool,
) -> Result<Arc<[u8]>, Failure> {
    let mut body = request_body(model, conversation, tools);
    if !usage && let Some(body) = body.as_object_mut() {
        body.remove("stream_options");
    }
    serde_json::to_vec(&body)
        .map(Arc::from)
        .map_err(|e| Failure::Fatal(format!("cannot encode the request: {e}")))
}

/// The request for one step: the conversation, the tools, `stream: true`.
///
/// Every system message (the prompt, and the memory the bot adds to a turn) goes into one
/// system message at the start, because many chat templates accept a system message only
/// there. Images a user attached are `image_url` parts of their message; images that tools
/// returned follow their tool messages as one user message of
/// `image_url` parts, since OpenAI's tool messages carry text only.
fn request_body(model: &str, conversation: Conversation<'_>, tools: &[ToolSpec]) -> Value {
    let mut system: Vec<&str> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    // Image parts of the tool messages just sent, waiting for the end of their run.
    let mut images: Vec<Value> = Vec::new();
    for message in conversation.iter() {
        let content = message.content.as_str();
        if message.role != Role::Tool {
            flush_images(&mut messages, &mut images);
        }
        match message.role {
            Role::System => system.push(content),
            Role::User if message.images.is_empty() => {
                messages.push(json!({"role": "user", "content": content}));
            }
            // The images the user attached, after the words (with `--model-vision` only).
            Role::User => {
                let mut parts = vec![json!({"type": "text", "text": content})];
                parts.extend(message.images.iter().map(
                    |image| json!({"type": "image_url", "image_url": {"url": image.data_url()}}),
                ));
                messages.push(json!({"role": "user", "content": parts}));
            }
            Role::Assistant if message.tool_calls.is_empty() => {
                let content = if is_failure_note(content) {
                    ""
                } else {
                    content
                };
                messages.push(json!({"role": "assistant", "content": content}));
            }
            Role::Assistant => {
                let calls: Vec<Value> = message
                    .tool_calls
                    .iter()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.args.to_text()},
                        })
                    })
                    .collect();
                // `""`, never `null`: llama-cpp-python refuses a null content with a 500.
                messages
                    .push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
            }
            Role::Tool => {
                let content = if message.is_error {
                    format!("Error: {content}")
                } else {
                    content.to_owned()
                };
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": message.tool_call_id.as_deref().unwrap_or_default(),
                    "content": content,
                }));
                images.extend(message.images.iter().map(
                    |image| json!({"type": "image_url", "image_url": {"url": image.data_url()}}),
                ));
            }
        }
    }
    flush_images(&mut messages, &mut images);
    if !system.is_empty() {
        messages.insert(0, json!({"role": "system", "content": system.join("\n\n")}));
    }
    // `include_usage` asks for a last chunk with the tokens used (PROTOCOL.md section 5 passes
    // them on); servers that do not know it ignore it.
    let mut body = json!({
        "model": model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": messages,
    });
    if let Some(max_tokens) = conversation.max_tokens {
        body["max_tokens"] = Value::from(max_tokens);
    }
    if !tools.is_empty() {
        let tools: Vec<Value> = tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": object_schema(&tool.parameters),
                    },
                })
            })
            .collect();
        body["tools"] = Value::Array(tools);
    }
    body
}

/// Sends the images of the tool messages just added, if any, as one user message.
fn flush_images(messages: &mut Vec<Value>, images: &mut Vec<Value>) {
    if images.is_empty() {
        return;
    }
    let mut parts = vec![json!({"type": "text", "text": "The images the tools above returned:"})];
    parts.append(images);
    messages.push(json!({"role": "user", "content": parts}));
}

/// A tool's parameter schema as servers want it: an object schema, even for a tool that
/// declared none.
fn object_schema(parameters: &Value) -> Value {
    match parameters {
        Value::Object(schema) if schema.contains_key("type") => parameters.clone(),
        Value::Object(schema) => {
            let mut schema = schema.clone();
            schema.insert("type".into(), "object".into());
            schema
                .entry("properties")
                .or_insert_with(|| Value::Object(Map::new()));
            Value::Object(schema)
        }
        _ => json!({"type": "object", "properties": {}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChatMessage, ToolCall};

    /// The `role` of each message of a request.
    fn roles_of(messages: &[Value]) -> Vec<&str> {
        messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn images_a_user_attached_are_image_url_parts_of_their_message() {
        let mut asked = ChatMessage::text(Role::User, "what is this?");
        asked.images = vec![crate::model::Image {
            mime_type: "image/jpeg".into(),
            data: "/9j/".into(),
        }];
        let current = [ChatMessage::text(Role::User, "hi"), asked];
        let body = request_body("m", Conversation::of(&current), &[]);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages[0]["content"], "hi");
        assert_eq!(
            messages[1]["content"],
            json!([
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
            ])
        );
    }

    #[test]
    fn images_tools_returned_follow_their_tool_messages_as_image_url_parts() {
        let call = |id: &str| ToolCall {
            id: id.into(),
            name: "camera".into(),
            args: json!({}).into(),
        };
        let image = crate::model::Image {
            mime_type: "image/png".into(),
            data: "iVBORw0KGgo=".into(),
        };
        let mut shot = ChatMessage::tool_result("a", "a photo\n[image: image/png, 8 B]", false);
        shot.images = vec![image.clone(), image];
        let current = [
            ChatMessage::text(Role::User, "look"),
            ChatMessage::tool_calls("", vec![call("a"), call("b")]),
            shot,
            ChatMessage::tool_result("b", "nothing", false),
            ChatMessage::tool_calls("", vec![call("c")]),
            ChatMessage::tool_result("c", "plain", false),
        ];
        let body = request_body("m", Conversation::of(&current), &[]);
        let messages = body["messages"].as_array().unwrap();
        let roles = roles_of(messages);
        // Both tool messages first (they must follow their calls), then the images.
        assert_eq!(
            roles,
            [
                "user",
                "assistant",
                "tool",
                "tool",
                "user",
                "assistant",
                "tool"
            ]
        );
        assert_eq!(messages[2]["content"], "a photo\n[image: image/png, 8 B]");
        let parts = messages[4]["content"].as_array().unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0]["type"], "text");
        assert_eq!(
            parts[1],
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}})
        );
    }

    #[test]
    fn the_request_carries_the_conversation_and_the_tools() {
        let call = ToolCall {
            id: "c1".into(),
            name: "calculator".into(),
            args: json!({"expression": "1+1"}).into(),
        };
        let head = [ChatMessage::text(Role::System, "be nice")];
        let earlier = [
            ChatMessage::text(Role::User, "hi"),
            ChatMessage::text(Role::Assistant, "hello"),
        ];
        let current = [
            ChatMessage::text(Role::System, "memory"),
            ChatMessage::text(Role::User, "1+1?"),
            ChatMessage::tool_calls("", vec![call]),
            ChatMessage::tool_result("c1", "2", false),
        ];
        let conversation = Conversation {
            model: None,
            head: &head,
            earlier: &earlier,
            current: &current,
            max_tokens: Some(64),
        };
        let tools = [ToolSpec {
            name: "clock".into(),
            description: "the time".into(),
            parameters: json!({}),
        }];
        let body = request_body("m", conversation, &tools);
        assert_eq!(body["model"], "m");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_tokens"], 64);
        let messages = body["messages"].as_array().unwrap();
        let roles = roles_of(messages);
        assert_eq!(
            roles,
            ["system", "user", "assistant", "user", "assistant", "tool"]
        );
        assert_eq!(messages[0]["content"], "be nice\n\nmemory");
        assert_eq!(
            messages[4]["content"], "",
            "never null: llama-cpp-python refuses it"
        );
        assert_eq!(
            messages[4]["tool_calls"][0]["function"]["name"],
            "calculator"
        );
        assert_eq!(
            messages[4]["tool_calls"][0]["function"]["arguments"],
            "{\"expression\":\"1+1\"}"
        );
        assert_eq!(messages[5]["tool_call_id"], "c1");
        assert_eq!(body["tools"][0]["type"], "function");
        assert_eq!(body["tools"][0]["function"]["name"], "clock");
        assert_eq!(
            body["tools"][0]["function"]["parameters"],
            json!({"type": "object", "properties": {}})
        );
        let no_tools = request_body("m", Conversation::of(&earlier), &[]);
        assert!(no_tools.get("tools").is_none());
    }
}
