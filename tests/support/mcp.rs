//! Helpers for the MCP tests: the fixture server (`tests/fixtures/mcp_fixture.py`) on stdio
//! or over Streamable HTTP, its event log, and tool calls through the offline model's `/tool`;
//! the MCP TypeScript SDK's example server with `--oauth` (`Demo`); an MCP server behind
//! `oidc-provider`, which issues rotating refresh tokens (`OidcFixture`).

#![allow(dead_code)] // Each user takes its own subset.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use sparky::common::protocol::{ServerFrame, ToolStatus};

use std::time::{Duration, Instant};

use sparky::common::protocol::StatusCode;

use super::{Client, TestServer, wait_until};

/// The fixture server's script.
pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_fixture.py");

/// Where `scripts/npm-fixtures.sh` puts `@modelcontextprotocol/server-everything`'s entry
/// point.
pub const EVERYTHING: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
);

/// The Node that runs it, installed beside it (pinned: the server needs Node 20 or newer).
pub const NODE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/npm/node_modules/.bin/node"
);

/// Fails the test unless `python3` runs: the fixture needs it.
pub fn require_python() {
    assert!(
        Command::new("python3").arg("--version").output().is_ok(),
        "the MCP tests run their fixture server with python3, which is not on PATH"
    );
}

/// Writes `{"mcpServers": servers}` to `mcp.json` in `dir` and returns its path.
pub fn write_config(dir: &Path, servers: &Value) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("mcp.json");
    std::fs::write(&config, json!({"mcpServers": servers}).to_string()).unwrap();
    config
}

/// The lines a fixture appended to its `MCP_FIXTURE_LOG` file so far.
pub fn events(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until the fixture logs a line starting with `prefix`, and returns it.
pub fn wait_for_event(log: &Path, prefix: &str) -> String {
    let mut found = None;
    wait_until(&format!("the fixture to record {prefix:?}"), || {
        found = events(log).into_iter().find(|e| e.starts_with(prefix));
        found.is_some()
    });
    found.unwrap()
}

/// Waits until the `ready` frame of a new connection lists `tool`.
pub fn wait_for_tool(server: &TestServer, tool: &str) {
    // Each look resumes one conversation: a new conversation for each would run into the
    // principal's --new-conversation-rate while a slow server starts.
    let first = server.client();
    let id = first.session_id.clone().expect("a session id");
    wait_until(&format!("{tool} to be listed"), || {
        let again = Client::connect(server.addr, json!({"session_id": id.as_str()}));
        ready(&again).1.iter().any(|name| name == tool)
    });
}

/// Calls `tool` through the offline model's `/tool` command and returns the tool_result.
pub fn call(client: &mut Client, tool: &str, args: Value) -> (ToolStatus, String) {
    let turn = begin_call(client, tool, args);
    end_call(client, turn)
}

/// Starts a call of `tool` through the offline model's `/tool` command; returns its turn.
pub fn begin_call(client: &mut Client, tool: &str, args: Value) -> u64 {
    client.say(&format!("/tool {tool} {args}"));
    client.expect("user_message").frame.turn_id().unwrap().0
}

/// Reads the call's turn `turn` to its end and returns its tool_result.
pub fn end_call(client: &mut Client, turn: u64) -> (ToolStatus, String) {
    let frames = client.finish_turn(turn);
    frames
        .iter()
        .find_map(|frame| match &frame.frame {
            ServerFrame::ToolResult { status, result, .. } => Some((*status, result.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no tool_result in {frames:#?}"))
}

/// Sends `text` and returns the turn's answer (its `message` frame's text).
pub fn answer(client: &mut Client, text: &str) -> String {
    client.say(text);
    let turn = client.expect("user_message").frame.turn_id().unwrap().0;
    let frames = client.finish_turn(turn);
    frames
        .iter()
        .find_map(|frame| match &frame.frame {
            ServerFrame::Message { text, .. } => Some(text.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no answer in {frames:#?}"))
}

/// Every `tool_progress` frame the client has seen, in order: `(progress, total)`.
pub fn progress_seen(client: &Client) -> Vec<(f64, Option<f64>)> {
    client
        .seen
        .iter()
        .filter_map(|frame| match &frame.frame {
            ServerFrame::ToolProgress {
                progress, total, ..
            } => Some((*progress, *total)),
            _ => None,
        })
        .collect()
}

/// The `ready` frame a client received when it connected: its tool count and names.
pub fn ready(client: &Client) -> (usize, Vec<String>) {
    client
        .seen
        .iter()
        .find_map(|frame| match &frame.frame {
            ServerFrame::Ready {
                tools_loaded,
                tools,
                ..
            } => Some((*tools_loaded, tools.clone())),
            _ => None,
        })
        .expect("a ready frame")
}

/// The fixture serving Streamable HTTP (`--http PORT`) as a child process; killed when
/// dropped.
pub struct HttpFixture {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
}

impl HttpFixture {
    /// Starts it on `port` (0 for any) with `env`, and waits for its `listening on` line.
    pub fn start(port: u16, env: &[(&str, &str)]) -> Self {
        require_python();
        let mut child = Command::new("python3")
            .args([FIXTURE, "--http", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let line = super::first_line(&mut child, "the HTTP fixture");
        let port = line
            .strip_prefix("listening on ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        HttpFixture { child, port }
    }

    /// Its MCP endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Kills it (SIGKILL) and waits for it.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for HttpFixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the fixture's `slow` tool (as `tool`, 30 s) from `client`, cancels the turn once the
/// fixture has logged the call in `log`, and checks that the turn ends cancelled at once and
/// that the server was told which request to stop.
pub fn cancel_a_slow_call(client: &mut Client, tool: &str, log: &Path) {
    client.say(&format!(r#"/tool {tool} {{"ms": 30000}}"#));
    client.expect("tool_use");
    let started = wait_for_event(log, "call ");
    let id = started
        .strip_prefix("call ")
        .and_then(|rest| rest.strip_suffix(" slow"))
        .unwrap_or_else(|| panic!("unexpected event {started:?}"))
        .to_owned();
    cancel_at_once(client);
    let cancelled = wait_for_event(log, &format!("cancelled {id} "));
    assert!(cancelled.contains("cancelled the turn"), "{cancelled}");
}

/// Cancels the client's turn and checks that it ends cancelled within two seconds.
pub fn cancel_at_once(client: &mut Client) {
    let sent = Instant::now();
    client.cancel();
    let status = client.expect("status");
    assert!(
        matches!(&status.frame, ServerFrame::Status(s) if s.code == StatusCode::Cancelled),
        "{status:?}"
    );
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
}

/// The MCP TypeScript SDK's example server, which `scripts/npm-fixtures.sh` installs.
pub const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/npm/node_modules/@modelcontextprotocol/sdk/dist/esm/examples/server/\
     simpleStreamableHttp.js"
);

/// The example's entry point, or `None` (after saying why) when the test should be skipped.
pub fn oauth_example() -> Option<PathBuf> {
    installed(&[EXAMPLE, NODE]).then(|| EXAMPLE.into())
}

/// True when every file of `paths` exists; else false after saying why (the test is then
/// skipped), or a failure under CI.
fn installed(paths: &[&str]) -> bool {
    let Some(missing) = paths.iter().find(|path| !Path::new(path).exists()) else {
        return true;
    };
    let message = format!("{missing} is missing: run scripts/npm-fixtures.sh");
    assert!(std::env::var_os("CI").is_none(), "{message}");
    eprintln!("skipped: {message}");
    false
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The example server with `--oauth`: the MCP server on one port, its authorization server on
/// another (`MCP_PORT`, `MCP_AUTH_PORT`; it does not report ports it got for 0, so the test
/// picks free ones). Killed when dropped.
pub struct Demo {
    child: Child,
    /// The MCP server's port.
    pub mcp_port: u16,
}

impl Demo {
    /// Starts it from `script` and waits until both servers listen.
    pub fn start(script: &Path) -> Self {
        let (mcp_port, auth_port) = (free_port(), free_port());
        let child = Command::new(NODE)
            .arg(script)
            .arg("--oauth")
            .env("MCP_PORT", mcp_port.to_string())
            .env("MCP_AUTH_PORT", auth_port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs");
        let demo = Demo { child, mcp_port };
        wait_until("the demo servers to listen", || {
            TcpStream::connect(("127.0.0.1", mcp_port)).is_ok()
                && TcpStream::connect(("127.0.0.1", auth_port)).is_ok()
        });
        demo
    }

    /// The MCP endpoint, as the server names itself in its metadata.
    pub fn url(&self) -> String {
        format!("http://localhost:{}/mcp", self.mcp_port)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fixture that runs an MCP server behind `oidc-provider`.
pub const OIDC_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/mcp-oauth-refresh.mjs"
);

/// Where `scripts/npm-fixtures.sh` installs the packages it imports: it runs from there.
pub const NPM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/npm");

/// True when the packages `OIDC_FIXTURE` imports are installed; else false after saying why
/// (the test is then skipped), or a failure under CI.
pub fn oidc_fixture_installed() -> bool {
    installed(&[
        NODE,
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/npm/node_modules/oidc-provider/package.json"
        ),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/npm/node_modules/@modelcontextprotocol/sdk/package.json"
        ),
    ])
}

/// `tests/fixtures/mcp-oauth-refresh.mjs` as a child process: `oidc-provider` as the
/// authorization server (rotating refresh tokens, access tokens living `ttl` seconds) and an
/// MCP server (tools `echo` and `slow`) that takes its tokens. Killed when dropped.
pub struct OidcFixture {
    child: Child,
    /// The MCP server's endpoint.
    pub mcp_url: String,
    /// Where its `/stats` and `/admin/revoke` are.
    addr: std::net::SocketAddr,
}

impl OidcFixture {
    /// Starts it with access tokens that live `ttl` seconds, and waits for its URLs.
    pub fn start(ttl: u64) -> Self {
        let source = std::fs::read_to_string(OIDC_FIXTURE).unwrap();
        // Evaluated from target/npm, so that its imports resolve to the packages there.
        let mut child = Command::new(NODE)
            .current_dir(NPM)
            .args(["--input-type=module", "--eval", &source, &ttl.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs");
        let stdout = child.stdout.take().expect("a piped stdout");
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            // Read to the end, so that its later lines never meet a closed pipe.
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = lines.send(line);
            }
        });
        let url = |prefix: &str| {
            let line: String = received
                .recv_timeout(super::WAIT)
                .unwrap_or_else(|_| panic!("the OIDC fixture printed no {prefix:?} line"));
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("unexpected line {line:?}"))
                .to_owned()
        };
        let _issuer = url("as ");
        let mcp_url = url("mcp ");
        let addr = mcp_url
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .and_then(|host| host.parse().ok())
            .unwrap_or_else(|| panic!("unexpected URL {mcp_url:?}"));
        OidcFixture {
            child,
            mcp_url,
            addr,
        }
    }

    /// What its authorization server served: `granted` and `refused` token requests by grant
    /// type, `access_token_expires_at` (Unix seconds) of the last access token, `slow_most`
    /// (the most `slow` calls at once), `now`.
    pub fn stats(&self) -> Value {
        self.ask("GET", "/stats")
    }

    /// How many token requests of `grant_type` its authorization server granted.
    pub fn granted(&self, grant_type: &str) -> u64 {
        self.stats()["granted"][grant_type].as_u64().unwrap_or(0)
    }

    /// How many token requests of `grant_type` its authorization server refused.
    pub fn refused(&self, grant_type: &str) -> u64 {
        self.stats()["refused"][grant_type].as_u64().unwrap_or(0)
    }

    /// Waits until the last access token it issued has expired, by the clock (its expiry is
    /// known: no need to ask anyone).
    pub fn wait_for_expiry(&self) {
        let expires_at = self.stats()["access_token_expires_at"].as_f64().unwrap();
        assert!(expires_at > 0.0, "no access token was issued");
        wait_until("the access token to expire", || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
                > expires_at
        });
    }

    /// Destroys every grant at the authorization server: their refresh tokens are refused
    /// from now on. Returns how many there were.
    pub fn revoke(&self) -> u64 {
        self.ask("POST", "/admin/revoke")["revoked"]
            .as_u64()
            .unwrap()
    }

    /// Makes its MCP server refuse every access token it has taken so far (they have not
    /// expired). Returns how many.
    pub fn reject_tokens(&self) -> u64 {
        self.ask("POST", "/admin/reject-tokens")["rejected"]
            .as_u64()
            .unwrap()
    }

    /// Sends `method path` to it and returns its JSON answer.
    fn ask(&self, method: &str, path: &str) -> Value {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(super::WAIT))
            .build()
            .into();
        let url = format!("http://{}{path}", self.addr);
        let answer = match method {
            "POST" => agent.post(&url).send_empty(),
            _ => agent.get(&url).call(),
        };
        let body = answer.unwrap().into_body().read_to_string().unwrap();
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for OidcFixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
