//! The terminal client (`examples/client.rs`) against a real server: an answer shown once,
//! `/list`, and on a restart of the client the conversation's recent history.

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Instant;

use support::{TestServer, WAIT, temp_dir};

/// The example binary, built by `cargo test` beside this test's own binary.
fn client_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let target = deps.parent().unwrap().parent().unwrap();
    let binary = target.join("examples").join("client");
    assert!(binary.exists(), "{} is not built", binary.display());
    binary
}

/// The client, with its output arriving on a channel.
fn start(server: &TestServer, state: &std::path::Path) -> (Child, Receiver<String>) {
    let mut child = Command::new(client_binary())
        .args(["--url", &format!("ws://{}/ws", server.addr)])
        .arg("--state")
        .arg(state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (chunks, received) = channel();
    for mut pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let chunks = chunks.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0
                    || chunks
                        .send(String::from_utf8_lossy(&buffer[..n]).into_owned())
                        .is_err()
                {
                    return;
                }
            }
        });
    }
    (child, received)
}

/// Reads output until it contains `wanted`; returns everything read so far.
fn until(output: &Receiver<String>, seen: &mut String, wanted: &str) {
    let deadline = Instant::now() + WAIT;
    while !seen.contains(wanted) {
        let left = deadline.saturating_duration_since(Instant::now());
        match output.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&chunk),
            Err(_) => panic!("no {wanted:?} in {seen:?}"),
        }
    }
}

fn type_line(child: &mut Child, line: &str) {
    let stdin = child.stdin.as_mut().unwrap();
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
}

#[test]
fn the_client_chats_lists_and_shows_history_on_resume() {
    let server = TestServer::start();
    let dir = temp_dir("client");
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");

    let (mut child, output) = start(&server, &state);
    let mut seen = String::new();
    // The `you>` prompt is shown only on a terminal; the tools line ends the greeting.
    until(&output, &mut seen, "model offline");
    type_line(&mut child, "hello there");
    until(&output, &mut seen, "You said: hello there");
    type_line(&mut child, "/list");
    until(&output, &mut seen, "1.");
    type_line(&mut child, "/quit");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the client did not quit");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(seen.matches("You said: hello there").count(), 1, "{seen}");

    // A new client on the same state resumes, showing what was said before.
    let (mut child, output) = start(&server, &state);
    let mut seen = String::new();
    until(&output, &mut seen, "You said: hello there");
    assert!(seen.contains("recent history"), "{seen}");
    type_line(&mut child, "/quit");
    let _ = child.wait();
}
