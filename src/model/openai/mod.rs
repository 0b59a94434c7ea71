//! `RemoteModel`: a client for OpenAI-compatible chat-completions servers (Ollama, llama.cpp's
//! server, vLLM, OpenAI and the like), streamed with server-sent events. This is the only
//! outbound HTTP in the crate.
//!
//! # How a model step runs
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
//! # Retries
//!
//! Connection failures, 408, 429 and 5xx answers are tried again, up to
//! [`RetryPolicy::max_retries`] times, after an exponential backoff with jitter, or after what
//! the server's `Retry-After` (or `retry-after-ms`) header asks for. Each retry is announced
//! through [`ReplySink::retrying`], and the wait is cut short when the turn is cancelled. A
//! failure after the answer started streaming is not retried: part of it was shown already.
//! A 400 (or 422) whose body says that the conversation history is malformed becomes
//! [`Error::HistoryRejected`], which the bot answers by resetting the history and trying once
//! more.
//!
//! Depends on: `common::error`, `common::protocol`, `model`.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, select};
use serde_json::{Map, Value, json};
use ureq::Agent;

use crate::common::error::{Error, Result};
use crate::common::protocol::Usage;
use crate::model::is_failure_note;
use crate::model::{
    Conversation, ModelBackend, ModelHealth, ModelReply, ReplySink, Role, ToolArgs, ToolCall,
    ToolSpec,
};

/// How often the turn's thread looks at the cancel flag while it waits for the server, when its
/// sink cannot wake it on cancel.
const POLL_SLICE: Duration = Duration::from_millis(20);

/// The longest the turn's thread waits for its helper without looking around, when its sink
/// wakes it on cancel. The helper's own timeouts end every request; this only bounds the wait.
const WAIT_SLICE: Duration = Duration::from_secs(1);

/// Streamed answer text is passed on at most this often (the first piece at once): one event
/// per token would flood the session's event log and its store.
const DELTA_INTERVAL: Duration = Duration::from_millis(50);

/// Reasoning longer than this is shown in parts, cut at a paragraph break, rather than waiting
/// for the end of the reasoning.
const THOUGHT_PART_CHARS: usize = 2_000;

/// Events queued between the helper thread and the turn's thread at most.
const CHANNEL_CAPACITY: usize = 64;

/// The longest line of a server-sent event stream that is read.
const MAX_LINE_BYTES: u64 = 1 << 20;

/// The most bytes of one answer that are read.
const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// Bytes of an error answer's body that are read, for the message.
const ERROR_BODY_BYTES: u64 = 16 * 1024;

/// Characters of an error answer that go into the error message.
const ERROR_EXCERPT_CHARS: usize = 500;

/// A `Retry-After` longer than this is not waited for: the turn fails and says so.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Stack of the helper thread: room for a TLS handshake in a debug build (only the pages
/// touched count).
const HELPER_STACK_BYTES: usize = 1 << 20;

/// Phrases (lowercase) with which servers reject a conversation whose tool messages do not
/// follow the assistant message that called them, or whose roles are out of order.
/// How servers say that the conversation does not fit the model's context: llama.cpp's
/// server, Ollama, vLLM and OpenAI, as seen in their answers. The history is then dropped and
/// the step tried once more, so that one long conversation does not fail every later turn.
const CONTEXT_OVERFLOW: &[&str] = &[
    "exceeds the available context size",
    "maximum context length",
    "context_length_exceeded",
    "context length exceeded",
    "exceeds the context window",
    "prompt is too long",
    "too many tokens",
];

/// How servers say that the request itself is wrong, whatever status they answer it with
/// (llama-cpp-python answers a schema error with a 500): trying it again cannot help.
const INVALID_REQUEST: &[&str] = &[
    "validation error",
    "invalid_request_error",
    "invalid request",
    "input should be",
    "field required",
];

const MALFORMED_HISTORY: &[&str] = &[
    // OpenAI (with its spelling), vLLM, LiteLLM.
    "must be a response to a preceeding message with 'tool_calls'",
    "must be a response to a preceding message with 'tool_calls'",
    "must be followed by tool messages responding to each 'tool_call_id'",
    "did not have response messages",
    // Gemini's OpenAI-compatible endpoint.
    "function response turn comes immediately after a function call turn",
    "function call turn comes immediately after a user turn",
    // Anthropic-style tool blocks behind a compatible proxy.
    "tool_use ids were found without tool_result blocks",
    "unexpected `tool_use_id` found in `tool_result` blocks",
    // Mistral and chat templates that insist on alternating roles.
    "unexpected role 'tool'",
    "not the same number of function calls and responses",
    "roles must alternate",
];

/// Numbers the tool calls a server sent without an id, unique for the process.
static NEXT_CALL_ID: AtomicU64 = AtomicU64::new(1);

/// How failed requests are tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt, at most.
    pub max_retries: u32,
    /// The wait before the first retry; each later one doubles it (then up to half is taken
    /// off at random, so that many clients do not retry in step).
    pub base_delay: Duration,
    /// The longest wait computed by backoff (a server's `Retry-After` may ask for more, up to
    /// two minutes).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// Where and how a [`RemoteModel`] reaches its server.
#[derive(Clone)]
pub struct RemoteOptions {
    /// The API's base URL, up to and including `/v1`, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// The model to ask for by default, e.g. `llama3.1`; also the name clients see in `ready`.
    /// [`AUTO_MODELS`] (`auto`): whatever the server lists (`GET /models`), the first being
    /// the default.
    pub model: String,
    /// Further models a conversation may choose instead of `model`.
    pub other_models: Vec<String>,
    /// Sent as `Authorization: Bearer …` when set. Never logged.
    pub api_key: Option<String>,
    /// How long connecting (with the TLS handshake) may take.
    pub connect_timeout: Duration,
    /// How long the server may stay silent: before its answer starts, and between two pieces
    /// of it.
    pub read_timeout: Duration,
    /// How failed requests are tried again.
    pub retry: RetryPolicy,
    /// True when the model takes images (`image_url` content parts): the images tools return
    /// are sent to it (`--model-vision`). Otherwise it reads only their notes.
    pub vision: bool,
}

impl RemoteOptions {
    /// Options for `model` at `base_url`, with no key and the default timeouts (10 s to
    /// connect, 300 s of silence: a local server may first load the model) and retries.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        RemoteOptions {
            base_url: base_url.into(),
            model: model.into(),
            other_models: Vec::new(),
            api_key: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            retry: RetryPolicy::default(),
            vision: false,
        }
    }
}

impl fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("other_models", &self.other_models)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("retry", &self.retry)
            .field("vision", &self.vision)
            .finish()
    }
}

/// The largest `GET /models` answer read.
const MAX_MODELS_BODY_BYTES: u64 = 1 << 20;

/// The `--model-name` that lists the server's models instead of naming them.
pub const AUTO_MODELS: &str = "auto";

/// Models of a server's list that are offered at most; the rest are left out.
pub const MAX_MODELS: usize = 100;

/// The longest model name kept from a server's list.
const MAX_MODEL_NAME_BYTES: usize = 200;

/// A model behind an OpenAI-compatible `POST {base_url}/chat/completions` endpoint.
#[derive(Debug)]
pub struct RemoteModel {
    options: RemoteOptions,
    endpoint: String,
    /// What the last request or probe found.
    health: parking_lot::Mutex<ModelHealth>,
    /// Set once the server refused `stream_options`: it is not asked for again.
    usage_refused: AtomicBool,
    /// The context window the server reported (llama.cpp's `/props`, Ollama's `/api/show`);
    /// 0 until it did.
    window: AtomicU64,
    /// True when the models are the server's list (`--model-name auto`).
    auto: bool,
    /// The models a conversation may choose, the default first; with `auto`, the server's
    /// list as last read (empty before the first answer).
    models: parking_lot::RwLock<Vec<String>>,
}

/// The context window assumed for a server that does not say: small local models have 2k to
/// 8k tokens, and a server that overflows answers with an error the bot recovers from.
pub const DEFAULT_CONTEXT_TOKENS: usize = 4096;

impl RemoteModel {
    /// A backend that asks the server described by `options`. Nothing is sent until a turn
    /// needs it.
    pub fn new(options: RemoteOptions) -> Self {
        let endpoint = format!(
            "{}/chat/completions",
            options.base_url.trim_end_matches('/')
        );
        let auto = options.model == AUTO_MODELS;
        let mut models = Vec::new();
        if !auto {
            for name in std::iter::once(&options.model).chain(&options.other_models) {
                if !models.contains(name) {
                    models.push(name.clone());
                }
            }
        }
        RemoteModel {
            options,
            endpoint,
            health: parking_lot::Mutex::default(),
            usage_refused: AtomicBool::new(false),
            window: AtomicU64::new(0),
            auto,
            models: parking_lot::RwLock::new(models),
        }
    }

    /// Records how the server answered a request or probe.
    fn record(&self, outcome: std::result::Result<(), &str>) {
        let mut health = self.health.lock();
        health.reachable = Some(outcome.is_ok());
        health.last_error = outcome.err().map(str::to_owned);
    }

    /// The server's root URL: the base URL without its `/v1`.
    fn root(&self) -> &str {
        let base = self.options.base_url.trim_end_matches('/');
        base.strip_suffix("/v1").unwrap_or(base)
    }

    /// The context window, from llama.cpp's `GET /props` (`n_ctx`, at the top or under
    /// `default_generation_settings`), else from Ollama's `POST /api/show` for the default
    /// model (`num_ctx` in its parameters, else its `model_info`'s `*.context_length`);
    /// `None` from servers that say neither.
    fn ask_for_window(&self) -> Option<u64> {
        let props = self
            .read_json(self.agent().get(&format!("{}/props", self.root())).call())
            .and_then(|props| {
                props["n_ctx"]
                    .as_u64()
                    .or_else(|| props["default_generation_settings"]["n_ctx"].as_u64())
            })
            .filter(|n| *n > 0);
        if props.is_some() {
            return props;
        }
        let model = self.name();
        let show = self.read_json(
            self.agent()
                .post(&format!("{}/api/show", self.root()))
                .header("Content-Type", "application/json")
                .send(json!({ "model": model }).to_string()),
        )?;
        ollama_window(&show)
    }

    /// The JSON body of a `200` answer, or `None`.
    fn read_json(
        &self,
        answer: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Option<Value> {
        let mut response = answer.ok()?;
        if response.status().as_u16() != 200 {
            return None;
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_MODELS_BODY_BYTES)
            .read_to_string()
            .ok()?;
        serde_json::from_str(&body).ok()
    }

    /// `GET {base_url}/models`: is the server there, and does it serve the model?
    fn ask_for_models(&self) -> std::result::Result<(), String> {
        let base = self.options.base_url.trim_end_matches('/');
        let url = format!("{base}/models");
        let mut request = self.agent().get(&url);
        if let Some(key) = &self.options.api_key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let mut response = request
            .call()
            .map_err(|e| format!("cannot reach the model server at {base}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_MODELS_BODY_BYTES)
            .read_to_string()
            .map_err(|e| format!("the model server at {base} sent an unreadable answer: {e}"))?;
        if status != 200 {
            return Err(format!(
                "the model server at {base} answered GET /models with {status}: {}",
                error_message(&body)
            ));
        }
        let served: Vec<String> = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|value| {
                value["data"].as_array().map(|models| {
                    models
                        .iter()
                        .filter_map(|m| m["id"].as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default();
        if self.auto {
            let mut listed: Vec<String> = Vec::new();
            for name in served {
                if listed.len() < MAX_MODELS
                    && !name.is_empty()
                    && name.len() <= MAX_MODEL_NAME_BYTES
                    && !listed.contains(&name)
                {
                    listed.push(name);
                }
            }
            if listed.is_empty() {
                return Err(format!(
                    "the model server at {base} lists no models (--model-name auto)"
                ));
            }
            let mut models = self.models.write();
            if *models != listed {
                log::info!("model: the server lists {}", listed.join(", "));
                *models = listed;
            }
            return Ok(());
        }
        // Some servers (llama.cpp's) serve whatever name is asked for; an empty or unreadable
        // list is no evidence against a model.
        let missing: Vec<String> = self
            .models
            .read()
            .iter()
            .filter(|name| !served.is_empty() && !served.contains(name))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the model server at {base} does not serve {}; it serves: {}",
                missing
                    .iter()
                    .map(|name| format!("{name:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                served.join(", ")
            ))
        }
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A fresh agent for one attempt: shutting it down ends that attempt and nothing else.
    fn agent(&self) -> Agent {
        let connect = Some(self.options.connect_timeout);
        let read = Some(self.options.read_timeout);
        Agent::config_builder()
            .http_status_as_error(false)
            .timeout_resolve(connect)
            .timeout_connect(connect)
            .timeout_per_read(read)
            .timeout_per_write(read)
            .max_idle_connections(0)
            .user_agent(concat!("sparky/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    }

    /// One HTTP exchange: sends `body` and reads the answer, passing what it streams to
    /// `sink`.
    fn attempt(&self, body: &Arc<[u8]>, sink: &mut dyn ReplySink) -> Result<ModelReply, Failure> {
        let agent = self.agent();
        // Whatever happens below, the attempt's connection is closed when it is over, which
        // also wakes the helper from a blocked read so that it ends.
        let _closer = Closer(Some(agent.clone()));
        let (events, received) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
        let exchange = Exchange {
            agent,
            url: self.endpoint.clone(),
            api_key: self.options.api_key.clone(),
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
}

impl ModelBackend for RemoteModel {
    fn name(&self) -> String {
        self.models
            .read()
            .first()
            .cloned()
            .unwrap_or_else(|| self.options.model.clone())
    }

    fn models(&self) -> Vec<String> {
        self.models.read().clone()
    }

    fn health(&self) -> ModelHealth {
        self.health.lock().clone()
    }

    fn accepts_images(&self) -> bool {
        self.options.vision
    }

    fn context_tokens(&self) -> Option<usize> {
        match self.window.load(Ordering::Relaxed) {
            0 => Some(DEFAULT_CONTEXT_TOKENS),
            n => usize::try_from(n).ok(),
        }
    }

    fn probe(&self) -> Option<std::result::Result<(), String>> {
        if let Some(window) = self.ask_for_window() {
            self.window.store(window, Ordering::Relaxed);
        }
        let outcome = self.ask_for_models();
        self.record(outcome.as_ref().map(|_| ()).map_err(String::as_str));
        Some(outcome)
    }

    fn complete(
        &self,
        conversation: Conversation<'_>,
        tools: &[ToolSpec],
        sink: &mut dyn ReplySink,
    ) -> Result<ModelReply> {
        // With `auto`, a server that has not listed its models yet is asked now.
        if self.auto && self.models.read().is_empty() {
            let listed = self.ask_for_models();
            self.record(listed.as_ref().map(|_| ()).map_err(String::as_str));
            listed.map_err(|detail| self.error(Failure::Fatal(detail)))?;
        }
        let mut usage = !self.usage_refused.load(Ordering::Relaxed);
        let mut body = self.encode(conversation, tools, usage)?;
        let retry = self.options.retry;
        let mut attempt: u32 = 1;
        loop {
            if sink.is_cancelled() {
                return Err(self.error(Failure::Cancelled));
            }
            let failure = match self.attempt(&body, sink) {
                // No text and no tool call: a stream cut short (llama-cpp-python answers a
                // context overflow with an empty stream), never an answer.
                Ok(reply) if reply.text.trim().is_empty() && reply.tool_calls.is_empty() => {
                    return Err(self.error(Failure::Fatal(
                        "the model server ended its answer without any content".into(),
                    )));
                }
                Ok(reply) => {
                    self.record(Ok(()));
                    return Ok(reply);
                }
                Err(failure) => failure,
            };
            // A server that refuses `stream_options` (some older ones answer 400 or 422 naming
            // it) is asked once more without it, and never again with it.
            if let Failure::Fatal(detail) = &failure
                && usage
                && detail.contains("stream_options")
            {
                log::info!(
                    "model {}: the server refuses stream_options; asking without usage",
                    self.name()
                );
                self.usage_refused.store(true, Ordering::Relaxed);
                usage = false;
                body = self.encode(conversation, tools, usage)?;
                continue;
            }
            let Failure::Retryable {
                detail,
                retry_after,
            } = failure
            else {
                return Err(self.error(failure));
            };
            if attempt > retry.max_retries {
                return Err(self.error(Failure::Fatal(format!(
                    "{detail} (gave up after {attempt} attempts)"
                ))));
            }
            let delay = match retry_after {
                Some(wait) if wait > MAX_RETRY_AFTER => {
                    return Err(self.error(Failure::Fatal(format!(
                        "{detail} (the server asked to wait {} s; not waiting that long)",
                        wait.as_secs()
                    ))));
                }
                Some(wait) => wait,
                None => backoff(&retry, attempt, jitter()),
            };
            attempt += 1;
            log::warn!(
                "model {}: {detail}; attempt {attempt} in {} ms",
                self.name(),
                delay.as_millis()
            );
            sink.retrying(attempt, delay);
            if sink.sleep(delay) {
                return Err(self.error(Failure::Cancelled));
            }
        }
    }
}

impl RemoteModel {
    /// The request body for one step, with or without the usage chunk asked for.
    fn encode(
        &self,
        conversation: Conversation<'_>,
        tools: &[ToolSpec],
        usage: bool,
    ) -> Result<Arc<[u8]>> {
        let model = self.resolve(conversation.model);
        let mut body = request_body(&model, conversation, tools);
        if !usage && let Some(body) = body.as_object_mut() {
            body.remove("stream_options");
        }
        serde_json::to_vec(&body)
            .map(Arc::from)
            .map_err(|e| self.error(Failure::Fatal(format!("cannot encode the request: {e}"))))
    }

    /// The error a failed step ends with; it names the server's URL, so that the user knows
    /// which server failed.
    fn error(&self, failure: Failure) -> Error {
        let backend = self.name();
        match failure {
            Failure::HistoryRejected(detail) => Error::HistoryRejected { backend, detail },
            Failure::Cancelled => Error::Model {
                backend,
                detail: "cancelled".into(),
            },
            Failure::Retryable { detail, .. } | Failure::Fatal(detail) => {
                let detail = format!("{detail} (model server {})", self.endpoint);
                self.record(Err(&detail));
                Error::Model { backend, detail }
            }
        }
    }
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

/// Why an attempt failed.
#[derive(Debug, PartialEq)]
enum Failure {
    /// The turn was cancelled.
    Cancelled,
    /// Worth trying again: no answer, or 408, 429, 5xx.
    Retryable {
        detail: String,
        retry_after: Option<Duration>,
    },
    /// The server says the conversation history is malformed.
    HistoryRejected(String),
    /// Anything else.
    Fatal(String),
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
        let wait = stream
            .flush_in(Instant::now())
            .map_or(idle, |due| due.min(idle));
        // `None`: woken by a cancel, or time to flush; `Some(Err)`: the helper is gone.
        let event = select! {
            recv(received) -> event => Some(event),
            recv(woken) -> _ => None,
            default(wait) => None,
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
        stream.flush_due(sink, Instant::now());
    }
}

/// The chunks in one event's data: each a JSON object, or `None` for `[DONE]`. A server that
/// leaves out the blank line between events gets its lines read one by one.
fn parse_event(data: &str) -> Result<Vec<Option<Value>>, Failure> {
    if let Ok(chunk) = serde_json::from_str::<Value>(data) {
        return Ok(vec![Some(chunk)]);
    }
    data.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            let line = line.strip_prefix("data:").map_or(line, str::trim_start);
            if line == "[DONE]" {
                return Ok(None);
            }
            serde_json::from_str(line).map(Some).map_err(|e| {
                Failure::Fatal(format!(
                    "the model server sent an event that is not JSON ({e}): {}",
                    excerpt(line)
                ))
            })
        })
        .collect()
}

/// What a failed `send` (no answer at all) means.
fn send_failure(error: ureq::Error) -> Failure {
    use ureq::Timeout;
    let detail = format!("the model server could not be reached: {error}");
    match error {
        ureq::Error::Io(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Timeout(Timeout::Resolve | Timeout::Connect) => Failure::Retryable {
            detail,
            retry_after: None,
        },
        ureq::Error::Timeout(_) => {
            Failure::Fatal(format!("the model server did not answer in time: {error}"))
        }
        _ => Failure::Fatal(detail),
    }
}

/// What an answer with an unsuccessful `status` means.
fn classify(status: u16, status_line: &str, body: &str, retry_after: Option<Duration>) -> Failure {
    let detail = format!(
        "the model server answered {status_line}: {}",
        error_message(body)
    );
    let says = |phrases: &[&str]| {
        let body = body.to_lowercase();
        phrases.iter().any(|phrase| body.contains(phrase))
    };
    match status {
        400 | 413 | 422 | 500 if says(CONTEXT_OVERFLOW) => Failure::HistoryRejected(detail),
        400 | 422 if is_malformed_history(body) => Failure::HistoryRejected(detail),
        500..=599 if says(INVALID_REQUEST) => Failure::Fatal(detail),
        408 | 429 | 500..=599 => Failure::Retryable {
            detail,
            retry_after,
        },
        _ => Failure::Fatal(detail),
    }
}

/// True when an error body says that the conversation's tool messages or roles are out of
/// order.
fn is_malformed_history(body: &str) -> bool {
    let body = body.to_lowercase();
    MALFORMED_HISTORY.iter().any(|phrase| body.contains(phrase))
}

/// The message inside an error body (`{"error": {"message": …}}`, `{"error": "…"}`,
/// `{"message": …}`), or the start of the body.
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|value| {
        let error = value.get("error").unwrap_or(value);
        error
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| error.as_str())
    });
    match message {
        Some(message) => excerpt(message),
        None if body.trim().is_empty() => "(no body)".into(),
        None => excerpt(body.trim()),
    }
}

/// The first few hundred characters of `text`.
fn excerpt(text: &str) -> String {
    let mut chars = text.chars();
    let mut short: String = chars.by_ref().take(ERROR_EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        short.push('…');
    }
    short
}

/// The wait a `retry-after-ms` or `Retry-After` header asks for (seconds or an HTTP date).
fn retry_after(headers: &ureq::http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return duration_from_secs(ms / 1000.0);
    }
    parse_retry_after(header("retry-after")?, now)
}

/// Reads a `Retry-After` value: seconds (maybe with a fraction) or an IMF-fixdate such as
/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return duration_from_secs(seconds);
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn duration_from_secs(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| Duration::try_from_secs_f64(seconds).ok())
        .flatten()
}

/// Reads an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn parse_http_date(value: &str) -> Option<SystemTime> {
    let (_weekday, rest) = value.split_once(", ")?;
    let parts: Vec<&str> = rest.split_whitespace().collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|name| name == month)? as i64
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let clock: Vec<i64> = time
        .split(':')
        .map(|part| part.parse().ok())
        .collect::<Option<_>>()?;
    let &[hours, minutes, seconds] = clock.as_slice() else {
        return None;
    };
    // Bounds first, so that no header can make the arithmetic below overflow.
    let valid = (1..=31).contains(&day)
        && (1970..=9999).contains(&year)
        && (0..24).contains(&hours)
        && (0..60).contains(&minutes)
        && (0..=60).contains(&seconds);
    if !valid {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let secs = days * 86_400 + hours * 3_600 + minutes * 60 + seconds;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// The wait before retry number `attempt` (1 for the first): the base delay doubled per
/// attempt, capped, less up to half of it at random (`jitter` in `0..=1`).
fn backoff(policy: &RetryPolicy, attempt: u32, jitter: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    let full = policy
        .base_delay
        .saturating_mul(factor)
        .min(policy.max_delay);
    full.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
}

/// A number in `0..=1` from the OS's random source (0 if it has none).
fn jitter() -> f64 {
    getrandom::u32().map_or(0.0, |n| f64::from(n) / f64::from(u32::MAX))
}

/// The request for one step: the conversation, the tools, `stream: true`.
///
/// Every system message (the prompt, and the memory the bot adds to a turn) goes into one
/// system message at the start, because many chat templates accept a system message only
/// there. Images that tools returned follow their tool messages as one user message of
/// `image_url` parts, since OpenAI's tool messages carry text only.
fn request_body(model: &str, conversation: Conversation<'_>, tools: &[ToolSpec]) -> Value {
    let mut system: Vec<&str> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    // Image parts of the tool messages just sent, waiting for the end of their run.
    let mut images: Vec<Value> = Vec::new();
    for message in conversation.iter() {
        let content = message.content.as_str();
        if message.role != Role::Tool {
            flush_images(&mut messages, &mut images);
        }
        match message.role {
            Role::System => system.push(content),
            Role::User => messages.push(json!({"role": "user", "content": content})),
            Role::Assistant if message.tool_calls.is_empty() => {
                let content = if is_failure_note(content) {
                    ""
                } else {
                    content
                };
                messages.push(json!({"role": "assistant", "content": content}));
            }
            Role::Assistant => {
                let calls: Vec<Value> = message
                    .tool_calls
                    .iter()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.args.to_text()},
                        })
                    })
                    .collect();
                // `""`, never `null`: llama-cpp-python refuses a null content with a 500.
                messages
                    .push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
            }
            Role::Tool => {
                let content = if message.is_error {
                    format!("Error: {content}")
                } else {
                    content.to_owned()
                };
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": message.tool_call_id.as_deref().unwrap_or_default(),
                    "content": content,
                }));
                images.extend(message.images.iter().map(
                    |image| json!({"type": "image_url", "image_url": {"url": image.data_url()}}),
                ));
            }
        }
    }
    flush_images(&mut messages, &mut images);
    if !system.is_empty() {
        messages.insert(0, json!({"role": "system", "content": system.join("\n\n")}));
    }
    // `include_usage` asks for a last chunk with the tokens used (PROTOCOL.md section 5 passes
    // them on); servers that do not know it ignore it.
    let mut body = json!({
        "model": model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": messages,
    });
    if !tools.is_empty() {
        let tools: Vec<Value> = tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": object_schema(&tool.parameters),
                    },
                })
            })
            .collect();
        body["tools"] = Value::Array(tools);
    }
    body
}

/// The context window in an Ollama `POST /api/show` answer: `num_ctx` in its `parameters` (a
/// Modelfile's lines, e.g. `num_ctx 8192`) when the model sets one, else the
/// `model_info` entry `<architecture>.context_length` (the most the model was trained for).
fn ollama_window(show: &Value) -> Option<u64> {
    let configured = show["parameters"].as_str().and_then(|parameters| {
        parameters.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("num_ctx"))
                .then(|| words.next()?.parse::<u64>().ok())
                .flatten()
        })
    });
    let trained = || {
        show["model_info"].as_object().and_then(|info| {
            info.iter()
                .find(|(key, _)| key.ends_with(".context_length"))
                .and_then(|(_, value)| value.as_u64())
        })
    };
    configured.or_else(trained).filter(|n| *n > 0)
}

/// Sends the images of the tool messages just added, if any, as one user message.
fn flush_images(messages: &mut Vec<Value>, images: &mut Vec<Value>) {
    if images.is_empty() {
        return;
    }
    let mut parts = vec![json!({"type": "text", "text": "The images the tools above returned:"})];
    parts.append(images);
    messages.push(json!({"role": "user", "content": parts}));
}

/// The `usage` object of a chunk: `None` unless it has both counts (some servers send
/// `"usage": null` on every chunk but the last).
fn parse_usage(usage: &Value) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: usage.get("prompt_tokens")?.as_u64()?,
        completion_tokens: usage.get("completion_tokens")?.as_u64()?,
    })
}

/// A tool's parameter schema as servers want it: an object schema, even for a tool that
/// declared none.
fn object_schema(parameters: &Value) -> Value {
    match parameters {
        Value::Object(schema) if schema.contains_key("type") => parameters.clone(),
        Value::Object(schema) => {
            let mut schema = schema.clone();
            schema.insert("type".into(), "object".into());
            schema
                .entry("properties")
                .or_insert_with(|| Value::Object(Map::new()));
            Value::Object(schema)
        }
        _ => json!({"type": "object", "properties": {}}),
    }
}

/// The first `limit` bytes of a response's body, as text (lossily): enough of an error answer
/// for its message. A body that cannot be read gives what was read of it.
pub fn body_start(response: ureq::http::Response<ureq::Body>, limit: u64) -> String {
    let mut text = Vec::new();
    let _ = response
        .into_body()
        .into_reader()
        .take(limit)
        .read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// Collects the `data:` lines of a server-sent event stream into whole events (the MCP HTTP
/// transport reads its streams with it too).
#[derive(Debug, Default)]
pub struct SseDecoder {
    data: String,
    pending: bool,
}

impl SseDecoder {
    /// Takes one line, without its line ending; returns an event's data when the line ends
    /// one (a blank line).
    pub fn line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            return self.finish();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            if self.pending {
                self.data.push('\n');
            }
            self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
            self.pending = true;
        }
        None
    }

    /// The data of an event that the stream ended without a blank line after.
    pub fn finish(&mut self) -> Option<String> {
        self.pending = false;
        let data = std::mem::take(&mut self.data);
        (!data.is_empty()).then_some(data)
    }
}

/// Splits streamed content into answer and reasoning at `<think>` and `</think>`, even when a
/// tag is cut across chunks.
#[derive(Debug, Default)]
struct ThinkSplitter {
    inside: bool,
    /// The end of the text so far that might be the start of a tag.
    carry: String,
}

/// A piece of streamed content.
#[derive(Debug, PartialEq)]
enum Piece {
    Answer(String),
    Reasoning(String),
    /// A `</think>`: the reasoning so far is complete.
    EndOfReasoning,
}

impl ThinkSplitter {
    const OPEN: &'static str = "<think>";
    const CLOSE: &'static str = "</think>";

    fn push(&mut self, text: &str, out: &mut Vec<Piece>) {
        let mut rest = std::mem::take(&mut self.carry);
        rest.push_str(text);
        let mut rest = rest.as_str();
        loop {
            let tag = if self.inside { Self::CLOSE } else { Self::OPEN };
            if let Some(at) = rest.find(tag) {
                self.emit(&rest[..at], out);
                if self.inside {
                    out.push(Piece::EndOfReasoning);
                }
                self.inside = !self.inside;
                rest = &rest[at + tag.len()..];
                continue;
            }
            // Keep back what could be the start of the tag (tags are ASCII, so the cut is on a
            // character boundary).
            let keep = (1..tag.len())
                .rev()
                .find(|&n| rest.ends_with(&tag[..n]))
                .unwrap_or(0);
            let cut = rest.len() - keep;
            self.emit(&rest[..cut], out);
            self.carry = rest[cut..].to_owned();
            return;
        }
    }

    fn finish(&mut self, out: &mut Vec<Piece>) {
        let carry = std::mem::take(&mut self.carry);
        self.emit(&carry, out);
    }

    fn emit(&self, text: &str, out: &mut Vec<Piece>) {
        if text.is_empty() {
            return;
        }
        out.push(if self.inside {
            Piece::Reasoning(text.to_owned())
        } else {
            Piece::Answer(text.to_owned())
        });
    }
}

/// A tool call's arguments as they arrive.
#[derive(Debug)]
enum Arguments {
    /// Pieces of a JSON text (the usual shape).
    Text(String),
    /// A JSON value (some servers send an object instead of a string).
    Value(Value),
}

impl Arguments {
    /// True when the arguments so far form a whole JSON document: more pieces would break it.
    fn complete(&self) -> bool {
        match self {
            Arguments::Value(_) => true,
            Arguments::Text(text) => {
                !text.trim().is_empty() && serde_json::from_str::<Value>(text).is_ok()
            }
        }
    }

    /// The arguments as a JSON object. Empty or `null` arguments are `{}`; a JSON text that
    /// holds an object as a string is unwrapped; anything else that is not an object is
    /// passed on as [`ToolArgs::Unparsed`], for the bot to answer with an error.
    fn into_args(self) -> ToolArgs {
        let raw = match self {
            Arguments::Value(Value::Null) => return ToolArgs::Parsed(json!({})),
            Arguments::Value(value @ Value::Object(_)) => return ToolArgs::Parsed(value),
            Arguments::Value(other) => other.to_string(),
            Arguments::Text(text) if text.trim().is_empty() => return ToolArgs::Parsed(json!({})),
            Arguments::Text(text) => text,
        };
        match serde_json::from_str::<Value>(&raw) {
            Ok(Value::Null) => ToolArgs::Parsed(json!({})),
            Ok(value @ Value::Object(_)) => ToolArgs::Parsed(value),
            Ok(Value::String(inner)) => match serde_json::from_str::<Value>(&inner) {
                Ok(value @ Value::Object(_)) => ToolArgs::Parsed(value),
                _ => ToolArgs::Unparsed(raw),
            },
            _ => ToolArgs::Unparsed(raw),
        }
    }
}

/// A tool call being streamed.
#[derive(Debug)]
struct PartialCall {
    index: Option<u64>,
    id: Option<String>,
    name: String,
    arguments: Arguments,
}

/// Accumulates streamed tool-call fragments into calls.
///
/// Fragments are matched to calls by `index`. A fragment starts a new call, even at an index
/// already used, when it carries an id different from the call's, or when the call's
/// arguments are already a whole JSON document and the fragment brings a name or whole
/// arguments of its own (Ollama sends several complete calls all at index 0). Two argument
/// objects are never glued together.
#[derive(Debug, Default)]
struct ToolCalls {
    calls: Vec<PartialCall>,
}

impl ToolCalls {
    fn add(&mut self, fragment: &Value) {
        let index = fragment.get("index").and_then(Value::as_u64);
        let id = fragment
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty());
        let function = fragment.get("function").unwrap_or(&Value::Null);
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty());
        let arguments = function.get("arguments").unwrap_or(&Value::Null);
        let whole_arguments = match arguments {
            Value::Null => false,
            Value::String(text) => {
                matches!(serde_json::from_str::<Value>(text), Ok(Value::Object(_)))
            }
            _ => true,
        };
        let found = match index {
            Some(_) => self.calls.iter().rposition(|call| call.index == index),
            None => self.calls.len().checked_sub(1),
        };
        let same = found.filter(|&at| {
            let call = &self.calls[at];
            match (id, call.id.as_deref()) {
                (Some(new), Some(old)) => new == old,
                _ => !(call.arguments.complete() && (name.is_some() || whole_arguments)),
            }
        });
        let call = match same {
            Some(at) => &mut self.calls[at],
            None => {
                self.calls.push(PartialCall {
                    index,
                    id: None,
                    name: String::new(),
                    arguments: Arguments::Text(String::new()),
                });
                let last = self.calls.len() - 1;
                &mut self.calls[last]
            }
        };
        if call.id.is_none() {
            call.id = id.map(str::to_owned);
        }
        if let Some(name) = name
            && call.name != name
        {
            call.name.push_str(name);
        }
        match (arguments, &mut call.arguments) {
            (Value::Null, _) => {}
            (Value::String(piece), Arguments::Text(text)) => text.push_str(piece),
            (Value::String(piece), Arguments::Value(value)) => {
                if !piece.is_empty() {
                    let mut text = value.to_string();
                    text.push_str(piece);
                    call.arguments = Arguments::Text(text);
                }
            }
            (value, Arguments::Text(text)) if text.trim().is_empty() => {
                call.arguments = Arguments::Value(value.clone());
            }
            (value, _) => {
                log::debug!("tool call {:?}: ignoring extra arguments {value}", call.id);
            }
        }
    }

    fn finish(self) -> Vec<ToolCall> {
        self.calls
            .into_iter()
            .filter(|call| !call.name.is_empty() || call.arguments.complete())
            .map(|call| ToolCall {
                id: call.id.unwrap_or_else(|| {
                    format!("call_{}", NEXT_CALL_ID.fetch_add(1, Ordering::Relaxed))
                }),
                name: call.name,
                args: call.arguments.into_args(),
            })
            .collect()
    }
}

/// Everything one streamed answer has produced so far.
#[derive(Debug)]
struct StreamState {
    answer: String,
    /// Answer text not yet passed to the sink.
    pending: String,
    last_delta: Option<Instant>,
    /// Reasoning not yet passed to the sink.
    reasoning: String,
    /// Where that reasoning came from: reasoning from a field and reasoning in tags are
    /// separate thoughts.
    reasoning_source: Source,
    think: ThinkSplitter,
    calls: ToolCalls,
    /// The tokens used, from the server's usage chunk.
    usage: Option<Usage>,
    /// Why the server says it stopped (`stop`, `length`, `tool_calls`), once it said.
    finish_reason: Option<String>,
}

/// Where reasoning arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// A `reasoning_content` or `reasoning` field of the delta.
    Field,
    /// Between `<think>` and `</think>` in the content.
    Tags,
}

impl StreamState {
    fn new() -> Self {
        StreamState {
            answer: String::new(),
            pending: String::new(),
            last_delta: None,
            reasoning: String::new(),
            reasoning_source: Source::Field,
            think: ThinkSplitter::default(),
            calls: ToolCalls::default(),
            usage: None,
            finish_reason: None,
        }
    }

    /// Takes one chunk (`{"choices": [{"delta": …}]}`, or a whole answer with `message`).
    fn chunk(&mut self, chunk: &Value, sink: &mut dyn ReplySink) -> Result<(), Failure> {
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_owned);
            return Err(Failure::Fatal(format!(
                "the model server reported an error: {}",
                excerpt(&message)
            )));
        }
        // The usage chunk (last, with no choices) or the usage of a whole answer.
        if let Some(usage) = chunk.get("usage").and_then(parse_usage) {
            self.usage = Some(usage);
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return Ok(());
        };
        let choice = choices
            .iter()
            .find(|choice| choice.get("index").and_then(Value::as_u64).unwrap_or(0) == 0);
        let Some(choice) = choice else {
            return Ok(());
        };
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_owned());
        }
        let Some(delta) = choice.get("delta").or_else(|| choice.get("message")) else {
            return Ok(());
        };
        for field in ["reasoning_content", "reasoning"] {
            if let Some(text) = delta.get(field).and_then(Value::as_str) {
                self.reason(text, Source::Field, sink);
            }
        }
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            let mut pieces = Vec::new();
            self.think.push(text, &mut pieces);
            self.take(pieces, sink);
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            self.end_reasoning(sink);
            for fragment in calls {
                self.calls.add(fragment);
            }
        }
        self.flush_due(sink, Instant::now());
        Ok(())
    }

    fn take(&mut self, pieces: Vec<Piece>, sink: &mut dyn ReplySink) {
        for piece in pieces {
            match piece {
                Piece::Answer(text) => self.say(&text, sink),
                Piece::Reasoning(text) => self.reason(&text, Source::Tags, sink),
                Piece::EndOfReasoning => self.end_reasoning(sink),
            }
        }
    }

    fn say(&mut self, text: &str, sink: &mut dyn ReplySink) {
        // An answer does not start with the blank lines that often follow `</think>`.
        let text = if self.answer.is_empty() {
            text.trim_start()
        } else {
            text
        };
        if text.is_empty() {
            return;
        }
        self.end_reasoning(sink);
        self.answer.push_str(text);
        self.pending.push_str(text);
    }

    fn reason(&mut self, text: &str, source: Source, sink: &mut dyn ReplySink) {
        if source != self.reasoning_source {
            self.end_reasoning(sink);
            self.reasoning_source = source;
        }
        self.reasoning.push_str(text);
        if self.reasoning.len() >= THOUGHT_PART_CHARS
            && let Some(at) = self.reasoning.rfind("\n\n")
        {
            let rest = self.reasoning.split_off(at);
            self.end_reasoning(sink);
            self.reasoning = rest;
        }
    }

    /// Passes the reasoning so far on as one thought (after the answer text before it).
    fn end_reasoning(&mut self, sink: &mut dyn ReplySink) {
        let thought = std::mem::take(&mut self.reasoning);
        let thought = thought.trim();
        if !thought.is_empty() {
            self.flush(sink);
            sink.thought(thought);
        }
    }

    /// How long until pending answer text is due to go out; `None` when none is pending.
    fn flush_in(&self, now: Instant) -> Option<Duration> {
        if self.pending.is_empty() {
            return None;
        }
        Some(self.last_delta.map_or(Duration::ZERO, |last| {
            DELTA_INTERVAL.saturating_sub(now.duration_since(last))
        }))
    }

    /// Passes pending answer text on if the last piece went out long enough ago.
    fn flush_due(&mut self, sink: &mut dyn ReplySink, now: Instant) {
        let due = self
            .last_delta
            .is_none_or(|last| now.duration_since(last) >= DELTA_INTERVAL);
        if due && !self.pending.is_empty() {
            self.flush(sink);
            self.last_delta = Some(now);
        }
    }

    fn flush(&mut self, sink: &mut dyn ReplySink) {
        if !self.pending.is_empty() {
            sink.delta(&std::mem::take(&mut self.pending));
        }
    }

    /// Ends the answer: the last pieces go out, and the reply is built.
    fn finish(mut self, sink: &mut dyn ReplySink) -> ModelReply {
        let mut pieces = Vec::new();
        self.think.finish(&mut pieces);
        self.take(pieces, sink);
        self.end_reasoning(sink);
        self.flush(sink);
        let tool_calls = self.calls.finish();
        let truncated = tool_calls.is_empty()
            && self
                .finish_reason
                .as_deref()
                .is_none_or(|reason| reason == "length");
        ModelReply {
            text: self.answer,
            tool_calls,
            usage: self.usage,
            truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChatMessage;

    #[derive(Default)]
    struct Recorder {
        thoughts: Vec<String>,
        deltas: Vec<String>,
    }

    impl ReplySink for Recorder {
        fn thought(&mut self, text: &str) {
            self.thoughts.push(text.to_owned());
        }
        fn delta(&mut self, text: &str) {
            self.deltas.push(text.to_owned());
        }
        fn is_cancelled(&self) -> bool {
            false
        }
    }

    /// Feeds `chunks` (as `data:` payloads) through the stream state.
    fn run(chunks: &[Value]) -> (ModelReply, Recorder) {
        let mut sink = Recorder::default();
        let mut state = StreamState::new();
        for chunk in chunks {
            state.chunk(chunk, &mut sink).unwrap();
        }
        (state.finish(&mut sink), sink)
    }

    fn content(text: &str) -> Value {
        json!({"choices": [{"index": 0, "delta": {"content": text}}]})
    }

    fn calls(fragments: Value) -> Value {
        json!({"choices": [{"index": 0, "delta": {"tool_calls": fragments}}]})
    }

    #[test]
    fn sse_lines_become_events() {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for line in [
            ": keep-alive",
            "event: chunk",
            "data: {\"a\":1}",
            "",
            "data:{\"b\":2}",
            "",
            "",
            "data: first",
            "data: second",
            "",
            "data: [DONE]",
        ] {
            events.extend(decoder.line(line));
        }
        events.extend(decoder.finish());
        assert_eq!(
            events,
            ["{\"a\":1}", "{\"b\":2}", "first\nsecond", "[DONE]"]
        );
    }

    #[test]
    fn events_without_blank_lines_between_them_are_read_line_by_line() {
        let parsed = parse_event("{\"a\":1}\n{\"b\":2}\n[DONE]").unwrap();
        assert_eq!(parsed, [Some(json!({"a": 1})), Some(json!({"b": 2})), None]);
        assert!(parse_event("{broken").is_err());
    }

    #[test]
    fn streamed_text_becomes_deltas_and_the_reply() {
        let (reply, sink) = run(&[content("Hel"), content("lo"), content(" there")]);
        assert_eq!(reply.text, "Hello there");
        assert!(reply.tool_calls.is_empty());
        assert_eq!(sink.deltas.concat(), "Hello there");
        assert!(!sink.deltas.is_empty());
    }

    #[test]
    fn the_usage_chunk_becomes_the_reply_usage() {
        let (reply, _) = run(&[
            json!({"choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": null}),
            json!({"choices": [], "usage": {"prompt_tokens": 31, "completion_tokens": 4, "total_tokens": 35}}),
        ]);
        assert_eq!(reply.text, "Hi");
        assert_eq!(
            reply.usage,
            Some(Usage {
                prompt_tokens: 31,
                completion_tokens: 4
            })
        );
        assert_eq!(run(&[content("no count")]).0.usage, None);
    }

    #[test]
    fn openai_fragments_are_joined_by_index() {
        let (reply, _) = run(&[
            calls(json!([{"index": 0, "id": "call_a", "type": "function",
                "function": {"name": "calculator", "arguments": ""}}])),
            calls(json!([{"index": 0, "function": {"arguments": "{\"expr"}}])),
            calls(json!([{"index": 0, "function": {"arguments": "ession\": \"1+2\"}"}}])),
            calls(
                json!([{"index": 1, "id": "call_b", "function": {"name": "clock", "arguments": ""}}]),
            ),
            calls(json!([{"index": 1, "function": {"arguments": "{}"}}])),
        ]);
        let calls = reply.tool_calls;
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].id, "call_a");
        assert_eq!(calls[0].name, "calculator");
        assert_eq!(calls[0].args, ToolArgs::from(json!({"expression": "1+2"})));
        assert_eq!(
            (calls[1].id.as_str(), calls[1].name.as_str()),
            ("call_b", "clock")
        );
        assert_eq!(calls[1].args, ToolArgs::from(json!({})));
    }

    #[test]
    fn ollama_whole_calls_at_index_zero_stay_apart() {
        // With ids.
        let (reply, _) = run(&[
            calls(
                json!([{"index": 0, "id": "c1", "function": {"name": "a", "arguments": "{\"x\":1}"}}]),
            ),
            calls(
                json!([{"index": 0, "id": "c2", "function": {"name": "b", "arguments": "{\"y\":2}"}}]),
            ),
        ]);
        let names: Vec<&str> = reply.tool_calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(reply.tool_calls[1].args, ToolArgs::from(json!({"y": 2})));
        // Without ids, in one chunk: a new name after a complete call is a new call.
        let (reply, _) = run(&[calls(json!([
            {"index": 0, "function": {"name": "a", "arguments": "{\"x\":1}"}},
            {"index": 0, "function": {"name": "a", "arguments": "{\"x\":2}"}},
        ]))]);
        assert_eq!(reply.tool_calls.len(), 2);
        assert_eq!(reply.tool_calls[0].args, ToolArgs::from(json!({"x": 1})));
        assert_eq!(reply.tool_calls[1].args, ToolArgs::from(json!({"x": 2})));
        assert_ne!(reply.tool_calls[0].id, reply.tool_calls[1].id);
        assert!(reply.tool_calls[0].id.starts_with("call_"));
    }

    #[test]
    fn a_repeated_id_is_the_same_call() {
        let (reply, _) = run(&[
            calls(
                json!([{"index": 0, "id": "c1", "function": {"name": "a", "arguments": "{\"x\""}}]),
            ),
            calls(json!([{"index": 0, "id": "c1", "function": {"name": "a", "arguments": ":1}"}}])),
            calls(json!([{"index": 0, "id": "c1", "function": {"name": "a", "arguments": ""}}])),
        ]);
        assert_eq!(reply.tool_calls.len(), 1);
        assert_eq!(reply.tool_calls[0].args, ToolArgs::from(json!({"x": 1})));
    }

    #[test]
    fn arguments_may_be_an_object_and_ids_may_be_missing() {
        let (reply, _) = run(&[calls(json!([
            {"function": {"name": "calculator", "arguments": {"expression": "2*3"}}},
            {"function": {"name": "clock", "arguments": {}}},
        ]))]);
        assert_eq!(reply.tool_calls.len(), 2);
        assert_eq!(
            reply.tool_calls[0].args,
            ToolArgs::from(json!({"expression": "2*3"}))
        );
        assert_eq!(reply.tool_calls[1].name, "clock");
    }

    #[test]
    fn bad_arguments_are_passed_on_marked() {
        let (reply, _) = run(&[calls(
            json!([{"index": 0, "id": "c", "function": {"name": "a", "arguments": "{\"x\": oops"}}]),
        )]);
        assert_eq!(
            reply.tool_calls[0].args,
            ToolArgs::Unparsed("{\"x\": oops".into())
        );
        let doubly = Arguments::Text("\"{\\\"x\\\": 1}\"".into());
        assert_eq!(doubly.into_args(), ToolArgs::Parsed(json!({"x": 1})));
        assert_eq!(
            Arguments::Text("null".into()).into_args(),
            ToolArgs::Parsed(json!({}))
        );
    }

    #[test]
    fn think_tags_split_across_chunks_become_thoughts() {
        let (reply, sink) = run(&[
            content("<thi"),
            content("nk>Let me see"),
            content(". Two plus two.</th"),
            content("ink>\n\nIt is "),
            content("4 <b>bold</b>"),
        ]);
        assert_eq!(reply.text, "It is 4 <b>bold</b>");
        assert_eq!(sink.thoughts, ["Let me see. Two plus two."]);
        assert_eq!(sink.deltas.concat(), reply.text);
    }

    #[test]
    fn reasoning_fields_become_thoughts() {
        let reasoning =
            |field: &str, text: &str| json!({"choices": [{"index": 0, "delta": {field: text}}]});
        let (reply, sink) = run(&[
            reasoning("reasoning_content", "Think"),
            reasoning("reasoning_content", "ing."),
            content("Answer"),
            reasoning("reasoning", "More."),
        ]);
        assert_eq!(reply.text, "Answer");
        assert_eq!(sink.thoughts, ["Thinking.", "More."]);
    }

    #[test]
    fn an_unfinished_tag_at_the_end_is_text() {
        let (reply, _) = run(&[content("a <thin")]);
        assert_eq!(reply.text, "a <thin");
    }

    #[test]
    fn a_whole_answer_is_read_like_a_chunk() {
        let whole = json!({"choices": [{"index": 0, "message": {
            "role": "assistant", "content": "Hi",
            "tool_calls": [{"id": "x", "type": "function",
                "function": {"name": "clock", "arguments": "{}"}}]}}]});
        let (reply, _) = run(&[whole]);
        assert_eq!(reply.text, "Hi");
        assert_eq!(reply.tool_calls[0].id, "x");
    }

    #[test]
    fn an_error_chunk_fails_the_step() {
        let mut state = StreamState::new();
        let failure = state
            .chunk(
                &json!({"error": {"message": "model not found"}}),
                &mut Recorder::default(),
            )
            .unwrap_err();
        assert!(matches!(failure, Failure::Fatal(m) if m.contains("model not found")));
    }

    #[test]
    fn statuses_are_classified() {
        let history = r#"{"error": {"message": "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'."}}"#;
        assert!(matches!(
            classify(400, "400 Bad Request", history, None),
            Failure::HistoryRejected(_)
        ));
        let gemini = "Please ensure that function response turn comes immediately after a function call turn.";
        assert!(matches!(
            classify(400, "400", gemini, None),
            Failure::HistoryRejected(_)
        ));
        assert!(matches!(
            classify(429, "429", "", Some(Duration::from_secs(1))),
            Failure::Retryable { retry_after: Some(d), .. } if d == Duration::from_secs(1)
        ));
        assert!(matches!(
            classify(503, "503", "busy", None),
            Failure::Retryable { .. }
        ));
        let Failure::Fatal(detail) = classify(
            404,
            "404 Not Found",
            r#"{"error": "model 'x' not found"}"#,
            None,
        ) else {
            panic!("a 404 is not retried");
        };
        assert_eq!(
            detail,
            "the model server answered 404 Not Found: model 'x' not found"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        // 1994-11-06 08:49:37 UTC is 784111777.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        let huge = "Sun, 99999999999 Nov 99999999999 08:49:37 GMT";
        assert_eq!(parse_retry_after(huge, now), None);
        // A date in the past means now.
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let policy = RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        assert_eq!(backoff(&policy, 1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(&policy, 2, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(&policy, 3, 0.0), Duration::from_millis(350));
        assert_eq!(backoff(&policy, 2, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&policy, 40, 0.0), Duration::from_millis(350));
    }

    /// The `role` of each message of a request.
    fn roles_of(messages: &[Value]) -> Vec<&str> {
        messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn images_tools_returned_follow_their_tool_messages_as_image_url_parts() {
        let call = |id: &str| ToolCall {
            id: id.into(),
            name: "camera".into(),
            args: json!({}).into(),
        };
        let image = crate::model::Image {
            mime_type: "image/png".into(),
            data: "iVBORw0KGgo=".into(),
        };
        let mut shot = ChatMessage::tool_result("a", "a photo\n[image: image/png, 8 B]", false);
        shot.images = vec![image.clone(), image];
        let current = [
            ChatMessage::text(Role::User, "look"),
            ChatMessage::tool_calls("", vec![call("a"), call("b")]),
            shot,
            ChatMessage::tool_result("b", "nothing", false),
            ChatMessage::tool_calls("", vec![call("c")]),
            ChatMessage::tool_result("c", "plain", false),
        ];
        let body = request_body("m", Conversation::of(&current), &[]);
        let messages = body["messages"].as_array().unwrap();
        let roles = roles_of(messages);
        // Both tool messages first (they must follow their calls), then the images.
        assert_eq!(
            roles,
            [
                "user",
                "assistant",
                "tool",
                "tool",
                "user",
                "assistant",
                "tool"
            ]
        );
        assert_eq!(messages[2]["content"], "a photo\n[image: image/png, 8 B]");
        let parts = messages[4]["content"].as_array().unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0]["type"], "text");
        assert_eq!(
            parts[1],
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}})
        );
    }

    #[test]
    fn the_request_carries_the_conversation_and_the_tools() {
        let call = ToolCall {
            id: "c1".into(),
            name: "calculator".into(),
            args: json!({"expression": "1+1"}).into(),
        };
        let head = [ChatMessage::text(Role::System, "be nice")];
        let earlier = [
            ChatMessage::text(Role::User, "hi"),
            ChatMessage::text(Role::Assistant, "hello"),
        ];
        let current = [
            ChatMessage::text(Role::System, "memory"),
            ChatMessage::text(Role::User, "1+1?"),
            ChatMessage::tool_calls("", vec![call]),
            ChatMessage::tool_result("c1", "2", false),
        ];
        let conversation = Conversation {
            model: None,
            head: &head,
            earlier: &earlier,
            current: &current,
        };
        let tools = [ToolSpec {
            name: "clock".into(),
            description: "the time".into(),
            parameters: json!({}),
        }];
        let body = request_body("m", conversation, &tools);
        assert_eq!(body["model"], "m");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        let messages = body["messages"].as_array().unwrap();
        let roles = roles_of(messages);
        assert_eq!(
            roles,
            ["system", "user", "assistant", "user", "assistant", "tool"]
        );
        assert_eq!(messages[0]["content"], "be nice\n\nmemory");
        assert_eq!(
            messages[4]["content"], "",
            "never null: llama-cpp-python refuses it"
        );
        assert_eq!(
            messages[4]["tool_calls"][0]["function"]["name"],
            "calculator"
        );
        assert_eq!(
            messages[4]["tool_calls"][0]["function"]["arguments"],
            "{\"expression\":\"1+1\"}"
        );
        assert_eq!(messages[5]["tool_call_id"], "c1");
        assert_eq!(body["tools"][0]["type"], "function");
        assert_eq!(body["tools"][0]["function"]["name"], "clock");
        assert_eq!(
            body["tools"][0]["function"]["parameters"],
            json!({"type": "object", "properties": {}})
        );
        let no_tools = request_body("m", Conversation::of(&earlier), &[]);
        assert!(no_tools.get("tools").is_none());
    }

    #[test]
    fn the_key_is_not_in_debug_output() {
        let mut options = RemoteOptions::new("http://x/v1/", "m");
        options.api_key = Some("sk-secret".into());
        let model = RemoteModel::new(options);
        assert!(!format!("{model:?}").contains("sk-secret"));
        assert_eq!(model.endpoint(), "http://x/v1/chat/completions");
    }
}
