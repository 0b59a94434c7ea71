//! One step's tool calls, as the agent loop runs them: every `tool_use` first, then the
//! `approval_request` of each call a person must allow and the wait for the answers, then the
//! calls side by side (the first on the turn's thread, each other on a scoped `tool` thread),
//! each relaying its progress as `tool_progress` at most ten times a second and asking the
//! person through its own `CallAsk` what its MCP server asks, and each `tool_result` in
//! call order.
//!
//! Depends on: `common::auth`, `common::cancel`, `common::protocol`, `conversation::approval`,
//! `conversation::asking`, `conversation::bot`, `conversation::events`, `model`, `store::files`,
//! `tools`, `tools::knowledge`, `tools::mcp`.

use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::common::auth::Principal;
use crate::common::cancel::CancelFlag;
use crate::common::protocol::Usage;
use crate::common::protocol::{Attachment, ServerFrame, SessionId, ToolStatus, TurnId};
use crate::conversation::approval::Verdict;
use crate::conversation::asking::{CallAsk, TurnAsk};
use crate::conversation::bot::Engine;
use crate::conversation::events::TurnEvents;
use crate::model::{ChatMessage, ToolArgs, ToolCall};
use crate::store::Upload;
use crate::tools::knowledge::Knowledge;
use crate::tools::{Progress, ProgressSink, ToolChain, ToolContext, ToolOutput};

/// The shortest time between two `tool_progress` frames of one call: a server may report
/// progress as often as it likes, clients get at most ten a second of each call (the last
/// report, where `progress` reaches `total`, always goes out).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// One step's tool calls, and what running them needs: the turn's engine, id and principal,
/// where its events go, its cancel flag and the session's notes.
#[derive(Clone, Copy)]
pub(crate) struct ToolCalls<'a> {
    /// The calls the model made, in its order.
    pub(crate) calls: &'a [ToolCall],
    /// The tools and the model (whether it takes images), and the approval timeout.
    pub(crate) engine: &'a Engine,
    /// The turn the calls belong to.
    pub(crate) turn_id: TurnId,
    /// The principal the tools act for.
    pub(crate) owner: &'a Principal,
    /// The conversation the turn belongs to, when known.
    pub(crate) conversation: Option<&'a SessionId>,
    /// Where the calls' events go.
    pub(crate) events: &'a dyn TurnEvents,
    /// The turn's cancel flag, checked before each event and seen by the tools.
    pub(crate) cancel: &'a CancelFlag,
    /// The session's notes, for the tools that read and write them.
    pub(crate) knowledge: &'a Knowledge,
    /// The conversation's model (`None`: the default), which answers sampling requests.
    pub(crate) model: Option<&'a str>,
    /// Where the tokens the calls' sampling requests use are added.
    pub(crate) usage: &'a Mutex<Option<Usage>>,
}

impl ToolCalls<'_> {
    /// Runs one step's tool calls and reports them: every `tool_use` first, then the
    /// `approval_request` of each call a person must allow (and the wait for the answers),
    /// then each `tool_result` in call order. Several calls run side by side, the first on
    /// this thread and each other on a scoped thread of its own. Returns the tool messages for
    /// the conversation, or `None` when the turn is no longer current.
    pub(crate) fn run(&self) -> Option<Vec<ChatMessage>> {
        let &ToolCalls {
            calls,
            engine,
            turn_id,
            owner,
            conversation,
            events,
            cancel,
            knowledge,
            model,
            usage,
        } = self;
        for call in calls {
            let used = ServerFrame::ToolUse {
                turn_id,
                call_id: call.id.clone(),
                name: call.name.clone(),
                args: call.args.frame_value(),
            };
            if cancel.is_cancelled() || !events.emit(used) {
                return None;
            }
        }
        let denials = self.approve()?;
        let tools: &ToolChain = &engine.tools;
        let sinks: Vec<CallProgress<'_>> = calls
            .iter()
            .map(|call| CallProgress {
                events,
                turn_id,
                call_id: &call.id,
                last: Mutex::new(None),
            })
            .collect();
        let asking = TurnAsk {
            engine,
            model,
            turn_id,
            events,
            cancel,
            usage,
            asked: Default::default(),
        };
        let asks: Vec<CallAsk<'_>> = calls
            .iter()
            .map(|call| CallAsk {
                turn: &asking,
                call_id: &call.id,
            })
            .collect();
        // Runs call `i`, unless a person denied it.
        let run = |i: usize| -> ToolOutput {
            if let Some(denial) = &denials[i] {
                return denial.clone();
            }
            let ctx = ToolContext {
                conversation,
                principal: owner,
                knowledge,
                cancel,
                progress: Some(&sinks[i]),
                ask: Some(&asks[i]),
            };
            run_tool(tools, &calls[i], &ctx)
        };
        thread::scope(|scope| {
            let run = &run;
            let mut others: Vec<_> = (1..calls.len())
                .map(|i| {
                    if denials[i].is_some() {
                        return None;
                    }
                    thread::Builder::new()
                        .name("tool".into())
                        .spawn_scoped(scope, move || run(i))
                        .inspect_err(|e| {
                            log::warn!(
                                "turn {turn_id}: no thread for a tool call, running it in turn: {e}"
                            );
                        })
                        .ok()
                })
                .collect();
            let mut messages = Vec::with_capacity(calls.len());
            for (i, call) in calls.iter().enumerate() {
                let handle = i
                    .checked_sub(1)
                    .and_then(|other| others.get_mut(other))
                    .and_then(Option::take);
                let output = match handle {
                    Some(handle) => handle.join().unwrap_or_else(|_| {
                        let crashed = format!("the {} tool crashed", call.name);
                        ToolOutput::text(ToolStatus::Error, crashed)
                    }),
                    None => run(i),
                };
                let result = ServerFrame::ToolResult {
                    attachments: self.keep_files(call, &output),
                    turn_id,
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    status: output.status,
                    result: output.for_model(),
                };
                // The scope waits for the calls still running; they see the cancel flag.
                if cancel.is_cancelled() || !events.emit(result) {
                    return None;
                }
                let is_error = output.status == ToolStatus::Error;
                let mut message = ChatMessage::tool_result(&call.id, output.for_model(), is_error);
                if engine.model.accepts_images() {
                    message.images = output.images;
                }
                messages.push(message);
            }
            Some(messages)
        })
    }

    /// Stores the images and other files `call` returned as files of the conversation, so
    /// that the `tool_result` lists them rather than carrying their bytes (PROTOCOL.md
    /// section 5). One that cannot be stored keeps only its note in the result.
    fn keep_files(&self, call: &ToolCall, output: &ToolOutput) -> Vec<Attachment> {
        let (Some(library), Some(conversation)) = (&self.engine.files, self.conversation) else {
            return Vec::new();
        };
        let images = output.images.iter().enumerate().map(|(n, image)| {
            let extension = image.mime_type.rsplit('/').next().unwrap_or("bin");
            let name = format!("{}-{}.{extension}", call.name, n + 1);
            (name, &image.mime_type, &image.data)
        });
        let files = output
            .files
            .iter()
            .map(|file| (file.name.clone(), &file.mime_type, &file.data));
        let mut kept = Vec::new();
        for (name, mime_type, data) in images.chain(files) {
            let Ok(bytes) = data_encoding::BASE64.decode(data.as_bytes()) else {
                continue;
            };
            match library.upload(
                self.owner.as_str(),
                &name,
                Some(mime_type),
                &mut bytes.as_slice(),
                Some(conversation),
            ) {
                Ok(Upload::Stored(file)) => kept.push(file.attachment()),
                Ok(refused) => {
                    log::warn!(
                        "turn {}: a tool's file was not kept: {refused:?}",
                        self.turn_id
                    );
                }
                Err(e) => log::warn!("turn {}: a tool's file was not kept: {e}", self.turn_id),
            }
        }
        kept
    }

    /// Asks a person about every call of the step whose tool needs approval (one
    /// `approval_request` each, all at once), then waits for the answers, all under one
    /// deadline (`--approval-timeout`). Returns, for each call, the error result that replaces
    /// it when it was denied or nobody answered in time, or `None` when the turn is no longer
    /// current (cancelled, or replaced by a newer message).
    fn approve(&self) -> Option<Vec<Option<ToolOutput>>> {
        let &ToolCalls {
            calls,
            engine,
            turn_id,
            events,
            cancel,
            ..
        } = self;
        let tools = &engine.tools;
        let asking: Vec<bool> = calls
            .iter()
            .map(|call| {
                matches!(call.args, ToolArgs::Parsed(_)) && tools.needs_approval(&call.name)
            })
            .collect();
        for (call, _) in calls.iter().zip(&asking).filter(|(_, ask)| **ask) {
            let request = ServerFrame::ApprovalRequest {
                turn_id,
                call_id: call.id.clone(),
                name: call.name.clone(),
                args: call.args.frame_value(),
            };
            if cancel.is_cancelled() || !events.ask_approval(&call.id, request) {
                return None;
            }
        }
        let timeout = engine.approval_timeout;
        let deadline = Instant::now() + timeout;
        let mut denials = Vec::with_capacity(calls.len());
        for (call, ask) in calls.iter().zip(asking) {
            if !ask {
                denials.push(None);
                continue;
            }
            let denied = match events.await_approval(&call.id, deadline, cancel) {
                Verdict::Allowed => None,
                Verdict::Denied => Some("the user denied this call; it was not run".to_owned()),
                Verdict::TimedOut => Some(format!(
                    "nobody allowed this call within {}; it was not run",
                    crate::tools::mcp::round_duration(timeout)
                )),
                Verdict::Cancelled => return None,
            };
            if let Some(reason) = &denied {
                log::info!("turn {turn_id}: {} not run: {reason}", call.name);
            }
            denials.push(denied.map(|text| ToolOutput::text(ToolStatus::Error, text)));
        }
        Some(denials)
    }
}

/// Runs one tool call through the ToolChain. Arguments the model wrote as something other than
/// a JSON object ([`ToolArgs::Unparsed`]) get an error result without running the tool.
fn run_tool(tools: &ToolChain, call: &ToolCall, ctx: &ToolContext<'_>) -> ToolOutput {
    match &call.args {
        ToolArgs::Parsed(args) => tools.call(&call.name, args, ctx),
        ToolArgs::Unparsed(raw) => {
            let text = format!(
                "the arguments of {} are not a JSON object: {raw}; call it again with a JSON \
                 object",
                call.name
            );
            ToolOutput::text(ToolStatus::Error, text)
        }
    }
}

/// Where one tool call's progress goes: `tool_progress` frames of the turn, at most one per
/// [`PROGRESS_INTERVAL`].
struct CallProgress<'a> {
    events: &'a dyn TurnEvents,
    turn_id: TurnId,
    call_id: &'a str,
    /// When the last frame went out.
    last: Mutex<Option<Instant>>,
}

impl ProgressSink for CallProgress<'_> {
    fn report(&self, progress: Progress) {
        let finished = progress
            .total
            .is_some_and(|total| progress.progress >= total);
        {
            let mut last = self.last.lock();
            let now = Instant::now();
            if !finished && last.is_some_and(|at| now.duration_since(at) < PROGRESS_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        self.events.emit(ServerFrame::ToolProgress {
            turn_id: self.turn_id,
            call_id: self.call_id.to_owned(),
            progress: progress.progress,
            total: progress.total,
            message: progress.message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what is emitted; a step's other events do not happen here.
    #[derive(Default)]
    struct Recorder {
        frames: Mutex<Vec<ServerFrame>>,
    }

    impl TurnEvents for Recorder {
        fn emit(&self, frame: ServerFrame) -> bool {
            self.frames.lock().push(frame);
            true
        }
        fn ask_approval(&self, _: &str, _: ServerFrame) -> bool {
            false
        }
        fn await_approval(&self, _: &str, _: Instant, _: &CancelFlag) -> Verdict {
            Verdict::Cancelled
        }
        fn close(&self, _: ServerFrame, _: Vec<ChatMessage>) -> bool {
            false
        }
        fn close_resetting(&self, _: ServerFrame, _: Vec<ChatMessage>) -> bool {
            false
        }
    }

    #[test]
    fn progress_is_relayed_at_most_once_per_interval_but_the_last_report_always() {
        let events = Recorder::default();
        let sink = CallProgress {
            events: &events,
            turn_id: TurnId(1),
            call_id: "c",
            last: Mutex::new(None),
        };
        let report = |progress: f64| Progress {
            progress,
            total: Some(10.0),
            message: None,
        };
        for step in 1..=9 {
            sink.report(report(f64::from(step)));
        }
        sink.report(report(10.0));
        let sent: Vec<f64> = events
            .frames
            .lock()
            .iter()
            .filter_map(|frame| match frame {
                ServerFrame::ToolProgress { progress, .. } => Some(*progress),
                _ => None,
            })
            .collect();
        // Nine reports in far less than the interval: the first goes out, then the last.
        assert_eq!(sent, [1.0, 10.0]);
    }
}
