//! A document's text split into chunks of about [`CHUNK_CHARS`] characters, on paragraph
//! boundaries where it can and on line boundaries otherwise, each labelled for a citation:
//! `page N` for a page of a PDF, `lines A-B` (or `line A`) for a text. What a file may keep in
//! all is capped ([`MAX_TEXT_BYTES`]); past it the rest is left out, and a last chunk labelled
//! `note` says so.
//!
//! Depends on: `store::files`.

use crate::store::NewChunk;

/// About how many characters a chunk holds: a few paragraphs, small enough that several of
/// them fit in a prompt beside the conversation.
pub const CHUNK_CHARS: usize = 1_500;

/// The most text one file keeps, in bytes of UTF-8 (2 MB: a thousand pages of prose).
pub const MAX_TEXT_BYTES: usize = 2_000_000;

/// The label of the chunk that says the text was cut.
pub const NOTE_LABEL: &str = "note";

/// A part of a document's text as it was read: one page of a PDF, or the whole of a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The page it is, from 1, for a paged document; `None` for a text, whose chunks are
    /// labelled by their lines.
    pub page: Option<u32>,
    /// Its text.
    pub text: String,
}

/// The chunks of `sections`, in order, keeping at most `max_bytes` of text; `cut`: the reader
/// already left some text out. When text was left out, the last chunk is a note that says so.
pub fn chunk(sections: &[Section], max_bytes: usize, cut: bool) -> Vec<NewChunk> {
    let mut out = Chunks {
        chunks: Vec::new(),
        kept: 0,
        max_bytes,
        full: false,
    };
    for section in sections {
        if out.full {
            break;
        }
        split_section(section, &mut out);
    }
    if out.full || cut {
        out.chunks.push(NewChunk {
            label: NOTE_LABEL.to_owned(),
            text: format!(
                "The text past the first {} of this file was left out.",
                describe_bytes(out.kept.max(1))
            ),
        });
    }
    out.chunks
}

/// The chunks made so far and what they hold.
struct Chunks {
    chunks: Vec<NewChunk>,
    /// Bytes of text kept.
    kept: usize,
    max_bytes: usize,
    /// True once a chunk did not fit: nothing more is kept.
    full: bool,
}

impl Chunks {
    /// Adds a chunk of `lines` (numbered from 1), labelled by `page` or by its lines; blank
    /// lines at its ends are dropped and runs of them kept as one.
    fn push(&mut self, page: Option<u32>, lines: &[(usize, String)]) {
        let Some(first) = lines.iter().position(|(_, l)| !l.trim().is_empty()) else {
            return;
        };
        let last = lines
            .iter()
            .rposition(|(_, l)| !l.trim().is_empty())
            .unwrap_or(first);
        let mut text = String::new();
        let mut blank = false;
        for (_, line) in &lines[first..=last] {
            if line.trim().is_empty() {
                blank = true;
                continue;
            }
            if !text.is_empty() {
                text.push_str(if blank { "\n\n" } else { "\n" });
            }
            blank = false;
            text.push_str(line);
        }
        if self.full {
            return;
        }
        if self.kept + text.len() > self.max_bytes {
            self.full = true;
            return;
        }
        self.kept += text.len();
        let (a, b) = (lines[first].0, lines[last].0);
        let label = match page {
            Some(page) => format!("page {page}"),
            None if a == b => format!("line {a}"),
            None => format!("lines {a}-{b}"),
        };
        self.chunks.push(NewChunk { label, text });
    }
}

/// Splits one section into chunks.
fn split_section(section: &Section, out: &mut Chunks) {
    // The chunk being gathered: its lines, numbered, and their characters.
    let mut current: Vec<(usize, String)> = Vec::new();
    let mut chars = 0;
    for (i, raw) in section.text.split('\n').enumerate() {
        if out.full {
            return;
        }
        let number = i + 1;
        let line = clean_line(raw);
        let length = line.chars().count();
        if length > CHUNK_CHARS {
            // A line longer than a chunk (minified JSON, a PDF page without line breaks):
            // what came before, then the line in pieces, each cut at a space where it can be.
            out.push(section.page, &current);
            current.clear();
            chars = 0;
            for piece in pieces(&line) {
                out.push(section.page, &[(number, piece)]);
            }
            continue;
        }
        while chars + length + 1 > CHUNK_CHARS && !current.is_empty() {
            // Full: cut at the last blank line in the second half of the chunk, if there is
            // one, so that a paragraph is kept whole; else before this line. What is left
            // after a cut may still be too long for this line: then again.
            let mut seen = 0;
            let mut cut = None;
            for (at, (_, l)) in current.iter().enumerate() {
                if l.trim().is_empty() && seen >= CHUNK_CHARS / 2 {
                    cut = Some(at);
                }
                seen += l.chars().count() + 1;
            }
            match cut {
                Some(at) => {
                    let rest = current.split_off(at);
                    out.push(section.page, &current);
                    current = rest;
                    chars = current.iter().map(|(_, l)| l.chars().count() + 1).sum();
                }
                None => {
                    out.push(section.page, &current);
                    current.clear();
                    chars = 0;
                }
            }
        }
        chars += length + 1;
        current.push((number, line));
    }
    out.push(section.page, &current);
}

/// A line without its carriage return, its trailing white space and control characters (a
/// tab is kept).
fn clean_line(raw: &str) -> String {
    raw.trim_end()
        .chars()
        .filter(|c| *c == '\t' || !c.is_control())
        .collect()
}

/// A long line in pieces of at most [`CHUNK_CHARS`] characters, each cut after the last space
/// in its second half when there is one.
fn pieces(line: &str) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let mut end = (start + CHUNK_CHARS).min(chars.len());
        if end < chars.len()
            && let Some(space) = chars[start + CHUNK_CHARS / 2..end]
                .iter()
                .rposition(|c| c.is_whitespace())
        {
            end = start + CHUNK_CHARS / 2 + space + 1;
        }
        out.push(
            chars[start..end]
                .iter()
                .collect::<String>()
                .trim()
                .to_owned(),
        );
        start = end;
    }
    out
}

/// A size in bytes as a person reads it: `2 MB`, `512 KB`, `300 bytes`.
fn describe_bytes(bytes: usize) -> String {
    if bytes >= 1_000_000 {
        format!("{} MB", bytes.div_ceil(1_000_000))
    } else if bytes >= 1_000 {
        format!("{} KB", bytes.div_ceil(1_000))
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str) -> Vec<Section> {
        vec![Section {
            page: None,
            text: text.to_owned(),
        }]
    }

    fn labels(chunks: &[NewChunk]) -> Vec<&str> {
        chunks.iter().map(|c| c.label.as_str()).collect()
    }

    #[test]
    fn a_short_text_is_one_chunk_labelled_by_its_lines() {
        let chunks = chunk(
            &text("\nfirst line\r\nsecond line\n\n"),
            MAX_TEXT_BYTES,
            false,
        );
        assert_eq!(labels(&chunks), ["lines 2-3"]);
        assert_eq!(chunks[0].text, "first line\nsecond line");
        let one = chunk(&text("only"), MAX_TEXT_BYTES, false);
        assert_eq!(labels(&one), ["line 1"]);
    }

    #[test]
    fn an_empty_text_has_no_chunks() {
        assert!(chunk(&text(""), MAX_TEXT_BYTES, false).is_empty());
        assert!(chunk(&text("\n \n\t\n"), MAX_TEXT_BYTES, false).is_empty());
    }

    #[test]
    fn pages_are_labelled_by_their_page() {
        let sections = vec![
            Section {
                page: Some(1),
                text: "The first page.".into(),
            },
            Section {
                page: Some(2),
                text: String::new(),
            },
            Section {
                page: Some(3),
                text: "The third page.".into(),
            },
        ];
        let chunks = chunk(&sections, MAX_TEXT_BYTES, false);
        assert_eq!(labels(&chunks), ["page 1", "page 3"]);
        assert_eq!(chunks[1].text, "The third page.");
    }

    #[test]
    fn long_texts_split_at_paragraphs_and_lines_with_their_line_numbers() {
        // 40 paragraphs of three lines of 50 characters, a blank line between them.
        let mut lines = Vec::new();
        for p in 0..40 {
            for l in 0..3 {
                lines.push(format!("{p:02}.{l} {}", "x".repeat(45)));
            }
            lines.push(String::new());
        }
        let chunks = chunk(&text(&lines.join("\n")), MAX_TEXT_BYTES, false);
        assert!(chunks.len() > 3, "{}", chunks.len());
        let mut next_line = 1;
        for chunk in &chunks {
            assert!(
                chunk.text.chars().count() <= CHUNK_CHARS,
                "{}",
                chunk.text.len()
            );
            // Each chunk starts a paragraph and ends one: no paragraph is cut.
            assert!(chunk.text.starts_with(|c: char| c.is_ascii_digit()));
            assert!(chunk.text.lines().next().unwrap()[2..].starts_with(".0"));
            assert!(chunk.text.lines().last().unwrap()[2..].starts_with(".2"));
            let (a, b) = chunk.label["lines ".len()..].split_once('-').unwrap();
            let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
            assert!(a >= next_line);
            assert_eq!(lines[a - 1], chunk.text.lines().next().unwrap());
            assert_eq!(lines[b - 1], chunk.text.lines().last().unwrap());
            next_line = b + 1;
        }
        assert_eq!(next_line, 160);
    }

    #[test]
    fn a_line_longer_than_a_chunk_is_cut_at_spaces() {
        let long = "word ".repeat(1_000);
        let chunks = chunk(&text(&format!("head\n{long}\ntail")), MAX_TEXT_BYTES, false);
        assert_eq!(labels(&chunks)[0], "line 1");
        assert!(chunks.len() >= 5);
        for chunk in &chunks[1..chunks.len() - 1] {
            assert_eq!(chunk.label, "line 2");
            assert!(chunk.text.chars().count() <= CHUNK_CHARS);
            assert!(chunk.text.ends_with("word"), "{:?}", &chunk.text);
        }
        assert_eq!(chunks.last().unwrap().label, "line 3");
        let unbroken = "é".repeat(4_000);
        let chunks = chunk(&text(&unbroken), MAX_TEXT_BYTES, false);
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            chunks.iter().map(|c| c.text.chars().count()).sum::<usize>(),
            4_000
        );
    }

    #[test]
    fn text_past_the_cap_is_left_out_with_a_note() {
        let lines: Vec<String> = (0..1_000)
            .map(|i| format!("line {i} {}", "y".repeat(90)))
            .collect();
        let chunks = chunk(&text(&lines.join("\n")), 10_000, false);
        let note = chunks.last().unwrap();
        assert_eq!(note.label, NOTE_LABEL);
        assert!(note.text.contains("left out"), "{}", note.text);
        let kept: usize = chunks[..chunks.len() - 1]
            .iter()
            .map(|c| c.text.len())
            .sum();
        assert!(kept <= 10_000 && kept > 8_000, "{kept}");
        // A reader that cut the text says so too.
        let cut = chunk(&text("short"), MAX_TEXT_BYTES, true);
        assert_eq!(labels(&cut), ["line 1", NOTE_LABEL]);
    }

    #[test]
    fn control_characters_are_dropped() {
        let chunks = chunk(&text("a\u{7}b\tc\u{0}"), MAX_TEXT_BYTES, false);
        assert_eq!(chunks[0].text, "ab\tc");
    }
}
