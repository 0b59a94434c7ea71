//! The floor: the simplest thread-per-connection WebSocket server that answers Sparky's wire
//! protocol for the benchmarks, and the baseline Sparky's overhead is measured against.
//!
//! ```text
//! cargo run --release --example floor -- [--addr 127.0.0.1:0]
//! ```
//!
//! It prints `listening on http://ADDR` as its first stdout line, like `sparky`. Each accepted
//! socket gets one thread that upgrades it with `tungstenite::accept` and then blocks in
//! `read()`. A `connect` frame gets `session_info` and `ready`; a `message` frame gets the three
//! events of a plain Sparky turn (`user_message`, `thought`, `message`, each with `seq`,
//! `session_id` and `turn_id`), written in one batch. Nothing else: no session map, no event
//! log, no worker threads, no replay, no limits, no pings of its own (tungstenite answers the
//! client's pings).
//!
//! With `--model-url URL` (the `stream` scenario of `scripts/bench.sh`, issue 26) a `message`
//! frame is relayed to an OpenAI-compatible model instead, the way Sparky does it, minimally:
//! `user_message` first, then, on the connection's own thread, a POST of
//! `{"model", "messages": [the text], "stream": true, "stream_options": {"include_usage": true}}`
//! to `URL/chat/completions` with a fresh blocking `ureq` agent configured as Sparky's (64 KiB
//! input buffer, 16 KiB output buffer, no pooled connections); each `data:` line of the answer
//! is read into a small borrowed struct and its `choices[0].delta.content` sent on as a
//! `message_delta` (`turn_id`, `text`, `session_id`, no `seq`). Like Sparky's reader it sends
//! what it holds only when its buffer has no further whole line, so a recv that brought
//! several chunks becomes one delta. `[DONE]` or the end of the body closes the turn with
//! `message` (the whole answer, and the usage the model reported); a model that fails gives
//! `error` `model_error` with what was streamed. No store, no session map, no journal, no
//! retries, no cancel (the thread reads no frame while the answer streams), no tool calls;
//! multi-line `data` events are not joined. `--model-name` names the model in the request and
//! in `ready`.
//!
//! ```text
//! floor --addr 127.0.0.1:0 --model-url http://127.0.0.1:PORT/v1 --model-name fake
//! ```
//!
//! To keep the comparison fair it uses what Sparky uses where it matters to speed: a listen
//! backlog of 4096 (socket2), `TCP_NODELAY`, a 4 KiB tungstenite read buffer, 256 KiB thread
//! stacks, Sparky's own frame types and encoder from `sparky::common::protocol`, and for the
//! model Sparky's HTTP client (ureq) with the same buffer sizes and an 8 KiB line reader.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use sparky::common::protocol::{
    ClientFrame, ErrorCode, MessageData, ServerFrame, SessionId, TurnId, Usage,
    decode_client_frame, encode,
};
use sparky::tools::ToolChain;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// Sparky's listen backlog, so that a burst of connects meets the same queue.
const LISTEN_BACKLOG: i32 = 4096;

/// Sparky's tungstenite read buffer per connection.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Sparky's connection thread stack.
const CONNECTION_STACK_BYTES: usize = 256 * 1024;

/// The thought Sparky's offline model shows for plain text.
const THOUGHT: &str = "No command here, so I echo the text back.";

/// Sparky's input buffer of the model's HTTP agent: one recv takes whatever arrived, up to this.
const MODEL_INPUT_BUFFER_BYTES: usize = 64 * 1024;

/// Sparky's output buffer of the model's HTTP agent.
const MODEL_OUTPUT_BUFFER_BYTES: usize = 16 * 1024;

/// Sparky's line reader over the model's answer.
const MODEL_LINE_BUFFER_BYTES: usize = 8 * 1024;

/// Sparky's default connect timeout to the model.
const MODEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sparky's default read timeout on the model.
const MODEL_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    about = "Benchmark floor: a bare thread-per-connection server speaking Sparky's protocol"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Relay each message to this OpenAI-compatible model server (e.g.
    /// `http://127.0.0.1:8080/v1`) and stream its answer, instead of echoing.
    #[arg(long)]
    model_url: Option<String>,
    /// The model named in the requests and in `ready`.
    #[arg(long, default_value = "fake")]
    model_name: String,
}

/// What `ready` says, and where messages go, set once.
struct Greeting {
    tools: Vec<String>,
    /// The model `ready` names.
    model: String,
    /// The model server messages are relayed to, if any.
    relay: Option<Relay>,
}

/// An OpenAI-compatible model server that messages are relayed to.
struct Relay {
    /// `{model_url}/chat/completions`.
    endpoint: String,
    /// The model named in each request.
    model: String,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = bind(args.addr)?;
    println!("listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;

    let relay = args.model_url.map(|url| Relay {
        endpoint: format!("{}/chat/completions", url.trim_end_matches('/')),
        model: args.model_name.clone(),
    });
    let greeting: &'static Greeting = Box::leak(Box::new(Greeting {
        tools: ToolChain::builtin().names(),
        model: match relay {
            Some(_) => args.model_name,
            None => "offline".into(),
        },
        relay,
    }));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of descriptors: back off instead of spinning, as Sparky does.
                eprintln!("floor: accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let spawned = thread::Builder::new()
            .stack_size(CONNECTION_STACK_BYTES)
            .spawn(move || {
                // A peer that leaves or misbehaves just ends its thread.
                let _ = serve(stream, greeting);
            });
        if let Err(e) = spawned {
            eprintln!("floor: no thread for a connection: {e}");
        }
    }
}

/// Binds with the same backlog as Sparky.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Upgrades one socket and answers its frames until the peer leaves.
fn serve(stream: TcpStream, greeting: &Greeting) -> tungstenite::Result<()> {
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let mut ws = match tungstenite::accept_with_config(stream, Some(config)) {
        Ok(ws) => ws,
        Err(HandshakeError::Failure(e)) => return Err(e),
        // The socket is blocking, so the handshake is never interrupted; treat it as gone.
        Err(HandshakeError::Interrupted(_)) => return Ok(()),
    };
    let mut session: Option<SessionId> = None;
    let mut seq = 0u64;
    let mut turn = 0u64;
    loop {
        let text = match ws.read() {
            Ok(Message::Text(text)) => text,
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match (decode_client_frame(text.as_str()), &session) {
            (Ok(ClientFrame::Connect(_)), None) => {
                let id = new_session_id();
                let info = ServerFrame::SessionInfo {
                    session_id: id.clone(),
                    is_new: true,
                    reconnected: false,
                };
                let ready = ServerFrame::Ready {
                    tools_loaded: greeting.tools.len(),
                    tools: greeting.tools.clone(),
                    model: greeting.model.clone(),
                    models: vec![greeting.model.clone()],
                    leaf: TurnId(turn),
                };
                ws.write(Message::text(encode(&info, Some(&id), None)))?;
                ws.write(Message::text(encode(&ready, Some(&id), None)))?;
                ws.flush()?;
                session = Some(id);
            }
            (Ok(ClientFrame::Message(message)), Some(id)) => {
                turn += 1;
                let turn_id = TurnId(turn);
                if let Some(relay) = &greeting.relay {
                    relay_turn(&mut ws, relay, id, &mut seq, turn_id, &message)?;
                    continue;
                }
                let frames = [
                    user_message(turn_id, &message),
                    ServerFrame::Thought {
                        turn_id,
                        text: THOUGHT.into(),
                    },
                    ServerFrame::Message {
                        turn_id,
                        text: format!("You said: {}", message.text),
                        usage: None,
                    },
                ];
                for frame in &frames {
                    seq += 1;
                    ws.write(Message::text(encode(frame, Some(id), Some(seq))))?;
                }
                ws.flush()?;
            }
            // Everything else (bad frames, cancel, a second connect) is outside the floor.
            _ => {}
        }
    }
}

/// The `user_message` event that opens turn `turn_id` (the turns of a floor session form one
/// line, so its parent is the turn before).
fn user_message(turn_id: TurnId, message: &MessageData) -> ServerFrame {
    ServerFrame::UserMessage {
        attachments: Vec::new(),
        turn_id,
        parent: Some(TurnId(turn_id.0 - 1)),
        text: message.text.clone(),
        client_id: message.client_id.clone(),
        edit_of: None,
        regenerate_of: None,
    }
}

/// One turn relayed to the model: `user_message`, the streamed `message_delta`s, and the
/// closing `message` (or `error`). Fails only when the client's socket does.
fn relay_turn(
    ws: &mut WebSocket<TcpStream>,
    relay: &Relay,
    id: &SessionId,
    seq: &mut u64,
    turn_id: TurnId,
    message: &MessageData,
) -> tungstenite::Result<()> {
    *seq += 1;
    ws.write(Message::text(encode(
        &user_message(turn_id, message),
        Some(id),
        Some(*seq),
    )))?;
    ws.flush()?;
    let mut answer = String::new();
    let mut usage = None;
    let last = match stream_answer(ws, relay, id, turn_id, message, &mut answer, &mut usage) {
        Ok(()) => ServerFrame::Message {
            turn_id,
            text: answer,
            usage,
        },
        Err(Failed::Client(e)) => return Err(e),
        Err(Failed::Model(detail)) => ServerFrame::Error {
            turn_id: Some(turn_id),
            code: ErrorCode::ModelError,
            message: detail,
            text: Some(answer),
        },
    };
    *seq += 1;
    ws.write(Message::text(encode(&last, Some(id), Some(*seq))))?;
    ws.flush()
}

/// Why a relayed answer ended early.
enum Failed {
    /// The model server failed or could not be reached: the turn ends with `error`.
    Model(String),
    /// The client's socket failed: the connection ends.
    Client(tungstenite::Error),
}

/// One chunk of a streamed chat completion: only what the floor reads.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// One of a [`Chunk`]'s `choices`.
#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
}

/// A [`Choice`]'s `delta`.
#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

/// POSTs the message to the model and sends each piece of its streamed answer on as a
/// `message_delta`, gathering the whole answer in `answer` and the reported usage in `usage`.
fn stream_answer(
    ws: &mut WebSocket<TcpStream>,
    relay: &Relay,
    id: &SessionId,
    turn_id: TurnId,
    message: &MessageData,
    answer: &mut String,
    usage: &mut Option<Usage>,
) -> Result<(), Failed> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_resolve(Some(MODEL_CONNECT_TIMEOUT))
        .timeout_connect(Some(MODEL_CONNECT_TIMEOUT))
        .timeout_per_read(Some(MODEL_READ_TIMEOUT))
        .timeout_per_write(Some(MODEL_READ_TIMEOUT))
        .max_idle_connections(0)
        .input_buffer_size(MODEL_INPUT_BUFFER_BYTES)
        .output_buffer_size(MODEL_OUTPUT_BUFFER_BYTES)
        .build()
        .into();
    let body = serde_json::json!({
        "model": relay.model,
        "messages": [{"role": "user", "content": message.text}],
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let response = agent
        .post(&relay.endpoint)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .send(body.as_bytes())
        .map_err(|e| Failed::Model(format!("the model server could not be reached: {e}")))?;
    if !response.status().is_success() {
        return Err(Failed::Model(format!(
            "the model server answered {}",
            response.status()
        )));
    }
    let mut reader =
        BufReader::with_capacity(MODEL_LINE_BUFFER_BYTES, response.into_body().into_reader());
    let mut pending = String::new();
    let mut line = Vec::new();
    loop {
        // What arrived goes on before the next read can wait, as in Sparky's reader.
        if !pending.is_empty() && !reader.buffer().contains(&b'\n') {
            send_delta(ws, id, turn_id, &mut pending, answer).map_err(Failed::Client)?;
        }
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Failed::Model(format!("the model server's stream broke off: {e}")))?;
        if read == 0 {
            break;
        }
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            break;
        }
        let chunk: Chunk = serde_json::from_slice(data)
            .map_err(|e| Failed::Model(format!("a chunk of the answer is not JSON: {e}")))?;
        if chunk.usage.is_some() {
            *usage = chunk.usage;
        }
        if let Some(content) = chunk
            .choices
            .into_iter()
            .next()
            .and_then(|choice| choice.delta)
            .and_then(|delta| delta.content)
        {
            pending.push_str(&content);
        }
    }
    if !pending.is_empty() {
        send_delta(ws, id, turn_id, &mut pending, answer).map_err(Failed::Client)?;
    }
    Ok(())
}

/// Sends `pending` as one `message_delta` (one write) and moves it to the end of `answer`.
fn send_delta(
    ws: &mut WebSocket<TcpStream>,
    id: &SessionId,
    turn_id: TurnId,
    pending: &mut String,
    answer: &mut String,
) -> tungstenite::Result<()> {
    let frame = ServerFrame::MessageDelta {
        turn_id,
        text: std::mem::take(pending),
        replace: false,
    };
    ws.write(Message::text(encode(&frame, Some(id), None)))?;
    if let ServerFrame::MessageDelta { text, .. } = frame {
        answer.push_str(&text);
        // The buffer is used again for the next piece.
        *pending = text;
        pending.clear();
    }
    ws.flush()
}

/// A session id of the same shape and source as Sparky's.
fn new_session_id() -> SessionId {
    let mut bytes = [0u8; 16];
    // A failing OS random source is not worth a crash here: zeros still make a well-formed id.
    let _ = getrandom::fill(&mut bytes);
    SessionId::from_random_bytes(bytes)
}
