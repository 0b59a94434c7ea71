//! Keeping secrets out of the log: [`Redactor`] wraps the logger `main.rs` sets up, replaces
//! every configured token in every line with `[redacted]`, and drops tungstenite's byte-level
//! trace lines, which print whole frames (a `connect` frame's token, and every chat message).
//!
//! Depends on nothing in the crate.

use std::fmt;

use log::{Level, Log, Metadata, Record};

/// What a secret is replaced with.
const REDACTED: &str = "[redacted]";

/// A logger that passes records to another with the secrets taken out, at every level.
pub struct Redactor {
    inner: Box<dyn Log>,
    secrets: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// Wraps `inner`; `secrets` (the server's tokens) never reach it. Empty strings are
    /// ignored.
    pub fn new<I>(inner: Box<dyn Log>, secrets: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(Into::into)
            .filter(|secret| !secret.is_empty())
            .collect();
        // Longest first, so that a token that contains another is replaced whole.
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        Redactor { inner, secrets }
    }

    /// `text` with every secret replaced.
    fn clean(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |text, secret| {
            text.replace(secret, REDACTED)
        })
    }
}

/// tungstenite logs each frame and message it reads or writes, payload included, at trace level.
fn is_payload_dump(metadata: &Metadata<'_>) -> bool {
    metadata.level() == Level::Trace && metadata.target().starts_with("tungstenite")
}

impl Log for Redactor {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        !is_payload_dump(metadata) && self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if self.secrets.is_empty() {
            self.inner.log(record);
            return;
        }
        let text = self.clean(&record.args().to_string());
        self.inner.log(
            &Record::builder()
                .metadata(record.metadata().clone())
                .args(format_args!("{text}"))
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;

    /// A logger that keeps what it is given.
    #[derive(Default)]
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl Log for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &Record<'_>) {
            self.0
                .lock()
                .push(format!("{} {}", record.target(), record.args()));
        }
        fn flush(&self) {}
    }

    fn emit(logger: &Redactor, level: Level, target: &str, text: &str) {
        logger.log(
            &Record::builder()
                .level(level)
                .target(target)
                .args(format_args!("{text}"))
                .build(),
        );
    }

    #[test]
    fn tokens_are_replaced_and_frame_dumps_dropped() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let logger = Redactor::new(Box::new(Capture(lines.clone())), ["tok", "tok-longer", ""]);
        emit(&logger, Level::Info, "sparky::x", "saw tok-longer and tok");
        emit(
            &logger,
            Level::Trace,
            "tungstenite::protocol",
            "Received message tok",
        );
        emit(
            &logger,
            Level::Debug,
            "tungstenite::protocol",
            "Received close frame",
        );
        assert_eq!(
            *lines.lock(),
            [
                "sparky::x saw [redacted] and [redacted]",
                "tungstenite::protocol Received close frame"
            ]
        );
    }
}
