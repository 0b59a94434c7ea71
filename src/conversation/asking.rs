//! `CallAsk`: the [`AskUser`] of one tool call, through which an MCP server asks the person
//! behind the turn. An elicitation becomes an `elicitation_request` and waits for its `elicit`;
//! a sampling request becomes a `sampling_request`, waits for its `approve` (unless the person
//! allowed that server's sampling for the rest of the conversation), and is then answered by
//! the conversation's own model, bounded by the request's `maxTokens` and the context window,
//! its tokens counted in the turn's usage. Both wait at most `--approval-timeout`.
//!
//! Depends on: `common::cancel`, `common::metrics`, `common::protocol`, `conversation::approval`,
//! `conversation::bot`, `conversation::context`, `conversation::events`, `model`, `tools::ask`,
//! `tools::mcp`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use crate::common::cancel::{CancelFlag, OnCancel};
use crate::common::metrics::Metrics;
use crate::common::protocol::form;
use crate::common::protocol::{ElicitAction, ElicitMode, ServerFrame, TurnId, Usage};
use crate::conversation::approval::Verdict;
use crate::conversation::bot::Engine;
use crate::conversation::context::{BYTES_PER_TOKEN, tokens};
use crate::conversation::events::TurnEvents;
use crate::model::{ChatMessage, Conversation, ReplySink, Role};
use crate::tools::ask::{AskUser, ElicitAnswer, ElicitKind, Elicitation, Sampled, Sampling};

/// What every tool call of one turn shares when asking: the turn, its engine and model, and
/// where the tokens of sampling go.
pub(crate) struct TurnAsk<'a> {
    /// The tools' engine: the model, the approval timeout, the metrics.
    pub(crate) engine: &'a Engine,
    /// The conversation's model; `None` for the backend's default.
    pub(crate) model: Option<&'a str>,
    /// The turn the requests belong to.
    pub(crate) turn_id: TurnId,
    /// Where the requests go.
    pub(crate) events: &'a dyn TurnEvents,
    /// The turn's cancel flag.
    pub(crate) cancel: &'a CancelFlag,
    /// Tokens the sampling requests of the turn used, added to the turn's usage.
    pub(crate) usage: &'a Mutex<Option<Usage>>,
    /// Numbers the requests of the turn, for their ids.
    pub(crate) asked: AtomicU32,
}

/// The [`AskUser`] of the tool call `call_id`.
pub(crate) struct CallAsk<'a> {
    /// What the turn's calls share.
    pub(crate) turn: &'a TurnAsk<'a>,
    /// The call the server asks during.
    pub(crate) call_id: &'a str,
}

impl CallAsk<'_> {
    /// A new request id: the call's id and a number unique in the turn.
    fn request_id(&self) -> String {
        let n = self.turn.asked.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}/ask-{n}", self.call_id)
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.turn.engine.approval_timeout
    }
}

impl AskUser for CallAsk<'_> {
    fn elicit(&self, server: &str, request: Elicitation) -> ElicitAnswer {
        let turn = self.turn;
        let (mode, schema, url) = match request.kind {
            ElicitKind::Form(schema) => {
                if let Err(e) = form::fields(&schema) {
                    log::warn!(
                        "turn {}: mcp {server}: a form sparky cannot show ({e}): declined",
                        turn.turn_id
                    );
                    return ElicitAnswer::bare(ElicitAction::Decline);
                }
                (ElicitMode::Form, Some(schema), None)
            }
            ElicitKind::Url(url) => (ElicitMode::Url, None, Some(url)),
        };
        let request_id = self.request_id();
        let frame = ServerFrame::ElicitationRequest {
            turn_id: turn.turn_id,
            request_id: request_id.clone(),
            call_id: self.call_id.to_owned(),
            server: server.to_owned(),
            message: request.message,
            mode,
            schema: schema.clone().map(Box::new),
            url,
        };
        if turn.cancel.is_cancelled() || !turn.events.ask_elicitation(&request_id, schema, frame) {
            return ElicitAnswer::bare(ElicitAction::Cancel);
        }
        let answer = turn
            .events
            .await_elicitation(&request_id, self.deadline(), turn.cancel);
        log::info!(
            "turn {}: mcp {server}: elicitation {request_id} answered {}",
            turn.turn_id,
            answer.action.as_str()
        );
        answer
    }

    fn sample(&self, server: &str, request: Sampling) -> Result<Sampled, String> {
        let turn = self.turn;
        if !turn.events.allows_sampling(server) {
            let request_id = self.request_id();
            let frame = ServerFrame::SamplingRequest {
                turn_id: turn.turn_id,
                request_id: request_id.clone(),
                call_id: self.call_id.to_owned(),
                server: server.to_owned(),
                messages: request.messages.clone(),
                system_prompt: request.system_prompt.clone(),
                max_tokens: request.max_tokens,
            };
            if turn.cancel.is_cancelled() || !turn.events.ask_sampling(&request_id, server, frame) {
                return Err("the turn ended".into());
            }
            match turn
                .events
                .await_approval(&request_id, self.deadline(), turn.cancel)
            {
                Verdict::Allowed => {}
                Verdict::Denied => return Err("the user refused this sampling request".into()),
                Verdict::TimedOut => {
                    return Err(format!(
                        "nobody allowed this sampling request within {}",
                        crate::tools::mcp::round_duration(turn.engine.approval_timeout)
                    ));
                }
                Verdict::Cancelled => return Err("the turn was cancelled".into()),
            }
        }
        self.answer_with_model(server, &request)
    }
}

impl CallAsk<'_> {
    /// Has the conversation's model answer `request`, within its `maxTokens` and the context
    /// window, and adds the tokens to the turn's usage.
    fn answer_with_model(&self, server: &str, request: &Sampling) -> Result<Sampled, String> {
        let turn = self.turn;
        let engine = turn.engine;
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        if let Some(system) = &request.system_prompt {
            messages.push(ChatMessage::text(Role::System, system));
        }
        for message in &request.messages {
            let role = if message.role == "assistant" {
                Role::Assistant
            } else {
                Role::User
            };
            messages.push(ChatMessage::text(role, &message.text));
        }
        let max_tokens = request.max_tokens.max(1);
        let window = engine
            .context_tokens
            .or_else(|| engine.model.context_tokens());
        let needed = messages.iter().map(tokens).sum::<usize>() + max_tokens as usize;
        if let Some(window) = window.filter(|window| needed > *window) {
            return Err(format!(
                "the request needs about {needed} tokens with its answer; the model's context \
                 holds {window}"
            ));
        }
        let conversation = Conversation {
            model: turn.model,
            head: &[],
            earlier: &[],
            current: &messages,
            max_tokens: Some(max_tokens),
        };
        let mut sink = Quiet {
            cancel: turn.cancel,
        };
        Metrics::bump(&engine.metrics.model_requests);
        let reply = engine
            .model
            .complete(conversation, &[], &mut sink)
            .map_err(|e| format!("the model failed: {e}"))?;
        let model = engine.model.resolve(turn.model);
        if let Some(used) = reply.usage {
            let mut usage = turn.usage.lock();
            *usage = Some(usage.unwrap_or_default().plus(used));
            engine
                .metrics
                .tokens_used(&model, used.prompt_tokens, used.completion_tokens);
        }
        // A backend that cannot bound its answer (the built-in one) is cut here, at about
        // `maxTokens` by the context budget's estimate.
        let (text, cut) = cut_to(reply.text, max_tokens as usize * BYTES_PER_TOKEN);
        let stop_reason = if cut || reply.truncated {
            "maxTokens"
        } else {
            "endTurn"
        };
        log::info!(
            "turn {}: mcp {server}: sampling answered by {model} ({stop_reason})",
            turn.turn_id
        );
        Ok(Sampled {
            text,
            model,
            stop_reason: stop_reason.to_owned(),
        })
    }
}

/// `text` cut to at most `bytes` (at a character boundary), and whether it was cut.
fn cut_to(mut text: String, bytes: usize) -> (String, bool) {
    if text.len() <= bytes {
        return (text, false);
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, true)
}

/// Where a sampling answer streams: nowhere (the server gets it whole), stopped by the turn's
/// cancel flag.
struct Quiet<'a> {
    cancel: &'a CancelFlag,
}

impl ReplySink for Quiet<'_> {
    fn thought(&mut self, _text: &str) {}
    fn delta(&mut self, _text: &str) {}
    fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn on_cancel(&self, hook: Box<dyn Fn() + Send + Sync>) -> Option<OnCancel> {
        Some(self.cancel.on_cancel(hook))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_cut_at_a_character_boundary() {
        assert_eq!(cut_to("short".into(), 10), ("short".into(), false));
        assert_eq!(cut_to("ééé".into(), 3), ("é".into(), true));
    }
}
