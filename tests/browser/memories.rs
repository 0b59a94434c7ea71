//! The memories panel: what the knowledge graph holds for the user, listed, searched, added by
//! hand, edited in place and deleted through `/api/memories`; and what the page suggests for
//! each kind of model. With the built-in offline model, the empty chat names its slash commands
//! and the panel mentions `/remember`; with a real model (the fake OpenAI-compatible server),
//! neither does, and a person still adds a memory from the panel.

use serde_json::json;

use crate::driver::{Browser, Submit};
use crate::fakes::FakeModel;
use crate::support::{ChildServer, http_json};

/// The visible text of the empty chat's hints and of the memories panel's introduction (a
/// hidden element has no `innerText`).
const HINTS: &str = "return [document.getElementById('empty').innerText, \
     document.querySelector('#memories-box .card > p').innerText]";

/// The memories the API lists, oldest first.
fn stored(server: &ChildServer) -> Vec<String> {
    let (status, body) = http_json(server.addr, "GET", "/api/memories", None, None);
    assert_eq!(status, 200);
    let mut memories: Vec<String> = body["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    memories.sort();
    memories
}

/// The memories the panel shows, sorted.
fn shown(browser: &Browser) -> serde_json::Value {
    browser.eval(
        "return Array.from(document.querySelectorAll('#memory-list .memory .content .text')) \
           .map((m) => m.textContent).sort()",
    )
}

pub fn run(browser: &Browser) {
    offline(browser);
    real_model(browser);
}

fn offline(browser: &Browser) {
    let server = ChildServer::start(&["--in-memory"]);
    browser.goto(&format!("http://{}/", server.addr));
    // A browser new to this server learns its model from /healthz: the built-in one.
    browser.wait_for(
        "the offline model's hints",
        "return !document.getElementById('hints-offline').hidden \
         && document.getElementById('hints-model').hidden",
    );
    let hints = browser.eval(HINTS);
    assert!(hints[0].as_str().unwrap().contains("/calc 6*7"), "{hints}");
    browser.say("/remember I like green tea", Submit::EnterKey);
    browser.wait_for_turn(1, "done");
    browser.say("/remember My cat is called Tom", Submit::EnterKey);
    browser.wait_for_turn(2, "done");

    browser.click("#open-memories");
    browser.wait_for(
        "two memories",
        "return document.querySelectorAll('#memory-list .memory').length === 2",
    );
    assert_eq!(
        shown(browser),
        json!(["I like green tea", "My cat is called Tom"])
    );
    let intro = browser.eval(HINTS)[1].as_str().unwrap().to_owned();
    assert!(intro.contains("/remember adds one too"), "{intro}");
    browser.screenshot("memories-01-panel");

    // Added by hand: Enter in the Add box.
    browser.type_into("#memory-new", "I cycle to work\u{E007}");
    browser.wait_for(
        "the added memory",
        "return document.querySelectorAll('#memory-list .memory').length === 3 \
         && document.getElementById('memory-new').value === ''",
    );
    assert_eq!(
        stored(&server),
        [
            "I cycle to work",
            "I like green tea",
            "My cat is called Tom"
        ]
    );

    // Edited in place: Escape puts the text back (and leaves the panel open), Enter saves.
    let edit_tea = "Array.from(document.querySelectorAll('#memory-list .memory')) \
                    .find((m) => m.querySelector('.text').textContent === 'I like green tea')";
    browser.eval(&format!("{edit_tea}.querySelector('button.edit').click()"));
    browser.wait_for(
        "the editor",
        "return document.activeElement.matches('.memory.editing .memory-editor textarea')",
    );
    browser.type_into(
        ".memory.editing .memory-editor textarea",
        " and mint\u{E00C}",
    );
    browser.wait_for(
        "the edit to be cancelled",
        "return document.querySelector('.memory.editing') === null \
         && !document.getElementById('memories-box').hidden",
    );
    assert!(stored(&server).contains(&"I like green tea".to_owned()));
    browser.eval(&format!("{edit_tea}.querySelector('button.edit').click()"));
    browser.type_into(
        ".memory.editing .memory-editor textarea",
        " and mint\u{E007}",
    );
    browser.wait_for(
        "the edit to be saved",
        "return document.querySelector('.memory.editing') === null && Array.from( \
           document.querySelectorAll('#memory-list .memory .text')) \
           .some((t) => t.textContent === 'I like green tea and mint')",
    );
    assert_eq!(
        stored(&server),
        [
            "I cycle to work",
            "I like green tea and mint",
            "My cat is called Tom"
        ]
    );
    browser.screenshot("memories-02-edited");

    // Searched, and deleted.
    browser.type_into("#memory-search", "cat");
    browser.wait_for(
        "the search to find one",
        "const items = document.querySelectorAll('#memory-list .memory'); \
         return items.length === 1 && items[0].textContent.includes('Tom')",
    );
    browser.click("#memory-list .memory .forget");
    browser.wait_for(
        "the memory to go",
        "return document.querySelectorAll('#memory-list .memory').length === 0 \
         && document.getElementById('memory-note').textContent === 'Nothing remembered.'",
    );
    assert_eq!(
        stored(&server),
        ["I cycle to work", "I like green tea and mint"]
    );
    browser.click("#memories-close");
    browser.wait_for(
        "the panel to close",
        "return document.getElementById('memories-box').hidden",
    );
}

fn real_model(browser: &Browser) {
    let model = FakeModel::start();
    let mut args = model.args();
    args.push("--in-memory".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ChildServer::start(&args);
    browser.goto(&format!("http://{}/", server.addr));

    // No slash command is suggested: they belong to the built-in model.
    browser.wait_for(
        "plain-language hints",
        "return !document.getElementById('hints-model').hidden \
         && document.getElementById('hints-offline').hidden",
    );
    browser.click("#open-memories");
    browser.wait_for(
        "an empty panel",
        "return document.getElementById('memory-note').textContent === 'Nothing remembered.'",
    );
    let hints = browser.eval(HINTS);
    for text in hints.as_array().unwrap() {
        assert!(!text.as_str().unwrap().contains('/'), "{hints}");
    }
    browser.screenshot("memories-03-real-model");

    // A person adds a memory with the Add button.
    browser.type_into("#memory-new", "My name is Ada");
    browser.click("#memory-add-button");
    browser.wait_for(
        "the added memory",
        "const texts = Array.from(document.querySelectorAll('#memory-list .memory .text')); \
         return texts.length === 1 && texts[0].textContent === 'My name is Ada'",
    );
    assert_eq!(stored(&server), ["My name is Ada"]);
    browser.click("#memories-close");

    // A conversation with the model: its empty view would say the same, and a new chat too.
    browser.say("hello", Submit::EnterKey);
    browser.wait_for_turn(1, "done");
    browser.click("#new-chat");
    browser.wait_for(
        "plain-language hints in a new chat",
        "return location.hash === '' && !document.getElementById('hints-model').hidden \
         && document.getElementById('hints-offline').hidden",
    );
    drop(server);
}
