//! `RemoteModel`: a client for OpenAI-compatible chat-completions servers (Ollama, llama.cpp's
//! server, vLLM, OpenAI and the like), streamed with server-sent events. With the MCP HTTP
//! transport and the embeddings client, this is the only outbound HTTP in the crate.
//!
//! This file holds the public surface ([`RemoteModel`], [`RemoteOptions`], [`RetryPolicy`],
//! [`AUTO_MODELS`]), what the server says of itself (its models, its context window) and the
//! loop that tries a step again. Reading order for the rest: `request.rs` encodes a step,
//! `client.rs` runs one attempt on the turn's own thread, `stream.rs` (with
//! `tool_calls.rs`) builds the reply from what the server streams, and `retry.rs` says why an
//! attempt failed and when to try again.
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
//! Depends on: `common::error`, `model`, `model::error`, `model::openai::client`, `model::openai::request`, `model::openai::retry`.

mod client;
mod request;
mod retry;
mod stream;
mod tool_calls;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use ureq::Agent;

use self::client::{INPUT_BUFFER_BYTES, OUTPUT_BUFFER_BYTES, run_attempt};
use self::request::encode_request;
pub use self::retry::RetryPolicy;
use self::retry::{Failure, error_message};
use crate::common::error::{Error, Result};
use crate::model::error::ModelError;
use crate::model::{Conversation, ModelBackend, ModelHealth, ModelReply, ReplySink, ToolSpec};

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
    /// True once the server showed itself to be llama.cpp's `llama-server` serving one model,
    /// which answers to whatever model name it is asked for (see [`answers_any_name`]).
    any_name: AtomicBool,
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
            any_name: AtomicBool::new(false),
            auto,
            models: parking_lot::RwLock::new(models),
        }
    }

    /// Records how the server answered a request or probe.
    fn record(&self, outcome: std::result::Result<(), &dyn fmt::Display>) {
        let mut health = self.health.lock();
        health.reachable = Some(outcome.is_ok());
        health.last_error = outcome.err().map(ToString::to_string);
    }

    /// The server's root URL: the base URL without its `/v1`.
    fn root(&self) -> &str {
        let base = self.options.base_url.trim_end_matches('/');
        base.strip_suffix("/v1").unwrap_or(base)
    }

    /// llama.cpp's `GET /props`, or `None` from a server without it (or that wants a key
    /// for it).
    fn ask_for_props(&self) -> Option<Value> {
        self.read_json(self.agent().get(&format!("{}/props", self.root())).call())
            .filter(Value::is_object)
    }

    /// The context window, from llama.cpp's `GET /props` (`props`: `n_ctx`, at the top or
    /// under `default_generation_settings`), else from Ollama's `POST /api/show` for the
    /// default model (`num_ctx` in its parameters, else its `model_info`'s
    /// `*.context_length`); `None` from servers that say neither.
    fn ask_for_window(&self, props: Option<&Value>) -> Option<u64> {
        let props = props
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

    /// `GET {base_url}/models`: is the server there, and does it serve the model? `props` is
    /// what `GET /props` answered, if it did: with llama.cpp's server, any name will do.
    fn ask_for_models(&self, props: Option<&Value>) -> std::result::Result<(), ModelError> {
        let base = self.options.base_url.trim_end_matches('/');
        let server = || format!("the model server at {base}");
        let url = format!("{base}/models");
        let mut request = self.agent().get(&url);
        if let Some(key) = &self.options.api_key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let mut response = request.call().map_err(|source| ModelError::Unreachable {
            server: server(),
            source,
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_MODELS_BODY_BYTES)
            .read_to_string()
            .map_err(|source| ModelError::Unreadable {
                server: server(),
                source,
            })?;
        if status != 200 {
            return Err(ModelError::Status {
                server: server(),
                request: Some("GET /models"),
                status,
                detail: error_message(&body),
            });
        }
        let listed: Vec<Value> = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|mut value| match value["data"].take() {
                Value::Array(models) => Some(models),
                _ => None,
            })
            .unwrap_or_default();
        let served: Vec<String> = listed
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
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
                return Err(ModelError::Answer(format!(
                    "{} lists no models (--model-name auto)",
                    server()
                )));
            }
            let mut models = self.models.write();
            if *models != listed {
                log::info!("model: the server lists {}", listed.join(", "));
                *models = listed;
            }
            return Ok(());
        }
        // llama.cpp's server with one model answers to whatever name is asked for, and an
        // empty or unreadable list is no evidence against a model.
        if answers_any_name(props, &listed) {
            if !self.any_name.swap(true, Ordering::Relaxed) {
                log::info!(
                    "model: the server is llama.cpp's, serving {}, whatever name is asked for",
                    served.join(", ")
                );
            }
            return Ok(());
        }
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
            Err(ModelError::Answer(format!(
                "{} does not serve {}; it serves: {}",
                server(),
                missing
                    .iter()
                    .map(|name| format!("{name:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                served.join(", ")
            )))
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
            .input_buffer_size(INPUT_BUFFER_BYTES)
            .output_buffer_size(OUTPUT_BUFFER_BYTES)
            .user_agent(concat!("sparky/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    }

    /// The request body for one step, with or without the usage chunk asked for.
    fn encode(
        &self,
        conversation: Conversation<'_>,
        tools: &[ToolSpec],
        usage: bool,
    ) -> Result<Arc<[u8]>> {
        let model = self.resolve(conversation.model);
        encode_request(&model, conversation, tools, usage).map_err(|failure| self.error(failure))
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

    fn probe(&self) -> Option<std::result::Result<(), ModelError>> {
        let props = self.ask_for_props();
        if let Some(window) = self.ask_for_window(props.as_ref()) {
            self.window.store(window, Ordering::Relaxed);
        }
        let outcome = self.ask_for_models(props.as_ref());
        self.record(outcome.as_ref().map(|_| ()).map_err(|e| e as _));
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
            let listed = self.ask_for_models(None);
            self.record(listed.as_ref().map(|_| ()).map_err(|e| e as _));
            listed.map_err(|e| self.error(Failure::Fatal(e.to_string())))?;
        }
        let mut usage = !self.usage_refused.load(Ordering::Relaxed);
        let mut body = self.encode(conversation, tools, usage)?;
        let retry = self.options.retry;
        let mut attempt: u32 = 1;
        loop {
            if sink.is_cancelled() {
                return Err(self.error(Failure::Cancelled));
            }
            let agent = self.agent();
            let api_key = self.options.api_key.as_deref();
            let failure = match run_attempt(agent, &self.endpoint, api_key, &body, sink) {
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
            let delay = retry
                .next_delay(attempt, &detail, retry_after)
                .map_err(|failure| self.error(failure))?;
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

/// True when the server is llama.cpp's `llama-server` serving one model, which answers to any
/// model name: its `GET /props` (`props`) answered as llama.cpp's does (`model_path`, or
/// `default_generation_settings`) and not as its router (`role: router`, which loads the model
/// each request names), or, when `/props` did not answer (it may want an API key that
/// `/models` does not), every model it lists is `owned_by: llamacpp` with no `status` (which
/// only the router's list has).
fn answers_any_name(props: Option<&Value>, listed: &[Value]) -> bool {
    match props {
        Some(props) if props["role"] == "router" => false,
        Some(props)
            if props.get("model_path").is_some()
                || props.get("default_generation_settings").is_some() =>
        {
            true
        }
        _ => {
            !listed.is_empty()
                && listed
                    .iter()
                    .all(|m| m["owned_by"] == "llamacpp" && m.get("status").is_none())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_with_one_model_answers_to_any_name_and_its_router_does_not() {
        let one = [json!({"id": "smollm2.gguf", "object": "model", "owned_by": "llamacpp"})];
        let props = json!({"model_path": "/m/smollm2.gguf",
                           "default_generation_settings": {"n_ctx": 2048}});
        assert!(answers_any_name(Some(&props), &one));
        // `/props` wanted a key: the list alone tells.
        assert!(answers_any_name(None, &one));
        // The router names its models and loads the one a request names.
        let router = json!({"role": "router", "model_path": "none",
                            "default_generation_settings": {"n_ctx": 0}});
        let routed = [json!({"id": "a", "owned_by": "llamacpp", "status": {"value": "loaded"}})];
        assert!(!answers_any_name(Some(&router), &routed));
        assert!(!answers_any_name(None, &routed));
        // Others (Ollama, vLLM, OpenAI) serve only what they list.
        let ollama = [json!({"id": "llama3.1:latest", "owned_by": "library"})];
        assert!(!answers_any_name(None, &ollama));
        assert!(!answers_any_name(None, &[]));
        assert!(!answers_any_name(Some(&json!({"error": "nope"})), &ollama));
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
