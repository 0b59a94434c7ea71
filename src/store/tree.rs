//! `TurnTree`: the turns of one conversation as a tree (PROTOCOL.md section 5, "Branches"),
//! as the store keeps it and a live session holds it. Each turn has a parent (`0`: the start),
//! and one turn, the *leaf*, ends the current path: the only turns whose messages the model
//! sees. A turn may also cut the path (`reset`: the model rejected the history before it), and
//! may carry the `client_id` of the frame that started it, so that a frame sent twice runs once,
//! and the files its user message carried, which a `regenerate` carries again and whose text the
//! model is given on every path through the turn.
//!
//! Turn ids are numbered in the order turns started, and a turn's parent always started before
//! it, so a turn's descendants all have larger ids: the walks below are single passes.
//!
//! Depends on: `common::protocol`.

use std::collections::{HashMap, HashSet};

use crate::common::protocol::Attachment;

/// One turn's place in the tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeTurn {
    /// The turn it follows (`0`: the conversation's start).
    pub parent: u64,
    /// True when the model sees nothing of the path before this turn (a `history_reset`).
    pub reset: bool,
    /// The `client_id` of the frame that started it.
    pub client_id: Option<String>,
    /// The files its user message carried.
    pub attachments: Vec<Attachment>,
}

/// The turns of a conversation as a tree, and its current leaf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnTree {
    /// Turn `n` is at index `n - 1`.
    turns: Vec<TreeTurn>,
    leaf: u64,
    client_ids: HashMap<String, u64>,
    /// Turns whose user message carried files: with none, no path has any to gather.
    carrying: usize,
}

impl TurnTree {
    /// The tree of `count` turns, of which `known` are described (by id); a turn not described
    /// (a store that lost its row) follows the one before it. `leaf` out of range reads as the
    /// newest turn.
    pub fn from_rows(count: u64, known: Vec<(u64, TreeTurn)>, leaf: u64) -> Self {
        let count = usize::try_from(count).unwrap_or(0);
        let mut turns: Vec<TreeTurn> = (0..count)
            .map(|index| TreeTurn {
                parent: index as u64,
                ..TreeTurn::default()
            })
            .collect();
        for (id, turn) in known {
            if let Some(slot) = (id as usize)
                .checked_sub(1)
                .and_then(|index| turns.get_mut(index))
            {
                // A parent must have started first; anything else reads as the start.
                let parent = if turn.parent < id { turn.parent } else { 0 };
                *slot = TreeTurn { parent, ..turn };
            }
        }
        let client_ids = turns
            .iter()
            .enumerate()
            .filter_map(|(index, turn)| Some((turn.client_id.clone()?, index as u64 + 1)))
            .collect();
        let leaf = if (1..=count as u64).contains(&leaf) {
            leaf
        } else {
            count as u64
        };
        let carrying = turns
            .iter()
            .filter(|turn| !turn.attachments.is_empty())
            .count();
        TurnTree {
            turns,
            leaf,
            client_ids,
            carrying,
        }
    }

    /// How many turns there are (the highest turn id).
    pub fn len(&self) -> u64 {
        self.turns.len() as u64
    }

    /// True before the first turn.
    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// The last turn of the current path (`0` when there is none).
    pub fn leaf(&self) -> u64 {
        self.leaf
    }

    /// True when turn `id` exists.
    pub fn contains(&self, id: u64) -> bool {
        (1..=self.len()).contains(&id)
    }

    /// Turn `id`'s place, when it exists.
    pub fn turn(&self, id: u64) -> Option<&TreeTurn> {
        self.turns.get(usize::try_from(id).ok()?.checked_sub(1)?)
    }

    /// The turn started by the frame that carried `client_id`, if any.
    pub fn by_client_id(&self, client_id: &str) -> Option<u64> {
        self.client_ids.get(client_id).copied()
    }

    /// Adds turn `len() + 1` after `parent`, with the files its message carried, and makes it
    /// the leaf. Returns its id.
    pub fn open(
        &mut self,
        parent: u64,
        client_id: Option<String>,
        attachments: Vec<Attachment>,
    ) -> u64 {
        let id = self.len() + 1;
        if let Some(client_id) = &client_id {
            self.client_ids.insert(client_id.clone(), id);
        }
        if !attachments.is_empty() {
            self.carrying += 1;
        }
        self.turns.push(TreeTurn {
            parent: if parent < id { parent } else { 0 },
            reset: false,
            client_id,
            attachments,
        });
        self.leaf = id;
        id
    }

    /// Marks turn `id` as cutting the path: the model sees nothing before it.
    pub fn reset(&mut self, id: u64) {
        if let Some(turn) = usize::try_from(id)
            .ok()
            .and_then(|id| id.checked_sub(1))
            .and_then(|index| self.turns.get_mut(index))
        {
            turn.reset = true;
        }
    }

    /// Makes `leaf` the leaf (a `branch` event).
    pub fn set_leaf(&mut self, leaf: u64) {
        if self.contains(leaf) {
            self.leaf = leaf;
        }
    }

    /// The leaf a `switch` to turn `id` makes: the most recently started turn among `id` and
    /// its descendants.
    pub fn newest_under(&self, id: u64) -> u64 {
        let mut under: HashSet<u64> = HashSet::from([id]);
        let mut newest = id;
        for child in id + 1..=self.len() {
            if self
                .turn(child)
                .is_some_and(|turn| under.contains(&turn.parent))
            {
                under.insert(child);
                newest = child;
            }
        }
        newest
    }

    /// The files the user messages on the path ending at `leaf` carried (the turns
    /// [`path`](Self::path) gives), oldest first, each once. Without a walk when no turn
    /// carried any.
    pub fn files_to(&self, leaf: u64) -> Vec<Attachment> {
        let mut files: Vec<Attachment> = Vec::new();
        if self.carrying == 0 {
            return files;
        }
        for turn in self.path(leaf).iter().filter_map(|id| self.turn(*id)) {
            for file in &turn.attachments {
                if !files.iter().any(|known| known.id == file.id) {
                    files.push(file.clone());
                }
            }
        }
        files
    }

    /// The turns whose messages the model sees on the path ending at `leaf`, oldest first:
    /// `0` (the seeded history) and each turn from the start, or only from the newest turn on
    /// the path that cut it.
    pub fn path(&self, leaf: u64) -> Vec<u64> {
        let mut path = Vec::new();
        let mut at = leaf;
        while let Some(turn) = self.turn(at) {
            path.push(at);
            if turn.reset {
                path.reverse();
                return path;
            }
            at = turn.parent;
        }
        path.push(0);
        path.reverse();
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 ← 2 ← 3, and 4 beside 2 (an edit of 2), then 5 after 4.
    fn forked() -> TurnTree {
        let mut tree = TurnTree::default();
        tree.open(0, Some("a".into()), Vec::new());
        tree.open(1, None, Vec::new());
        tree.open(2, None, Vec::new());
        tree.open(1, Some("d".into()), Vec::new());
        tree.open(4, None, Vec::new());
        tree
    }

    #[test]
    fn the_files_on_a_path_are_its_turns_files_each_once() {
        let file = |id: &str| Attachment {
            id: id.into(),
            name: format!("{id}.txt"),
            content_type: "text/plain".into(),
            size: 1,
        };
        let mut tree = forked();
        assert!(tree.files_to(5).is_empty());
        // 6 after 3 carries a and b; 7 after 6 carries b again and c; 8 after 5 carries d.
        tree.open(3, None, vec![file("a"), file("b")]);
        tree.open(6, None, vec![file("b"), file("c")]);
        tree.open(5, None, vec![file("d")]);
        let ids = |leaf| -> Vec<String> { tree.files_to(leaf).into_iter().map(|f| f.id).collect() };
        assert_eq!(ids(7), ["a", "b", "c"]);
        assert_eq!(ids(8), ["d"]);
        assert!(ids(3).is_empty());
        // The same from the rows a store keeps.
        let rows = (1..=tree.len())
            .filter_map(|id| Some((id, tree.turn(id)?.clone())))
            .collect();
        let loaded = TurnTree::from_rows(tree.len(), rows, tree.leaf());
        assert_eq!(loaded, tree);
    }

    #[test]
    fn a_path_follows_parents_and_stops_at_a_reset() {
        let mut tree = forked();
        assert_eq!(tree.leaf(), 5);
        assert_eq!(tree.path(5), vec![0, 1, 4, 5]);
        assert_eq!(tree.path(3), vec![0, 1, 2, 3]);
        tree.reset(4);
        assert_eq!(tree.path(5), vec![4, 5]);
        assert_eq!(tree.path(0), vec![0]);
    }

    #[test]
    fn a_switch_goes_to_the_newest_turn_below() {
        let tree = forked();
        assert_eq!(tree.newest_under(2), 3);
        assert_eq!(tree.newest_under(1), 5);
        assert_eq!(tree.newest_under(4), 5);
        assert_eq!(tree.newest_under(3), 3);
    }

    #[test]
    fn rows_rebuild_the_same_tree_and_fill_gaps() {
        let tree = forked();
        let rows = (1..=tree.len())
            .filter(|id| *id != 3)
            .map(|id| (id, tree.turn(id).cloned().unwrap_or_default()))
            .collect();
        let back = TurnTree::from_rows(5, rows, 5);
        assert_eq!(back, tree);
        assert_eq!(back.by_client_id("d"), Some(4));
        assert_eq!(TurnTree::from_rows(2, Vec::new(), 9).leaf(), 2);
    }
}
