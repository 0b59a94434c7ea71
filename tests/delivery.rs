//! Write-through delivery under a full socket: frames that the socket does not take wait in the
//! connection's pending buffer, the connection thread is woken to write them out once the peer
//! reads again, and nothing is lost or reordered on the way. `message_delta` frames that wait
//! next to each other are merged (issue 26): fewer, longer pieces, in order, none dropped.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use socket2::{Domain, Socket, Type};
use sparky::common::error::{Error, Result};
use sparky::common::metrics::Metrics;
use sparky::common::protocol::ServerFrame;
use sparky::model::{Conversation, ModelBackend, ModelReply, ReplySink, ToolSpec};
use support::{Client, TestServer, WAIT, wait_until};

/// Bytes of padding in each streamed piece.
const PIECE_BYTES: usize = 32 * 1024;

/// Pieces the model streams at most before the socket must have filled: 16 MiB, far past any
/// loopback socket buffer.
const MAX_PIECES: usize = 512;

/// Pieces (with a thought in their middle) the model streams once the socket is full.
const PIECES_WHILE_FULL: usize = 20;

/// What the test tells the model after each piece.
enum Step {
    /// Stream another piece.
    More,
    /// The socket is full: stream the last pieces and a thought, then answer.
    Finish,
}

/// A model that streams its answer in numbered pieces from the turn thread, one at a time, as
/// the test says, and reports each piece once it has been emitted (and so written, or left
/// pending, by the turn thread).
struct Streamer {
    steps: Mutex<Receiver<Step>>,
    emitted: Mutex<Sender<usize>>,
}

impl ModelBackend for Streamer {
    fn name(&self) -> String {
        "streamer".into()
    }

    fn complete(
        &self,
        _conversation: Conversation<'_>,
        _tools: &[ToolSpec],
        sink: &mut dyn ReplySink,
    ) -> Result<ModelReply> {
        let padding = "x".repeat(PIECE_BYTES);
        let mut answer = String::new();
        let mut piece = |i: usize, sink: &mut dyn ReplySink| {
            let text = format!("<{i}>{padding}");
            sink.delta(&text);
            answer.push_str(&text);
        };
        let steps = self.steps.lock();
        let emitted = self.emitted.lock();
        let mut i = 0;
        loop {
            piece(i, sink);
            let _ = emitted.send(i);
            i += 1;
            match steps.recv_timeout(WAIT) {
                Ok(Step::More) if i < MAX_PIECES => {}
                Ok(Step::Finish) => break,
                _ => {
                    return Err(Error::Model {
                        backend: "streamer".into(),
                        detail: "the test stopped steering".into(),
                    });
                }
            }
        }
        for _ in 0..PIECES_WHILE_FULL / 2 {
            piece(i, sink);
            i += 1;
        }
        sink.thought(&format!("after {i} pieces"));
        for _ in 0..PIECES_WHILE_FULL / 2 {
            piece(i, sink);
            i += 1;
        }
        Ok(ModelReply {
            text: answer,
            ..ModelReply::default()
        })
    }
}

/// A client whose socket has a small receive buffer, so that the server's side fills up fast.
fn small_buffer_client(addr: SocketAddr) -> Client {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let (ws, _) = tungstenite::client(format!("ws://{addr}/ws"), stream).unwrap();
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    Client {
        ws,
        seen: Vec::new(),
        session_id: None,
        last_seq: 0,
    }
}

#[test]
fn frames_written_while_the_socket_is_full_arrive_once_the_client_reads_again_in_order() {
    let (steer, steps) = channel();
    let (emitted_out, emitted) = channel();
    let model = Streamer {
        steps: Mutex::new(steps),
        emitted: Mutex::new(emitted_out),
    };
    let server = TestServer::with_model(
        |config| {
            config.rate_limit = None;
            config.max_frame_bytes = 16 << 20;
        },
        Arc::new(model),
    );
    let mut client = small_buffer_client(server.addr);
    client.send(json!({"type": "connect", "data": {}}));
    client.expect("session_info");
    client.expect("ready");
    client.say("go");
    // The client reads nothing now. The model streams piece after piece until a write leaves
    // bytes pending (the socket is full); then it streams more, with a thought among them,
    // all of which must wait for the connection thread, which must be woken to poll for room.
    let metrics: &Metrics = server.handle.metrics();
    let pieces = loop {
        let pieces = emitted.recv_timeout(WAIT).expect("the model stopped") + 1;
        if Metrics::get(&metrics.writes_deferred) > 0 {
            steer.send(Step::Finish).unwrap();
            break pieces;
        }
        assert!(pieces < MAX_PIECES, "the socket never filled up");
        steer.send(Step::More).unwrap();
    };
    let total = pieces + PIECES_WHILE_FULL;
    wait_until("the turn to end", || {
        Metrics::get(&metrics.turns_completed) == 1
    });
    // Now it reads: every piece and the thought arrive, once, in the order they were made.
    client.expect("user_message");
    let mut next_piece = 0;
    let mut thought_seen = false;
    loop {
        let frame = client.next();
        match frame.frame {
            ServerFrame::MessageDelta { text, replace, .. } => {
                assert!(!replace);
                // Pieces that waited together may come as one frame: each whole, in order.
                let mut rest = text.as_str();
                while !rest.is_empty() {
                    let expected = format!("<{next_piece}>");
                    assert!(
                        rest.starts_with(&expected),
                        "expected piece {next_piece}, got {}",
                        &rest[..rest.len().min(12)]
                    );
                    let end = expected.len() + PIECE_BYTES;
                    assert!(rest[expected.len()..end].bytes().all(|b| b == b'x'));
                    rest = &rest[end..];
                    next_piece += 1;
                }
            }
            ServerFrame::Thought { text, .. } => {
                assert!(!thought_seen);
                let at = pieces + PIECES_WHILE_FULL / 2;
                assert_eq!(text, format!("after {at} pieces"));
                assert_eq!(
                    next_piece, at,
                    "the thought overtook a piece or fell behind one"
                );
                thought_seen = true;
            }
            ServerFrame::Message { text, .. } => {
                assert_eq!(next_piece, total, "the message overtook a piece");
                assert!(thought_seen);
                assert!(text.starts_with("<0>"));
                break;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    // The connection is still live afterwards.
    client.say("again");
    client.expect("user_message");
}

/// Pieces the model streams: more than a connection may have waiting (1,024 frames), so that
/// without merging the slow client would be let go.
const FLOOD_PIECES: usize = 3_000;

/// A model that streams `FLOOD_PIECES` numbered pieces as fast as it can.
struct Flood;

fn flood_piece(n: usize) -> String {
    format!("<{n:04} {}>", "é\"\\".repeat(20))
}

impl ModelBackend for Flood {
    fn name(&self) -> String {
        "flood".into()
    }

    fn complete(
        &self,
        _conversation: Conversation<'_>,
        _tools: &[ToolSpec],
        sink: &mut dyn ReplySink,
    ) -> Result<ModelReply> {
        let mut text = String::new();
        for n in 0..FLOOD_PIECES {
            let piece = flood_piece(n);
            sink.delta(&piece);
            text.push_str(&piece);
        }
        Ok(ModelReply {
            text,
            ..ModelReply::default()
        })
    }
}

/// Reads one turn's frames up to its closing `message`: the deltas' texts, in order, and the
/// answer.
fn read_turn(client: &mut Client) -> (Vec<String>, String) {
    let mut deltas = Vec::new();
    loop {
        let frame = client.next();
        match frame.frame {
            ServerFrame::MessageDelta { text, replace, .. } => {
                assert!(!replace, "no connection attached mid-answer");
                deltas.push(text);
            }
            ServerFrame::Message { text, .. } => return (deltas, text),
            ServerFrame::Error { .. } => panic!("{frame:?}"),
            _ => {}
        }
    }
}

#[test]
fn a_client_that_stops_reading_gets_every_piece_merged_in_order() {
    let server = TestServer::with_model(|_| {}, Arc::new(Flood));
    let mut slow = small_buffer_client(server.addr);
    slow.send(json!({"type": "connect", "data": {}}));
    let ServerFrame::SessionInfo { session_id: id, .. } = slow.expect("session_info").frame else {
        unreachable!()
    };
    slow.expect("ready");
    let mut watcher = Client::connect(server.addr, json!({"session_id": id.as_str()}));
    slow.say("go");
    // The watcher reads the whole answer while the slow client reads nothing.
    let (_, watched) = read_turn(&mut watcher);
    let expected: String = (0..FLOOD_PIECES).map(flood_piece).collect();
    assert_eq!(watched, expected);
    // Now the slow client reads everything that waited for it.
    let (deltas, answer) = read_turn(&mut slow);
    assert_eq!(answer, expected);
    assert_eq!(
        deltas.concat(),
        expected,
        "the pieces, in order, are the answer"
    );
    assert!(
        deltas.len() < FLOOD_PIECES / 2,
        "{} delta frames for {FLOOD_PIECES} pieces: the waiting ones were not merged",
        deltas.len()
    );
    // The connection is still there: nothing let it go.
    assert_eq!(slow.ask("again"), expected);
}
