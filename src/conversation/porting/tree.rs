//! A tree of foreign messages (a ChatGPT `mapping`, a Claude conversation) made into Sparky's
//! turns. A user message starts a turn; the assistant messages after it, up to the next user
//! message, are its answer (joined); messages of other authors (system, tool) and empty ones are
//! passed over. Siblings become branches: two answers to one message are two turns with the same
//! words and parent, two versions of a message two turns after the same parent. The path to the
//! export's current message ends at the leaf.
//!
//! The tree is checked before it is walked: every id once, every parent known or none (a root),
//! children that name their parent, and no loop (every message reachable from a root). The walk
//! keeps its own stack, so a conversation of thousands of messages does not deepen the thread's.
//!
//! Depends on: `conversation::porting`.

use std::collections::HashMap;

use super::{ImportedTurn, MAX_IMPORT_MESSAGES};

/// Who wrote a message, as far as turns care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Author {
    /// The person: starts a turn.
    User,
    /// The model: part of the answer of the turn it follows.
    Assistant,
    /// Anyone else (system, tool): passed over.
    Other,
}

/// One message of a foreign conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Its id in the export.
    pub id: String,
    /// The message it follows (`None`, or an id the conversation does not hold: a root).
    pub parent: Option<String>,
    /// The children the export lists for it, in its order (`None` when it lists none).
    pub children: Option<Vec<String>>,
    /// Who wrote it.
    pub author: Author,
    /// Its text (empty: passed over).
    pub text: String,
    /// When it was written, in seconds (any epoch), for ordering when nothing else orders.
    pub time: Option<f64>,
    /// Unix seconds it was written, when the export says: a user message's is its turn's time.
    pub created_at: Option<i64>,
}

/// A pending turn on one path: its words, the turn it follows, its answer so far.
#[derive(Clone, Debug)]
struct Pending {
    text: String,
    parent: u64,
    answer: Vec<String>,
    /// The last message in it: a pending turn is the same turn on every path through that
    /// message.
    last: usize,
    /// Every message it took in.
    nodes: Vec<usize>,
    /// Unix seconds its user message was written.
    created_at: Option<i64>,
}

/// The turns of `messages` and the leaf: the turn that holds `current` (or, without it, the
/// newest message).
///
/// # Errors
///
/// What is wrong with the tree: too many messages, an id twice, a child that names another
/// parent, a loop.
pub fn turns(
    messages: Vec<Message>,
    current: Option<&str>,
) -> Result<(Vec<ImportedTurn>, u64), String> {
    if messages.len() > MAX_IMPORT_MESSAGES {
        return Err(format!(
            "{} messages; a conversation may hold {MAX_IMPORT_MESSAGES} at most",
            messages.len()
        ));
    }
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(messages.len());
    for (at, message) in messages.iter().enumerate() {
        if index.insert(message.id.as_str(), at).is_some() {
            return Err(format!("message {:?} appears twice", message.id));
        }
    }
    let parent_of: Vec<Option<usize>> = messages
        .iter()
        .map(|message| {
            message
                .parent
                .as_deref()
                .and_then(|parent| index.get(parent).copied())
        })
        .collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); messages.len()];
    for (at, parent) in parent_of.iter().enumerate() {
        if let Some(parent) = parent {
            if *parent == at {
                return Err(format!(
                    "message {:?} is its own parent (the tree loops)",
                    messages[at].id
                ));
            }
            children[*parent].push(at);
        }
    }
    for (at, message) in messages.iter().enumerate() {
        let Some(listed) = &message.children else {
            children[at].sort_by(|a, b| order(&messages, *a, *b));
            continue;
        };
        for child in listed {
            match index.get(child.as_str()) {
                Some(&child_at) if parent_of[child_at] == Some(at) => {}
                Some(&child_at) => {
                    return Err(format!(
                        "message {:?} lists {child:?} as a child, but its parent is {:?} (the \
                         tree loops or is inconsistent)",
                        message.id, messages[child_at].parent
                    ));
                }
                None => {
                    return Err(format!(
                        "message {:?} lists a child {child:?} that the conversation does not hold",
                        message.id
                    ));
                }
            }
        }
        let place = |child: usize| {
            listed
                .iter()
                .position(|id| *id == messages[child].id)
                .unwrap_or(usize::MAX)
        };
        children[at].sort_by(|a, b| place(*a).cmp(&place(*b)).then(order(&messages, *a, *b)));
    }
    let mut roots: Vec<usize> = (0..messages.len())
        .filter(|at| parent_of[*at].is_none())
        .collect();
    roots.sort_by(|a, b| order(&messages, *a, *b));

    let mut turns: Vec<ImportedTurn> = Vec::new();
    let mut closed: HashMap<usize, u64> = HashMap::new();
    let mut turn_of: Vec<u64> = vec![0; messages.len()];
    let mut seen = vec![false; messages.len()];
    let mut reached = 0usize;
    let mut finish = |pending: Pending, turns: &mut Vec<ImportedTurn>, turn_of: &mut Vec<u64>| {
        if let Some(&id) = closed.get(&pending.last) {
            return id;
        }
        let id = turns.len() as u64 + 1;
        let answer = (!pending.answer.is_empty()).then(|| pending.answer.join("\n\n"));
        turns.push(ImportedTurn {
            created_at: pending.created_at,
            ..ImportedTurn::answered(id, pending.parent, pending.text, answer)
        });
        closed.insert(pending.last, id);
        for node in pending.nodes {
            if turn_of[node] == 0 {
                turn_of[node] = id;
            }
        }
        id
    };
    // (message, the turn its path has closed last, the turn it is in)
    let mut stack: Vec<(usize, u64, Option<Pending>)> =
        roots.iter().rev().map(|root| (*root, 0, None)).collect();
    while let Some((at, mut parent_turn, mut pending)) = stack.pop() {
        if std::mem::replace(&mut seen[at], true) {
            return Err(format!(
                "message {:?} is reached twice (the tree loops)",
                messages[at].id
            ));
        }
        reached += 1;
        let message = &messages[at];
        let text = message.text.trim();
        match message.author {
            Author::User if !text.is_empty() => {
                if let Some(done) = pending.take() {
                    parent_turn = finish(done, &mut turns, &mut turn_of);
                }
                pending = Some(Pending {
                    text: text.to_owned(),
                    parent: parent_turn,
                    answer: Vec::new(),
                    last: at,
                    nodes: vec![at],
                    created_at: message.created_at,
                });
            }
            Author::Assistant if !text.is_empty() => {
                if let Some(pending) = pending.as_mut() {
                    pending.answer.push(text.to_owned());
                    pending.last = at;
                    pending.nodes.push(at);
                }
            }
            _ => {
                if let Some(pending) = pending.as_mut() {
                    pending.nodes.push(at);
                }
            }
        }
        if pending.is_none() {
            turn_of[at] = parent_turn;
        }
        match children[at].split_first() {
            None => {
                if let Some(done) = pending {
                    finish(done, &mut turns, &mut turn_of);
                }
            }
            Some((first, others)) => {
                // Pushed so that the first child is walked first; it takes the pending turn,
                // the others a copy (a long chain copies nothing).
                for child in others.iter().rev() {
                    stack.push((*child, parent_turn, pending.clone()));
                }
                stack.push((*first, parent_turn, pending));
            }
        }
    }
    if reached < messages.len() {
        let lost = (0..messages.len()).find(|at| !seen[*at]).unwrap_or(0);
        return Err(format!(
            "message {:?} cannot be reached from the start (the tree loops)",
            messages[lost].id
        ));
    }
    // The leaf: the turn of the current message, or of the nearest message above it in one.
    let start = match current {
        Some(current) => index.get(current).copied(),
        None => (0..messages.len()).max_by(|a, b| order(&messages, *a, *b)),
    };
    let mut leaf = 0;
    let mut at = start;
    let mut steps = 0;
    while let Some(node) = at {
        if turn_of[node] > 0 {
            leaf = turn_of[node];
            break;
        }
        at = parent_of[node];
        steps += 1;
        if steps > messages.len() {
            break;
        }
    }
    if leaf == 0 {
        leaf = turns.len() as u64;
    }
    Ok((turns, leaf))
}

/// The order of two messages where the export gives none: by time, then as the export lists
/// them.
fn order(messages: &[Message], a: usize, b: usize) -> std::cmp::Ordering {
    let time = |at: usize| messages[at].time.unwrap_or(f64::NEG_INFINITY);
    time(a).total_cmp(&time(b)).then(a.cmp(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, parent: Option<&str>, author: Author, text: &str) -> Message {
        Message {
            id: id.into(),
            parent: parent.map(Into::into),
            children: None,
            author,
            text: text.into(),
            time: None,
            created_at: None,
        }
    }

    #[test]
    fn siblings_are_branches_and_the_current_path_is_the_leaf() {
        let messages = vec![
            message("s", None, Author::Other, ""),
            message("u1", Some("s"), Author::User, "hi"),
            message("a1", Some("u1"), Author::Assistant, "hello"),
            message("a1b", Some("u1"), Author::Assistant, "hey"),
            message("u2", Some("a1"), Author::User, "more"),
            message("a2", Some("u2"), Author::Assistant, "sure"),
        ];
        let (turns, leaf) = turns(messages.clone(), Some("a1b")).unwrap();
        assert_eq!(turns.len(), 3);
        assert_eq!(
            (turns[0].parent, turns[1].parent, turns[2].parent),
            (0, 1, 0)
        );
        assert_eq!(turns[2].text, "hi");
        assert_eq!(leaf, 3);
        let (_, leaf) = super::turns(messages, Some("a2")).unwrap();
        assert_eq!(leaf, 2);
    }

    #[test]
    fn loops_are_refused() {
        let messages = vec![
            message("a", Some("b"), Author::User, "x"),
            message("b", Some("a"), Author::Assistant, "y"),
        ];
        assert!(turns(messages, None).unwrap_err().contains("loops"));
        let own = vec![message("a", Some("a"), Author::User, "x")];
        assert!(turns(own, None).unwrap_err().contains("loops"));
    }

    #[test]
    fn a_long_chain_is_walked_without_deepening_the_stack_and_a_longer_one_is_refused() {
        let chain = |count: usize| {
            (0..count)
                .map(|n| {
                    let author = if n % 2 == 0 {
                        Author::User
                    } else {
                        Author::Assistant
                    };
                    let parent = n.checked_sub(1).map(|p| p.to_string());
                    message(&n.to_string(), parent.as_deref(), author, "x")
                })
                .collect::<Vec<_>>()
        };
        let (turns, leaf) = turns(chain(MAX_IMPORT_MESSAGES), None).unwrap();
        assert_eq!(turns.len(), MAX_IMPORT_MESSAGES / 2);
        assert_eq!(leaf, turns.len() as u64);
        assert_eq!(turns[9].parent, 9);
        let error = super::turns(chain(MAX_IMPORT_MESSAGES + 1), None).unwrap_err();
        assert!(error.contains("at most"), "{error}");
    }
}
