//! A tool result longer than `--max-tool-result-bytes` is cut at a character boundary, with a
//! note saying so, before it becomes a `tool_result` event or reaches the model: for MCP tools
//! and built-in tools alike.

mod support;

use serde_json::{Value, json};
use sparky::common::protocol::{ServerFrame, ToolStatus};
use support::{Client, TestServer};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_fixture.py");

/// The cap the tests run with: small, so that results over it stay easy to send.
const CAP: usize = 1000;

/// Calls `tool` through the offline model's `/tool` command; returns the tool_result's status
/// and text, and the answer that closed the turn (the offline model repeats what the tool
/// gave it, so the answer shows what reached the model).
fn call(client: &mut Client, tool: &str, args: Value) -> (ToolStatus, String, String) {
    client.say(&format!("/tool {tool} {args}"));
    let turn = client.expect("user_message").frame.turn_id().unwrap().0;
    let frames = client.finish_turn(turn);
    let (status, result) = frames
        .iter()
        .find_map(|frame| match &frame.frame {
            ServerFrame::ToolResult { status, result, .. } => Some((*status, result.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no tool_result in {frames:#?}"));
    let answer = match frames.last().map(|frame| &frame.frame) {
        Some(ServerFrame::Message { text, .. }) => text.clone(),
        other => panic!("the turn did not answer: {other:?}"),
    };
    (status, result, answer)
}

/// Text of `bytes` bytes whose characters are two bytes each, so that a cut at an odd byte
/// would fall inside one.
fn two_byte_text(bytes: usize) -> String {
    "é".repeat(bytes / 2)
}

/// Checks that `result` is `original` cut to at most [`CAP`] bytes, plus the note.
fn assert_cut(result: &str, original: &str) {
    let note = format!(
        "\n[truncated: the tool returned {} bytes; Sparky keeps the first {CAP}]",
        original.len()
    );
    let kept = result
        .strip_suffix(&note)
        .unwrap_or_else(|| panic!("no note at the end of {:?}", &result[result.len() - 120..]));
    assert!(kept.len() <= CAP && kept.len() > CAP - 4, "{}", kept.len());
    assert!(original.starts_with(kept));
}

#[test]
fn a_long_mcp_result_is_cut_with_a_note() {
    let dir = support::temp_dir("tool-results-mcp");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mcp.json");
    let servers = json!({"mcpServers": {"fx": {"command": "python3", "args": [FIXTURE]}}});
    std::fs::write(&config, servers.to_string()).unwrap();
    let server = TestServer::with_config(|c| {
        c.mcp_config = Some(config.clone());
        c.max_tool_result_bytes = CAP;
    });
    // MCP servers start in the background: wait until the fixture's tools have joined.
    support::wait_until("fx__echo to be listed", || {
        server.client().seen.iter().any(|frame| {
            matches!(&frame.frame, ServerFrame::Ready { tools, .. }
                if tools.iter().any(|name| name == "fx__echo"))
        })
    });
    let mut client = server.client();

    // 1 + 4,000 bytes: odd, so the cap falls inside a two-byte character.
    let text = format!("a{}", two_byte_text(4000));
    let (status, result, answer) = call(&mut client, "fx__echo", json!({ "text": text }));
    assert_eq!(status, ToolStatus::Success);
    assert_cut(&result, &text);
    assert!(
        answer.contains("[truncated: the tool returned 4001 bytes"),
        "{answer}"
    );
    assert!(
        answer.len() < 2 * CAP,
        "the model saw {} bytes",
        answer.len()
    );

    // A result within the cap is untouched.
    let (_, short, _) = call(&mut client, "fx__echo", json!({"text": "short"}));
    assert_eq!(short, "short");
}

#[test]
fn a_long_built_in_result_is_cut_with_a_note() {
    let server = TestServer::with_config(|c| c.max_tool_result_bytes = CAP);
    let mut client = server.client();
    let note = two_byte_text(3000);
    let (status, saved, _) = call(&mut client, "session_note", json!({ "text": note }));
    assert_eq!(status, ToolStatus::Success, "{saved}");
    let (status, notes, _) = call(&mut client, "session_notes", json!({}));
    assert_eq!(status, ToolStatus::Success);
    assert!(notes.contains("[truncated: the tool returned"), "{notes}");
    let (kept, _) = notes.split_once("\n[truncated").unwrap();
    assert!(kept.len() <= CAP);
}
