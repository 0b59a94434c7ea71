//! The stdio transport: newline-delimited JSON-RPC over a byte pipe pair (a child's stdout and
//! stdin, or in-memory pipes in tests). A named reader thread hands each line to the client's
//! [`Inbox`]; a named writer thread owns the server's input, so a caller never blocks on a
//! pipe write.
//!
//! Depends on: `tools::mcp::error`, `tools::mcp::process`, `tools::mcp::transport`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::Receiver;

use super::error::McpError;
use super::process::ServerProcess;
use super::transport::{Inbox, Outgoing, Transport};

/// Longest line accepted from a server. A longer one ends the connection.
pub(super) const MAX_LINE_BYTES: u64 = 16 << 20;

/// A stdio connection's process, when it started one: stopping the transport stops it.
#[derive(Debug)]
pub(super) struct Stdio {
    process: Option<ServerProcess>,
}

impl Transport for Stdio {
    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }
}

/// Starts the `mcp-<name>-writer` thread, which writes each queued message as a line to
/// `writer` until the client closes, and the `mcp-<name>-reader` thread, which hands each line
/// of `reader` to `inbox` until the server closes its output (then closes the client). Both
/// are detached. `process`, when given, is stopped when the transport is.
///
/// # Errors
///
/// [`McpError::Start`] when a thread cannot be created.
pub(super) fn start(
    inbox: Arc<dyn Inbox>,
    lines: Receiver<Outgoing>,
    reader: impl Read + Send + 'static,
    writer: impl Write + Send + 'static,
    process: Option<ServerProcess>,
) -> Result<Stdio, McpError> {
    let server = inbox.server().to_owned();
    // Built first, so that a failure below stops the process.
    let transport = Stdio { process };
    let no_thread = |e: io::Error| McpError::Start {
        server: server.clone(),
        detail: format!("no thread for it: {e}"),
    };
    let writer_inbox = inbox.clone();
    thread::Builder::new()
        .name(format!("mcp-{server}-writer"))
        .spawn(move || {
            if let Err(e) = run_writer(writer, &lines) {
                writer_inbox.close(format!("writing to it failed: {e}"));
            }
        })
        .map_err(no_thread)?;
    thread::Builder::new()
        .name(format!("mcp-{server}-reader"))
        .spawn(move || {
            let reason = match run_reader(reader, inbox.as_ref()) {
                Ok(()) => "it closed its output; it is restarted on the next call".to_owned(),
                Err(e) => {
                    format!("reading from it failed ({e}); it is restarted on the next call")
                }
            };
            inbox.close(reason);
        })
        .map_err(no_thread)?;
    Ok(transport)
}

/// The writer thread: writes each queued message as a line, until the client closes.
fn run_writer(mut writer: impl Write, lines: &Receiver<Outgoing>) -> io::Result<()> {
    for message in lines {
        let mut line = message.line;
        line.push('\n');
        writer.write_all(line.as_bytes())?;
        writer.flush()?;
    }
    Ok(())
}

/// The reader thread: reads lines until the server closes its output.
///
/// # Errors
///
/// When reading fails or a line is longer than [`MAX_LINE_BYTES`].
fn run_reader(reader: impl Read, inbox: &dyn Inbox) -> io::Result<()> {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && read as u64 == MAX_LINE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a line longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        inbox.deliver(&line, None);
    }
}
