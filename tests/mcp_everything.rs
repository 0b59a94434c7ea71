//! Sparky against the real reference server, `@modelcontextprotocol/server-everything` from
//! npm, over stdio and over Streamable HTTP: echo, an image, a tool that requires tasks left out, a
//! resource link read through `mcp_read_resource`, `/prompt`, the progress of its long-running
//! operation relayed as `tool_progress`, and cancelling that operation; and the client
//! features it exercises: its sampling tool answered by the offline model once a person allows
//! it (`sampling_request`, `approve`, `always`), its roots tool listing the entry's `"roots"`,
//! and its elicitation tool answered with accept, decline and cancel (`elicitation_request`,
//! `elicit`), after a reconnect, and by the approval timeout; and edits of the config file
//! while Sparky runs: new roots reach the running server through
//! `notifications/roots/list_changed`, and a broken edit changes nothing.
//!
//! `scripts/npm-fixtures.sh` installs the pinned version under `target/npm/`, with the Node that
//! runs it (pinned too: it needs Node 20, and Debian 12's is 18; `scripts/test` runs it first). When it is missing the tests fail under CI (`CI` set) and are skipped, with a
//! note, elsewhere. Its tool list changes only while it initialises (conditional tools), so
//! `list_changed` cannot be triggered from here; tests/mcp.rs and tests/mcp_http.rs cover it
//! with the fixture.

mod support;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparky::common::protocol::{ElicitMode, ErrorCode, ServerFrame, ToolStatus};
use support::mcp::{
    EVERYTHING, NODE, answer, call, cancel_at_once, progress_seen, ready, wait_for_tool,
    write_config,
};
use support::{Client, TestServer, http, wait_until};

/// The server's entry point, or `None` (after saying why) when the test should be skipped.
fn everything() -> Option<PathBuf> {
    let path = PathBuf::from(EVERYTHING);
    if path.exists() && Path::new(NODE).exists() {
        return Some(path);
    }
    let message = format!(
        "{EVERYTHING} or {NODE} is missing: run scripts/npm-fixtures.sh (it installs \
         @modelcontextprotocol/server-everything and its Node under target/npm)"
    );
    assert!(std::env::var_os("CI").is_none(), "{message}");
    eprintln!("skipped: {message}");
    None
}

/// The server over Streamable HTTP (`streamableHttp`, on the port `PORT` names); killed
/// when dropped.
struct HttpEverything {
    child: Child,
    port: u16,
}

impl HttpEverything {
    fn start(script: &Path) -> Self {
        Self::start_with(script, &["streamableHttp"])
    }

    /// Any Node script that serves Streamable HTTP on `PORT`, run with `args`.
    fn start_with(script: &Path, args: &[&str]) -> Self {
        // The server takes its port from PORT and does not report the one it got for 0, so
        // the test picks a free one.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(NODE)
            .arg(script)
            .args(args)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs");
        let server = HttpEverything { child, port };
        wait_until("server-everything to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        server
    }
}

impl Drop for HttpEverything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Sparky server with `entry` as MCP server `everything`, once its echo tool has joined.
/// Its tools declare no `readOnlyHint`, so the entry gets `"approve": "never"` (approval has
/// tests/mcp_approval.rs), as an HTTP entry's policy too.
fn sparky(name: &str, entry: Value) -> TestServer {
    sparky_with(name, entry, Duration::from_secs(300))
}

/// [`sparky`], with `approval_timeout` as `--approval-timeout`.
fn sparky_with(name: &str, entry: Value, approval_timeout: Duration) -> TestServer {
    sparky_serving(
        name,
        "everything",
        entry,
        "everything__echo",
        approval_timeout,
    )
}

/// A Sparky server with `entry` as MCP server `server`, once `tool` has joined.
fn sparky_serving(
    name: &str,
    server: &str,
    mut entry: Value,
    tool: &str,
    approval_timeout: Duration,
) -> TestServer {
    entry["approve"] = json!("never");
    let dir = support::temp_dir(&format!("mcp-everything-{name}"));
    let config = write_config(&dir, &json!({ server: entry }));
    let sparky = TestServer::with_config(|c| {
        c.mcp_config = Some(config);
        c.approval_timeout = approval_timeout;
    });
    wait_for_tool(&sparky, tool);
    sparky
}

/// The MCP TypeScript SDK's example server `elicitationFormExample` (installed beside
/// server-everything, pinned by `scripts/npm-fixtures.sh`).
const FORM_EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/npm/node_modules/@modelcontextprotocol/sdk/dist/esm/examples/server/elicitationFormExample.js"
);

/// What both transports must do.
fn exercise(server: &TestServer) {
    let mut client = server.client();
    let names = ready(&client).1;
    assert!(names.contains(&"mcp_read_resource".to_owned()), "{names:?}");
    // Its research tool requires tasks, which Sparky leaves out.
    assert!(
        !names
            .iter()
            .any(|n| n == "everything__simulate-research-query"),
        "{names:?}"
    );
    assert_eq!(
        call(
            &mut client,
            "everything__echo",
            json!({"message": "hello there"})
        ),
        (ToolStatus::Success, "Echo: hello there".to_owned())
    );

    // Its image is the note the model reads; the bytes are a stored file, never inlined.
    let (status, shown) = call(&mut client, "everything__get-tiny-image", json!({}));
    assert_eq!(status, ToolStatus::Success, "{shown}");
    assert!(shown.contains("[image: image/png"), "{shown}");
    assert!(!shown.contains("base64"), "{shown}");

    // A resource link a tool returns can be read.
    let (status, links) = call(
        &mut client,
        "everything__get-resource-links",
        json!({"count": 1}),
    );
    assert_eq!(status, ToolStatus::Success, "{links}");
    let uri = links
        .split("[resource link: ")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_else(|| panic!("no resource link in {links}"))
        .to_owned();
    let (status, text) = call(
        &mut client,
        "mcp_read_resource",
        json!({"server": "everything", "uri": uri}),
    );
    assert_eq!(status, ToolStatus::Success, "{text}");
    assert!(!text.trim().is_empty());

    // Its prompts are listed and one fills the user's place.
    let list = answer(&mut client, "/prompt");
    assert!(list.contains("`everything/args-prompt`"), "{list}");
    assert_eq!(
        answer(&mut client, "/prompt args-prompt city=Paris"),
        "You said: What's weather in Paris?"
    );

    // Its long-running operation reports progress on the call's token; the last report (the
    // one reaching the total) always reaches the client.
    let (status, text) = call(
        &mut client,
        "everything__trigger-long-running-operation",
        json!({"duration": 1, "steps": 2}),
    );
    assert_eq!(status, ToolStatus::Success, "{text}");
    let progress = progress_seen(&client);
    assert_eq!(progress.last(), Some(&(2.0, Some(2.0))), "{progress:?}");

    // Its long-running operation is cancelled at once, and the server still answers.
    client.say(r#"/tool everything__trigger-long-running-operation {"duration": 30, "steps": 30}"#);
    client.expect("tool_use");
    cancel_at_once(&mut client);
    assert_eq!(
        call(&mut client, "everything__echo", json!({"message": "after"})),
        (ToolStatus::Success, "Echo: after".to_owned())
    );
}

#[test]
fn server_everything_over_stdio() {
    let Some(script) = everything() else {
        return;
    };
    let server = sparky(
        "stdio",
        json!({"command": NODE, "args": [script.to_str().unwrap(), "stdio"]}),
    );
    exercise(&server);
}

#[test]
fn server_everything_over_streamable_http() {
    let Some(script) = everything() else {
        return;
    };
    let everything = HttpEverything::start(&script);
    let url = format!("http://127.0.0.1:{}/mcp", everything.port);
    let server = sparky("http", json!({ "url": url }));
    exercise(&server);
}

/// The entry that runs the server over stdio.
fn stdio_entry(script: &Path) -> Value {
    json!({"command": NODE, "args": [script.to_str().unwrap(), "stdio"]})
}

/// Starts a `/tool` call and returns its turn.
fn start_call(client: &mut Client, tool: &str, args: &Value) -> u64 {
    client.say(&format!("/tool {tool} {args}"));
    client.expect("user_message").frame.turn_id().unwrap().0
}

/// Reads up to the next `sampling_request`: its request id, server, messages' text and
/// `max_tokens`.
fn expect_sampling(client: &mut Client) -> (String, String, String, u32) {
    let frame = client.expect("sampling_request");
    assert!(frame.seq.is_some(), "sampling_request is an event");
    match frame.frame {
        ServerFrame::SamplingRequest {
            request_id,
            server,
            messages,
            max_tokens,
            ..
        } => {
            let text: Vec<String> = messages.into_iter().map(|m| m.text).collect();
            (request_id, server, text.join("\n"), max_tokens)
        }
        other => panic!("not a sampling_request: {other:?}"),
    }
}

/// Reads up to the next `elicitation_request`: its request id, mode and schema.
fn expect_elicitation(client: &mut Client) -> (String, ElicitMode, Option<Box<Value>>) {
    let frame = client.expect("elicitation_request");
    assert!(frame.seq.is_some(), "elicitation_request is an event");
    match frame.frame {
        ServerFrame::ElicitationRequest {
            request_id,
            mode,
            schema,
            ..
        } => (request_id, mode, schema),
        other => panic!("not an elicitation_request: {other:?}"),
    }
}

/// The `tool_result` of turn `turn`.
fn result_of(client: &mut Client, turn: u64) -> (ToolStatus, String) {
    support::tool_result(&client.finish_turn(turn))
}

fn elicit(client: &mut Client, request_id: &str, action: &str, content: Option<Value>) {
    let mut data = json!({"request_id": request_id, "action": action});
    if let Some(content) = content {
        data["content"] = content;
    }
    client.send(json!({"type": "elicit", "data": data}));
}

const SAMPLE: &str = "everything__trigger-sampling-request";
const ELICIT: &str = "everything__trigger-elicitation-request";

/// Its sampling tool, allowed once, refused once, then allowed for good: the offline model
/// answers, bounded by the request's `maxTokens`.
fn sampling(client: &mut Client) {
    let args = json!({"prompt": "hello sampler", "maxTokens": 40});
    let turn = start_call(client, SAMPLE, &args);
    let (request_id, server, text, max_tokens) = expect_sampling(client);
    assert_eq!((server.as_str(), max_tokens), ("everything", 40));
    assert!(text.contains("hello sampler"), "{text}");
    client.send(json!({"type": "approve", "data": {"call_id": request_id, "allow": true}}));
    let (status, result) = result_of(client, turn);
    assert_eq!(status, ToolStatus::Success, "{result}");
    assert!(result.contains("LLM sampling result"), "{result}");
    assert!(result.contains("\"model\": \"offline\""), "{result}");
    assert!(result.contains("stopReason"), "{result}");

    // Refused: the server's tool fails, and says so.
    let turn = start_call(client, SAMPLE, &args);
    let (request_id, ..) = expect_sampling(client);
    client.send(json!({"type": "approve", "data": {"call_id": request_id, "allow": false}}));
    let (status, result) = result_of(client, turn);
    assert_eq!(status, ToolStatus::Error, "{result}");
    assert!(result.contains("refused"), "{result}");

    // Allowed for good: the next request is not asked.
    let turn = start_call(client, SAMPLE, &args);
    let (request_id, ..) = expect_sampling(client);
    client.send(json!({"type": "approve",
                       "data": {"call_id": request_id, "allow": true, "always": true}}));
    assert_eq!(result_of(client, turn).0, ToolStatus::Success);
    let turn = start_call(client, SAMPLE, &args);
    let frames = client.finish_turn(turn);
    assert!(
        !support::kinds(&frames).contains(&"sampling_request".to_owned()),
        "{frames:#?}"
    );
    assert_eq!(support::tool_result(&frames).0, ToolStatus::Success);
}

#[test]
fn sampling_roots_and_elicitation_against_server_everything_over_stdio() {
    let Some(script) = everything() else {
        return;
    };
    let mut entry = stdio_entry(&script);
    entry["roots"] = json!(["file:///srv/notes", {"uri": "file:///srv/docs", "name": "docs"}]);
    let server = sparky("features", entry);
    let mut client = server.client();
    let names = ready(&client).1;
    for tool in [SAMPLE, ELICIT, "everything__get-roots-list"] {
        assert!(
            names.contains(&tool.to_owned()),
            "{tool} missing: {names:?}"
        );
    }

    // Roots: the entry's, as the server asked for them.
    let (status, roots) = call(&mut client, "everything__get-roots-list", json!({}));
    assert_eq!(status, ToolStatus::Success, "{roots}");
    assert!(roots.contains("(2 total)"), "{roots}");
    assert!(roots.contains("URI: file:///srv/notes"), "{roots}");
    assert!(roots.contains("docs\n   URI: file:///srv/docs"), "{roots}");

    sampling(&mut client);

    // Elicitation: a bad answer is refused and the form still waits; a good one is sent.
    let turn = start_call(&mut client, ELICIT, &json!({}));
    let (request_id, mode, schema) = expect_elicitation(&mut client);
    assert_eq!(mode, ElicitMode::Form);
    let schema = schema.expect("a form has a schema");
    assert_eq!(schema["required"], json!(["name"]));
    elicit(
        &mut client,
        &request_id,
        "accept",
        Some(json!({"check": true})),
    );
    let refused = client.expect("error");
    assert!(
        matches!(&refused.frame, ServerFrame::Error { code: ErrorCode::InvalidMessage, turn_id: None, message, .. }
            if message.contains("required")),
        "{refused:?}"
    );
    let answer = json!({"name": "Ann Example", "check": true, "integer": 7,
                        "untitledSingleSelectEnum": "Joey",
                        "untitledMultipleSelectEnum": ["Piano", "Drums"]});
    elicit(&mut client, &request_id, "accept", Some(answer));
    let (status, result) = result_of(&mut client, turn);
    assert_eq!(status, ToolStatus::Success, "{result}");
    assert!(result.contains("- Name: Ann Example"), "{result}");
    assert!(result.contains("- Favorite Integer: 7"), "{result}");
    // Too late: the request no longer waits.
    elicit(&mut client, &request_id, "decline", None);
    let late = client.expect("error");
    assert!(
        matches!(
            &late.frame,
            ServerFrame::Error {
                code: ErrorCode::NotWaiting,
                ..
            }
        ),
        "{late:?}"
    );

    for (action, said) in [("decline", "declined"), ("cancel", "cancelled")] {
        let turn = start_call(&mut client, ELICIT, &json!({}));
        let (request_id, ..) = expect_elicitation(&mut client);
        elicit(&mut client, &request_id, action, None);
        let (status, result) = result_of(&mut client, turn);
        assert_eq!(status, ToolStatus::Success, "{result}");
        assert!(result.contains(said), "{action}: {result}");
    }

    // A client that leaves while the form waits sees it again on replay and answers it.
    let turn = start_call(&mut client, ELICIT, &json!({}));
    let (request_id, ..) = expect_elicitation(&mut client);
    let session = client.session_id.clone().unwrap();
    drop(client);
    let mut again = Client::resume(server.addr, &session, 0);
    // The replay holds the earlier, answered requests too (each followed by its call's
    // `tool_result`); the waiting one is the last.
    while expect_elicitation(&mut again).0 != request_id {}
    elicit(
        &mut again,
        &request_id,
        "accept",
        Some(json!({"name": "Back Again"})),
    );
    let (status, result) = result_of(&mut again, turn);
    assert_eq!(status, ToolStatus::Success, "{result}");
    assert!(result.contains("- Name: Back Again"), "{result}");
}

#[test]
fn an_unanswered_elicitation_is_cancelled_after_the_approval_timeout() {
    let Some(script) = everything() else {
        return;
    };
    let server = sparky_with("timeout", stdio_entry(&script), Duration::from_millis(500));
    let mut client = server.client();
    let turn = start_call(&mut client, ELICIT, &json!({}));
    expect_elicitation(&mut client);
    let (status, result) = result_of(&mut client, turn);
    assert_eq!(status, ToolStatus::Success, "{result}");
    assert!(result.contains("cancelled"), "{result}");
    // A sampling request nobody allows is refused the same way.
    let turn = start_call(&mut client, SAMPLE, &json!({"prompt": "x"}));
    expect_sampling(&mut client);
    let (status, result) = result_of(&mut client, turn);
    assert_eq!(status, ToolStatus::Error, "{result}");
    assert!(result.contains("nobody allowed"), "{result}");
}

#[test]
fn sampling_and_elicitation_over_streamable_http() {
    let Some(script) = everything() else {
        return;
    };
    let everything = HttpEverything::start(&script);
    let url = format!("http://127.0.0.1:{}/mcp", everything.port);
    let server = sparky("features-http", json!({ "url": url }));
    let mut client = server.client();
    sampling(&mut client);
    let turn = start_call(&mut client, ELICIT, &json!({}));
    let (request_id, ..) = expect_elicitation(&mut client);
    elicit(
        &mut client,
        &request_id,
        "accept",
        Some(json!({"name": "Over Http"})),
    );
    let (status, result) = result_of(&mut client, turn);
    assert_eq!(status, ToolStatus::Success, "{result}");
    assert!(result.contains("- Name: Over Http"), "{result}");
}

#[test]
fn the_sdk_form_elicitation_example_is_answered_with_accept_decline_and_cancel() {
    if everything().is_none() {
        return;
    }
    let example = HttpEverything::start_with(Path::new(FORM_EXAMPLE), &[]);
    let url = format!("http://127.0.0.1:{}/mcp", example.port);
    let register = "forms__register_user";
    let server = sparky_serving(
        "sdk-forms",
        "forms",
        json!({ "url": url }),
        register,
        Duration::from_secs(300),
    );
    let mut client = server.client();

    let turn = start_call(&mut client, register, &json!({}));
    let (request_id, mode, schema) = expect_elicitation(&mut client);
    assert_eq!(mode, ElicitMode::Form);
    assert_eq!(
        schema.expect("a schema")["required"],
        json!(["username", "email", "password"])
    );
    // Too short a password (minLength 8) is refused here, before the server sees it.
    let short = json!({"username": "ann", "email": "ann@example.com", "password": "short"});
    elicit(&mut client, &request_id, "accept", Some(short));
    let refused = client.expect("error");
    assert!(
        matches!(
            &refused.frame,
            ServerFrame::Error {
                code: ErrorCode::InvalidMessage,
                ..
            }
        ),
        "{refused:?}"
    );
    let good = json!({"username": "ann", "email": "ann@example.com", "password": "long enough",
                      "newsletter": true, "role": "designer", "interests": ["ai", "backend"]});
    elicit(&mut client, &request_id, "accept", Some(good));
    let (status, result) = result_of(&mut client, turn);
    assert_eq!(status, ToolStatus::Success, "{result}");
    assert!(result.contains("Registration successful!"), "{result}");
    assert!(result.contains("Username: ann"), "{result}");
    assert!(result.contains("Newsletter: Yes"), "{result}");

    for (action, said) in [
        ("decline", "Registration cancelled by user."),
        ("cancel", "Registration was cancelled."),
    ] {
        let turn = start_call(&mut client, register, &json!({}));
        let (request_id, ..) = expect_elicitation(&mut client);
        elicit(&mut client, &request_id, action, None);
        let (status, result) = result_of(&mut client, turn);
        assert_eq!(
            (status, result.as_str()),
            (ToolStatus::Success, said),
            "{action}"
        );
    }
}

const ROOTS: &str = "everything__get-roots-list";

/// `/healthz`, as JSON.
fn health(server: &TestServer) -> Value {
    let (status, body) = http(server.addr, "GET", "/healthz", None, None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Asks the server's roots tool until its list contains `wanted` (the server fetches the new
/// list on its own after `notifications/roots/list_changed`, so the first answers may still
/// be the old one); fails after 30 s.
fn wait_for_roots(client: &mut Client, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, listed) = call(client, ROOTS, json!({}));
        assert_eq!(status, ToolStatus::Success, "{listed}");
        if listed.contains(wanted) {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "the server never listed {wanted}: {listed}"
        );
        // One look per 50 ms: a tight loop of turns would run into the connection's rate limit.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn edited_roots_reach_the_running_server_and_a_broken_edit_changes_nothing() {
    let Some(script) = everything() else {
        return;
    };
    let dir = support::temp_dir("mcp-everything-roots-edit");
    let mut entry = stdio_entry(&script);
    entry["approve"] = json!("never");
    entry["roots"] = json!(["file:///srv/alpha"]);
    let config = write_config(&dir, &json!({ "everything": entry }));
    let server = TestServer::with_config(|c| c.mcp_config = Some(config.clone()));
    wait_for_tool(&server, ROOTS);
    let mut client = server.client();
    let listed = wait_for_roots(&mut client, "URI: file:///srv/alpha");
    assert!(listed.contains("(1 total)"), "{listed}");
    assert_eq!(health(&server)["mcp_config_error"], Value::Null);

    // A broken edit is reported and applies nothing: the server keeps its roots and works.
    std::fs::write(&config, r#"{"mcpServers": {"everything": "#).unwrap();
    let mut reported = Value::Null;
    wait_until("the broken edit to be reported", || {
        reported = health(&server)["mcp_config_error"].clone();
        !reported.is_null()
    });
    assert!(
        reported.as_str().unwrap().contains("not an MCP config"),
        "{reported}"
    );
    let (status, listed) = call(&mut client, ROOTS, json!({}));
    assert_eq!(status, ToolStatus::Success, "{listed}");
    assert!(listed.contains("(1 total)"), "{listed}");
    assert!(listed.contains("URI: file:///srv/alpha"), "{listed}");
    assert_eq!(
        call(&mut client, "everything__echo", json!({"message": "still"})),
        (ToolStatus::Success, "Echo: still".to_owned())
    );
    assert_eq!(health(&server)["mcp"]["everything"]["state"], "up");

    // New roots (and a new timeout, which waits for a restart): the roots reach the running
    // server, which asks for them again.
    entry["roots"] = json!(["file:///srv/beta", {"uri": "file:///srv/gamma", "name": "gamma"}]);
    entry["timeout"] = json!(90);
    write_config(&dir, &json!({ "everything": entry }));
    let listed = wait_for_roots(&mut client, "URI: file:///srv/beta");
    assert!(listed.contains("(2 total)"), "{listed}");
    assert!(
        listed.contains("gamma\n   URI: file:///srv/gamma"),
        "{listed}"
    );
    assert!(!listed.contains("alpha"), "{listed}");
    let health = health(&server);
    assert_eq!(health["mcp_config_error"], Value::Null, "{health}");
    assert_eq!(
        health["mcp"]["everything"]["restart_needed"], true,
        "{health}"
    );
    assert_eq!(health["mcp"]["everything"]["state"], "up", "{health}");
}
