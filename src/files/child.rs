//! The child process that reads a document's text (PDF, HTML, DOCX), so that a hostile file
//! costs a bounded amount: both sides of it.
//!
//! - In the child, [`serve`] (`sparky extract-text --type T`, after the binary has set the
//!   child's own memory and CPU limits): the document's bytes on stdin, its text on stdout as
//!   JSON lines ([`Line`]), a section at a time, capped at [`MAX_TEXT_BYTES`], then one line
//!   that says how it ended. A panic in a parser becomes that line too.
//! - In the server, [`Extractor::read`] runs the program (`--extractor`, else this binary when
//!   it is `sparky`) in a process group of its own with an empty environment, feeds its stdin
//!   on an `extract-feed` thread, reads its stdout (capped) and stderr (its last few KiB)
//!   until the timeout, and then kills it. A crash, a kill, a timeout, a memory limit or bad
//!   output each becomes a note: `could not read the PDF: it took longer than 30s`.
//!
//! Depends on: `common::config`, `common::error`, `files::chunk`, `files::extract`.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::{Deserialize, Serialize};

use crate::common::config::Config;
use crate::common::error::{Error, Result};
use crate::files::chunk::{MAX_TEXT_BYTES, Section};
use crate::files::extract::{Document, read_document};

/// The subcommand the reader runs as: `PROGRAM extract-text --type T --memory-mib M
/// --cpu-seconds S`.
pub const SUBCOMMAND: &str = "extract-text";

/// The most bytes of output read from a child: its text, JSON-escaped (a quote or a backslash
/// doubles), and its lines' framing.
const MAX_OUTPUT_BYTES: usize = 2 * MAX_TEXT_BYTES + (1 << 20);

/// The most bytes of a child's stderr kept, for the log and to tell a crash's cause.
const MAX_STDERR_BYTES: usize = 4 * 1024;

/// One line of the child's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// A part of the text: a PDF's page (from 1), or a whole text.
    Section {
        /// The page, for a paged document.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        page: Option<u32>,
        /// The text.
        text: String,
    },
    /// The last line when the text was read: `cut` when some of it was left out (past
    /// [`MAX_TEXT_BYTES`]).
    Done {
        /// Text was left out.
        cut: bool,
    },
    /// The last line when nothing could be read: why, in words for a person.
    Failed {
        /// The parser's error, or the panic's message.
        reason: String,
    },
}

/// The child's work: reads `document`'s bytes from `input` to its end, reads its text and
/// writes it to `output` as [`Line`]s, one JSON object a line, the last one `done` or
/// `failed`; a parser's panic is reported as `failed` (the binary silences the panic hook).
///
/// # Errors
///
/// Reading `input` or writing `output` failed.
pub fn serve(document: Document, input: &mut dyn Read, output: &mut dyn Write) -> io::Result<()> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_document(document, &bytes)
    }));
    drop(bytes);
    let mut write = |line: &Line| -> io::Result<()> {
        serde_json::to_writer(&mut *output, line)?;
        output.write_all(b"\n")
    };
    match read {
        Ok(Ok(sections)) => {
            let mut kept = 0;
            let mut cut = false;
            for section in sections {
                let mut text = section.text;
                if kept + text.len() > MAX_TEXT_BYTES {
                    let mut end = MAX_TEXT_BYTES - kept;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.truncate(end);
                    cut = true;
                }
                kept += text.len();
                write(&Line::Section {
                    page: section.page,
                    text,
                })?;
                if cut {
                    break;
                }
            }
            write(&Line::Done { cut })?;
        }
        Ok(Err(reason)) => write(&Line::Failed { reason })?,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            write(&Line::Failed {
                reason: format!("its reader failed ({message})"),
            })?;
        }
    }
    output.flush()
}

/// A document's text as the child read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadText {
    /// Its sections, in order.
    pub sections: Vec<Section>,
    /// Some text was left out (past [`MAX_TEXT_BYTES`]).
    pub cut: bool,
}

/// Why a document's text was not read.
#[derive(Debug)]
pub enum Unread {
    /// The document cannot be read: the note says why, for the model and the person
    /// (`could not read the PDF: …`). Kept as the file's text state.
    Document(String),
    /// The server failed feeding the child (the store): the document may be read later.
    Server(Error),
}

/// Runs the reader process for documents, held to `--extract-timeout` and
/// `--extract-memory-mib`.
#[derive(Clone, Debug)]
pub struct Extractor {
    /// The program run as `PROGRAM extract-text`; `None` when there is none (no
    /// `--extractor`, and this process is not `sparky`: a test binary).
    program: Option<PathBuf>,
    timeout: Duration,
    memory_bytes: u64,
}

impl Extractor {
    /// The reader `config` asks for: `--extractor`, else this binary when it is `sparky`.
    pub fn from_config(config: &Config) -> Extractor {
        let program = config.extractor.clone().or_else(|| {
            std::env::current_exe()
                .ok()
                .filter(|exe| exe.file_name().is_some_and(|name| name == "sparky"))
        });
        Extractor {
            program,
            timeout: config.extract_timeout,
            memory_bytes: config.extract_memory_bytes,
        }
    }

    /// Reads `document`'s text in a child process; `feed` writes the document's bytes to the
    /// child's stdin (on an `extract-feed` thread; a write fails once the child is gone).
    ///
    /// # Errors
    ///
    /// [`Unread::Document`] with a note when the child could not read it (or there is no
    /// reader program), [`Unread::Server`] when `feed` failed otherwise than on the pipe.
    pub fn read(
        &self,
        document: Document,
        feed: impl FnOnce(&mut dyn Write) -> Result<()> + Send,
    ) -> std::result::Result<ReadText, Unread> {
        let note =
            |why: &str| Unread::Document(format!("could not read {}: {why}", document.name()));
        let Some(program) = &self.program else {
            return Err(note(
                "this server has no reader for documents (run as sparky, or give --extractor)",
            ));
        };
        let mut command = Command::new(program);
        command
            .arg(SUBCOMMAND)
            .arg("--type")
            .arg(document.content_type())
            .arg("--memory-mib")
            .arg(self.memory_bytes.div_ceil(1 << 20).to_string())
            .arg("--cpu-seconds")
            .arg(self.timeout.as_secs().saturating_add(1).to_string())
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().map_err(|e| {
            log::warn!("files: cannot start the reader {}: {e}", program.display());
            note("its reader could not be started")
        })?;
        let started = Instant::now();
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            stop(&mut child);
            return Err(note("its reader could not be started"));
        };
        let (collected, fed) = std::thread::scope(|scope| {
            let feeder = std::thread::Builder::new()
                .name("extract-feed".into())
                .spawn_scoped(scope, move || {
                    let fed = feed(&mut stdin);
                    drop(stdin);
                    fed
                });
            let collected = match &feeder {
                Ok(_) => collect(stdout, stderr, started + self.timeout),
                Err(_) => Collected::failed_to_feed(),
            };
            // Whatever happened, the child is gone before the feeder is waited for: its
            // writes then fail at once.
            let status = stop(&mut child);
            let fed = match feeder {
                Ok(feeder) => feeder.join().unwrap_or(Ok(())),
                Err(e) => Err(Error::Spawn(e)),
            };
            ((collected, status), fed)
        });
        let (collected, status) = collected;
        if let Err(e) = fed
            && !is_broken_pipe(&e)
            && !collected.finished()
        {
            return Err(Unread::Server(e));
        }
        collected.into_text(status, self).map_err(|why| note(&why))
    }
}

/// Kills the child (harmless when it has exited) and reaps it.
fn stop(child: &mut Child) -> Option<std::process::ExitStatus> {
    let _ = child.kill();
    child.wait().ok()
}

/// True for a write to a child that was gone.
fn is_broken_pipe(error: &Error) -> bool {
    matches!(error, Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
}

/// How reading a child's output ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Both its outputs closed.
    Closed,
    /// The deadline passed.
    TimedOut,
    /// It wrote more than [`MAX_OUTPUT_BYTES`].
    TooLarge,
    /// Polling or reading failed, or the feeder could not start.
    Failed(String),
}

/// A child's output.
#[derive(Debug)]
struct Collected {
    out: Vec<u8>,
    /// The start of its stderr.
    err: Vec<u8>,
    end: End,
}

impl Collected {
    fn failed_to_feed() -> Collected {
        Collected {
            out: Vec::new(),
            err: Vec::new(),
            end: End::Failed("no thread could be started to feed it".into()),
        }
    }

    /// True when the output ends with `done` or `failed`: the child said all it had to.
    fn finished(&self) -> bool {
        matches!(
            self.lines().last(),
            Some(Line::Done { .. } | Line::Failed { .. })
        )
    }

    /// The output's lines that are [`Line`]s (anything else a parser printed is skipped).
    fn lines(&self) -> Vec<Line> {
        self.out
            .split(|b| *b == b'\n')
            .filter(|line| line.starts_with(b"{"))
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect()
    }

    /// The text, or why there is none (after "could not read the PDF: ").
    fn into_text(
        self,
        status: Option<std::process::ExitStatus>,
        extractor: &Extractor,
    ) -> std::result::Result<ReadText, String> {
        let mut sections = Vec::new();
        for line in self.lines() {
            match line {
                Line::Section { page, text } => sections.push(Section { page, text }),
                Line::Done { cut } if self.end == End::Closed => {
                    return Ok(ReadText { sections, cut });
                }
                Line::Failed { reason } => return Err(reason),
                Line::Done { .. } => {}
            }
        }
        let stderr = String::from_utf8_lossy(&self.err);
        let why = match &self.end {
            End::TimedOut => format!(
                "it took longer than {}",
                humantime::format_duration(extractor.timeout)
            ),
            End::TooLarge => "its reader wrote more than it may".to_owned(),
            End::Failed(why) => why.clone(),
            End::Closed => describe_exit(status, &stderr, extractor),
        };
        if !stderr.trim().is_empty() {
            log::info!("files: the reader failed ({why}): {}", stderr.trim());
        }
        Err(why)
    }
}

/// Why a child that closed its output without a last line ended.
fn describe_exit(
    status: Option<std::process::ExitStatus>,
    stderr: &str,
    extractor: &Extractor,
) -> String {
    let memory = format!(
        "it needed more than the {} MiB of memory a document may use",
        extractor.memory_bytes.div_ceil(1 << 20)
    );
    if stderr.contains("memory allocation") || stderr.contains("out of memory") {
        return memory;
    }
    if stderr.contains("overflowed its stack") {
        return "it is nested too deeply".to_owned();
    }
    let Some(status) = status else {
        return "its reader ended without an answer".to_owned();
    };
    match status.signal() {
        // RLIMIT_CPU's soft limit, then its hard one.
        Some(24) => format!(
            "it took longer than {}",
            humantime::format_duration(extractor.timeout)
        ),
        Some(9) => "its reader was killed (it may have needed too much memory)".to_owned(),
        Some(6) => memory,
        Some(signal) => format!("its reader crashed (signal {signal})"),
        None => format!(
            "its reader ended without an answer (exit status {})",
            status.code().unwrap_or(-1)
        ),
    }
}

/// Reads the child's stdout (at most [`MAX_OUTPUT_BYTES`]) and stderr (the first
/// [`MAX_STDERR_BYTES`] kept, the rest read and dropped) until both close or `deadline`.
fn collect(mut stdout: ChildStdout, mut stderr: ChildStderr, deadline: Instant) -> Collected {
    let mut collected = Collected {
        out: Vec::new(),
        err: Vec::new(),
        end: End::Closed,
    };
    let (mut out_open, mut err_open) = (true, true);
    let mut buf = vec![0; 64 * 1024];
    while out_open || err_open {
        let now = Instant::now();
        if now >= deadline {
            collected.end = End::TimedOut;
            break;
        }
        let timeout = PollTimeout::try_from(deadline - now).unwrap_or(PollTimeout::MAX);
        let (out_ready, err_ready) = {
            let mut fds = Vec::with_capacity(2);
            if out_open {
                fds.push(PollFd::new(stdout.as_fd(), PollFlags::POLLIN));
            }
            if err_open {
                fds.push(PollFd::new(stderr.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    collected.end = End::Failed(format!("its output could not be read ({e})"));
                    break;
                }
            }
            let ready = |fd: Option<&PollFd<'_>>| {
                fd.and_then(PollFd::revents)
                    .is_some_and(|events| !events.is_empty())
            };
            let out_ready = out_open && ready(fds.first());
            let err_ready = err_open && ready(fds.get(usize::from(out_open)));
            (out_ready, err_ready)
        };
        if out_ready {
            match stdout.read(&mut buf) {
                Ok(0) => out_open = false,
                Ok(n) => {
                    collected.out.extend_from_slice(&buf[..n]);
                    if collected.out.len() > MAX_OUTPUT_BYTES {
                        collected.end = End::TooLarge;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    collected.end = End::Failed(format!("its output could not be read ({e})"));
                    break;
                }
            }
        }
        if err_ready {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => {
                    let room = MAX_STDERR_BYTES.saturating_sub(collected.err.len());
                    collected.err.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
    }
    collected
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(document: Document, bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        serve(document, &mut &bytes[..], &mut out).unwrap();
        Collected {
            out,
            err: Vec::new(),
            end: End::Closed,
        }
        .lines()
    }

    #[test]
    fn the_child_writes_sections_then_how_it_ended() {
        let lines = served(
            Document::Html,
            b"<html><body><p>Hello there</p></body></html>",
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            matches!(&lines[0], Line::Section { page: None, text } if text.contains("Hello there"))
        );
        assert_eq!(lines[1], Line::Done { cut: false });
        let lines = served(Document::Pdf, b"%PDF-1.4 not really a pdf");
        assert!(matches!(&lines[..], [Line::Failed { .. }]), "{lines:?}");
    }

    #[test]
    fn output_that_is_not_a_line_is_skipped() {
        let out =
            b"stray print\n{\"section\":{\"page\":1,\"text\":\"a\"}}\n{\"done\":{\"cut\":true}}\n";
        let collected = Collected {
            out: out.to_vec(),
            err: Vec::new(),
            end: End::Closed,
        };
        assert!(collected.finished());
        let extractor = Extractor {
            program: None,
            timeout: Duration::from_secs(1),
            memory_bytes: 1 << 20,
        };
        let text = collected.into_text(None, &extractor).unwrap();
        assert!(text.cut);
        assert_eq!(
            text.sections,
            [Section {
                page: Some(1),
                text: "a".into()
            }]
        );
    }

    #[test]
    fn without_a_reader_program_a_document_gets_a_note() {
        let extractor = Extractor {
            program: None,
            timeout: Duration::from_secs(1),
            memory_bytes: 1 << 20,
        };
        let Err(Unread::Document(note)) = extractor.read(Document::Pdf, |_| Ok(())) else {
            panic!("read without a program");
        };
        assert!(note.starts_with("could not read the PDF: "), "{note}");
    }

    #[test]
    fn a_reader_that_hangs_is_killed_at_the_timeout() {
        // `sh extract-text …` fails to open the script; `sleep` stands in for a hung parser.
        let dir = std::env::temp_dir().join(format!("sparky-child-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("hang");
        std::fs::write(&script, "#!/bin/sh\nexec /bin/sleep 30\n").unwrap();
        let mut perms = std::fs::metadata(&script).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&script, perms).unwrap();
        let extractor = Extractor {
            program: Some(script),
            timeout: Duration::from_millis(300),
            memory_bytes: 64 << 20,
        };
        let started = Instant::now();
        let Err(Unread::Document(note)) = extractor.read(Document::Html, |_| Ok(())) else {
            panic!("a hung reader answered");
        };
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(
            note,
            "could not read the HTML page: it took longer than 300ms"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
