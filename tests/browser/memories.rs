//! The memories panel: what the knowledge graph holds for the user, listed, searched and
//! deleted through `/api/memories`.

use crate::driver::{Browser, Submit};
use crate::support::{ChildServer, http_json};

pub fn run(browser: &Browser) {
    let server = ChildServer::start(&["--in-memory"]);
    browser.goto(&format!("http://{}/", server.addr));
    browser.say("/remember I like green tea", Submit::EnterKey);
    browser.wait_for_turn(1, "done");
    browser.say("/remember My cat is called Tom", Submit::EnterKey);
    browser.wait_for_turn(2, "done");

    browser.click("#open-memories");
    browser.wait_for(
        "two memories",
        "return document.querySelectorAll('#memory-list .memory').length === 2",
    );
    let shown = browser.eval(
        "return Array.from(document.querySelectorAll('#memory-list .memory .content')) \
           .map((m) => m.firstChild.textContent).sort()",
    );
    assert_eq!(
        shown,
        serde_json::json!(["I like green tea", "My cat is called Tom"])
    );
    browser.screenshot("memories-01-panel");

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
    let (status, body) = http_json(server.addr, "GET", "/api/memories", None, None);
    assert_eq!(status, 200);
    let left: Vec<&str> = body["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["I like green tea"]);
    browser.click("#memories-close");
    browser.wait_for(
        "the panel to close",
        "return document.getElementById('memories-box').hidden",
    );
}
