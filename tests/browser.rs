//! The chat page in a real browser: headless Chromium, driven over WebDriver, against a server.
//!
//! One scenario, so that Chromium starts once. The page reaches the server through a small TCP proxy owned by the test, so that the test can
//! cut every connection mid-turn, refuse new ones for a while, and point the page at a
//! restarted server on another port without the page noticing anything but dropped sockets.
//! WebDriver is spoken over `std::net::TcpStream` with `serde_json`: no extra dependency.
//! Screenshots go to `target/browser-artifacts/`.
//!
//! Chromium and chromedriver must be installed (`.ci/run` installs Debian's `chromium` and
//! `chromium-driver`); without them the test fails, unless `SPARKY_SKIP_BROWSER=1` is set.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparky::protocol::{ServerFrame, SessionId, TurnId};
use support::{ChildServer, Client};

/// How long the page may take to show something before the test fails.
const PAGE_WAIT: Duration = Duration::from_secs(15);
/// How often a wait looks at the page again.
const POLL: Duration = Duration::from_millis(50);
/// The browser window, and so the screenshots.
const WINDOW: (u64, u64) = (900, 700);

#[test]
fn the_chat_page_works_in_a_real_browser() {
    let Some(tools) = BrowserTools::find() else {
        return;
    };
    let started = Instant::now();
    let data_dir = support::temp_dir("browser");
    let data_arg = data_dir.to_str().unwrap().to_owned();
    let mut server = ChildServer::start(&["--data-dir", &data_arg]);
    let proxy = Proxy::start(server.addr);
    let browser = Browser::start(&tools);
    let page = format!("http://{}/", proxy.addr);

    // Loading: the page connects and says so.
    browser.goto(&page);
    browser.wait_for("the connected indicator", CONNECTED);
    browser.screenshot("01-connected");
    assert_eq!(browser.eval("return document.title"), "Sparky");

    // A plain message: the user's bubble, a collapsed thought, then the answer.
    browser.say("hello from the browser", Submit::EnterKey);
    browser.wait_for_turn(1, "done");
    let turn = browser.turn(1);
    assert_eq!(turn["user"], "hello from the browser");
    assert_eq!(turn["answer"], "You said: hello from the browser");
    assert_eq!(turn["thoughts"], 1);

    // A tool call: its name, arguments and result.
    browser.say("/calc 6*7", Submit::SendButton);
    browser.wait_for_turn(2, "done");
    let turn = browser.turn(2);
    assert_eq!(
        turn["tools"],
        json!(["calculator|done|{\"expression\":\"6*7\"}|6*7 = 42"])
    );

    // Model output that looks like HTML stays text.
    let xss = "<img src=x onerror=alert(1)>";
    browser.say(xss, Submit::EnterKey);
    browser.wait_for_turn(3, "done");
    let turn = browser.turn(3);
    assert_eq!(turn["user"], xss);
    assert_eq!(turn["answer"], format!("You said: {xss}"));
    assert_eq!(
        browser.eval("return document.querySelectorAll('img').length"),
        0
    );
    browser.assert_no_alert();
    // Open the first thought, so that the screenshot shows one.
    browser.eval("document.querySelector('.turn[data-turn-id=\"2\"] .thought summary').click()");
    browser.screenshot("02-conversation");

    // Stop: visible while the turn runs; pressing it marks the turn cancelled, well before the
    // ten seconds are up.
    let asked = Instant::now();
    browser.say("/wait 10000", Submit::EnterKey);
    browser.wait_for_tool_running(4);
    browser.wait_for(
        "the Stop button",
        "return !document.getElementById('stop').hidden",
    );
    browser.screenshot("03-running");
    browser.click("#stop");
    browser.wait_for_turn(4, "cancelled");
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "Stop did not stop"
    );
    let turn = browser.turn(4);
    assert_eq!(turn["marks"], json!(["\u{25A0} Stopped"]));
    assert_eq!(turn["tools"], json!(["wait|stopped|{\"ms\":10000}|"]));
    browser.wait_for(
        "the Stop button to go",
        "return document.getElementById('stop').hidden",
    );
    browser.screenshot("04-cancelled");

    // The network drops mid-turn and stays down for a moment: the page says it is
    // reconnecting, comes back by itself, and the turn completes once, with nothing doubled.
    browser.say("/wait 2500", Submit::EnterKey);
    browser.wait_for_tool_running(5);
    proxy.set_refusing(true);
    proxy.drop_all();
    browser.wait_for(
        "the reconnecting indicator",
        "return document.getElementById('conn').dataset.state === 'reconnecting'",
    );
    browser.screenshot("05-reconnecting");
    proxy.set_refusing(false);
    browser.wait_for("the page to reconnect", CONNECTED);
    browser.wait_for_turn(5, "done");
    assert_eq!(browser.turn(5)["answer"], "Waited 2500 ms.");
    let view = browser.conversation();
    assert_matches_server(&view, &browser, server.addr);

    // A reload rebuilds the same conversation from the server's replay.
    browser.refresh();
    browser.wait_for("the page to reconnect after a reload", CONNECTED);
    browser.wait_for_turn(5, "done");
    assert_eq!(
        browser.conversation(),
        view,
        "the reload changed the conversation"
    );

    // The server is killed mid-turn and started again on the same data directory (on another
    // port, behind the same proxy). The page resumes; the cut-off turn is closed with an error
    // mark; everything before it is still there, once.
    browser.say("/wait 5000", Submit::EnterKey);
    browser.wait_for_tool_running(6);
    server.kill();
    server = ChildServer::start(&["--data-dir", &data_arg]);
    proxy.set_upstream(server.addr);
    browser.wait_for("the page to reconnect after the restart", CONNECTED);
    browser.wait_for_turn(6, "error");
    browser.say("still there?", Submit::SendButton);
    browser.wait_for_turn(7, "done");
    let view = browser.conversation();
    assert_eq!(view.as_array().unwrap().len(), 7);
    assert_matches_server(&view, &browser, server.addr);
    browser.screenshot("06-after-restart");
    browser.refresh();
    browser.wait_for("the page to reconnect after a reload", CONNECTED);
    browser.wait_for_turn(7, "done");
    assert_eq!(
        browser.conversation(),
        view,
        "the reload changed the conversation"
    );

    // On a phone-sized screen nothing runs off the side.
    browser.set_window(390, 760);
    browser.wait_for(
        "the narrow layout",
        "return window.innerWidth < 420 \
         && document.documentElement.scrollWidth <= window.innerWidth",
    );
    browser.screenshot("07-phone");
    browser.set_window(WINDOW.0, WINDOW.1);

    // New chat: a fresh session and an empty view.
    let old_session = browser.eval("return localStorage.getItem('sparky.session_id')");
    browser.click("#new-chat");
    browser.wait_for(
        "a new session",
        &format!(
            "return document.getElementById('conn').dataset.state === 'connected' \
             && localStorage.getItem('sparky.session_id') !== {old_session} \
             && document.querySelectorAll('.turn').length === 0"
        ),
    );
    browser.say("a fresh start", Submit::EnterKey);
    browser.wait_for_turn(1, "done");
    assert_eq!(browser.conversation().as_array().unwrap().len(), 1);
    browser.screenshot("08-new-chat");

    // What the real server cannot be made to do on demand, a scripted one does (see
    // `FakeServer`): ask for a token, report a gap, resend an event, take the connection over.
    let fake = FakeServer::start();
    browser.goto(&format!("http://{}/", fake.addr));
    browser.wait_for("the token form", TOKEN_FORM);
    browser.screenshot("09-token");
    browser.type_into("#token", &format!("{FAKE_TOKEN}\u{E007}"));
    browser.wait_for(
        "the taken-over note",
        "return document.getElementById('conn').dataset.state === 'paused' \
         && document.getElementById('log').innerText.includes('opened in another window')",
    );
    browser.screenshot("10-taken-over");
    let turn = browser.turn(3);
    assert_eq!(turn["answer"], "Part two.");
    assert_eq!(turn["tools"], json!(["graph_get|error|{}|no such node"]));
    assert_eq!(turn["thoughts"], 1, "the resent event was shown twice");
    let text = browser.eval("return document.getElementById('log').innerText");
    assert!(
        text.as_str().unwrap().contains("(events 1–2)"),
        "no gap note: {text}"
    );
    // Taken over: the page stays put rather than fighting the other window.
    let connects = fake.connects.lock().unwrap().len();
    assert_eq!(connects, 2, "one refused for want of a token, one with it");
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < quiet_until {
        assert_eq!(fake.connects.lock().unwrap().len(), 2, "it reconnected");
        std::thread::sleep(POLL);
    }
    browser.click(".note button");
    browser.wait_for("the page to reconnect when asked", CONNECTED);
    let connects = fake.connects.lock().unwrap().clone();
    assert_eq!(connects[0].get("token"), None);
    assert_eq!(connects[1]["token"], FAKE_TOKEN);
    assert_eq!(
        connects[2],
        json!({"session_id": FAKE_SESSION, "last_seq": 9, "token": FAKE_TOKEN})
    );

    // And the real server with a token: a wrong one is refused and asked for again.
    let guarded = ChildServer::start(&["--in-memory", "--auth-token", "browser-secret"]);
    browser.goto(&format!("http://{}/", guarded.addr));
    browser.wait_for("the token form", TOKEN_FORM);
    browser.type_into("#token", "wrong\u{E007}");
    browser.wait_for(
        "the token form to say the token was refused",
        &format!(
            "{TOKEN_FORM} && document.getElementById('token-note').textContent.includes('not accepted')"
        ),
    );
    browser.type_into("#token", "browser-secret\u{E007}");
    browser.wait_for("the page to connect with the token", CONNECTED);
    browser.say("with a token", Submit::EnterKey);
    browser.wait_for_turn(1, "done");
    assert_eq!(
        browser.eval("return localStorage.getItem('sparky.token')"),
        "browser-secret"
    );

    // No script error and no Content-Security-Policy violation anywhere along the way.
    let console = browser.console();
    for entry in &console {
        assert!(
            !entry.contains("Content Security Policy") && !entry.contains("Uncaught"),
            "the browser console says: {entry}"
        );
    }

    drop(browser);
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
    notice(&format!(
        "browser test took {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        artifacts_dir().display()
    ));
}

/// The page shows the form that asks for a token.
const TOKEN_FORM: &str = "return !document.getElementById('token-box').hidden";

/// The page's connection indicator says it is connected.
const CONNECTED: &str = "return document.getElementById('conn').dataset.state === 'connected'";

/// What the page shows of every turn, in order, as JSON (see [`Browser::conversation`]).
const CONVERSATION_JS: &str = r#"
return Array.from(document.querySelectorAll('#log .turn')).map((turn) => ({
  id: Number(turn.dataset.turnId),
  user: turn.querySelector('.bubble.user').textContent,
  thoughts: turn.querySelectorAll('.thought').length,
  tools: Array.from(turn.querySelectorAll('.tool')).map((tool) => [
    tool.querySelector('.name').textContent,
    tool.querySelector('.state').textContent,
    tool.querySelector('pre.args').textContent,
    tool.querySelector('pre.result').textContent,
  ].join('|')),
  answer: turn.querySelector('.bubble.answer').textContent,
  outcome: turn.dataset.outcome || 'open',
  marks: Array.from(turn.querySelectorAll('.mark')).map((mark) => mark.textContent),
}));
"#;

/// Checks the page's view against the server's own log of the session: the same turns, each
/// with as many thoughts and tool calls as the server sent, the same answers, and the page's
/// stored `last_seq` equal to the server's last event.
fn assert_matches_server(view: &Value, browser: &Browser, server: SocketAddr) {
    let session = browser.eval("return localStorage.getItem('sparky.session_id')");
    let last_seq: u64 = browser
        .eval("return localStorage.getItem('sparky.last_seq')")
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let id: SessionId = serde_json::from_value(session).unwrap();
    let mut client = Client::resume(server, &id, 0);
    while client.last_seq < last_seq {
        client.next();
    }
    // Nothing newer than what the page has seen.
    assert_eq!(client.last_seq, last_seq);

    let turns = view.as_array().unwrap();
    for (index, turn) in turns.iter().enumerate() {
        let turn_id = index as u64 + 1;
        assert_eq!(
            turn["id"], turn_id,
            "turns out of order or doubled: {view:#}"
        );
        let frames: Vec<&ServerFrame> = client
            .seen
            .iter()
            .map(|envelope| &envelope.frame)
            .filter(|frame| frame.turn_id() == Some(TurnId(turn_id)))
            .collect();
        let count = |wanted: fn(&ServerFrame) -> bool| frames.iter().filter(|f| wanted(f)).count();
        assert_eq!(
            turn["thoughts"],
            count(|f| matches!(f, ServerFrame::Thought { .. })),
            "thoughts of turn {turn_id}: {view:#}"
        );
        assert_eq!(
            turn["tools"].as_array().unwrap().len(),
            count(|f| matches!(f, ServerFrame::ToolUse { .. })),
            "tool calls of turn {turn_id}: {view:#}"
        );
        if let Some(ServerFrame::Message { text, .. }) = frames.last() {
            assert_eq!(turn["answer"], text.as_str());
            assert_eq!(turn["outcome"], "done");
        }
    }
}

/// How [`Browser::say`] sends what it typed.
enum Submit {
    /// Presses Enter in the text box.
    EnterKey,
    /// Clicks the Send button.
    SendButton,
}

/// Where Chromium and chromedriver are.
struct BrowserTools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl BrowserTools {
    /// Finds both on `PATH`. Fails the test when either is missing, unless
    /// `SPARKY_SKIP_BROWSER=1` asks to skip it (then prints why and returns `None`).
    fn find() -> Option<Self> {
        if std::env::var("SPARKY_SKIP_BROWSER").is_ok_and(|v| v == "1") {
            notice("SKIPPED: the browser test, because SPARKY_SKIP_BROWSER=1");
            return None;
        }
        let chromium = on_path("chromium").or_else(|| on_path("chromium-browser"));
        let chromedriver = on_path("chromedriver");
        match (chromium, chromedriver) {
            (Some(chromium), Some(chromedriver)) => Some(BrowserTools {
                chromium,
                chromedriver,
            }),
            _ => panic!(
                "the browser test needs Chromium and chromedriver, and they are not on PATH. \
                 Run .ci/run (it installs them), or `apt-get install -y chromium chromium-driver`; \
                 set SPARKY_SKIP_BROWSER=1 to skip this test"
            ),
        }
    }
}

/// Writes a line to stderr past the test harness's capture, so that it shows even when the
/// test passes.
fn notice(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Where screenshots and the browser's log go.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("browser-artifacts")
}

/// Headless Chromium under chromedriver, with one WebDriver session; both end when dropped.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    profile: PathBuf,
}

impl Browser {
    fn start(tools: &BrowserTools) -> Self {
        let artifacts = artifacts_dir();
        std::fs::create_dir_all(&artifacts).unwrap();
        let log = std::fs::File::create(artifacts.join("chromedriver.log")).unwrap();
        let mut driver = Command::new(&tools.chromedriver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", tools.chromedriver.display()));
        let port = driver_port(&mut driver);
        let profile = support::temp_dir("browser-profile");
        std::fs::create_dir_all(&profile).unwrap();
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            profile,
        };
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "unhandledPromptBehavior": "ignore",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": tools.chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--hide-scrollbars",
                    format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                    format!("--user-data-dir={}", browser.profile.display()),
                ],
            },
        }}});
        let created = browser
            .request("POST", "/session", Some(&capabilities))
            .unwrap_or_else(|e| panic!("chromedriver could not start Chromium: {e}"));
        browser.session = created["sessionId"].as_str().unwrap().to_owned();
        browser.set_window(WINDOW.0, WINDOW.1);
        browser
    }

    /// One WebDriver command; `Err` carries the WebDriver error.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json; \
             charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .unwrap();
        let (status, body) = read_http_response(&mut stream);
        let answer: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("chromedriver sent no JSON ({e}) for {method} {path}"));
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        if status == 200 {
            Ok(value)
        } else {
            Err(format!("{method} {path}: HTTP {status}: {value}"))
        }
    }

    /// A command of this session that must succeed.
    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let body = (method == "POST").then_some(body);
        let path = format!("/session/{}{path}", self.session);
        self.request(method, &path, body.as_ref())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({"url": url}));
    }

    fn refresh(&self) {
        self.command("POST", "/refresh", json!({}));
    }

    /// Sizes the window so that the page itself (the viewport) is `width` by `height`.
    fn set_window(&self, width: u64, height: u64) {
        let (mut outer_width, mut outer_height) = (width, height);
        for _ in 0..2 {
            self.command(
                "POST",
                "/window/rect",
                json!({"width": outer_width, "height": outer_height}),
            );
            let inner = self.eval("return [window.innerWidth, window.innerHeight]");
            let (inner_width, inner_height) =
                (inner[0].as_u64().unwrap(), inner[1].as_u64().unwrap());
            if (inner_width, inner_height) == (width, height) {
                return;
            }
            // Headless Chromium still counts window decorations; add them.
            outer_width += width.saturating_sub(inner_width);
            outer_height += height.saturating_sub(inner_height);
        }
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    fn eval(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Polls `script` until it returns something truthy, and returns that; fails after
    /// [`PAGE_WAIT`] with a screenshot and the page's text.
    fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let value = self.eval(script);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(_) | Value::Object(_) => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let name = format!(
                    "timeout-{}",
                    what.replace(|c: char| !c.is_alphanumeric(), "-")
                );
                self.screenshot(&name);
                let text = self.eval("return document.body.innerText");
                panic!(
                    "timed out waiting for {what}; the page shows:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn wait_for_turn(&self, turn: u64, outcome: &str) {
        self.wait_for(
            &format!("turn {turn} to end with {outcome}"),
            &format!(
                "const turn = document.querySelector('.turn[data-turn-id=\"{turn}\"]'); \
                 return turn !== null && turn.dataset.outcome === '{outcome}'"
            ),
        );
    }

    fn wait_for_tool_running(&self, turn: u64) {
        self.wait_for(
            &format!("a running tool in turn {turn}"),
            &format!("return document.querySelector('.turn[data-turn-id=\"{turn}\"] .tool.running') !== null"),
        );
    }

    fn element(&self, css: &str) -> String {
        let found = self.command(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    fn click(&self, css: &str) {
        let element = self.element(css);
        self.command("POST", &format!("/element/{element}/click"), json!({}));
    }

    /// Types `text` into the element `css`, as keystrokes (`\u{E007}` is Enter).
    fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css);
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            json!({"text": text}),
        );
    }

    /// Types `text` into the message box, as keystrokes, and sends it.
    fn say(&self, text: &str, how: Submit) {
        self.wait_for(
            "the Send button to be enabled",
            "return !document.getElementById('send').disabled",
        );
        let keys = match how {
            Submit::EnterKey => format!("{text}\u{E007}"),
            Submit::SendButton => text.to_owned(),
        };
        self.type_into("#input", &keys);
        if let Submit::SendButton = how {
            self.click("#send");
        }
        self.wait_for(
            "the message box to clear",
            "return document.getElementById('input').value === ''",
        );
    }

    /// What the page shows of every turn (see [`CONVERSATION_JS`]).
    fn conversation(&self) -> Value {
        self.eval(CONVERSATION_JS)
    }

    fn turn(&self, turn: u64) -> Value {
        let turns = self.conversation();
        let found = turns.as_array().unwrap().iter().find(|t| t["id"] == turn);
        found
            .unwrap_or_else(|| panic!("no turn {turn} in {turns:#}"))
            .clone()
    }

    /// Fails if a JavaScript dialog (`alert`) is open.
    fn assert_no_alert(&self) {
        let path = format!("/session/{}/alert/text", self.session);
        match self.request("GET", &path, None) {
            Err(e) if e.contains("no such alert") => {}
            other => panic!("a dialog is open: {other:?}"),
        }
    }

    /// The browser console's messages since the last call (chromedriver's log extension).
    fn console(&self) -> Vec<String> {
        let entries = self.command("POST", "/se/log", json!({"type": "browser"}));
        entries
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| format!("{} {}", entry["level"], entry["message"]))
            .collect()
    }

    /// Saves a PNG of the window as `target/browser-artifacts/<name>.png`.
    fn screenshot(&self, name: &str) {
        let encoded = self.command("GET", "/screenshot", Value::Null);
        let png = base64_decode(encoded.as_str().unwrap());
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.request("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Reads chromedriver's stdout until it names the port it listens on.
fn driver_port(driver: &mut Child) -> u16 {
    let stdout = driver.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep reading after the port is known, so chromedriver never blocks on a full pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = received
            .recv_timeout(left)
            .expect("chromedriver did not say which port it listens on");
        if let Some(rest) = line.split("started successfully on port ").nth(1) {
            return rest.trim_end_matches('.').trim().parse().unwrap();
        }
    }
}

/// Reads one HTTP response: the status code and the body (by `Content-Length`, or to EOF).
fn read_http_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "chromedriver closed the connection mid-answer");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let mut body = buffer.split_off(head_end);
    match length {
        Some(length) => {
            while body.len() < length {
                let n = stream.read(&mut chunk).unwrap();
                assert!(n > 0, "chromedriver closed the connection mid-body");
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(length);
        }
        None => {
            stream.read_to_end(&mut body).unwrap();
        }
    }
    (status, body)
}

/// Standard base64 (RFC 4648) to bytes; WebDriver screenshots come this way.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:?}"),
        }
    };
    let symbols: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(symbols.len() * 3 / 4);
    for group in symbols.chunks(4) {
        let mut bits = 0u32;
        for (i, &c) in group.iter().enumerate() {
            bits |= value(c) << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    out
}

/// A TCP proxy between the browser and the server: the test can drop every connection through
/// it, refuse new ones, and change the server it forwards to.
struct Proxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
}

struct ProxyShared {
    upstream: Mutex<SocketAddr>,
    /// Both sockets of every live pair, to shut them down on demand.
    open: Mutex<Vec<TcpStream>>,
    refusing: AtomicBool,
    stopped: AtomicBool,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyShared {
            upstream: Mutex::new(upstream),
            open: Mutex::new(Vec::new()),
            refusing: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if accepting.refusing.load(Ordering::SeqCst) {
                    continue; // dropped: the browser sees the connection close at once
                }
                let upstream = *accepting.upstream.lock().unwrap();
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                {
                    let mut open = accepting.open.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy { addr, shared }
    }

    /// Shuts down every connection through the proxy, as a network failure would.
    fn drop_all(&self) {
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// While `true`, new connections are closed as soon as they are accepted.
    fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Forwards new connections to `upstream`.
    fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.drop_all();
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` on a thread; when either side ends, shuts both down.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// The token [`FakeServer`] accepts.
const FAKE_TOKEN: &str = "let-me-in";
/// The session [`FakeServer`] hands out.
const FAKE_SESSION: &str = "0123456789abcdef0123456789abcdef";

/// A stand-in for Sparky that serves the same page and answers from a script. It wants
/// [`FAKE_TOKEN`]; the first connection that has it gets a session whose events 1 and 2 are
/// gone (`status gap`), turn 3 with a failed tool call, a streamed answer, an unknown status
/// code and one event sent twice, and is then taken over. Later connections are greeted and
/// left open.
struct FakeServer {
    addr: SocketAddr,
    /// The `data` of every `connect`, in order.
    connects: Arc<Mutex<Vec<Value>>>,
}

impl FakeServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&connects);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let recorded = Arc::clone(&recorded);
                std::thread::spawn(move || fake_connection(stream, &recorded));
            }
        });
        FakeServer { addr, connects }
    }
}

fn fake_connection(stream: TcpStream, connects: &Mutex<Vec<Value>>) {
    stream.set_read_timeout(Some(PAGE_WAIT)).unwrap();
    let mut start = [0u8; 8];
    let deadline = Instant::now() + PAGE_WAIT;
    while stream.peek(&mut start).unwrap_or(0) < start.len() {
        if Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if !start.starts_with(b"GET /ws") {
        return serve_page(stream);
    }
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    let Ok(tungstenite::Message::Text(first)) = ws.read() else {
        return;
    };
    let connect: Value = serde_json::from_str(first.as_str()).unwrap();
    let data = connect["data"].clone();
    let count = {
        let mut connects = connects.lock().unwrap();
        connects.push(data.clone());
        connects.len()
    };
    let mut send = |frame: Value| {
        let _ = ws.send(tungstenite::Message::text(frame.to_string()));
    };
    if data["token"] != FAKE_TOKEN {
        send(
            json!({"type": "error", "data": {"code": "unauthorized", "message": "a token is required"}}),
        );
        let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Policy,
            reason: "unauthorized".into(),
        }));
        while ws.read().is_ok() {}
        return;
    }
    let sid = FAKE_SESSION;
    send(json!({"type": "session_info", "session_id": sid,
        "data": {"session_id": sid, "is_new": count == 2, "reconnected": count > 2}}));
    send(json!({"type": "ready", "session_id": sid,
        "data": {"tools_loaded": 1, "tools": ["graph_get"], "model": "fake"}}));
    if count == 2 {
        let event = |seq: u64, kind: &str, data: Value| json!({"type": kind, "session_id": sid, "seq": seq, "data": data});
        let thought = event(
            4,
            "thought",
            json!({"turn_id": 3, "text": "Looking it up."}),
        );
        for frame in [
            json!({"type": "status", "session_id": sid,
                "data": {"code": "gap", "message": "events were dropped", "from": 1, "to": 2}}),
            event(
                3,
                "user_message",
                json!({"turn_id": 3, "text": "what is node 7?"}),
            ),
            thought.clone(),
            event(
                5,
                "tool_use",
                json!({"turn_id": 3, "call_id": "c1", "name": "graph_get", "args": {}}),
            ),
            event(
                6,
                "tool_result",
                json!({"turn_id": 3, "call_id": "c1", "name": "graph_get",
                "status": "error", "result": "no such node"}),
            ),
            event(7, "message_delta", json!({"turn_id": 3, "text": "Part"})),
            event(
                8,
                "status",
                json!({"turn_id": 3, "code": "from_the_future", "message": "?"}),
            ),
            thought,
            event(9, "message", json!({"turn_id": 3, "text": "Part two."})),
            json!({"type": "status", "session_id": sid,
                "data": {"code": "taken_over", "message": "another connection took over"}}),
        ] {
            send(frame);
        }
        let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Policy,
            reason: "taken over".into(),
        }));
    }
    // Stay until the browser goes away.
    let _ = ws.get_ref().set_read_timeout(None);
    while ws.read().is_ok() {}
}

/// Answers any plain HTTP request on the fake server with the chat page.
fn serve_page(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let page = include_str!("../src/page.html");
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{page}",
        page.len()
    );
}
