//! The state of one streamed answer: answer text passed on as deltas (what arrived while the
//! reader was busy goes out as one, and nothing waits once it has caught up), reasoning (a `reasoning_content` field, or `<think>` tags split even across chunks) passed
//! on as thoughts, tool calls accumulated, the finish reason and the usage chunk; and the
//! chunks in one server-sent event's data. An event that is one chunk of the usual shape is
//! read straight into [`TypedChunk`] (borrowing its text, skipping the fields it does not
//! need) rather than into a tree of values; any other is read as a [`Value`], with the same
//! result.
//!
//! Depends on: `common::protocol`, `model`, `model::openai::retry`, `model::openai::tool_calls`.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::retry::{Failure, excerpt};
use super::tool_calls::ToolCalls;
use crate::common::protocol::Usage;
use crate::model::{ModelReply, ReplySink};

/// Reasoning longer than this is shown in parts, cut at a paragraph break, rather than waiting
/// for the end of the reasoning.
const THOUGHT_PART_CHARS: usize = 2_000;

/// The chunks in one event's data: each a JSON object, or `None` for `[DONE]`. A server that
/// leaves out the blank line between events gets its lines read one by one.
pub(super) fn parse_event(data: &str) -> Result<Vec<Option<Value>>, Failure> {
    if let Ok(chunk) = serde_json::from_str::<Value>(data) {
        return Ok(vec![Some(chunk)]);
    }
    data.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            let line = line.strip_prefix("data:").map_or(line, str::trim_start);
            if line == "[DONE]" {
                return Ok(None);
            }
            serde_json::from_str(line).map(Some).map_err(|e| {
                Failure::Fatal(format!(
                    "the model server sent an event that is not JSON ({e}): {}",
                    excerpt(line)
                ))
            })
        })
        .collect()
}

/// One chunk in the usual shape, borrowing its text from the event's data. Fields it does not
/// name are skipped unread; a field of another type than these fails the parse, and the chunk
/// is then read as a [`Value`] instead.
#[derive(Deserialize)]
struct TypedChunk<'a> {
    /// Whether the chunk has an `error` field (even `null`): such a chunk is read as a value.
    #[serde(default, deserialize_with = "present")]
    error: bool,
    #[serde(default)]
    usage: Option<TypedUsage>,
    #[serde(default, borrow)]
    choices: Option<Vec<TypedChoice<'a>>>,
}

/// The `usage` object of a [`TypedChunk`].
#[derive(Deserialize)]
struct TypedUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// One of the `choices` of a [`TypedChunk`].
#[derive(Deserialize)]
struct TypedChoice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    finish_reason: Option<Text<'a>>,
    /// `null` counts as an empty delta (not as a missing one), as it does in a [`Value`].
    #[serde(default, borrow, deserialize_with = "null_is_empty")]
    delta: Option<TypedDelta<'a>>,
    #[serde(default, borrow, deserialize_with = "null_is_empty")]
    message: Option<TypedDelta<'a>>,
}

/// The `delta` (or `message`) of a [`TypedChoice`].
#[derive(Default, Deserialize)]
struct TypedDelta<'a> {
    #[serde(default, borrow)]
    reasoning_content: Option<Text<'a>>,
    #[serde(default, borrow)]
    reasoning: Option<Text<'a>>,
    #[serde(default, borrow)]
    content: Option<Text<'a>>,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
}

/// A JSON string, borrowed from the data unless it has escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// `true` for a field that is there, whatever its value (which is skipped).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(deserializer).map(|_| true)
}

/// A field that is there, with `null` read as the empty value.
fn null_is_empty<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(|value| Some(value.unwrap_or_default()))
}

/// What [`StreamState::apply`] takes from a choice's `delta` (or `message`).
#[derive(Default)]
struct DeltaView<'a> {
    /// `reasoning_content`, then `reasoning`.
    reasoning: [Option<&'a str>; 2],
    content: Option<&'a str>,
    tool_calls: Option<&'a [Value]>,
}

impl<'a> TypedDelta<'a> {
    fn view(&'a self) -> DeltaView<'a> {
        let text = |field: &'a Option<Text<'a>>| field.as_ref().map(|text| &*text.0);
        DeltaView {
            reasoning: [text(&self.reasoning_content), text(&self.reasoning)],
            content: text(&self.content),
            tool_calls: self.tool_calls.as_deref(),
        }
    }
}

/// The `usage` object of a chunk: `None` unless it has both counts (some servers send
/// `"usage": null` on every chunk but the last).
fn parse_usage(usage: &Value) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: usage.get("prompt_tokens")?.as_u64()?,
        completion_tokens: usage.get("completion_tokens")?.as_u64()?,
    })
}

/// Everything one streamed answer has produced so far.
#[derive(Debug)]
pub(super) struct StreamState {
    answer: String,
    /// Answer text not yet passed to the sink.
    pending: String,
    /// Reasoning not yet passed to the sink.
    reasoning: String,
    /// Where that reasoning came from: reasoning from a field and reasoning in tags are
    /// separate thoughts.
    reasoning_source: Source,
    think: ThinkSplitter,
    calls: ToolCalls,
    /// The tokens used, from the server's usage chunk.
    usage: Option<Usage>,
    /// Why the server says it stopped (`stop`, `length`, `tool_calls`), once it said.
    finish_reason: Option<String>,
}

/// Where reasoning arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// A `reasoning_content` or `reasoning` field of the delta.
    Field,
    /// Between `<think>` and `</think>` in the content.
    Tags,
}

impl StreamState {
    pub(super) fn new() -> Self {
        StreamState {
            answer: String::new(),
            pending: String::new(),
            reasoning: String::new(),
            reasoning_source: Source::Field,
            think: ThinkSplitter::default(),
            calls: ToolCalls::default(),
            usage: None,
            finish_reason: None,
        }
    }

    /// Takes one event's data (see [`parse_event`]); `true` when it holds `[DONE]`, which ends
    /// the answer.
    pub(super) fn event(&mut self, data: &str, sink: &mut dyn ReplySink) -> Result<bool, Failure> {
        if let Ok(chunk) = serde_json::from_str::<TypedChunk>(data)
            && !chunk.error
        {
            let usage = chunk.usage.and_then(|usage| {
                Some(Usage {
                    prompt_tokens: usage.prompt_tokens?,
                    completion_tokens: usage.completion_tokens?,
                })
            });
            let choice =
                (chunk.choices.iter().flatten()).find(|choice| choice.index.unwrap_or(0) == 0);
            let reason = choice
                .and_then(|choice| choice.finish_reason.as_ref())
                .map(|reason| &*reason.0);
            let delta = choice.and_then(|choice| choice.delta.as_ref().or(choice.message.as_ref()));
            self.apply(usage, reason, delta.map(TypedDelta::view), sink);
            return Ok(false);
        }
        for chunk in parse_event(data)? {
            match chunk {
                Some(chunk) => self.chunk(&chunk, sink)?,
                None => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Takes one chunk (`{"choices": [{"delta": …}]}`, or a whole answer with `message`).
    pub(super) fn chunk(&mut self, chunk: &Value, sink: &mut dyn ReplySink) -> Result<(), Failure> {
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_owned);
            return Err(Failure::Fatal(format!(
                "the model server reported an error: {}",
                excerpt(&message)
            )));
        }
        // The usage chunk (last, with no choices) or the usage of a whole answer.
        let usage = chunk.get("usage").and_then(parse_usage);
        let choice = (chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten())
        .find(|choice| choice.get("index").and_then(Value::as_u64).unwrap_or(0) == 0);
        let reason = choice.and_then(|choice| choice.get("finish_reason").and_then(Value::as_str));
        let delta = choice
            .and_then(|choice| choice.get("delta").or_else(|| choice.get("message")))
            .map(|delta| DeltaView {
                reasoning: [
                    delta.get("reasoning_content").and_then(Value::as_str),
                    delta.get("reasoning").and_then(Value::as_str),
                ],
                content: delta.get("content").and_then(Value::as_str),
                tool_calls: delta
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice),
            });
        self.apply(usage, reason, delta, sink);
        Ok(())
    }

    /// Takes what one chunk holds: its usage, its first choice's finish reason and delta.
    fn apply(
        &mut self,
        usage: Option<Usage>,
        finish_reason: Option<&str>,
        delta: Option<DeltaView>,
        sink: &mut dyn ReplySink,
    ) {
        if let Some(usage) = usage {
            self.usage = Some(usage);
        }
        if let Some(reason) = finish_reason {
            self.finish_reason = Some(reason.to_owned());
        }
        let Some(delta) = delta else {
            return;
        };
        for text in delta.reasoning.into_iter().flatten() {
            self.reason(text, Source::Field, sink);
        }
        if let Some(text) = delta.content {
            if self.think.carry.is_empty() && !text.contains('<') {
                // No tag and no part of one: the text is all answer, or all reasoning.
                match (text.is_empty(), self.think.inside) {
                    (true, _) => {}
                    (false, true) => self.reason(text, Source::Tags, sink),
                    (false, false) => self.say(text, sink),
                }
            } else {
                let mut pieces = Vec::new();
                self.think.push(text, &mut pieces);
                self.take(pieces, sink);
            }
        }
        if let Some(calls) = delta.tool_calls {
            self.end_reasoning(sink);
            for fragment in calls {
                self.calls.add(fragment);
            }
        }
    }

    fn take(&mut self, pieces: Vec<Piece>, sink: &mut dyn ReplySink) {
        for piece in pieces {
            match piece {
                Piece::Answer(text) => self.say(&text, sink),
                Piece::Reasoning(text) => self.reason(&text, Source::Tags, sink),
                Piece::EndOfReasoning => self.end_reasoning(sink),
            }
        }
    }

    fn say(&mut self, text: &str, sink: &mut dyn ReplySink) {
        // An answer does not start with the blank lines that often follow `</think>`.
        let text = if self.answer.is_empty() {
            text.trim_start()
        } else {
            text
        };
        if text.is_empty() {
            return;
        }
        self.end_reasoning(sink);
        self.answer.push_str(text);
        self.pending.push_str(text);
    }

    fn reason(&mut self, text: &str, source: Source, sink: &mut dyn ReplySink) {
        if source != self.reasoning_source {
            self.end_reasoning(sink);
            self.reasoning_source = source;
        }
        self.reasoning.push_str(text);
        if self.reasoning.len() >= THOUGHT_PART_CHARS
            && let Some(at) = self.reasoning.rfind("\n\n")
        {
            let rest = self.reasoning.split_off(at);
            self.end_reasoning(sink);
            self.reasoning = rest;
        }
    }

    /// Passes the reasoning so far on as one thought (after the answer text before it).
    fn end_reasoning(&mut self, sink: &mut dyn ReplySink) {
        let thought = std::mem::take(&mut self.reasoning);
        let thought = thought.trim();
        if !thought.is_empty() {
            self.flush(sink);
            sink.thought(thought);
        }
    }

    /// Passes the answer text not yet passed on as one delta. The reader calls it once it has
    /// read every chunk that had arrived: a delta adds no delay, and a reader that fell behind
    /// sends what it caught up on as one piece.
    pub(super) fn flush(&mut self, sink: &mut dyn ReplySink) {
        if !self.pending.is_empty() {
            sink.delta(&self.pending);
            self.pending.clear();
        }
    }

    /// Ends the answer: the last pieces go out, and the reply is built.
    pub(super) fn finish(mut self, sink: &mut dyn ReplySink) -> ModelReply {
        let mut pieces = Vec::new();
        self.think.finish(&mut pieces);
        self.take(pieces, sink);
        self.end_reasoning(sink);
        self.flush(sink);
        let tool_calls = self.calls.finish();
        let truncated = tool_calls.is_empty()
            && self
                .finish_reason
                .as_deref()
                .is_none_or(|reason| reason == "length");
        ModelReply {
            text: self.answer,
            tool_calls,
            usage: self.usage,
            truncated,
        }
    }
}

/// Splits streamed content into answer and reasoning at `<think>` and `</think>`, even when a
/// tag is cut across chunks.
#[derive(Debug, Default)]
struct ThinkSplitter {
    inside: bool,
    /// The end of the text so far that might be the start of a tag.
    carry: String,
}

/// A piece of streamed content.
#[derive(Debug, PartialEq)]
enum Piece {
    Answer(String),
    Reasoning(String),
    /// A `</think>`: the reasoning so far is complete.
    EndOfReasoning,
}

impl ThinkSplitter {
    const OPEN: &'static str = "<think>";
    const CLOSE: &'static str = "</think>";

    fn push(&mut self, text: &str, out: &mut Vec<Piece>) {
        let mut rest = std::mem::take(&mut self.carry);
        rest.push_str(text);
        let mut rest = rest.as_str();
        loop {
            let tag = if self.inside { Self::CLOSE } else { Self::OPEN };
            if let Some(at) = rest.find(tag) {
                self.emit(&rest[..at], out);
                if self.inside {
                    out.push(Piece::EndOfReasoning);
                }
                self.inside = !self.inside;
                rest = &rest[at + tag.len()..];
                continue;
            }
            // Keep back what could be the start of the tag (tags are ASCII, so the cut is on a
            // character boundary).
            let keep = (1..tag.len())
                .rev()
                .find(|&n| rest.ends_with(&tag[..n]))
                .unwrap_or(0);
            let cut = rest.len() - keep;
            self.emit(&rest[..cut], out);
            self.carry = rest[cut..].to_owned();
            return;
        }
    }

    fn finish(&mut self, out: &mut Vec<Piece>) {
        let carry = std::mem::take(&mut self.carry);
        self.emit(&carry, out);
    }

    fn emit(&self, text: &str, out: &mut Vec<Piece>) {
        if text.is_empty() {
            return;
        }
        out.push(if self.inside {
            Piece::Reasoning(text.to_owned())
        } else {
            Piece::Answer(text.to_owned())
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::ToolArgs;

    #[derive(Default)]
    struct Recorder {
        thoughts: Vec<String>,
        deltas: Vec<String>,
    }

    impl ReplySink for Recorder {
        fn thought(&mut self, text: &str) {
            self.thoughts.push(text.to_owned());
        }
        fn delta(&mut self, text: &str) {
            self.deltas.push(text.to_owned());
        }
        fn is_cancelled(&self) -> bool {
            false
        }
    }

    /// Feeds `chunks` (as `data:` payloads) through the stream state, and checks that reading
    /// them as values gives the same.
    fn run(chunks: &[Value]) -> (ModelReply, Recorder) {
        let mut sink = Recorder::default();
        let mut state = StreamState::new();
        for chunk in chunks {
            assert!(!state.event(&chunk.to_string(), &mut sink).unwrap());
        }
        let reply = state.finish(&mut sink);
        let (by_value, by_value_sink) = run_values(chunks);
        assert_eq!(
            (&reply.text, reply.usage, reply.truncated),
            (&by_value.text, by_value.usage, by_value.truncated)
        );
        let calls = |reply: &ModelReply| {
            let calls = reply.tool_calls.iter();
            calls
                .map(|c| (c.name.clone(), c.args.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(calls(&reply), calls(&by_value));
        assert_eq!(
            (&sink.deltas, &sink.thoughts),
            (&by_value_sink.deltas, &by_value_sink.thoughts)
        );
        (reply, sink)
    }

    /// Feeds `chunks` through the stream state as values.
    fn run_values(chunks: &[Value]) -> (ModelReply, Recorder) {
        let mut sink = Recorder::default();
        let mut state = StreamState::new();
        for chunk in chunks {
            state.chunk(chunk, &mut sink).unwrap();
        }
        (state.finish(&mut sink), sink)
    }

    fn content(text: &str) -> Value {
        json!({"choices": [{"index": 0, "delta": {"content": text}}]})
    }

    fn calls(fragments: Value) -> Value {
        json!({"choices": [{"index": 0, "delta": {"tool_calls": fragments}}]})
    }

    #[test]
    fn events_without_blank_lines_between_them_are_read_line_by_line() {
        let parsed = parse_event("{\"a\":1}\n{\"b\":2}\n[DONE]").unwrap();
        assert_eq!(parsed, [Some(json!({"a": 1})), Some(json!({"b": 2})), None]);
        assert!(parse_event("{broken").is_err());
    }

    #[test]
    fn streamed_text_becomes_deltas_and_the_reply() {
        let (reply, sink) = run(&[content("Hel"), content("lo"), content(" there")]);
        assert_eq!(reply.text, "Hello there");
        assert!(reply.tool_calls.is_empty());
        assert_eq!(sink.deltas.concat(), "Hello there");
        assert!(!sink.deltas.is_empty());
    }

    #[test]
    fn the_usage_chunk_becomes_the_reply_usage() {
        let (reply, _) = run(&[
            json!({"choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": null}),
            json!({"choices": [], "usage": {"prompt_tokens": 31, "completion_tokens": 4, "total_tokens": 35}}),
        ]);
        assert_eq!(reply.text, "Hi");
        assert_eq!(
            reply.usage,
            Some(Usage {
                prompt_tokens: 31,
                completion_tokens: 4
            })
        );
        assert_eq!(run(&[content("no count")]).0.usage, None);
    }

    #[test]
    fn openai_fragments_are_joined_by_index() {
        let (reply, _) = run(&[
            calls(json!([{"index": 0, "id": "call_a", "type": "function",
                "function": {"name": "calculator", "arguments": ""}}])),
            calls(json!([{"index": 0, "function": {"arguments": "{\"expr"}}])),
            calls(json!([{"index": 0, "function": {"arguments": "ession\": \"1+2\"}"}}])),
            calls(
                json!([{"index": 1, "id": "call_b", "function": {"name": "clock", "arguments": ""}}]),
            ),
            calls(json!([{"index": 1, "function": {"arguments": "{}"}}])),
        ]);
        let calls = reply.tool_calls;
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].id, "call_a");
        assert_eq!(calls[0].name, "calculator");
        assert_eq!(calls[0].args, ToolArgs::from(json!({"expression": "1+2"})));
        assert_eq!(
            (calls[1].id.as_str(), calls[1].name.as_str()),
            ("call_b", "clock")
        );
        assert_eq!(calls[1].args, ToolArgs::from(json!({})));
    }

    #[test]
    fn ollama_whole_calls_at_index_zero_stay_apart() {
        // With ids.
        let (reply, _) = run(&[
            calls(
                json!([{"index": 0, "id": "c1", "function": {"name": "a", "arguments": "{\"x\":1}"}}]),
            ),
            calls(
                json!([{"index": 0, "id": "c2", "function": {"name": "b", "arguments": "{\"y\":2}"}}]),
            ),
        ]);
        let names: Vec<&str> = reply.tool_calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(reply.tool_calls[1].args, ToolArgs::from(json!({"y": 2})));
        // Without ids, in one chunk: a new name after a complete call is a new call.
        let (reply, _) = run(&[calls(json!([
            {"index": 0, "function": {"name": "a", "arguments": "{\"x\":1}"}},
            {"index": 0, "function": {"name": "a", "arguments": "{\"x\":2}"}},
        ]))]);
        assert_eq!(reply.tool_calls.len(), 2);
        assert_eq!(reply.tool_calls[0].args, ToolArgs::from(json!({"x": 1})));
        assert_eq!(reply.tool_calls[1].args, ToolArgs::from(json!({"x": 2})));
        assert_ne!(reply.tool_calls[0].id, reply.tool_calls[1].id);
        assert!(reply.tool_calls[0].id.starts_with("call_"));
    }

    #[test]
    fn a_repeated_id_is_the_same_call() {
        let (reply, _) = run(&[
            calls(
                json!([{"index": 0, "id": "c1", "function": {"name": "a", "arguments": "{\"x\""}}]),
            ),
            calls(json!([{"index": 0, "id": "c1", "function": {"name": "a", "arguments": ":1}"}}])),
            calls(json!([{"index": 0, "id": "c1", "function": {"name": "a", "arguments": ""}}])),
        ]);
        assert_eq!(reply.tool_calls.len(), 1);
        assert_eq!(reply.tool_calls[0].args, ToolArgs::from(json!({"x": 1})));
    }

    #[test]
    fn arguments_may_be_an_object_and_ids_may_be_missing() {
        let (reply, _) = run(&[calls(json!([
            {"function": {"name": "calculator", "arguments": {"expression": "2*3"}}},
            {"function": {"name": "clock", "arguments": {}}},
        ]))]);
        assert_eq!(reply.tool_calls.len(), 2);
        assert_eq!(
            reply.tool_calls[0].args,
            ToolArgs::from(json!({"expression": "2*3"}))
        );
        assert_eq!(reply.tool_calls[1].name, "clock");
    }

    #[test]
    fn bad_arguments_are_passed_on_marked() {
        let (reply, _) = run(&[calls(
            json!([{"index": 0, "id": "c", "function": {"name": "a", "arguments": "{\"x\": oops"}}]),
        )]);
        assert_eq!(
            reply.tool_calls[0].args,
            ToolArgs::Unparsed("{\"x\": oops".into())
        );
    }

    #[test]
    fn think_tags_split_across_chunks_become_thoughts() {
        let (reply, sink) = run(&[
            content("<thi"),
            content("nk>Let me see"),
            content(". Two plus two.</th"),
            content("ink>\n\nIt is "),
            content("4 <b>bold</b>"),
        ]);
        assert_eq!(reply.text, "It is 4 <b>bold</b>");
        assert_eq!(sink.thoughts, ["Let me see. Two plus two."]);
        assert_eq!(sink.deltas.concat(), reply.text);
        // Chunks with no `<` at all, inside and outside the tags.
        let (reply, sink) = run(&[
            content("<think>"),
            content("Plain "),
            content(""),
            content("reasoning."),
            content("</think>"),
            content(""),
            content("\n\nThe answer"),
            content(" is 4."),
        ]);
        assert_eq!(reply.text, "The answer is 4.");
        assert_eq!(sink.thoughts, ["Plain reasoning."]);
    }

    #[test]
    fn reasoning_fields_become_thoughts() {
        let reasoning =
            |field: &str, text: &str| json!({"choices": [{"index": 0, "delta": {field: text}}]});
        let (reply, sink) = run(&[
            reasoning("reasoning_content", "Think"),
            reasoning("reasoning_content", "ing."),
            content("Answer"),
            reasoning("reasoning", "More."),
        ]);
        assert_eq!(reply.text, "Answer");
        assert_eq!(sink.thoughts, ["Thinking.", "More."]);
    }

    #[test]
    fn an_unfinished_tag_at_the_end_is_text() {
        let (reply, _) = run(&[content("a <thin")]);
        assert_eq!(reply.text, "a <thin");
    }

    #[test]
    fn a_whole_answer_is_read_like_a_chunk() {
        let whole = json!({"choices": [{"index": 0, "message": {
            "role": "assistant", "content": "Hi",
            "tool_calls": [{"id": "x", "type": "function",
                "function": {"name": "clock", "arguments": "{}"}}]}}]});
        let (reply, _) = run(&[whole]);
        assert_eq!(reply.text, "Hi");
        assert_eq!(reply.tool_calls[0].id, "x");
    }

    #[test]
    fn an_error_chunk_fails_the_step() {
        let mut state = StreamState::new();
        let failure = state
            .chunk(
                &json!({"error": {"message": "model not found"}}),
                &mut Recorder::default(),
            )
            .unwrap_err();
        assert!(matches!(failure, Failure::Fatal(m) if m.contains("model not found")));
    }

    #[test]
    fn chunks_of_other_shapes_read_as_they_do_as_values() {
        let (reply, sink) = run(&[
            json!({"choices": [{"index": 1, "delta": {"content": "other choice"}}]}),
            json!({"choices": [{"delta": null, "message": {"content": "not read"}}]}),
            json!({"choices": [{"index": null, "delta": {"content": "a\n\"b\" \u{e9}", "role": 7}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": 5, "reasoning": "R"}}]}),
            json!({"choices": [{"delta": {"content": null}, "finish_reason": "stop"}]}),
            json!({"choices": "none", "usage": {"prompt_tokens": 2, "completion_tokens": -1}}),
            json!({"choices": [3], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}),
            json!([1, 2]),
        ]);
        assert_eq!(reply.text, "a\n\"b\" \u{e9}");
        assert_eq!(sink.thoughts, ["R"]);
        assert!(!reply.truncated);
        assert_eq!(
            reply.usage,
            Some(Usage {
                prompt_tokens: 2,
                completion_tokens: 1
            })
        );
        let mut state = StreamState::new();
        let failure = state
            .event(r#"{"error": null}"#, &mut Recorder::default())
            .unwrap_err();
        assert!(matches!(failure, Failure::Fatal(m) if m.contains("null")));
        assert!(
            state
                .event("{\"a\":1}\n[DONE]", &mut Recorder::default())
                .unwrap()
        );
    }
}
