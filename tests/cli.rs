//! The `sparky` binary: flags, the `listening on` line, and exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prints_the_real_address_when_bound_to_port_zero() {
    let child = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "--session-timeout",
            "90s",
            "--data-dir",
        ])
        .arg(std::env::temp_dir().join(format!("sparky-cli-{}", std::process::id())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let stdout = child.0.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let line = received
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert_ne!(addr.port(), 0);
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/ws")).unwrap();
    ws.send(tungstenite::Message::text(r#"{"type":"connect"}"#))
        .unwrap();
    let first = ws.read().unwrap();
    assert!(first.to_text().unwrap().contains("session_info"));
}

#[test]
fn a_bad_flag_fails_with_a_message() {
    for args in [
        &["--session-timeout", "soon"][..],
        &["--addr", "nowhere"],
        &["--no-such-flag"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_sparky"))
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
}
