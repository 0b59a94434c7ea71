//! Streamed frames across instances (PROTOCOL.md section 5): `message_delta` and
//! `tool_progress` are not events, so the store never holds them, yet every live connection of
//! a conversation must get them, whichever instance it is on.
//!
//! The holder gathers them per session ([`Relay`]), coalescing the pieces of an answer, and
//! hands them to the journal as a [`crate::store::WriteOp::Relay`] before the next event it
//! logs, or when they are [`RELAY_EVERY`] old, or past [`RELAY_BYTES`]. The journal tells the
//! others with the batch (a `Stream` signal, in order before the batch's `Events`), so the
//! frames reach a follower never ahead of the event they follow and never after the next one.
//! A follower that has not caught up with that event yet holds them until it has; one that has
//! already passed the next event drops them (a lost signal, after a resync): a piece must never
//! come after a later event of its turn.
//!
//! Depends on: `common::protocol`, `conversation::session`.

use std::sync::Weak;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::common::protocol::{ServerEnvelope, ServerFrame, TurnId, encode};

use super::{Session, SessionInner, SessionState, WireText};

/// How long streamed frames wait to be coalesced before they go to the other instances.
pub const RELAY_EVERY: Duration = Duration::from_millis(50);

/// Bytes of frames gathered before they go at once.
const RELAY_BYTES: usize = 6_000;

/// The most bytes of frames in one signal: PostgreSQL refuses a `NOTIFY` payload of 8,000
/// bytes or more, and the payload adds its header.
const SIGNAL_BYTES: usize = 7_000;

/// Streamed frames gathered for the other instances, all following event `after`.
#[derive(Debug, Default)]
pub(super) struct Relay {
    after: u64,
    frames: Vec<Relayed>,
    bytes: usize,
    since: Option<Instant>,
    /// On a follower: the answer the holder relayed so far for the turn running there, for
    /// a connection that attaches here mid-answer; cleared when an event closes the turn.
    followed: Option<(TurnId, String)>,
}

impl Relay {
    /// The turn a follower is streaming and the answer relayed so far, if any.
    pub(super) fn followed(&self) -> Option<(TurnId, &String)> {
        self.followed.as_ref().map(|(turn, text)| (*turn, text))
    }

    /// An event a follower absorbed (its wire text): one that closes a turn, or opens the
    /// next, ends the answer followed.
    pub(super) fn absorbed(&mut self, body: &str) {
        const ENDS: [&str; 4] = [
            r#""type":"message""#,
            r#""type":"error""#,
            r#""code":"cancelled""#,
            r#""type":"user_message""#,
        ];
        if self.followed.is_some() && ENDS.iter().any(|end| body.contains(end)) {
            self.followed = None;
        }
    }
}

#[derive(Debug)]
enum Relayed {
    /// Pieces of an answer, joined.
    Delta { turn_id: TurnId, text: String },
    /// Any other streamed frame, as sent.
    Frame(WireText),
}

/// The sessions with frames waiting to go, for the cluster thread to send when they are due.
#[derive(Debug, Default)]
pub struct Relays {
    waiting: Mutex<Vec<Weak<SessionInner>>>,
}

impl Relays {
    /// Sends the frames of every session that has waited [`RELAY_EVERY`]; keeps the others.
    pub fn flush_due(&self) {
        let waiting = std::mem::take(&mut *self.waiting.lock());
        let mut still = Vec::new();
        for weak in waiting {
            let Some(inner) = weak.upgrade() else {
                continue;
            };
            let session = Session { inner };
            let mut state = session.inner.lock();
            match state.relay.since {
                Some(since) if since.elapsed() < RELAY_EVERY => still.push(weak),
                Some(_) => session.flush_relay(&mut state),
                None => {}
            }
        }
        self.waiting.lock().extend(still);
    }

    fn wait(&self, session: Weak<SessionInner>) {
        self.waiting.lock().push(session);
    }
}

impl Session {
    /// Gathers a streamed piece of turn `turn_id`'s answer for the other instances, when there
    /// are any and this one runs the turn.
    pub(super) fn relay_piece(&self, state: &mut SessionState, turn_id: TurnId, piece: &str) {
        if !self.relays_to_others(state) {
            return;
        }
        self.start_relay(state);
        let relay = &mut state.relay;
        relay.bytes += piece.len();
        match relay.frames.last_mut() {
            Some(Relayed::Delta {
                turn_id: last,
                text,
            }) if *last == turn_id => {
                text.push_str(piece);
            }
            _ => relay.frames.push(Relayed::Delta {
                turn_id,
                text: piece.to_owned(),
            }),
        }
        if relay.bytes >= RELAY_BYTES {
            self.flush_relay(state);
        }
    }

    /// Gathers another streamed frame (`tool_progress`) for the other instances.
    pub(super) fn relay_frame(&self, state: &mut SessionState, frame: &WireText) {
        if !self.relays_to_others(state) || frame.len() > SIGNAL_BYTES {
            return;
        }
        self.start_relay(state);
        state.relay.bytes += frame.len();
        state.relay.frames.push(Relayed::Frame(frame.clone()));
        if state.relay.bytes >= RELAY_BYTES {
            self.flush_relay(state);
        }
    }

    fn relays_to_others(&self, state: &SessionState) -> bool {
        state.holder && self.inner.cluster.shared()
    }

    /// Makes the gathered frames follow the newest event, sending those that followed an
    /// earlier one first.
    fn start_relay(&self, state: &mut SessionState) {
        let after = state.log.last_seq();
        if !state.relay.frames.is_empty() && state.relay.after != after {
            self.flush_relay(state);
        }
        if state.relay.frames.is_empty() {
            state.relay.after = after;
            state.relay.since = Some(Instant::now());
            self.inner
                .relays
                .wait(std::sync::Arc::downgrade(&self.inner));
        }
    }

    /// Hands the gathered frames to the journal, in signals small enough for a `NOTIFY`: before
    /// any event logged after them, so they reach the others in their place.
    pub(super) fn flush_relay(&self, state: &mut SessionState) {
        if state.relay.frames.is_empty() {
            return;
        }
        let relay = &mut state.relay;
        let (after, gathered) = (relay.after, std::mem::take(&mut relay.frames));
        (relay.bytes, relay.since) = (0, None);
        let id = Some(&self.inner.id);
        let mut frames: Vec<String> = Vec::new();
        for item in gathered {
            match item {
                Relayed::Frame(text) => frames.push(text.to_string()),
                Relayed::Delta { turn_id, text } => {
                    for part in split_at_chars(&text, SIGNAL_BYTES / 2) {
                        let frame = ServerFrame::MessageDelta {
                            turn_id,
                            text: part.to_owned(),
                            replace: false,
                        };
                        frames.push(encode(&frame, id, None));
                    }
                }
            }
        }
        let mut detail = String::new();
        for frame in frames {
            if !detail.is_empty() && detail.len() + frame.len() + 1 > SIGNAL_BYTES {
                self.inner.persist.relay(after, &detail);
                detail.clear();
            }
            if !detail.is_empty() {
                detail.push('\n');
            }
            detail.push_str(&frame);
        }
        if !detail.is_empty() {
            self.inner.persist.relay(after, &detail);
        }
    }

    /// Streamed frames the holder (another instance) relayed, following its event `after`:
    /// sent to the live subscribers now when this instance has shown exactly that event,
    /// held until it has when it is behind, dropped when it is already past the next one.
    pub fn relayed(&self, after: u64, frames: &str) {
        let mut state = self.inner.lock();
        if state.holder || state.closed || after < state.visible_seq {
            return;
        }
        let texts: Vec<WireText> = frames.split('\n').map(WireText::from).collect();
        for text in &texts {
            if let Ok(envelope) = serde_json::from_str::<ServerEnvelope>(text)
                && let ServerFrame::MessageDelta { turn_id, text, .. } = envelope.frame
            {
                match &mut state.relay.followed {
                    Some((turn, answer)) if *turn == turn_id => answer.push_str(&text),
                    followed => *followed = Some((turn_id, text)),
                }
            }
        }
        if after == state.visible_seq && state.log.last_seq() == after {
            state
                .subscribers
                .retain(|attached| !attached.live || attached.subscriber.deliver(&texts));
        } else {
            state
                .held
                .extend(texts.into_iter().map(|text| (after, text, None)));
        }
    }
}

/// `text` in parts of at most `max` bytes, cut at character boundaries.
fn split_at_chars(text: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (part, tail) = rest.split_at(cut);
        parts.push(part);
        rest = tail;
    }
    parts.push(rest);
    parts
}

#[cfg(test)]
mod tests {
    use super::split_at_chars;

    #[test]
    fn long_pieces_are_cut_at_character_boundaries() {
        let text = "é".repeat(10);
        let parts = split_at_chars(&text, 5);
        assert!(parts.iter().all(|p| p.len() <= 5));
        assert_eq!(parts.concat(), text);
        assert_eq!(split_at_chars("short", 100), ["short"]);
    }
}
