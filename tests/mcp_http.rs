//! MCP servers over Streamable HTTP (`url` entries): the fixture server's tools answer real
//! sessions, with answers as JSON and as SSE streams that carry a request of the server's
//! before the answer; the session id, protocol version and configured headers go with every
//! request; a changed tool list arrives on the GET stream; a restarted server is reconnected
//! with a new session, and one not up yet is tried again until it answers; a server that
//! wants OAuth is refused with a clear error; cancelling a turn cancels its call over HTTP;
//! shutdown ends the session with DELETE; an HTTP entry's `"approve"` and `"timeout"` apply
//! as for stdio, and progress reports on the call's stream restart its timeout.
//!
//! The fixture is `tests/fixtures/mcp_fixture.py --http PORT`.

mod support;

use std::path::PathBuf;

use serde_json::json;
use sparky::common::protocol::{ServerFrame, ToolStatus};
use support::mcp::{
    HttpFixture, call, cancel_a_slow_call, events, progress_seen, wait_for_event, wait_for_tool,
    write_config,
};
use support::{TestServer, wait_until};

/// A Sparky server whose MCP config names one HTTP server `fxh` at `url` with `headers`, once
/// `fxh__echo` has joined its tools.
fn sparky_for(name: &str, url: &str, headers: serde_json::Value) -> TestServer {
    let dir = support::temp_dir(&format!("mcp-http-{name}-sparky"));
    let config = write_config(&dir, &json!({"fxh": {"url": url, "headers": headers}}));
    let server = TestServer::with_config(|c| c.mcp_config = Some(config));
    wait_for_tool(&server, "fxh__echo");
    server
}

/// A fresh log file for a fixture.
fn log_file(name: &str) -> PathBuf {
    let dir = support::temp_dir(&format!("mcp-http-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("events.log")
}

/// The session id the fixture gave out last.
fn session_of(log: &std::path::Path) -> String {
    wait_for_event(log, "session ")
        .strip_prefix("session ")
        .unwrap()
        .to_owned()
}

#[test]
fn calls_over_http_carry_the_session_the_version_and_the_configured_headers() {
    let log = log_file("session");
    let fixture = HttpFixture::start(
        0,
        &[
            ("MCP_FIXTURE_LOG", log.to_str().unwrap()),
            ("MCP_FIXTURE_TOKEN", "fixture-token"),
        ],
    );
    let server = sparky_for(
        "session",
        &fixture.url(),
        json!({"Authorization": "Bearer fixture-token"}),
    );
    let mut client = server.client();
    // tools/call answers as an SSE stream that asks the client for a ping before the result.
    assert_eq!(
        call(&mut client, "fxh__echo", json!({"text": "over http"})),
        (ToolStatus::Success, "over http".to_owned())
    );
    let pong = wait_for_event(&log, "pong fixture-ping-");
    assert!(pong.len() > "pong fixture-ping-".len(), "{pong}");
    assert_eq!(
        call(&mut client, "fxh__fail", json!({})),
        (ToolStatus::Error, "it failed, as asked".to_owned())
    );
    // The server's own ping after initialisation came on the GET stream, and was answered.
    wait_for_event(&log, "get-open ");
    wait_until("the ping on the GET stream to be answered", || {
        events(&log).contains(&"pong fixture-ping".to_owned())
    });

    let session = session_of(&log);
    let posts: Vec<String> = events(&log)
        .into_iter()
        .filter(|e| e.starts_with("post "))
        .collect();
    assert!(posts.len() >= 6, "{posts:#?}");
    assert_eq!(
        posts[0],
        "post initialize session=- version=- auth=Bearer fixture-token"
    );
    // `notifications/initialized` goes before any other request, as the spec orders.
    assert!(
        posts[1].starts_with("post notifications/initialized "),
        "{posts:#?}"
    );
    // Then the tool list; the answers the client posts to the server's own requests (a ping
    // on the GET stream) may come in between, whenever they arrive.
    let requests: Vec<&String> = posts
        .iter()
        .filter(|post| !post.starts_with("post (response)"))
        .collect();
    assert!(requests[2].starts_with("post tools/list "), "{posts:#?}");
    for post in &posts[1..] {
        assert!(
            post.ends_with(&format!(
                "session={session} version=2025-11-25 auth=Bearer fixture-token"
            )),
            "{post}"
        );
    }
    assert!(!events(&log).contains(&"unauthorized".to_owned()));

    // Stopping Sparky ends the session.
    drop(client);
    server.handle.shutdown();
    wait_for_event(&log, &format!("delete {session}"));
}

#[test]
fn a_changed_tool_list_arrives_on_the_get_stream() {
    let log = log_file("list-changed");
    let fixture = HttpFixture::start(0, &[("MCP_FIXTURE_LOG", log.to_str().unwrap())]);
    let server = sparky_for("list-changed", &fixture.url(), json!({}));
    let mut client = server.client();
    assert!(
        !support::mcp::ready(&client)
            .1
            .contains(&"fxh__added".to_owned())
    );
    assert_eq!(
        call(&mut client, "fxh__grow", json!({})),
        (ToolStatus::Success, "grown".to_owned())
    );
    wait_for_tool(&server, "fxh__added");
    let mut client = server.client();
    assert_eq!(
        call(&mut client, "fxh__added", json!({"text": "new"})),
        (ToolStatus::Success, "new".to_owned())
    );
}

#[test]
fn a_server_without_a_get_stream_still_answers() {
    let log = log_file("no-get");
    let fixture = HttpFixture::start(
        0,
        &[
            ("MCP_FIXTURE_LOG", log.to_str().unwrap()),
            ("MCP_FIXTURE_NO_GET", "1"),
        ],
    );
    let server = sparky_for("no-get", &fixture.url(), json!({}));
    let mut client = server.client();
    for text in ["one", "two"] {
        assert_eq!(
            call(&mut client, "fxh__echo", json!({"text": text})),
            (ToolStatus::Success, text.to_owned())
        );
    }
    assert!(!events(&log).iter().any(|e| e.starts_with("get-open")));
}

#[test]
fn a_restarted_server_is_reconnected_with_a_new_session() {
    let first_log = log_file("restart-1");
    let first = HttpFixture::start(0, &[("MCP_FIXTURE_LOG", first_log.to_str().unwrap())]);
    let (port, url) = (first.port, first.url());
    let server = sparky_for("restart", &url, json!({}));
    let mut client = server.client();
    assert_eq!(
        call(&mut client, "fxh__echo", json!({"text": "before"})),
        (ToolStatus::Success, "before".to_owned())
    );
    let old_session = session_of(&first_log);
    first.kill();

    // While it is down, a call fails with a clear error rather than hanging.
    let (status, text) = call(&mut client, "fxh__echo", json!({"text": "down"}));
    assert_eq!(status, ToolStatus::Error, "{text}");
    assert!(text.contains("mcp server fxh"), "{text}");

    let second_log = log_file("restart-2");
    let _second = HttpFixture::start(port, &[("MCP_FIXTURE_LOG", second_log.to_str().unwrap())]);
    assert_eq!(
        call(&mut client, "fxh__echo", json!({"text": "after"})),
        (ToolStatus::Success, "after".to_owned())
    );
    let new_session = session_of(&second_log);
    assert_ne!(new_session, old_session);
    assert!(events(&second_log).contains(&"initialize".to_owned()));
}

#[test]
fn a_server_that_is_not_up_yet_is_tried_again_until_it_answers() {
    // A port nothing listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = support::temp_dir("mcp-http-late-sparky");
    let url = format!("http://127.0.0.1:{port}/mcp");
    let config = write_config(&dir, &json!({"fxh": {"url": url}}));
    let server = TestServer::with_config(|c| c.mcp_config = Some(config));
    let log = log_file("late");
    // Sparky listens at once, without the server's tools; its first try has failed.
    assert!(
        !support::mcp::ready(&server.client())
            .1
            .contains(&"fxh__echo".to_owned())
    );
    let _fixture = HttpFixture::start(port, &[("MCP_FIXTURE_LOG", log.to_str().unwrap())]);
    // The retry (1 s after the first failure) connects.
    wait_for_tool(&server, "fxh__echo");
    let mut client = server.client();
    assert_eq!(
        call(&mut client, "fxh__echo", json!({"text": "late"})),
        (ToolStatus::Success, "late".to_owned())
    );
}

#[test]
fn a_forgotten_session_is_started_again_and_the_call_retried() {
    let log = log_file("forgotten");
    let fixture = HttpFixture::start(0, &[("MCP_FIXTURE_LOG", log.to_str().unwrap())]);
    let server = sparky_for("forgotten", &fixture.url(), json!({}));
    let mut client = server.client();
    let first = session_of(&log);
    // Ending the session behind Sparky's back, as a server that restarted would have.
    let agent = ureq::Agent::new_with_defaults();
    let status = agent
        .delete(&fixture.url())
        .header("mcp-session-id", &first)
        .call()
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 200);
    assert_eq!(
        call(&mut client, "fxh__echo", json!({"text": "again"})),
        (ToolStatus::Success, "again".to_owned())
    );
    let sessions: Vec<String> = events(&log)
        .into_iter()
        .filter(|e| e.starts_with("session "))
        .collect();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
}

#[test]
fn a_server_that_wants_oauth_is_refused_with_a_clear_error() {
    let log = log_file("oauth");
    let fixture = HttpFixture::start(
        0,
        &[
            ("MCP_FIXTURE_LOG", log.to_str().unwrap()),
            ("MCP_FIXTURE_TOKEN", "right"),
        ],
    );
    let dir = support::temp_dir("mcp-http-oauth-config");
    let config = write_config(
        &dir,
        &json!({"locked": {"url": fixture.url(), "headers": {"Authorization": "Bearer wrong"}}}),
    );
    let servers = sparky::tools::mcp::load(&config).unwrap();
    assert!(servers.loaded().is_empty());
    let [(name, error)] = servers.failed() else {
        panic!("{:?}", servers.failed());
    };
    assert_eq!(name, "locked");
    assert!(error.contains("HTTP 401"), "{error}");
    assert!(error.contains("OAuth"), "{error}");
    assert!(error.contains("\"headers\""), "{error}");
    wait_for_event(&log, "unauthorized");
}

#[test]
fn cancelling_a_turn_cancels_its_call_over_http() {
    let log = log_file("cancel");
    let fixture = HttpFixture::start(0, &[("MCP_FIXTURE_LOG", log.to_str().unwrap())]);
    let server = sparky_for("cancel", &fixture.url(), json!({}));
    let mut client = server.client();
    cancel_a_slow_call(&mut client, "fxh__slow", &log);
    // The server is still fine for the next turn.
    assert_eq!(
        call(&mut client, "fxh__echo", json!({"text": "next"})),
        (ToolStatus::Success, "next".to_owned())
    );
}

#[test]
fn an_http_server_follows_its_approval_policy_and_timeout_and_its_progress_extends_calls() {
    let log = log_file("policy");
    let fixture = HttpFixture::start(
        0,
        &[
            ("MCP_FIXTURE_LOG", log.to_str().unwrap()),
            ("MCP_FIXTURE_EXTRAS", "1"),
        ],
    );
    let dir = support::temp_dir("mcp-http-policy-sparky");
    // A one-second timeout, and the default approval policy (by the tools' hints).
    let config = write_config(&dir, &json!({"fxh": {"url": fixture.url(), "timeout": 1}}));
    let server = TestServer::with_config(|c| c.mcp_config = Some(config));
    wait_for_tool(&server, "fxh__delete");
    let mut client = server.client();

    // A destructive tool waits for a person; its read-only neighbours do not.
    assert_eq!(
        call(&mut client, "fxh__echo", json!({"text": "unasked"})),
        (ToolStatus::Success, "unasked".to_owned())
    );
    client.say(r#"/tool fxh__delete {"path": "/tmp/x"}"#);
    let turn = client.expect("user_message").frame.turn_id().unwrap().0;
    let request = client.expect("approval_request");
    let ServerFrame::ApprovalRequest { call_id, .. } = &request.frame else {
        panic!("{request:?}");
    };
    assert!(!events(&log).iter().any(|e| e.ends_with(" delete")));
    client.send(json!({"type": "approve", "data": {"call_id": call_id, "allow": true}}));
    assert_eq!(
        support::tool_result(&client.finish_turn(turn)),
        (ToolStatus::Success, "deleted /tmp/x".to_owned())
    );

    // Two seconds of work against a one-second timeout: alive only through its progress,
    // which comes on the call's event stream and reaches the client.
    let args = json!({"steps": 5, "interval_ms": 400});
    assert_eq!(
        call(&mut client, "fxh__progress", args),
        (ToolStatus::Success, "done in 5 steps".to_owned())
    );
    let progress = progress_seen(&client);
    assert_eq!(progress.last(), Some(&(5.0, Some(5.0))), "{progress:?}");
    // The same call without progress times out after the server's one second.
    let args = json!({"steps": 5, "interval_ms": 400, "silent": true});
    let (status, text) = call(&mut client, "fxh__progress", args);
    assert_eq!(status, ToolStatus::Error);
    assert!(
        text.contains("did not answer tools/call within 1s"),
        "{text}"
    );
}
