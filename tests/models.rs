//! Model choice, usage totals and semantic memory against a fake OpenAI-compatible server (in
//! this file) that routes by path: `GET /v1/models` lists two models, chat completions answer
//! with the model's name and token counts, `POST /v1/embeddings` embeds with the deterministic
//! `HashEmbedder` (or fails as the test asks), and `POST /api/show` answers as Ollama does.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparky::common::protocol::{ErrorCode, ServerFrame, ToolStatus};
use sparky::model::ModelBackend;
use sparky::model::embed::HashEmbedder;
use sparky::model::openai::{RemoteModel, RemoteOptions};
use support::{Client, TestServer, WAIT, http_json};

/// What the fake's embeddings endpoint does.
const EMBED_OK: u8 = 0;
const EMBED_500: u8 = 1;
const EMBED_GARBAGE: u8 = 2;
const EMBED_STALL: u8 = 3;

/// The fake server: its address, the chat requests it got, and its embeddings behaviour.
struct Fake {
    addr: SocketAddr,
    chats: Receiver<Value>,
    embed_mode: Arc<AtomicU8>,
    embed_requests: Arc<AtomicUsize>,
}

impl Fake {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (chats, received) = mpsc::channel();
        let embed_mode = Arc::new(AtomicU8::new(EMBED_OK));
        let embed_requests = Arc::new(AtomicUsize::new(0));
        let (mode, count) = (embed_mode.clone(), embed_requests.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (chats, mode, count) = (chats.clone(), mode.clone(), count.clone());
                thread::spawn(move || serve(stream, &chats, &mode, &count));
            }
        });
        Fake {
            addr,
            chats: received,
            embed_mode,
            embed_requests,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A model for this server, named `name` (or `auto`), probed once as the binary does at
    /// start.
    fn model(&self, names: &[&str]) -> Arc<RemoteModel> {
        let mut options = RemoteOptions::new(self.url(), names[0]);
        options.other_models = names[1..].iter().map(|n| (*n).to_owned()).collect();
        options.read_timeout = Duration::from_secs(30);
        let model = Arc::new(RemoteModel::new(options));
        let probed = model
            .probe()
            .map(|outcome| outcome.map_err(|e| e.to_string()));
        assert_eq!(probed, Some(Ok(())));
        model
    }

    fn chat(&self) -> Value {
        self.chats.recv_timeout(WAIT).expect("no chat request")
    }
}

fn serve(stream: TcpStream, chats: &Sender<Value>, mode: &AtomicU8, count: &AtomicUsize) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut words = line.split_whitespace();
    let (method, path) = (
        words.next().unwrap_or("").to_owned(),
        words.next().unwrap_or("").to_owned(),
    );
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut stream = stream;
    let mut reply = |status: &str, kind: &str, text: &str| {
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{text}",
            text.len()
        );
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/v1/models") => {
            let list = json!({"object": "list", "data": [{"id": "alpha"}, {"id": "beta"}]});
            reply("200 OK", "application/json", &list.to_string());
        }
        ("POST", "/api/show") => {
            let show = json!({"parameters": "temperature 0.7",
                              "model_info": {"general.architecture": "llama",
                                             "llama.context_length": 2048}});
            reply("200 OK", "application/json", &show.to_string());
        }
        ("POST", "/v1/chat/completions") => {
            let model = body["model"].as_str().unwrap_or("?").to_owned();
            let _ = chats.send(body);
            let chunk = |delta: Value| json!({"choices": [{"index": 0, "delta": delta}]});
            let events = [
                chunk(json!({"content": format!("answer from {model}")})),
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
                json!({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}),
            ];
            let mut text: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
            text.push_str("data: [DONE]\n\n");
            reply("200 OK", "text/event-stream", &text);
        }
        ("POST", "/v1/embeddings") => {
            count.fetch_add(1, Ordering::SeqCst);
            match mode.load(Ordering::SeqCst) {
                EMBED_500 => reply("500 Internal Server Error", "application/json", "{}"),
                EMBED_GARBAGE => reply("200 OK", "application/json", r#"{"data": "nope"}"#),
                EMBED_STALL => thread::sleep(Duration::from_secs(3)),
                _ => {
                    let inputs: Vec<String> = match &body["input"] {
                        Value::String(one) => vec![one.clone()],
                        Value::Array(many) => many
                            .iter()
                            .map(|v| v.as_str().unwrap_or("").to_owned())
                            .collect(),
                        _ => Vec::new(),
                    };
                    let data: Vec<Value> = inputs
                        .iter()
                        .enumerate()
                        .map(|(i, text)| json!({"index": i, "embedding": HashEmbedder::vector(text)}))
                        .collect();
                    reply(
                        "200 OK",
                        "application/json",
                        &json!({"data": data}).to_string(),
                    );
                }
            }
        }
        _ => reply("404 Not Found", "application/json", "{}"),
    }
}

/// The `ready` frame a client got.
fn ready(client: &Client) -> (String, Vec<String>) {
    client
        .seen
        .iter()
        .find_map(|frame| match &frame.frame {
            ServerFrame::Ready { model, models, .. } => Some((model.clone(), models.clone())),
            _ => None,
        })
        .expect("no ready frame")
}

/// A server on `data_dir` answering with `model`, started once the directory is free.
fn sparky_on(data_dir: &Path, model: Arc<RemoteModel>) -> TestServer {
    TestServer::restart_with_model(
        data_dir,
        |config| config.system_prompt = Some(String::new()),
        model,
    )
}

#[test]
fn auto_lists_the_servers_models_and_each_conversation_uses_its_choice() {
    let fake = Fake::start();
    let model = fake.model(&["auto"]);
    assert_eq!(model.models(), ["alpha", "beta"]);
    let server = TestServer::with_model(
        |config| {
            config.in_memory = true;
            config.system_prompt = Some(String::new());
        },
        model,
    );
    let mut default = server.client();
    assert_eq!(
        ready(&default),
        ("alpha".into(), vec!["alpha".into(), "beta".into()])
    );
    assert_eq!(default.ask("hello"), "answer from alpha");
    assert_eq!(fake.chat()["model"], "alpha");

    let mut chosen = Client::connect(server.addr, json!({"model": "beta"}));
    assert_eq!(ready(&chosen).0, "beta");
    assert_eq!(chosen.ask("hello"), "answer from beta");
    assert_eq!(fake.chat()["model"], "beta");
}

#[test]
fn an_unknown_model_gets_invalid_message_and_a_resume_ignores_the_field() {
    let fake = Fake::start();
    let server = TestServer::with_model(|config| config.in_memory = true, fake.model(&["alpha"]));
    let mut client = Client::open(server.addr);
    client.send(json!({"type": "connect", "data": {"model": "gamma"}}));
    let error = client.expect("error");
    let ServerFrame::Error { code, message, .. } = &error.frame else {
        unreachable!()
    };
    assert_eq!(*code, ErrorCode::InvalidMessage);
    assert!(
        message.contains("gamma") && message.contains("alpha"),
        "{message}"
    );
    assert!(client.expect_close().is_some());

    // On resume the field is ignored, as PROTOCOL.md says.
    let first = server.client();
    let id = first.session_id.clone().unwrap();
    let resumed = Client::connect(
        server.addr,
        json!({"session_id": id.as_str(), "model": "gamma"}),
    );
    assert_eq!(resumed.session_id, Some(id));
    assert_eq!(ready(&resumed).0, "alpha");
}

#[test]
fn the_model_and_usage_totals_are_kept_with_the_conversation_across_a_restart() {
    let fake = Fake::start();
    let dir = support::temp_dir("models-restart");
    let server = sparky_on(&dir, fake.model(&["alpha", "beta"]));
    let mut client = Client::connect(server.addr, json!({"model": "beta"}));
    let id = client.session_id.clone().unwrap();
    assert_eq!(client.ask("one"), "answer from beta");
    assert_eq!(client.ask("two"), "answer from beta");
    let entry = |server: &TestServer| {
        let path = format!("/api/conversations/{}", id.as_str());
        let (status, body) = support::http_json(server.addr, "GET", &path, None, None);
        assert_eq!(status, 200, "{body}");
        body
    };
    support::wait_until("the usage to be stored", || {
        entry(&server)["usage"] == json!({"prompt_tokens": 20, "completion_tokens": 10})
    });
    assert_eq!(entry(&server)["model"], "beta");
    let (_, list) = support::http_json(server.addr, "GET", "/api/conversations", None, None);
    assert_eq!(list["conversations"][0]["usage"]["completion_tokens"], 10);
    let (_, metrics) = support::http(server.addr, "GET", "/metrics", None, None);
    assert!(
        metrics.contains(r#"sparky_model_tokens_total{model="beta",kind="prompt"} 20"#),
        "{metrics}"
    );
    drop(client);
    drop(server);

    // Another start, whose default is alpha: the conversation keeps beta, and its totals.
    let server = sparky_on(&dir, fake.model(&["alpha", "beta"]));
    let mut client = Client::resume(server.addr, &id, 0);
    assert_eq!(ready(&client).0, "beta");
    assert_eq!(client.ask("three"), "answer from beta");
    let requests: Vec<Value> = std::iter::from_fn(|| fake.chats.try_recv().ok()).collect();
    assert_eq!(requests.last().unwrap()["model"], "beta");
    support::wait_until("the third turn's usage", || {
        entry(&server)["usage"] == json!({"prompt_tokens": 30, "completion_tokens": 15})
    });
}

#[test]
fn the_context_window_comes_from_ollamas_api_show_when_there_is_no_props() {
    let fake = Fake::start();
    let model = fake.model(&["alpha"]);
    assert_eq!(model.context_tokens(), Some(2048));
}

/// The `data` of the first `ready` frame after sending `connect` with `data`, as the server
/// wrote it (not parsed into a `ServerFrame`, whose defaults would hide a missing field).
fn raw_ready(addr: SocketAddr, data: Value) -> Value {
    let mut client = Client::open(addr);
    client.send(json!({"type": "connect", "data": data}));
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no ready frame");
        match client.ws.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                if frame["type"] == "ready" {
                    return frame["data"].clone();
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

#[test]
fn ready_lists_models_when_auto_could_not_ask_the_model_server() {
    // A port nobody listens on: the model server is down at start, so `auto` has no list.
    let down = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = RemoteOptions::new(format!("http://{down}/v1"), "auto");
    options.connect_timeout = Duration::from_secs(1);
    let model = Arc::new(RemoteModel::new(options));
    assert_eq!(model.models(), Vec::<String>::new());
    let server = TestServer::with_model(|config| config.in_memory = true, model);

    let ready = raw_ready(server.addr, json!({}));
    assert_eq!(ready["models"], json!([ready["model"].clone()]), "{ready}");
    // Choosing what is offered is accepted, and follows the default.
    let chosen = raw_ready(server.addr, json!({"model": ready["model"].clone()}));
    assert_eq!(chosen["models"], ready["models"], "{chosen}");
}

/// Sends `/recall query` and returns the tool's result.
fn recall(client: &mut Client, query: &str) -> String {
    client.say(&format!("/recall {query}"));
    let opened = client.expect("user_message");
    let turn = opened.frame.turn_id().unwrap().0;
    let frames = client.finish_turn(turn);
    assert!(
        matches!(
            frames.last().map(|f| &f.frame),
            Some(ServerFrame::Message { .. })
        ),
        "the turn did not answer: {frames:?}"
    );
    let (status, result) = support::tool_result(&frames);
    assert_eq!(status, ToolStatus::Success, "{result}");
    result
}

/// Waits, longer than [`WAIT`] (the worker backs off after failures), for `condition`.
fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn hybrid_recall_finds_a_paraphrase_keywords_miss_and_old_facts_are_backfilled() {
    let fake = Fake::start();
    let dir = support::temp_dir("models-backfill");
    // Without embeddings: the fact is stored, and a paraphrase finds nothing.
    let server = TestServer::restart_on(&dir);
    let mut client = server.client();
    client.ask("/remember Ann spends her weekends on photography");
    assert!(!recall(&mut client, "photograph").contains("weekends"));
    drop(client);
    drop(server);

    // With embeddings: the old fact is embedded at start, and the paraphrase finds it.
    let server = TestServer::restart_with(&dir, |config| {
        config.embedding_model = Some("hash".into());
        config.embedding_url = Some(fake.url());
    });
    let mut client = server.client();
    eventually("the backfill", WAIT, || {
        recall(&mut client, "photograph").contains("weekends")
    });
    // A fact stored now is embedded too, and keywords still work.
    assert!(!recall(&mut client, "psychology").contains("sister"));
    client.ask("/remember My sister works as a psychologist");
    eventually("the new fact to be embedded", WAIT, || {
        recall(&mut client, "psychology").contains("sister")
    });
    assert!(recall(&mut client, "psychologist").contains("sister"));
}

#[test]
fn a_memory_edited_by_hand_is_embedded_again() {
    let fake = Fake::start();
    let server = TestServer::with_config(|config| {
        config.embedding_model = Some("hash".into());
        config.embedding_url = Some(fake.url());
    });
    let mut client = server.client();
    let body = json!({"content": "Ann spends her weekends on photography"}).to_string();
    let (status, added) = http_json(server.addr, "POST", "/api/memories", None, Some(&body));
    assert_eq!(status, 201, "{added}");
    eventually("the new memory to be embedded", WAIT, || {
        recall(&mut client, "photograph").contains("weekends")
    });
    // Only the new content's vector matches "astronomer" and not "photograph" (no keyword
    // matches either): the old vector went with the old content, and the new one came.
    let path = format!("/api/memories/{}", added["id"]);
    let body = json!({"content": "Ann spends her weekends on astronomy"}).to_string();
    let (status, edited) = http_json(server.addr, "PATCH", &path, None, Some(&body));
    assert_eq!(status, 200, "{edited}");
    eventually("the edited memory to be embedded again", WAIT, || {
        recall(&mut client, "astronomer").contains("astronomy")
            && !recall(&mut client, "photograph").contains("weekends")
    });
}

#[test]
fn embedding_failures_never_fail_a_turn_and_are_retried() {
    let fake = Fake::start();
    let server = TestServer::with_config(|config| {
        config.in_memory = true;
        config.embedding_model = Some("hash".into());
        config.embedding_url = Some(fake.url());
        config.embedding_timeout = Duration::from_millis(300);
    });
    let mut client = server.client();
    for mode in [EMBED_500, EMBED_GARBAGE, EMBED_STALL] {
        fake.embed_mode.store(mode, Ordering::SeqCst);
        let before = fake.embed_requests.load(Ordering::SeqCst);
        let started = Instant::now();
        client.ask(&format!("/remember Fact number {mode} about photography"));
        // Recall answers by keywords, and a turn waits for a stalled server no longer than the
        // embedding timeout.
        assert!(recall(&mut client, "photography").contains(&format!("number {mode}")));
        assert!(!recall(&mut client, "photograph").contains("number"));
        assert!(started.elapsed() < Duration::from_secs(3), "mode {mode}");
        assert!(
            fake.embed_requests.load(Ordering::SeqCst) > before,
            "mode {mode}"
        );
    }
    // Once the server answers, the worker's retry embeds what waited.
    fake.embed_mode.store(EMBED_OK, Ordering::SeqCst);
    eventually("the retried embeddings", Duration::from_secs(30), || {
        recall(&mut client, "photograph").contains("number 1")
    });
}
