//! One attempt at a model step: the HTTP exchange on the turn's own thread, which reads the
//! streamed answer itself and is interrupted by a cancel shutting the attempt's agent down.
//!
//! Each attempt gets its own `ureq::Agent`. The turn's thread sends the request and reads the
//! answer, so a streamed chunk costs no hand-off between threads. A cancel must still stop a
//! read that is blocked waiting for the server: the attempt registers a hook
//! ([`ReplySink::on_cancel`]) that shuts the agent down from the cancelling thread, which shuts
//! the attempt's socket and so wakes the blocked read or write at once with an error, which the
//! turn's thread reports as the cancel it is. (Shutting the socket down was chosen over a short
//! read timeout with a flag check: it costs nothing per chunk and wakes the read at once, where
//! a timeout would add wake-ups to every idle stream and a delay to every cancel.) A connect in
//! progress cannot be interrupted this way, but it is bounded by the connect timeout, and the
//! turn gives up as soon as it returns. A sink that cannot take a hook (none in the server) is
//! looked at between the answer's lines, and the read timeout bounds a silent server.
//!
//! The reader passes the answer text on once it has read every chunk that had arrived: before
//! it reads further it passes on what is pending unless its buffer already holds another whole
//! line, so a delta adds no delay, and a turn that fell behind sends what it caught up on as
//! one delta. One `recv` takes whatever the socket holds, up to [`INPUT_BUFFER_BYTES`].
//!
//! Depends on: `common::sse`, `model`, `model::openai::retry`, `model::openai::stream`.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;
use ureq::Agent;

use super::retry::{Failure, classify, excerpt, retry_after, send_failure};
use super::stream::StreamState;
use crate::common::sse::{SseDecoder, body_start};
use crate::model::{ModelReply, ReplySink};

/// The longest line of a server-sent event stream that is read.
const MAX_LINE_BYTES: u64 = 1 << 20;

/// The most bytes of one answer that are read.
const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// Bytes of an error answer's body that are read, for the message.
const ERROR_BODY_BYTES: u64 = 16 * 1024;

/// The buffer the lines of the answer are read through. It is filled from the agent's input
/// buffer ([`INPUT_BUFFER_BYTES`], which one `recv` fills with whatever arrived), without a
/// system call while that holds more; it is small because it is zeroed once, all of it, when
/// first used, and there is one per streaming turn.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// The agent's input buffer: one `recv` reads whatever arrived, up to this. No smaller than
/// the largest response head (64 KiB, ureq's default) it must hold. Each buffer is zeroed
/// when the connection first uses it, so ureq's default (128 KiB, and as much for output)
/// would cost 256 KiB of memory a streaming turn.
pub(super) const INPUT_BUFFER_BYTES: usize = 64 * 1024;

/// The agent's output buffer: the request is written through it, in pieces of this size.
pub(super) const OUTPUT_BUFFER_BYTES: usize = 16 * 1024;

/// One HTTP exchange on its own `agent`, on the calling (turn's) thread: POSTs `body` to `url`
/// (with `api_key` as a bearer token) and reads the answer, passing what it streams to `sink`.
/// A cancel shuts the agent down, which ends the exchange at once; the agent is shut down when
/// the exchange is over, however it ends.
pub(super) fn run_attempt(
    agent: Agent,
    url: &str,
    api_key: Option<&str>,
    body: &Arc<[u8]>,
    sink: &mut dyn ReplySink,
) -> Result<ModelReply, Failure> {
    // Whatever happens below, the attempt's connection is closed when it is over.
    let _closer = Closer(Some(agent.clone()));
    let canceller = agent.clone();
    // Called on the cancelling thread: shutting the agent down closes its socket, which wakes
    // this thread from a blocked read or write. It takes only the agent's own pool lock.
    let _hook = sink.on_cancel(Box::new(move || canceller.clone().shutdown()));
    if sink.is_cancelled() {
        return Err(Failure::Cancelled);
    }
    match exchange(&agent, url, api_key, body, sink) {
        // The IO error of a socket the cancel shut down is the cancel.
        Err(_) if sink.is_cancelled() => Err(Failure::Cancelled),
        outcome => outcome,
    }
}

/// Shuts an agent down when dropped: closes its connections.
struct Closer(Option<Agent>);

impl Drop for Closer {
    fn drop(&mut self) {
        if let Some(agent) = self.0.take() {
            agent.shutdown();
        }
    }
}

/// Sends the request and reads the answer: streamed, or whole when the server answers with
/// JSON.
fn exchange(
    agent: &Agent,
    url: &str,
    api_key: Option<&str>,
    body: &Arc<[u8]>,
    sink: &mut dyn ReplySink,
) -> Result<ModelReply, Failure> {
    let mut request = agent
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream");
    if let Some(key) = api_key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = request.send(&body[..]).map_err(send_failure)?;
    let status = response.status();
    if !status.is_success() {
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let text = body_start(response, ERROR_BODY_BYTES);
        return Err(classify(
            status.as_u16(),
            &status.to_string(),
            &text,
            retry_after,
        ));
    }
    let streamed = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_none_or(|value| !value.contains("application/json"));
    let reader = BufReader::with_capacity(
        READ_BUFFER_BYTES,
        response.into_body().into_reader().take(MAX_ANSWER_BYTES),
    );
    if streamed {
        return read_stream(reader, sink);
    }
    whole(reader, sink)
}

/// Reads an answer that was not streamed: one JSON object.
fn whole(mut reader: impl Read, sink: &mut dyn ReplySink) -> Result<ModelReply, Failure> {
    let mut text = Vec::new();
    reader
        .read_to_end(&mut text)
        .map_err(|e| Failure::Fatal(format!("reading the model server's answer failed: {e}")))?;
    let text = String::from_utf8_lossy(&text);
    let answer: Value = serde_json::from_str(&text).map_err(|e| {
        Failure::Fatal(format!(
            "the model server's answer is not JSON ({e}): {}",
            excerpt(&text)
        ))
    })?;
    let mut stream = StreamState::new();
    stream.chunk(&answer, sink)?;
    if sink.is_cancelled() {
        return Err(Failure::Cancelled);
    }
    Ok(stream.finish(sink))
}

/// Reads server-sent events until `[DONE]` or the end of the body, building the reply.
fn read_stream<R: Read>(
    mut reader: BufReader<R>,
    sink: &mut dyn ReplySink,
) -> Result<ModelReply, Failure> {
    let mut stream = StreamState::new();
    let mut decoder = SseDecoder::default();
    let mut line = Vec::new();
    loop {
        if sink.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        // Every chunk that had arrived is read when no whole line is left in the buffer: the
        // text goes on before the next read waits.
        if !reader.buffer().contains(&b'\n') {
            stream.flush(sink);
        }
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut line);
        let data = match read {
            Ok(0) => match decoder.finish() {
                Some(data) => data,
                None => return Ok(stream.finish(sink)),
            },
            Ok(_) if line.last() != Some(&b'\n') && line.len() as u64 >= MAX_LINE_BYTES => {
                return Err(Failure::Fatal(
                    "the model server sent an overlong line".into(),
                ));
            }
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                match decoder.line(text.trim_end_matches(['\n', '\r'])) {
                    Some(data) => data,
                    None => continue,
                }
            }
            Err(e) => {
                return Err(Failure::Fatal(format!(
                    "the model server's stream broke off: {e}"
                )));
            }
        };
        if data.trim() == "[DONE]" {
            return Ok(stream.finish(sink));
        }
        if stream.event(&data, sink)? {
            return Ok(stream.finish(sink));
        }
    }
}
