//! How values are spelled in the store, alike for both dialects: message roles and tool calls,
//! vectors, labels and titles (a command's readable), the words a search keeps, and the integer conversions at the
//! edge of SQL's signed `bigint`.
//!
//! Depends on: `model`, `store`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::model::{ChatMessage, Role, ToolArgs, ToolCall};
use crate::store::MAX_SEARCH_WORDS;

/// `n` as SQL's signed 64-bit integer, saturating.
pub(crate) fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `n` read from a signed 64-bit column; never negative.
pub(crate) fn small(n: i64) -> u64 {
    n.max(0) as u64
}

/// A vector as stored: its `f32`s, little-endian, one after another.
pub(crate) fn vector_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The dot product of `query` and a stored vector (the cosine similarity, both being unit
/// vectors); `None` when the stored one has another dimension.
pub(crate) fn stored_similarity(query: &[f32], stored: &[u8]) -> Option<f32> {
    if stored.len() != query.len() * 4 {
        return None;
    }
    Some(
        stored
            .chunks_exact(4)
            .zip(query)
            .map(|(bytes, q)| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) * q)
            .sum(),
    )
}

/// The `limit` best `(id, similarity)` of `scored`, best first (ties: the newer node first).
pub(crate) fn best(scored: impl Iterator<Item = (i64, f32)>, limit: usize) -> Vec<(i64, f32)> {
    let mut top: Vec<(i64, f32)> = Vec::with_capacity(limit + 1);
    for (id, score) in scored {
        if limit == 0 || (top.len() == limit && top.last().is_some_and(|(_, s)| *s >= score)) {
            continue;
        }
        let at = top.partition_point(|(other, s)| *s > score || (*s == score && *other > id));
        top.insert(at, (id, score));
        top.truncate(limit);
    }
    top
}

/// Longest label made from a fact's first words.
pub(crate) const LABEL_CHARS: usize = 60;

/// Longest title made from a first user message ([`title_for`]).
pub(crate) const TITLE_CHARS: usize = 80;

/// Common words that say nothing about what to look for.
pub(crate) const STOPWORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from",
    "how", "i", "in", "is", "it", "me", "my", "of", "on", "or", "tell", "that", "the", "this",
    "to", "was", "what", "when", "where", "which", "who", "why", "with", "you", "your",
];

/// The words of free text a search looks for: lowercased, each once, without stopwords unless
/// nothing else is left, and at most [`MAX_SEARCH_WORDS`] of them (the first ones). Each is
/// made of letters and digits only, so no input is a syntax error in either store's query
/// language. Reading stops once that many are found, so a long text costs no more than a short
/// one.
pub(crate) fn search_words(text: &str) -> Vec<String> {
    let mut meaningful: Vec<String> = Vec::new();
    let mut common: Vec<String> = Vec::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
    {
        let word = word.to_lowercase();
        let list = if STOPWORDS.contains(&word.as_str()) {
            &mut common
        } else {
            &mut meaningful
        };
        if list.len() < MAX_SEARCH_WORDS && !list.contains(&word) {
            list.push(word);
        }
        if meaningful.len() == MAX_SEARCH_WORDS {
            break;
        }
    }
    if meaningful.is_empty() {
        common
    } else {
        meaningful
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Microseconds since the Unix epoch, by this machine's clock.
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The first `limit` characters of `text`.
pub(crate) fn cut(text: &str, limit: usize) -> String {
    text.chars().take(limit).collect()
}

/// A conversation's title, made from its first user message: the message with its whitespace
/// made single spaces, cut to [`TITLE_CHARS`] characters. A command (a message that starts with
/// `/` and a name) reads as its name and what it was given, which the raw text hides: `/calc
/// 6*7` is `calc: 6*7`, and `/tool everything__echo {"message": "hi"}` is `echo: hi`: the
/// tool's name without its MCP server's prefix, and the plain values of its arguments.
pub(crate) fn title_for(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let title = command_title(&flat).unwrap_or(flat);
    cut(&title, TITLE_CHARS)
}

/// The readable title of `text` when it is a command.
fn command_title(text: &str) -> Option<String> {
    let command = text.strip_prefix('/')?;
    let (name, rest) = command.split_once(' ').unwrap_or((command, ""));
    let is_name = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.')
    };
    if !is_name(name) {
        return None;
    }
    let (name, given) = match (name, rest.split_once(' ')) {
        ("tool", Some((tool, arguments))) => (tool, argument_values(arguments)),
        ("tool", None) if is_name(rest) => (rest, String::new()),
        _ => (name, rest.to_owned()),
    };
    // An MCP tool is named `server__tool`.
    let name = name.rsplit_once("__").map_or(name, |(_, tool)| tool);
    Some(if given.is_empty() {
        name.to_owned()
    } else {
        format!("{name}: {given}")
    })
}

/// The plain values (text, numbers, true or false) of a tool's JSON arguments, in order,
/// joined by commas; the text itself when it is not a JSON object.
fn argument_values(arguments: &str) -> String {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(arguments) else {
        return arguments.to_owned();
    };
    fields
        .values()
        .filter_map(|value| match value {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            Value::Bool(flag) => Some(flag.to_string()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A fact's label: its first words, cut at a word boundary.
pub(crate) fn label_for(content: &str) -> String {
    let flat: String = content.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= LABEL_CHARS {
        return flat;
    }
    let head = cut(&flat, LABEL_CHARS);
    let head = head
        .rsplit_once(' ')
        .map_or(head.as_str(), |(head, _)| head);
    format!("{head}…")
}

/// How a role is stored.
pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// The role stored as `name`.
pub(crate) fn role_from(name: &str) -> Role {
    match name {
        "system" => Role::System,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        _ => Role::User,
    }
}

/// A message's tool calls as stored: a JSON array, or nothing when there are none.
pub(crate) fn calls_to_json(calls: &[ToolCall]) -> Option<String> {
    (!calls.is_empty()).then(|| {
        Value::Array(
            calls
                .iter()
                .map(|c| json!({"id": c.id, "name": c.name, "args": c.args.to_stored()}))
                .collect(),
        )
        .to_string()
    })
}

/// The tool calls stored as `text`.
pub(crate) fn calls_from_json(text: Option<String>) -> Vec<ToolCall> {
    let Some(Ok(Value::Array(items))) = text.map(|t| serde_json::from_str::<Value>(&t)) else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| ToolCall {
            id: item["id"].as_str().unwrap_or_default().to_owned(),
            name: item["name"].as_str().unwrap_or_default().to_owned(),
            args: ToolArgs::from_stored(item["args"].clone()),
        })
        .collect()
}

/// The newest messages of a path as read (newest first, at most the count asked for), made
/// into what a session loads: oldest first, starting at a user message so that no tool result
/// is left without its call.
pub(crate) fn messages_from_newest(mut loaded: Vec<ChatMessage>) -> Vec<ChatMessage> {
    loaded.reverse();
    let start = loaded
        .iter()
        .position(|message| message.role == Role::User)
        .unwrap_or(loaded.len());
    loaded.split_off(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_gets_a_readable_title() {
        assert_eq!(
            title_for(r#"/tool everything__echo {"message": "hello there"}"#),
            "echo: hello there"
        );
        assert_eq!(
            title_for(r#"/tool everything__add {"a": 1, "b": 2.5, "deep": {"x": 1}}"#),
            "add: 1, 2.5"
        );
        assert_eq!(title_for("/tool clock {}"), "clock");
        assert_eq!(
            title_for("/tool everything__longRunningOperation"),
            "longRunningOperation"
        );
        assert_eq!(title_for("/tool echo not json"), "echo: not json");
        assert_eq!(title_for("/calc 6*7"), "calc: 6*7");
        assert_eq!(title_for("/remember  I like\n tea"), "remember: I like tea");
        assert_eq!(title_for("/help"), "help");
        // Not commands: the text as it is, whitespace made single spaces.
        assert_eq!(title_for("/usr/bin is where?"), "/usr/bin is where?");
        assert_eq!(title_for("/ hello"), "/ hello");
        assert_eq!(title_for("  what do\n\therons eat "), "what do herons eat");
        let long = format!("/tool s__echo {{\"message\": \"{}\"}}", "word ".repeat(40));
        assert_eq!(title_for(&long).chars().count(), TITLE_CHARS);
        assert!(title_for(&long).starts_with("echo: word word"));
    }
}
