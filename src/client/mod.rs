//! The terminal client, `sparky chat [URL]`: a person's conversation with a Sparky server, at a
//! terminal, over the wire protocol of PROTOCOL.md. It runs beside the server, not in it: it
//! uses `common::protocol` alone, and nothing of the server uses it.
//!
//! Type a line at the `you>` prompt to send it as a message; each user message is shown with
//! its turn number. Ctrl-C stops the turn in flight (as does `/cancel`); a second Ctrl-C quits,
//! as do `/quit` and the end of input. The client's own commands:
//!
//! | command | what it does |
//! |---|---|
//! | `/edit N text` | asks again with `text` in place of turn N's message: a new branch beside it |
//! | `/regen N` | asks for another answer to turn N's message: a new branch beside it |
//! | `/switch N` | makes the branch through turn N the current one |
//! | `/history` | shows the conversation's turns as a tree, marking the current path and its leaf |
//! | `/list` | shows your conversations (through the HTTP API) |
//! | `/open N` | switches to the Nth conversation of the last `/list` |
//! | `/new` | starts a new conversation |
//! | `/attach PATH` | uploads the file (`POST /api/files`); it goes with the next message |
//! | `/attach` | shows the files waiting for the next message |
//! | `/detach` | the next message goes without them |
//! | `/cancel` | stops the turn in flight |
//! | `/quit` | quits |
//!
//! When a tool call waits for approval, the client asks `allow? [y/n]` and the next `y` or `n`
//! line answers it (an `approve` frame). Other lines that start with `/` (`/help`, `/calc 1+2`,
//! `/prompt`, …) are ordinary messages for the server (`/prompt` its MCP prompts) and its model.
//! Files that messages and tool results carry are shown as `📎 name (size) /api/files/ID`;
//! `/edit` keeps the files of the turn it replaces.
//!
//! The client saves its `session_id` and the highest `seq` it has seen in a state file, so a
//! dropped connection or a restarted client resumes the same session and gets every event it
//! missed; on resume (and on `/open`) it first shows the conversation's recent history, so the
//! screen is not blank. Every `message`, `edit` and `regenerate` carries a random `client_id`:
//! one whose `user_message` had not come back when the connection dropped is sent again, with
//! the same `client_id`, once the client has resumed, so that it runs exactly once (the server
//! answers a copy it already has with `status` `duplicate`, which the client takes as success).
//!
//! Reading order: `chat.rs` (the conversation and its reconnects), `input.rs` (what is typed),
//! `screen.rs` (what is shown), `wire.rs` (the network), `tree.rs` (`/history`), `state.rs`
//! (the resume point).
//!
//! Depends on: `client::chat`, `client::input`, `client::screen`, `client::state`, `client::wire`.

mod chat;
mod form;
mod input;
mod screen;
mod state;
mod tree;
mod wire;

use std::fmt;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;

use self::chat::Chat;
use self::screen::Screen;
use self::state::SavedState;
use self::wire::Server;

/// The server a client talks to when none is named.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:8000/ws";

/// The state file a client keeps when none is named: in the current directory.
pub const DEFAULT_STATE_FILE: &str = ".sparky-client.state.json";

/// What a client is asked to do.
#[derive(Clone)]
pub struct ChatOptions {
    /// The server's WebSocket URL (`ws://` only).
    pub url: String,
    /// The file that keeps the conversation's id and the last `seq` seen between runs.
    pub state_file: PathBuf,
    /// The credential for a server that requires one. Never shown.
    pub token: Option<String>,
    /// Start a new conversation instead of resuming the state file's.
    pub new: bool,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            url: DEFAULT_URL.to_owned(),
            state_file: PathBuf::from(DEFAULT_STATE_FILE),
            token: None,
            new: false,
        }
    }
}

impl fmt::Debug for ChatOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatOptions")
            .field("url", &self.url)
            .field("state_file", &self.state_file)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("new", &self.new)
            .finish()
    }
}

/// Where a client reads lines and writes what it shows.
pub struct Terminal {
    /// The lines the user types.
    pub input: Box<dyn BufRead + Send>,
    /// Where everything is shown.
    pub output: Box<dyn Write + Send>,
    /// ANSI colours on the output.
    pub color: bool,
    /// A `you>` prompt (input and output are a terminal).
    pub interactive: bool,
    /// Ctrl-C (SIGINT) stops the answer, and quits when pressed twice, rather than ending the
    /// process at once.
    pub interrupts: bool,
}

impl Terminal {
    /// The process's standard input and output, in colour and with a prompt when they are a
    /// terminal, with Ctrl-C caught.
    pub fn stdio() -> Terminal {
        let color = io::stdout().is_terminal();
        Terminal {
            input: Box::new(io::BufReader::new(io::stdin())),
            output: Box::new(io::stdout()),
            color,
            interactive: color && io::stdin().is_terminal(),
            interrupts: true,
        }
    }
}

impl fmt::Debug for Terminal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Terminal")
            .field("color", &self.color)
            .field("interactive", &self.interactive)
            .field("interrupts", &self.interrupts)
            .finish_non_exhaustive()
    }
}

/// Why a client stopped before the user quit.
#[derive(Debug)]
pub enum ChatError {
    /// The URL cannot be used.
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The client could not start its input threads, or catch Ctrl-C.
    Start(io::Error),
    /// Reconnecting cannot help: the server refused the credentials, or another connection
    /// took the conversation over.
    Ended(String),
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatError::Url { url, detail } => write!(f, "bad URL {url}: {detail}"),
            ChatError::Start(e) => write!(f, "cannot start the input threads: {e}"),
            ChatError::Ended(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for ChatError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChatError::Start(e) => Some(e),
            ChatError::Url { .. } | ChatError::Ended(_) => None,
        }
    }
}

/// Runs a client as `options` say on `terminal` until the user quits (or input ends and
/// everything typed was sent).
///
/// # Errors
///
/// [`ChatError`]: a URL it cannot use, input threads that cannot start, or an end that
/// reconnecting cannot help.
pub fn run(options: ChatOptions, terminal: Terminal) -> Result<(), ChatError> {
    let server = Server::parse(&options.url).map_err(|detail| ChatError::Url {
        url: options.url.clone(),
        detail,
    })?;
    let mut screen = Screen::new(terminal.output, terminal.color, terminal.interactive);
    let state = if options.new {
        SavedState::default()
    } else {
        SavedState::load(&options.state_file).unwrap_or_else(|e| {
            screen.notice(&format!("ignoring {}: {e}", options.state_file.display()));
            SavedState::default()
        })
    };
    let input =
        self::input::spawn(terminal.input, terminal.interrupts).map_err(ChatError::Start)?;
    Chat::new(
        server,
        options.token,
        options.state_file,
        state,
        input,
        screen,
    )
    .run()
    .map_err(ChatError::Ended)
}
