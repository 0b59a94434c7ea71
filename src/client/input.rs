//! What the user types: each line read into a `Command` (a frame for the server, or one of the
//! client's own commands), on a `chat-input` thread, and each Ctrl-C, on a `chat-sigint`
//! thread, both handed to the client over one channel.
//!
//! Depends on: `common::protocol`.

use std::io::{self, BufRead};
use std::path::PathBuf;
use std::thread;

use crossbeam_channel::Receiver;

use crate::common::protocol::{
    ClientFrame, EditData, MessageData, RegenerateData, SwitchData, TurnId,
};

/// Lines the input thread may read ahead of the client before it waits.
const INPUT_QUEUE_LEN: usize = 64;

/// What a line typed by the user (or Ctrl-C) asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// A frame for the server.
    Send(ClientFrame),
    /// `/quit`.
    Quit,
    /// Ctrl-C: cancel the running turn, or quit when pressed again.
    Interrupt,
    /// `/list`: show the user's conversations.
    List,
    /// `/open N`: switch to the Nth conversation of the last `/list`.
    Open(usize),
    /// `/new`: start a new conversation.
    New,
    /// `y` or `n`: the answer to the oldest waiting approval request (else an ordinary line).
    Answer(bool, String),
    /// `/history`: show the conversation's tree of turns.
    History,
    /// `/attach PATH`: upload the file, to go with the next message.
    Attach(PathBuf),
    /// `/attach` alone: show the files waiting for the next message.
    Attached,
    /// `/detach`: the next message goes without the files attached so far.
    Detach,
    /// A client command typed wrong: how to type it.
    Usage(&'static str),
    /// The input has ended: the client quits once everything typed was sent. (Said in so many
    /// words: the Ctrl-C thread keeps the channel open.)
    Closed,
}

/// What `line` asks for; `None` for a blank line.
pub fn parse_line(line: &str) -> Option<Command> {
    let command = match line.trim() {
        "" => return None,
        "/quit" => Command::Quit,
        "/cancel" => Command::Send(ClientFrame::Cancel {}),
        "/list" => Command::List,
        "/new" => Command::New,
        "/attach" => Command::Attached,
        "/detach" => Command::Detach,
        "y" | "Y" | "yes" => Command::Answer(true, line.to_owned()),
        "n" | "N" | "no" => Command::Answer(false, line.to_owned()),
        other if other.starts_with("/open") => match other["/open".len()..].trim().parse() {
            Ok(number) => Command::Open(number),
            Err(_) => Command::Open(0),
        },
        other if other.starts_with("/attach ") => {
            Command::Attach(attach_path(&other["/attach ".len()..]))
        }
        other => parse_branch_command(other).unwrap_or_else(|| {
            Command::Send(ClientFrame::Message(MessageData {
                attachments: Vec::new(),
                text: line.to_owned(),
                client_id: None,
            }))
        }),
    };
    Some(command)
}

/// The path of `/attach PATH`: the rest of the line, without quotes around it (a path copied
/// from a file manager often has them) and with a leading `~/` meaning the home directory.
fn attach_path(rest: &str) -> PathBuf {
    let rest = rest.trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|quote| {
            rest.strip_prefix(*quote)
                .and_then(|inner| inner.strip_suffix(*quote))
        })
        .unwrap_or(rest);
    match (unquoted.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(below), Some(home)) => PathBuf::from(home).join(below),
        _ => PathBuf::from(unquoted),
    }
}

/// Reads `/edit N text`, `/regen N`, `/switch N` and `/history`; `None` for any other line.
fn parse_branch_command(line: &str) -> Option<Command> {
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let (number, text) = rest
        .split_once(char::is_whitespace)
        .map_or((rest, ""), |(number, text)| (number, text.trim()));
    let turn = number.parse().ok().filter(|n| *n > 0).map(TurnId);
    let command = match (word, turn) {
        ("/edit", Some(turn_id)) if !text.is_empty() => {
            Command::Send(ClientFrame::Edit(EditData {
                attachments: Vec::new(),
                turn_id,
                text: text.to_owned(),
                client_id: None,
            }))
        }
        ("/edit", _) => Command::Usage("usage: /edit N text (N: a turn number; see /history)"),
        ("/regen", Some(turn_id)) if text.is_empty() => {
            Command::Send(ClientFrame::Regenerate(RegenerateData {
                turn_id,
                client_id: None,
            }))
        }
        ("/regen", _) => Command::Usage("usage: /regen N (N: a turn number; see /history)"),
        ("/switch", Some(turn_id)) if text.is_empty() => {
            Command::Send(ClientFrame::Switch(SwitchData { turn_id }))
        }
        ("/switch", _) => Command::Usage("usage: /switch N (N: a turn number; see /history)"),
        ("/history", _) if rest.is_empty() => Command::History,
        ("/history", _) => Command::Usage("usage: /history"),
        _ => return None,
    };
    Some(command)
}

/// Starts the `chat-input` thread, which turns the lines of `input` into commands (it ends
/// after `/quit` or at the end of input), and, with `interrupts`, the `chat-sigint` thread,
/// which turns each SIGINT (Ctrl-C) into [`Command::Interrupt`].
///
/// Both threads are left detached: a blocking read of a terminal cannot be interrupted, and
/// the process's exit ends them.
///
/// # Errors
///
/// When a thread cannot start or SIGINT cannot be caught.
pub fn spawn(input: Box<dyn BufRead + Send>, interrupts: bool) -> io::Result<Receiver<Command>> {
    let (sender, receiver) = crossbeam_channel::bounded(INPUT_QUEUE_LEN);
    if interrupts {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT])?;
        let interrupted = sender.clone();
        thread::Builder::new()
            .name("chat-sigint".to_owned())
            .spawn(move || {
                for _ in signals.forever() {
                    if interrupted.send(Command::Interrupt).is_err() {
                        break;
                    }
                }
            })?;
    }
    let body = move || {
        let mut quit = false;
        for line in input.lines() {
            let line = match line {
                Ok(line) => line,
                // A line that is not UTF-8 has been consumed all the same, so reading goes on.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => continue,
                Err(_) => break,
            };
            let Some(command) = parse_line(&line) else {
                continue;
            };
            quit = command == Command::Quit;
            if sender.send(command).is_err() || quit {
                break;
            }
        }
        if !quit {
            let _ = sender.send(Command::Closed);
        }
    };
    thread::Builder::new()
        .name("chat-input".to_owned())
        .spawn(body)?;
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_commands_and_frames() {
        assert_eq!(parse_line("  "), None);
        assert_eq!(parse_line("/quit"), Some(Command::Quit));
        assert_eq!(parse_line("/open 2"), Some(Command::Open(2)));
        assert_eq!(parse_line("/open x"), Some(Command::Open(0)));
        assert_eq!(
            parse_line("/edit 3 better words"),
            Some(Command::Send(ClientFrame::Edit(EditData {
                attachments: Vec::new(),
                turn_id: TurnId(3),
                text: "better words".into(),
                client_id: None,
            })))
        );
        assert!(matches!(parse_line("/edit 3"), Some(Command::Usage(_))));
        assert!(matches!(parse_line("/regen 0"), Some(Command::Usage(_))));
        assert_eq!(
            parse_line("/switch 2"),
            Some(Command::Send(ClientFrame::Switch(SwitchData {
                turn_id: TurnId(2)
            })))
        );
        assert_eq!(
            parse_line("/calc 1+2"),
            Some(Command::Send(ClientFrame::Message(MessageData {
                attachments: Vec::new(),
                text: "/calc 1+2".into(),
                client_id: None,
            })))
        );
        assert_eq!(parse_line("y"), Some(Command::Answer(true, "y".into())));
    }

    #[test]
    fn attach_takes_the_rest_of_the_line_as_a_path() {
        assert_eq!(parse_line("/attach"), Some(Command::Attached));
        assert_eq!(parse_line("  /attach  "), Some(Command::Attached));
        assert_eq!(parse_line("/detach"), Some(Command::Detach));
        assert_eq!(
            parse_line("/attach notes.txt"),
            Some(Command::Attach(PathBuf::from("notes.txt")))
        );
        assert_eq!(
            parse_line("/attach  my report (final).pdf "),
            Some(Command::Attach(PathBuf::from("my report (final).pdf")))
        );
        assert_eq!(
            parse_line("/attach \"/tmp/a b.png\""),
            Some(Command::Attach(PathBuf::from("/tmp/a b.png")))
        );
        assert_eq!(
            parse_line("/attach 'x.csv'"),
            Some(Command::Attach(PathBuf::from("x.csv")))
        );
        if let Some(home) = std::env::var_os("HOME") {
            assert_eq!(
                parse_line("/attach ~/a.txt"),
                Some(Command::Attach(PathBuf::from(home).join("a.txt")))
            );
        }
        // A word that only starts like it is a message for the server.
        assert!(matches!(
            parse_line("/attachments please"),
            Some(Command::Send(ClientFrame::Message(_)))
        ));
        assert!(matches!(
            parse_line("/detach now"),
            Some(Command::Send(ClientFrame::Message(_)))
        ));
    }
}
