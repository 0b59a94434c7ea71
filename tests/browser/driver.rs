//! WebDriver over `std::net::TcpStream` and `serde_json` (no extra dependency): starting
//! headless Chromium under chromedriver, running scripts in the page, waiting for conditions
//! with a deadline, typing, clicking and screenshots.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support;

/// How long the page may take to show something before the test fails.
pub const PAGE_WAIT: Duration = Duration::from_secs(15);
/// How often a wait looks at the page again.
pub const POLL: Duration = Duration::from_millis(50);
/// The browser window, and so the screenshots.
pub const WINDOW: (u64, u64) = (1100, 720);

/// The page's connection indicator says it is connected.
pub const CONNECTED: &str = "return document.getElementById('conn').dataset.state === 'connected'";

/// The page shows the form that asks for a token.
pub const TOKEN_FORM: &str = "return !document.getElementById('token-box').hidden";

/// The open conversation's id, from the URL.
pub const OPEN_ID: &str = "return location.hash.slice(1)";

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
  answer: turn.querySelector('.bubble.answer').textContent.trim(),
  outcome: turn.dataset.outcome || 'open',
  marks: Array.from(turn.querySelectorAll('.mark')).map((mark) => mark.textContent),
  usage: turn.querySelector('.usage') ? turn.querySelector('.usage').textContent : null,
}));
"#;

/// How [`Browser::say`] sends what it typed.
pub enum Submit {
    /// Presses Enter in the text box.
    EnterKey,
    /// Clicks the Send button.
    SendButton,
}

/// Where Chromium and chromedriver are.
pub struct BrowserTools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl BrowserTools {
    /// Finds both on `PATH`. Fails the test when either is missing, unless
    /// `SPARKY_SKIP_BROWSER=1` asks to skip it (then prints why and returns `None`).
    pub fn find() -> Option<Self> {
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
                 Run scripts/test (it installs them), or `apt-get install -y chromium chromium-driver`; \
                 set SPARKY_SKIP_BROWSER=1 to skip this test"
            ),
        }
    }
}

/// Writes a line to stderr past the test harness's capture, so that it shows even when the
/// test passes.
pub fn notice(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Where screenshots and the browser's log go.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("browser-artifacts")
}

/// Headless Chromium under chromedriver, with one WebDriver session; both end when dropped.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    profile: PathBuf,
}

impl Browser {
    pub fn start(tools: &BrowserTools) -> Self {
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
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
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
    pub fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let body = (method == "POST").then_some(body);
        let path = format!("/session/{}{path}", self.session);
        self.request(method, &path, body.as_ref())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({"url": url}));
    }

    pub fn refresh(&self) {
        self.command("POST", "/refresh", json!({}));
    }

    /// Sizes the window so that the page itself (the viewport) is `width` by `height`.
    pub fn set_window(&self, width: u64, height: u64) {
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
    pub fn eval(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Polls `script` until it returns something truthy, and returns that; fails after
    /// [`PAGE_WAIT`] with a screenshot and the page's text.
    pub fn wait_for(&self, what: &str, script: &str) -> Value {
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

    pub fn wait_for_turn(&self, turn: u64, outcome: &str) {
        self.wait_for(
            &format!("turn {turn} to end with {outcome}"),
            &format!(
                "const turn = document.querySelector('.turn[data-turn-id=\"{turn}\"]'); \
                 return turn !== null && turn.dataset.outcome === '{outcome}'"
            ),
        );
    }

    pub fn wait_for_tool_running(&self, turn: u64) {
        self.wait_for(
            &format!("a running tool in turn {turn}"),
            &format!("return document.querySelector('.turn[data-turn-id=\"{turn}\"] .tool.running') !== null"),
        );
    }

    pub fn element(&self, css: &str) -> String {
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

    /// Clicks the element `css`. A list the page redraws (the conversations) may replace the
    /// element between finding and clicking it; then it is found again, until [`PAGE_WAIT`].
    pub fn click(&self, css: &str) {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let element = self.element(css);
            let path = format!("/session/{}/element/{element}/click", self.session);
            match self.request("POST", &path, Some(&json!({}))) {
                Ok(_) => return,
                Err(e) if e.contains("stale element") && Instant::now() < deadline => {
                    std::thread::sleep(POLL);
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Types `text` into the element `css`, as keystrokes (`\u{E007}` is Enter).
    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css);
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            json!({"text": text}),
        );
    }

    /// Types `text` into the message box, as keystrokes, and sends it.
    pub fn say(&self, text: &str, how: Submit) {
        self.wait_for(
            "the Send button to be enabled",
            "const send = document.getElementById('send'); \
             return !send.disabled && send.dataset.mode === 'send'",
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
    pub fn conversation(&self) -> Value {
        self.eval(CONVERSATION_JS)
    }

    pub fn turn(&self, turn: u64) -> Value {
        let turns = self.conversation();
        let found = turns.as_array().unwrap().iter().find(|t| t["id"] == turn);
        found
            .unwrap_or_else(|| panic!("no turn {turn} in {turns:#}"))
            .clone()
    }

    /// Fails if a JavaScript dialog (`alert`) is open.
    pub fn assert_no_alert(&self) {
        let path = format!("/session/{}/alert/text", self.session);
        match self.request("GET", &path, None) {
            Err(e) if e.contains("no such alert") => {}
            other => panic!("a dialog is open: {other:?}"),
        }
    }

    /// The browser console's messages since the last call (chromedriver's log extension).
    pub fn console(&self) -> Vec<String> {
        let entries = self.command("POST", "/se/log", json!({"type": "browser"}));
        entries
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| format!("{} {}", entry["level"], entry["message"]))
            .collect()
    }

    /// Saves a PNG of the window as `target/browser-artifacts/<name>.png`.
    pub fn screenshot(&self, name: &str) {
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
pub fn driver_port(driver: &mut Child) -> u16 {
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
pub fn read_http_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
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
pub fn base64_decode(text: &str) -> Vec<u8> {
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

impl Browser {
    /// Runs `script` (an async function body that calls `arguments[0]` with its result).
    pub fn eval_async(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/async",
            json!({"script": script, "args": []}),
        )
    }

    /// A Chrome DevTools Protocol command (chromedriver's extension).
    pub fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.command(
            "POST",
            "/goog/cdp/execute",
            json!({"cmd": cmd, "params": params}),
        )
    }

    /// Puts `text` (which may hold new lines) into the message box and presses Send.
    pub fn say_text(&self, text: &str) {
        self.wait_for(
            "the Send button to be enabled",
            "const send = document.getElementById('send'); \
             return !send.disabled && send.dataset.mode === 'send'",
        );
        self.eval(&format!(
            "document.getElementById('input').value = {};",
            json!(text)
        ));
        self.click("#send");
        self.wait_for(
            "the message box to clear",
            "return document.getElementById('input').value === ''",
        );
    }
}

impl Browser {
    /// The handle of the window (tab) that commands go to.
    pub fn window_handle(&self) -> String {
        let handle = self.command("GET", "/window", Value::Null);
        handle.as_str().unwrap().to_owned()
    }

    /// Opens a new tab and returns its handle; commands still go to the current one.
    pub fn new_tab(&self) -> String {
        let created = self.command("POST", "/window/new", json!({"type": "tab"}));
        created["handle"].as_str().unwrap().to_owned()
    }

    /// Sends later commands to the tab `handle`.
    pub fn switch_to(&self, handle: &str) {
        self.command("POST", "/window", json!({"handle": handle}));
    }

    /// Closes the current tab; switch to another one before the next command.
    pub fn close_tab(&self) {
        self.command("DELETE", "/window", Value::Null);
    }
}

impl Browser {
    /// The value of the cookie `name` of the current page's site, `HttpOnly` ones included
    /// (WebDriver sees them; the page's scripts do not).
    pub fn cookie(&self, name: &str) -> Option<String> {
        let path = format!("/session/{}/cookie/{name}", self.session);
        match self.request("GET", &path, None) {
            Ok(cookie) => cookie["value"].as_str().map(str::to_owned),
            Err(e) if e.contains("no such cookie") => None,
            Err(e) => panic!("{e}"),
        }
    }
}
