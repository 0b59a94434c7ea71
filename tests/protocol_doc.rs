//! `docs/protocol.md` names every frame type a client may send, and every frame type, `status`
//! code and `error` code the server can send. The lists below are checked against the enums by
//! exhaustive matches, so a new variant does not compile until it is listed here, and then
//! fails this test until it is documented.

use sparky::common::protocol::{ClientFrame, ErrorCode, ServerFrame, StatusCode};

const DOC: &str = include_str!("../docs/protocol.md");

/// Every frame type's wire name.
fn frame_types() -> Vec<&'static str> {
    // An exhaustive match over a frame of each kind: adding a variant breaks the build here.
    let name = |frame: &ServerFrame| match frame {
        ServerFrame::SessionInfo { .. } => "session_info",
        ServerFrame::Ready { .. } => "ready",
        ServerFrame::UserMessage { .. } => "user_message",
        ServerFrame::Thought { .. } => "thought",
        ServerFrame::ToolUse { .. } => "tool_use",
        ServerFrame::ToolResult { .. } => "tool_result",
        ServerFrame::ApprovalRequest { .. } => "approval_request",
        ServerFrame::ToolProgress { .. } => "tool_progress",
        ServerFrame::MessageDelta { .. } => "message_delta",
        ServerFrame::Message { .. } => "message",
        ServerFrame::Status(_) => "status",
        ServerFrame::Error { .. } => "error",
        ServerFrame::Branch { .. } => "branch",
    };
    let _ = name;
    vec![
        "session_info",
        "ready",
        "user_message",
        "thought",
        "tool_use",
        "tool_result",
        "approval_request",
        "tool_progress",
        "message_delta",
        "message",
        "status",
        "error",
        "branch",
    ]
}

/// Every client frame type's wire name.
fn client_frame_types() -> Vec<&'static str> {
    // As for server frames: a new variant breaks the build here until it is listed.
    let name = |frame: &ClientFrame| match frame {
        ClientFrame::Connect(_) => "connect",
        ClientFrame::Message(_) => "message",
        ClientFrame::Edit(_) => "edit",
        ClientFrame::Regenerate(_) => "regenerate",
        ClientFrame::Switch(_) => "switch",
        ClientFrame::Cancel {} => "cancel",
        ClientFrame::Approve(_) => "approve",
    };
    let _ = name;
    vec![
        "connect",
        "message",
        "edit",
        "regenerate",
        "switch",
        "cancel",
        "approve",
    ]
}

fn error_codes() -> Vec<ErrorCode> {
    let all = vec![
        ErrorCode::InvalidJson,
        ErrorCode::InvalidMessage,
        ErrorCode::UnknownType,
        ErrorCode::NotConnected,
        ErrorCode::AlreadyConnected,
        ErrorCode::UnsupportedFrame,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::NotWaiting,
        ErrorCode::Unauthorized,
        ErrorCode::ServerBusy,
        ErrorCode::ModelError,
        ErrorCode::StepLimit,
        ErrorCode::Internal,
        ErrorCode::Storage,
        ErrorCode::Quota,
    ];
    for code in &all {
        match code {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidMessage
            | ErrorCode::UnknownType
            | ErrorCode::NotConnected
            | ErrorCode::AlreadyConnected
            | ErrorCode::UnsupportedFrame
            | ErrorCode::TooLarge
            | ErrorCode::RateLimited
            | ErrorCode::NotWaiting
            | ErrorCode::Unauthorized
            | ErrorCode::ServerBusy
            | ErrorCode::ModelError
            | ErrorCode::StepLimit
            | ErrorCode::Internal
            | ErrorCode::Storage
            | ErrorCode::Quota
            // Only ever decoded, never sent.
            | ErrorCode::Unknown => {}
        }
    }
    all
}

fn status_codes() -> Vec<StatusCode> {
    let all = vec![
        StatusCode::Cancelled,
        StatusCode::HistoryReset,
        StatusCode::Retrying,
        StatusCode::Gap,
        StatusCode::TakenOver,
        StatusCode::Deleted,
        StatusCode::ContextTrimmed,
        StatusCode::Truncated,
        StatusCode::Duplicate,
    ];
    for code in &all {
        match code {
            StatusCode::Cancelled
            | StatusCode::HistoryReset
            | StatusCode::Retrying
            | StatusCode::Gap
            | StatusCode::TakenOver
            | StatusCode::Deleted
            | StatusCode::ContextTrimmed
            | StatusCode::Truncated
            | StatusCode::Duplicate
            // Only ever decoded, never sent.
            | StatusCode::Unknown => {}
        }
    }
    all
}

/// The text of section `number` of the document, from its heading to the next one.
fn section(number: u32) -> &'static str {
    let heading = format!("\n## {number}. ");
    let start = DOC
        .find(&heading)
        .unwrap_or_else(|| panic!("docs/protocol.md has no section {number}"));
    let rest = &DOC[start + 1..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    &rest[..end]
}

/// Wire names as the server writes them.
fn wire<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn every_frame_type_and_code_is_documented() {
    let mut missing = Vec::new();
    for name in frame_types() {
        if !DOC.contains(&format!("`{name}`")) || !DOC.contains(&format!("\"type\":\"{name}\"")) {
            missing.push(format!("frame {name} (a row and an example)"));
        }
    }
    // A client frame has its row in section 3 and an example of a client sending it.
    let section_3 = section(3);
    for name in client_frame_types() {
        if !section_3.contains(&format!("| `{name}` |"))
            || !DOC.contains(&format!("→ {{\"type\":\"{name}\""))
        {
            missing.push(format!(
                "client frame {name} (a row in section 3 and an example)"
            ));
        }
    }
    for code in error_codes() {
        let name = wire(&code);
        if !DOC.contains(&format!("| `{name}` |")) {
            missing.push(format!("error code {name}"));
        }
    }
    for code in status_codes() {
        let name = wire(&code);
        if !DOC.contains(&format!("| `{name}` |")) {
            missing.push(format!("status code {name}"));
        }
    }
    assert!(missing.is_empty(), "docs/protocol.md lacks: {missing:?}");
}
