//! Every command of the built-in offline model (PROTOCOL.md section 9), over a real socket.

mod support;

use serde_json::json;
use sparky::common::protocol::{ServerFrame, ToolStatus};
use support::{Client, TestServer, kinds, tool_result};

/// Sends a command and returns the turn's frames, checking the tool shape of section 9.
fn tool_turn(
    client: &mut Client,
    text: &str,
    tool: &str,
) -> Vec<sparky::common::protocol::ServerEnvelope> {
    client.say(text);
    let turn = client.expect("user_message").frame.turn_id().unwrap().0;
    let mut frames = client.finish_turn(turn);
    frames.insert(
        0,
        client
            .seen
            .iter()
            .rev()
            .find(|f| support::kind(f) == "user_message")
            .unwrap()
            .clone(),
    );
    assert_eq!(
        kinds(&frames),
        [
            "user_message",
            "thought",
            "tool_use",
            "tool_result",
            "message"
        ],
        "{text}"
    );
    let ServerFrame::ToolUse { name, call_id, .. } = &frames[2].frame else {
        unreachable!()
    };
    let ServerFrame::ToolResult {
        name: result_name,
        call_id: result_id,
        ..
    } = &frames[3].frame
    else {
        unreachable!()
    };
    assert_eq!(name, tool);
    assert_eq!((result_name, result_id), (name, call_id));
    frames
}

fn args_of(frames: &[sparky::common::protocol::ServerEnvelope]) -> serde_json::Value {
    match &frames[2].frame {
        ServerFrame::ToolUse { args, .. } => args.clone(),
        other => panic!("not a tool_use: {other:?}"),
    }
}

#[test]
fn calc_evaluates_and_reports_bad_input_as_a_tool_error() {
    let server = TestServer::start();
    let mut client = server.client();
    let frames = tool_turn(&mut client, "/calc (2 + 3) * 4 ^ 2 - -1", "calculator");
    assert_eq!(
        args_of(&frames),
        json!({"expression": "(2 + 3) * 4 ^ 2 - -1"})
    );
    assert_eq!(
        tool_result(&frames),
        (ToolStatus::Success, "(2 + 3) * 4 ^ 2 - -1 = 81".into())
    );

    let frames = tool_turn(&mut client, "/calc 1 / 0", "calculator");
    assert_eq!(
        tool_result(&frames),
        (ToolStatus::Error, "division by zero".into())
    );
    let frames = tool_turn(&mut client, "/calc 2 +", "calculator");
    assert_eq!(tool_result(&frames).0, ToolStatus::Error);
}

#[test]
fn time_reads_the_clock() {
    let server = TestServer::start();
    let mut client = server.client();
    let frames = tool_turn(&mut client, "/time", "clock");
    assert_eq!(args_of(&frames), json!({}));
    let (status, text) = tool_result(&frames);
    assert_eq!(status, ToolStatus::Success);
    assert!(text.contains("UTC"), "{text}");
}

#[test]
fn notes_are_kept_per_session() {
    let server = TestServer::start();
    let mut mine = server.client();
    let mut theirs = server.client();
    let frames = tool_turn(&mut mine, "/note buy milk", "session_note");
    assert_eq!(args_of(&frames), json!({"text": "buy milk"}));
    tool_turn(&mut mine, "/note call mum", "session_note");
    let frames = tool_turn(&mut mine, "/notes", "session_notes");
    assert_eq!(tool_result(&frames).1, "1. buy milk\n2. call mum");
    let frames = tool_turn(&mut theirs, "/notes", "session_notes");
    assert_eq!(tool_result(&frames).1, "This session has no notes.");
}

#[test]
fn wait_sleeps_and_says_so() {
    let server = TestServer::start();
    let mut client = server.client();
    let frames = tool_turn(&mut client, "/wait 20", "wait");
    assert_eq!(args_of(&frames), json!({"ms": 20}));
    assert_eq!(
        tool_result(&frames),
        (ToolStatus::Success, "Waited 20 ms.".into())
    );
    let frames = tool_turn(&mut client, "/wait 600000", "wait");
    assert_eq!(tool_result(&frames).0, ToolStatus::Error);
}

#[test]
fn tool_calls_any_tool_with_json_args() {
    let server = TestServer::start();
    let mut client = server.client();
    let frames = tool_turn(
        &mut client,
        r#"/tool calculator {"expression": "6*7"}"#,
        "calculator",
    );
    assert_eq!(
        tool_result(&frames),
        (ToolStatus::Success, "6*7 = 42".into())
    );
    let frames = tool_turn(&mut client, "/tool nosuch {}", "nosuch");
    let (status, text) = tool_result(&frames);
    assert_eq!(status, ToolStatus::Error);
    assert!(text.contains("unknown tool"), "{text}");
    let frames = tool_turn(
        &mut client,
        r#"/tool calculator {"expression": 5}"#,
        "calculator",
    );
    assert_eq!(tool_result(&frames).0, ToolStatus::Error);
    // Not JSON: a usage message, no tool call.
    client.say("/tool calculator {oops");
    let frames = client.finish_turn(4);
    assert_eq!(kinds(&frames), ["user_message", "message"]);
}

#[test]
fn help_lists_the_commands() {
    let server = TestServer::start();
    let mut client = server.client();
    client.say("/help");
    let frames = client.finish_turn(1);
    assert_eq!(kinds(&frames), ["user_message", "message"]);
    let ServerFrame::Message { text, .. } = &frames[1].frame else {
        unreachable!()
    };
    for command in [
        "/remember",
        "/recall",
        "/note",
        "/notes",
        "/calc",
        "/time",
        "/wait",
        "/tool",
        "/help",
    ] {
        assert!(text.contains(command), "{command} missing from help");
    }
}
