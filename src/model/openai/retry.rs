//! Why a model request failed, and whether and when it is tried again: failures classified
//! from the HTTP status and the body (a malformed history, a context overflow, a request no
//! retry can fix), the backoff with jitter, and the wait a server's `Retry-After` (seconds or
//! an HTTP date) or `retry-after-ms` asks for.
//!
//! Depends on nothing in the crate.

use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Characters of an error answer that go into the error message.
const ERROR_EXCERPT_CHARS: usize = 500;

/// A `Retry-After` longer than this is not waited for: the turn fails and says so.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// How servers say that the conversation does not fit the model's context: llama.cpp's
/// server, Ollama, vLLM and OpenAI, as seen in their answers. The history is then dropped and
/// the step tried once more, so that one long conversation does not fail every later turn.
const CONTEXT_OVERFLOW: &[&str] = &[
    "exceeds the available context size",
    "maximum context length",
    "context_length_exceeded",
    "context length exceeded",
    "exceeds the context window",
    "prompt is too long",
    "too many tokens",
];

/// How servers say that the request itself is wrong, whatever status they answer it with
/// (llama-cpp-python answers a schema error with a 500): trying it again cannot help.
const INVALID_REQUEST: &[&str] = &[
    "validation error",
    "invalid_request_error",
    "invalid request",
    "input should be",
    "field required",
];

/// Phrases (lowercase) with which servers reject a conversation whose tool messages do not
/// follow the assistant message that called them, or whose roles are out of order.
const MALFORMED_HISTORY: &[&str] = &[
    // OpenAI (with its spelling), vLLM, LiteLLM.
    "must be a response to a preceeding message with 'tool_calls'",
    "must be a response to a preceding message with 'tool_calls'",
    "must be followed by tool messages responding to each 'tool_call_id'",
    "did not have response messages",
    // Gemini's OpenAI-compatible endpoint.
    "function response turn comes immediately after a function call turn",
    "function call turn comes immediately after a user turn",
    // Anthropic-style tool blocks behind a compatible proxy.
    "tool_use ids were found without tool_result blocks",
    "unexpected `tool_use_id` found in `tool_result` blocks",
    // Mistral and chat templates that insist on alternating roles.
    "unexpected role 'tool'",
    "not the same number of function calls and responses",
    "roles must alternate",
];

/// How failed requests are tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt, at most.
    pub max_retries: u32,
    /// The wait before the first retry; each later one doubles it (then up to half is taken
    /// off at random, so that many clients do not retry in step).
    pub base_delay: Duration,
    /// The longest wait computed by backoff (a server's `Retry-After` may ask for more, up to
    /// two minutes).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// What follows attempt number `attempt` (1 for the first) when it failed in a way worth
    /// trying again: the wait before the next attempt (what the server asked for, else
    /// [`backoff`]), or the failure the step ends with, once the retries are used up or the
    /// server asks for too long a wait.
    pub(super) fn next_delay(
        &self,
        attempt: u32,
        detail: &str,
        retry_after: Option<Duration>,
    ) -> Result<Duration, Failure> {
        if attempt > self.max_retries {
            return Err(Failure::Fatal(format!(
                "{detail} (gave up after {attempt} attempts)"
            )));
        }
        match retry_after {
            Some(wait) if wait > MAX_RETRY_AFTER => Err(Failure::Fatal(format!(
                "{detail} (the server asked to wait {} s; not waiting that long)",
                wait.as_secs()
            ))),
            Some(wait) => Ok(wait),
            None => Ok(backoff(self, attempt, jitter())),
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, PartialEq)]
pub(super) enum Failure {
    /// The turn was cancelled.
    Cancelled,
    /// Worth trying again: no answer, or 408, 429, 5xx.
    Retryable {
        /// What went wrong.
        detail: String,
        /// The wait the server asked for, if it did.
        retry_after: Option<Duration>,
    },
    /// The server says the conversation history is malformed.
    HistoryRejected(String),
    /// Anything else.
    Fatal(String),
}

/// What a failed `send` (no answer at all) means.
pub(super) fn send_failure(error: ureq::Error) -> Failure {
    use ureq::Timeout;
    let detail = format!("the model server could not be reached: {error}");
    match error {
        ureq::Error::Io(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Timeout(Timeout::Resolve | Timeout::Connect) => Failure::Retryable {
            detail,
            retry_after: None,
        },
        ureq::Error::Timeout(_) => {
            Failure::Fatal(format!("the model server did not answer in time: {error}"))
        }
        _ => Failure::Fatal(detail),
    }
}

/// What an answer with an unsuccessful `status` means.
pub(super) fn classify(
    status: u16,
    status_line: &str,
    body: &str,
    retry_after: Option<Duration>,
) -> Failure {
    let detail = format!(
        "the model server answered {status_line}: {}",
        error_message(body)
    );
    let says = |phrases: &[&str]| {
        let body = body.to_lowercase();
        phrases.iter().any(|phrase| body.contains(phrase))
    };
    match status {
        400 | 413 | 422 | 500 if says(CONTEXT_OVERFLOW) => Failure::HistoryRejected(detail),
        400 | 422 if is_malformed_history(body) => Failure::HistoryRejected(detail),
        500..=599 if says(INVALID_REQUEST) => Failure::Fatal(detail),
        408 | 429 | 500..=599 => Failure::Retryable {
            detail,
            retry_after,
        },
        _ => Failure::Fatal(detail),
    }
}

/// True when an error body says that the conversation's tool messages or roles are out of
/// order.
fn is_malformed_history(body: &str) -> bool {
    let body = body.to_lowercase();
    MALFORMED_HISTORY.iter().any(|phrase| body.contains(phrase))
}

/// The message inside an error body (`{"error": {"message": …}}`, `{"error": "…"}`,
/// `{"message": …}`), or the start of the body.
pub(super) fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|value| {
        let error = value.get("error").unwrap_or(value);
        error
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| error.as_str())
    });
    match message {
        Some(message) => excerpt(message),
        None if body.trim().is_empty() => "(no body)".into(),
        None => excerpt(body.trim()),
    }
}

/// The first few hundred characters of `text`.
pub(super) fn excerpt(text: &str) -> String {
    let mut chars = text.chars();
    let mut short: String = chars.by_ref().take(ERROR_EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        short.push('…');
    }
    short
}

/// The wait a `retry-after-ms` or `Retry-After` header asks for (seconds or an HTTP date).
pub(super) fn retry_after(headers: &ureq::http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return duration_from_secs(ms / 1000.0);
    }
    parse_retry_after(header("retry-after")?, now)
}

/// Reads a `Retry-After` value: seconds (maybe with a fraction) or an HTTP date such as
/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return duration_from_secs(seconds);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn duration_from_secs(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| Duration::try_from_secs_f64(seconds).ok())
        .flatten()
}

/// The wait before retry number `attempt` (1 for the first): the base delay doubled per
/// attempt, capped, less up to half of it at random (`jitter` in `0..=1`).
fn backoff(policy: &RetryPolicy, attempt: u32, jitter: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    let full = policy
        .base_delay
        .saturating_mul(factor)
        .min(policy.max_delay);
    full.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
}

/// A number in `0..=1` from the OS's random source (0 if it has none).
fn jitter() -> f64 {
    getrandom::u32().map_or(0.0, |n| f64::from(n) / f64::from(u32::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn statuses_are_classified() {
        let history = r#"{"error": {"message": "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'."}}"#;
        assert!(matches!(
            classify(400, "400 Bad Request", history, None),
            Failure::HistoryRejected(_)
        ));
        let gemini = "Please ensure that function response turn comes immediately after a function call turn.";
        assert!(matches!(
            classify(400, "400", gemini, None),
            Failure::HistoryRejected(_)
        ));
        assert!(matches!(
            classify(429, "429", "", Some(Duration::from_secs(1))),
            Failure::Retryable { retry_after: Some(d), .. } if d == Duration::from_secs(1)
        ));
        assert!(matches!(
            classify(503, "503", "busy", None),
            Failure::Retryable { .. }
        ));
        let Failure::Fatal(detail) = classify(
            404,
            "404 Not Found",
            r#"{"error": "model 'x' not found"}"#,
            None,
        ) else {
            panic!("a 404 is not retried");
        };
        assert_eq!(
            detail,
            "the model server answered 404 Not Found: model 'x' not found"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        // 1994-11-06 08:49:37 UTC is 784111777.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        let huge = "Sun, 99999999999 Nov 99999999999 08:49:37 GMT";
        assert_eq!(parse_retry_after(huge, now), None);
        // The two obsolete forms HTTP still asks recipients to read.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:37 1994", now),
            Some(Duration::from_secs(7))
        );
        // A date in the past means now.
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retries_end_when_used_up_or_asked_to_wait_too_long() {
        let policy = RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let wait = Some(Duration::from_secs(3));
        assert_eq!(
            policy.next_delay(1, "busy", wait),
            Ok(Duration::from_secs(3))
        );
        let backoff = policy.next_delay(2, "busy", None).unwrap();
        assert!((Duration::from_millis(100)..=Duration::from_millis(200)).contains(&backoff));
        assert_eq!(
            policy.next_delay(3, "busy", None),
            Err(Failure::Fatal("busy (gave up after 3 attempts)".into()))
        );
        assert_eq!(
            policy.next_delay(1, "busy", Some(Duration::from_secs(121))),
            Err(Failure::Fatal(
                "busy (the server asked to wait 121 s; not waiting that long)".into()
            ))
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let policy = RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        assert_eq!(backoff(&policy, 1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(&policy, 2, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(&policy, 3, 0.0), Duration::from_millis(350));
        assert_eq!(backoff(&policy, 2, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&policy, 40, 0.0), Duration::from_millis(350));
    }
}
