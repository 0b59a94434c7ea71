//! Errors on the page are said in words a person understands, with the server's own message
//! kept under "Details": a turn whose model server cannot be reached (a closed port), and a
//! message the server refuses as too long (a note outside any turn, its text back in the box).

use std::net::TcpListener;

use serde_json::json;

use crate::driver::{Browser, CONNECTED, Submit};
use crate::support::ChildServer;

/// The words the page shows for a model server it cannot reach.
const UNREACHABLE: &str = "\u{26A0} The model server could not be reached, so there is no answer.";

pub fn run(browser: &Browser) {
    // A port that nothing listens on: bound, then let go.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}/v1");
    let server = ChildServer::start(&[
        "--in-memory",
        "--model",
        "openai",
        "--model-url",
        &url,
        "--model-name",
        "absent-model",
        "--max-text-chars",
        "40",
    ]);
    browser.goto(&format!("http://{}/", server.addr));

    // The turn fails once the retries are spent: its mark says what happened in words, and the
    // raw text waits under a closed "Details".
    browser.say("hello", Submit::EnterKey);
    browser.wait_for("the page to connect", CONNECTED);
    browser.wait_for_turn(1, "error");
    let shown = browser.eval(
        "const mark = document.querySelector('.turn[data-turn-id=\"1\"] .mark.error'); \
         const details = mark.querySelector('details.detail'); \
         return { first: mark.firstChild.textContent, open: details.open, \
                  summary: details.querySelector('summary').textContent, \
                  detail: details.querySelector('code').textContent, \
                  visible: mark.innerText }",
    );
    let first = shown["first"].as_str().unwrap();
    assert!(first.starts_with(UNREACHABLE), "{shown:#}");
    assert_eq!(shown["open"], false);
    assert_eq!(shown["summary"], "Details");
    let detail = shown["detail"].as_str().unwrap();
    assert!(detail.starts_with("model_error: "), "{detail}");
    assert!(
        !shown["visible"].as_str().unwrap().contains("model_error"),
        "the raw text shows before Details is opened: {shown:#}"
    );
    browser.click(".turn[data-turn-id=\"1\"] .mark.error details summary");
    browser.wait_for(
        "the details to open",
        "const mark = document.querySelector('.turn[data-turn-id=\"1\"] .mark.error'); \
         return mark.querySelector('details').open && mark.innerText.includes('model_error: ')",
    );
    browser.screenshot("errors-01-model-unreachable");

    // Too long a message: refused with a note in words, the text back in the box.
    let long = "this message is longer than forty characters, by far";
    browser.type_into("#input", &format!("{long}\u{E007}"));
    let note = browser.wait_for(
        "the too-long note",
        "const note = document.querySelector('#log .note.error'); \
         return note && { text: note.querySelector('.text').textContent, \
                          detail: note.querySelector('details code').textContent, \
                          input: document.getElementById('input').value }",
    );
    assert_eq!(
        note,
        json!({
            "text": "That message is longer than this server accepts. Shorten it and try again.",
            "detail": "too_large: text is longer than 40 characters",
            "input": long,
        })
    );
    browser.screenshot("errors-02-too-long");
    browser.eval("document.getElementById('input').value = ''");
    drop(server);
}
