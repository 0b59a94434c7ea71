//! `/prompt`: the user's command for the prompts the MCP servers offer. `/prompt` alone lists
//! them; `/prompt NAME [key=value ...]` (or `/prompt NAME {"key": "value"}`) gets one, whose
//! text becomes the user's message for the model. The bot calls [`resolve`] before a turn asks
//! the model.
//!
//! Depends on: `common::cancel`, `tools`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{PromptInfo, ToolChain};
use crate::common::cancel::CancelFlag;

/// The command's word.
pub const PROMPT_COMMAND: &str = "/prompt";

/// What a `/prompt` message comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromptOutcome {
    /// The prompt's text: the model gets it as the user's message.
    Expanded(String),
    /// An answer for the user, without asking the model: the list of prompts, or why the
    /// prompt could not be had.
    Answer(String),
}

/// A parsed `/prompt` command.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Command {
    /// `/prompt` alone: list them.
    List,
    /// `/prompt NAME args`.
    Get {
        name: String,
        args: BTreeMap<String, String>,
    },
}

/// What `text` (a user's message) comes to when it is a `/prompt` command; `None` when it is
/// not one, and the turn goes on as usual.
pub fn resolve(tools: &ToolChain, text: &str, cancel: &CancelFlag) -> Option<PromptOutcome> {
    let command = match parse(text)? {
        Ok(command) => command,
        Err(problem) => return Some(PromptOutcome::Answer(problem)),
    };
    Some(match command {
        Command::List => match tools.prompts(cancel) {
            Ok(prompts) => PromptOutcome::Answer(list(&prompts)),
            Err(e) => PromptOutcome::Answer(format!("The prompts could not be listed: {e}")),
        },
        Command::Get { name, args } => match tools.prompt(&name, &args, cancel) {
            Ok(text) if !text.trim().is_empty() => PromptOutcome::Expanded(text),
            Ok(_) => PromptOutcome::Answer(format!("The prompt {name} is empty.")),
            Err(e) => PromptOutcome::Answer(format!(
                "The prompt {name} could not be had: {e}. `{PROMPT_COMMAND}` lists the prompts."
            )),
        },
    })
}

/// Parses a `/prompt` command: `None` when `text` is not one, `Err` with what is wrong when
/// its arguments cannot be read.
fn parse(text: &str) -> Option<Result<Command, String>> {
    let rest = text.trim().strip_prefix(PROMPT_COMMAND)?;
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return None;
    }
    let rest = rest.trim();
    if rest.is_empty() {
        return Some(Ok(Command::List));
    }
    let (name, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let args = args.trim();
    let args = if args.starts_with('{') {
        json_args(args)
    } else {
        pair_args(args)
    };
    Some(args.map(|args| Command::Get {
        name: name.to_owned(),
        args,
    }))
}

/// `{"key": "value", ...}`; values that are not strings are passed as their JSON text.
fn json_args(text: &str) -> Result<BTreeMap<String, String>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map
            .into_iter()
            .map(|(key, value)| {
                let value = match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
                (key, value)
            })
            .collect()),
        _ => Err(format!(
            "The arguments of {PROMPT_COMMAND} must be key=value pairs or one JSON object of \
             strings."
        )),
    }
}

/// `key=value key2=value2`; a value runs to the next space.
fn pair_args(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(format!(
                "{pair:?} is not key=value; the arguments of {PROMPT_COMMAND} are key=value \
                 pairs (or one JSON object)."
            )),
        })
        .collect()
}

/// The prompts as a markdown list for the user.
fn list(prompts: &[PromptInfo]) -> String {
    if prompts.is_empty() {
        return "No MCP server offers prompts.".to_owned();
    }
    let mut text = format!(
        "Prompts (`{PROMPT_COMMAND} NAME key=value ...`; `server/NAME` picks the server):\n"
    );
    for prompt in prompts {
        let arguments: Vec<String> = prompt
            .arguments
            .iter()
            .map(|(name, required)| {
                if *required {
                    format!("{name} (required)")
                } else {
                    name.clone()
                }
            })
            .collect();
        text.push_str(&format!("\n- `{}/{}`", prompt.server, prompt.name));
        if !prompt.description.trim().is_empty() {
            text.push_str(&format!(": {}", prompt.description.trim()));
        }
        if !arguments.is_empty() {
            text.push_str(&format!(" (arguments: {})", arguments.join(", ")));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(name: &str, args: &[(&str, &str)]) -> Option<Result<Command, String>> {
        let args = args
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Some(Ok(Command::Get {
            name: name.into(),
            args,
        }))
    }

    #[test]
    fn commands_are_parsed_and_other_text_is_left_alone() {
        assert_eq!(parse("/prompt"), Some(Ok(Command::List)));
        assert_eq!(parse("  /prompt  "), Some(Ok(Command::List)));
        assert_eq!(parse("/prompt simple"), get("simple", &[]));
        assert_eq!(
            parse("/prompt fx/args city=Paris state=TX"),
            get("fx/args", &[("city", "Paris"), ("state", "TX")])
        );
        assert_eq!(
            parse(r#"/prompt args {"city": "New York", "n": 2}"#),
            get("args", &[("city", "New York"), ("n", "2")])
        );
        assert!(matches!(parse("/prompt args city"), Some(Err(e)) if e.contains("key=value")));
        assert!(matches!(parse("/prompt args {oops"), Some(Err(e)) if e.contains("JSON")));
        assert_eq!(parse("/prompts"), None);
        assert_eq!(parse("what is /prompt?"), None);
        assert_eq!(parse("hello"), None);
    }

    #[test]
    fn the_list_names_each_prompt_with_its_server_and_arguments() {
        assert_eq!(list(&[]), "No MCP server offers prompts.");
        let text = list(&[
            PromptInfo {
                server: "fx".into(),
                name: "greet".into(),
                description: "Say hello.".into(),
                arguments: vec![("name".into(), true), ("tone".into(), false)],
            },
            PromptInfo {
                server: "fx".into(),
                name: "plain".into(),
                description: String::new(),
                arguments: Vec::new(),
            },
        ]);
        assert!(
            text.ends_with(
                "\n- `fx/greet`: Say hello. (arguments: name (required), tone)\n- `fx/plain`"
            ),
            "{text}"
        );
    }

    #[test]
    fn without_a_source_there_are_no_prompts() {
        let tools = ToolChain::new();
        let cancel = CancelFlag::new();
        assert_eq!(resolve(&tools, "hello", &cancel), None);
        assert_eq!(
            resolve(&tools, "/prompt", &cancel),
            Some(PromptOutcome::Answer(
                "No MCP server offers prompts.".into()
            ))
        );
        let Some(PromptOutcome::Answer(text)) = resolve(&tools, "/prompt nope", &cancel) else {
            panic!("not an answer");
        };
        assert!(text.contains("there is no prompt named nope"), "{text}");
    }
}
