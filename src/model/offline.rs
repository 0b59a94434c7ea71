//! `OfflineModel`: the deterministic built-in backend of PROTOCOL.md section 9. It needs no
//! network, so the server can be tried, tested and benchmarked anywhere.
//!
//! Depends on: `common::error`, `model`, `model::attached`.

use serde_json::{Value, json};

use crate::common::error::Result;
use crate::model::attached::{PASSAGES_PREFIX, passages_cited, split_files};
use crate::model::{
    ChatMessage, Conversation, MEMORY_PREFIX, ModelBackend, ModelReply, ReplySink, Role, ToolCall,
    ToolSpec,
};

/// The built-in model: echoes plain text, and turns slash commands into tool calls.
#[derive(Debug, Default)]
pub struct OfflineModel;

/// The text `/help` answers with.
pub const HELP: &str = "Commands:\n\
/remember <fact>  store a fact in the shared knowledge graph\n\
/recall <query>  search the shared knowledge graph\n\
/note <text>  keep a note in this session\n\
/notes  list this session's notes\n\
/calc <expr>  evaluate arithmetic: + - * / % ^ and parentheses\n\
/time  the server's clock\n\
/wait <ms>  wait, until cancelled (at most 60000 ms)\n\
/tool <name> <json>  call any tool with a JSON object of arguments\n\
/files  list the files of this conversation\n\
/read <id>  read one of them, a page at a time\n\
/help  this list\n\
Anything else is echoed back.";

/// What one user message asks of the model.
enum Plan {
    Say(String),
    Call { name: String, args: Value },
}

impl ModelBackend for OfflineModel {
    fn name(&self) -> String {
        "offline".into()
    }

    fn describes_memory(&self) -> bool {
        true
    }

    fn answers_at_once(&self) -> bool {
        true
    }

    fn complete(
        &self,
        messages: Conversation<'_>,
        _tools: &[ToolSpec],
        sink: &mut dyn ReplySink,
    ) -> Result<ModelReply> {
        let Some(last) = messages.last() else {
            return Ok(say("There is nothing to answer yet."));
        };
        if last.role == Role::Tool {
            return Ok(say(&summarize_tool_results(messages)));
        }
        let (text, files) = split_files(&last.content);
        if !text.starts_with('/') {
            sink.thought(&echo_thought(messages));
            if files.is_empty() {
                return Ok(say(&format!("You said: {text}")));
            }
            return Ok(say(&format!(
                "You said: {text} (attached: {})",
                files.join(", ")
            )));
        }
        match plan(text) {
            Plan::Say(answer) => Ok(say(&answer)),
            // An unknown tool still goes through the ToolChain, which says that it is unknown.
            Plan::Call { name, args } => {
                sink.thought(&format!("Calling the {name} tool with {args}."));
                let id = format!("call_{}", messages.len());
                Ok(ModelReply {
                    text: String::new(),
                    tool_calls: vec![ToolCall {
                        id,
                        name,
                        args: args.into(),
                    }],
                    ..ModelReply::default()
                })
            }
        }
    }
}

/// The thought before an echo: says which remembered facts and which passages of attached
/// files were in the context, if any.
fn echo_thought(messages: Conversation<'_>) -> String {
    let this_turn = || {
        messages
            .iter()
            .rev()
            .take_while(|m| m.role != Role::Assistant)
            .filter(|m| m.role == Role::System)
    };
    let memory = this_turn().find_map(|m| m.content.strip_prefix(MEMORY_PREFIX));
    let passages = this_turn()
        .find(|m| m.content.starts_with(PASSAGES_PREFIX))
        .map(|m| passages_cited(&m.content));
    let thought = echo_memory(memory);
    match passages {
        Some(cited) => format!("{thought} Passages in context: {}.", cited.join("; ")),
        None => thought,
    }
}

/// The part of the echo's thought about memory.
fn echo_memory(memory: Option<&str>) -> String {
    match memory {
        Some(entries) => {
            let used: Vec<&str> = entries
                .lines()
                .filter_map(|line| line.strip_prefix("- "))
                .map(|line| line.split(':').next().unwrap_or(line))
                .collect();
            format!(
                "No command here, so I echo the text back. Memory in context: {}.",
                used.join("; ")
            )
        }
        None => "No command here, so I echo the text back.".to_owned(),
    }
}

fn say(text: &str) -> ModelReply {
    ModelReply {
        text: text.to_owned(),
        ..ModelReply::default()
    }
}

/// Reads a slash command.
fn plan(text: &str) -> Plan {
    let (command, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let rest = rest.trim();
    let call = |name: &str, args: Value| Plan::Call {
        name: name.to_owned(),
        args,
    };
    let usage = |line: &str| Plan::Say(format!("Usage: {line}"));
    match command {
        "/help" => Plan::Say(HELP.to_owned()),
        "/remember" if !rest.is_empty() => call("remember", json!({ "content": rest })),
        "/remember" => usage("/remember <fact>"),
        "/recall" if !rest.is_empty() => call("recall", json!({ "query": rest })),
        "/recall" => usage("/recall <query>"),
        "/note" if !rest.is_empty() => call("session_note", json!({ "text": rest })),
        "/note" => usage("/note <text>"),
        "/notes" => call("session_notes", json!({})),
        "/calc" if !rest.is_empty() => call("calculator", json!({ "expression": rest })),
        "/calc" => usage("/calc <expression>"),
        "/time" => call("clock", json!({})),
        "/files" => call("files", json!({})),
        "/read" if !rest.is_empty() => call("read_file", json!({ "id": rest })),
        "/read" => usage("/read <file id>"),
        "/wait" => match rest.parse::<u64>() {
            Ok(ms) => call("wait", json!({ "ms": ms })),
            Err(_) => usage("/wait <milliseconds>"),
        },
        "/tool" => {
            let (name, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, "{}"));
            match serde_json::from_str::<Value>(args) {
                Ok(args @ Value::Object(_)) if !name.is_empty() => call(name, args),
                _ => usage(
                    "/tool <name> <json object>, e.g. /tool calculator {\"expression\": \"1+2\"}",
                ),
            }
        }
        other => Plan::Say(format!("Unknown command {other}. Try /help.")),
    }
}

/// The final answer after tool calls: each tool's output, or what went wrong with it.
fn summarize_tool_results(messages: Conversation<'_>) -> String {
    let results: Vec<&ChatMessage> = messages
        .iter()
        .rev()
        .take_while(|m| m.role == Role::Tool)
        .collect();
    let calls = messages
        .iter()
        .rev()
        .find(|m| m.role == Role::Assistant && !m.tool_calls.is_empty())
        .map(|m| m.tool_calls.as_slice())
        .unwrap_or_default();
    let mut lines = Vec::new();
    for result in results.into_iter().rev() {
        let name = calls
            .iter()
            .find(|call| Some(&call.id) == result.tool_call_id.as_ref())
            .map_or("tool", |call| call.name.as_str());
        if result.is_error {
            lines.push(format!("The {name} tool failed: {}", result.content));
        } else {
            lines.push(result.content.clone());
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ToolArgs;

    #[derive(Default)]
    struct Recorder {
        thoughts: Vec<String>,
    }

    impl ReplySink for Recorder {
        fn thought(&mut self, text: &str) {
            self.thoughts.push(text.to_owned());
        }
        fn delta(&mut self, _text: &str) {}
        fn is_cancelled(&self) -> bool {
            false
        }
    }

    fn spec(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: String::new(),
            parameters: json!({}),
        }
    }

    fn ask(text: &str, tools: &[ToolSpec]) -> (ModelReply, Vec<String>) {
        let mut sink = Recorder::default();
        let messages = [ChatMessage::text(Role::User, text)];
        let reply = OfflineModel
            .complete(Conversation::of(&messages), tools, &mut sink)
            .unwrap();
        (reply, sink.thoughts)
    }

    #[test]
    fn echoes_plain_text_after_a_thought() {
        let (reply, thoughts) = ask("hello", &[]);
        assert_eq!(reply.text, "You said: hello");
        assert_eq!(thoughts.len(), 1);
    }

    #[test]
    fn commands_become_tool_calls() {
        let tools = [spec("calculator"), spec("wait")];
        let (reply, _) = ask("/calc 1 + 2", &tools);
        assert_eq!(reply.tool_calls[0].name, "calculator");
        assert_eq!(
            reply.tool_calls[0].args,
            ToolArgs::from(json!({"expression": "1 + 2"}))
        );
        let (reply, _) = ask("/wait 50", &tools);
        assert_eq!(reply.tool_calls[0].args, ToolArgs::from(json!({"ms": 50})));
        let (reply, _) = ask("/tool wait {\"ms\": 3}", &tools);
        assert_eq!(reply.tool_calls[0].args, ToolArgs::from(json!({"ms": 3})));
    }

    #[test]
    fn the_echo_thought_names_the_memory_in_context() {
        let memory = format!("{MEMORY_PREFIX}\n- #4 cats purr: Cats purr\n- #9 dogs: Dogs bark");
        let messages = [
            ChatMessage::text(Role::System, memory),
            ChatMessage::text(Role::User, "cats?"),
        ];
        let mut sink = Recorder::default();
        OfflineModel
            .complete(Conversation::of(&messages), &[], &mut sink)
            .unwrap();
        assert_eq!(
            sink.thoughts,
            ["No command here, so I echo the text back. Memory in context: #4 cats purr; #9 dogs."]
        );
    }

    #[test]
    fn summarizes_tool_results() {
        let call = ToolCall {
            id: "c".into(),
            name: "calculator".into(),
            args: json!({}).into(),
        };
        let messages = [
            ChatMessage::text(Role::User, "/calc 1/0"),
            ChatMessage::tool_calls("", vec![call]),
            ChatMessage::tool_result("c", "division by zero", true),
        ];
        let reply = OfflineModel
            .complete(Conversation::of(&messages), &[], &mut Recorder::default())
            .unwrap();
        assert_eq!(reply.text, "The calculator tool failed: division by zero");
    }
}
