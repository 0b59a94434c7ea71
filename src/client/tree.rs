//! `/history`: a conversation's tree of turns (`GET /api/conversations/{id}/turns`) drawn as
//! lines, the current path and its leaf marked.
//!
//! Depends on: `client::screen`.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_json::Value;

use super::screen::{DIM, PLAIN};

/// How much of a turn's text one line of `/history` shows, in characters.
const HISTORY_TEXT_CHARS: usize = 60;

/// The answer of `GET /api/conversations/{id}/turns`: the conversation's tree of turns.
#[derive(Clone, Debug, Deserialize)]
pub struct TurnTree {
    /// The last turn of the current path; 0 when there is none.
    pub leaf: u64,
    /// Every turn of every branch, oldest first.
    pub turns: Vec<TurnEntry>,
}

/// One turn of a [`TurnTree`].
#[derive(Clone, Debug, Deserialize)]
pub struct TurnEntry {
    /// Its number.
    pub turn_id: u64,
    /// The turn it follows; 0 for a turn at the conversation's start.
    pub parent: u64,
    /// The user's message.
    pub text: String,
    /// The files the message carried.
    #[serde(default)]
    pub attachments: Vec<Value>,
    /// `message`, `error` or `cancelled`; none while the turn runs.
    #[serde(default)]
    pub closing: Option<String>,
}

/// The lines of `/history` and their styles: depth first, siblings in the order they started.
/// A turn's only child stands under it at the same indent; where a turn has several, each of
/// them starts a block indented one step more, marked `-`. A mark in the first column shows
/// the current path (`*`) and its leaf (`>`); turns off it are dimmed.
pub fn tree_lines(tree: &TurnTree) -> Vec<(&'static str, String)> {
    let parents: HashMap<u64, u64> = tree.turns.iter().map(|t| (t.turn_id, t.parent)).collect();
    // A turn whose parent is not listed (or is itself) is shown as a root, so that every turn
    // appears exactly once, and a malformed answer cannot make a cycle.
    let mut children: HashMap<u64, Vec<usize>> = HashMap::new();
    for (index, turn) in tree.turns.iter().enumerate() {
        let parent = if turn.parent != turn.turn_id && parents.contains_key(&turn.parent) {
            turn.parent
        } else {
            0
        };
        children.entry(parent).or_default().push(index);
    }
    let mut path = HashSet::new();
    let mut at = tree.leaf;
    while at != 0 && path.insert(at) {
        at = parents.get(&at).copied().unwrap_or(0);
    }
    // (turn index, column of its text, whether it starts a sibling block); a stack rather than
    // recursion, since a long conversation is a deep tree.
    let mut stack: Vec<(usize, usize, bool)> = Vec::new();
    let push_children =
        |stack: &mut Vec<(usize, usize, bool)>, parent: u64, column: usize| match children
            .get(&parent)
            .map(Vec::as_slice)
        {
            None | Some([]) => {}
            Some([only]) => stack.push((*only, column, false)),
            Some(several) => {
                for &index in several.iter().rev() {
                    stack.push((index, column + 2, true));
                }
            }
        };
    push_children(&mut stack, 0, 0);
    let mut lines = Vec::with_capacity(tree.turns.len());
    while let Some((index, column, starts_block)) = stack.pop() {
        let turn = &tree.turns[index];
        let on_path = path.contains(&turn.turn_id);
        let mark = if turn.turn_id == tree.leaf {
            '>'
        } else if on_path {
            '*'
        } else {
            ' '
        };
        let (indent, dash) = if starts_block {
            (" ".repeat(column - 2), "- ")
        } else {
            (" ".repeat(column), "")
        };
        let files = match turn.attachments.len() {
            0 => String::new(),
            1 => " (1 file)".to_owned(),
            n => format!(" ({n} files)"),
        };
        let closing = turn.closing.as_deref().unwrap_or("running");
        let text = one_line(&turn.text, HISTORY_TEXT_CHARS);
        let line = format!(
            "{mark} {indent}{dash}{}. {text}{files}  [{closing}]",
            turn.turn_id
        );
        lines.push((if on_path { PLAIN } else { DIM }, line));
        push_children(&mut stack, turn.turn_id, column);
    }
    lines
}

/// `text` on one line (runs of white space as one space), cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(turn_id: u64, parent: u64, text: &str) -> TurnEntry {
        TurnEntry {
            turn_id,
            parent,
            text: text.into(),
            attachments: Vec::new(),
            closing: Some("message".into()),
        }
    }

    #[test]
    fn branches_are_indented_and_the_current_path_marked() {
        let tree = TurnTree {
            leaf: 3,
            turns: vec![turn(1, 0, "q1"), turn(2, 1, "q2"), turn(3, 1, "q2 again")],
        };
        let lines: Vec<String> = tree_lines(&tree).into_iter().map(|(_, l)| l).collect();
        assert_eq!(
            lines,
            [
                "* 1. q1  [message]",
                "  - 2. q2  [message]",
                "> - 3. q2 again  [message]",
            ]
        );
    }

    #[test]
    fn long_texts_are_one_cut_line() {
        assert_eq!(one_line("a\n  b", 10), "a b");
        assert_eq!(one_line(&"x".repeat(20), 5), "xxxx…");
    }
}
