//! MCP tool servers: the fixture server's tools join the ToolChain under prefixed names and
//! answer real WebSocket sessions; error results, crashes and restarts, cancellation, many
//! sessions at once, servers that fail to start, config files that cannot be read, and the
//! processes a server starts, which must not outlive it; the servers' instructions in the
//! system prompt (each text once, capped, or left out by `"instructions": false`), tools that
//! require tasks left out, and tool lists that change.
//!
//! The fixture is `tests/fixtures/mcp_fixture.py`, run with `python3` (its header says why it
//! is not a Rust binary).

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparky::common::protocol::ToolStatus;
use support::mcp::{FIXTURE, call, cancel_a_slow_call, ready, wait_for_tool};
use support::{TestServer, WAIT, test_config, wait_until};

/// The fixture's tools as the ToolChain names them (server `fx`); its `research` tool requires
/// tasks and is left out.
const FIXTURE_TOOLS: [&str; 7] = [
    "fx__echo",
    "fx__fail",
    "fx__slow",
    "fx__crash",
    "fx__weird_name_with_space",
    "fx__env",
    "fx__grow",
];

/// An `mcp.json` that starts the fixture as server `fx` (plus `extra` servers), and the file
/// the fixture records its events in.
struct Fixture {
    config: PathBuf,
    log: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Self {
        Self::with_servers(name, json!({}))
    }

    fn with_servers(name: &str, extra: Value) -> Self {
        assert!(
            Command::new("python3").arg("--version").output().is_ok(),
            "the MCP tests run their fixture server with python3, which is not on PATH"
        );
        let dir = support::temp_dir(&format!("mcp-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("events.log");
        let mut servers = json!({
            "fx": {"command": "python3", "args": [FIXTURE],
                   "env": {"MCP_FIXTURE_LOG": log.to_str().unwrap(), "FIXTURE_GIVEN": "given"}}
        });
        for (key, value) in extra.as_object().unwrap() {
            servers[key] = value.clone();
        }
        let config = dir.join("mcp.json");
        std::fs::write(&config, json!({"mcpServers": servers}).to_string()).unwrap();
        Fixture { config, log }
    }

    /// A server with the offline model and this fixture's MCP config, once the fixture's
    /// tools have joined (servers start in the background).
    fn server(&self) -> TestServer {
        let server =
            TestServer::with_config(|config| config.mcp_config = Some(self.config.clone()));
        wait_for_tool(&server, "fx__echo");
        server
    }

    /// The events the fixture has recorded so far.
    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until an event starting with `prefix` is recorded, and returns it.
    fn wait_for(&self, prefix: &str) -> String {
        let mut found = None;
        wait_until(&format!("the fixture to record {prefix:?}"), || {
            found = self.events().into_iter().find(|e| e.starts_with(prefix));
            found.is_some()
        });
        found.unwrap()
    }
}

#[test]
fn the_ready_frame_lists_and_counts_the_prefixed_tools() {
    let (builtin_count, _) = ready(&TestServer::start().client());
    let fixture = Fixture::new("list");
    let server = fixture.server();
    let (count, names) = ready(&server.client());
    assert_eq!(count, names.len());
    // The fixture offers resources, so `mcp_read_resource` joins its tools.
    assert_eq!(count, builtin_count + FIXTURE_TOOLS.len() + 1);
    assert!(names.contains(&"mcp_read_resource".to_owned()), "{names:?}");
    let listed: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("fx__"))
        .collect();
    // Both pages of tools/list, in the server's order.
    assert_eq!(listed, FIXTURE_TOOLS);
    // The handshake ran in order, and the server's own ping was answered.
    fixture.wait_for("pong");
    assert_eq!(fixture.events()[..2], ["initialize", "initialized"]);
}

#[test]
fn a_call_returns_the_tool_output() {
    let fixture = Fixture::new("call");
    let server = fixture.server();
    let mut client = server.client();
    assert_eq!(
        call(&mut client, "fx__echo", json!({"text": "hi"})),
        (ToolStatus::Success, "hi".to_owned())
    );
    assert_eq!(
        call(
            &mut client,
            "fx__weird_name_with_space",
            json!({"text": "odd"})
        ),
        (ToolStatus::Success, "odd".to_owned())
    );
}

#[test]
fn a_server_sees_its_configured_env_and_not_the_rest_of_ours() {
    let fixture = Fixture::new("env");
    let server = fixture.server();
    let mut client = server.client();
    let mut env = |name: &str| call(&mut client, "fx__env", json!({"name": name})).1;
    assert_eq!(env("FIXTURE_GIVEN"), "given");
    // Version managers' shims (pyenv) may put their own directories in front of ours.
    assert!(env("PATH").ends_with(&std::env::var("PATH").unwrap()));
    // cargo runs every test with CARGO_MANIFEST_DIR set; the server must not inherit it.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    assert_eq!(env("CARGO_MANIFEST_DIR"), "(unset)");
}

#[test]
fn an_error_result_gives_status_error() {
    let fixture = Fixture::new("error");
    let server = fixture.server();
    let mut client = server.client();
    assert_eq!(
        call(&mut client, "fx__fail", json!({})),
        (ToolStatus::Error, "it failed, as asked".to_owned())
    );
}

#[test]
fn a_crashed_server_answers_with_a_clear_error_then_restarts() {
    let fixture = Fixture::new("crash");
    let server = fixture.server();
    let mut client = server.client();
    let (status, text) = call(&mut client, "fx__crash", json!({}));
    assert_eq!(status, ToolStatus::Error);
    assert!(
        text.contains("mcp server fx stopped") && text.contains("restarted"),
        "{text}"
    );
    assert_eq!(
        call(&mut client, "fx__echo", json!({"text": "back"})),
        (ToolStatus::Success, "back".to_owned())
    );
    let starts = fixture
        .events()
        .iter()
        .filter(|e| *e == "initialize")
        .count();
    assert_eq!(starts, 2);
}

#[test]
fn cancelling_a_turn_cancels_its_mcp_call() {
    let fixture = Fixture::new("cancel");
    let server = fixture.server();
    let mut client = server.client();
    // The server is told which request to stop, as MCP asks of stdio clients.
    cancel_a_slow_call(&mut client, "fx__slow", &fixture.log);
    // The server is still fine for the next turn.
    assert_eq!(
        call(&mut client, "fx__echo", json!({"text": "next"})),
        (ToolStatus::Success, "next".to_owned())
    );
}

#[test]
fn calls_from_many_sessions_at_once_get_their_own_answers() {
    let fixture = Fixture::new("concurrent");
    let server = fixture.server();
    std::thread::scope(|scope| {
        let callers: Vec<_> = (0..10)
            .map(|i| {
                let server = &server;
                scope.spawn(move || {
                    let mut client = server.client();
                    // Earlier callers wait longer, so the answers come back out of order.
                    let args = json!({"text": format!("client {i}"), "delay_ms": (10 - i) * 30});
                    call(&mut client, "fx__echo", args)
                })
            })
            .collect();
        for (i, caller) in callers.into_iter().enumerate() {
            assert_eq!(
                caller.join().unwrap(),
                (ToolStatus::Success, format!("client {i}"))
            );
        }
    });
}

#[test]
fn a_server_that_fails_to_start_is_left_out_and_the_rest_load() {
    let fixture = Fixture::with_servers(
        "partial",
        json!({
            "missing": {"command": "/nonexistent/sparky-no-such-mcp-server"},
            "quits": {"command": "python3", "args": ["-c", "import sys; sys.exit(1)"]},
            "remote": {"url": "https://example.invalid/mcp"},
        }),
    );
    let server = fixture.server();
    let mut client = server.client();
    let (_, names) = ready(&client);
    assert!(names.iter().all(|n| !n.starts_with("missing__")
        && !n.starts_with("quits__")
        && !n.starts_with("remote__")));
    assert_eq!(
        names.iter().filter(|n| n.starts_with("fx__")).count(),
        FIXTURE_TOOLS.len()
    );
    assert_eq!(
        call(&mut client, "fx__echo", json!({"text": "still here"})),
        (ToolStatus::Success, "still here".to_owned())
    );
}

#[test]
fn a_config_that_cannot_be_read_stops_the_server_at_start() {
    let dir = support::temp_dir("mcp-bad-config");
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.json");
    std::fs::write(&broken, r#"{"mcpServers": {"a": "#).unwrap();
    for (path, expected) in [
        (dir.join("missing.json"), "cannot read the MCP config"),
        (broken, "is not an MCP config"),
    ] {
        let mut config = test_config();
        config.mcp_config = Some(path.clone());
        let listener = sparky::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let error = sparky::spawn(listener, config).unwrap_err();
        assert!(
            matches!(error, sparky::common::error::Error::Config(_)),
            "{error:?}"
        );
        assert!(error.to_string().contains(expected), "{error}");

        // The binary says so and exits with status 1.
        let mut child = Command::new(env!("CARGO_BIN_EXE_sparky"))
            .args(["--addr", "127.0.0.1:0", "--in-memory", "--mcp-config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sparky did not exit with a bad MCP config");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let output = child.wait_with_output().unwrap();
        assert_eq!(status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}

/// A launcher like `npx` or `sh -c`: it starts two helpers of its own, then becomes the fixture.
/// One helper ends on SIGTERM; the other ignores it, so only SIGKILL ends it. Each writes its
/// pid to a file in the directory given as `$1`.
const LAUNCHER: &str = r#"#!/bin/sh
sleep 1000 &
echo $! > "$1/polite.pid.tmp" && mv "$1/polite.pid.tmp" "$1/polite.pid"
(trap '' TERM; exec sleep 1000) &
echo $! > "$1/stubborn.pid.tmp" && mv "$1/stubborn.pid.tmp" "$1/stubborn.pid"
exec python3 "$2"
"#;

/// A fixture started through [`LAUNCHER`] as server `fx`, and the directory of its pid files.
fn launched_fixture(name: &str) -> (Fixture, PathBuf) {
    let fixture = Fixture::new(name);
    let dir = fixture.config.parent().unwrap().to_owned();
    let launcher = dir.join("launcher.sh");
    std::fs::write(&launcher, LAUNCHER).unwrap();
    let config = json!({"mcpServers": {"fx": {
        "command": "sh",
        "args": [launcher.to_str().unwrap(), dir.to_str().unwrap(), FIXTURE],
        "env": {"MCP_FIXTURE_LOG": fixture.log.to_str().unwrap()},
    }}});
    std::fs::write(&fixture.config, config.to_string()).unwrap();
    (fixture, dir)
}

/// The pids the launcher's helpers wrote, once both files are there.
fn helper_pids(dir: &std::path::Path) -> [u32; 2] {
    let read = |file: &str| -> Option<u32> {
        std::fs::read_to_string(dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let mut pids = None;
    wait_until("the launcher to record its helpers", || {
        pids = read("polite.pid").zip(read("stubborn.pid"));
        pids.is_some()
    });
    let (polite, stubborn) = pids.unwrap();
    [polite, stubborn]
}

/// True while `pid` runs. A zombie counts as gone: an orphan that has exited waits for init to
/// reap it, which some containers' init never does.
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain spaces.
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
}

#[test]
fn the_processes_a_server_starts_are_stopped_with_sparky() {
    let (fixture, dir) = launched_fixture("group-shutdown");
    let server = fixture.server();
    let mut client = server.client();
    assert_eq!(
        call(&mut client, "fx__echo", json!({"text": "up"})),
        (ToolStatus::Success, "up".to_owned())
    );
    let pids = helper_pids(&dir);
    assert!(pids.iter().all(|&pid| running(pid)), "{pids:?}");

    drop(client);
    let stopping = Instant::now();
    drop(server);
    // Its input closes, SIGTERM ends the polite helper, SIGKILL the stubborn one.
    for pid in pids {
        wait_until(&format!("helper {pid} to be gone"), || !running(pid));
    }
    // Shutdown waited for the whole group: about 2 s for the helper that ignores SIGTERM.
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopping.elapsed()
    );
}

#[test]
fn a_crashed_server_s_processes_are_stopped_before_it_starts_again() {
    let (fixture, dir) = launched_fixture("group-restart");
    let server = fixture.server();
    let mut client = server.client();
    let first = helper_pids(&dir);
    for file in ["polite.pid", "stubborn.pid"] {
        std::fs::remove_file(dir.join(file)).unwrap();
    }
    let (status, text) = call(&mut client, "fx__crash", json!({}));
    assert_eq!(status, ToolStatus::Error, "{text}");
    // The launcher's helpers hold the server's output open, so the crash shows only as the
    // call's own failure; the next call restarts the server and stops what was left of it.
    assert_eq!(
        call(&mut client, "fx__echo", json!({"text": "back"})),
        (ToolStatus::Success, "back".to_owned())
    );
    for pid in first {
        wait_until(&format!("old helper {pid} to be gone"), || !running(pid));
    }
    let second = helper_pids(&dir);
    assert!(second.iter().all(|&pid| running(pid)), "{second:?}");
    drop(client);
    drop(server);
    for pid in second {
        wait_until(&format!("helper {pid} to be gone"), || !running(pid));
    }
}

#[test]
fn a_changed_tool_list_reaches_new_turns_and_a_restart_s_list_is_the_new_truth() {
    let fixture = Fixture::new("list-changed");
    let server = fixture.server();
    let mut client = server.client();
    assert!(!ready(&client).1.contains(&"fx__added".to_owned()));
    assert_eq!(
        call(&mut client, "fx__grow", json!({})),
        (ToolStatus::Success, "grown".to_owned())
    );
    // The fixture announces its new list; Sparky fetches it and new connections see it.
    wait_for_tool(&server, "fx__added");
    assert_eq!(
        call(&mut client, "fx__added", json!({"text": "new"})),
        (ToolStatus::Success, "new".to_owned())
    );
    // A crash and restart: the restarted fixture lists no "added", and that is the truth now.
    let (status, _) = call(&mut client, "fx__crash", json!({}));
    assert_eq!(status, ToolStatus::Error);
    assert_eq!(
        call(&mut client, "fx__echo", json!({"text": "back"})),
        (ToolStatus::Success, "back".to_owned())
    );
    let (count, names) = ready(&server.client());
    assert!(!names.contains(&"fx__added".to_owned()), "{names:?}");
    assert_eq!(count, names.len());
    let (status, text) = call(&mut client, "fx__added", json!({"text": "gone"}));
    assert_eq!(status, ToolStatus::Error);
    assert!(text.contains("unknown tool"), "{text}");
}

/// A model that records each system message it is given, and answers "ok".
struct SystemRecorder {
    seen: std::sync::Mutex<Vec<String>>,
}

impl sparky::model::ModelBackend for SystemRecorder {
    fn name(&self) -> String {
        "system-recorder".into()
    }

    fn complete(
        &self,
        conversation: sparky::model::Conversation<'_>,
        _tools: &[sparky::model::ToolSpec],
        _sink: &mut dyn sparky::model::ReplySink,
    ) -> sparky::common::error::Result<sparky::model::ModelReply> {
        let system = conversation
            .head
            .iter()
            .filter(|message| message.role == sparky::model::Role::System)
            .map(|message| message.content.clone());
        self.seen.lock().unwrap().extend(system);
        Ok(sparky::model::ModelReply {
            text: "ok".into(),
            ..Default::default()
        })
    }
}

#[test]
fn a_server_s_instructions_reach_the_model_under_its_name() {
    let fixture = Fixture::new("instructions");
    let model = std::sync::Arc::new(SystemRecorder {
        seen: std::sync::Mutex::default(),
    });
    let server = TestServer::with_model(
        |config| {
            config.mcp_config = Some(fixture.config.clone());
            config.system_prompt = Some("be brief".into());
        },
        model.clone(),
    );
    wait_for_tool(&server, "fx__echo");
    let mut client = server.client();
    client.say("hello");
    let turn = client.expect("user_message").frame.turn_id().unwrap().0;
    client.finish_turn(turn);
    let seen = model.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        ["be brief\n\nInstructions from the MCP server fx:\nCall echo before anything else."]
    );
}

/// The system messages a [`SystemRecorder`] saw in one turn with the MCP servers of `fixture`
/// (each named in `tools`, waited for), under the prompt "be brief".
fn system_messages(fixture: &Fixture, tools: &[&str]) -> Vec<String> {
    let model = std::sync::Arc::new(SystemRecorder {
        seen: std::sync::Mutex::default(),
    });
    let server = TestServer::with_model(
        |config| {
            config.mcp_config = Some(fixture.config.clone());
            config.system_prompt = Some("be brief".into());
        },
        model.clone(),
    );
    for tool in tools {
        wait_for_tool(&server, tool);
    }
    let mut client = server.client();
    client.say("hello");
    let turn = client.expect("user_message").frame.turn_id().unwrap().0;
    client.finish_turn(turn);
    model.seen.lock().unwrap().clone()
}

#[test]
fn the_same_instructions_come_once_and_a_server_can_leave_its_own_out() {
    // fx and fy give the same text (one server reached twice, say); quiet says
    // "instructions": false, so its words never reach the model, though its tools do.
    let fixture = Fixture::with_servers(
        "instructions-once",
        json!({
            "fy": {"command": "python3", "args": [FIXTURE]},
            "quiet": {"command": "python3", "args": [FIXTURE], "instructions": false,
                      "env": {"MCP_FIXTURE_INSTRUCTIONS": "Never shown."}},
        }),
    );
    let seen = system_messages(&fixture, &["fx__echo", "fy__echo", "quiet__echo"]);
    assert_eq!(
        seen,
        [
            "be brief\n\nInstructions from the MCP servers fx and fy:\nCall echo before anything else."
        ]
    );
}

#[test]
fn instructions_past_the_cap_are_cut_with_a_note() {
    let long = "Always answer in verse. ".repeat(150); // 3,600 bytes
    let fixture = Fixture::with_servers(
        "instructions-cap",
        json!({
            "big": {"command": "python3", "args": [FIXTURE],
                    "env": {"MCP_FIXTURE_INSTRUCTIONS": long}},
        }),
    );
    let seen = system_messages(&fixture, &["big__echo", "fx__echo"]);
    assert_eq!(seen.len(), 1);
    let instructions = seen[0].strip_prefix("be brief\n\n").unwrap();
    assert!(
        instructions.len() <= sparky::tools::mcp::MAX_INSTRUCTIONS_BYTES,
        "{} bytes",
        instructions.len()
    );
    // "big" comes first (name order) and is cut; fx's short text has no room left after it.
    assert!(
        instructions.starts_with("Instructions from the MCP server big:\nAlways answer in verse."),
        "{instructions}"
    );
    assert!(!instructions.contains("Call echo"), "{instructions}");
    assert!(
        instructions.ends_with(
            "…\n\n[The MCP servers' instructions were cut to 2048 bytes; left out, in \
             part or whole: big and fx.]"
        ),
        "{instructions}"
    );
}

#[test]
fn sparky_listens_at_once_and_a_failed_server_is_tried_again_until_it_starts() {
    let fixture = Fixture::new("background");
    let dir = fixture.config.parent().unwrap().to_owned();
    let marker = dir.join("tried");
    // "late" fails its first start and works from the second; "mute" never answers.
    let late = format!(
        "if [ -e '{m}' ]; then exec python3 '{f}'; else touch '{m}'; exit 1; fi",
        m = marker.display(),
        f = FIXTURE
    );
    let config = json!({"mcpServers": {
        "late": {"command": "sh", "args": ["-c", late]},
        "mute": {"command": "python3", "args": ["-c", "import time; time.sleep(600)"]},
    }});
    std::fs::write(&fixture.config, config.to_string()).unwrap();
    let started = Instant::now();
    let server = TestServer::with_config(|config| config.mcp_config = Some(fixture.config.clone()));
    let client = server.client();
    // Well within START_TIMEOUT (30 s), which "mute" would otherwise hold the listener for.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        ready(&client)
            .1
            .iter()
            .all(|name| !name.starts_with("late__"))
    );
    // The first try failed; the retry a second later brings its tools.
    wait_for_tool(&server, "late__echo");
    assert!(marker.exists());
    let mut client = server.client();
    assert_eq!(
        call(&mut client, "late__echo", json!({"text": "late"})),
        (ToolStatus::Success, "late".to_owned())
    );
    // Shutting down while "mute" is still starting ends promptly.
    let stopping = Instant::now();
    drop(client);
    drop(server);
    assert!(stopping.elapsed() < Duration::from_secs(10));
}
