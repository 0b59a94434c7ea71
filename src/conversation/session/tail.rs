//! `EventLog`: the newest events of one session, kept in memory for live delivery and quick
//! resumes. Everything older is in the store; a replay that reaches past the tail reads it from
//! there. The tail is bounded by count and by bytes, and never lets go of an event that is not
//! yet durable (the journal's acknowledgement delivers those from here).
//!
//! Depends on: `conversation::session`.

use std::collections::VecDeque;

use super::WireText;

/// The newest events of a session, `(seq, text)`, oldest first.
#[derive(Debug)]
pub struct EventLog {
    events: VecDeque<(u64, WireText)>,
    /// Bytes of text in `events`.
    bytes: usize,
    next_seq: u64,
    max_events: usize,
    max_bytes: usize,
}

impl EventLog {
    /// A tail whose next event is `next_seq`, holding `events` (the newest ones, oldest first),
    /// bounded to `max_events` events (at least one) and `max_bytes` bytes.
    pub fn new(
        next_seq: u64,
        events: Vec<(u64, WireText)>,
        max_events: usize,
        max_bytes: usize,
    ) -> Self {
        let mut log = EventLog {
            bytes: events.iter().map(|(_, text)| text.len()).sum(),
            events: events.into(),
            next_seq,
            max_events: max_events.max(1),
            max_bytes,
        };
        log.trim(next_seq - 1);
        log
    }

    /// The `seq` of the newest event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Appends the next event and returns its `seq`.
    pub fn push(&mut self, text: WireText) -> u64 {
        let seq = self.next_seq;
        self.bytes += text.len();
        self.events.push_back((seq, text));
        self.next_seq += 1;
        seq
    }

    /// Drops the oldest events past the bounds, but none after `durable`.
    pub fn trim(&mut self, durable: u64) {
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            match self.events.front() {
                Some((seq, _)) if *seq <= durable => {}
                _ => return,
            }
            if let Some((_, text)) = self.events.pop_front() {
                self.bytes -= text.len();
            }
        }
    }

    /// Every event the tail holds, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &WireText)> + '_ {
        self.events.iter().map(|(seq, text)| (*seq, text))
    }

    /// The events numbered `after + 1 ..= up_to`, or `None` when the tail no longer holds the
    /// first of them.
    pub fn range(
        &self,
        after: u64,
        up_to: u64,
    ) -> Option<impl Iterator<Item = (u64, &WireText)> + '_> {
        let first = self.events.front().map_or(self.next_seq, |(seq, _)| *seq);
        if after + 1 < first && after < up_to {
            return None;
        }
        let skip = (after + 1).saturating_sub(first);
        let take = up_to.saturating_sub(after);
        Some(
            self.events
                .iter()
                .skip(usize::try_from(skip).unwrap_or(usize::MAX))
                .take(usize::try_from(take).unwrap_or(usize::MAX))
                .map(|(seq, text)| (*seq, text)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: u64, max_events: usize, max_bytes: usize) -> EventLog {
        let mut log = EventLog::new(1, Vec::new(), max_events, max_bytes);
        for seq in 1..=n {
            log.push(seq.to_string().into());
            log.trim(seq);
        }
        log
    }

    fn seqs(log: &EventLog, after: u64, up_to: u64) -> Option<Vec<u64>> {
        log.range(after, up_to)
            .map(|events| events.map(|(seq, _)| seq).collect())
    }

    #[test]
    fn serves_what_it_holds_and_refuses_what_it_dropped() {
        let log = log_with(10, 4, usize::MAX);
        assert_eq!(seqs(&log, 6, 10), Some(vec![7, 8, 9, 10]));
        assert_eq!(seqs(&log, 8, 9), Some(vec![9]));
        assert_eq!(seqs(&log, 10, 10), Some(vec![]));
        assert_eq!(seqs(&log, 5, 10), None);
        assert_eq!(seqs(&log, 0, 10), None);
        assert_eq!(log.last_seq(), 10);
    }

    #[test]
    fn is_bounded_by_bytes_but_keeps_what_is_not_durable() {
        // Ten events of two bytes each ("10" is the only one of two).
        let mut log = EventLog::new(1, Vec::new(), 100, 3);
        for seq in 1..=5 {
            log.push(format!("{seq}{seq}").into());
        }
        log.trim(2);
        assert_eq!(seqs(&log, 2, 5), Some(vec![3, 4, 5]));
        log.trim(5);
        assert_eq!(seqs(&log, 4, 5), Some(vec![5]));
        assert_eq!(seqs(&log, 3, 5), None);
    }
}
