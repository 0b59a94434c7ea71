//! The binary as a self-hoster meets it: host names in `--addr`, flags that cannot work refused
//! at start, a second Ctrl-C that stops at once, and logs without colour codes off a terminal.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use support::{Client, WAIT};

/// The binary started with `args`, its stdout's first line (the address) and its stderr lines.
fn start(args: &[&str]) -> (Child, String, Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    (child, first.trim().to_owned(), received)
}

/// Waits for a stderr line containing `wanted`, and returns it.
fn line_with(lines: &Receiver<String>, wanted: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(wanted) => return line,
            Ok(_) => {}
            Err(_) => panic!("no line with {wanted:?}"),
        }
    }
}

fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, signal).unwrap();
}

/// Waits for the child to exit and returns how long it took from `since`.
fn exited_within(child: &mut Child, since: Instant) -> std::time::Duration {
    loop {
        if child.try_wait().unwrap().is_some() {
            return since.elapsed();
        }
        assert!(since.elapsed() < WAIT, "the server did not stop");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn addr_takes_a_host_name() {
    let (mut child, line, _) = start(&["--addr", "localhost:0", "--in-memory"]);
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn flags_that_cannot_work_are_refused_with_the_flag_named() {
    for (flag, value) in [
        ("--max-steps", "0"),
        ("--max-connections", "0"),
        ("--max-running-turns", "0"),
        ("--event-log-capacity", "0"),
        ("--ping-interval", "0s"),
        ("--idle-timeout", "0"),
        ("--handshake-timeout", "soon"),
        ("--addr", "nowhere"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_sparky"))
            .args(["--in-memory", flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag} {value} was accepted");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}

#[test]
fn a_second_interrupt_stops_at_once_and_the_log_has_no_colour_codes() {
    let (mut child, line, lines) = start(&[
        "--addr",
        "127.0.0.1:0",
        "--in-memory",
        "--shutdown-grace",
        "60s",
    ]);
    let addr = line
        .trim_start_matches("listening on http://")
        .parse()
        .unwrap();
    let mut client = Client::connect(addr, json!({}));
    client.say("/wait 60000");
    client.expect("tool_use");
    signal(&child, Signal::SIGINT);
    let first = line_with(&lines, "shutting down");
    assert!(first.contains("Ctrl-C again"), "{first}");
    assert!(!first.contains('\u{1b}'), "escape codes in {first:?}");
    let second = Instant::now();
    signal(&child, Signal::SIGINT);
    let took = exited_within(&mut child, second);
    // The grace period was 60 s: stopping at all within the wait bound is the point.
    assert!(took < WAIT, "{took:?}");
    line_with(&lines, "stopping now");
}

/// The `--flag` names at the start of lines of `text` that match `prefix`.
fn flags(text: &str, prefix: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.trim_start().strip_prefix(prefix))
        .filter_map(|rest| {
            let rest = rest.trim_start_matches("-h, ");
            let name: String = rest
                .strip_prefix("--")?
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            Some(format!("--{name}"))
        })
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect()
}

#[test]
fn help_and_the_readme_flag_table_list_the_same_flags() {
    let help = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .arg("--help")
        .output()
        .unwrap();
    let help = flags(&String::from_utf8_lossy(&help.stdout), "");
    let readme = include_str!("../README.md");
    let table = flags(readme, "| `");
    assert!(help.len() > 30, "{help:?}");
    let only_help: Vec<_> = help.difference(&table).collect();
    let only_readme: Vec<_> = table.difference(&help).collect();
    assert!(
        only_help.is_empty() && only_readme.is_empty(),
        "in --help only: {only_help:?}; in the README only: {only_readme:?}"
    );
}

/// In-memory flags for an OpenAI-compatible model `m` at `url`, then `more`.
fn openai_args<'a>(url: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--in-memory",
        "--model",
        "openai",
        "--model-name",
        "m",
        "--model-url",
        url,
    ];
    args.extend_from_slice(more);
    args
}

/// A model server that answers every request with `GET /models`'s list of `models`.
fn models_server(models: &'static [&'static str]) -> std::net::SocketAddr {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n")
                && std::io::Read::read(&mut stream, &mut byte).unwrap_or(0) == 1
            {
                head.push(byte[0]);
            }
            let data: Vec<_> = models
                .iter()
                .map(|id| json!({"id": id, "object": "model"}))
                .collect();
            let body = json!({"object": "list", "data": data}).to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn an_unreachable_or_wrong_model_server_is_reported_at_start_and_in_healthz() {
    let url = "http://127.0.0.1:1/v1";
    let (mut child, line, lines) = start(&openai_args(url, &["--addr", "127.0.0.1:0"]));
    let warning = line_with(&lines, "cannot reach the model server");
    assert!(warning.contains(url), "{warning}");
    let addr = line
        .trim_start_matches("listening on http://")
        .parse()
        .unwrap();
    let (status, health) = support::http_json(addr, "GET", "/healthz", None, None);
    assert_eq!(
        (status, health["status"].as_str()),
        (200, Some("ok")),
        "{health}"
    );
    assert_eq!(health["model"]["reachable"], false, "{health}");
    assert!(
        health["model"]["last_error"]
            .as_str()
            .unwrap()
            .contains(url)
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let server = models_server(&["other", "another"]);
    let url = format!("http://{server}/v1");
    let (mut child, _, lines) = start(&openai_args(&url, &["--addr", "127.0.0.1:0"]));
    let warning = line_with(&lines, "does not serve");
    assert!(
        warning.contains("\"m\"") && warning.contains("other, another"),
        "{warning}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let server = models_server(&["m"]);
    let url = format!("http://{server}/v1");
    let (mut child, _, lines) = start(&openai_args(&url, &["--addr", "127.0.0.1:0"]));
    line_with(&lines, "serves m");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn check_passes_a_good_setup_and_names_what_is_broken() {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_sparky"))
            .arg("check")
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let dir = support::temp_dir("check");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let (ok, out) = run(&["--data-dir", data]);
    assert!(ok, "{out}");
    for check in ["data", "tokens", "files", "model", "mcp"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("ok") && l.contains(check)),
            "{check}: {out}"
        );
    }
    assert!(
        !std::path::Path::new(data).exists(),
        "check changed nothing"
    );

    // A broken model URL.
    let (ok, out) = run(&openai_args("http://127.0.0.1:1/v1", &[]));
    assert!(!ok);
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL model") && l.contains("127.0.0.1:1")),
        "{out}"
    );

    // A bad MCP config, and a server that cannot start.
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mcp.json");
    std::fs::write(&config, "{ not json").unwrap();
    let (ok, out) = run(&["--in-memory", "--mcp-config", config.to_str().unwrap()]);
    assert!(
        !ok && out.contains("FAIL mcp") && out.contains("not an MCP config"),
        "{out}"
    );
    std::fs::write(
        &config,
        r#"{"mcpServers": {"gone": {"command": "/nonexistent/server"}}}"#,
    )
    .unwrap();
    let (ok, out) = run(&["--in-memory", "--mcp-config", config.to_str().unwrap()]);
    assert!(
        !ok && out.contains("FAIL mcp") && out.contains("gone"),
        "{out}"
    );

    // A data directory another server holds: a note, and the rest is checked beside it.
    let (mut child, _, _) = start(&["--addr", "127.0.0.1:0", "--data-dir", data]);
    let (ok, out) = run(&["--data-dir", data]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("note data") && l.contains("in use")),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    for check in ["tokens", "files", "model", "mcp"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("ok") && l.contains(check)),
            "{check}: {out}"
        );
    }
    assert!(ok, "only a note: {out}");
    // Beside the running server, a real failure still fails.
    let (ok, out) = run(&[
        "--data-dir",
        data,
        "--model",
        "openai",
        "--model-name",
        "m",
        "--model-url",
        "http://127.0.0.1:1/v1",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("note data") && out.contains("FAIL model"),
        "{out}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `sparky ARGS`: whether it succeeded, its stdout and its stderr.
fn sparky(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_is_a_subcommand_with_its_own_help() {
    let (ok, top, _) = sparky(&["--help"]);
    assert!(ok);
    for command in ["check", "backup", "migrate-store"] {
        let line = top
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("{command} not listed: {top}"));
        assert!(
            line.split_whitespace().count() > 2,
            "no description: {line}"
        );
    }
    for args in [&["help", "check"][..], &["check", "--help"]] {
        let (ok, help, err) = sparky(args);
        assert!(ok, "{args:?}: {err}");
        assert!(help.contains("Usage: sparky check"), "{args:?}: {help}");
        assert!(!help.contains("migrate-store"), "{args:?}: {help}");
        // The server's flags, and the binary's own.
        for flag in [
            "--data-dir",
            "--model-url",
            "--auth-token-file",
            "--log-level",
        ] {
            assert!(help.contains(flag), "{args:?}: {flag} missing: {help}");
        }
    }
    // The flags still follow `check`, as before.
    let (ok, out, err) = sparky(&["check", "--in-memory", "--log-level", "warn"]);
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("ok   data   in memory"), "{out}");
}

#[test]
fn a_tokens_file_line_with_no_usable_token_is_refused_with_its_line_named() {
    let dir = support::temp_dir("token-lines");
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    let file = tokens.to_str().unwrap();
    for (bad, problem) in [
        (":", "empty"),
        ("bob:", "no token after its colon"),
        ("short", "shorter than 8 characters"),
        ("carol:short", "shorter than 8 characters"),
    ] {
        std::fs::write(&tokens, format!("# tokens\n\nalice:alpha-token\n{bad}\n")).unwrap();
        let wanted = format!("--auth-token-file {file} line 4: ");
        // Accepted, the server would run: bound the wait, and stop it.
        let mut child = Command::new(env!("CARGO_BIN_EXE_sparky"))
            .args([
                "--in-memory",
                "--addr",
                "127.0.0.1:0",
                "--auth-token-file",
                file,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() && started.elapsed() < WAIT {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{bad:?} was accepted: {err}");
        assert!(
            err.contains(&wanted) && err.contains(problem),
            "{bad:?}: {err}"
        );
        let (ok, out, _) = sparky(&["check", "--in-memory", "--auth-token-file", file]);
        assert!(!ok, "{bad:?} passed the check: {out}");
        assert!(
            out.lines().any(|l| l.starts_with("FAIL tokens")
                && l.contains(&wanted)
                && l.contains(problem)),
            "{bad:?}: {out}"
        );
    }
    // Named, bare, and holding a colon behind a leading one: three tokens.
    std::fs::write(&tokens, "alice:alpha-token\nbare-token-1\n:colon:token-1\n").unwrap();
    let (ok, out, err) = sparky(&["check", "--in-memory", "--auth-token-file", file]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("ok   tokens 3 tokens"), "{out}");
}

/// How `sparky` with `args` and `SPARKY_AUTH_TOKENS` set to `variable` (or unset) ends: its
/// exit code (`None` when it was still running after [`WAIT`], and was killed) and stderr.
fn start_with_tokens(args: &[&str], variable: Option<&str>) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sparky"));
    command
        .args(["--in-memory", "--addr", "127.0.0.1:0"])
        .args(args)
        .env_remove("SPARKY_AUTH_TOKENS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(value) = variable {
        command.env("SPARKY_AUTH_TOKENS", value);
    }
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    // Accepted, the server would run: bound the wait, and stop it.
    while child.try_wait().unwrap().is_none() && started.elapsed() < WAIT {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let code = if running { None } else { output.status.code() };
    (code, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn an_auth_token_or_variable_entry_with_no_usable_token_is_refused_with_the_entry_named() {
    let good = "good-token-1";
    // (flags, variable, what the message names, the problem)
    let cases: [(&[&str], Option<&str>, &str, &str); 9] = [
        (
            &["--auth-token", ""],
            None,
            "--auth-token (entry 1): ",
            "empty",
        ),
        (
            &["--auth-token", good, "--auth-token", ":"],
            None,
            "--auth-token (entry 2): ",
            "empty",
        ),
        (
            &["--auth-token", "bob:"],
            None,
            "--auth-token (entry 1): ",
            "ends with a colon",
        ),
        (
            &["--auth-token", "abc1234"],
            None,
            "--auth-token (entry 1): ",
            "shorter than 8 characters",
        ),
        (&[], Some(""), "SPARKY_AUTH_TOKENS (entry 1): ", "empty"),
        (&[], Some(" : "), "SPARKY_AUTH_TOKENS (entry 1): ", "empty"),
        (
            &[],
            Some("good-token-1,,good-token-2"),
            "SPARKY_AUTH_TOKENS (entry 2): ",
            "empty",
        ),
        (
            &["--auth-token", good],
            Some("good-token-2,carol:"),
            "SPARKY_AUTH_TOKENS (entry 2): ",
            "ends with a colon",
        ),
        (
            &[],
            Some("good-token-2, abc1234"),
            "SPARKY_AUTH_TOKENS (entry 2): ",
            "shorter than 8 characters",
        ),
    ];
    for (flags, variable, named, problem) in cases {
        let (code, err) = start_with_tokens(flags, variable);
        assert_eq!(code, Some(1), "{flags:?} {variable:?} was accepted: {err}");
        assert!(
            err.contains(named) && err.contains(problem),
            "{flags:?} {variable:?}: {err}"
        );
        for secret in ["bob:", "carol", "abc1234"] {
            assert!(!err.contains(secret), "the message shows a token: {err}");
        }
        // `check` says the same on its tokens line.
        let mut command = Command::new(env!("CARGO_BIN_EXE_sparky"));
        command
            .args(["check", "--in-memory"])
            .args(flags)
            .env_remove("SPARKY_AUTH_TOKENS");
        if let Some(value) = variable {
            command.env("SPARKY_AUTH_TOKENS", value);
        }
        let output = command.output().unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        assert!(
            !output.status.success(),
            "{flags:?} {variable:?} passed: {out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with("FAIL tokens") && l.contains(named) && l.contains(problem)),
            "{flags:?} {variable:?}: {out}"
        );
    }
    // Good tokens from both: three of them, and the server starts.
    let output = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(["check", "--in-memory", "--auth-token", good])
        .env("SPARKY_AUTH_TOKENS", "good-token-2, good:token-3")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("ok   tokens 3 tokens"), "{out}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(["--in-memory", "--addr", "127.0.0.1:0", "--auth-token", good])
        .env("SPARKY_AUTH_TOKENS", "good-token-2")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = support::first_line(&mut child, "the listening line");
    assert!(line.starts_with("listening on "), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A fake model server: each request's method and path go to `answer`, whose JSON body is
/// sent with 200 (`None`: 404). Bodies of requests are read whole before answering.
fn fake_server(
    answer: impl Fn(&str, &str) -> Option<serde_json::Value> + Send + 'static,
) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            stream.set_read_timeout(Some(WAIT)).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let mut words = line.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let mut length = 0;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let (status, body) = match answer(method, path) {
                Some(value) => ("200 OK", value.to_string()),
                None => ("404 Not Found", "{}".to_owned()),
            };
            let _ = write!(
                &stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// A fake of llama.cpp's `llama-server`: with one model (`router` false) it answers to any
/// name, and says so in `/props` and `owned_by`; as a router it lists its models with a
/// `status` and its `/props` has `role: router`. `props` false: `/props` wants a key (401 in
/// the real one; here 404), so only the list tells. It embeds too.
fn llama_server(router: bool, props: bool) -> std::net::SocketAddr {
    fake_server(move |method, path| match (method, path) {
        ("GET", "/props") if props && router => Some(json!({
            "role": "router", "model_path": "none",
            "default_generation_settings": {"params": {}, "n_ctx": 0}})),
        ("GET", "/props") if props => Some(json!({
            "model_path": "/models/smollm2-135m-instruct.gguf", "model_alias": "smollm2",
            "default_generation_settings": {"n_ctx": 2048}, "build_info": "b1-fake"})),
        ("GET", "/v1/models") if router => Some(json!({"object": "list", "data": [
            {"id": "qwen", "object": "model", "owned_by": "llamacpp",
             "status": {"value": "unloaded"}}]})),
        ("GET", "/v1/models") => Some(json!({"object": "list",
            "models": [{"name": "smollm2", "model": "smollm2"}],
            "data": [{"id": "smollm2", "object": "model", "owned_by": "llamacpp",
                      "meta": {"n_ctx_train": 8192}}]})),
        ("POST", "/v1/embeddings") => Some(json!({"object": "list", "model": "smollm2",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.5, 0.5, 0.5]}]})),
        _ => None,
    })
}

#[test]
fn llama_cpp_answers_to_any_model_name_so_neither_check_nor_the_log_complains() {
    for props in [true, false] {
        let url = format!("http://{}/v1", llama_server(false, props));
        let args = openai_args(&url, &[]);
        let (ok, out, err) = sparky(&[&["check"], &args[..]].concat());
        assert!(ok, "props {props}: {out}{err}");
        assert!(out.contains("ok   model  m:"), "props {props}: {out}");
        assert!(!out.contains("does not serve"), "props {props}: {out}");

        let (mut child, _, lines) = start(&openai_args(&url, &["--addr", "127.0.0.1:0"]));
        // The probe's verdict is the first line about the model server; no warning before it.
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).expect("no line from the probe");
            assert!(!line.contains("does not serve"), "props {props}: {line}");
            assert!(!line.contains("turns will fail"), "props {props}: {line}");
            if line.contains("the model server serves m") {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // llama.cpp's router loads the model a request names: a name it lacks is still reported.
    let url = format!("http://{}/v1", llama_server(true, true));
    let args = openai_args(&url, &[]);
    let (ok, out, _) = sparky(&[&["check"], &args[..]].concat());
    assert!(!ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL model") && l.contains("does not serve \"m\"")),
        "{out}"
    );
}

#[test]
fn check_embeds_one_word_with_the_embedding_server() {
    let (ok, out, err) = sparky(&["check", "--in-memory"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("ok   embed  no --embedding-model"), "{out}");

    let url = format!("http://{}/v1", llama_server(false, true));
    let (ok, out, err) = sparky(&[
        "check",
        "--in-memory",
        "--embedding-model",
        "nomic-embed-text",
        "--embedding-url",
        &url,
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok   embed  nomic-embed-text")
                && l.contains(&url)
                && l.contains("4 dimensions")),
        "{out}"
    );

    // Down, or without an embeddings endpoint: a failure that names the embedding server.
    for url in [
        "http://127.0.0.1:1/v1".to_owned(),
        format!("http://{}/v1", fake_server(|_, _| None)),
    ] {
        let (ok, out, _) = sparky(&[
            "check",
            "--in-memory",
            "--embedding-model",
            "nomic-embed-text",
            "--embedding-url",
            &url,
        ]);
        assert!(!ok, "{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("FAIL embed") && l.contains(&url)),
            "{out}"
        );
    }
}
