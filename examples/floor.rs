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
//! To keep the comparison fair it uses what Sparky uses where it matters to speed: a listen
//! backlog of 4096 (socket2), `TCP_NODELAY`, a 4 KiB tungstenite read buffer, 256 KiB thread
//! stacks, and Sparky's own frame types and encoder from `sparky::common::protocol`.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use clap::Parser;
use sparky::common::protocol::{
    ClientFrame, ServerFrame, SessionId, TurnId, decode_client_frame, encode,
};
use sparky::tools::ToolChain;
use tungstenite::Message;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;

/// Sparky's listen backlog, so that a burst of connects meets the same queue.
const LISTEN_BACKLOG: i32 = 4096;

/// Sparky's tungstenite read buffer per connection.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Sparky's connection thread stack.
const CONNECTION_STACK_BYTES: usize = 256 * 1024;

/// The thought Sparky's offline model shows for plain text.
const THOUGHT: &str = "No command here, so I echo the text back.";

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    about = "Benchmark floor: a bare thread-per-connection server speaking Sparky's protocol"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
}

/// What `ready` says, computed once.
struct Greeting {
    tools: Vec<String>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = bind(args.addr)?;
    println!("listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;

    let greeting: &'static Greeting = Box::leak(Box::new(Greeting {
        tools: ToolChain::builtin().names(),
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
                    model: "offline".into(),
                    models: vec!["offline".into()],
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
                let frames = [
                    ServerFrame::UserMessage {
                        attachments: Vec::new(),
                        turn_id,
                        parent: Some(TurnId(turn - 1)),
                        text: message.text.clone(),
                        client_id: message.client_id.clone(),
                        edit_of: None,
                        regenerate_of: None,
                    },
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

/// A session id of the same shape and source as Sparky's.
fn new_session_id() -> SessionId {
    let mut bytes = [0u8; 16];
    // A failing OS random source is not worth a crash here: zeros still make a well-formed id.
    let _ = getrandom::fill(&mut bytes);
    SessionId::from_random_bytes(bytes)
}
