//! `Screen`: what the terminal client writes, a line at a time, with a streamed answer kept on
//! one line and the `you>` prompt taken off its line before anything else is shown; and how a
//! frame's parts read on it (`describe_turn`, `describe_status`, `without_data_urls`,
//! `describe_attachment`).
//!
//! Depends on: `common::protocol`.

use std::io::Write;

use crate::common::protocol::{Attachment, StatusData, TurnId};

/// The prompt. A message typed at it is not printed again when the server echoes it (it stands
/// after the prompt already): only its turn number is.
pub const PROMPT: &str = "you> ";

/// A style for [`Screen::say`]: none.
pub const PLAIN: &str = "";
/// A style for [`Screen::say`]: thoughts, progress, what is off the current path.
pub const DIM: &str = "\x1b[2m";
/// A style for [`Screen::say`]: failures.
pub const RED: &str = "\x1b[31m";
/// A style for [`Screen::say`]: the client's own notices, questions for the user.
pub const YELLOW: &str = "\x1b[33m";

/// Writes to the terminal (or whatever output it is given), keeping a streamed answer on one
/// line.
pub struct Screen {
    out: Box<dyn Write + Send>,
    /// Whether to use ANSI colours: only when the output is a terminal.
    color: bool,
    /// Whether to show a prompt: input and output are terminals.
    pub interactive: bool,
    /// True while the prompt stands at the start of the last line, nothing typed after it.
    pub prompt_shown: bool,
    /// The turn whose answer is streaming, and the text of it printed so far.
    pub stream: Option<(TurnId, String)>,
    /// True while the cursor stands after streamed text rather than at the start of a line.
    mid_line: bool,
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Screen")
            .field("color", &self.color)
            .field("interactive", &self.interactive)
            .field("prompt_shown", &self.prompt_shown)
            .field("stream", &self.stream)
            .field("mid_line", &self.mid_line)
            .finish_non_exhaustive()
    }
}

impl Screen {
    /// A screen writing to `out`, in colour when `color`, with a prompt when `interactive`.
    pub fn new(out: Box<dyn Write + Send>, color: bool, interactive: bool) -> Self {
        Screen {
            out,
            color,
            interactive,
            prompt_shown: false,
            stream: None,
            mid_line: false,
        }
    }

    /// Prints a whole line in `style`, first ending a streamed answer that is still open.
    pub fn say(&mut self, style: &str, text: &str) {
        self.clear_prompt();
        self.end_stream_line();
        if self.color && !style.is_empty() {
            self.write(&format!("{style}{text}\x1b[0m\n"));
        } else {
            self.write(&format!("{text}\n"));
        }
    }

    /// Prints a line of the client's own, set apart from the server's frames.
    pub fn notice(&mut self, text: &str) {
        self.say(YELLOW, &format!("-- {text}"));
    }

    /// Prints a piece of a streamed answer inline.
    pub fn delta(&mut self, turn_id: TurnId, text: &str) {
        if self
            .stream
            .as_ref()
            .is_none_or(|(turn, _)| *turn != turn_id)
        {
            self.end_stream_line();
            self.stream = Some((turn_id, String::new()));
        }
        if !self.mid_line {
            self.clear_prompt();
            self.write("bot> ");
            self.mid_line = true;
        }
        self.write(text);
        if let Some((_, streamed)) = &mut self.stream {
            streamed.push_str(text);
        }
    }

    /// Prints the final answer, or only ends the line when its deltas already showed all of it.
    /// (After a client restart, replay may hold only the tail of the deltas: then the whole
    /// answer is printed again.)
    pub fn answer(&mut self, turn_id: TurnId, text: &str) {
        let stream = self.stream.take();
        if stream.is_some_and(|(turn, streamed)| turn == turn_id && streamed == text) {
            self.end_stream_line();
        } else {
            self.say(PLAIN, &format!("bot> {text}"));
        }
    }

    /// Shows the prompt, unless it is up already or an answer is streaming.
    pub fn prompt(&mut self) {
        if self.interactive && !self.prompt_shown && !self.mid_line {
            self.write(PROMPT);
            self.prompt_shown = true;
        }
    }

    /// Takes the prompt off its line, so that output does not follow it.
    fn clear_prompt(&mut self) {
        if self.prompt_shown {
            self.write("\r\x1b[K");
            self.prompt_shown = false;
        }
    }

    /// Ends the prompt's line before the client quits.
    pub fn end_prompt_line(&mut self) {
        if self.prompt_shown {
            self.write("\n");
            self.prompt_shown = false;
        }
    }

    fn end_stream_line(&mut self) {
        if self.mid_line {
            self.mid_line = false;
            self.write("\n");
        }
    }

    fn write(&mut self, text: &str) {
        // A closed output is no reason to panic or to drop the session, so errors are ignored.
        let _ = self
            .out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush());
    }
}

/// A tool result as the terminal shows it: image lines (`[image: …] data:…`) keep their note
/// and lose their `data:` URL, which only a browser can show.
pub fn without_data_urls(result: &str) -> String {
    result
        .lines()
        .map(|line| match line.split_once("] data:") {
            Some((note, _)) if line.starts_with("[image: ") => format!("{note}]"),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A file as the terminal shows it: `📎 name (size) /api/files/id`, the path it is fetched
/// from (with the token) on the same server.
pub fn describe_attachment(file: &Attachment) -> String {
    format!(
        "\u{1F4CE} {} ({}) /api/files/{}",
        file.name,
        describe_size(file.size),
        file.id
    )
}

/// A size in bytes as a person reads it: `812 B`, `14.2 KB`, `3.1 MB`.
pub fn describe_size(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KB", "MB", "GB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // A size shown to a person: f64's precision is plenty.
    let mut value = bytes as f64;
    let mut unit = UNITS[0];
    for candidate in UNITS {
        value /= 1024.0;
        unit = candidate;
        if value < 1024.0 {
            break;
        }
    }
    if value < 10.0 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

/// How a `user_message` names its turn: `turn 5`, and `edit of 3` or `regenerate of 3` when an
/// `edit` or `regenerate` started it.
pub fn describe_turn(
    turn_id: TurnId,
    edit_of: Option<TurnId>,
    regenerate_of: Option<TurnId>,
) -> String {
    let mut about = format!("turn {turn_id}");
    if let Some(edited) = edit_of {
        about.push_str(&format!(", edit of {edited}"));
    }
    if let Some(answered) = regenerate_of {
        about.push_str(&format!(", regenerate of {answered}"));
    }
    about
}

/// The one-line form of a `status`: its code (as the server wrote it: `code`), message, and
/// whichever extra fields it carries.
pub fn describe_status(status: &StatusData, code: &str) -> String {
    let details = [
        status
            .from
            .zip(status.to)
            .map(|(from, to)| format!("events {from}..{to} are lost")),
        status.attempt.map(|attempt| format!("attempt {attempt}")),
        status.delay_ms.map(|delay_ms| format!("in {delay_ms} ms")),
        status.turn_id.map(|turn| format!("turn {turn}")),
    ];
    let details: Vec<String> = details.into_iter().flatten().collect();
    let details = if details.is_empty() {
        String::new()
    } else {
        format!(" ({})", details.join(", "))
    };
    format!("[{code}] {}{details}", status.message)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// An output the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_streamed_answer_is_shown_once_and_the_prompt_leaves_its_line() {
        let out = Shared::default();
        let mut screen = Screen::new(Box::new(out.clone()), false, true);
        screen.prompt();
        screen.delta(TurnId(1), "Hel");
        screen.delta(TurnId(1), "lo");
        screen.answer(TurnId(1), "Hello");
        screen.answer(TurnId(2), "Again");
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "you> \r\x1b[Kbot> Hello\nbot> Again\n");
    }

    #[test]
    fn attachments_read_as_name_size_and_path() {
        let file = Attachment {
            id: "ab".repeat(16),
            name: "notes.txt".into(),
            content_type: "text/plain".into(),
            size: 14_540,
        };
        assert_eq!(
            describe_attachment(&file),
            format!("\u{1F4CE} notes.txt (14 KB) /api/files/{}", "ab".repeat(16))
        );
        assert_eq!(describe_size(0), "0 B");
        assert_eq!(describe_size(1023), "1023 B");
        assert_eq!(describe_size(1536), "1.5 KB");
        assert_eq!(describe_size(25 << 20), "25 MB");
        assert_eq!(describe_size(3 << 30), "3.0 GB");
    }

    #[test]
    fn image_data_urls_are_left_out() {
        assert_eq!(
            without_data_urls("[image: image/png, 3 KB] data:image/png;base64,AAAA\nmore"),
            "[image: image/png, 3 KB]\nmore"
        );
    }
}
