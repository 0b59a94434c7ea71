//! Steering a conversation (PROTOCOL.md section 5, "Branches"): what a client's `message`,
//! `edit`, `regenerate` and `switch` do to the tree of turns, and the one place they start.
//!
//! A `message` follows the leaf, whose path the bot holds already. Every other move changes
//! the path (the leaf never has children, so a sibling's parent is never the leaf), and the
//! bot must then hold the new path's conversation: the session lets go of its lock, waits for
//! the journal to write what is queued, reads the path's messages from the store, and takes the
//! lock again to start the turn, provided the conversation did not move meanwhile (else it
//! tries again). The store is where every branch's messages are, so one read serves a
//! `switch` across the tree as well as an `edit` of the last question.
//!
//! Depends on: `common::error`, `common::protocol`, `conversation::bot`, `conversation::journal`, `conversation::session`, `model`, `store::files`, `store::tree`.

use std::borrow::Cow;
use std::time::Duration;

use crate::common::protocol::{Attachment, ErrorCode, ServerFrame, TurnId};
use crate::conversation::bot::MAX_HISTORY_MESSAGES;
use crate::conversation::journal::leave_lead;
use crate::model::ChatMessage;
use crate::store::{StoredFile, TurnTree};

use super::{Opening, Session, SessionState};

/// What a client asks of a conversation's turns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// A `message`: a new turn after the leaf.
    Message {
        /// The user's text.
        text: String,
        /// The ids of the files it carries.
        attachments: Vec<String>,
        /// The client's name for the frame.
        client_id: Option<String>,
    },
    /// An `edit` of `turn`: a new turn beside it, with `text`.
    Edit {
        /// The turn edited.
        turn: TurnId,
        /// The new text.
        text: String,
        /// The ids of the files it carries.
        attachments: Vec<String>,
        /// The client's name for the frame.
        client_id: Option<String>,
    },
    /// A `regenerate` of `turn`: a new turn beside it, with its text.
    Regenerate {
        /// The turn answered again.
        turn: TurnId,
        /// The client's name for the frame.
        client_id: Option<String>,
    },
    /// A `switch` to the branch through `turn`.
    Switch {
        /// A turn of the branch.
        turn: TurnId,
    },
}

impl Ask {
    /// The client's name for the frame, if it gave one.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Ask::Message { client_id, .. }
            | Ask::Edit { client_id, .. }
            | Ask::Regenerate { client_id, .. } => client_id.as_deref(),
            Ask::Switch { .. } => None,
        }
    }

    /// The ids of the files the ask's frame carries.
    fn file_ids(&self) -> &[String] {
        match self {
            Ask::Message { attachments, .. } | Ask::Edit { attachments, .. } => attachments,
            Ask::Regenerate { .. } | Ask::Switch { .. } => &[],
        }
    }

    /// The turn the ask names, when it names one.
    fn named(&self) -> Option<TurnId> {
        match self {
            Ask::Message { .. } => None,
            Ask::Edit { turn, .. } | Ask::Regenerate { turn, .. } | Ask::Switch { turn } => {
                Some(*turn)
            }
        }
    }
}

/// What came of an [`Ask`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// It was done: a turn started (or was closed at once, past the caps), or the leaf moved.
    Done,
    /// Its `client_id` names turn `0` already: nothing was started.
    Duplicate(TurnId),
}

/// Why an [`Ask`] was refused: the code and words for the client.
pub type Refused = (ErrorCode, Cow<'static, str>);

/// How many times an ask that needs another path's messages tries again when the conversation
/// moved while they were read.
const TRIES: usize = 3;

/// How long an ask waits for the journal before it reads another path's messages.
const PATH_SYNC: Duration = Duration::from_secs(10);

/// Where an ask goes in the tree.
struct Target {
    /// The turn whose path the bot must hold afterwards: the new turn's parent, or a switch's
    /// new leaf.
    path_end: u64,
    /// The turn whose text a `regenerate` repeats.
    text_of: Option<u64>,
}

/// Why an attachment was refused, in words for the client.
const NO_SUCH_FILE: &str = "no file with that id to attach (upload it with POST /api/files)";

/// Another path's messages, read with no lock held, and the conversation as it was then.
struct Fetched {
    path_end: u64,
    /// The newest event then: the messages are still right if nothing was logged since.
    seen: u64,
    history: Vec<ChatMessage>,
    text: Option<String>,
}

impl Session {
    /// The turn the frame named `client_id` started, when this instance knows it.
    pub fn started_by(&self, client_id: &str) -> Option<TurnId> {
        self.inner
            .state
            .lock()
            .tree
            .by_client_id(client_id)
            .map(TurnId)
    }

    /// Does what a client's `message`, `edit`, `regenerate` or `switch` asks (PROTOCOL.md
    /// section 5, "Branches"): a turn in flight is cancelled first (its `status cancelled`
    /// comes first), then the new turn opens (logging `user_message`) and starts on the
    /// server's pool, or, for a `switch`, the leaf moves and a `branch` event is logged. With
    /// several instances, this one takes the conversation's lease first (see `lease.rs`). When
    /// the caps on running turns are reached, the turn is closed at once with `error`
    /// `server_busy`. An ask whose `client_id` an earlier turn has starts nothing.
    ///
    /// # Errors
    ///
    /// `invalid_message` for a turn the conversation does not have; `storage` when the store
    /// cannot be read or written; `server_busy` when the lease could not be had, the session
    /// left memory, or the conversation kept moving.
    pub fn submit(&self, ask: &Ask) -> Result<Submitted, Refused> {
        // A retry that this instance knows already must not take the lease, which would stop
        // the very turn it started.
        if let Some(turn) = ask.client_id().and_then(|id| self.started_by(id)) {
            return Ok(Submitted::Duplicate(turn));
        }
        let attachments = self.attachments(ask.file_ids())?;
        self.lead()
            .map_err(|(code, why)| (code, Cow::Borrowed(why)))?;
        let mut fetched: Option<Fetched> = None;
        for _ in 0..TRIES {
            let (path, seen, target) = {
                let mut state = self.inner.lock();
                if state.closed || !state.holder {
                    return Err((
                        ErrorCode::ServerBusy,
                        "the conversation moved to another server; send it again".into(),
                    ));
                }
                if let Some(turn) = ask.client_id().and_then(|id| state.tree.by_client_id(id)) {
                    return Ok(Submitted::Duplicate(TurnId(turn)));
                }
                let target = target(&state.tree, ask)?;
                self.cancel_locked(&mut state);
                let seen = state.log.last_seq();
                if target.path_end == state.tree.leaf() && target.text_of.is_none() {
                    return Ok(self.steer(&mut state, ask, &target, None, attachments));
                }
                if let Some(got) = fetched.take()
                    && got.seen == seen
                    && got.path_end == target.path_end
                {
                    state.bot.follow(got.history);
                    return Ok(self.steer(&mut state, ask, &target, got.text, attachments));
                }
                (state.tree.path(target.path_end), seen, target)
            };
            fetched = Some(self.fetch(&path, seen, &target)?);
        }
        Err((
            ErrorCode::ServerBusy,
            "the conversation kept changing; send it again".into(),
        ))
    }

    /// The files `ids` as the conversation's owner has them, in order, each once: refused with
    /// `invalid_message` when one is unknown or someone else's.
    fn attachments(&self, ids: &[String]) -> Result<Vec<Attachment>, Refused> {
        let mut unique: Vec<String> = Vec::with_capacity(ids.len());
        for id in ids {
            if !unique.contains(id) {
                unique.push(id.clone());
            }
        }
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let Some(files) = self.files() else {
            return Err((ErrorCode::InvalidMessage, Cow::Borrowed(NO_SUCH_FILE)));
        };
        let found = files
            .store()
            .files(self.inner.owner.as_str(), &unique)
            .map_err(|e| {
                log::warn!("session {}: cannot read files: {e}", self.inner.id.short());
                (
                    ErrorCode::Storage,
                    Cow::Borrowed("the server cannot read its store right now; try again later"),
                )
            })?;
        if found.len() != unique.len() {
            return Err((ErrorCode::InvalidMessage, Cow::Borrowed(NO_SUCH_FILE)));
        }
        // The conversation uses them from now on: deleting it deletes those only it used.
        if let Err(e) = files.store().use_files(&self.inner.id, &unique) {
            log::warn!(
                "session {}: cannot record its files: {e}",
                self.inner.id.short()
            );
            return Err((
                ErrorCode::Storage,
                Cow::Borrowed("the server cannot write to its store right now; try again later"),
            ));
        }
        Ok(found.iter().map(StoredFile::attachment).collect())
    }

    /// Reads the messages of the path `path` (and a `regenerate`'s text) from the store, once
    /// the journal has written everything queued.
    fn fetch(&self, path: &[u64], seen: u64, target: &Target) -> Result<Fetched, Refused> {
        const UNREADABLE: &str = "the server cannot read this conversation's store right now; \
                                  try again later";
        if !self.inner.persist.sync(PATH_SYNC) {
            return Err((ErrorCode::Storage, UNREADABLE.into()));
        }
        let store = &self.inner.store;
        let id = &self.inner.id;
        let failed = |e: crate::common::error::Error| {
            log::warn!("session {}: cannot read a branch: {e}", id.short());
            (ErrorCode::Storage, Cow::Borrowed(UNREADABLE))
        };
        let history = store
            .path_messages(id, path, MAX_HISTORY_MESSAGES)
            .map_err(failed)?;
        let text = match target.text_of {
            Some(turn) => match store.turn_text(id, turn).map_err(failed)? {
                Some(text) => Some(text),
                None => {
                    log::warn!("session {}: turn {turn} has no stored text", id.short());
                    return Err((ErrorCode::Storage, UNREADABLE.into()));
                }
            },
            None => None,
        };
        Ok(Fetched {
            path_end: target.path_end,
            seen,
            history,
            text,
        })
    }

    /// Does `ask` once the bot holds the path to `target.path_end`: opens its turn, or moves
    /// the leaf. `text` is a `regenerate`'s; `attachments` the files of the ask's frame (a
    /// `regenerate` carries its turn's again).
    fn steer(
        &self,
        state: &mut SessionState,
        ask: &Ask,
        target: &Target,
        text: Option<String>,
        attachments: Vec<Attachment>,
    ) -> Submitted {
        let opening = match ask {
            Ask::Switch { .. } => {
                state.tree.set_leaf(target.path_end);
                let leaf = TurnId(state.tree.leaf());
                self.push_event(state, ServerFrame::Branch { leaf });
                return Submitted::Done;
            }
            Ask::Message {
                text, client_id, ..
            } => Opening {
                text: text.clone(),
                attachments,
                parent: target.path_end,
                client_id: client_id.clone(),
                edit_of: None,
                regenerate_of: None,
            },
            Ask::Edit {
                turn,
                text,
                client_id,
                ..
            } => Opening {
                text: text.clone(),
                attachments,
                parent: target.path_end,
                client_id: client_id.clone(),
                edit_of: Some(*turn),
                regenerate_of: None,
            },
            Ask::Regenerate { turn, client_id } => Opening {
                text: text.unwrap_or_default(),
                attachments: state
                    .tree
                    .turn(turn.0)
                    .map(|t| t.attachments.clone())
                    .unwrap_or_default(),
                parent: target.path_end,
                client_id: client_id.clone(),
                edit_of: None,
                regenerate_of: Some(*turn),
            },
        };
        if let Some(start) = self.open_turn(state, opening) {
            if !self.inner.send_before_written && start.turn.answers_at_once() {
                // Its thread commits the `user_message` with its answer, in one group, a
                // moment from now; this thread does not commit it on its own first.
                leave_lead();
            }
            self.inner.turns.start(start);
        }
        Submitted::Done
    }
}

/// Where `ask` goes in `tree`.
fn target(tree: &TurnTree, ask: &Ask) -> Result<Target, Refused> {
    if let Some(turn) = ask.named()
        && !tree.contains(turn.0)
    {
        return Err((
            ErrorCode::InvalidMessage,
            format!("this conversation has no turn {turn}").into(),
        ));
    }
    let parent = |turn: TurnId| tree.turn(turn.0).map_or(0, |t| t.parent);
    Ok(match ask {
        Ask::Message { .. } => Target {
            path_end: tree.leaf(),
            text_of: None,
        },
        Ask::Edit { turn, .. } => Target {
            path_end: parent(*turn),
            text_of: None,
        },
        Ask::Regenerate { turn, .. } => Target {
            path_end: parent(*turn),
            text_of: Some(turn.0),
        },
        Ask::Switch { turn } => Target {
            path_end: tree.newest_under(turn.0),
            text_of: None,
        },
    })
}
