//! The built-in tools that need no outside service: session notes, calculator, clock and wait.
//!
//! Depends on: `tools`, `tools::calculator`, `tools::error`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

use crate::tools::calculator;
use crate::tools::error::ToolError;
use crate::tools::{Tool, ToolContext, string_arg};

/// The longest `wait` allowed.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Every built-in tool, in the order `ready` lists them.
pub fn all() -> Vec<Arc<dyn Tool>> {
    vec![
        Arc::new(SessionNote),
        Arc::new(SessionNotes),
        Arc::new(Calculator),
        Arc::new(Clock),
        Arc::new(Wait),
    ]
}

/// `session_note`: keeps a note in the calling session's short-term knowledge.
#[derive(Debug)]
pub struct SessionNote;

impl Tool for SessionNote {
    fn name(&self) -> &str {
        "session_note"
    }
    fn description(&self) -> &str {
        "Keep a short note in this session's memory. Other sessions never see it."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"text": {"type": "string", "description": "the note"}},
               "required": ["text"]})
    }
    fn call(&self, args: &Value, ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        let count = ctx.knowledge.add_note(string_arg(args, "text")?)?;
        Ok(format!(
            "Noted. This session has {count} note{}.",
            if count == 1 { "" } else { "s" }
        ))
    }
}

/// `session_notes`: lists the calling session's notes.
#[derive(Debug)]
pub struct SessionNotes;

impl Tool for SessionNotes {
    fn name(&self) -> &str {
        "session_notes"
    }
    fn description(&self) -> &str {
        "List the notes kept in this session."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {}})
    }
    fn call(&self, _args: &Value, ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        let notes = ctx.knowledge.notes();
        if notes.is_empty() {
            return Ok("This session has no notes.".to_owned());
        }
        let lines: Vec<String> = notes
            .iter()
            .enumerate()
            .map(|(i, note)| format!("{}. {note}", i + 1))
            .collect();
        Ok(lines.join("\n"))
    }
}

/// `calculator`: evaluates arithmetic.
#[derive(Debug)]
pub struct Calculator;

impl Tool for Calculator {
    fn name(&self) -> &str {
        "calculator"
    }
    fn description(&self) -> &str {
        "Evaluate an arithmetic expression with + - * / % ^, parentheses and decimals."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object",
               "properties": {"expression": {"type": "string", "description": "e.g. (2 + 3) * 4"}},
               "required": ["expression"]})
    }
    fn call(&self, args: &Value, _ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        let expression = string_arg(args, "expression")?;
        let value = calculator::evaluate(expression)?;
        Ok(format!(
            "{} = {}",
            expression.trim(),
            calculator::format_number(value)
        ))
    }
}

/// `clock`: the server's time.
#[derive(Debug)]
pub struct Clock;

impl Tool for Clock {
    fn name(&self) -> &str {
        "clock"
    }
    fn description(&self) -> &str {
        "The current date and time on the server, in UTC."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {}})
    }
    fn call(&self, _args: &Value, _ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| ToolError::Failed {
                detail: "the server's clock is before 1970".to_owned(),
                source: Some(Box::new(e)),
            })?
            .as_secs();
        Ok(format!(
            "It is {} UTC (unix time {seconds}).",
            format_utc(seconds)
        ))
    }
}

/// `wait`: sleeps, and stops at once when the turn is cancelled.
#[derive(Debug)]
pub struct Wait;

impl Tool for Wait {
    fn name(&self) -> &str {
        "wait"
    }
    fn description(&self) -> &str {
        "Wait for a number of milliseconds (at most 60000)."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object",
               "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": 60000}},
               "required": ["ms"]})
    }
    fn call(&self, args: &Value, ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        let ms = match args.get("ms") {
            Some(value) => value.as_u64().ok_or_else(|| {
                ToolError::Arguments(format!(
                    "\"ms\" must be a whole number of milliseconds, not {value}"
                ))
            })?,
            None => return Err(ToolError::Arguments("missing argument \"ms\"".to_owned())),
        };
        let duration = Duration::from_millis(ms);
        if duration > MAX_WAIT {
            return Err(ToolError::Arguments(format!(
                "\"ms\" must be at most {}",
                MAX_WAIT.as_millis()
            )));
        }
        if ctx.cancel.sleep(duration) {
            return Err(ToolError::Cancelled);
        }
        Ok(format!("Waited {ms} ms."))
    }
}

/// How `clock` writes a time: `YYYY-MM-DD HH:MM:SS`.
const CLOCK_FORMAT: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");

/// Writes unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC).
fn format_utc(unix_seconds: u64) -> String {
    i64::try_from(unix_seconds)
        .ok()
        .and_then(|seconds| OffsetDateTime::from_unix_timestamp(seconds).ok())
        .and_then(|at| at.format(CLOCK_FORMAT).ok())
        .unwrap_or_else(|| format!("unix time {unix_seconds}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::auth::Principal;
    use crate::common::cancel::CancelFlag;
    use crate::tools::knowledge::Knowledge;

    /// Runs `tool`; an error as the text the model would read.
    fn run(tool: &dyn Tool, args: Value) -> Result<String, String> {
        let knowledge = Knowledge::new();
        let cancel = CancelFlag::new();
        tool.call(
            &args,
            &ToolContext {
                conversation: None,
                principal: &Principal::local(),
                knowledge: &knowledge,
                cancel: &cancel,
                progress: None,
                ask: None,
            },
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn formats_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_utc(1_795_000_000), "2026-11-18 11:06:40");
        // Past the calendar's range the time is still told, as a number.
        assert_eq!(format_utc(u64::MAX), format!("unix time {}", u64::MAX));
    }

    #[test]
    fn calculator_answers_and_explains_errors() {
        assert_eq!(
            run(&Calculator, json!({"expression": "2+2"})),
            Ok("2+2 = 4".to_owned())
        );
        assert_eq!(
            run(&Calculator, json!({"expression": "1/0"})),
            Err("division by zero".into())
        );
        assert_eq!(
            run(&Calculator, json!({})),
            Err("missing argument \"expression\"".into())
        );
        assert_eq!(
            run(&Calculator, json!({"expression": 3})),
            Err("\"expression\" must be a string, not 3".into())
        );
    }

    #[test]
    fn wait_checks_its_argument_and_stops_when_cancelled() {
        assert_eq!(
            run(&Wait, json!({"ms": 60_001})),
            Err("\"ms\" must be at most 60000".into())
        );
        assert_eq!(
            run(&Wait, json!({"ms": "5"})),
            Err("\"ms\" must be a whole number of milliseconds, not \"5\"".into())
        );
        assert_eq!(run(&Wait, json!({"ms": 1})), Ok("Waited 1 ms.".to_owned()));
        let knowledge = Knowledge::new();
        let cancel = CancelFlag::new();
        cancel.cancel();
        let ctx = ToolContext {
            conversation: None,
            principal: &Principal::local(),
            knowledge: &knowledge,
            cancel: &cancel,
            progress: None,
            ask: None,
        };
        let cancelled = Wait.call(&json!({"ms": 60_000}), &ctx);
        assert!(
            matches!(cancelled, Err(ToolError::Cancelled)),
            "{cancelled:?}"
        );
    }

    #[test]
    fn notes_stay_in_their_knowledge() {
        let (mine, theirs) = (Knowledge::new(), Knowledge::new());
        let cancel = CancelFlag::new();
        let ctx = ToolContext {
            conversation: None,
            principal: &Principal::local(),
            knowledge: &mine,
            cancel: &cancel,
            progress: None,
            ask: None,
        };
        SessionNote
            .call(&json!({"text": "buy milk"}), &ctx)
            .unwrap();
        assert_eq!(SessionNotes.call(&json!({}), &ctx).unwrap(), "1. buy milk");
        let other = ToolContext {
            conversation: None,
            principal: &Principal::local(),
            knowledge: &theirs,
            cancel: &cancel,
            progress: None,
            ask: None,
        };
        assert_eq!(
            SessionNotes.call(&json!({}), &other).unwrap(),
            "This session has no notes."
        );
    }
}
