//! Tokens: the page asks for one when the server wants it, says when one was refused, keeps it
//! in the browser, and "Forget token" removes it. A scripted stand-in adds what a real server
//! cannot be made to do on demand: a gap, a resent event, a taken-over window.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::driver::{Browser, CONNECTED, POLL, Submit, TOKEN_FORM};
use crate::fakes::{FAKE_SESSION, FAKE_TOKEN, FakeSparky};
use crate::support::ChildServer;

pub fn run(browser: &Browser) {
    // The scripted server: the API refuses without the token, so the page asks before it
    // connects; then a gap, a resent event, and a takeover.
    let fake = FakeSparky::start();
    browser.goto(&format!("http://{}/#{FAKE_SESSION}", fake.addr));
    browser.wait_for("the token form", TOKEN_FORM);
    browser.screenshot("tokens-01-form");
    browser.type_into("#token", &format!("{FAKE_TOKEN}\u{E007}"));
    browser.wait_for(
        "the taken-over note",
        "return document.getElementById('conn').dataset.state === 'paused' \
         && document.getElementById('log').innerText.includes('opened in another window')",
    );
    let turn = browser.turn(3);
    assert_eq!(turn["answer"], "Part two.");
    assert_eq!(turn["tools"], json!(["graph_get|error|{}|no such node"]));
    assert_eq!(turn["thoughts"], 1, "the resent event was shown twice");
    let text = browser.eval("return document.getElementById('log').innerText");
    assert!(
        text.as_str().unwrap().contains("(events 1–2)"),
        "no gap note: {text}"
    );
    // Taken over: the page stays put rather than fighting the other window.
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < quiet_until {
        assert_eq!(fake.connects.lock().unwrap().len(), 1, "it reconnected");
        std::thread::sleep(POLL);
    }
    browser.click(".note button");
    browser.wait_for("the page to reconnect when asked", CONNECTED);
    let connects = fake.connects.lock().unwrap().clone();
    assert_eq!(
        connects[0],
        json!({"session_id": FAKE_SESSION, "last_seq": 0, "token": FAKE_TOKEN})
    );
    assert_eq!(
        connects[1],
        json!({"session_id": FAKE_SESSION, "last_seq": 8, "token": FAKE_TOKEN})
    );

    // The real server with a token: a wrong one is refused and asked for again.
    let guarded = ChildServer::start(&["--in-memory", "--auth-token", "browser-secret"]);
    browser.goto(&format!("http://{}/", guarded.addr));
    browser.wait_for("the token form", TOKEN_FORM);
    browser.type_into("#token", "wrong\u{E007}");
    browser.wait_for(
        "the token form to say the token was refused",
        &format!(
            "{TOKEN_FORM} && document.getElementById('token-note').textContent.includes('not accepted')"
        ),
    );
    browser.type_into("#token", "browser-secret\u{E007}");
    browser.say("with a token", Submit::EnterKey);
    browser.wait_for("the page to connect with the token", CONNECTED);
    browser.wait_for_turn(1, "done");
    assert_eq!(
        browser.eval("return localStorage.getItem('sparky.token')"),
        "browser-secret"
    );
    browser.wait_for(
        "the list with the token",
        "return document.querySelectorAll('#conversation-list .conversation').length === 1",
    );

    // Forget token: gone from the browser; the server asks for it again.
    browser.click("#forget-token");
    browser.wait_for("the token form after forgetting", TOKEN_FORM);
    assert_eq!(
        browser.eval("return localStorage.getItem('sparky.token')"),
        serde_json::Value::Null
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('#conversation-list .conversation').length"),
        0
    );
}
