//! The agent loop's tests: whole turns run on fake models (a script, a loop) and fake tools,
//! their events recorded: answers, tool calls side by side, approvals, the step limit, a
//! rejected history, usage, the system prompt.
//!
//! Depends on: `common::error`, `common::protocol`, `conversation::agent`,
//! `conversation::approval`, `model`, `model::offline`, `tools`, `tools::ask`, `tools::error`.

use std::time::Instant;

use parking_lot::Mutex;
use serde_json::{Value, json};

use super::*;
use crate::common::error::Result;
use crate::conversation::approval::Verdict;
use crate::model::offline::OfflineModel;
use crate::model::{ModelBackend, ModelReply, ToolArgs, ToolCall, ToolSpec};
use crate::tools::error::ToolError;
use crate::tools::{Tool, ToolChain, ToolContext};

/// Records what a turn sends; refuses everything once `open` is false.
struct Recorder {
    frames: Mutex<Vec<ServerFrame>>,
    committed: Mutex<Vec<ChatMessage>>,
    reset: Mutex<bool>,
    open: bool,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            frames: Mutex::new(Vec::new()),
            committed: Mutex::new(Vec::new()),
            reset: Mutex::new(false),
            open: true,
        }
    }
}

impl TurnEvents for Recorder {
    fn emit(&self, frame: ServerFrame) -> bool {
        self.open && {
            self.frames.lock().push(frame);
            true
        }
    }
    fn close(&self, frame: ServerFrame, transcript: Vec<ChatMessage>) -> bool {
        self.open && {
            self.frames.lock().push(frame);
            self.committed.lock().extend(transcript);
            true
        }
    }
    fn close_resetting(&self, frame: ServerFrame, transcript: Vec<ChatMessage>) -> bool {
        self.committed.lock().clear();
        *self.reset.lock() = true;
        self.close(frame, transcript)
    }
    fn ask_approval(&self, _call_id: &str, request: ServerFrame) -> bool {
        self.emit(request)
    }
    fn ask_sampling(&self, _request_id: &str, _server: &str, request: ServerFrame) -> bool {
        self.emit(request)
    }
    fn await_approval(&self, call_id: &str, _: Instant, _: &CancelFlag) -> Verdict {
        // The test names the verdict in the call id.
        match call_id {
            "allow" | "allow/ask-1" => Verdict::Allowed,
            "late" => Verdict::TimedOut,
            "stop" => Verdict::Cancelled,
            _ => Verdict::Denied,
        }
    }
}

struct Echo;
impl Tool for Echo {
    fn name(&self) -> &str {
        "echo"
    }
    fn description(&self) -> &str {
        "echoes"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object"})
    }
    fn call(&self, args: &Value, _ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        Ok(args.to_string())
    }
}

/// A model that always calls a tool, to hit the step limit.
struct Loop;
impl ModelBackend for Loop {
    fn name(&self) -> String {
        "loop".into()
    }
    fn complete(
        &self,
        _: Conversation<'_>,
        _: &[ToolSpec],
        _: &mut dyn ReplySink,
    ) -> Result<ModelReply> {
        let call = ToolCall {
            id: "x".into(),
            name: "echo".into(),
            args: json!({}).into(),
        };
        Ok(ModelReply {
            text: String::new(),
            tool_calls: vec![call],
            ..ModelReply::default()
        })
    }
}

fn engine(model: Arc<dyn ModelBackend>) -> Engine {
    let mut tools = ToolChain::new();
    tools.add(Arc::new(Echo));
    Engine::for_tests(model, tools)
}

fn run(bot: &Bot, text: &str, events: &Recorder) -> TurnOutcome {
    Turn::start(bot, TurnId(1), text, &Principal::local()).run(
        events,
        &CancelFlag::new(),
        &Knowledge::new(),
    )
}

#[test]
fn a_tool_turn_sends_use_result_and_answer_and_commits_all_of_it() {
    let bot = Bot::new(
        engine(Arc::new(OfflineModel)),
        Some("be nice".into()),
        Vec::new(),
    );
    let events = Recorder::new();
    assert_eq!(
        run(&bot, "/tool echo {\"a\":1}", &events),
        TurnOutcome::Answered
    );
    let frames = events.frames.lock();
    assert!(matches!(frames[0], ServerFrame::Thought { .. }));
    assert!(matches!(&frames[1], ServerFrame::ToolUse { name, .. } if name == "echo"));
    assert!(matches!(&frames[2], ServerFrame::ToolResult { result, .. } if result == "{\"a\":1}"));
    assert!(matches!(&frames[3], ServerFrame::Message { text, .. } if text == "{\"a\":1}"));
    let roles: Vec<Role> = events.committed.lock().iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::User, Role::Assistant, Role::Tool, Role::Assistant]
    );
}

#[test]
fn the_step_limit_ends_the_turn_with_an_error_and_a_clean_history() {
    let bot = Bot::new(engine(Arc::new(Loop)), None, Vec::new());
    let events = Recorder::new();
    assert_eq!(run(&bot, "go", &events), TurnOutcome::Failed);
    let last = events.frames.lock().last().cloned();
    assert!(matches!(
        last,
        Some(ServerFrame::Error {
            code: ErrorCode::StepLimit,
            ..
        })
    ));
    let roles: Vec<Role> = events.committed.lock().iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::User, Role::Assistant]);
}

#[test]
fn a_refused_emit_stops_the_turn() {
    let bot = Bot::new(engine(Arc::new(OfflineModel)), None, Vec::new());
    let events = Recorder {
        open: false,
        ..Recorder::new()
    };
    assert_eq!(run(&bot, "hello", &events), TurnOutcome::Cancelled);
    assert!(events.frames.lock().is_empty());
}

/// A model that answers from a script, one entry per step, and records how much earlier
/// conversation each step saw.
struct Scripted {
    replies: Mutex<Vec<Result<ModelReply>>>,
    earlier_seen: Mutex<Vec<usize>>,
}

impl Scripted {
    fn new(mut replies: Vec<Result<ModelReply>>) -> Self {
        replies.reverse();
        Scripted {
            replies: Mutex::new(replies),
            earlier_seen: Mutex::new(Vec::new()),
        }
    }
}

impl ModelBackend for Scripted {
    fn name(&self) -> String {
        "scripted".into()
    }
    fn complete(
        &self,
        conversation: Conversation<'_>,
        _: &[ToolSpec],
        _: &mut dyn ReplySink,
    ) -> Result<ModelReply> {
        self.earlier_seen.lock().push(conversation.earlier.len());
        self.replies.lock().pop().unwrap_or_else(|| {
            Err(Error::Model {
                backend: "scripted".into(),
                detail: "out of script".into(),
            })
        })
    }
}

fn answer(text: &str) -> Result<ModelReply> {
    Ok(ModelReply {
        text: text.into(),
        tool_calls: Vec::new(),
        ..ModelReply::default()
    })
}

fn rejected() -> Result<ModelReply> {
    Err(Error::HistoryRejected {
        backend: "scripted".into(),
        detail: "bad history".into(),
    })
}

fn statuses(frames: &[ServerFrame]) -> Vec<StatusCode> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            ServerFrame::Status(status) => Some(status.code),
            _ => None,
        })
        .collect()
}

#[test]
fn a_rejected_history_is_dropped_once_and_the_step_retried() {
    let model = Arc::new(Scripted::new(vec![rejected(), answer("fine")]));
    let mut bot = Bot::new(engine(model.clone()), Some("sys".into()), Vec::new());
    bot.commit(vec![
        ChatMessage::text(Role::User, "old"),
        ChatMessage::text(Role::Assistant, "old answer"),
    ]);
    let events = Recorder::new();
    assert_eq!(run(&bot, "new", &events), TurnOutcome::Answered);
    assert_eq!(*model.earlier_seen.lock(), [2, 0]);
    assert_eq!(statuses(&events.frames.lock()), [StatusCode::HistoryReset]);
    assert!(*events.reset.lock());
    let committed: Vec<String> = events
        .committed
        .lock()
        .iter()
        .map(|m| m.content.clone())
        .collect();
    assert_eq!(committed, ["new", "fine"]);
    let next = bot.next_index();
    bot.clear_history();
    assert!(bot.history().is_empty());
    assert_eq!(bot.next_index(), next, "numbering goes on");
}

/// A tool source with no tools and fixed instructions.
struct Instructed(&'static str);

impl crate::tools::ToolSource for Instructed {
    fn tools(&self) -> Arc<[Arc<dyn crate::tools::Tool>]> {
        Arc::from([])
    }
    fn generation(&self) -> u64 {
        0
    }
    fn instructions(&self) -> String {
        self.0.to_owned()
    }
}

#[test]
fn the_tools_instructions_follow_the_system_prompt() {
    let text = "Instructions from the MCP server fx:\nCall echo first.";
    let mut engine = engine(Arc::new(Scripted::new(Vec::new())));
    let mut tools = (*engine.tools).clone();
    tools.set_source(Arc::new(Instructed(text)));
    engine.tools = Arc::new(tools);
    let bot = Bot::new(engine.clone(), Some("be a pirate".into()), Vec::new());
    let turn = Turn::start(&bot, TurnId(1), "hi", &Principal::local());
    assert_eq!(turn.head[0].role, Role::System);
    assert_eq!(turn.head[0].content, format!("be a pirate\n\n{text}"));
    // With no prompt at all, the instructions are the system message.
    let bot = Bot::new(engine, None, Vec::new());
    let turn = Turn::start(&bot, TurnId(1), "hi", &Principal::local());
    assert_eq!(turn.head[0].content, text);
}

#[test]
fn the_answer_carries_the_usage_of_every_step_and_the_system_prompt_is_first() {
    let counted = |prompt, completion| {
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
        })
    };
    let step = ModelReply {
        text: String::new(),
        tool_calls: vec![ToolCall {
            id: "a".into(),
            name: "echo".into(),
            args: json!({}).into(),
        }],
        usage: counted(10, 2),
        truncated: false,
    };
    let last = ModelReply {
        usage: counted(15, 7),
        ..answer("done").unwrap()
    };
    let model = Arc::new(Scripted::new(vec![Ok(step), Ok(last)]));
    let bot = Bot::new(engine(model), Some("be a pirate".into()), Vec::new());
    let turn = Turn::start(&bot, TurnId(1), "hi", &Principal::local());
    assert_eq!(turn.head[0].role, Role::System);
    assert_eq!(turn.head[0].content, "be a pirate");
    let events = Recorder::new();
    assert_eq!(run(&bot, "what time is it", &events), TurnOutcome::Answered);
    let frames = events.frames.lock();
    assert!(
        matches!(frames.last(), Some(ServerFrame::Message { usage, .. }) if *usage == counted(25, 9)),
        "{frames:?}"
    );
    let unreported = Arc::new(Scripted::new(vec![answer("plain")]));
    let events = Recorder::new();
    run(
        &Bot::new(engine(unreported), None, Vec::new()),
        "x",
        &events,
    );
    assert!(matches!(
        events.frames.lock().last(),
        Some(ServerFrame::Message { usage: None, .. })
    ));
}

#[test]
fn a_second_rejection_fails_the_turn() {
    let model = Arc::new(Scripted::new(vec![rejected(), rejected()]));
    let bot = Bot::new(engine(model), None, Vec::new());
    let events = Recorder::new();
    assert_eq!(run(&bot, "new", &events), TurnOutcome::Failed);
    let frames = events.frames.lock();
    assert!(matches!(
        frames.last(),
        Some(ServerFrame::Error { code: ErrorCode::ModelError, message, .. })
            if message.contains("bad history")
    ));
    assert!(*events.reset.lock());
}

/// A tool that waits (boundedly) until two calls of it are running at once.
struct Together {
    running: Mutex<usize>,
    changed: parking_lot::Condvar,
}

impl Tool for Together {
    fn name(&self) -> &str {
        "together"
    }
    fn description(&self) -> &str {
        "waits for a second call"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object"})
    }
    fn call(&self, args: &Value, _ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut running = self.running.lock();
        *running += 1;
        self.changed.notify_all();
        while *running < 2 {
            if self.changed.wait_until(&mut running, deadline).timed_out() {
                return Err(ToolError::failed("alone"));
            }
        }
        Ok(format!("together {}", args["n"]))
    }
}

#[test]
fn tool_calls_of_one_step_run_side_by_side_and_report_in_order() {
    let call = |id: &str, name: &str, args: ToolArgs| ToolCall {
        id: id.into(),
        name: name.into(),
        args,
    };
    let calls = vec![
        call("a", "together", json!({"n": 1}).into()),
        call("b", "together", json!({"n": 2}).into()),
        call("c", "echo", ToolArgs::Unparsed("{oops".into())),
    ];
    let model = Arc::new(Scripted::new(vec![
        Ok(ModelReply {
            text: String::new(),
            tool_calls: calls,
            ..ModelReply::default()
        }),
        answer("done"),
    ]));
    let mut engine = engine(model);
    let mut tools = (*engine.tools).clone();
    tools.add(Arc::new(Together {
        running: Mutex::new(0),
        changed: parking_lot::Condvar::new(),
    }));
    engine.tools = Arc::new(tools);
    let bot = Bot::new(engine, None, Vec::new());
    let events = Recorder::new();
    assert_eq!(run(&bot, "go", &events), TurnOutcome::Answered);
    let frames = events.frames.lock();
    let order: Vec<String> = frames
        .iter()
        .filter_map(|frame| match frame {
            ServerFrame::ToolUse { call_id, .. } => Some(format!("use {call_id}")),
            ServerFrame::ToolResult {
                call_id, result, ..
            } => Some(format!("result {call_id}: {result}")),
            _ => None,
        })
        .collect();
    assert_eq!(order[..3], ["use a", "use b", "use c"]);
    assert_eq!(order[3], "result a: together 1");
    assert_eq!(order[4], "result b: together 2");
    assert!(order[5].starts_with("result c: the arguments of echo are not a JSON object"));
}

/// A tool that must be approved, and says how often it ran.
struct Guarded(std::sync::atomic::AtomicUsize);
impl Tool for Guarded {
    fn name(&self) -> &str {
        "guarded"
    }
    fn description(&self) -> &str {
        "needs a person"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object"})
    }
    fn call(&self, _args: &Value, _ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok("ran".into())
    }
    fn needs_approval(&self) -> bool {
        true
    }
}

#[test]
fn calls_that_need_approval_are_asked_for_and_only_allowed_ones_run() {
    let call = |id: &str, name: &str| ToolCall {
        id: id.into(),
        name: name.into(),
        args: json!({}).into(),
    };
    // The Recorder's verdict is named by the call id.
    let calls = vec![
        call("allow", "guarded"),
        call("deny", "guarded"),
        call("late", "guarded"),
        call("free", "echo"),
    ];
    let model = Arc::new(Scripted::new(vec![
        Ok(ModelReply {
            tool_calls: calls,
            ..ModelReply::default()
        }),
        answer("done"),
    ]));
    let mut asking = engine(model);
    asking.approval_timeout = Duration::from_secs(90);
    let guarded = Arc::new(Guarded(Default::default()));
    let mut tools = (*asking.tools).clone();
    tools.add(guarded.clone());
    asking.tools = Arc::new(tools);
    let bot = Bot::new(asking, None, Vec::new());
    let events = Recorder::new();
    assert_eq!(run(&bot, "go", &events), TurnOutcome::Answered);
    let order: Vec<String> = events
        .frames
        .lock()
        .iter()
        .filter_map(|frame| match frame {
            ServerFrame::ToolUse { call_id, .. } => Some(format!("use {call_id}")),
            ServerFrame::ApprovalRequest { call_id, .. } => Some(format!("ask {call_id}")),
            ServerFrame::ToolResult {
                call_id, result, ..
            } => Some(format!("result {call_id}: {result}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            "use allow",
            "use deny",
            "use late",
            "use free",
            "ask allow",
            "ask deny",
            "ask late",
            "result allow: ran",
            "result deny: the user denied this call; it was not run",
            "result late: nobody allowed this call within 90s; it was not run",
            "result free: {}",
        ]
    );
    assert_eq!(guarded.0.load(std::sync::atomic::Ordering::SeqCst), 1);

    // A cancel during the wait ends the turn with nothing run.
    let model = Arc::new(Scripted::new(vec![Ok(ModelReply {
        tool_calls: vec![call("stop", "guarded")],
        ..ModelReply::default()
    })]));
    let mut stopping = engine(model);
    let mut tools = (*stopping.tools).clone();
    tools.add(guarded.clone());
    stopping.tools = Arc::new(tools);
    let bot = Bot::new(stopping, None, Vec::new());
    let events = Recorder::new();
    assert_eq!(run(&bot, "go", &events), TurnOutcome::Cancelled);
    assert_eq!(guarded.0.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A tool whose server asks the conversation's model (as an MCP server's sampling request).
struct Sampler;
impl Tool for Sampler {
    fn name(&self) -> &str {
        "sampler"
    }
    fn description(&self) -> &str {
        "asks the model"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object"})
    }
    fn call(&self, _args: &Value, ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        let ask = ctx.ask.ok_or_else(|| ToolError::failed("nobody to ask"))?;
        let request = crate::tools::ask::Sampling {
            messages: vec![crate::common::protocol::SampledMessage {
                role: "user".into(),
                text: "say the alphabet".into(),
            }],
            system_prompt: None,
            max_tokens: 3,
        };
        let sampled = ask.sample("srv", request).map_err(ToolError::failed)?;
        Ok(format!(
            "{}|{}|{}",
            sampled.text, sampled.model, sampled.stop_reason
        ))
    }
}

#[test]
fn a_sampling_request_is_allowed_answered_within_its_max_tokens_and_counted_in_the_usage() {
    let counted = |prompt, completion| {
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
        })
    };
    let step = ModelReply {
        tool_calls: vec![ToolCall {
            id: "allow".into(),
            name: "sampler".into(),
            args: json!({}).into(),
        }],
        usage: counted(10, 2),
        ..ModelReply::default()
    };
    let sampled = ModelReply {
        usage: counted(4, 5),
        ..answer("abcdefghijklmnop").unwrap()
    };
    let last = ModelReply {
        usage: counted(15, 7),
        ..answer("done").unwrap()
    };
    let model = Arc::new(Scripted::new(vec![Ok(step), Ok(sampled), Ok(last)]));
    let mut engine = engine(model);
    let mut tools = (*engine.tools).clone();
    tools.add(Arc::new(Sampler));
    engine.tools = Arc::new(tools);
    let bot = Bot::new(engine, None, Vec::new());
    let events = Recorder::new();
    assert_eq!(run(&bot, "sample", &events), TurnOutcome::Answered);
    let frames = events.frames.lock();
    let asked = frames.iter().find_map(|frame| match frame {
        ServerFrame::SamplingRequest {
            request_id,
            call_id,
            server,
            max_tokens,
            messages,
            ..
        } => Some((
            request_id.as_str(),
            call_id.as_str(),
            server.as_str(),
            *max_tokens,
            messages[0].text.as_str(),
        )),
        _ => None,
    });
    assert_eq!(
        asked,
        Some(("allow/ask-1", "allow", "srv", 3, "say the alphabet")),
        "{frames:?}"
    );
    let result = frames.iter().find_map(|frame| match frame {
        ServerFrame::ToolResult { result, .. } => Some(result.as_str()),
        _ => None,
    });
    // Three tokens by the estimate: nine bytes.
    assert_eq!(result, Some("abcdefghi|scripted|maxTokens"));
    assert!(
        matches!(frames.last(), Some(ServerFrame::Message { usage, .. }) if *usage == counted(29, 14)),
        "{frames:?}"
    );
}
