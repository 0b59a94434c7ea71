//! `Recording`: the offline model, keeping what every request it got showed the model, so that
//! a test can check what reached it (the branch's history, a file's passages, an image), and
//! reporting the token use a test gives it.

use parking_lot::Mutex;
use sparky::common::error::Result;
use sparky::common::protocol::Usage;
use sparky::model::offline::OfflineModel;
use sparky::model::{Conversation, ModelBackend, ModelReply, ReplySink, Role, ToolSpec};

/// The offline model, recording each request: every message's role and text, and the images
/// of its last user message. `window` is the context it says it has; `vision`, whether it
/// takes images; `usage`, the tokens it says each answer took.
#[derive(Default)]
pub struct Recording {
    /// Each request's messages, oldest request first.
    pub requests: Mutex<Vec<Vec<(Role, String)>>>,
    /// Each request's last user message's images, as `(type, base64)`.
    pub images: Mutex<Vec<Vec<(String, String)>>>,
    /// The context window it reports.
    pub window: Option<usize>,
    /// True when it takes images.
    pub vision: bool,
    /// The `usage` of each answer (none: the offline model's, which reports nothing).
    pub usage: Option<Usage>,
}

impl Recording {
    /// The newest request's messages.
    pub fn last(&self) -> Vec<(Role, String)> {
        self.requests.lock().last().cloned().unwrap_or_default()
    }

    /// The newest request's user and assistant texts, in order.
    pub fn dialogue(&self) -> Vec<String> {
        self.last()
            .into_iter()
            .filter(|(role, _)| matches!(role, Role::User | Role::Assistant))
            .map(|(_, text)| text)
            .collect()
    }
}

impl ModelBackend for Recording {
    fn name(&self) -> String {
        "recording".into()
    }

    fn context_tokens(&self) -> Option<usize> {
        self.window
    }

    fn accepts_images(&self) -> bool {
        self.vision
    }

    fn complete(
        &self,
        messages: Conversation<'_>,
        tools: &[ToolSpec],
        sink: &mut dyn ReplySink,
    ) -> Result<ModelReply> {
        let seen = messages
            .iter()
            .map(|m| (m.role, m.content.clone()))
            .collect();
        self.requests.lock().push(seen);
        let images = messages
            .iter()
            .rfind(|m| m.role == Role::User)
            .map(|m| {
                m.images
                    .iter()
                    .map(|i| (i.mime_type.clone(), i.data.clone()))
                    .collect()
            })
            .unwrap_or_default();
        self.images.lock().push(images);
        let mut reply = OfflineModel.complete(messages, tools, sink)?;
        if self.usage.is_some() {
            reply.usage = self.usage;
        }
        Ok(reply)
    }
}
