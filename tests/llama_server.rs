//! Sparky against a real model server: llama.cpp's `llama-server` serving SmolLM2-135M-Instruct
//! at temperature 0, built and fetched once by `scripts/llama-server.sh` (cached under
//! `target/llama/`), and its `/v1/embeddings` for semantic memory; and an MCP server's
//! sampling request (the real `server-everything`'s) answered by it. Fakes show only the quirks
//! we already know; these show the real ones.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sparky::common::error::Result as SparkyResult;
use sparky::common::protocol::{ServerEnvelope, ServerFrame, StatusCode, ToolStatus};
use sparky::conversation::memory::SemanticGraph;
use sparky::model::embed::{EmbedOptions, RemoteEmbedder};
use sparky::model::openai::{RemoteModel, RemoteOptions, RetryPolicy};
use sparky::model::{
    Conversation, ModelBackend, ModelReply, ReplySink, Role, ToolArgs, ToolCall, ToolSpec,
};
use sparky::store::{GraphStore, SqliteStore};
use support::{Client, TestServer};

/// How long the model server may take to load and to answer: a small model on two busy cores.
const MODEL_WAIT: Duration = Duration::from_secs(120);

/// The server binary and the model, from the build script.
fn artifacts() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(root.join("scripts/llama-server.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/llama-server.sh runs");
    assert!(output.status.success(), "scripts/llama-server.sh failed");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines().map(|line| root.join(line.trim()));
    (lines.next().unwrap(), lines.next().unwrap())
}

/// A running `llama-server`; killed when dropped. Its log lines arrive on `log`.
struct Llama {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Llama {
    fn start(ctx_size: u32, port: Option<u16>) -> Self {
        Self::start_with(ctx_size, port, &[])
    }

    /// [`Llama::start`] with `extra` arguments for the server.
    fn start_with(ctx_size: u32, port: Option<u16>, extra: &[&str]) -> Self {
        let (server, model) = artifacts();
        let port = port.unwrap_or_else(|| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let mut child = Command::new(server)
            .args(["-m"])
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--ctx-size",
                &ctx_size.to_string(),
                "--temp",
                "0",
                "--seed",
                "1",
            ])
            .args(["--threads", "2", "--parallel", "1", "--jinja"])
            // A small model asked for "OK" may ramble to the end of its window; a cap keeps a
            // turn within seconds on a busy two-core machine (an answer cut by it is reported
            // as `truncated`, which these tests accept).
            .args(["--n-predict", "128"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("llama-server starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let llama = Llama { child, port, log };
        llama.wait_healthy();
        llama
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits until `GET /health` answers 200 (the model is loaded).
    fn wait_healthy(&self) {
        let deadline = Instant::now() + MODEL_WAIT;
        loop {
            if let Ok(mut stream) = TcpStream::connect(self.addr()) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = write!(
                    stream,
                    "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                );
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "llama-server did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// True once a log line contains `text`.
    fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(text))
    }

    fn model(&self) -> Arc<RemoteModel> {
        Self::model_at(self.addr())
    }

    /// The model, reached at `addr` (a proxy in front of the server).
    fn model_at(addr: SocketAddr) -> Arc<RemoteModel> {
        let mut options = RemoteOptions::new(format!("http://{addr}/v1"), "smollm2");
        options.connect_timeout = Duration::from_secs(5);
        options.read_timeout = MODEL_WAIT;
        options.retry = RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(200),
        };
        Arc::new(RemoteModel::new(options))
    }
}

impl Drop for Llama {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Sparky (in memory) on `llama`'s model, with a context budget of `window` tokens.
fn sparky(llama: &Llama, window: usize) -> TestServer {
    TestServer::with_model(
        |config| {
            config.in_memory = true;
            config.context_tokens = Some(window);
        },
        llama.model(),
    )
}

/// Sends `text` and reads the turn's frames up to its closing one, waiting as long as a model
/// may take.
fn turn(client: &mut Client, text: &str) -> Vec<ServerFrame> {
    client.say(text);
    finish(client)
}

/// Reads the frames of the turn just started up to its closing one (its `user_message` left
/// out), waiting as long as a model may take.
fn finish(client: &mut Client) -> Vec<ServerFrame> {
    let deadline = Instant::now() + MODEL_WAIT;
    let mut frames = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the turn did not end: {frames:#?}"
        );
        let Ok(envelope) = client.try_next_within(deadline - Instant::now()) else {
            panic!("the connection closed: {frames:#?}");
        };
        let ServerEnvelope { frame, .. } = envelope;
        let closes = frame.closes_turn();
        if !matches!(frame, ServerFrame::UserMessage { .. }) {
            frames.push(frame);
        }
        if closes {
            return frames;
        }
    }
}

fn answer(frames: &[ServerFrame]) -> String {
    match frames.last() {
        Some(ServerFrame::Message { text, .. }) => text.clone(),
        other => panic!("no answer: {other:?}; {frames:#?}"),
    }
}

fn deltas(frames: &[ServerFrame]) -> String {
    frames
        .iter()
        .filter_map(|frame| match frame {
            ServerFrame::MessageDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn has_status(frames: &[ServerFrame], code: StatusCode) -> bool {
    frames
        .iter()
        .any(|frame| matches!(frame, ServerFrame::Status(status) if status.code == code))
}

#[test]
fn a_real_model_streams_answers_keeps_context_and_stops_when_cancelled() {
    let llama = Llama::start(2048, None);
    let server = sparky(&llama, 2048);

    // A plain streamed answer: the pieces make up the message, and at temperature 0 the same
    // question in another conversation gets the same answer.
    let mut first = server.client();
    let frames = turn(
        &mut first,
        "What is the capital of France? Answer in one short sentence.",
    );
    let text = answer(&frames);
    assert!(!text.trim().is_empty());
    assert_eq!(deltas(&frames).trim(), text.trim());
    let mut second = server.client();
    let again = turn(
        &mut second,
        "What is the capital of France? Answer in one short sentence.",
    );
    assert_eq!(answer(&again), text, "temperature 0 is deterministic");

    // A multi-turn conversation: the second turn is answered with the first in its context.
    let frames = turn(&mut first, "Say that again, please.");
    assert!(!answer(&frames).trim().is_empty());

    // A cancel stops the generation on the server too, and the story so far is kept: the
    // closing `status cancelled` carries every piece that was streamed (tests/kept_answers.rs
    // shows the model seeing it in later turns).
    first.say("Write a very long story about a lighthouse keeper, with many chapters.");
    let deadline = Instant::now() + MODEL_WAIT;
    let mut story = String::new();
    while story.trim().is_empty() {
        assert!(Instant::now() < deadline, "no piece of the story arrived");
        let frame = first.try_next_within(deadline - Instant::now()).unwrap();
        if let ServerFrame::MessageDelta { text, .. } = frame.frame {
            story.push_str(&text);
        }
    }
    first.cancel();
    let kept = loop {
        let frame = first.try_next_within(MODEL_WAIT).unwrap();
        match frame.frame {
            ServerFrame::MessageDelta { text, .. } => story.push_str(&text),
            ServerFrame::Status(status) if status.code == StatusCode::Cancelled => {
                break status.text;
            }
            _ => {}
        }
    };
    assert_eq!(kept.as_deref(), Some(story.as_str()));
    let deadline = Instant::now() + MODEL_WAIT;
    while !llama.logged("cancel") {
        assert!(
            Instant::now() < deadline,
            "llama-server never logged the cancel"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A proxy in front of `upstream` that forwards bytes both ways and keeps every byte its
/// clients sent: what Sparky asked the model server, exactly as it went on the wire.
struct Recorder {
    addr: SocketAddr,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let kept = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let (Ok(client), Ok(server)) = (client, TcpStream::connect(upstream)) else {
                    continue;
                };
                let (mut client_in, mut server_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let kept = kept.clone();
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = client_in.read(&mut buffer) {
                        kept.lock().unwrap().extend_from_slice(&buffer[..n]);
                        if server_out.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = server_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut server_in, mut client_out) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_in, &mut client_out);
                    let _ = client_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Recorder { addr, sent }
    }

    /// Everything sent from byte `from` on, as text.
    fn sent_since(&self, from: usize) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()[from..]).into_owned()
    }
}

/// `text` as it appears inside a JSON string.
fn json_escaped(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap();
    quoted[1..quoted.len() - 1].to_owned()
}

/// A `regenerate` asks the real model the same question again without the first answer in
/// the request (the proxy shows what went on the wire), and at temperature 0 the same context
/// gets the same answer, in a new turn beside the first.
#[test]
fn a_regenerated_answer_is_asked_for_without_the_first_one() {
    let llama = Llama::start(2048, None);
    let recorder = Recorder::start(llama.addr());
    let server = TestServer::with_model(
        |config| {
            config.in_memory = true;
            config.context_tokens = Some(2048);
        },
        Llama::model_at(recorder.addr),
    );
    let mut client = server.client();
    let question = "Name one fruit that is red. Answer in one short sentence.";
    let first = answer(&turn(&mut client, question));
    assert!(!first.trim().is_empty());
    let asked_before = recorder.sent.lock().unwrap().len();
    client.send(serde_json::json!({"type": "regenerate", "data": {"turn_id": 1}}));
    let opened = client.expect("user_message");
    assert!(
        matches!(
            &opened.frame,
            ServerFrame::UserMessage { turn_id, text, regenerate_of: Some(of), .. }
                if turn_id.0 == 2 && text == question && of.0 == 1
        ),
        "{opened:?}"
    );
    let second = answer(&finish(&mut client));
    let request = recorder.sent_since(asked_before);
    assert!(
        request.contains(&json_escaped(question)),
        "the question was not asked again: {request}"
    );
    assert!(
        !request.contains(&json_escaped(first.trim())),
        "the first answer reached the model: {request}"
    );
    assert_eq!(second, first, "the same context at temperature 0");
}

#[test]
fn an_overflowing_conversation_is_trimmed_or_recovered_and_a_restarted_server_is_found_again() {
    let llama = Llama::start(768, None);
    // Sparky believes the window is far larger than it is: the server's overflow answer is
    // what recovers the conversation.
    let server = sparky(&llama, 100_000);
    let mut client = server.client();
    let paste = "The quick brown fox jumps over the lazy dog. ".repeat(25);
    let mut recovered = false;
    for n in 0..6 {
        let frames = turn(&mut client, &format!("Note {n}: {paste} Reply with OK."));
        recovered |= has_status(&frames, StatusCode::HistoryReset);
        answer(&frames);
    }
    assert!(recovered, "the server never overflowed");

    // With the real window, Sparky trims before the server has to refuse.
    let trimming = sparky(&llama, 768);
    let mut client = trimming.client();
    let mut trimmed = false;
    for n in 0..6 {
        let frames = turn(&mut client, &format!("Note {n}: {paste} Reply with OK."));
        trimmed |= has_status(&frames, StatusCode::ContextTrimmed);
        assert!(
            !has_status(&frames, StatusCode::HistoryReset),
            "{frames:#?}"
        );
        answer(&frames);
    }
    assert!(trimmed);

    // The server dies mid-conversation: the turn fails and says so; once it is back on the
    // same port, the conversation goes on.
    let port = llama.port;
    drop(llama);
    let frames = turn(&mut client, "Are you there?");
    assert!(
        matches!(frames.last(), Some(ServerFrame::Error { .. })),
        "{frames:#?}"
    );
    let _llama = Llama::start(768, Some(port));
    let frames = turn(&mut client, "Are you back? Reply with OK.");
    assert!(!answer(&frames).trim().is_empty());
}

#[test]
fn semantic_memory_embeds_facts_through_a_real_embeddings_endpoint() {
    // llama-server with `--embedding` serves `POST /v1/embeddings` (mean-pooled SmolLM2 here:
    // not a retrieval model, so what is checked is that its answers are taken and stored, per
    // owner, and that searches still work with them; not the quality of what is found).
    let llama = Llama::start_with(512, None, &["--embedding", "--pooling", "mean"]);
    let store: Arc<dyn GraphStore> = Arc::new(SqliteStore::in_memory().unwrap());
    let embedder = RemoteEmbedder::new(EmbedOptions {
        base_url: format!("http://{}/v1", llama.addr()),
        model: "smollm2".into(),
        api_key: None,
        timeout: MODEL_WAIT,
    });
    let graph = SemanticGraph::start(store.clone(), Arc::new(embedder)).unwrap();
    for fact in [
        "The spare key is under the blue flowerpot.",
        "Our dentist appointment is on the first Monday of March.",
        "The wifi password is written inside the kitchen cupboard.",
    ] {
        graph.remember("ann", fact).unwrap();
    }
    // The background worker embeds every fact through the real server.
    let deadline = Instant::now() + MODEL_WAIT;
    while !store.unembedded("smollm2", 10).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the facts were never embedded");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A search embeds its query through the server too; the fact it names is found, and
    // another owner finds nothing of ann's.
    let found = graph
        .search("ann", "where is the spare key", None, 3)
        .unwrap();
    assert!(
        found
            .iter()
            .any(|node| node.content.contains("blue flowerpot")),
        "{found:#?}"
    );
    assert!(
        graph
            .search("bob", "where is the spare key", None, 3)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn check_passes_against_llama_server_whatever_the_model_is_called() {
    // The README's recipe names the model `local`; llama-server answers to any name. With
    // `--embedding` the same server embeds, so `check`'s embeddings line is checked too.
    let llama = Llama::start_with(512, None, &["--embedding", "--pooling", "mean"]);
    let url = format!("http://{}/v1", llama.addr());
    let output = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(["check", "--in-memory", "--model", "openai"])
        .args(["--model-name", "local", "--model-url", &url])
        .args(["--embedding-model", "local-embed", "--embedding-url", &url])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("ok   model  local:"), "{out}");
    assert!(out.contains("ok   embed  local-embed"), "{out}");
    assert!(!out.contains("does not serve"), "{out}");
}

#[test]
fn a_question_about_an_attached_file_is_answered_from_the_passage_sent_with_it() {
    let llama = Llama::start(2048, None);
    let recorder = Recorder::start(llama.addr());
    let server = TestServer::with_model(
        |config| {
            config.in_memory = true;
            config.context_tokens = Some(2048);
        },
        Llama::model_at(recorder.addr),
    );
    // Too long to go whole into the message: the model gets the passages that match.
    let fact = "The code of the blue door is 4172.";
    let mut document: Vec<String> = (0..120)
        .map(|n| {
            format!("Note {n}: the garden needs water on dry days, and the shed is painted green.")
        })
        .collect();
    document.insert(77, fact.to_owned());
    let file = support::upload(
        server.addr,
        None,
        "house-notes.txt",
        document.join("\n\n").as_bytes(),
    );
    let mut client = server.client();
    let asked_before = recorder.sent.lock().unwrap().len();
    client.send(serde_json::json!({"type": "message", "data": {
        "text": "What is the code of the blue door? Answer with the number only.",
        "attachments": [file["id"]],
    }}));
    let answer = answer(&finish(&mut client));
    let request = recorder.sent_since(asked_before);
    assert!(
        request.contains(fact),
        "the passage did not reach the model: {request}"
    );
    assert!(
        request.contains(r#"<passage file=\"house-notes.txt\" at=\"lines "#),
        "the passage is not cited: {request}"
    );
    // SmolLM2-135M quotes more than it answers: that it answered is what holds for any model
    // (the request above is what Sparky owes it).
    assert!(!answer.trim().is_empty(), "no answer: {request}");
}

/// server-everything's sampling tool, as Sparky names it.
const SAMPLE: &str = "everything__trigger-sampling-request";

/// The conversation's model in [`a_sampling_request_is_answered_by_llama_server`]: llama-server
/// (through Sparky's OpenAI client, as `--model openai --model-url` sets it up), except that
/// the turn's steps that offer tools are scripted. SmolLM2-135M cannot be relied on to call a
/// tool, and Sparky has no client frame that calls one, so the first step calls the sampling
/// tool and the next one ends the turn, both without usage; every step offering no tools (what
/// a sampling request asks the model) goes to llama-server. The turn's usage is then the
/// sampling's alone.
struct Steered {
    llama: Arc<RemoteModel>,
}

impl ModelBackend for Steered {
    fn name(&self) -> String {
        self.llama.name()
    }

    fn context_tokens(&self) -> Option<usize> {
        self.llama.context_tokens()
    }

    fn complete(
        &self,
        conversation: Conversation<'_>,
        tools: &[ToolSpec],
        sink: &mut dyn ReplySink,
    ) -> SparkyResult<ModelReply> {
        if tools.is_empty() {
            return self.llama.complete(conversation, tools, sink);
        }
        let called = conversation
            .current
            .iter()
            .any(|message| message.role == Role::Tool);
        Ok(if called {
            ModelReply {
                text: "The server got its completion.".into(),
                ..ModelReply::default()
            }
        } else {
            ModelReply {
                tool_calls: vec![ToolCall {
                    id: "call-1".into(),
                    name: SAMPLE.into(),
                    args: ToolArgs::from(json!({
                        "prompt": "Name a color of the sky.",
                        "maxTokens": 24,
                    })),
                }],
                ..ModelReply::default()
            }
        })
    }
}

/// server-everything's sampling tool, called during a turn, asks the conversation's model
/// for a completion: the `sampling_request` is allowed, llama-server answers it (the proxy
/// shows the request reaching it), the tool's result carries llama's text, and the turn's
/// usage counts its tokens.
#[test]
fn a_sampling_request_is_answered_by_llama_server() {
    let script = std::path::Path::new(support::mcp::EVERYTHING);
    if !script.exists() || !std::path::Path::new(support::mcp::NODE).exists() {
        let message = "server-everything or its Node is missing: run scripts/npm-fixtures.sh";
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("skipped: {message}");
        return;
    }
    let llama = Llama::start(2048, None);
    let recorder = Recorder::start(llama.addr());
    let dir = support::temp_dir("llama-sampling");
    let config = support::mcp::write_config(
        &dir,
        &json!({"everything": {
            "command": support::mcp::NODE,
            "args": [script.to_str().unwrap(), "stdio"],
            "approve": "never",
        }}),
    );
    let server = TestServer::with_model(
        |config_of| {
            config_of.in_memory = true;
            config_of.context_tokens = Some(2048);
            config_of.mcp_config = Some(config.clone());
        },
        Arc::new(Steered {
            llama: Llama::model_at(recorder.addr),
        }),
    );
    support::mcp::wait_for_tool(&server, SAMPLE);
    let mut client = server.client();
    let asked_before = recorder.sent.lock().unwrap().len();
    client.say("Ask the server to sample, please.");

    // The server's request shows, and is allowed.
    let request = client.expect("sampling_request");
    let ServerFrame::SamplingRequest {
        request_id,
        server: asking,
        messages,
        max_tokens,
        ..
    } = request.frame
    else {
        panic!("not a sampling_request: {request:?}");
    };
    assert_eq!((asking.as_str(), max_tokens), ("everything", 24));
    assert!(
        messages[0].text.contains("Name a color of the sky."),
        "{messages:?}"
    );
    client.send(json!({"type": "approve", "data": {"call_id": request_id, "allow": true}}));
    let frames = finish(&mut client);

    // llama-server was asked, bounded by the request's maxTokens.
    let sent = recorder.sent_since(asked_before);
    assert!(
        sent.contains("Resource trigger-sampling-request context: Name a color of the sky."),
        "the request did not reach llama-server: {sent}"
    );
    assert!(sent.contains(r#""max_tokens":24"#), "{sent}");

    // The tool's result is llama's completion.
    let (status, result) = frames
        .iter()
        .find_map(|frame| match frame {
            ServerFrame::ToolResult { status, result, .. } => Some((*status, result.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no tool_result: {frames:#?}"));
    assert_eq!(status, ToolStatus::Success, "{result}");
    let (_, sampled) = result
        .split_once("LLM sampling result: \n")
        .unwrap_or_else(|| panic!("not a sampling result: {result}"));
    let sampled: serde_json::Value = serde_json::from_str(sampled).unwrap();
    assert_eq!(sampled["model"], "smollm2", "{sampled}");
    assert_eq!(sampled["role"], "assistant", "{sampled}");
    let text = sampled["content"]["text"].as_str().unwrap_or_default();
    assert!(!text.trim().is_empty(), "an empty completion: {sampled}");
    assert!(
        !text.contains("You said"),
        "the offline model answered: {text}"
    );

    // The turn's usage is the sampling's: the scripted steps report none.
    let Some(ServerFrame::Message {
        usage: Some(usage), ..
    }) = frames.last()
    else {
        panic!("no usage on the answer: {frames:#?}");
    };
    assert!(usage.prompt_tokens > 0, "{usage:?}");
    assert!((1..=24).contains(&usage.completion_tokens), "{usage:?}");
}
