//! A client that stops reading while an answer streams, then reads everything: the pieces
//! that waited for its socket arrive merged into fewer `message_delta` frames, in order, and
//! together they are the final answer (issue 26; PROTOCOL.md section 5).

mod support;

use std::net::TcpStream;
use std::sync::Arc;

use serde_json::json;
use sparky::common::error::Result;
use sparky::common::protocol::ServerFrame;
use sparky::model::{Conversation, ModelBackend, ModelReply, ReplySink, ToolSpec};
use support::{Client, TestServer, WAIT, kind};

/// Pieces the model streams: more than a connection may have waiting (1,024 frames), so that
/// without merging the slow client would be let go.
const PIECES: usize = 3_000;

/// A model that streams `PIECES` numbered pieces as fast as it can.
struct Flood;

fn piece(n: usize) -> String {
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
        for n in 0..PIECES {
            let piece = piece(n);
            sink.delta(&piece);
            text.push_str(&piece);
        }
        Ok(ModelReply {
            text,
            ..ModelReply::default()
        })
    }
}

/// A client whose socket takes little (a 4 KiB receive buffer), so that the server's writes
/// soon find it full.
fn slow_client(server: &TestServer) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let (ws, _) = tungstenite::client(format!("ws://{}/ws", server.addr), stream).unwrap();
    let mut client = Client {
        ws,
        seen: Vec::new(),
        session_id: None,
        last_seq: 0,
    };
    client.send(json!({"type": "connect", "data": {}}));
    let info = client.expect("session_info");
    let ServerFrame::SessionInfo { session_id, .. } = info.frame else {
        unreachable!()
    };
    client.session_id = Some(session_id);
    client.expect("ready");
    client
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
            _ => assert_ne!(kind(&frame), "error", "{frame:?}"),
        }
    }
}

#[test]
fn a_client_that_stops_reading_gets_every_piece_merged_in_order() {
    let server = TestServer::with_model(|_| {}, Arc::new(Flood));
    let mut slow = slow_client(&server);
    let id = slow.session_id.clone().unwrap();
    let mut watcher = Client::connect(server.addr, json!({"session_id": id.as_str()}));
    slow.say("go");
    // The watcher reads the whole answer while the slow client reads nothing.
    let (_, watched) = read_turn(&mut watcher);
    let expected: String = (0..PIECES).map(piece).collect();
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
        deltas.len() < PIECES / 2,
        "{} delta frames for {PIECES} pieces: the waiting ones were not merged",
        deltas.len()
    );
    // The connection is still there: nothing let it go.
    assert_eq!(slow.ask("again"), expected);
}
