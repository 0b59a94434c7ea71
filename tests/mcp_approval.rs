//! MCP tool calls that wait for a person (`approval_request`, `approve`), progress reports
//! (`tool_progress`) and the timeout they extend, images and structured content, over real
//! sockets against the Python fixture server (`tests/fixtures/mcp_fixture.py`, with
//! `MCP_FIXTURE_EXTRAS=1`: its `delete`, `plain`, `progress`, `image` and `weather` tools).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparky::common::protocol::{ErrorCode, ServerEnvelope, ServerFrame, StatusCode, ToolStatus};
use support::{ChildServer, Client, TestServer, kind, temp_dir, wait_until};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_fixture.py");

/// An `mcp.json` starting the fixture (with its extra tools) once per entry of `servers`,
/// `name -> {"approve"?, "timeout"?}`, and the file each server records its events in.
struct Fixture {
    config: PathBuf,
    dir: PathBuf,
}

impl Fixture {
    fn new(name: &str, servers: Value) -> Self {
        assert!(
            Command::new("python3").arg("--version").output().is_ok(),
            "the MCP tests run their fixture server with python3, which is not on PATH"
        );
        let dir = temp_dir(&format!("mcp-approval-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut entries = serde_json::Map::new();
        for (server, policy) in servers.as_object().unwrap() {
            let log = dir.join(format!("{server}.log"));
            let mut entry = json!({
                "command": "python3",
                "args": [FIXTURE],
                "env": {"MCP_FIXTURE_LOG": log.to_str().unwrap(), "MCP_FIXTURE_EXTRAS": "1"},
            });
            for (key, value) in policy.as_object().unwrap() {
                entry[key] = value.clone();
            }
            entries.insert(server.clone(), entry);
        }
        let config = dir.join("mcp.json");
        std::fs::write(&config, json!({"mcpServers": entries}).to_string()).unwrap();
        Fixture { config, dir }
    }

    /// One server `fx` with `policy`.
    fn one(name: &str, policy: Value) -> Self {
        Self::new(name, json!({ "fx": policy }))
    }

    /// A server with the offline model and this config (and `adjust`), once the tools of
    /// every configured server have joined.
    fn server_with(&self, adjust: impl FnOnce(&mut sparky::Config)) -> TestServer {
        let server = TestServer::with_config(|config| {
            config.mcp_config = Some(self.config.clone());
            adjust(config);
        });
        for name in self.server_names() {
            wait_for_tool(server.addr, &format!("{name}__delete"));
        }
        server
    }

    fn server(&self) -> TestServer {
        self.server_with(|_| {})
    }

    fn server_names(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let config: Value = serde_json::from_str(&text).unwrap();
        config["mcpServers"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// What server `name` has recorded so far.
    fn events(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(format!("{name}.log")))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// True when server `name` was called with `tool`.
    fn called(&self, name: &str, tool: &str) -> bool {
        self.events(name)
            .iter()
            .any(|event| event.starts_with("call ") && event.ends_with(&format!(" {tool}")))
    }
}

/// Waits until the `ready` frame of a new connection lists `tool`.
fn wait_for_tool(addr: std::net::SocketAddr, tool: &str) {
    wait_until(&format!("{tool} to be listed"), || {
        let client = Client::connect(addr, json!({}));
        client.seen.iter().any(|frame| match &frame.frame {
            ServerFrame::Ready { tools, .. } => tools.iter().any(|name| name == tool),
            _ => false,
        })
    });
}

/// Starts a turn calling `tool` with `args` through the offline model's `/tool`; returns the
/// turn's id.
fn start_call(client: &mut Client, tool: &str, args: Value) -> u64 {
    client.say(&format!("/tool {tool} {args}"));
    client.expect("user_message").frame.turn_id().unwrap().0
}

/// Reads the turn's frames up to its `approval_request`; returns the request's call id, name
/// and args, checking that its `tool_use` came first.
fn expect_request(client: &mut Client) -> (String, String, Value) {
    let mut used = None;
    loop {
        let frame = client.next();
        match frame.frame {
            ServerFrame::ToolUse { call_id, .. } => used = Some(call_id),
            ServerFrame::ApprovalRequest {
                call_id,
                name,
                args,
                ..
            } => {
                assert_eq!(used.as_deref(), Some(call_id.as_str()), "tool_use first");
                assert!(frame.seq.is_some(), "approval_request is an event");
                return (call_id, name, args);
            }
            ServerFrame::ToolResult { .. } => panic!("a result before any approval_request"),
            _ => {}
        }
    }
}

fn approve(client: &mut Client, call_id: &str, allow: bool) {
    client.send(json!({"type": "approve", "data": {"call_id": call_id, "allow": allow}}));
}

/// The turn's `tool_result`: status and text.
fn result_of(frames: &[ServerEnvelope]) -> (ToolStatus, String) {
    support::tool_result(frames)
}

#[test]
fn a_destructive_tool_waits_for_approval_and_runs_once_allowed() {
    let fixture = Fixture::one("allow", json!({}));
    let server = fixture.server();
    let mut client = server.client();
    let turn = start_call(&mut client, "fx__delete", json!({"path": "/tmp/x"}));
    let (call_id, name, args) = expect_request(&mut client);
    assert_eq!(name, "fx__delete");
    assert_eq!(args, json!({"path": "/tmp/x"}));
    // The server has not been called: the call waits.
    assert!(!fixture.called("fx", "delete"));
    approve(&mut client, &call_id, true);
    let frames = client.finish_turn(turn);
    assert_eq!(
        result_of(&frames),
        (ToolStatus::Success, "deleted /tmp/x".to_owned())
    );
    assert!(fixture.called("fx", "delete"));
    // A read-only tool of the same server runs unasked.
    let turn = start_call(&mut client, "fx__echo", json!({"text": "hi"}));
    let frames = client.finish_turn(turn);
    assert!(!frames.iter().any(|f| kind(f) == "approval_request"));
    assert_eq!(result_of(&frames), (ToolStatus::Success, "hi".to_owned()));
}

#[test]
fn a_denied_call_is_an_error_result_the_model_sees_and_never_reaches_the_server() {
    let fixture = Fixture::one("deny", json!({}));
    let server = fixture.server();
    let mut client = server.client();
    let turn = start_call(&mut client, "fx__delete", json!({"path": "/etc"}));
    let (call_id, ..) = expect_request(&mut client);
    approve(&mut client, &call_id, false);
    // A second answer changes nothing: the first one decided.
    approve(&mut client, &call_id, true);
    let frames = client.finish_turn(turn);
    let (status, text) = result_of(&frames);
    assert_eq!(status, ToolStatus::Error);
    assert!(text.contains("the user denied this call"), "{text}");
    // The offline model answers with the result it was given.
    let Some(ServerFrame::Message { text: answer, .. }) = frames.last().map(|f| &f.frame) else {
        panic!("the turn did not answer: {frames:#?}");
    };
    assert!(answer.contains("denied"), "{answer}");
    assert!(!fixture.called("fx", "delete"));
}

#[test]
fn nobody_answering_denies_the_call_at_the_approval_timeout() {
    let fixture = Fixture::one("timeout", json!({}));
    let server = fixture.server_with(|config| config.approval_timeout = Duration::from_millis(300));
    let mut client = server.client();
    let started = Instant::now();
    let turn = start_call(&mut client, "fx__delete", json!({"path": "/x"}));
    expect_request(&mut client);
    let frames = client.finish_turn(turn);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let (status, text) = result_of(&frames);
    assert_eq!(status, ToolStatus::Error);
    assert!(
        text.contains("nobody allowed this call within 300ms"),
        "{text}"
    );
    assert!(!fixture.called("fx", "delete"));
}

/// Checks that a turn's frames end with `status cancelled` and hold no `tool_result`.
fn assert_cancelled_unrun(frames: &[ServerEnvelope]) {
    let closing = &frames.last().unwrap().frame;
    assert!(
        matches!(closing, ServerFrame::Status(status) if status.code == StatusCode::Cancelled),
        "{closing:?}"
    );
    assert!(!frames.iter().any(|f| kind(f) == "tool_result"));
}

#[test]
fn a_cancel_or_a_newer_message_ends_the_wait_at_once() {
    let fixture = Fixture::one("cancel", json!({}));
    // The default timeout (5 min) would hold the test far past its waits.
    let server = fixture.server();
    let mut client = server.client();
    let turn = start_call(&mut client, "fx__delete", json!({"path": "/x"}));
    let (call_id, ..) = expect_request(&mut client);
    let started = Instant::now();
    client.cancel();
    let frames = client.finish_turn(turn);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_cancelled_unrun(&frames);
    // Too late to allow it now: nothing runs.
    approve(&mut client, &call_id, true);

    let turn = start_call(&mut client, "fx__delete", json!({"path": "/y"}));
    expect_request(&mut client);
    client.say("never mind");
    assert_cancelled_unrun(&client.finish_turn(turn));
    // The newer message's own turn runs and answers.
    let newer = client.expect("user_message").frame.turn_id().unwrap().0;
    let frames = client.finish_turn(newer);
    assert!(matches!(
        &frames.last().unwrap().frame,
        ServerFrame::Message { text, .. } if text == "You said: never mind"
    ));
    assert!(!fixture.called("fx", "delete"));
}

#[test]
fn another_connection_of_the_session_may_answer() {
    let fixture = Fixture::one("second", json!({}));
    let server = fixture.server();
    let mut phone = server.client();
    let session = phone.session_id.clone().unwrap();
    let turn = start_call(&mut phone, "fx__delete", json!({"path": "/p"}));
    let (call_id, ..) = expect_request(&mut phone);
    // The laptop joins from the start and sees the waiting request by replay.
    let mut laptop = Client::resume(server.addr, &session, 0);
    let (replayed, ..) = expect_request(&mut laptop);
    assert_eq!(replayed, call_id);
    approve(&mut laptop, &call_id, true);
    for client in [&mut phone, &mut laptop] {
        let frames = client.finish_turn(turn);
        assert_eq!(result_of(&frames).0, ToolStatus::Success);
    }
}

#[test]
fn an_answer_through_another_instance_reaches_the_waiting_turn() {
    // Two instances on one PostgreSQL database (tests/cluster.rs), each with the fixture.
    let fixture = Fixture::one("cluster", json!({}));
    let url = support::postgres::fresh_database();
    let a = fixture.server_with(|c| c.database_url = Some(url.clone()));
    let b = fixture.server_with(|c| c.database_url = Some(url.clone()));
    let mut phone = a.client();
    let session = phone.session_id.clone().unwrap();
    let turn = start_call(&mut phone, "fx__delete", json!({"path": "/far"}));
    let (call_id, ..) = expect_request(&mut phone);
    // The laptop, on B, sees the waiting request by replay and answers it there; the turn
    // waits on A.
    let mut laptop = Client::resume(b.addr, &session, 0);
    let (replayed, ..) = expect_request(&mut laptop);
    assert_eq!(replayed, call_id);
    approve(&mut laptop, &call_id, true);
    for client in [&mut phone, &mut laptop] {
        let frames = client.finish_turn(turn);
        assert_eq!(
            result_of(&frames),
            (ToolStatus::Success, "deleted /far".to_owned())
        );
    }
}

#[test]
fn a_waiting_call_survives_a_disconnect_and_is_replayed_on_resume() {
    let fixture = Fixture::one("replay", json!({}));
    let server = fixture.server();
    let mut client = server.client();
    let session = client.session_id.clone().unwrap();
    let turn = start_call(&mut client, "fx__delete", json!({"path": "/r"}));
    let opened = client.last_seq;
    let (call_id, ..) = expect_request(&mut client);
    drop(client);
    let mut back = Client::resume(server.addr, &session, opened);
    let (replayed, name, _) = expect_request(&mut back);
    assert_eq!(
        (replayed.as_str(), name.as_str()),
        (call_id.as_str(), "fx__delete")
    );
    approve(&mut back, &call_id, true);
    let frames = back.finish_turn(turn);
    assert_eq!(
        result_of(&frames),
        (ToolStatus::Success, "deleted /r".to_owned())
    );
}

#[test]
fn an_approve_for_a_call_that_is_not_waiting_gets_not_waiting_and_changes_nothing() {
    let fixture = Fixture::one("unknown", json!({}));
    let server = fixture.server();
    let mut client = server.client();
    // PROTOCOL.md section 5: `error` `not_waiting` (no seq), and nothing changes.
    let not_waiting = |client: &mut Client| {
        let error = client.expect("error");
        assert_eq!(error.seq, None);
        assert!(matches!(
            error.frame,
            ServerFrame::Error {
                code: ErrorCode::NotWaiting,
                turn_id: None,
                ..
            }
        ));
    };
    approve(&mut client, "call_404", true);
    not_waiting(&mut client);
    client.say("hello");
    let next = client.next();
    assert_eq!(kind(&next), "user_message", "{next:?}");
    let turn = next.frame.turn_id().unwrap().0;
    client.finish_turn(turn);
    // An answer for another call leaves the waiting one waiting.
    let turn = start_call(&mut client, "fx__delete", json!({"path": "/u"}));
    let (call_id, ..) = expect_request(&mut client);
    approve(&mut client, "call_404", true);
    not_waiting(&mut client);
    approve(&mut client, &call_id, false);
    let frames = client.finish_turn(turn);
    assert!(result_of(&frames).1.contains("denied"));
    // A second answer for the call, now decided, changes nothing either.
    approve(&mut client, &call_id, true);
    not_waiting(&mut client);
    // A frame with missing fields is still rejected as any bad frame is.
    client.send(json!({"type": "approve", "data": {"call_id": "x"}}));
    let error = client.expect("error");
    assert!(matches!(
        error.frame,
        ServerFrame::Error {
            code: ErrorCode::InvalidMessage,
            ..
        }
    ));
}

/// Calls `tool` and says whether the turn asked for approval; allows it when it did.
fn asks(client: &mut Client, tool: &str) -> bool {
    let turn = start_call(client, tool, json!({"text": "t", "path": "/p", "steps": 1}));
    let mut asked = false;
    loop {
        let frame = client.next();
        if frame.frame.turn_id().map(|t| t.0) != Some(turn) {
            continue;
        }
        match &frame.frame {
            ServerFrame::ApprovalRequest { call_id, .. } => {
                asked = true;
                let call_id = call_id.clone();
                approve(client, &call_id, true);
            }
            ServerFrame::ToolResult { status, result, .. } => {
                assert_eq!(*status, ToolStatus::Success, "{tool}: {result}");
            }
            frame if frame.closes_turn() => return asked,
            _ => {}
        }
    }
}

#[test]
fn the_config_decides_which_tools_ask_and_the_hints_decide_by_default() {
    let fixture = Fixture::new(
        "policies",
        json!({
            "hinted": {},
            "never": {"approve": "never"},
            "always": {"approve": "always"},
            "listed": {"approve": ["plain"]},
        }),
    );
    let server = fixture.server();
    let mut client = server.client();
    // Default: destructive or not read-only asks; read-only does not.
    assert!(asks(&mut client, "hinted__delete"));
    assert!(asks(&mut client, "hinted__plain"));
    assert!(!asks(&mut client, "hinted__echo"));
    assert!(!asks(&mut client, "hinted__progress"));
    // "never": not even the destructive one.
    assert!(!asks(&mut client, "never__delete"));
    assert!(!asks(&mut client, "never__plain"));
    // "always": even the read-only ones.
    assert!(asks(&mut client, "always__echo"));
    assert!(asks(&mut client, "always__progress"));
    // A list: those tools, and no other.
    assert!(asks(&mut client, "listed__plain"));
    assert!(!asks(&mut client, "listed__delete"));
    assert!(!asks(&mut client, "listed__echo"));
    // Sparky's own tools never ask.
    assert_eq!(client.ask("/calc 2+3"), "2+3 = 5");
    assert!(!client.seen.iter().any(|f| matches!(
        &f.frame,
        ServerFrame::ApprovalRequest { name, .. } if !name.contains("__")
    )));
}

#[test]
fn a_restart_closes_a_waiting_call_cleanly_and_a_resume_shows_it() {
    let fixture = Fixture::one("restart", json!({}));
    let dir = temp_dir("mcp-approval-restart-data");
    let data_dir = dir.to_str().unwrap().to_owned();
    let config = fixture.config.to_str().unwrap().to_owned();
    let args = ["--data-dir", &data_dir, "--mcp-config", &config];
    let server = ChildServer::start(&args);
    wait_for_tool(server.addr, "fx__delete");
    let mut client = Client::connect(server.addr, json!({}));
    let session = client.session_id.clone().unwrap();
    let turn = start_call(&mut client, "fx__delete", json!({"path": "/k"}));
    let (call_id, ..) = expect_request(&mut client);
    // Killed while the call waits: nothing closes the turn.
    server.kill();
    let server = ChildServer::start(&args);
    let mut back = Client::resume(server.addr, &session, 0);
    let (replayed, ..) = expect_request(&mut back);
    assert_eq!(replayed, call_id);
    let frames = back.finish_turn(turn);
    let (status, text) = result_of(&frames);
    assert_eq!(status, ToolStatus::Error);
    assert!(text.contains("stopped while this call waited"), "{text}");
    assert!(matches!(
        frames.last().unwrap().frame,
        ServerFrame::Error {
            code: ErrorCode::Internal,
            ..
        }
    ));
    // Allowing it now does nothing; the conversation goes on.
    approve(&mut back, &call_id, true);
    assert_eq!(back.ask("and now?"), "You said: and now?");
    assert!(!fixture.called("fx", "delete"));
}

#[test]
fn progress_reaches_clients_and_keeps_a_call_past_its_timeout_alive() {
    // A one-second timeout, and a call that takes two: it lives only through its progress.
    let fixture = Fixture::one("progress", json!({"timeout": 1}));
    let server = fixture.server();
    let mut client = server.client();
    let args = json!({"steps": 5, "interval_ms": 400});
    let turn = start_call(&mut client, "fx__progress", args);
    let frames = client.finish_turn(turn);
    assert_eq!(
        result_of(&frames),
        (ToolStatus::Success, "done in 5 steps".to_owned())
    );
    type Report = (f64, Option<f64>, Option<String>, Option<u64>);
    let progress: Vec<Report> = client
        .seen
        .iter()
        .filter_map(|f| match &f.frame {
            ServerFrame::ToolProgress {
                progress,
                total,
                message,
                ..
            } => Some((*progress, *total, message.clone(), f.seq)),
            _ => None,
        })
        .collect();
    assert!(progress.len() >= 3, "{progress:?}");
    for (step, total, message, seq) in &progress {
        assert_eq!(*total, Some(5.0));
        assert!(message.as_deref().unwrap().starts_with("step "));
        // Not an event: no seq.
        assert_eq!(*seq, None);
        assert!((1.0..=5.0).contains(step));
    }
    assert!(progress.windows(2).all(|w| w[0].0 < w[1].0), "{progress:?}");
    // Each tools/call carried a progress token.
    let token = fixture
        .events("fx")
        .into_iter()
        .find(|e| e.starts_with("progress-token "))
        .unwrap();
    assert_ne!(token, "progress-token None");

    // The same call without progress times out after one second.
    let args = json!({"steps": 5, "interval_ms": 400, "silent": true});
    let turn = start_call(&mut client, "fx__progress", args);
    let (status, text) = result_of(&client.finish_turn(turn));
    assert_eq!(status, ToolStatus::Error);
    assert!(
        text.contains("did not answer tools/call within 1s"),
        "{text}"
    );
}

/// The fixture's 1x1 PNG, as it sends it.
const RED_DOT: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==";

#[test]
fn an_image_is_kept_as_a_file_of_the_conversation_and_the_offline_model_reads_a_note() {
    let fixture = Fixture::one("image", json!({}));
    let server = fixture.server();
    let mut client = server.client();
    let turn = start_call(&mut client, "fx__image", json!({}));
    let frames = client.finish_turn(turn);
    // The result is the text and the image's note; the image itself is a stored file that the
    // tool_result lists (PROTOCOL.md section 5), never inlined.
    assert_eq!(
        result_of(&frames),
        (
            ToolStatus::Success,
            "a red dot\n[image: image/png, 70 B]".to_owned()
        )
    );
    let attachments = frames
        .iter()
        .find_map(|f| match &f.frame {
            ServerFrame::ToolResult { attachments, .. } => Some(attachments.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(attachments.len(), 1, "{attachments:?}");
    assert_eq!(attachments[0].content_type, "image/png");
    assert_eq!(attachments[0].size, 70);
    let (status, headers, bytes) = support::http_raw(
        server.addr,
        "GET",
        &format!("/api/files/{}", attachments[0].id),
        &[],
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(
        bytes,
        data_encoding::BASE64.decode(RED_DOT.as_bytes()).unwrap()
    );
    assert!(headers.contains(&("x-content-type-options".into(), "nosniff".into())));
    // It is a file of the conversation.
    let (status, listed) = support::http_json(
        server.addr,
        "GET",
        &format!(
            "/api/files?conversation={}",
            client.session_id.clone().unwrap()
        ),
        None,
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        listed["files"][0]["id"],
        attachments[0].id.as_str(),
        "{listed}"
    );
    // The offline model takes no images: it read the note alone.
    let Some(ServerFrame::Message { text, .. }) = frames.last().map(|f| &f.frame) else {
        panic!("no answer: {frames:#?}");
    };
    assert!(text.contains("[image: image/png, 70 B]"), "{text}");
    assert!(!text.contains("base64"), "{text}");
}

#[test]
fn audio_and_blobs_a_tool_returns_are_kept_as_files_too() {
    let fixture = Fixture::one("image", json!({}));
    let server = fixture.server();
    let mut client = server.client();
    let turn = start_call(&mut client, "fx__image", json!({"more": true}));
    let frames = client.finish_turn(turn);
    let (status, result) = result_of(&frames);
    assert_eq!(status, ToolStatus::Success, "{result}");
    assert!(!result.contains("UklGR"), "{result}");
    let attachments = frames
        .iter()
        .find_map(|f| match &f.frame {
            ServerFrame::ToolResult { attachments, .. } => Some(attachments.clone()),
            _ => None,
        })
        .unwrap();
    let kept: Vec<(&str, u64)> = attachments
        .iter()
        .map(|a| (a.name.as_str(), a.size))
        .collect();
    assert_eq!(
        kept,
        [("fx__image-1.png", 70), ("audio", 12), ("data.bin", 5)],
        "{attachments:?}"
    );
    let (status, _, bytes) = support::http_raw(
        server.addr,
        "GET",
        &format!("/api/files/{}", attachments[2].id),
        &[],
        b"",
    );
    assert_eq!((status, bytes), (200, vec![0, 1, 2, 3, 4]));
}

#[test]
fn structured_content_is_preferred_and_checked_against_the_output_schema() {
    let fixture = Fixture::one("structured", json!({}));
    let server = fixture.server();
    let mut client = server.client();
    let turn = start_call(&mut client, "fx__weather", json!({}));
    assert_eq!(
        result_of(&client.finish_turn(turn)),
        (
            ToolStatus::Success,
            r#"{"conditions":"sunny","temperature":21.5}"#.to_owned()
        )
    );
    let turn = start_call(&mut client, "fx__weather", json!({"bad": true}));
    let (status, text) = result_of(&client.finish_turn(turn));
    assert_eq!(status, ToolStatus::Error);
    assert!(
        text.contains(
            "does not match its outputSchema (/temperature: expected number, found a string)"
        ),
        "{text}"
    );
}
