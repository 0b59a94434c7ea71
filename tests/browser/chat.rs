//! Chatting: messages, thoughts, tool calls, model text that looks like HTML, Stop (with what
//! was typed meanwhile kept), a network that drops mid-turn, reloads, a server killed mid-turn
//! and restarted on the same data, and "New chat" keeping the old conversation in the list.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::driver::{Browser, CONNECTED, OPEN_ID, Submit};
use crate::fakes::Proxy;
use crate::support::{self, ChildServer, http_json};

pub fn run(browser: &Browser) {
    let data_dir = support::temp_dir("browser-chat");
    let data_arg = data_dir.to_str().unwrap().to_owned();
    let mut server = ChildServer::start(&["--data-dir", &data_arg]);
    let proxy = Proxy::start(server.addr);
    let page = format!("http://{}/", proxy.addr);

    // Loading: a new chat, nothing created on the server until the first message.
    browser.goto(&page);
    browser.wait_for(
        "the new-chat state",
        "return document.getElementById('conn').dataset.state === 'idle' \
         && !document.getElementById('persona-picker').hidden",
    );
    assert_eq!(browser.eval("return document.title"), "Sparky");
    assert_eq!(
        browser.eval("return document.getElementById('input').placeholder"),
        "Message Sparky (Enter sends, Shift+Enter adds a line)"
    );

    // A plain message: the user's bubble, a collapsed thought, then the answer.
    browser.say("hello from the browser", Submit::EnterKey);
    browser.wait_for("the page to connect", CONNECTED);
    browser.wait_for_turn(1, "done");
    let turn = browser.turn(1);
    assert_eq!(turn["user"], "hello from the browser");
    assert_eq!(turn["answer"], "You said: hello from the browser");
    assert_eq!(turn["thoughts"], 1);
    let id = browser.eval(OPEN_ID);
    assert_eq!(
        id.as_str().unwrap().len(),
        32,
        "the URL names the conversation"
    );

    // Shift+Enter adds a line; Enter sends both lines.
    browser.type_into("#input", "two\u{E008}\u{E007}\u{E008}lines");
    assert_eq!(
        browser.eval("return document.getElementById('input').value"),
        "two\nlines"
    );
    browser.type_into("#input", "\u{E007}");
    browser.wait_for_turn(2, "done");
    assert_eq!(browser.turn(2)["user"], "two\nlines");

    // A tool call: its name, arguments and result.
    browser.say("/calc 6*7", Submit::SendButton);
    browser.wait_for_turn(3, "done");
    let turn = browser.turn(3);
    assert_eq!(
        turn["tools"],
        json!(["calculator|done|{\"expression\":\"6*7\"}|6*7 = 42"])
    );

    // Model output that looks like HTML stays text.
    let xss = "<img src=x onerror=alert(1)>";
    browser.say(xss, Submit::EnterKey);
    browser.wait_for_turn(4, "done");
    let turn = browser.turn(4);
    assert_eq!(turn["user"], xss);
    assert_eq!(turn["answer"], format!("You said: {xss}"));
    assert_eq!(
        browser.eval("return document.querySelectorAll('img').length"),
        0
    );
    browser.assert_no_alert();
    browser.eval("document.querySelector('.turn[data-turn-id=\"3\"] .thought summary').click()");
    browser.screenshot("chat-01-conversation");

    // Stop: Send becomes Stop while the turn runs; Enter does not send what is typed
    // meanwhile, and it stays in the box; pressing Stop ends the turn well before its ten
    // seconds are up.
    let asked = Instant::now();
    browser.say("/wait 10000", Submit::EnterKey);
    browser.wait_for_tool_running(5);
    browser.wait_for(
        "Send to become Stop",
        "const send = document.getElementById('send'); \
         return send.dataset.mode === 'stop' && send.textContent === 'Stop' && !send.disabled",
    );
    browser.type_into("#input", "typed while it runs\u{E007}");
    assert_eq!(
        browser.eval("return document.getElementById('input').value"),
        "typed while it runs"
    );
    browser.screenshot("chat-02-running");
    browser.click("#send");
    browser.wait_for_turn(5, "cancelled");
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "Stop did not stop"
    );
    let turn = browser.turn(5);
    assert_eq!(turn["marks"], json!(["\u{25A0} Stopped"]));
    assert_eq!(turn["tools"], json!(["wait|stopped|{\"ms\":10000}|"]));
    browser.wait_for(
        "Stop to become Send",
        "return document.getElementById('send').dataset.mode === 'send'",
    );
    assert_eq!(
        browser.eval("return document.getElementById('input').value"),
        "typed while it runs",
        "what was typed during the turn was lost"
    );
    assert_eq!(browser.conversation().as_array().unwrap().len(), 5);
    browser.eval("document.getElementById('input').value = ''");

    // The network drops mid-turn and stays down for a moment: the page says it is
    // reconnecting, comes back by itself, and the turn completes once, with nothing doubled.
    browser.say("/wait 2500", Submit::EnterKey);
    browser.wait_for_tool_running(6);
    proxy.set_refusing(true);
    proxy.drop_all();
    browser.wait_for(
        "the reconnecting indicator",
        "return document.getElementById('conn').dataset.state === 'reconnecting'",
    );
    browser.screenshot("chat-03-reconnecting");
    proxy.set_refusing(false);
    browser.wait_for("the page to reconnect", CONNECTED);
    browser.wait_for_turn(6, "done");
    assert_eq!(browser.turn(6)["answer"], "Waited 2500 ms.");
    let view = browser.conversation();
    assert_matches_server(&view, browser, server.addr);

    // A reload rebuilds the same conversation from the API and the WebSocket.
    browser.refresh();
    browser.wait_for("the page to reconnect after a reload", CONNECTED);
    browser.wait_for_turn(6, "done");
    assert_eq!(
        browser.conversation(),
        view,
        "the reload changed the conversation"
    );

    // The server is killed mid-turn and started again on the same data directory (on another
    // port, behind the same proxy). The page resumes; the cut-off turn is closed with an error
    // mark; everything before it is still there, once.
    browser.say("/wait 5000", Submit::EnterKey);
    browser.wait_for_tool_running(7);
    server.kill();
    server = ChildServer::start(&["--data-dir", &data_arg]);
    proxy.set_upstream(server.addr);
    browser.wait_for("the page to reconnect after the restart", CONNECTED);
    browser.wait_for_turn(7, "error");
    browser.say("still there?", Submit::SendButton);
    browser.wait_for_turn(8, "done");
    let view = browser.conversation();
    assert_eq!(view.as_array().unwrap().len(), 8);
    assert_matches_server(&view, browser, server.addr);
    browser.refresh();
    browser.wait_for("the page to reconnect after a reload", CONNECTED);
    browser.wait_for_turn(8, "done");
    assert_eq!(
        browser.conversation(),
        view,
        "the reload changed the conversation"
    );

    // New chat: a draft with an empty view; its first message makes a second conversation,
    // and the first one stays in the list.
    browser.click("#new-chat");
    browser.wait_for(
        "a new chat",
        "return location.hash === '' && document.querySelectorAll('.turn').length === 0 \
         && !document.getElementById('persona-picker').hidden",
    );
    browser.say("a fresh start", Submit::EnterKey);
    browser.wait_for_turn(1, "done");
    let fresh = browser.eval(OPEN_ID);
    assert_ne!(fresh, id);
    browser.wait_for(
        "both conversations in the list",
        &format!(
            "const ids = Array.from(document.querySelectorAll('#conversation-list .conversation')) \
               .map((item) => item.dataset.id); \
             return ids.length === 2 && ids[0] === {fresh} && ids[1] === {id}"
        ),
    );
    // And the old one opens again from the list.
    browser.click(&format!(".conversation[data-id={id}] .open",));
    browser.wait_for_turn(8, "done");
    assert_eq!(browser.eval(OPEN_ID), id);
    assert_eq!(browser.conversation(), view);

    drop(proxy);
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Checks the page's view against the server's own events (through the API): the same turns,
/// each with as many thoughts and tool calls as the server logged, the same answers.
pub fn assert_matches_server(view: &Value, browser: &Browser, server: SocketAddr) {
    let id = browser.eval(OPEN_ID);
    let path = format!(
        "/api/conversations/{}/events?limit=1000",
        id.as_str().unwrap()
    );
    let (status, body) = http_json(server, "GET", &path, None, None);
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().unwrap();
    let turns = view.as_array().unwrap();
    for (index, turn) in turns.iter().enumerate() {
        let turn_id = index as u64 + 1;
        assert_eq!(
            turn["id"], turn_id,
            "turns out of order or doubled: {view:#}"
        );
        let frames: Vec<&Value> = events
            .iter()
            .filter(|event| event["data"]["turn_id"] == turn_id)
            .collect();
        let count = |kind: &str| frames.iter().filter(|f| f["type"] == kind).count();
        assert_eq!(
            turn["thoughts"],
            count("thought"),
            "thoughts of turn {turn_id}: {view:#}"
        );
        assert_eq!(
            turn["tools"].as_array().unwrap().len(),
            count("tool_use"),
            "tool calls of turn {turn_id}: {view:#}"
        );
        if let Some(last) = frames.last()
            && last["type"] == "message"
        {
            assert_eq!(turn["answer"], last["data"]["text"]);
            assert_eq!(turn["outcome"], "done");
        }
    }
}
