//! The OpenAI-compatible backend against a fake model server (std::net, in this file), driven
//! through a real Sparky and a real WebSocket client: streamed answers, the tool-call shapes of
//! OpenAI and Ollama, reasoning, retries, a rejected history, the step limit, and cancellation
//! that reaches the network.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparky::Config;
use sparky::common::protocol::{ErrorCode, ServerEnvelope, ServerFrame, StatusCode, ToolStatus};
use sparky::model::openai::{RemoteModel, RemoteOptions, RetryPolicy};
use support::{ChildServer, Client, TestServer, WAIT};

/// One canned answer of the fake server, for one connection.
enum Reply {
    /// `200` with these server-sent events (`data:` payloads), chunked or close-delimited.
    Stream { events: Vec<String>, chunked: bool },
    /// Any status, with extra headers and a body.
    Status {
        line: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        body: String,
    },
    /// Reads the request, sends `200` and `first` (or nothing at all when `None`), then waits
    /// for the client to go away and reports when it did.
    Stall {
        first: Option<String>,
        closed: Sender<Instant>,
    },
}

/// A fake OpenAI-compatible server that answers each connection with the next reply of its
/// script, and hands every request body to the test.
struct FakeServer {
    addr: SocketAddr,
    requests: Receiver<Value>,
}

impl FakeServer {
    fn start(script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests, received) = mpsc::channel();
        thread::spawn(move || {
            // Past the script the listener closes, so that further requests are refused.
            // `GET /models` (the binary's probe) is answered on the side and takes no turn.
            let mut script = std::collections::VecDeque::from(script);
            while !script.is_empty() {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let Some(head) = read_head(&stream) else {
                    continue;
                };
                if head.get {
                    answer_models(stream);
                    continue;
                }
                if head.show {
                    // Ollama's `POST /api/show` (the probe asks it for the window): not Ollama.
                    let mut stream = stream;
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                let Some(reply) = script.pop_front() else {
                    return;
                };
                let requests = requests.clone();
                thread::spawn(move || serve(stream, head, reply, &requests));
            }
        });
        FakeServer {
            addr,
            requests: received,
        }
    }

    /// The next request's body.
    fn request(&self) -> Value {
        self.requests
            .recv_timeout(WAIT)
            .expect("the fake server got no request")
    }

    /// A model that talks to this server, with quick retries and a read timeout far longer
    /// than any wait of the tests (so that a test would notice a turn waiting for it).
    fn model(&self) -> Arc<RemoteModel> {
        self.model_with(|_| {})
    }

    /// [`FakeServer::model`] with its options adjusted by `adjust`.
    fn model_with(&self, adjust: impl FnOnce(&mut RemoteOptions)) -> Arc<RemoteModel> {
        let mut options = RemoteOptions::new(format!("http://{}/v1/", self.addr), "test-model");
        options.connect_timeout = Duration::from_secs(5);
        options.read_timeout = Duration::from_secs(60);
        options.retry = RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        };
        adjust(&mut options);
        Arc::new(RemoteModel::new(options))
    }

    /// A Sparky (in memory) answering with this server's model, with no system prompt
    /// unless `adjust` sets one.
    fn sparky(&self, adjust: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::with_model(
            |config| {
                config.in_memory = true;
                config.system_prompt = Some(String::new());
                adjust(config);
            },
            self.model(),
        )
    }
}

/// A request's head, as far as the fake cares.
struct Head {
    get: bool,
    /// `POST /api/show`.
    show: bool,
    length: usize,
    authorization: Option<String>,
    /// The reader, holding whatever of the body it read ahead.
    reader: BufReader<TcpStream>,
}

/// Reads a request head; `None` when the client went away first.
fn read_head(stream: &TcpStream) -> Option<Head> {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    reader.read_line(&mut head).ok().filter(|n| *n > 0)?;
    let get = head.starts_with("GET ");
    let show = head.starts_with("POST /api/show ");
    let mut length = 0;
    let mut authorization = None;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            } else if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            }
        }
    }
    Some(Head {
        get,
        show,
        length,
        authorization,
        reader,
    })
}

/// Answers `GET /models` with the one model the tests ask for.
fn answer_models(mut stream: TcpStream) {
    let body = json!({"object": "list", "data": [{"id": "test-model", "object": "model"}]});
    let body = body.to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Reads one request's body and answers it with `reply`.
fn serve(stream: TcpStream, head: Head, reply: Reply, requests: &Sender<Value>) {
    let Head {
        length,
        authorization,
        mut reader,
        ..
    } = head;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let mut body: Value = serde_json::from_slice(&body).unwrap();
    // The test sees the one header it checks as a field of the body.
    if let Some(authorization) = authorization {
        body["_authorization"] = authorization.into();
    }
    let _ = requests.send(body);
    let mut stream = stream;
    match reply {
        Reply::Stream { events, chunked } => {
            let framing = if chunked {
                "Transfer-Encoding: chunked"
            } else {
                "Connection: close"
            };
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{framing}\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            for event in events {
                let _ = stream.write_all(&frame(&format!("data: {event}\n\n"), chunked));
            }
            if chunked {
                let _ = stream.write_all(b"0\r\n\r\n");
            }
        }
        Reply::Status {
            line,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {line}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("Connection: close\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
        Reply::Stall { first, closed } => {
            if let Some(first) = first {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                            Transfer-Encoding: chunked\r\n\r\n";
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&frame(&format!("data: {first}\n\n"), true));
                let _ = stream.flush();
            }
            // The request was read whole, so anything but a timeout means the client left.
            let mut byte = [0u8; 1];
            match stream.read(&mut byte) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                _ => {
                    let _ = closed.send(Instant::now());
                }
            }
        }
    }
    let _ = stream.flush();
}

/// `text` as one piece of a chunked body, or as it is.
fn frame(text: &str, chunked: bool) -> Vec<u8> {
    if chunked {
        format!("{:x}\r\n{text}\r\n", text.len()).into_bytes()
    } else {
        text.as_bytes().to_vec()
    }
}

const DONE: &str = "[DONE]";

fn delta(delta: Value) -> String {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
           "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
    .to_string()
}

fn content(text: &str) -> String {
    delta(json!({"content": text}))
}

fn tool_calls(fragments: Value) -> String {
    delta(json!({"tool_calls": fragments}))
}

fn stream(events: Vec<String>) -> Reply {
    Reply::Stream {
        events,
        chunked: true,
    }
}

/// The chunk that says why the model stopped.
fn finished(reason: &str) -> String {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
           "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
    .to_string()
}

fn answer(text: &str) -> Reply {
    stream(vec![
        delta(json!({"role": "assistant", "content": ""})),
        content(text),
        finished("stop"),
        DONE.into(),
    ])
}

fn status(line: &'static str, headers: Vec<(&'static str, &'static str)>, body: Value) -> Reply {
    Reply::Status {
        line,
        headers,
        body: body.to_string(),
    }
}

/// Sends `text` and returns the frames of its turn, up to the one that closes it.
fn turn(client: &mut Client, text: &str) -> Vec<ServerFrame> {
    client.say(text);
    let opened = client.expect("user_message");
    let id = opened.frame.turn_id().unwrap().0;
    client
        .finish_turn(id)
        .into_iter()
        .map(|envelope: ServerEnvelope| envelope.frame)
        .collect()
}

fn final_text(frames: &[ServerFrame]) -> &str {
    match frames.last() {
        Some(ServerFrame::Message { text, .. }) => text,
        other => panic!("the turn did not answer: {other:?}; frames: {frames:#?}"),
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

fn thoughts(frames: &[ServerFrame]) -> Vec<&str> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            ServerFrame::Thought { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn statuses(frames: &[ServerFrame]) -> Vec<(StatusCode, Option<u32>, Option<u64>)> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            ServerFrame::Status(status) => Some((status.code, status.attempt, status.delay_ms)),
            _ => None,
        })
        .collect()
}

/// `(call_id, name, args)` of each `tool_use`, and `(call_id, status, result)` of each
/// `tool_result`, in the order they came.
fn tool_frames(frames: &[ServerFrame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            ServerFrame::ToolUse {
                call_id,
                name,
                args,
                ..
            } => Some(format!("use {call_id} {name} {args}")),
            ServerFrame::ToolResult {
                call_id,
                status,
                result,
                ..
            } => Some(format!(
                "result {call_id} {} {result}",
                if *status == ToolStatus::Success {
                    "ok"
                } else {
                    "error"
                }
            )),
            _ => None,
        })
        .collect()
}

fn roles(request: &Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_plain_answer_streams_deltas_then_one_message() {
    let fake = FakeServer::start(vec![stream(vec![
        delta(json!({"role": "assistant", "content": ""})),
        content("Hello"),
        content(", "),
        content("world"),
        content("!"),
        DONE.into(),
    ])]);
    // The built-in system prompt.
    let server = fake.sparky(|config| config.system_prompt = None);
    let mut client = server.client();
    assert!(matches!(
        &client.seen[1].frame,
        ServerFrame::Ready { model, .. } if model == "test-model"
    ));
    let frames = turn(&mut client, "hi");
    assert_eq!(final_text(&frames), "Hello, world!");
    assert!(matches!(frames[0], ServerFrame::MessageDelta { .. }));
    assert_eq!(deltas(&frames), "Hello, world!");

    let request = fake.request();
    assert!(request.get("_authorization").is_none());
    assert_eq!(request["model"], "test-model");
    assert_eq!(request["stream"], true);
    assert_eq!(roles(&request), ["system", "user"]);
    // The built-in system prompt, with today's date.
    let system = request["messages"][0]["content"].as_str().unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let today = format!(
        "{:04}-{:02}-{:02}",
        today.year(),
        u8::from(today.month()),
        today.day()
    );
    assert!(
        system.starts_with("You are Sparky") && system.contains(&today),
        "{system}"
    );
    assert_eq!(request["messages"][1]["content"], "hi");
    let tools: Vec<&str> = request["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| {
            assert_eq!(tool["type"], "function");
            assert_eq!(tool["function"]["parameters"]["type"], "object");
            tool["function"]["name"].as_str().unwrap()
        })
        .collect();
    assert!(tools.contains(&"calculator"), "{tools:?}");
}

#[test]
fn the_api_key_goes_in_the_authorization_header() {
    let fake = FakeServer::start(vec![answer("authorized")]);
    let mut options = RemoteOptions::new(format!("http://{}/v1", fake.addr), "test-model");
    options.api_key = Some("sk-test-123".into());
    let server = TestServer::with_model(
        |config| config.in_memory = true,
        Arc::new(RemoteModel::new(options)),
    );
    let mut client = server.client();
    assert_eq!(final_text(&turn(&mut client, "hi")), "authorized");
    assert_eq!(fake.request()["_authorization"], "Bearer sk-test-123");
}

#[test]
fn openai_fragmented_tool_calls_run_through_the_toolchain() {
    let fake = FakeServer::start(vec![
        stream(vec![
            tool_calls(json!([{"index": 0, "id": "call_abc", "type": "function",
                "function": {"name": "calculator", "arguments": ""}}])),
            tool_calls(json!([{"index": 0, "function": {"arguments": "{\"expre"}}])),
            tool_calls(json!([{"index": 0, "function": {"arguments": "ssion\": \"2*"}}])),
            tool_calls(json!([{"index": 0, "function": {"arguments": "21\"}"}}])),
            DONE.into(),
        ]),
        answer("The answer is 42."),
    ]);
    let server = fake.sparky(|_| {});
    let mut client = server.client();
    let frames = turn(&mut client, "what is 2*21?");
    assert_eq!(
        tool_frames(&frames),
        [
            r#"use call_abc calculator {"expression":"2*21"}"#,
            "result call_abc ok 2*21 = 42",
        ]
    );
    assert_eq!(final_text(&frames), "The answer is 42.");

    let _first = fake.request();
    let second = fake.request();
    assert_eq!(roles(&second), ["user", "assistant", "tool"]);
    let call = &second["messages"][1]["tool_calls"][0];
    assert_eq!(call["id"], "call_abc");
    assert_eq!(call["function"]["name"], "calculator");
    assert_eq!(call["function"]["arguments"], r#"{"expression":"2*21"}"#);
    assert_eq!(second["messages"][2]["tool_call_id"], "call_abc");
    assert_eq!(second["messages"][2]["content"], "2*21 = 42");
}

#[test]
fn ollama_whole_tool_calls_at_index_zero_stay_apart() {
    let fake = FakeServer::start(vec![
        Reply::Stream {
            events: vec![
                tool_calls(json!([{"index": 0, "id": "call_1",
                    "function": {"name": "calculator", "arguments": "{\"expression\": \"1+1\"}"}}])),
                // The same index again, no id, and the arguments as an object.
                tool_calls(json!([{"index": 0,
                    "function": {"name": "calculator", "arguments": {"expression": "2+2"}}}])),
                DONE.into(),
            ],
            chunked: false,
        },
        answer("2 and 4"),
    ]);
    let server = fake.sparky(|_| {});
    let mut client = server.client();
    let frames = turn(&mut client, "two sums");
    let tools = tool_frames(&frames);
    assert_eq!(tools.len(), 4, "{tools:#?}");
    assert_eq!(tools[0], r#"use call_1 calculator {"expression":"1+1"}"#);
    let second_id = tools[1]
        .strip_prefix("use ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .to_owned();
    assert_ne!(second_id, "call_1");
    assert_eq!(
        tools[1],
        format!(r#"use {second_id} calculator {{"expression":"2+2"}}"#)
    );
    assert_eq!(tools[2], "result call_1 ok 1+1 = 2");
    assert_eq!(tools[3], format!("result {second_id} ok 2+2 = 4"));
    assert_eq!(final_text(&frames), "2 and 4");

    let _first = fake.request();
    let second = fake.request();
    assert_eq!(roles(&second), ["user", "assistant", "tool", "tool"]);
    assert_eq!(
        second["messages"][1]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn reasoning_becomes_thoughts_and_stays_out_of_the_answer() {
    let fake = FakeServer::start(vec![stream(vec![
        delta(json!({"reasoning_content": "The user asks "})),
        delta(json!({"reasoning_content": "about the sky."})),
        content("<thi"),
        content("nk>Blue, because of Rayleigh"),
        content(" scattering.</th"),
        content("ink>\n\nThe sky"),
        content(" is blue."),
        DONE.into(),
    ])]);
    let server = fake.sparky(|_| {});
    let mut client = server.client();
    let frames = turn(&mut client, "why is the sky blue?");
    assert_eq!(
        thoughts(&frames),
        [
            "The user asks about the sky.",
            "Blue, because of Rayleigh scattering."
        ]
    );
    assert_eq!(final_text(&frames), "The sky is blue.");
    assert_eq!(deltas(&frames), "The sky is blue.");
}

#[test]
fn a_429_is_retried_after_retry_after() {
    let fake = FakeServer::start(vec![
        status(
            "429 Too Many Requests",
            vec![("Retry-After", "1")],
            json!({"error": {"message": "slow down"}}),
        ),
        answer("made it"),
    ]);
    let server = fake.sparky(|_| {});
    let mut client = server.client();
    let started = Instant::now();
    let frames = turn(&mut client, "hello");
    assert_eq!(
        statuses(&frames),
        [(StatusCode::Retrying, Some(2), Some(1000))]
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(final_text(&frames), "made it");
}

#[test]
fn server_errors_back_off_and_other_failures_say_what_the_server_answered() {
    let fake = FakeServer::start(vec![
        status(
            "503 Service Unavailable",
            vec![],
            json!({"error": "loading"}),
        ),
        status("502 Bad Gateway", vec![], json!({})),
        answer("up again"),
        status(
            "404 Not Found",
            vec![],
            json!({"error": {"message": "model \"test-model\" not found, try pulling it first"}}),
        ),
    ]);
    let server = fake.sparky(|_| {});
    let mut client = server.client();
    let frames = turn(&mut client, "one");
    let codes: Vec<_> = statuses(&frames).into_iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        codes,
        [
            (StatusCode::Retrying, Some(2)),
            (StatusCode::Retrying, Some(3))
        ]
    );
    assert_eq!(final_text(&frames), "up again");

    let frames = turn(&mut client, "two");
    match frames.last() {
        Some(ServerFrame::Error { code, message, .. }) => {
            assert_eq!(*code, ErrorCode::ModelError);
            assert!(message.contains("404"), "{message}");
            assert!(message.contains("try pulling it first"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn an_unreachable_server_is_retried_then_reported() {
    // A port that was just free: connections are refused.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = RemoteOptions::new(format!("http://{addr}/v1"), "gone");
    options.retry = RetryPolicy {
        max_retries: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
    };
    let server = TestServer::with_model(
        |config| config.in_memory = true,
        Arc::new(RemoteModel::new(options)),
    );
    let mut client = server.client();
    let frames = turn(&mut client, "anyone?");
    assert_eq!(statuses(&frames).len(), 2);
    match frames.last() {
        Some(ServerFrame::Error { code, message, .. }) => {
            assert_eq!(*code, ErrorCode::ModelError);
            assert!(message.contains("could not be reached"), "{message}");
            assert!(message.contains("3 attempts"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_rejected_history_is_reset_and_the_turn_retried() {
    let fake = FakeServer::start(vec![
        answer("first answer"),
        status(
            "400 Bad Request",
            vec![],
            json!({"error": {"message": "Invalid parameter: messages with role 'tool' must be a \
                   response to a preceeding message with 'tool_calls'.", "type": "invalid_request_error"}}),
        ),
        answer("second answer"),
        answer("third answer"),
    ]);
    let server = fake.sparky(|_| {});
    let mut client = Client::connect(server.addr, json!({"personality": "Be brief."}));
    assert_eq!(final_text(&turn(&mut client, "one")), "first answer");
    let frames = turn(&mut client, "two");
    assert_eq!(statuses(&frames), [(StatusCode::HistoryReset, None, None)]);
    assert_eq!(final_text(&frames), "second answer");
    assert_eq!(final_text(&turn(&mut client, "three")), "third answer");

    let _first = fake.request();
    let rejected = fake.request();
    assert_eq!(roles(&rejected), ["system", "user", "assistant", "user"]);
    let retried = fake.request();
    assert_eq!(roles(&retried), ["system", "user"]);
    assert_eq!(retried["messages"][0]["content"], "Be brief.");
    assert_eq!(retried["messages"][1]["content"], "two");
    let after = fake.request();
    let contents: Vec<&str> = after["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["Be brief.", "two", "second answer", "three"]);
}

#[test]
fn the_binary_talks_to_the_model_and_the_reset_history_survives_a_restart() {
    let fake = FakeServer::start(vec![
        answer("first answer"),
        status(
            "400 Bad Request",
            vec![],
            json!({"error": {"message": "Please ensure that function response turn comes \
                   immediately after a function call turn."}}),
        ),
        answer("second answer"),
        answer("third answer"),
    ]);
    let dir = support::temp_dir("remote-reset");
    let url = format!("http://{}/v1", fake.addr);
    let args = [
        "--data-dir",
        dir.to_str().unwrap(),
        "--model",
        "openai",
        "--model-url",
        &url,
        "--model-name",
        "test-model",
        "--system-prompt",
        "",
    ];
    let server = ChildServer::start(&args);
    let mut client = Client::connect(server.addr, json!({}));
    assert!(matches!(
        &client.seen[1].frame,
        ServerFrame::Ready { model, .. } if model == "test-model"
    ));
    let session = client.session_id.clone().unwrap();
    assert_eq!(final_text(&turn(&mut client, "one")), "first answer");
    let frames = turn(&mut client, "two");
    assert_eq!(statuses(&frames), [(StatusCode::HistoryReset, None, None)]);
    assert_eq!(final_text(&frames), "second answer");
    stop(server);

    let server = ChildServer::start(&args);
    let mut client = Client::resume(server.addr, &session, client.last_seq);
    assert_eq!(final_text(&turn(&mut client, "three")), "third answer");
    for _ in 0..3 {
        fake.request();
    }
    let after = fake.request();
    let contents: Vec<&str> = after["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["two", "second answer", "three"]);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// Stops a server process with SIGTERM (a graceful shutdown) and waits for it to exit.
fn stop(mut server: ChildServer) {
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    support::wait_until("the server to exit", || {
        server.child.try_wait().unwrap().is_some()
    });
}

#[test]
fn a_model_that_never_stops_calling_tools_hits_the_step_limit() {
    let call = || {
        stream(vec![
            tool_calls(json!([{"index": 0, "function": {"name": "clock", "arguments": "{}"}}])),
            DONE.into(),
        ])
    };
    let fake = FakeServer::start(vec![call(), call(), call(), call()]);
    let server = fake.sparky(|config| config.max_steps = 3);
    let mut client = server.client();
    let frames = turn(&mut client, "loop forever");
    assert_eq!(tool_frames(&frames).len(), 6);
    match frames.last() {
        Some(ServerFrame::Error { code, .. }) => assert_eq!(*code, ErrorCode::StepLimit),
        other => panic!("expected step_limit, got {other:?}"),
    }
    for _ in 0..3 {
        fake.request();
    }
    assert!(fake.requests.try_recv().is_err(), "a fourth model call");
}

#[test]
fn cancelling_a_slow_stream_closes_its_connection() {
    let (closed, was_closed) = mpsc::channel();
    let fake = FakeServer::start(vec![
        Reply::Stall {
            first: Some(content("Once upon a time")),
            closed,
        },
        answer("fresh answer"),
    ]);
    let server = fake.sparky(|_| {});
    let mut client = server.client();
    client.say("tell me a long story");
    let delta = client.expect("message_delta");
    assert!(matches!(
        &delta.frame,
        ServerFrame::MessageDelta { text, .. } if text == "Once upon a time"
    ));
    let cancelled_at = Instant::now();
    client.cancel();
    let status = client.expect("status");
    assert!(matches!(
        &status.frame,
        ServerFrame::Status(s) if s.code == StatusCode::Cancelled
    ));
    let at = was_closed
        .recv_timeout(WAIT)
        .expect("the model connection stayed open after the cancel");
    assert!(at.duration_since(cancelled_at) < Duration::from_secs(2));

    // The next turn goes ahead at once (the stalled answer would have taken 60 s to time out).
    let frames = turn(&mut client, "something short instead");
    assert_eq!(final_text(&frames), "fresh answer");
    assert!(cancelled_at.elapsed() < WAIT);
}

#[test]
fn a_request_with_no_answer_yet_is_abandoned_when_cancelled() {
    let (closed, was_closed) = mpsc::channel();
    let fake = FakeServer::start(vec![
        Reply::Stall {
            first: None,
            closed,
        },
        answer("second try"),
    ]);
    let server = fake.sparky(|_| {});
    let mut client = server.client();
    client.say("hello?");
    client.expect("user_message");
    // The server has the request and is sitting on it.
    fake.request();
    let cancelled_at = Instant::now();
    // A new message cancels the turn in flight.
    let frames = turn(&mut client, "hello again");
    assert_eq!(final_text(&frames), "second try");
    let at = was_closed
        .recv_timeout(WAIT)
        .expect("the abandoned request's connection stayed open");
    assert!(at.duration_since(cancelled_at) < Duration::from_secs(2));
    let cancelled = client.seen.iter().any(|envelope| {
        matches!(&envelope.frame, ServerFrame::Status(s) if s.code == StatusCode::Cancelled)
    });
    assert!(cancelled);
}

#[test]
fn a_connection_that_attaches_mid_answer_first_gets_the_answer_so_far() {
    let (closed, _was_closed) = mpsc::channel();
    let fake = FakeServer::start(vec![Reply::Stall {
        first: Some(content("Once upon a time")),
        closed,
    }]);
    let server = fake.sparky(|_| {});
    let mut client = server.client();
    client.say("tell me a long story");
    let delta = client.expect("message_delta");
    assert_eq!(delta.seq, None, "pieces are not events");
    let id = client.session_id.clone().unwrap();
    let replace = |frame: &ServerEnvelope| match &frame.frame {
        ServerFrame::MessageDelta {
            turn_id,
            text,
            replace,
        } => (turn_id.0, text.clone(), *replace, frame.seq),
        other => panic!("expected the answer so far, got {other:?}"),
    };
    // A second tab joins without a replay: the answer so far comes right after `ready`.
    let mut second = Client::connect(server.addr, json!({"session_id": id.as_str()}));
    let expected = (1, "Once upon a time".to_owned(), true, None);
    assert_eq!(replace(&second.next()), expected);
    // A reload replays the turn's events first, then gets the answer so far.
    let mut reloaded = Client::resume(server.addr, &id, 0);
    assert!(matches!(
        reloaded.next().frame,
        ServerFrame::UserMessage { .. }
    ));
    assert_eq!(replace(&reloaded.next()), expected);
    // Nothing of the turn follows its closing frame, for any of them.
    client.cancel();
    for tab in [&mut client, &mut second, &mut reloaded] {
        let status = tab.expect("status");
        assert!(matches!(&status.frame, ServerFrame::Status(s) if s.code == StatusCode::Cancelled));
    }
}

#[test]
fn usage_is_summed_over_the_steps_and_the_personality_is_the_system_message() {
    let usage = |prompt: u64, completion: u64| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
               "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion}})
        .to_string()
    };
    let fake = FakeServer::start(vec![
        stream(vec![
            tool_calls(json!([{"index": 0, "id": "c1", "type": "function",
                "function": {"name": "clock", "arguments": "{}"}}])),
            usage(100, 5),
            DONE.into(),
        ]),
        stream(vec![content("It is late."), usage(130, 9), DONE.into()]),
        answer("Uncounted."),
    ]);
    let server = fake.sparky(|_| {});
    let mut client = Client::connect(server.addr, json!({"personality": "Talk like a pirate."}));
    let frames = turn(&mut client, "what time is it?");
    assert!(
        matches!(frames.last(), Some(ServerFrame::Message { text, usage: Some(usage), .. })
            if text == "It is late." && usage.prompt_tokens == 230 && usage.completion_tokens == 14),
        "{frames:#?}"
    );
    let first = fake.request();
    assert_eq!(first["stream_options"]["include_usage"], true);
    assert_eq!(roles(&first), ["system", "user"]);
    assert_eq!(first["messages"][0]["content"], "Talk like a pirate.");
    fake.request();
    // A model that reports nothing gives a message without `usage`.
    let frames = turn(&mut client, "again");
    assert!(matches!(
        frames.last(),
        Some(ServerFrame::Message { usage: None, .. })
    ));
    let third = fake.request();
    assert_eq!(third["messages"][0]["content"], "Talk like a pirate.");
    // And `/metrics` counts the tokens by model.
    let metrics = server.handle.metrics().render(0);
    for line in [
        "sparky_model_tokens_total{model=\"test-model\",kind=\"prompt\"} 230",
        "sparky_model_tokens_total{model=\"test-model\",kind=\"completion\"} 14",
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
}

/// The error a turn closed with: its code and message.
fn turn_error(frames: &[ServerFrame]) -> (ErrorCode, String) {
    match frames.last() {
        Some(ServerFrame::Error { code, message, .. }) => (*code, message.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn endings_are_truthful_empty_streams_fail_and_cut_answers_say_so() {
    let fake = FakeServer::start(vec![
        // A context overflow as llama-cpp-python answers it: 200, an empty event stream.
        stream(vec![]),
        // [DONE] with no finish_reason, then a model stopped at its length limit.
        stream(vec![content("half a sent"), DONE.into()]),
        stream(vec![content("the limit"), finished("length"), DONE.into()]),
        answer("complete"),
    ]);
    let server = fake.sparky(|_| {});
    let mut client = server.client();
    let frames = turn(&mut client, "one");
    let (code, message) = turn_error(&frames);
    assert_eq!(code, ErrorCode::ModelError);
    assert!(message.contains("without any content"), "{message}");
    assert!(
        message.contains(&fake.addr.to_string()),
        "the URL is named: {message}"
    );
    for text in ["two", "three"] {
        let frames = turn(&mut client, text);
        assert_eq!(statuses(&frames), [(StatusCode::Truncated, None, None)]);
        assert!(matches!(frames.last(), Some(ServerFrame::Message { .. })));
    }
    let frames = turn(&mut client, "four");
    assert!(statuses(&frames).is_empty());
    assert_eq!(final_text(&frames), "complete");
    // The failed turn reached the next requests as an empty reply, never as error text.
    for _ in 0..3 {
        fake.request();
    }
    let last = fake.request();
    let replies: Vec<&str> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(replies, ["", "half a sent", "the limit"]);
}

#[test]
fn an_invalid_request_is_not_retried_and_an_overflow_recovers_the_conversation() {
    let fake = FakeServer::start(vec![
        // llama-cpp-python's answer to a request it cannot parse: a 500 that says so.
        status(
            "500 Internal Server Error",
            vec![],
            json!({"error": {"message": "1 validation error for ChatCompletionRequest"}}),
        ),
        answer("fine"),
        // llama.cpp's server when the conversation no longer fits.
        status(
            "400 Bad Request",
            vec![],
            json!({"error": {"code": 400, "message": "the request exceeds the available context size (8192 tokens), try increasing it", "type": "exceed_context_size_error"}}),
        ),
        answer("fits again"),
    ]);
    let server = fake.sparky(|_| {});
    let mut client = server.client();
    let frames = turn(&mut client, "one");
    assert!(statuses(&frames).is_empty(), "not retried: {frames:?}");
    assert!(turn_error(&frames).1.contains("validation error"));
    assert_eq!(final_text(&turn(&mut client, "two")), "fine");
    let frames = turn(&mut client, "three");
    assert_eq!(statuses(&frames), [(StatusCode::HistoryReset, None, None)]);
    assert_eq!(final_text(&frames), "fits again");
}

#[test]
fn text_streamed_before_tool_calls_stays_in_the_answer() {
    let fake = FakeServer::start(vec![
        stream(vec![
            content("Let me work that out."),
            tool_calls(json!([{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "calculator", "arguments": "{\"expression\": \"6*7\"}"}}])),
            finished("tool_calls"),
            DONE.into(),
        ]),
        answer("It is 42."),
    ]);
    let server = fake.sparky(|_| {});
    let mut client = server.client();
    let frames = turn(&mut client, "what is 6*7?");
    assert_eq!(deltas(&frames), "Let me work that out.It is 42.");
    assert_eq!(final_text(&frames), "Let me work that out.\n\nIt is 42.");
    // The model sees each step as it was.
    fake.request();
    let second = fake.request();
    assert_eq!(second["messages"][1]["content"], "Let me work that out.");
}

#[test]
fn a_server_that_refuses_stream_options_is_asked_without_it_from_then_on() {
    let fake = FakeServer::start(vec![
        status(
            "400 Bad Request",
            vec![],
            json!({"error": {"message": "Unrecognized request argument supplied: stream_options"}}),
        ),
        answer("without usage"),
        answer("still without"),
    ]);
    let server = fake.sparky(|_| {});
    let mut client = server.client();
    assert_eq!(final_text(&turn(&mut client, "one")), "without usage");
    assert_eq!(final_text(&turn(&mut client, "two")), "still without");
    assert_eq!(fake.request()["stream_options"]["include_usage"], true);
    assert!(fake.request().get("stream_options").is_none());
    assert!(fake.request().get("stream_options").is_none(), "remembered");
}

#[test]
fn a_conversation_longer_than_the_window_is_trimmed_to_the_newest_exchanges() {
    let fake = FakeServer::start(vec![answer("a1"), answer("a2"), answer("a3")]);
    // About 200 tokens a question: two fit a 600-token window with room for the answer.
    let server = fake.sparky(|config| config.context_tokens = Some(600));
    let mut client = server.client();
    let long = |n: u32| format!("question {n} {}", "x".repeat(600));
    let first = turn(&mut client, &long(1));
    assert!(statuses(&first).is_empty(), "{first:?}");
    turn(&mut client, &long(2));
    let third = turn(&mut client, &long(3));
    assert_eq!(statuses(&third), [(StatusCode::ContextTrimmed, None, None)]);
    assert_eq!(final_text(&third), "a3");
    fake.request();
    fake.request();
    let request = fake.request();
    let users: Vec<&str> = request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| &m["content"].as_str().unwrap()[..10])
        .collect();
    assert_eq!(
        users,
        ["question 2", "question 3"],
        "the oldest exchange left out"
    );
    // The conversation itself is whole.
    let session = server
        .handle
        .sessions()
        .get(client.session_id.as_ref().unwrap())
        .unwrap();
    assert_eq!(session.history().len(), 6);
}

/// An MCP config starting the fixture server (`tests/fixtures/mcp_fixture.py`) with its extra
/// tools, as server `fx`.
fn image_fixture_config(name: &str) -> std::path::PathBuf {
    let dir = support::temp_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_fixture.py");
    let config = dir.join("mcp.json");
    let servers = json!({"mcpServers": {"fx": {
        "command": "python3", "args": [fixture], "env": {"MCP_FIXTURE_EXTRAS": "1"}
    }}});
    std::fs::write(&config, servers.to_string()).unwrap();
    config
}

/// A turn whose model calls the fixture's `image` tool, then answers; returns the second
/// request (the one after the tool ran).
fn image_turn(vision: bool) -> Value {
    let fake = FakeServer::start(vec![
        stream(vec![
            tool_calls(json!([{"index": 0, "id": "call_img", "type": "function",
                "function": {"name": "fx__image", "arguments": "{}"}}])),
            DONE.into(),
        ]),
        answer("A red dot."),
    ]);
    let config = image_fixture_config(&format!("remote-image-{vision}"));
    let server = TestServer::with_model(
        |c| {
            c.in_memory = true;
            c.system_prompt = Some(String::new());
            c.mcp_config = Some(config);
        },
        fake.model_with(|options| options.vision = vision),
    );
    support::wait_until("the fixture's tools", || {
        let client = Client::connect(server.addr, json!({}));
        client.seen.iter().any(|f| {
            matches!(&f.frame, ServerFrame::Ready { tools, .. } if tools.iter().any(|t| t == "fx__image"))
        })
    });
    let mut client = server.client();
    let frames = turn(&mut client, "show me");
    assert_eq!(final_text(&frames), "A red dot.");
    let _first = fake.request();
    fake.request()
}

#[test]
fn an_image_a_tool_returns_reaches_a_vision_model_as_an_image_url_part() {
    let second = image_turn(true);
    // The system message carries the fixture's instructions.
    assert_eq!(
        roles(&second),
        ["system", "user", "assistant", "tool", "user"]
    );
    assert_eq!(
        second["messages"][3]["content"],
        "a red dot\n[image: image/png, 70 B]"
    );
    let parts = second["messages"][4]["content"].as_array().unwrap();
    assert_eq!(parts[0]["type"], "text");
    assert_eq!(parts[1]["type"], "image_url");
    let url = parts[1]["image_url"]["url"].as_str().unwrap();
    assert!(
        url.starts_with("data:image/png;base64,iVBORw0KGgo"),
        "{url}"
    );
}

#[test]
fn a_model_without_vision_reads_a_note_for_the_image() {
    let second = image_turn(false);
    assert_eq!(roles(&second), ["system", "user", "assistant", "tool"]);
    assert_eq!(
        second["messages"][3]["content"],
        "a red dot\n[image: image/png, 70 B]"
    );
    assert!(!second.to_string().contains("base64"));
}
