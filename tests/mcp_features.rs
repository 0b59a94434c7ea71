//! What MCP servers offer besides tools: `mcp_read_resource` reads a server's resources (text,
//! and a note for a blob) and is offered only while a server declares resources; `/prompt`
//! lists the servers' prompts and puts one, filled in, in the user's place for the model.
//!
//! The fixture is `tests/fixtures/mcp_fixture.py` on stdio.

mod support;

use std::path::PathBuf;

use serde_json::json;
use sparky::common::protocol::ToolStatus;
use support::TestServer;
use support::mcp::{FIXTURE, answer, call, ready, require_python, wait_for_event, write_config};

/// A Sparky server with the fixture as server `fx`, once its tools have joined; and the
/// fixture's log.
fn sparky_with_fixture(name: &str) -> (TestServer, PathBuf) {
    require_python();
    let dir = support::temp_dir(&format!("mcp-features-{name}"));
    let log = dir.join("events.log");
    let config = write_config(
        &dir,
        &json!({"fx": {"command": "python3", "args": [FIXTURE],
                       "env": {"MCP_FIXTURE_LOG": log.to_str().unwrap()}}}),
    );
    let server = TestServer::with_config(|c| c.mcp_config = Some(config));
    support::mcp::wait_for_tool(&server, "mcp_read_resource");
    (server, log)
}

#[test]
fn resources_are_read_through_mcp_read_resource() {
    let (server, log) = sparky_with_fixture("resources");
    let mut client = server.client();
    assert_eq!(
        call(
            &mut client,
            "mcp_read_resource",
            json!({"server": "fx", "uri": "fixture://notes/otters"})
        ),
        (ToolStatus::Success, "notes about otters".to_owned())
    );
    wait_for_event(&log, "read fixture://notes/otters");
    let (status, text) = call(
        &mut client,
        "mcp_read_resource",
        json!({"server": "fx", "uri": "fixture://blob"}),
    );
    assert_eq!(status, ToolStatus::Success);
    assert!(
        text.starts_with("[binary resource: image/png, about "),
        "{text}"
    );

    let (status, text) = call(
        &mut client,
        "mcp_read_resource",
        json!({"server": "fx", "uri": "fixture://nowhere"}),
    );
    assert_eq!(status, ToolStatus::Error);
    assert!(
        text.contains("Resource not found: fixture://nowhere"),
        "{text}"
    );

    let (status, text) = call(
        &mut client,
        "mcp_read_resource",
        json!({"server": "other", "uri": "fixture://notes/x"}),
    );
    assert_eq!(status, ToolStatus::Error);
    assert!(
        text.contains("no MCP server \"other\" offers resources"),
        "{text}"
    );
    let (status, text) = call(&mut client, "mcp_read_resource", json!({"server": "fx"}));
    assert_eq!(status, ToolStatus::Error);
    assert!(text.contains("needs a \"uri\""), "{text}");
}

#[test]
fn without_a_server_that_offers_resources_there_is_no_resource_tool() {
    let names = ready(&TestServer::start().client()).1;
    assert!(
        !names.contains(&"mcp_read_resource".to_owned()),
        "{names:?}"
    );
}

#[test]
fn prompt_lists_the_prompts_and_puts_one_in_the_user_s_place() {
    let (server, log) = sparky_with_fixture("prompts");
    let mut client = server.client();
    let list = answer(&mut client, "/prompt");
    assert!(
        list.contains("- `fx/greet`: Greet someone. (arguments: name (required), tone)"),
        "{list}"
    );

    // The offline model echoes what it was given: the prompt's messages, not the command.
    assert_eq!(
        answer(&mut client, "/prompt greet name=Ada tone=warm"),
        "You said: Please greet Ada warmly.\n\n(assistant) Sure."
    );
    wait_for_event(&log, r#"prompt greet {"name": "Ada", "tone": "warm"}"#);
    assert_eq!(
        answer(&mut client, r#"/prompt fx/greet {"name": "Bo Li"}"#),
        "You said: Please greet Bo Li.\n\n(assistant) Sure."
    );

    let missing = answer(&mut client, "/prompt greet");
    assert!(missing.contains("Missing argument: name"), "{missing}");
    let unknown = answer(&mut client, "/prompt nothing");
    assert!(
        unknown.contains("there is no prompt named nothing"),
        "{unknown}"
    );
    let bad = answer(&mut client, "/prompt greet Ada");
    assert!(bad.contains("is not key=value"), "{bad}");
}
