//! A panic inside a turn becomes an `error` event for that turn; the session and server go on.

mod support;

use std::sync::Arc;

use sparky::common::error::Result;
use sparky::common::protocol::{ErrorCode, ServerFrame};
use sparky::model::offline::OfflineModel;
use sparky::model::{Conversation, ModelBackend, ModelReply, ReplySink, ToolSpec};
use support::{TestServer, kinds};

/// The offline model, except that it panics on the word "boom".
struct Fragile;

impl ModelBackend for Fragile {
    fn name(&self) -> String {
        "fragile".into()
    }
    fn complete(
        &self,
        messages: Conversation<'_>,
        tools: &[ToolSpec],
        sink: &mut dyn ReplySink,
    ) -> Result<ModelReply> {
        if messages.last().is_some_and(|m| m.content == "boom") {
            panic!("the model blew up");
        }
        OfflineModel.complete(messages, tools, sink)
    }
}

#[test]
fn a_panicking_model_fails_only_its_turn() {
    let server = TestServer::with_model(|_| {}, Arc::new(Fragile));
    let mut client = server.client();
    client.say("boom");
    let frames = client.finish_turn(1);
    assert_eq!(kinds(&frames), ["user_message", "error"]);
    assert!(matches!(
        frames[1].frame,
        ServerFrame::Error {
            code: ErrorCode::Internal,
            turn_id: Some(_),
            ..
        }
    ));
    assert!(frames[1].seq.is_some());
    assert_eq!(client.ask("fine now?"), "You said: fine now?");
    let mut other = server.client();
    assert_eq!(other.ask("and me?"), "You said: and me?");
}
