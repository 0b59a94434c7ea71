//! Model choice on the page: the new-chat form offers the models of `ready.models` once there
//! are two, and a new conversation uses the one picked.

use std::sync::Arc;

use sparky::model::{Conversation, ModelBackend, ModelReply, ReplySink, ToolSpec};

use crate::driver::{Browser, Submit};
use crate::support::{TestServer, http_json};

/// Two models that answer with their own name.
struct Pair;

impl ModelBackend for Pair {
    fn name(&self) -> String {
        "alpha".into()
    }
    fn models(&self) -> Vec<String> {
        vec!["alpha".into(), "beta".into()]
    }
    fn complete(
        &self,
        conversation: Conversation<'_>,
        _tools: &[ToolSpec],
        _sink: &mut dyn ReplySink,
    ) -> sparky::common::error::Result<ModelReply> {
        Ok(ModelReply {
            text: format!("answer from {}", self.resolve(conversation.model)),
            ..ModelReply::default()
        })
    }
}

pub fn run(browser: &Browser) {
    let server = TestServer::with_model(|config| config.in_memory = true, Arc::new(Pair));
    browser.goto(&format!("http://{}/", server.addr));
    // Before any `ready`, the page knows of no choice.
    assert_eq!(
        browser.eval("return document.getElementById('model-select').hidden"),
        true
    );
    browser.say("hello", Submit::EnterKey);
    browser.wait_for_turn(1, "done");
    assert_eq!(browser.turn(1)["answer"], "answer from alpha");

    browser.click("#new-chat");
    browser.wait_for(
        "the model menu with both models",
        "const s = document.getElementById('model-select'); \
         return !s.hidden && Array.from(s.options).map((o) => o.value).join() === 'alpha,beta'",
    );
    browser.screenshot("models-01-menu");
    browser.eval("document.getElementById('model-select').value = 'beta'; return true");
    browser.say("hi", Submit::EnterKey);
    browser.wait_for_turn(1, "done");
    assert_eq!(browser.turn(1)["answer"], "answer from beta");
    let (_, list) = http_json(server.addr, "GET", "/api/conversations", None, None);
    let models: Vec<&str> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["beta", "alpha"]);
}
