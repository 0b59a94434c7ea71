//! `Metrics`: the server's counters, and their Prometheus text form. Atomics, plus one small
//! map for tool calls; depends on `protocol` for the names of error codes.
//!
//! Depends on: `common::protocol`, `common::protocol::server`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::common::protocol::{ErrorCode, ToolStatus};

/// Upper bounds of the turn-duration histogram's buckets, in seconds.
const TURN_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// The error codes counted for rejected client frames, in display order.
const REJECTED_CODES: [ErrorCode; 10] = [
    ErrorCode::InvalidJson,
    ErrorCode::InvalidMessage,
    ErrorCode::UnknownType,
    ErrorCode::NotConnected,
    ErrorCode::AlreadyConnected,
    ErrorCode::UnsupportedFrame,
    ErrorCode::TooLarge,
    ErrorCode::RateLimited,
    ErrorCode::Unauthorized,
    ErrorCode::ServerBusy,
];

/// How a turn ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Closed by a `message`.
    Message,
    /// Closed by an `error`.
    Error,
    /// Closed by `status cancelled`.
    Cancelled,
}

/// Counters shared by every thread of one server. Each is a relaxed atomic: they are read for
/// display, never to make a decision.
#[derive(Debug, Default)]
pub struct Metrics {
    /// WebSocket connections open now.
    pub connections_open: AtomicU64,
    /// WebSocket connections accepted since start.
    pub connections_total: AtomicU64,
    /// Turns started.
    pub turns_started: AtomicU64,
    /// Turns closed by a `message`.
    pub turns_completed: AtomicU64,
    /// Turns closed by an `error`.
    pub turns_failed: AtomicU64,
    /// Turns closed by `status cancelled`.
    pub turns_cancelled: AtomicU64,
    /// Events appended to session logs.
    pub events: AtomicU64,
    /// Events queued to connections (each event once per connection it goes to).
    pub events_sent: AtomicU64,
    /// Events sent again on resume.
    pub events_replayed: AtomicU64,
    /// Client frames answered with an `error`.
    pub frames_rejected: AtomicU64,
    /// Requests to the model backend.
    pub model_requests: AtomicU64,
    /// Retries of model requests.
    pub model_retries: AtomicU64,
    /// Transactions the journal committed.
    pub journal_batches: AtomicU64,
    /// Writes the journal committed (events, messages, notes, …).
    pub journal_writes: AtomicU64,
    /// Writes to a client that its socket did not take whole: the rest waited for the
    /// connection thread (a slow reader, or a full socket buffer).
    pub writes_deferred: AtomicU64,
    /// Signals received from other instances sharing the store (PostgreSQL).
    pub signals_received: AtomicU64,
    /// How long those signals took from their sender's `NOTIFY` to this instance, summed in
    /// microseconds (by the two machines' clocks).
    pub signal_lag_micros: AtomicU64,
    /// Leases of conversations taken over from another instance (asked to let go, or dead).
    pub leases_taken: AtomicU64,
    /// Files whose text was read and stored.
    pub file_texts_read: AtomicU64,
    /// Files whose text could not be read (a note was stored instead).
    pub file_texts_failed: AtomicU64,
    /// Files uploaded over HTTP and stored (`POST /api/files` answered `201`).
    pub file_uploads: AtomicU64,
    /// Bytes of the files uploaded over HTTP and stored (identical ones counted each time).
    pub file_upload_bytes: AtomicU64,
    /// Uploads refused: too large (`413`), past the quota (`507`), without a length (`411`).
    pub file_uploads_refused: AtomicU64,
    /// Rejected client frames, by the index of their code in `REJECTED_CODES`.
    rejected_by_code: [AtomicU64; REJECTED_CODES.len()],
    /// Turn durations: a count per bucket of `TURN_BUCKETS` (plus one for larger), and the
    /// sum in microseconds.
    turn_buckets: [AtomicU64; TURN_BUCKETS.len() + 1],
    turn_micros: AtomicU64,
    /// Tool calls by tool name and status. Locked for one increment or one render.
    tool_calls: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Tokens the model servers reported, by model and kind (`prompt`, `completion`).
    tokens: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes one from a gauge.
    pub fn drop_one(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a rejected client frame.
    pub fn rejected(&self, code: ErrorCode) {
        Self::bump(&self.frames_rejected);
        if let Some(index) = REJECTED_CODES.iter().position(|known| *known == code) {
            Self::bump(&self.rejected_by_code[index]);
        }
    }

    /// Counts a finished turn and how long it took.
    pub fn turn_ended(&self, outcome: Outcome, took: Duration) {
        let counter = match outcome {
            Outcome::Message => &self.turns_completed,
            Outcome::Error => &self.turns_failed,
            Outcome::Cancelled => &self.turns_cancelled,
        };
        Self::bump(counter);
        let seconds = took.as_secs_f64();
        let bucket = TURN_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(TURN_BUCKETS.len());
        Self::bump(&self.turn_buckets[bucket]);
        Self::add(
            &self.turn_micros,
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        );
    }

    /// Counts a tool call.
    pub fn tool_called(&self, tool: &str, status: ToolStatus) {
        let status = match status {
            ToolStatus::Success => "success",
            ToolStatus::Error => "error",
        };
        *self
            .tool_calls
            .lock()
            .entry((tool.to_owned(), status))
            .or_default() += 1;
    }

    /// Prometheus text for figures kept elsewhere (the store's pool): one `(name, kind, help,
    /// value)` each.
    pub fn render_samples(samples: &[(&str, &str, &str, u64)]) -> String {
        let mut out = String::new();
        for (name, kind, help, value) in samples {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }

    /// Counts the tokens a model reported for one step.
    pub fn tokens_used(&self, model: &str, prompt: u64, completion: u64) {
        let mut tokens = self.tokens.lock();
        *tokens.entry((model.to_owned(), "prompt")).or_default() += prompt;
        *tokens.entry((model.to_owned(), "completion")).or_default() += completion;
    }

    /// Renders every counter, plus the live session count, in the Prometheus text format.
    pub fn render(&self, sessions: usize) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let simple: [(&str, &str, &str, u64); 20] = [
            (
                "sparky_connections_open",
                "gauge",
                "WebSocket connections open.",
                Self::get(&self.connections_open),
            ),
            (
                "sparky_connections_total",
                "counter",
                "WebSocket connections accepted.",
                Self::get(&self.connections_total),
            ),
            (
                "sparky_sessions",
                "gauge",
                "Sessions held.",
                sessions as u64,
            ),
            (
                "sparky_turns_started_total",
                "counter",
                "Turns started.",
                Self::get(&self.turns_started),
            ),
            (
                "sparky_events_total",
                "counter",
                "Events logged.",
                Self::get(&self.events),
            ),
            (
                "sparky_events_sent_total",
                "counter",
                "Events queued to connections.",
                Self::get(&self.events_sent),
            ),
            (
                "sparky_events_replayed_total",
                "counter",
                "Events replayed on resume.",
                Self::get(&self.events_replayed),
            ),
            (
                "sparky_frames_rejected_total",
                "counter",
                "Client frames rejected.",
                Self::get(&self.frames_rejected),
            ),
            (
                "sparky_model_requests_total",
                "counter",
                "Requests to the model.",
                Self::get(&self.model_requests),
            ),
            (
                "sparky_model_retries_total",
                "counter",
                "Model requests retried.",
                Self::get(&self.model_retries),
            ),
            (
                "sparky_journal_batches_total",
                "counter",
                "Transactions committed by the journal.",
                Self::get(&self.journal_batches),
            ),
            (
                "sparky_journal_writes_total",
                "counter",
                "Writes committed by the journal.",
                Self::get(&self.journal_writes),
            ),
            (
                "sparky_writes_deferred_total",
                "counter",
                "Writes to clients that the socket did not take whole.",
                Self::get(&self.writes_deferred),
            ),
            (
                "sparky_cluster_signals_total",
                "counter",
                "Signals (NOTIFY) received from other instances sharing the database.",
                Self::get(&self.signals_received),
            ),
            (
                "sparky_cluster_leases_taken_total",
                "counter",
                "Conversation leases taken over from another instance.",
                Self::get(&self.leases_taken),
            ),
            (
                "sparky_file_texts_read_total",
                "counter",
                "Files whose text was read.",
                Self::get(&self.file_texts_read),
            ),
            (
                "sparky_file_texts_failed_total",
                "counter",
                "Files whose text could not be read.",
                Self::get(&self.file_texts_failed),
            ),
            (
                "sparky_file_uploads_total",
                "counter",
                "Files uploaded over HTTP and stored.",
                Self::get(&self.file_uploads),
            ),
            (
                "sparky_file_upload_bytes_total",
                "counter",
                "Bytes of the files uploaded over HTTP and stored.",
                Self::get(&self.file_upload_bytes),
            ),
            (
                "sparky_file_uploads_refused_total",
                "counter",
                "Uploads refused: too large, past the quota, or without a length.",
                Self::get(&self.file_uploads_refused),
            ),
        ];
        for (name, kind, help, value) in simple {
            head(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }

        head(
            &mut out,
            "sparky_turns_ended_total",
            "counter",
            "Turns ended, by outcome.",
        );
        for (outcome, counter) in [
            ("message", &self.turns_completed),
            ("error", &self.turns_failed),
            ("cancelled", &self.turns_cancelled),
        ] {
            let _ = writeln!(
                out,
                "sparky_turns_ended_total{{outcome=\"{outcome}\"}} {}",
                Self::get(counter)
            );
        }

        head(
            &mut out,
            "sparky_frames_rejected_by_code_total",
            "counter",
            "Client frames rejected, by error code.",
        );
        for (code, counter) in REJECTED_CODES.iter().zip(&self.rejected_by_code) {
            let _ = writeln!(
                out,
                "sparky_frames_rejected_by_code_total{{code=\"{}\"}} {}",
                code.as_str(),
                Self::get(counter)
            );
        }

        head(
            &mut out,
            "sparky_turn_duration_seconds",
            "histogram",
            "Time from a turn's start to its close.",
        );
        let mut cumulative = 0;
        for (bound, counter) in TURN_BUCKETS.iter().zip(&self.turn_buckets) {
            cumulative += Self::get(counter);
            let _ = writeln!(
                out,
                "sparky_turn_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += Self::get(&self.turn_buckets[TURN_BUCKETS.len()]);
        let _ = writeln!(
            out,
            "sparky_turn_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = Self::get(&self.turn_micros) as f64 / 1_000_000.0;
        let _ = writeln!(out, "sparky_turn_duration_seconds_sum {sum}");
        let _ = writeln!(out, "sparky_turn_duration_seconds_count {cumulative}");

        head(
            &mut out,
            "sparky_cluster_signal_lag_seconds",
            "summary",
            "Time from another instance's NOTIFY to its arrival here.",
        );
        let lag = Self::get(&self.signal_lag_micros) as f64 / 1_000_000.0;
        let _ = writeln!(out, "sparky_cluster_signal_lag_seconds_sum {lag}");
        let _ = writeln!(
            out,
            "sparky_cluster_signal_lag_seconds_count {}",
            Self::get(&self.signals_received)
        );

        head(
            &mut out,
            "sparky_tool_calls_total",
            "counter",
            "Tool calls, by tool and status.",
        );
        for ((tool, status), count) in self.tool_calls.lock().iter() {
            let tool = tool.replace(['\\', '"', '\n'], "_");
            let _ = writeln!(
                out,
                "sparky_tool_calls_total{{tool=\"{tool}\",status=\"{status}\"}} {count}"
            );
        }
        head(
            &mut out,
            "sparky_model_tokens_total",
            "counter",
            "Tokens the model servers reported, by model and kind.",
        );
        for ((model, kind), count) in self.tokens.lock().iter() {
            let model = model.replace(['\\', '"', '\n'], "_");
            let _ = writeln!(
                out,
                "sparky_model_tokens_total{{model=\"{model}\",kind=\"{kind}\"}} {count}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histograms_and_labelled_counters() {
        let metrics = Metrics::default();
        metrics.turn_ended(Outcome::Message, Duration::from_millis(3));
        metrics.turn_ended(Outcome::Cancelled, Duration::from_secs(100));
        metrics.rejected(ErrorCode::TooLarge);
        metrics.tool_called("calculator", ToolStatus::Error);
        let text = metrics.render(2);
        assert!(
            text.contains("sparky_turn_duration_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sparky_turn_duration_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("sparky_turns_ended_total{outcome=\"cancelled\"} 1\n"));
        assert!(text.contains("sparky_frames_rejected_by_code_total{code=\"too_large\"} 1\n"));
        assert!(text.contains("sparky_tool_calls_total{tool=\"calculator\",status=\"error\"} 1\n"));
        assert!(text.contains("sparky_sessions 2\n"));
    }
}
