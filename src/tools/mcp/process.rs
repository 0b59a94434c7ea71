//! One MCP server's process: started in a process group of its own, with a filtered
//! environment and piped stdio, and stopped the way the MCP stdio transport describes: its
//! input closes, then the whole group gets SIGTERM, then SIGKILL. The only code in Sparky
//! that spawns or signals processes.
//!
//! A group of its own matters because servers are often started through a launcher (`npx`,
//! `uvx`, `sh -c`) whose children do the work: signalling the direct child alone would leave
//! them running after Sparky has gone. It also keeps a Ctrl-C at Sparky's terminal from
//! reaching the servers before Sparky has stopped them in order.
//!
//! Depends on: `tools::mcp::config`, `tools::mcp::error`.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

use super::config::ServerCommand;
use super::error::McpError;

/// How long a server has to exit by itself once its input has closed.
pub(super) const STDIN_GRACE: Duration = Duration::from_secs(1);

/// How long a server's process group has to exit after SIGTERM, before SIGKILL.
pub(super) const TERM_GRACE: Duration = Duration::from_secs(2);

/// How often stopping looks at whether the processes have gone. Stopping is rare and bounded
/// by the two graces above, so a short poll is simpler than a pidfd per process.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// The only variables of Sparky's environment a server inherits, besides its config's `env`
/// (the list the official MCP SDKs use): secrets such as a model API key stay with Sparky.
const INHERITED_ENV_VARS: [&str; 6] = ["HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"];

/// Longest stderr line logged in one piece.
const MAX_LOG_LINE_BYTES: u64 = 4096;

/// A running server process and its process group. Dropping it stops the group (see
/// [`stop`](Self::stop)).
#[derive(Debug)]
pub(super) struct ServerProcess {
    /// The server's name in the config, for the log.
    server: String,
    /// The direct child, until it has been waited for.
    child: Option<Child>,
    /// The process group the child leads (its pid); every process it starts joins it unless
    /// it leaves on purpose.
    group: Option<Pid>,
}

impl ServerProcess {
    /// Spawns `command` as the leader of a new process group, with piped stdio; a named
    /// `mcp-<name>-stderr` thread logs its stderr. Returns the process and the server's input
    /// and output.
    ///
    /// # Errors
    ///
    /// [`McpError::Start`] when the command cannot be run or a thread cannot be started.
    pub(super) fn spawn(
        server: &str,
        command: &ServerCommand,
    ) -> Result<(Self, ChildStdin, ChildStdout), McpError> {
        let inherited = INHERITED_ENV_VARS.iter().filter_map(|key| {
            // A value starting with "()" is an exported shell function, not a setting.
            let value = std::env::var_os(key)?;
            (!value.to_string_lossy().starts_with("()")).then_some((*key, value))
        });
        let mut process = Command::new(&command.command);
        process
            .args(&command.args)
            .env_clear()
            .envs(inherited)
            .envs(&command.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(cwd) = &command.cwd {
            process.current_dir(cwd);
        }
        let mut child = process.spawn().map_err(|e| McpError::Start {
            server: server.to_owned(),
            detail: format!("cannot run {:?}: {e}", command.command),
        })?;
        let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        // Built before anything else can fail, so that every failure below stops the group.
        // Never 0 (the caller's own group) or 1 (init), whatever the id said.
        let group = i32::try_from(child.id())
            .ok()
            .filter(|&pid| pid > 1)
            .map(Pid::from_raw);
        let process = ServerProcess {
            server: server.to_owned(),
            child: Some(child),
            group,
        };
        let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
            return Err(McpError::Start {
                server: server.to_owned(),
                detail: "its stdio was not piped".into(),
            });
        };
        log::info!(
            "mcp {server}: started {:?} (pid {}, in a process group of its own)",
            command.command,
            process.group.map_or(0, Pid::as_raw)
        );
        let name = server.to_owned();
        // Detached: it ends when the process (and every process it started) closes stderr,
        // which stopping the group makes sure of.
        thread::Builder::new()
            .name(format!("mcp-{server}-stderr"))
            .spawn(move || log_stderr(&name, stderr))
            .map_err(|e| McpError::Start {
                server: server.to_owned(),
                detail: format!("no thread for its stderr: {e}"),
            })?;
        Ok((process, stdin, stdout))
    }

    /// Starts a named `mcp-<name>-exit` thread that calls `on_exit` with a few words on how the
    /// server's own process ended, once it has (without reaping it, which stays with
    /// [`stop`](Self::stop)). A server started through a launcher may exit while processes it
    /// started still hold its output open; this is how its client learns that it has gone.
    /// The thread is detached and ends when the process does, or when stop reaps it first.
    ///
    /// # Errors
    ///
    /// [`McpError::Start`] when the thread cannot be started.
    pub(super) fn watch_exit(
        &self,
        on_exit: impl FnOnce(String) + Send + 'static,
    ) -> Result<(), McpError> {
        let Some(pid) = self.group else {
            return Ok(());
        };
        thread::Builder::new()
            .name(format!("mcp-{}-exit", self.server))
            .spawn(move || {
                if let Some(how) = wait_for_exit(pid) {
                    on_exit(how);
                }
            })
            .map(drop)
            .map_err(|e| McpError::Start {
                server: self.server.clone(),
                detail: format!("no thread to watch it: {e}"),
            })
    }

    /// Stops the server and everything in its process group, as the MCP stdio transport asks:
    /// the caller has closed the server's input; the server gets [`STDIN_GRACE`] to exit by
    /// itself; then the group gets SIGTERM, and [`TERM_GRACE`] later SIGKILL. Returns once the
    /// direct child has been waited for, at most about both graces later. Calling it again
    /// does nothing.
    pub(super) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let server = &self.server;
        let mut status = wait_until(&mut child, Instant::now() + STDIN_GRACE);
        let Some(group) = self.group.take() else {
            // No group to signal (it could not be named): the direct child is all we can stop.
            if status.is_none() {
                let _ = child.kill();
                status = child.wait().ok();
            }
            log_exit(server, status);
            return;
        };
        if status.is_none() {
            log::info!("mcp {server}: still running after its input closed; sending SIGTERM");
        }
        // Whatever the leader did, the processes it started may still be running.
        let signalled = match killpg(group, Signal::SIGTERM) {
            Ok(()) => true,
            Err(Errno::ESRCH) => false,
            Err(e) => {
                log::warn!("mcp {server}: cannot signal its process group: {e}");
                true
            }
        };
        if signalled {
            let deadline = Instant::now() + TERM_GRACE;
            status = status.or_else(|| wait_until(&mut child, deadline));
            // The leader has been waited for (or the deadline passed); the group may outlive it.
            let empty = wait_until_empty(group, deadline);
            if !empty || status.is_none() {
                log::warn!(
                    "mcp {server}: its processes did not exit {TERM_GRACE:?} after SIGTERM; \
                     sending SIGKILL"
                );
                match killpg(group, Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => log::warn!("mcp {server}: cannot kill its process group: {e}"),
                }
            }
        }
        if status.is_none() {
            // After SIGKILL the leader ends at once; waiting here reaps it.
            status = child.wait().ok();
        }
        log_exit(server, status);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Blocks until our child `pid` has exited, leaving it to be reaped, and says how it ended;
/// `None` when it was reaped meanwhile (it is no longer our child).
fn wait_for_exit(pid: Pid) -> Option<String> {
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(WaitStatus::Exited(_, code)) => return Some(format!("exit status {code}")),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Some(format!("signal {}", signal as i32));
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
            // nix reports a signal it has no name for (a real-time one) as EINVAL: the process
            // has ended all the same.
            Ok(_) | Err(Errno::EINVAL) => return Some("it ended".to_owned()),
            Err(_) => return None,
        }
    }
}

/// Waits until `child` exits (and reaps it) or `deadline` passes.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(EXIT_POLL.min(deadline - now));
    }
}

/// Waits until no process is left in `group` or `deadline` passes; true when it emptied.
///
/// A group's id stays taken while any process is in the group, so signalling it reaches only
/// the server's processes; once it is empty, stopping signals it no more.
fn wait_until_empty(group: Pid, deadline: Instant) -> bool {
    loop {
        // Signal 0 only asks whether anything in the group is left.
        if killpg(group, None) == Err(Errno::ESRCH) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(EXIT_POLL.min(deadline - now));
    }
}

fn log_exit(server: &str, status: Option<ExitStatus>) {
    match status {
        Some(status) => log::debug!("mcp {server}: exited ({status})"),
        None => log::warn!("mcp {server}: could not wait for it"),
    }
}

/// Logs a server's stderr, line by line, until it closes.
fn log_stderr(server: &str, stderr: impl Read) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LOG_LINE_BYTES)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if !text.is_empty() {
                    log::info!("mcp {server}: stderr: {text}");
                }
            }
        }
    }
}
