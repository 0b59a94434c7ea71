//! Write-through delivery under a full socket: frames that the socket does not take wait in the
//! connection's pending buffer, the connection thread is woken to write them out once the peer
//! reads again, and nothing is lost or reordered on the way.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use socket2::{Domain, Socket, Type};
use sparky::error::Result;
use sparky::metrics::Metrics;
use sparky::model::{Conversation, ModelBackend, ModelReply, ReplySink, ToolSpec};
use sparky::protocol::ServerFrame;
use support::{Client, TestServer, WAIT, wait_until};

/// Pieces the model streams in one answer, and the size of each.
const PIECES: usize = 150;
const PIECE_BYTES: usize = 32 * 1024;

/// A model that streams its answer in numbered pieces from the turn thread, with a numbered
/// thought (an event, written by the journal thread) after every tenth piece.
struct Streamer;

impl ModelBackend for Streamer {
    fn name(&self) -> &str {
        "streamer"
    }

    fn complete(
        &self,
        _conversation: Conversation<'_>,
        _tools: &[ToolSpec],
        sink: &mut dyn ReplySink,
    ) -> Result<ModelReply> {
        let padding = "x".repeat(PIECE_BYTES);
        let mut answer = String::new();
        for i in 0..PIECES {
            let piece = format!("<{i}>{padding}");
            sink.delta(&piece);
            answer.push_str(&piece);
            if i % 10 == 9 {
                sink.thought(&format!("thought {i}"));
            }
        }
        Ok(ModelReply {
            text: answer,
            tool_calls: Vec::new(),
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
    let server = TestServer::with_model(
        |config| {
            config.rate_limit = None;
            config.max_frame_bytes = 16 << 20;
        },
        Arc::new(Streamer),
    );
    let mut client = small_buffer_client(server.addr);
    client.send(json!({"type": "connect", "data": {}}));
    client.expect("session_info");
    client.expect("ready");
    client.say("go");
    // The client reads nothing until the turn is over, so the server's socket buffer fills
    // (a few MB on loopback) and the rest of the answer waits in the connection's buffer.
    let metrics: &Metrics = server.handle.metrics();
    wait_until("the turn to end", || {
        Metrics::get(&metrics.turns_completed) == 1
    });
    assert!(
        metrics.writes_deferred.load(Ordering::SeqCst) > 0,
        "the socket never filled up; the test proves nothing"
    );
    // Now it reads: every piece and thought arrives, once, in the order it was produced.
    client.expect("user_message");
    let mut next_piece = 0;
    let mut next_thought = 9;
    loop {
        let frame = client.next();
        match frame.frame {
            ServerFrame::MessageDelta { text, replace, .. } => {
                assert!(!replace);
                let expected = format!("<{next_piece}>");
                assert!(
                    text.starts_with(&expected),
                    "expected piece {next_piece}, got {}",
                    &text[..text.len().min(12)]
                );
                assert_eq!(text.len(), expected.len() + PIECE_BYTES);
                next_piece += 1;
            }
            ServerFrame::Thought { text, .. } => {
                assert_eq!(text, format!("thought {next_thought}"));
                assert_eq!(next_piece, next_thought + 1, "the thought overtook a piece");
                next_thought += 10;
            }
            ServerFrame::Message { text, .. } => {
                assert_eq!(next_piece, PIECES, "the message overtook a piece");
                assert!(text.starts_with("<0>"));
                break;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    // The connection is still live afterwards.
    client.say("/echo again");
    let user = client.expect("user_message");
    assert!(matches!(user.frame, ServerFrame::UserMessage { .. }));
}
