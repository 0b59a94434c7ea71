//! `Metrics`: the server's counters, and their Prometheus text form. Atomics only; depends on
//! `protocol` for the names of error codes.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Events sent again on resume.
    pub events_replayed: AtomicU64,
    /// Client frames answered with an `error`.
    pub frames_rejected: AtomicU64,
    /// Transactions the journal committed.
    pub journal_batches: AtomicU64,
    /// Writes the journal committed (events, messages, notes, …).
    pub journal_writes: AtomicU64,
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

    /// Renders every counter, plus the live session count, in the Prometheus text format.
    pub fn render(&self, sessions: usize) -> String {
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        line(
            "sparky_connections_open",
            "gauge",
            "WebSocket connections open.",
            Self::get(&self.connections_open),
        );
        line(
            "sparky_connections_total",
            "counter",
            "WebSocket connections accepted.",
            Self::get(&self.connections_total),
        );
        line(
            "sparky_sessions",
            "gauge",
            "Sessions held.",
            sessions as u64,
        );
        line(
            "sparky_turns_started_total",
            "counter",
            "Turns started.",
            Self::get(&self.turns_started),
        );
        line(
            "sparky_events_total",
            "counter",
            "Events logged.",
            Self::get(&self.events),
        );
        line(
            "sparky_events_replayed_total",
            "counter",
            "Events replayed on resume.",
            Self::get(&self.events_replayed),
        );
        line(
            "sparky_frames_rejected_total",
            "counter",
            "Client frames rejected.",
            Self::get(&self.frames_rejected),
        );
        line(
            "sparky_journal_batches_total",
            "counter",
            "Transactions committed by the journal.",
            Self::get(&self.journal_batches),
        );
        line(
            "sparky_journal_writes_total",
            "counter",
            "Writes committed by the journal.",
            Self::get(&self.journal_writes),
        );
        let _ = writeln!(
            out,
            "# HELP sparky_turns_ended_total Turns ended, by outcome."
        );
        let _ = writeln!(out, "# TYPE sparky_turns_ended_total counter");
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
        out
    }
}
