//! `Chat`: one terminal client's conversation with a server. It connects, resumes where its
//! state file says, shows what arrives, sends what is typed, and reconnects with backoff when
//! the connection drops, sending again (with their `client_id`) the frames whose echo it had
//! not seen, so that each runs once.
//!
//! The thread that calls [`Chat::run`] owns the WebSocket and polls it with a short read
//! timeout, sending typed lines in between; the input threads (`input.rs`) only read. Polling
//! is fine for one client with one connection; the server must never do it.
//!
//! Depends on: `client::form`, `client::input`, `client::screen`, `client::state`, `client::tree`,
//! `client::wire`, `common::protocol`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::Value;
use tungstenite::{Message, WebSocket};

use super::form::{FormFill, Step};
use super::input::Command;
use super::screen::{
    DIM, PLAIN, PROMPT, RED, Screen, YELLOW, describe_attachment, describe_status, describe_turn,
    without_data_urls,
};
use super::state::SavedState;
use super::tree::{TurnTree, tree_lines};
use super::wire::{Server, client_id, close_gracefully, is_timeout, send, with_client_id};
use crate::common::protocol::{
    ApproveData, Attachment, ClientFrame, ConnectData, EditData, ElicitAction, ElicitData,
    ErrorCode, MAX_ATTACHMENTS, MessageData, ServerEnvelope, ServerFrame, StatusCode, ToolStatus,
    TurnId,
};

/// How long one read waits before the loop looks at the input again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The wait before reconnecting starts here and doubles after each failure, up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait before reconnecting.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Events of recent history shown when resuming or opening a conversation.
const HISTORY_EVENTS: usize = 24;

/// What [`Chat::take_input`] decided.
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
pub struct Chat {
    server: Server,
    token: Option<String>,
    /// The state file.
    state_file: PathBuf,
    state: SavedState,
    input: Receiver<Command>,
    /// Set once the input has ended: the client quits when the outbox is empty.
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
    /// Tool calls (and sampling requests) waiting for this user's `y` or `n`, oldest first.
    asking: VecDeque<String>,
    /// Elicitations waiting for this user, the one being filled in first: while there is one,
    /// typed lines answer it.
    forms: VecDeque<FormFill>,
    /// Files uploaded with `/attach`, to go with the next message.
    attached: Vec<Attachment>,
    /// The files each turn's message carried, by turn, as far as this client has seen them:
    /// `/edit` keeps them.
    turn_files: HashMap<TurnId, Vec<String>>,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Chat")
            .field("server", &self.server)
            .field("state", &self.state)
            .field("outbox", &self.outbox.len())
            .field("unconfirmed", &self.unconfirmed.len())
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl Chat {
    /// A client of `server`, presenting `token`, resuming from `state` (kept in `state_file`),
    /// reading commands from `input` and writing to `screen`.
    pub fn new(
        server: Server,
        token: Option<String>,
        state_file: PathBuf,
        state: SavedState,
        input: Receiver<Command>,
        screen: Screen,
    ) -> Self {
        Chat {
            server,
            token,
            state_file,
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
            forms: VecDeque::new(),
            attached: Vec::new(),
            turn_files: HashMap::new(),
        }
    }

    /// Connects, talks, and reconnects with backoff until the user quits or retrying cannot
    /// help.
    ///
    /// # Errors
    ///
    /// Why reconnecting cannot help: the server refused the credentials, or another connection
    /// took the session over.
    pub fn run(&mut self) -> Result<(), String> {
        if self.state.session_id.is_some() {
            self.show_history();
        }
        loop {
            let end = match self.server.open(POLL_INTERVAL) {
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
                End::Fatal(reason) => return Err(reason),
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
            // A timer, not a wait for something: the backoff before the next attempt.
            thread::sleep(deadline.saturating_duration_since(Instant::now()));
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
        if !self.outbox.is_empty() {
            let notice = format!("{} unsent line(s) dropped", self.outbox.len());
            self.screen.notice(&notice);
        }
        Ok(())
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
            token: self.token.clone(),
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
            self.forms.clear();
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
                attachments,
                client_id,
                edit_of,
                regenerate_of,
                ..
            } => {
                self.running = true;
                self.turn_files
                    .insert(turn_id, attachments.iter().map(|f| f.id.clone()).collect());
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
                for file in &attachments {
                    screen.say(DIM, &format!("     {}", describe_attachment(file)));
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
            ServerFrame::SamplingRequest {
                request_id,
                server,
                messages,
                max_tokens,
                ..
            } => {
                let asked: Vec<String> = messages
                    .iter()
                    .map(|m| format!("{}: {}", m.role, m.text))
                    .collect();
                screen.say(
                    YELLOW,
                    &format!(
                        "sampling> {server} asks the model (at most {max_tokens} tokens): {}: \
                         allow? [y/n, always]",
                        asked.join(" | ")
                    ),
                );
                self.asking.push_back(request_id);
            }
            ServerFrame::ElicitationRequest {
                request_id,
                call_id,
                server,
                message,
                schema,
                url,
                ..
            } => self.start_form(
                request_id,
                call_id,
                &server,
                &message,
                schema.map(|s| *s),
                url,
            ),
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
                attachments,
                ..
            } => {
                self.asking.retain(|waiting| *waiting != call_id);
                self.forms.retain(|form| form.call_id != call_id);
                match status {
                    ToolStatus::Success => {
                        let result = without_data_urls(&result);
                        screen.say(PLAIN, &format!("tool> {name} -> {result}"));
                    }
                    ToolStatus::Error => {
                        screen.say(RED, &format!("tool> {name} failed: {result}"));
                    }
                }
                for file in &attachments {
                    screen.say(DIM, &format!("      {}", describe_attachment(file)));
                }
            }
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

    /// Shows an `elicitation_request` and queues its form; the first one waiting is asked at
    /// once. A form the terminal cannot ask is declined.
    fn start_form(
        &mut self,
        request_id: String,
        call_id: String,
        server: &str,
        message: &str,
        schema: Option<Value>,
        url: Option<String>,
    ) {
        let is_url = url.is_some();
        self.screen
            .say(YELLOW, &format!("elicit> {server} asks: {message}"));
        if let Some(url) = &url {
            self.screen.say(YELLOW, &format!("elicit> url: {url}"));
        }
        match FormFill::new(request_id.clone(), call_id, schema.as_ref(), is_url) {
            Ok(form) => {
                if self.forms.is_empty() {
                    self.screen
                        .say(YELLOW, &format!("elicit> {}", form.first()));
                }
                self.forms.push_back(form);
            }
            Err(why) => {
                self.screen.notice(&format!(
                    "this form cannot be filled in here ({why}): declined"
                ));
                self.outbox.push_back(ClientFrame::Elicit(ElicitData {
                    request_id,
                    action: ElicitAction::Decline,
                    content: None,
                }));
            }
        }
    }

    /// While a form is being filled in, a typed line answers it (`None`: the line was taken);
    /// otherwise the command is left as it is. `always` answers a waiting sampling request
    /// with `allow` for good.
    fn fill_form(&mut self, command: Command) -> Option<Command> {
        let line = match &command {
            Command::Send(ClientFrame::Message(message)) => message.text.clone(),
            Command::Send(ClientFrame::Cancel {}) => "/cancel".to_owned(),
            Command::Answer(_, line) => line.clone(),
            _ => return Some(command),
        };
        let Some(form) = self.forms.front_mut() else {
            if line.trim() == "always"
                && let Some(call_id) = self.asking.pop_front()
            {
                self.outbox.push_back(ClientFrame::Approve(ApproveData {
                    call_id,
                    allow: true,
                    always: true,
                }));
                return None;
            }
            return Some(command);
        };
        match form.take(&line) {
            Step::Ask(prompt) => self.screen.say(YELLOW, &format!("elicit> {prompt}")),
            Step::Again(why) => self.screen.notice(&why),
            Step::Done(frame) => {
                self.outbox.push_back(frame);
                self.forms.pop_front();
                if let Some(next) = self.forms.front() {
                    self.screen
                        .say(YELLOW, &format!("elicit> {}", next.first()));
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
            let command = match self.fill_form(command) {
                Some(command) => command,
                None => continue,
            };
            match command {
                Command::Send(frame) => {
                    let frame = self.with_files(frame);
                    self.outbox.push_back(with_client_id(frame));
                }
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
                        let frame = ClientFrame::Approve(ApproveData {
                            call_id,
                            allow,
                            always: false,
                        });
                        self.outbox.push_back(frame);
                    }
                    None => {
                        let frame = self.with_files(ClientFrame::Message(MessageData {
                            attachments: Vec::new(),
                            text: line,
                            client_id: None,
                        }));
                        self.outbox.push_back(with_client_id(frame));
                    }
                },
                Command::History => self.history(),
                Command::Attach(path) => self.attach(&path),
                Command::Attached => self.show_attached(),
                Command::Detach => {
                    let count = self.attached.len();
                    self.attached.clear();
                    self.screen.notice(&format!(
                        "{count} file(s) detached; the next message goes without them"
                    ));
                }
                Command::Usage(usage) => self.screen.notice(usage),
                Command::Closed => self.input_closed = true,
            }
        }
        Input::Continue
    }

    /// The frame as it goes: a `message` carries the files attached since the last one, and an
    /// `edit` the files of the turn it replaces (the server keeps a `regenerate`'s itself).
    fn with_files(&mut self, mut frame: ClientFrame) -> ClientFrame {
        match &mut frame {
            ClientFrame::Message(message) if message.attachments.is_empty() => {
                message.attachments = self.attached.drain(..).map(|file| file.id).collect();
            }
            ClientFrame::Edit(EditData {
                turn_id,
                attachments,
                ..
            }) if attachments.is_empty() => {
                *attachments = self.files_of(*turn_id);
            }
            _ => {}
        }
        frame
    }

    /// The files turn `turn_id`'s message carried: as its `user_message` showed them, else as
    /// the turns API lists them (a turn older than the history shown); none when unknown.
    fn files_of(&mut self, turn_id: TurnId) -> Vec<String> {
        if let Some(files) = self.turn_files.get(&turn_id) {
            return files.clone();
        }
        let Some(id) = self.state.session_id.clone() else {
            return Vec::new();
        };
        let tree = self
            .api(&format!("/api/conversations/{id}/turns"))
            .and_then(|answer| {
                serde_json::from_value::<TurnTree>(answer).map_err(|e| format!("bad answer: {e}"))
            });
        match tree {
            Ok(tree) => {
                for turn in tree.turns {
                    let files = turn
                        .attachments
                        .iter()
                        .filter_map(|file| file["id"].as_str().map(str::to_owned))
                        .collect();
                    self.turn_files.insert(TurnId(turn.turn_id), files);
                }
            }
            Err(e) => {
                let notice = format!("the edit goes without turn {turn_id}'s files: {e}");
                self.screen.notice(&notice);
            }
        }
        self.turn_files.get(&turn_id).cloned().unwrap_or_default()
    }

    /// `/attach PATH`: uploads the file (the conversation waits meanwhile), to go with the next
    /// message.
    fn attach(&mut self, path: &Path) {
        if self.attached.len() >= MAX_ATTACHMENTS {
            let notice = format!("a message carries at most {MAX_ATTACHMENTS} files");
            return self.screen.notice(&notice);
        }
        self.screen.notice(&format!("uploading {}", path.display()));
        match self.server.upload(path, self.token.as_deref()) {
            Ok(file) => {
                self.screen
                    .say(DIM, &format!("     {}", describe_attachment(&file)));
                self.attached.push(file);
                let count = self.attached.len();
                self.screen.notice(&format!(
                    "{count} file(s) go with your next message (/attach lists them, /detach drops them)"
                ));
            }
            Err(e) => self.screen.notice(&format!("not attached: {e}")),
        }
    }

    /// `/attach` alone: the files waiting for the next message.
    fn show_attached(&mut self) {
        if self.attached.is_empty() {
            return self
                .screen
                .notice("no files attached; /attach PATH uploads one for the next message");
        }
        self.screen.notice("these files go with your next message:");
        for file in &self.attached {
            self.screen
                .say(PLAIN, &format!("     {}", describe_attachment(file)));
        }
    }

    /// Leaves the current conversation for `id` (shown with its recent history), or for a new
    /// one when `None`.
    fn open_conversation(&mut self, id: Option<String>) {
        self.outbox.clear();
        self.unconfirmed.clear();
        self.confirmed_turns.clear();
        self.turn_files.clear();
        self.running = false;
        self.asking.clear();
        self.forms.clear();
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

    /// One GET of the conversation API, with the client's token.
    fn api(&self, path: &str) -> Result<Value, String> {
        self.server.api(path, self.token.as_deref())
    }

    /// Writes the resume point; a failure is reported once, since the session goes on without it.
    fn save(&mut self) {
        if let Err(e) = self.state.save(&self.state_file)
            && !self.save_failed
        {
            self.save_failed = true;
            self.screen
                .notice(&format!("cannot save {}: {e}", self.state_file.display()));
        }
    }
}
