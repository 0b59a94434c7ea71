//! How the MCP servers' `instructions` join every system prompt: each distinct text once, under
//! the names of every server that gave it (one server reached over two transports gives the
//! same text twice), in server-name order, and at most [`MAX_INSTRUCTIONS_BYTES`] in all. Past
//! that the text is cut, and a note at its end says what was left out. A server whose config
//! entry says `"instructions": false` gives none (the supervisor leaves them out).
//!
//! Depends on: nothing.

/// The most the MCP servers' instructions add to every system prompt, in bytes, the note about
/// a cut included. Every turn pays for them, with every model.
pub const MAX_INSTRUCTIONS_BYTES: usize = 2048;

/// Room kept for the note that says what was cut.
const NOTE_BYTES: usize = 320;

/// A text cut shorter than this is left out whole: its head alone would not help the model.
const MIN_KEPT_BYTES: usize = 160;

/// Between two servers' parts.
const SEPARATOR: &str = "\n\n";

/// The servers' instructions as the system prompt carries them, and what was cut.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Combined {
    /// The text for the system prompt; empty when no server gave any.
    pub(super) text: String,
    /// The servers whose instructions were cut, in part or whole; empty when all fit.
    pub(super) cut: Vec<String>,
}

/// Combines `given` (each server's name and instructions, in server-name order): identical
/// texts once, empty ones left out, the whole at most [`MAX_INSTRUCTIONS_BYTES`].
pub(super) fn combine<'a>(given: impl IntoIterator<Item = (&'a str, &'a str)>) -> Combined {
    // Each distinct text with the servers that gave it, in the order first seen.
    let mut groups: Vec<(Vec<&str>, &str)> = Vec::new();
    for (name, text) in given {
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(_, seen)| *seen == text) {
            Some((names, _)) => names.push(name),
            None => groups.push((vec![name], text)),
        }
    }
    let parts: Vec<(String, &str, &[&str])> = groups
        .iter()
        .map(|(names, text)| (heading(names), *text, names.as_slice()))
        .collect();
    let whole: usize = parts
        .iter()
        .map(|(heading, text, _)| heading.len() + text.len())
        .sum::<usize>()
        + SEPARATOR.len() * parts.len().saturating_sub(1);
    if whole <= MAX_INSTRUCTIONS_BYTES {
        let text = parts
            .iter()
            .map(|(heading, text, _)| format!("{heading}{text}"))
            .collect::<Vec<_>>()
            .join(SEPARATOR);
        return Combined {
            text,
            cut: Vec::new(),
        };
    }

    // Too long: whole parts while they fit, the head of the first that does not (unless too
    // little of it would be left), and a note naming what was left out.
    let budget = MAX_INSTRUCTIONS_BYTES - NOTE_BYTES - SEPARATOR.len();
    let mut text = String::new();
    let mut cut: Vec<String> = Vec::new();
    for (heading, body, names) in &parts {
        let separator = if text.is_empty() { "" } else { SEPARATOR };
        let room = budget.saturating_sub(text.len() + separator.len());
        if cut.is_empty() && heading.len() + body.len() <= room {
            text.push_str(separator);
            text.push_str(heading);
            text.push_str(body);
            continue;
        }
        let kept_room = room.saturating_sub(heading.len() + '…'.len_utf8());
        if cut.is_empty() && kept_room >= MIN_KEPT_BYTES {
            text.push_str(separator);
            text.push_str(heading);
            text.push_str(head(body, kept_room));
            text.push('…');
        }
        cut.extend(names.iter().map(|name| (*name).to_owned()));
    }
    let note = note(&cut);
    if !text.is_empty() {
        text.push_str(SEPARATOR);
    }
    text.push_str(&note);
    Combined { text, cut }
}

/// "Instructions from the MCP server a:", or "… servers a, b and c:", and a line break.
fn heading(names: &[&str]) -> String {
    match names {
        [one] => format!("Instructions from the MCP server {one}:\n"),
        _ => format!("Instructions from the MCP servers {}:\n", and_list(names)),
    }
}

/// "a", "a and b", "a, b and c".
fn and_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The note that ends a cut text, at most [`NOTE_BYTES`] long.
fn note(cut: &[String]) -> String {
    let names: Vec<&str> = cut.iter().map(String::as_str).collect();
    let opening = format!(
        "[The MCP servers' instructions were cut to {MAX_INSTRUCTIONS_BYTES} bytes; left out, \
         in part or whole: "
    );
    let room = NOTE_BYTES - opening.len() - "…].".len();
    let listed = and_list(&names);
    let listed = if listed.len() > room {
        format!("{}…", head(&listed, room))
    } else {
        listed
    };
    format!("{opening}{listed}.]")
}

/// The longest start of `text` of at most `max` bytes that ends at a character boundary,
/// shortened to the last line break or space when one is in its second half.
fn head(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let kept = &text[..end];
    match kept.rfind(['\n', ' ']) {
        Some(at) if at >= end / 2 => kept[..at].trim_end(),
        _ => kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_texts_come_once_under_every_name_that_gave_them() {
        let combined = combine([
            ("a", "Use echo."),
            ("b", "  Use echo.\n"),
            ("c", "Be kind."),
            ("d", "   "),
            ("e", "Use echo."),
        ]);
        assert_eq!(
            combined.text,
            "Instructions from the MCP servers a, b and e:\nUse echo.\n\n\
             Instructions from the MCP server c:\nBe kind."
        );
        assert!(combined.cut.is_empty());
        assert_eq!(combine([("a", "")]), Combined::default());
        assert_eq!(combine([]), Combined::default());
    }

    #[test]
    fn too_much_is_cut_with_a_note_and_the_whole_stays_under_the_cap() {
        let long = "word ".repeat(500); // 2,500 bytes
        let combined = combine([("a", "Short."), ("b", long.as_str()), ("c", "Also short.")]);
        assert!(
            combined.text.len() <= MAX_INSTRUCTIONS_BYTES,
            "{}",
            combined.text.len()
        );
        assert!(
            combined
                .text
                .starts_with("Instructions from the MCP server a:\nShort.\n\n")
        );
        // b's head is kept, cut at a space and marked; c would not fit after it.
        assert!(
            combined
                .text
                .contains("Instructions from the MCP server b:\nword word")
        );
        assert!(combined.text.contains("word…\n\n"), "{}", combined.text);
        assert!(!combined.text.contains("Also short."));
        assert_eq!(combined.cut, ["b", "c"]);
        assert!(combined.text.ends_with(
            "[The MCP servers' instructions were cut to 2048 bytes; left out, in part or \
             whole: b and c.]"
        ));
    }

    #[test]
    fn a_part_that_would_keep_too_little_is_left_out_whole() {
        let first = "x".repeat(MAX_INSTRUCTIONS_BYTES - NOTE_BYTES - 150);
        let second = "y".repeat(500);
        let combined = combine([("a", first.as_str()), ("b", second.as_str())]);
        assert!(combined.text.contains(&first));
        assert!(!combined.text.contains("yyy"), "{}", combined.text);
        assert_eq!(combined.cut, ["b"]);
        assert!(combined.text.len() <= MAX_INSTRUCTIONS_BYTES);
    }

    #[test]
    fn cuts_fall_on_character_boundaries_and_long_notes_are_shortened() {
        let wide = "é".repeat(2000);
        let combined = combine([("a", wide.as_str())]);
        assert!(combined.text.len() <= MAX_INSTRUCTIONS_BYTES);
        assert!(combined.text.contains("éé…"));
        let names: Vec<String> = (0..100).map(|i| format!("server-{i:03}")).collect();
        let given: Vec<(&str, String)> = names
            .iter()
            .map(|name| (name.as_str(), format!("{name} {}", "z".repeat(60))))
            .collect();
        let combined = combine(given.iter().map(|(name, text)| (*name, text.as_str())));
        assert!(combined.text.len() <= MAX_INSTRUCTIONS_BYTES);
        assert!(combined.text.ends_with("….]"), "{}", combined.text);
    }
}
