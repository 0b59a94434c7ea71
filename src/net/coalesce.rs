//! Coalescing `message_delta` frames that wait for a slow socket: an encoded delta read back
//! into its parts (`Delta`), and whether a later one may be appended to an earlier one
//! (`joins`). PROTOCOL.md section 5: a `message_delta` is not an event (no `seq`), a client
//! appends its `text` to the turn's answer, and pieces may be sent several as one, never
//! reordered. So two deltas of one turn that wait next to each other can become one frame
//! with their texts concatenated; a delta with `replace` starts a new frame, since it throws
//! away what came before it, and nothing is ever merged across another frame.
//!
//! The frames are read as `common::protocol::encode` writes them (the golden tests of
//! `server.rs` pin that form): `{"type":"message_delta","data":{"turn_id":N,"text":"…"` then
//! `,"replace":true` or nothing, `}`, and the envelope's `,"session_id":"…"}`. A frame of any
//! other form is simply not merged. Two JSON string bodies placed end to end are the body of
//! the two strings concatenated, since every escape stands on its own.
//!
//! Depends on: nothing.

/// Where every encoded `message_delta` starts, up to its turn id.
const PREFIX: &[u8] = br#"{"type":"message_delta","data":{"turn_id":"#;

/// What follows the turn id, up to the text's first byte.
const TEXT_KEY: &[u8] = br#","text":""#;

/// What follows the text of a delta that replaces the answer so far.
const REPLACE: &[u8] = br#","replace":true"#;

/// An encoded `message_delta`, read back into its parts (slices of the frame).
#[derive(Debug, PartialEq, Eq)]
pub struct Delta<'a> {
    /// The turn id's digits.
    pub turn: &'a [u8],
    /// The text as it stands in the JSON string, escapes and all.
    pub text: &'a [u8],
    /// Where the text's closing quote stands in the frame: a later text goes in there.
    pub text_end: usize,
    /// True when the text replaces the answer so far.
    pub replace: bool,
    /// The rest of the envelope after the `data` object (the session id).
    pub envelope: &'a [u8],
}

/// Reads `frame` (a text frame's payload) as a `message_delta`; `None` for any other frame.
pub fn parse(frame: &[u8]) -> Option<Delta<'_>> {
    let rest = frame.strip_prefix(PREFIX)?;
    let digits = rest.iter().take_while(|byte| byte.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let turn = &rest[..digits];
    let body = rest[digits..].strip_prefix(TEXT_KEY)?;
    let body_start = frame.len() - body.len();
    let mut at = 0;
    let length = loop {
        match body.get(at)? {
            b'\\' => at += 2,
            b'"' => break at,
            _ => at += 1,
        }
    };
    let text = &body[..length];
    let after = &body[length + 1..];
    let (replace, after) = match after.strip_prefix(REPLACE) {
        Some(after) => (true, after),
        None => (false, after),
    };
    let envelope = after.strip_prefix(b"}")?;
    if envelope.last() != Some(&b'}') {
        return None;
    }
    Some(Delta {
        turn,
        text,
        text_end: body_start + length,
        replace,
        envelope,
    })
}

/// True when `next` may be appended to `last` as one frame: the same turn of the same
/// session, and `next` does not replace the answer (then `last`'s own `replace` still holds
/// for the joined text).
pub fn joins(last: &Delta<'_>, next: &Delta<'_>) -> bool {
    last.turn == next.turn && last.envelope == next.envelope && !next.replace
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(turn: u64, text: &str, replace: bool, session: &str) -> String {
        let text = serde_json::to_string(text).unwrap();
        let replace = if replace { r#","replace":true"# } else { "" };
        format!(
            r#"{{"type":"message_delta","data":{{"turn_id":{turn},"text":{text}{replace}}},"session_id":"{session}"}}"#
        )
    }

    #[test]
    fn reads_a_delta_with_escapes() {
        let frame = delta(12, "a \"quoted\" \\ line\nnext é", false, "s1");
        let parsed = parse(frame.as_bytes()).unwrap();
        assert_eq!(parsed.turn, b"12");
        assert_eq!(
            std::str::from_utf8(parsed.text).unwrap(),
            r#"a \"quoted\" \\ line\nnext é"#
        );
        assert_eq!(frame.as_bytes()[parsed.text_end], b'"');
        assert!(!parsed.replace);
        assert_eq!(parsed.envelope, br#","session_id":"s1"}"#);
    }

    #[test]
    fn reads_replace_and_refuses_other_frames() {
        let frame = delta(3, "whole", true, "s1");
        assert!(parse(frame.as_bytes()).unwrap().replace);
        for other in [
            r#"{"type":"message","data":{"turn_id":3,"text":"x"},"seq":4,"session_id":"s"}"#,
            r#"{"type":"message_delta","data":{"turn_id":,"text":"x"},"session_id":"s"}"#,
            r#"{"type":"message_delta","data":{"turn_id":3,"text":"x"#,
            r#"{"type":"message_delta","data":{"turn_id":3,"text":"x\"#,
            r#"{"type":"message_delta","data":{"turn_id":3,"text":"x","other":1},"session_id":"s"}"#,
        ] {
            assert_eq!(parse(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn joins_pieces_of_one_turn_only() {
        let first = delta(3, "a", false, "s1");
        let first = parse(first.as_bytes()).unwrap();
        let replaced = delta(3, "ab", true, "s1");
        let replaced = parse(replaced.as_bytes()).unwrap();
        let next = delta(3, "b", false, "s1");
        let next = parse(next.as_bytes()).unwrap();
        let other_turn = delta(4, "b", false, "s1");
        let other_session = delta(3, "b", false, "s2");
        assert!(joins(&first, &next));
        assert!(joins(&replaced, &next));
        assert!(!joins(&first, &replaced));
        assert!(!joins(&first, &parse(other_turn.as_bytes()).unwrap()));
        assert!(!joins(&first, &parse(other_session.as_bytes()).unwrap()));
    }

    /// The form read here is the one the protocol's encoder writes.
    #[test]
    fn reads_what_the_encoder_writes() {
        use crate::common::protocol::{ServerFrame, SessionId, TurnId, encode};
        let id = SessionId::from_random_bytes([7; 16]);
        for replace in [false, true] {
            let frame = ServerFrame::MessageDelta {
                turn_id: TurnId(9),
                text: "tab\t\"q\" ☃".into(),
                replace,
            };
            let text = encode(&frame, Some(&id), None);
            let parsed = parse(text.as_bytes()).expect("the encoder's delta");
            assert_eq!(parsed.turn, b"9");
            assert_eq!(parsed.replace, replace);
        }
    }
}
