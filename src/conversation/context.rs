//! The context budget: how much of a conversation fits a model's context window, estimated
//! without a tokenizer.
//!
//! Tokens are estimated as bytes divided by [`BYTES_PER_TOKEN`]. Tokenizers differ per model
//! (a Llama, a Qwen and a GPT tokenizer cut the same text differently), and a tokenizer crate
//! would need each model's vocabulary; for English prose the common tokenizers give about four
//! bytes per token, for code and JSON about three. Three errs towards sending less, and the
//! server's own overflow answer remains the backstop (the history is then dropped and the step
//! tried once more).
//!
//! Depends on: `model`.

use std::borrow::Cow;

use crate::model::{ChatMessage, Role};

/// Bytes per token, for the estimate.
pub const BYTES_PER_TOKEN: usize = 3;

/// Tokens a message costs besides its text: role markers and separators of chat templates.
const MESSAGE_OVERHEAD: usize = 8;

/// The part of the window kept free for the answer: a quarter, at most this many tokens.
const ANSWER_RESERVE: usize = 1024;

/// The estimated tokens of one message.
pub fn tokens(message: &ChatMessage) -> usize {
    let calls: usize = message
        .tool_calls
        .iter()
        .map(|call| call.name.len() + call.args.text_len())
        .sum();
    (message.content.len() + calls).div_ceil(BYTES_PER_TOKEN) + MESSAGE_OVERHEAD
}

fn total(messages: &[ChatMessage]) -> usize {
    messages.iter().map(tokens).sum()
}

/// What fits a window of `window` tokens.
#[derive(Debug)]
pub struct Fitted<'a> {
    /// The earlier conversation that fits: its newest part, starting at a user message.
    pub earlier: &'a [ChatMessage],
    /// This turn's messages, with tool results too large for the window cut.
    pub current: Cow<'a, [ChatMessage]>,
    /// True when anything was left out or cut.
    pub trimmed: bool,
}

/// Fits a request into `window` tokens: the system prompt (`head`) and this turn's messages
/// (`current`) always go; of the earlier conversation, as many of the newest exchanges as fit,
/// cut only where a user message starts, so that a tool call is never sent without its result.
/// A tool result of this turn larger than half the window is cut, with a note saying so.
pub fn fit<'a>(
    window: usize,
    head: &[ChatMessage],
    earlier: &'a [ChatMessage],
    current: &'a [ChatMessage],
) -> Fitted<'a> {
    let reserve = (window / 4).min(ANSWER_RESERVE);
    let largest_result = window / 2;
    let mut trimmed = false;
    let current: Cow<'a, [ChatMessage]> = if current
        .iter()
        .any(|m| m.role == Role::Tool && tokens(m) > largest_result)
    {
        trimmed = true;
        Cow::Owned(
            current
                .iter()
                .map(|m| {
                    if m.role == Role::Tool && tokens(m) > largest_result {
                        cut_result(m, largest_result)
                    } else {
                        m.clone()
                    }
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(current)
    };
    let mut room = window
        .saturating_sub(reserve)
        .saturating_sub(total(head))
        .saturating_sub(total(&current));
    // Walk back from the newest message; keep whole exchanges only (cut where a user message
    // starts).
    let mut kept = earlier.len();
    for (index, message) in earlier.iter().enumerate().rev() {
        let cost = tokens(message);
        if cost > room {
            break;
        }
        room -= cost;
        if message.role == Role::User {
            kept = index;
        }
    }
    if kept > 0 {
        trimmed = true;
    }
    Fitted {
        earlier: &earlier[kept..],
        current,
        trimmed,
    }
}

/// A copy of the tool message `message` cut to about `limit` tokens, with a note.
fn cut_result(message: &ChatMessage, limit: usize) -> ChatMessage {
    let keep = limit.saturating_sub(MESSAGE_OVERHEAD) * BYTES_PER_TOKEN;
    let mut end = keep.min(message.content.len());
    while !message.content.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = message.clone();
    cut.content = format!(
        "{}\n[cut to fit the model's context: the tool returned {} bytes]",
        &message.content[..end],
        message.content.len()
    );
    cut
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::ToolCall;

    fn text(role: Role, bytes: usize) -> ChatMessage {
        ChatMessage::text(role, "x".repeat(bytes))
    }

    #[test]
    fn keeps_the_newest_whole_exchanges_that_fit() {
        let call = ChatMessage::tool_calls(
            "",
            vec![ToolCall {
                id: "c".into(),
                name: "calculator".into(),
                args: json!({}).into(),
            }],
        );
        let earlier = vec![
            text(Role::User, 3000),
            text(Role::Assistant, 3000),
            text(Role::User, 300),
            call,
            ChatMessage::tool_result("c", "x".repeat(300), false),
            text(Role::Assistant, 300),
        ];
        let current = vec![text(Role::User, 30)];
        let all = fit(100_000, &[], &earlier, &current);
        assert!(!all.trimmed);
        assert_eq!(all.earlier.len(), 6);
        // Room for the second exchange only: it goes whole, tool call and result together.
        let some = fit(1_000, &[], &earlier, &current);
        assert!(some.trimmed);
        assert_eq!(some.earlier.len(), 4);
        assert_eq!(some.earlier[0].role, Role::User);
        // Room for nothing earlier.
        let none = fit(100, &[], &earlier, &current);
        assert!(none.earlier.is_empty() && none.trimmed);
    }

    #[test]
    fn a_tool_result_too_large_for_the_window_is_cut_with_a_note() {
        let current = vec![
            text(Role::User, 10),
            ChatMessage::tool_result("c", "é".repeat(10_000), false),
        ];
        let fitted = fit(1_000, &[], &[], &current);
        assert!(fitted.trimmed);
        let cut = &fitted.current[1].content;
        assert!(
            cut.len() < 2_000 && cut.contains("cut to fit"),
            "{}",
            cut.len()
        );
        assert_eq!(fitted.current[0].content, current[0].content);
    }
}
