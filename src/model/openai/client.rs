//! One attempt at a model step: an HTTP exchange on a `model-http` helper thread, and the
//! turn's thread waiting for what it streams, woken when the turn is cancelled.
//!
//! Each attempt gets its own `ureq::Agent` and a helper thread (`model-http`) that sends the
//! request and reads the answer, passing each server-sent event to the turn's thread over a
//! small bounded channel. The turn's thread waits on that channel in short slices and checks
//! the turn's cancel flag between them, so a cancelled turn gives up at once, whether the server
//! has started answering or not. Giving up (or finishing) shuts the attempt's agent down, which
//! closes its connection and wakes the helper from any blocked read or write; the helper then
//! ends. A connect in progress cannot be interrupted, but it is bounded by the connect timeout,
//! and the helper ends when it runs out.
//!
//! Depends on: `common::sse`, `model`, `model::openai::retry`, `model::openai::stream`.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender, select};
use serde_json::Value;
use ureq::Agent;

use super::retry::{Failure, classify, excerpt, retry_after, send_failure};
use super::stream::{StreamState, parse_event};
use crate::common::sse::{SseDecoder, body_start};
use crate::model::{ModelReply, ReplySink};

/// How often the turn's thread looks at the cancel flag while it waits for the server, when its
/// sink cannot wake it on cancel.
const POLL_SLICE: Duration = Duration::from_millis(20);

/// The longest the turn's thread waits for its helper without looking around, when its sink
/// wakes it on cancel. The helper's own timeouts end every request; this only bounds the wait.
const WAIT_SLICE: Duration = Duration::from_secs(1);

/// Events queued between the helper thread and the turn's thread at most.
const CHANNEL_CAPACITY: usize = 64;

/// The longest line of a server-sent event stream that is read.
const MAX_LINE_BYTES: u64 = 1 << 20;

/// The most bytes of one answer that are read.
const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// Bytes of an error answer's body that are read, for the message.
const ERROR_BODY_BYTES: u64 = 16 * 1024;

/// Stack of the helper thread: room for a TLS handshake in a debug build (only the pages
/// touched count).
const HELPER_STACK_BYTES: usize = 1 << 20;

/// One HTTP exchange on its own `agent`: POSTs `body` to `url` (with `api_key` as a bearer
/// token) from a `model-http` helper thread and reads the answer, passing what it streams to
/// `sink`. The agent is shut down when the exchange is over, however it ends.
pub(super) fn run_attempt(
    agent: Agent,
    url: &str,
    api_key: Option<&str>,
    body: &Arc<[u8]>,
    sink: &mut dyn ReplySink,
) -> Result<ModelReply, Failure> {
    // Whatever happens below, the attempt's connection is closed when it is over, which
    // also wakes the helper from a blocked read so that it ends.
    let _closer = Closer(Some(agent.clone()));
    let (events, received) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
    let exchange = Exchange {
        agent,
        url: url.to_owned(),
        api_key: api_key.map(str::to_owned),
        body: body.clone(),
        events,
    };
    thread::Builder::new()
        .name("model-http".into())
        .stack_size(HELPER_STACK_BYTES)
        .spawn(move || exchange.run())
        .map_err(|e| Failure::Fatal(format!("no thread for the request: {e}")))?;
    receive(&received, sink)
}

/// Shuts an agent down when dropped: closes its connections, waking any blocked IO.
struct Closer(Option<Agent>);

impl Drop for Closer {
    fn drop(&mut self) {
        if let Some(agent) = self.0.take() {
            agent.shutdown();
        }
    }
}

/// What the helper thread passes to the turn's thread.
#[derive(Debug)]
enum Event {
    /// The data of one server-sent event.
    Data(String),
    /// A whole JSON answer (the server did not stream).
    Whole(String),
    /// The answer is complete.
    End,
    /// The attempt failed.
    Failed(Failure),
}

/// One request, as the helper thread runs it.
struct Exchange {
    agent: Agent,
    url: String,
    api_key: Option<String>,
    body: Arc<[u8]>,
    events: Sender<Event>,
}

impl Exchange {
    /// Sends the request and passes the answer on, event by event. Ends when the answer does,
    /// when it fails, or when the turn's thread stops listening (a send fails) or shuts the
    /// agent down (IO fails).
    fn run(self) {
        let mut request = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "text/event-stream");
        if let Some(key) = &self.api_key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = match request.send(&self.body[..]) {
            Ok(response) => response,
            Err(e) => {
                let _ = self.events.send(Event::Failed(send_failure(e)));
                return;
            }
        };
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers(), SystemTime::now());
            let text = body_start(response, ERROR_BODY_BYTES);
            let failure = classify(status.as_u16(), &status.to_string(), &text, retry_after);
            let _ = self.events.send(Event::Failed(failure));
            return;
        }
        let streamed = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_none_or(|value| !value.contains("application/json"));
        let reader = response.into_body().into_reader().take(MAX_ANSWER_BYTES);
        if streamed {
            self.stream(BufReader::new(reader));
        } else {
            let mut text = Vec::new();
            let event = match BufReader::new(reader).read_to_end(&mut text) {
                Ok(_) => Event::Whole(String::from_utf8_lossy(&text).into_owned()),
                Err(e) => Event::Failed(Failure::Fatal(format!(
                    "reading the model server's answer failed: {e}"
                ))),
            };
            if self.events.send(event).is_ok() {
                let _ = self.events.send(Event::End);
            }
        }
    }

    /// Reads server-sent events until `[DONE]` or the end of the body.
    fn stream(&self, mut reader: impl BufRead) {
        let mut decoder = SseDecoder::default();
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut reader)
                .take(MAX_LINE_BYTES)
                .read_until(b'\n', &mut line);
            let data = match read {
                Ok(0) => match decoder.finish() {
                    Some(data) => data,
                    None => {
                        let _ = self.events.send(Event::End);
                        return;
                    }
                },
                Ok(_) if line.last() != Some(&b'\n') && line.len() as u64 >= MAX_LINE_BYTES => {
                    let failure = Failure::Fatal("the model server sent an overlong line".into());
                    let _ = self.events.send(Event::Failed(failure));
                    return;
                }
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    match decoder.line(text.trim_end_matches(['\n', '\r'])) {
                        Some(data) => data,
                        None => continue,
                    }
                }
                Err(e) => {
                    let failure =
                        Failure::Fatal(format!("the model server's stream broke off: {e}"));
                    let _ = self.events.send(Event::Failed(failure));
                    return;
                }
            };
            if data.trim() == "[DONE]" {
                let _ = self.events.send(Event::End);
                return;
            }
            if self.events.send(Event::Data(data)).is_err() {
                return;
            }
        }
    }
}

/// Waits for the helper's events, woken at once when the turn is cancelled, and builds the
/// reply.
fn receive(received: &Receiver<Event>, sink: &mut dyn ReplySink) -> Result<ModelReply, Failure> {
    let mut stream = StreamState::new();
    let (cancelled, woken) = crossbeam_channel::bounded::<()>(1);
    let hook = sink.on_cancel(Box::new(move || {
        let _ = cancelled.try_send(());
    }));
    let idle = if hook.is_some() {
        WAIT_SLICE
    } else {
        POLL_SLICE
    };
    loop {
        // `None`: woken by a cancel, or time to look at it; `Some(Err)`: the helper is gone.
        let event = select! {
            recv(received) -> event => Some(event),
            recv(woken) -> _ => None,
            default(idle) => None,
        };
        match event {
            None => {}
            Some(Err(_)) => {
                return Err(Failure::Fatal("the request ended without an answer".into()));
            }
            Some(Ok(Event::Data(data))) => {
                for chunk in parse_event(&data)? {
                    match chunk {
                        Some(chunk) => stream.chunk(&chunk, sink)?,
                        None => return Ok(stream.finish(sink)),
                    }
                }
            }
            Some(Ok(Event::Whole(text))) => {
                let answer: Value = serde_json::from_str(&text).map_err(|e| {
                    Failure::Fatal(format!(
                        "the model server's answer is not JSON ({e}): {}",
                        excerpt(&text)
                    ))
                })?;
                stream.chunk(&answer, sink)?;
            }
            Some(Ok(Event::End)) => return Ok(stream.finish(sink)),
            Some(Ok(Event::Failed(failure))) => return Err(failure),
        }
        if sink.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        if received.is_empty() {
            stream.flush(sink);
        }
    }
}
