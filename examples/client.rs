//! An interactive terminal client for Sparky that speaks the wire protocol of PROTOCOL.md.
//!
//! ```text
//! cargo run --example client -- [--url ws://127.0.0.1:8000/ws] [--state FILE] [--token T] [--new]
//! ```
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
//! | `/cancel` | stops the turn in flight |
//! | `/quit` | quits |
//!
//! When a tool call waits for approval, the client asks `allow? [y/n]` and the next `y` or `n`
//! line answers it (an `approve` frame). Other lines that start with `/` (`/help`, `/calc 1+2`,
//! `/prompt`, …) are ordinary messages for the server (`/prompt` its MCP prompts) and its model.
//!
//! The client saves its `session_id` and the highest `seq` it has seen in a state file, so a
//! dropped connection or a restarted client resumes the same session and gets every event it
//! missed; on resume (and on `/open`) it first shows the conversation's recent history, so the
//! screen is not blank. Every `message`, `edit` and `regenerate` carries a random `client_id`:
//! one whose `user_message` had not come back when the connection dropped is sent again, with
//! the same `client_id`, once the client has resumed, so that it runs exactly once (the server
//! answers a copy it already has with `status` `duplicate`, which the client takes as success).
//!
//! The main thread owns the WebSocket and polls it with a short read timeout, sending typed
//! lines in between; a second thread only reads stdin, and a third turns SIGINT into a command.
//! Polling is fine for one client with one connection; the server must never do it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sparky::common::protocol::{
    ApproveData, ClientFrame, ConnectData, EditData, ErrorCode, MessageData, RegenerateData,
    ServerEnvelope, ServerFrame, StatusCode, StatusData, SwitchData, ToolStatus, TurnId,
};
use tungstenite::{Message, WebSocket};

/// How long one read waits before the loop looks at stdin again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Bound on TCP connect, the handshake and each write, so a dead server cannot hang the client.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before reconnecting starts here and doubles after each failure, up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Lines the stdin thread may read ahead of the main loop before it waits.
const INPUT_QUEUE_LEN: usize = 64;
/// Events of recent history shown when resuming or opening a conversation.
const HISTORY_EVENTS: usize = 24;
/// The prompt. A message typed at it is not printed again when the server echoes it (it stands
/// after the prompt already): only its turn number is.
const PROMPT: &str = "you> ";
/// The most bytes of an API answer that are read.
const MAX_API_BYTES: u64 = 4 << 20;
/// How much of a turn's text one line of `/history` shows, in characters.
const HISTORY_TEXT_CHARS: usize = 60;

/// ANSI styles for [`Screen::say`]; `PLAIN` adds none.
const PLAIN: &str = "";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "Interactive terminal client for the Sparky chat server")]
struct Args {
    /// WebSocket URL of the server (ws:// only: this client has no TLS).
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    url: String,
    /// File that keeps the session id and the last seen seq between runs.
    #[arg(long, default_value = ".sparky-client.state.json")]
    state: PathBuf,
    /// Credential for a server that requires one.
    #[arg(long)]
    token: Option<String>,
    /// Start a new session instead of resuming the one in the state file.
    #[arg(long)]
    new: bool,
}

/// The resume point kept in the state file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedState {
    session_id: Option<String>,
    /// The highest `seq` seen in `session_id`; 0 when none yet.
    #[serde(default)]
    last_seq: u64,
}

/// What a line typed by the user (or Ctrl-C) asks for.
#[derive(Debug)]
enum Command {
    Send(ClientFrame),
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
    /// A client command typed wrong: how to type it.
    Usage(&'static str),
}

/// What [`Client::take_input`] decided.
#[derive(Debug, PartialEq, Eq)]
enum Input {
    /// Go on.
    Continue,
    /// The user asked to quit.
    Quit,
    /// The user opened another conversation (or a new one): reconnect at once.
    Reopen,
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The user quit, or input ended and everything typed was sent.
    Quit,
    /// The connection was lost or could not be made; reconnecting may help.
    Lost(String),
    /// Reconnecting cannot help (refused credentials, session taken over).
    Fatal(String),
    /// The user opened another conversation (or a new one).
    Reopen,
}

/// The client: its resume point, what is still to be sent, and the screen.
#[derive(Debug)]
struct Client {
    args: Args,
    /// Host and port from `--url`, checked once at startup.
    addr: (String, u16),
    state: SavedState,
    input: Receiver<Command>,
    /// Set once the stdin thread has ended: the client quits when the outbox is empty.
    input_closed: bool,
    /// Frames typed but not yet written, kept across reconnects.
    outbox: VecDeque<ClientFrame>,
    /// True once this connection got `ready`; only then is the outbox sent, so that a line is
    /// not written into a connection the server is about to refuse.
    ready: bool,
    connected_before: bool,
    backoff: Duration,
    save_failed: bool,
    screen: Screen,
    /// The `message`, `edit` and `regenerate` frames written on this connection whose
    /// `user_message` (the one echoing their `client_id`) has not come back, oldest first. When
    /// the connection drops they go back to the front of the outbox, to be sent again with the
    /// same `client_id` once the client has resumed.
    unconfirmed: VecDeque<ClientFrame>,
    /// The turns whose `user_message` echoed a frame of this client: a `duplicate` naming one
    /// of them answers a frame already taken off `unconfirmed`.
    confirmed_turns: HashSet<TurnId>,
    /// True while a turn of the session runs (between its `user_message` and its closing frame).
    running: bool,
    /// True after a Ctrl-C that was not followed by anything else: the next one quits.
    interrupted: bool,
    /// The conversation ids of the last `/list`, in the order shown.
    listed: Vec<String>,
    /// Tool calls waiting for this user's `y` or `n`, oldest first.
    asking: VecDeque<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let addr = match host_and_port(&args.url) {
        Ok(addr) => addr,
        Err(e) => return fail(2, &format!("bad --url {}: {e}", args.url)),
    };
    let color = io::stdout().is_terminal();
    let mut screen = Screen {
        color,
        interactive: color && io::stdin().is_terminal(),
        prompt_shown: false,
        stream: None,
        mid_line: false,
    };
    let state = if args.new {
        SavedState::default()
    } else {
        load_state(&args.state).unwrap_or_else(|e| {
            screen.notice(&format!("ignoring {}: {e}", args.state.display()));
            SavedState::default()
        })
    };
    let input = match spawn_input_threads() {
        Ok(input) => input,
        Err(e) => return fail(1, &format!("cannot start the input threads: {e}")),
    };
    let mut client = Client {
        args,
        addr,
        state,
        input,
        input_closed: false,
        outbox: VecDeque::new(),
        ready: false,
        connected_before: false,
        backoff: FIRST_BACKOFF,
        save_failed: false,
        screen,
        unconfirmed: VecDeque::new(),
        confirmed_turns: HashSet::new(),
        running: false,
        interrupted: false,
        listed: Vec::new(),
        asking: VecDeque::new(),
    };
    client.run()
}

impl Client {
    /// Connects, talks, and reconnects with backoff until the user quits or retrying cannot help.
    fn run(&mut self) -> ExitCode {
        if self.state.session_id.is_some() {
            self.show_history();
        }
        loop {
            let end = match self.open() {
                Ok(mut ws) => {
                    let end = self.converse(&mut ws);
                    if matches!(end, End::Quit) {
                        close_gracefully(&mut ws);
                    }
                    end
                }
                Err(reason) => End::Lost(reason),
            };
            match end {
                End::Quit => break,
                End::Reopen => {
                    self.backoff = FIRST_BACKOFF;
                    continue;
                }
                End::Fatal(reason) => return fail(1, &reason),
                End::Lost(reason) => {
                    let delay = self.backoff.as_secs_f64();
                    let notice = format!("disconnected: {reason}; retrying in {delay:.1} s");
                    self.screen.notice(&notice);
                }
            }
            let deadline = Instant::now() + self.backoff;
            match self.take_input(deadline) {
                Input::Quit => break,
                Input::Reopen => continue,
                Input::Continue => {}
            }
            // Input has ended: keep trying only while there are lines left to deliver.
            if self.input_closed && self.outbox.is_empty() {
                break;
            }
            thread::sleep(deadline.saturating_duration_since(Instant::now()));
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
        if !self.outbox.is_empty() {
            let notice = format!("{} unsent line(s) dropped", self.outbox.len());
            self.screen.notice(&notice);
        }
        ExitCode::SUCCESS
    }

    /// Opens the TCP connection and does the WebSocket handshake.
    fn open(&self) -> Result<WebSocket<TcpStream>, String> {
        let stream = connect_tcp(&self.addr)?;
        // The handshake reads with the long timeout; only then does polling start.
        let socket = |e: io::Error| format!("socket: {e}");
        stream
            .set_read_timeout(Some(NETWORK_TIMEOUT))
            .map_err(socket)?;
        stream
            .set_write_timeout(Some(NETWORK_TIMEOUT))
            .map_err(socket)?;
        let (mut ws, _response) = tungstenite::client(self.args.url.as_str(), stream)
            .map_err(|e| format!("handshake: {e}"))?;
        ws.get_mut()
            .set_read_timeout(Some(POLL_INTERVAL))
            .map_err(socket)?;
        Ok(ws)
    }

    /// Sends `connect`, then alternates between showing what arrived and sending what was typed.
    fn converse(&mut self, ws: &mut WebSocket<TcpStream>) -> End {
        self.ready = false;
        // What the last connection wrote without seeing its echo goes out again, in order. The
        // replay that follows `ready` usually brings the echo first, and then nothing is resent.
        while let Some(frame) = self.unconfirmed.pop_back() {
            self.outbox.push_front(frame);
        }
        let connect = ClientFrame::Connect(ConnectData {
            session_id: self.state.session_id.clone(),
            last_seq: self.state.session_id.as_ref().map(|_| self.state.last_seq),
            token: self.args.token.clone(),
            ..ConnectData::default()
        });
        if let Err(e) = send(ws, &connect) {
            return End::Lost(e);
        }
        loop {
            // Read until a read times out, which means the server has nothing more for now.
            loop {
                let message = match ws.read() {
                    Ok(message) => message,
                    Err(tungstenite::Error::Io(e)) if is_timeout(&e) => break,
                    Err(e) => return End::Lost(e.to_string()),
                };
                match message {
                    Message::Text(text) => {
                        if let Some(end) = self.on_text(text.as_str()) {
                            return end;
                        }
                    }
                    Message::Close(frame) => {
                        let _ = ws.flush(); // Sends the close reply tungstenite has queued.
                        let why = frame.map(|frame| format!(" ({frame})")).unwrap_or_default();
                        return End::Lost(format!("closed by the server{why}"));
                    }
                    // Binary frames are not part of the protocol; tungstenite answers pings.
                    _ => {}
                }
            }
            match self.take_input(Instant::now()) {
                Input::Quit => return End::Quit,
                Input::Reopen => {
                    close_gracefully(ws);
                    return End::Reopen;
                }
                Input::Continue => {}
            }
            while self.ready
                && let Some(frame) = self.outbox.front()
            {
                // A frame that fails to go out stays first in the outbox, and is sent again
                // (with the same `client_id`) after the reconnect.
                if let Err(e) = send(ws, frame) {
                    return End::Lost(e);
                }
                if let Some(frame) = self.outbox.pop_front()
                    && client_id(&frame).is_some()
                {
                    self.unconfirmed.push_back(frame);
                }
            }
            if self.ready && !self.running {
                self.screen.prompt();
            }
            if self.input_closed && self.outbox.is_empty() {
                return End::Quit;
            }
        }
    }

    /// Handles one text frame: shows it, and records its `seq` so a reconnect resumes after it.
    fn on_text(&mut self, text: &str) -> Option<End> {
        // A client must ignore what it does not understand, so a frame that is not JSON is
        // skipped, and one of an unknown type is not shown but its `seq` still counts.
        let value: Value = serde_json::from_str(text).ok()?;
        let seq = value.get("seq").and_then(Value::as_u64);
        if seq.is_some_and(|seq| seq <= self.state.last_seq) {
            return None; // Already seen: a replay may overlap what this client showed.
        }
        // Decoding maps codes this build does not know to `Unknown`; the raw text says more.
        let code = value
            .pointer("/data/code")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let end = serde_json::from_value::<ServerEnvelope>(value)
            .ok()
            .and_then(|envelope| self.show(envelope.frame, &code));
        if let Some(seq) = seq {
            self.state.last_seq = seq;
            self.save();
        }
        end
    }

    /// Prints one frame in the style of its kind; returns how the connection ends, if it does.
    fn show(&mut self, frame: ServerFrame, code: &str) -> Option<End> {
        if frame.closes_turn() {
            self.running = false;
            self.asking.clear();
        }
        let screen = &mut self.screen;
        match frame {
            ServerFrame::SessionInfo {
                session_id, is_new, ..
            } => {
                if self.state.session_id.as_deref() != Some(session_id.as_str()) {
                    if self.state.session_id.is_some() {
                        screen.notice("the saved session is gone; the server started a new one");
                    }
                    self.state = SavedState {
                        session_id: Some(session_id.to_string()),
                        last_seq: 0,
                    };
                    self.save();
                }
                let verb = if self.connected_before {
                    "reconnected"
                } else {
                    "connected"
                };
                let short = session_id.short();
                let notice = if is_new {
                    format!("{verb} to new session {short}")
                } else {
                    format!(
                        "{verb} to session {short}, resuming after seq {}",
                        self.state.last_seq
                    )
                };
                self.screen.notice(&notice);
                // Only a connection that got this far resets the backoff, so that a server
                // which accepts and then drops every connection is not hammered.
                self.backoff = FIRST_BACKOFF;
            }
            ServerFrame::Ready { tools, model, .. } => {
                if !self.connected_before {
                    screen.say(DIM, &format!("model {model}; tools: {}", tools.join(", ")));
                }
                self.ready = true;
                self.connected_before = true;
            }
            ServerFrame::UserMessage {
                turn_id,
                text,
                client_id,
                edit_of,
                regenerate_of,
                ..
            } => {
                self.running = true;
                let sent = self.confirm(client_id.as_deref(), &text);
                if sent.is_some() {
                    self.confirmed_turns.insert(turn_id);
                }
                let about = describe_turn(turn_id, edit_of, regenerate_of);
                let screen = &mut self.screen;
                if matches!(sent, Some(ClientFrame::Message(_))) && screen.interactive {
                    // Typed here: the line stands after the prompt already.
                    screen.say(DIM, &format!("({about})"));
                } else {
                    screen.say(PLAIN, &format!("{PROMPT}{text}  ({about})"));
                }
            }
            ServerFrame::Branch { leaf } => {
                screen.say(YELLOW, &format!("now on the branch ending at turn {leaf}"));
            }
            ServerFrame::Thought { text, .. } => screen.say(DIM, &format!("think> {text}")),
            ServerFrame::ToolUse { name, args, .. } => {
                screen.say(PLAIN, &format!("tool> {name} {args}"));
            }
            ServerFrame::ApprovalRequest {
                call_id,
                name,
                args,
                ..
            } => {
                screen.say(YELLOW, &format!("approve> {name} {args}: allow? [y/n]"));
                self.asking.push_back(call_id);
            }
            ServerFrame::ToolProgress {
                progress,
                total,
                message,
                ..
            } => {
                let of = total
                    .map(|total| format!(" of {total}"))
                    .unwrap_or_default();
                let what = message.map(|m| format!(": {m}")).unwrap_or_default();
                screen.say(DIM, &format!("tool> progress {progress}{of}{what}"));
            }
            ServerFrame::ToolResult {
                call_id,
                name,
                status,
                result,
                ..
            } => match status {
                ToolStatus::Success => {
                    self.asking.retain(|waiting| *waiting != call_id);
                    let result = without_data_urls(&result);
                    screen.say(PLAIN, &format!("tool> {name} -> {result}"));
                }
                ToolStatus::Error => {
                    self.asking.retain(|waiting| *waiting != call_id);
                    screen.say(RED, &format!("tool> {name} failed: {result}"));
                }
            },
            ServerFrame::MessageDelta { turn_id, text, .. } => screen.delta(turn_id, &text),
            ServerFrame::Message { turn_id, text, .. } => screen.answer(turn_id, &text),
            ServerFrame::Status(status) if status.code == StatusCode::Duplicate => {
                // A frame sent again after a reconnect that the server had already: success.
                // Only this connection gets the answer, in the order of the frames it sent, so it
                // answers the oldest frame still waiting for its echo, unless the echo (in the
                // replay) came first.
                let echoed = status
                    .turn_id
                    .is_some_and(|turn| !self.confirmed_turns.insert(turn));
                if !echoed {
                    self.unconfirmed.pop_front();
                }
                let turn = status
                    .turn_id
                    .map(|turn| format!(" as turn {turn}"))
                    .unwrap_or_default();
                self.screen
                    .say(DIM, &format!("(the server already had that message{turn})"));
            }
            ServerFrame::Status(status) => {
                screen.say(YELLOW, &describe_status(&status, code));
                if status.code == StatusCode::TakenOver {
                    let reason = "another connection took over this session; run again to resume";
                    return Some(End::Fatal(reason.to_owned()));
                }
            }
            ServerFrame::Error {
                turn_id,
                code: error_code,
                message,
                ..
            } => {
                let turn = turn_id
                    .map(|turn| format!(" (turn {turn})"))
                    .unwrap_or_default();
                screen.say(RED, &format!("[error {code}] {message}{turn}"));
                if turn_id.is_none() && code != "not_waiting" {
                    // A refused frame starts nothing, so it is not sent again. The server answers
                    // a connection's frames in order, so this error answers the oldest frame
                    // waiting for its echo, or one written before it (a `switch`): either way
                    // that frame has most likely reached the server already.
                    self.unconfirmed.pop_front();
                }
                if error_code == ErrorCode::Unauthorized {
                    return Some(End::Fatal("the server refused the credentials".to_owned()));
                }
            }
        }
        None
    }

    /// Moves typed commands into the outbox, waiting for more until `deadline` (a deadline now
    /// does not wait), and carries out the others.
    fn take_input(&mut self, deadline: Instant) -> Input {
        while !self.input_closed {
            let command = match self.input.recv_deadline(deadline) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    self.input_closed = true;
                    break;
                }
            };
            if !matches!(command, Command::Interrupt) {
                // A typed line ends with Enter: the prompt is used up.
                self.screen.prompt_shown = false;
                self.interrupted = false;
            }
            match command {
                Command::Send(frame) => self.outbox.push_back(with_client_id(frame)),
                Command::Quit => return Input::Quit,
                Command::Interrupt => {
                    if self.interrupted {
                        self.screen.end_prompt_line();
                        return Input::Quit;
                    }
                    self.interrupted = true;
                    if self.running {
                        self.outbox.push_front(ClientFrame::Cancel {});
                        self.screen
                            .notice("stopping the answer (Ctrl-C again to quit)");
                    } else {
                        self.screen.notice("press Ctrl-C again to quit");
                    }
                }
                Command::List => self.list(),
                Command::Open(number) => match self.listed.get(number.wrapping_sub(1)) {
                    Some(id) => {
                        let id = id.clone();
                        self.open_conversation(Some(id));
                        return Input::Reopen;
                    }
                    None if self.listed.is_empty() => self.screen.notice("run /list first"),
                    None => self.screen.notice(&format!(
                        "/open takes a number from 1 to {}",
                        self.listed.len()
                    )),
                },
                Command::New => {
                    self.open_conversation(None);
                    return Input::Reopen;
                }
                Command::Answer(allow, line) => match self.asking.pop_front() {
                    Some(call_id) => {
                        let frame = ClientFrame::Approve(ApproveData { call_id, allow });
                        self.outbox.push_back(frame);
                    }
                    None => {
                        let frame = ClientFrame::Message(MessageData {
                            text: line,
                            client_id: None,
                        });
                        self.outbox.push_back(with_client_id(frame));
                    }
                },
                Command::History => self.history(),
                Command::Usage(usage) => self.screen.notice(usage),
            }
        }
        Input::Continue
    }

    /// Leaves the current conversation for `id` (shown with its recent history), or for a new
    /// one when `None`.
    fn open_conversation(&mut self, id: Option<String>) {
        self.outbox.clear();
        self.unconfirmed.clear();
        self.confirmed_turns.clear();
        self.running = false;
        self.asking.clear();
        self.connected_before = false;
        self.screen.stream = None;
        self.state = SavedState {
            session_id: id,
            last_seq: 0,
        };
        if self.state.session_id.is_some() {
            self.show_history();
        } else {
            self.screen
                .notice("a new conversation starts with your next message");
        }
        self.save();
    }

    /// `/list`: the user's conversations, newest first, numbered for `/open`.
    fn list(&mut self) {
        let answer = match self.api("/api/conversations") {
            Ok(answer) => answer,
            Err(e) => {
                return self
                    .screen
                    .notice(&format!("cannot list conversations: {e}"));
            }
        };
        let conversations = answer["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        self.listed = conversations
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_owned))
            .collect();
        if conversations.is_empty() {
            return self.screen.notice("no conversations yet");
        }
        for (number, conversation) in conversations.iter().enumerate() {
            let id = conversation["id"].as_str().unwrap_or_default();
            let current = self.state.session_id.as_deref() == Some(id);
            let title = conversation["title"].as_str().unwrap_or("(untitled)");
            let turns = conversation["turns"].as_u64().unwrap_or(0);
            let when = conversation["updated_at"].as_str().unwrap_or_default();
            let line = format!(
                "{} {:>2}. {title}  ({turns} turns, {when})",
                if current { "*" } else { " " },
                number + 1
            );
            self.screen.say(if current { PLAIN } else { DIM }, &line);
        }
        self.screen.notice("/open N switches to one of them");
    }

    /// Shows the last events of the current conversation up to the saved resume point (all of
    /// its newest ones for a conversation just opened), and moves the resume point to them.
    fn show_history(&mut self) {
        let Some(id) = self.state.session_id.clone() else {
            return;
        };
        let mut path = format!("/api/conversations/{id}/events?limit={HISTORY_EVENTS}");
        if self.state.last_seq > 0 {
            path.push_str(&format!("&before_seq={}", self.state.last_seq + 1));
        }
        let events = match self.api(&path) {
            Ok(answer) => answer["events"].as_array().cloned().unwrap_or_default(),
            Err(e) => {
                // Without the history, the resume still brings every missed event.
                self.screen.notice(&format!("no history shown: {e}"));
                return;
            }
        };
        if events.is_empty() {
            return;
        }
        self.screen.notice("recent history of this conversation:");
        for event in events {
            let seq = event.get("seq").and_then(Value::as_u64).unwrap_or(0);
            let code = event
                .pointer("/data/code")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            if let Ok(envelope) = serde_json::from_value::<ServerEnvelope>(event) {
                self.show(envelope.frame, &code);
            }
            self.state.last_seq = self.state.last_seq.max(seq);
        }
        self.screen.notice("(end of history)");
    }

    /// Takes the frame that a `user_message` echoes out of those waiting for their echo (sent
    /// on this connection, or waiting to be sent again), and returns it. The frame is found by
    /// its `client_id`; a server that does not echo `client_id`s is matched by the text of the
    /// oldest `message` instead.
    fn confirm(&mut self, echoed: Option<&str>, text: &str) -> Option<ClientFrame> {
        let matches = |frame: &ClientFrame| match echoed {
            Some(echoed) => client_id(frame) == Some(echoed),
            None => matches!(frame, ClientFrame::Message(message) if message.text == text),
        };
        if let Some(at) = self.unconfirmed.iter().position(matches) {
            return self.unconfirmed.remove(at);
        }
        let at = self.outbox.iter().position(matches)?;
        self.outbox.remove(at)
    }

    /// `/history`: the conversation's turns as a tree, with the current path and its leaf marked.
    fn history(&mut self) {
        let Some(id) = self.state.session_id.clone() else {
            return self.screen.notice("no conversation yet");
        };
        let tree = self
            .api(&format!("/api/conversations/{id}/turns"))
            .and_then(|answer| {
                serde_json::from_value::<TurnTree>(answer).map_err(|e| format!("bad answer: {e}"))
            });
        let tree = match tree {
            Ok(tree) => tree,
            Err(e) => return self.screen.notice(&format!("cannot show the turns: {e}")),
        };
        if tree.turns.is_empty() {
            return self.screen.notice("no turns yet");
        }
        self.screen
            .notice("the turns of this conversation (* the current path, > its leaf):");
        for (style, line) in tree_lines(&tree) {
            self.screen.say(style, &line);
        }
        self.screen
            .notice("/switch N follows another branch; /edit N text and /regen N start one");
    }

    /// One GET of the conversation API on the server of `--url`, as JSON.
    fn api(&self, path: &str) -> Result<Value, String> {
        let mut stream = connect_tcp(&self.addr)?;
        let socket = |e: io::Error| format!("socket: {e}");
        stream
            .set_read_timeout(Some(NETWORK_TIMEOUT))
            .map_err(socket)?;
        stream
            .set_write_timeout(Some(NETWORK_TIMEOUT))
            .map_err(socket)?;
        let (host, port) = &self.addr;
        let host = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        if let Some(token) = &self.args.token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).map_err(socket)?;
        let mut response = Vec::new();
        stream
            .take(MAX_API_BYTES)
            .read_to_end(&mut response)
            .map_err(socket)?;
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or("the server sent no HTTP answer")?;
        let status = head.split(' ').nth(1).unwrap_or_default();
        if status != "200" {
            let line = head.lines().next().unwrap_or_default();
            return Err(format!("the server answered {line}"));
        }
        serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))
    }

    /// Writes the resume point; a failure is reported once, since the session goes on without it.
    fn save(&mut self) {
        if let Err(e) = save_state(&self.args.state, &self.state)
            && !self.save_failed
        {
            self.save_failed = true;
            self.screen
                .notice(&format!("cannot save {}: {e}", self.args.state.display()));
        }
    }
}

/// Writes to stdout, keeping a streamed answer on one line.
#[derive(Debug)]
struct Screen {
    /// Whether to use ANSI colours: only when stdout is a terminal.
    color: bool,
    /// Whether to show a prompt: stdin and stdout are terminals.
    interactive: bool,
    /// True while the prompt stands at the start of the last line, nothing typed after it.
    prompt_shown: bool,
    /// The turn whose answer is streaming, and the text of it printed so far.
    stream: Option<(TurnId, String)>,
    /// True while the cursor stands after streamed text rather than at the start of a line.
    mid_line: bool,
}

impl Screen {
    /// Prints a whole line in `style`, first ending a streamed answer that is still open.
    fn say(&mut self, style: &str, text: &str) {
        self.clear_prompt();
        self.end_stream_line();
        if self.color && !style.is_empty() {
            self.write(&format!("{style}{text}\x1b[0m\n"));
        } else {
            self.write(&format!("{text}\n"));
        }
    }

    /// Prints a line of the client's own, set apart from the server's frames.
    fn notice(&mut self, text: &str) {
        self.say(YELLOW, &format!("-- {text}"));
    }

    /// Prints a piece of a streamed answer inline.
    fn delta(&mut self, turn_id: TurnId, text: &str) {
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
    fn answer(&mut self, turn_id: TurnId, text: &str) {
        let stream = self.stream.take();
        if stream.is_some_and(|(turn, streamed)| turn == turn_id && streamed == text) {
            self.end_stream_line();
        } else {
            self.say(PLAIN, &format!("bot> {text}"));
        }
    }

    /// Shows the prompt, unless it is up already or an answer is streaming.
    fn prompt(&mut self) {
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
    fn end_prompt_line(&mut self) {
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

    fn write(&self, text: &str) {
        let mut out = io::stdout().lock();
        // A closed stdout is no reason to panic or to drop the session, so errors are ignored.
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
}

/// A tool result as the terminal shows it: image lines (`[image: …] data:…`) keep their note
/// and lose their `data:` URL, which only a browser can show.
fn without_data_urls(result: &str) -> String {
    result
        .lines()
        .map(|line| match line.split_once("] data:") {
            Some((note, _)) if line.starts_with("[image: ") => format!("{note}]"),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The answer of `GET /api/conversations/{id}/turns`: the conversation's tree of turns.
#[derive(Debug, Deserialize)]
struct TurnTree {
    /// The last turn of the current path; 0 when there is none.
    leaf: u64,
    /// Every turn of every branch, oldest first.
    turns: Vec<TurnEntry>,
}

/// One turn of a [`TurnTree`].
#[derive(Debug, Deserialize)]
struct TurnEntry {
    turn_id: u64,
    /// The turn it follows; 0 for a turn at the conversation's start.
    parent: u64,
    /// The user's message.
    text: String,
    #[serde(default)]
    attachments: Vec<Value>,
    /// `message`, `error` or `cancelled`; none while the turn runs.
    #[serde(default)]
    closing: Option<String>,
}

/// The lines of `/history` and their styles: depth first, siblings in the order they started.
/// A turn's only child stands under it at the same indent; where a turn has several, each of
/// them starts a block indented one step more, marked `-`. A mark in the first column shows
/// the current path (`*`) and its leaf (`>`); turns off it are dimmed.
fn tree_lines(tree: &TurnTree) -> Vec<(&'static str, String)> {
    let parents: HashMap<u64, u64> = tree.turns.iter().map(|t| (t.turn_id, t.parent)).collect();
    // A turn whose parent is not listed (or is itself) is shown as a root, so that every turn
    // appears exactly once, and a malformed answer cannot make a cycle.
    let mut children: HashMap<u64, Vec<usize>> = HashMap::new();
    for (index, turn) in tree.turns.iter().enumerate() {
        let parent = if turn.parent != turn.turn_id && parents.contains_key(&turn.parent) {
            turn.parent
        } else {
            0
        };
        children.entry(parent).or_default().push(index);
    }
    let mut path = HashSet::new();
    let mut at = tree.leaf;
    while at != 0 && path.insert(at) {
        at = parents.get(&at).copied().unwrap_or(0);
    }
    // (turn index, column of its text, whether it starts a sibling block); a stack rather than
    // recursion, since a long conversation is a deep tree.
    let mut stack: Vec<(usize, usize, bool)> = Vec::new();
    let push_children =
        |stack: &mut Vec<(usize, usize, bool)>, parent: u64, column: usize| match children
            .get(&parent)
            .map(Vec::as_slice)
        {
            None | Some([]) => {}
            Some([only]) => stack.push((*only, column, false)),
            Some(several) => {
                for &index in several.iter().rev() {
                    stack.push((index, column + 2, true));
                }
            }
        };
    push_children(&mut stack, 0, 0);
    let mut lines = Vec::with_capacity(tree.turns.len());
    while let Some((index, column, starts_block)) = stack.pop() {
        let turn = &tree.turns[index];
        let on_path = path.contains(&turn.turn_id);
        let mark = if turn.turn_id == tree.leaf {
            '>'
        } else if on_path {
            '*'
        } else {
            ' '
        };
        let (indent, dash) = if starts_block {
            (" ".repeat(column - 2), "- ")
        } else {
            (" ".repeat(column), "")
        };
        let files = match turn.attachments.len() {
            0 => String::new(),
            1 => " (1 file)".to_owned(),
            n => format!(" ({n} files)"),
        };
        let closing = turn.closing.as_deref().unwrap_or("running");
        let text = one_line(&turn.text, HISTORY_TEXT_CHARS);
        let line = format!(
            "{mark} {indent}{dash}{}. {text}{files}  [{closing}]",
            turn.turn_id
        );
        lines.push((if on_path { PLAIN } else { DIM }, line));
        push_children(&mut stack, turn.turn_id, column);
    }
    lines
}

/// `text` on one line (runs of white space as one space), cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// How a `user_message` names its turn: `turn 5`, and `edit of 3` or `regenerate of 3` when an
/// `edit` or `regenerate` started it.
fn describe_turn(
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

/// The `client_id` of a frame that starts a turn.
fn client_id(frame: &ClientFrame) -> Option<&str> {
    match frame {
        ClientFrame::Message(MessageData { client_id, .. })
        | ClientFrame::Edit(EditData { client_id, .. })
        | ClientFrame::Regenerate(RegenerateData { client_id, .. }) => client_id.as_deref(),
        _ => None,
    }
}

/// The frame, with a fresh `client_id` when it starts a turn and has none yet.
fn with_client_id(mut frame: ClientFrame) -> ClientFrame {
    match &mut frame {
        ClientFrame::Message(MessageData { client_id, .. })
        | ClientFrame::Edit(EditData { client_id, .. })
        | ClientFrame::Regenerate(RegenerateData { client_id, .. }) => {
            client_id.get_or_insert_with(new_client_id);
        }
        _ => {}
    }
    frame
}

/// A `client_id`: 16 random bytes in hex (32 characters), or, should the operating system's
/// random source fail, the time, the process id and a counter (at most 58 characters), which
/// are as unique within one conversation.
fn new_client_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_ok() {
        return data_encoding::HEXLOWER.encode(&bytes);
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}-{:x}-{count:x}", std::process::id())
}

/// The one-line form of a `status`: its code, message, and whichever extra fields it carries.
fn describe_status(status: &StatusData, code: &str) -> String {
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

/// Starts the thread that turns stdin lines into commands (it ends after `/quit` or at EOF) and
/// the one that turns each SIGINT (Ctrl-C) into [`Command::Interrupt`].
///
/// Both threads are left detached: a blocking read of stdin cannot be interrupted, and the
/// process exit ends them.
fn spawn_input_threads() -> io::Result<Receiver<Command>> {
    let (sender, receiver) = crossbeam_channel::bounded(INPUT_QUEUE_LEN);
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT])?;
    let interrupts = sender.clone();
    thread::Builder::new()
        .name("sigint".to_owned())
        .spawn(move || {
            for _ in signals.forever() {
                if interrupts.send(Command::Interrupt).is_err() {
                    break;
                }
            }
        })?;
    let body = move || {
        for line in io::stdin().lock().lines() {
            let line = match line {
                Ok(line) => line,
                // A line that is not UTF-8 has been consumed all the same, so reading goes on.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => continue,
                Err(_) => break,
            };
            let command = match line.trim() {
                "" => continue,
                "/quit" => Command::Quit,
                "/cancel" => Command::Send(ClientFrame::Cancel {}),
                "/list" => Command::List,
                "/new" => Command::New,
                "y" | "Y" | "yes" => Command::Answer(true, line),
                "n" | "N" | "no" => Command::Answer(false, line),
                other if other.starts_with("/open") => {
                    match other["/open".len()..].trim().parse() {
                        Ok(number) => Command::Open(number),
                        Err(_) => Command::Open(0),
                    }
                }
                other => match parse_branch_command(other) {
                    Some(command) => command,
                    None => Command::Send(ClientFrame::Message(MessageData {
                        text: line,
                        client_id: None,
                    })),
                },
            };
            let quit = matches!(command, Command::Quit);
            if sender.send(command).is_err() || quit {
                break;
            }
        }
    };
    thread::Builder::new()
        .name("stdin".to_owned())
        .spawn(body)?;
    Ok(receiver)
}

/// Checks the URL and returns the host and port to open a TCP connection to.
fn host_and_port(url: &str) -> Result<(String, u16), String> {
    let uri: tungstenite::http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => return Err("wss:// needs TLS, which this client does not have".to_owned()),
        _ => return Err("the URL must start with ws://".to_owned()),
    }
    let host = uri.host().ok_or("the URL has no host")?;
    // An IPv6 host comes bracketed, as in the URL; address resolution wants it bare.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), uri.port_u16().unwrap_or(80)))
}

/// Opens a TCP connection to the first address of the host that answers within the timeout.
fn connect_tcp((host, port): &(String, u16)) -> Result<TcpStream, String> {
    let addrs = (host.as_str(), *port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?;
    let mut last_error = format!("no address for {host}");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, NETWORK_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = format!("connect to {addr}: {e}"),
        }
    }
    Err(last_error)
}

/// Encodes a client frame and writes it.
fn send(ws: &mut WebSocket<TcpStream>, frame: &ClientFrame) -> Result<(), String> {
    let text = serde_json::to_string(frame).map_err(|e| format!("encode: {e}"))?;
    ws.send(Message::text(text)).map_err(|e| e.to_string())
}

/// Sends a close frame and waits briefly for the server's, so that the socket is not reset
/// while the server still has lines just sent to read.
fn close_gracefully(ws: &mut WebSocket<TcpStream>) {
    if ws.close(None).is_err() {
        return;
    }
    let deadline = Instant::now() + NETWORK_TIMEOUT;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {}
            Err(_) => break, // `ConnectionClosed`: the close handshake is done.
        }
    }
}

/// True for the errors a read timeout produces (nothing has arrived yet), and for a read cut
/// short by a signal (Ctrl-C): neither loses anything.
fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Reads the state file; a missing file is a fresh start.
fn load_state(path: &Path) -> Result<SavedState, String> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SavedState::default()),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes the state to a temporary file beside `path` and renames it over `path`, so that a
/// crash mid-write never leaves a torn file.
fn save_state(path: &Path, state: &SavedState) -> io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".{}.tmp", std::process::id()));
    fs::write(&temp, serde_json::to_vec_pretty(state)?)?;
    fs::rename(&temp, path)
}

/// Reports an error that ends the client on stderr and returns the exit status.
fn fail(status: u8, message: &str) -> ExitCode {
    let _ = writeln!(io::stderr(), "sparky client: {message}");
    ExitCode::from(status)
}
