//! Sparky against the real reference server, `@modelcontextprotocol/server-everything` from
//! npm, over stdio and over Streamable HTTP: echo, an image, a tool that requires tasks left out, a
//! resource link read through `mcp_read_resource`, `/prompt`, the progress of its long-running
//! operation relayed as `tool_progress`, and cancelling that operation.
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

use serde_json::{Value, json};
use sparky::common::protocol::ToolStatus;
use support::mcp::{
    answer, call, cancel_at_once, progress_seen, ready, wait_for_tool, write_config,
};
use support::{TestServer, wait_until};

/// Where `scripts/npm-fixtures.sh` puts the server's entry point.
const EVERYTHING: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
);

/// The Node that runs it, installed beside it (pinned: the server needs Node 20 or newer).
const NODE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/npm/node_modules/.bin/node"
);

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
        // The server takes its port from PORT and does not report the one it got for 0, so
        // the test picks a free one.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(NODE)
            .arg(script)
            .arg("streamableHttp")
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
fn sparky(name: &str, mut entry: Value) -> TestServer {
    entry["approve"] = json!("never");
    let dir = support::temp_dir(&format!("mcp-everything-{name}"));
    let config = write_config(&dir, &json!({ "everything": entry }));
    let server = TestServer::with_config(|c| c.mcp_config = Some(config));
    wait_for_tool(&server, "everything__echo");
    server
}

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
