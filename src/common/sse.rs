//! Server-sent events, as both HTTP clients read them: the model client's streamed answers and
//! the MCP HTTP transport's POST answers and GET stream. [`SseDecoder`] turns a stream's lines
//! into whole events; [`body_start`] reads the start of an error answer for its message.
//!
//! Depends on nothing in the crate.

use std::io::Read;

/// Collects the `data:` lines of a server-sent event stream into whole events.
#[derive(Debug, Default)]
pub struct SseDecoder {
    data: String,
    pending: bool,
}

impl SseDecoder {
    /// Takes one line, without its line ending; returns an event's data when the line ends
    /// one (a blank line).
    pub fn line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            return self.finish();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            if self.pending {
                self.data.push('\n');
            }
            self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
            self.pending = true;
        }
        None
    }

    /// The data of an event that the stream ended without a blank line after.
    pub fn finish(&mut self) -> Option<String> {
        self.pending = false;
        let data = std::mem::take(&mut self.data);
        (!data.is_empty()).then_some(data)
    }
}

/// The first `limit` bytes of a response's body, as text (lossily): enough of an error answer
/// for its message. A body that cannot be read gives what was read of it.
pub fn body_start(response: ureq::http::Response<ureq::Body>, limit: u64) -> String {
    let mut text = Vec::new();
    let _ = response
        .into_body()
        .into_reader()
        .take(limit)
        .read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_become_events() {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for line in [
            ": keep-alive",
            "event: chunk",
            "data: {\"a\":1}",
            "",
            "data:{\"b\":2}",
            "",
            "",
            "data: first",
            "data: second",
            "",
            "data: [DONE]",
        ] {
            events.extend(decoder.line(line));
        }
        events.extend(decoder.finish());
        assert_eq!(
            events,
            ["{\"a\":1}", "{\"b\":2}", "first\nsecond", "[DONE]"]
        );
    }
}
