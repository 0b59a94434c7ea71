//! Branches: editing a message makes a sibling turn (`2/2`) and the arrows step back to the
//! old one with its own later turns; "another answer" and Retry (on a stopped turn) make
//! siblings too; an edit while a turn runs stops it first; a send cut off before its echo is
//! sent again under the same client_id and runs once; a reload, a second tab (which follows a
//! switch made in the first) and a tab opened mid-answer on another branch all show the same
//! path; a long conversation pages in along the current path only.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::driver::{Browser, CONNECTED, OPEN_ID, Submit};
use crate::support::{ChildServer, Client, http_json};

/// What the page shows of each turn of the path, with its `n/m` (null without siblings).
const PATH_JS: &str = r#"
return Array.from(document.querySelectorAll('#log .turn')).map((turn) => {
  const pager = turn.querySelector('.pager');
  return {
    id: Number(turn.dataset.turnId),
    user: turn.querySelector('.bubble.user').textContent,
    answer: turn.querySelector('.bubble.answer').textContent.trim(),
    outcome: turn.dataset.outcome || 'open',
    versions: pager.hidden ? null : pager.querySelector('.count').textContent,
  };
});
"#;

pub fn run(browser: &Browser) {
    let server = ChildServer::start(&["--in-memory", "--rate-limit", "off"]);
    let page = format!("http://{}/", server.addr);

    // Three turns, one after another: no arrows anywhere.
    browser.goto(&page);
    browser.wait_for(
        "the new-chat state",
        "return !document.getElementById('persona-picker').hidden",
    );
    for (turn, text) in [(1, "first"), (2, "second"), (3, "third")] {
        browser.say(text, Submit::EnterKey);
        browser.wait_for("the page to connect", CONNECTED);
        browser.wait_for_turn(turn, "done");
    }
    let id = browser.eval(OPEN_ID).as_str().unwrap().to_owned();
    assert_eq!(shown(browser), [1, 2, 3]);
    assert!(
        path_view(browser)
            .as_array()
            .unwrap()
            .iter()
            .all(|turn| turn["versions"].is_null()),
        "arrows without siblings"
    );

    // The pencil opens an editor with the message; Escape puts the message back.
    browser.click(&in_turn(2, ".edit"));
    let editor = in_turn(2, ".editor textarea");
    browser.wait_for(
        "the editor",
        &format!("return document.activeElement === document.querySelector('{editor}')"),
    );
    assert_eq!(
        browser.eval(&format!("return document.querySelector('{editor}').value")),
        "second"
    );
    browser.type_into(&editor, "\u{E00C}");
    browser.wait_for(
        "the message back in place of the editor",
        "const turn = document.querySelector('.turn[data-turn-id=\"2\"]'); \
         return turn.querySelector('.editor') === null && !turn.querySelector('.bubble.user').hidden",
    );

    // An edit: a new turn beside turn 2 (the same parent), shown in its place as 2/2.
    edit(browser, 2, "second, edited");
    browser.wait_for_turn(4, "done");
    wait_for_path(browser, &[1, 4]);
    let view = path_view(browser);
    assert_eq!(view[1]["user"], "second, edited");
    assert_eq!(view[1]["answer"], "You said: second, edited");
    assert_eq!(view[1]["versions"], "2/2");
    assert!(view[0]["versions"].is_null());
    browser.screenshot("branches-01-edited");

    // The arrow steps back: 1/2, the old answer, and the turn that followed it.
    browser.click(&in_turn(4, ".prev"));
    wait_for_path(browser, &[1, 2, 3]);
    let view = path_view(browser);
    assert_eq!(view[1]["versions"], "1/2");
    assert_eq!(view[1]["answer"], "You said: second");
    assert_eq!(view[2]["answer"], "You said: third");
    assert!(view[2]["versions"].is_null());

    // Another answer to turn 3: a sibling of it, 2/2, with the same message.
    browser.click(&in_turn(3, ".regenerate"));
    browser.wait_for_turn(5, "done");
    wait_for_path(browser, &[1, 2, 5]);
    let view = path_view(browser);
    assert_eq!(view[2]["user"], "third");
    assert_eq!(view[2]["answer"], "You said: third");
    assert_eq!(view[2]["versions"], "2/2");
    assert_eq!(view[1]["versions"], "1/2");

    // Retry on a stopped turn runs its message again, beside it; an edit of that running turn
    // stops it first, well before its ten seconds are up.
    let asked = Instant::now();
    browser.say("/wait 10000", Submit::EnterKey);
    browser.wait_for_tool_running(6);
    browser.click("#send");
    browser.wait_for_turn(6, "cancelled");
    browser.click(&in_turn(6, ".retry"));
    wait_for_path(browser, &[1, 2, 5, 7]);
    browser.wait_for_tool_running(7);
    assert_eq!(path_view(browser)[3]["versions"], "2/2");
    assert_eq!(path_view(browser)[3]["user"], "/wait 10000");
    edit(browser, 7, "not waiting");
    browser.wait_for_turn(8, "done");
    wait_for_path(browser, &[1, 2, 5, 8]);
    assert!(
        asked.elapsed() < Duration::from_secs(9),
        "a wait was not stopped"
    );
    assert_eq!(path_view(browser)[3]["versions"], "3/3");
    let turns = turns_api(&server, &id);
    assert_eq!(closing(&turns, 7), "cancelled");
    let events = events_api(&server, &id);
    let cancelled = seq_of(&events, |e| {
        e["type"] == "status" && e["data"]["code"] == "cancelled" && e["data"]["turn_id"] == 7
    });
    let opened = seq_of(&events, |e| {
        e["type"] == "user_message" && e["data"]["turn_id"] == 8
    });
    assert!(cancelled < opened, "the edit did not stop the turn first");
    browser.click(&in_turn(8, ".prev"));
    wait_for_path(browser, &[1, 2, 5, 7]);
    assert_eq!(browser.turn(7)["outcome"], "cancelled");
    assert_eq!(browser.turn(7)["marks"], json!(["\u{25A0} Stopped"]));
    browser.click(&in_turn(7, ".next"));
    wait_for_path(browser, &[1, 2, 5, 8]);
    browser.screenshot("branches-02-retried");

    // Every message, edit and regenerate carried its own client_id.
    let ids: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "user_message")
        .map(|e| e["data"]["client_id"].as_str().expect("a client_id"))
        .collect();
    assert_eq!(ids.len(), 8);
    assert!(ids.iter().all(|id| (1..=64).contains(&id.len())));
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a client_id was used twice: {ids:?}"
    );

    // A reload shows the same path.
    let before = path_view(browser);
    browser.refresh();
    browser.wait_for("the page to reconnect after a reload", CONNECTED);
    wait_for_path(browser, &[1, 2, 5, 8]);
    assert_eq!(path_view(browser), before, "the reload changed the path");

    // A turn runs on the branch through turn 4; a tab opened mid-answer shows that branch.
    let first = browser.window_handle();
    browser.click(&in_turn(2, ".next"));
    wait_for_path(browser, &[1, 4]);
    browser.say("/wait 20000", Submit::EnterKey);
    browser.wait_for_tool_running(9);
    let second = browser.new_tab();
    browser.switch_to(&second);
    browser.goto(&format!("{page}#{id}"));
    browser.wait_for("the second tab to connect", CONNECTED);
    wait_for_path(browser, &[1, 4, 9]);
    browser.wait_for_tool_running(9);
    assert_eq!(path_view(browser)[1]["versions"], "2/2");
    browser.screenshot("branches-03-second-tab");

    // A switch in the first tab stops the turn, and the second tab follows it.
    browser.switch_to(&first);
    browser.click(&in_turn(4, ".prev"));
    wait_for_path(browser, &[1, 2, 5, 8]);
    let in_first = path_view(browser);
    browser.switch_to(&second);
    wait_for_path(browser, &[1, 2, 5, 8]);
    assert_eq!(path_view(browser), in_first);
    assert_eq!(closing(&turns_api(&server, &id), 9), "cancelled");
    browser.close_tab();
    browser.switch_to(&first);

    // A send whose echo is lost (the socket closes right after it) goes again after the
    // reconnect, under the same client_id: the server says `duplicate`, and it ran once.
    browser.eval(
        "window.__sent = []; window.__duplicates = []; \
         const send = WebSocket.prototype.send; \
         WebSocket.prototype.send = function (text) { \
           if (!this.__watched) { \
             this.__watched = true; \
             this.addEventListener('message', (event) => { \
               const frame = JSON.parse(event.data); \
               if (frame.type === 'status' && frame.data.code === 'duplicate') \
                 window.__duplicates.push(frame.data.turn_id); \
             }); \
           } \
           send.call(this, text); \
           const frame = JSON.parse(text); \
           if (frame.type === 'regenerate') { \
             window.__sent.push(frame.data.client_id); \
             if (window.__sent.length === 1) this.close(); \
           } \
         };",
    );
    browser.click(&in_turn(8, ".regenerate"));
    browser.wait_for_turn(10, "done");
    wait_for_path(browser, &[1, 2, 5, 10]);
    browser.wait_for(
        "the duplicate answer",
        "return window.__duplicates.length === 1",
    );
    let sent = browser.eval("return window.__sent");
    assert_eq!(sent.as_array().unwrap().len(), 2, "{sent}");
    assert_eq!(sent[0], sent[1], "the retry had a new client_id");
    assert_eq!(browser.eval("return window.__duplicates"), json!([10]));
    assert_eq!(
        turns_api(&server, &id)["turns"].as_array().unwrap().len(),
        10
    );
    assert_eq!(path_view(browser)[3]["versions"], "4/4");
    assert_eq!(
        browser.eval("return document.querySelectorAll('#log .note.error').length"),
        0,
        "an error was shown"
    );

    long_branches(browser, &server, &page);
}

/// A long conversation with two long branches, the older one current: the page shows its
/// newest turns, pages in the older ones, and never fetches the other branch's events until
/// the arrows go there.
fn long_branches(browser: &Browser, server: &ChildServer, page: &str) {
    let mut client = Client::connect(server.addr, json!({}));
    for n in 1..=30 {
        client.ask(&format!("old branch {n}"));
    }
    client.send(json!({"type": "edit", "data": {"turn_id": 2, "text": "new branch 2"}}));
    client.finish_turn(31);
    for n in 3..=27 {
        client.ask(&format!("new branch {n}"));
    }
    client.send(json!({"type": "switch", "data": {"turn_id": 2}}));
    client.expect("branch");
    let id = client.session_id.clone().unwrap().as_str().to_owned();
    drop(client);

    // A fresh document, so that its resource timings list only what it fetched.
    browser.goto("about:blank");
    browser.goto(&format!("{page}#{id}"));
    browser.wait_for("the page to connect", CONNECTED);
    browser.wait_for_turn(30, "done");
    let newest = shown(browser);
    assert!(
        newest.len() < 30 && newest[0] > 1 && *newest.last().unwrap() == 30,
        "the first page should hold the path's newest turns: {newest:?}"
    );
    browser.wait_for(
        "the beginning of the conversation",
        "document.getElementById('log').scrollTop = 0; \
         return document.getElementById('older').textContent === 'The beginning of this conversation'",
    );
    assert_eq!(shown(browser), (1..=30).collect::<Vec<u64>>());
    assert_eq!(path_view(browser)[1]["versions"], "1/2");
    let fetched = fetched_turns(browser, &id);
    assert!(
        fetched.iter().all(|turn| (1..=30).contains(turn)),
        "the page fetched another branch's events: {fetched:?}"
    );

    // The arrow goes to the other branch, and only now are its turns fetched.
    browser.click(&in_turn(2, ".next"));
    let other: Vec<u64> = std::iter::once(1).chain(31..=56).collect();
    wait_for_path(browser, &other);
    assert_eq!(path_view(browser)[1]["user"], "new branch 2");
    assert_eq!(path_view(browser)[1]["versions"], "2/2");
    let fetched = fetched_turns(browser, &id);
    assert!(fetched.iter().any(|turn| *turn > 30));
}

/// The turn ids the page shows, in order.
fn shown(browser: &Browser) -> Vec<u64> {
    path_view(browser)
        .as_array()
        .unwrap()
        .iter()
        .map(|turn| turn["id"].as_u64().unwrap())
        .collect()
}

fn path_view(browser: &Browser) -> Value {
    browser.eval(PATH_JS)
}

fn wait_for_path(browser: &Browser, ids: &[u64]) {
    browser.wait_for(
        &format!("the path {ids:?}"),
        &format!(
            "return JSON.stringify(Array.from(document.querySelectorAll('#log .turn')) \
               .map((turn) => Number(turn.dataset.turnId))) === '{}'",
            json!(ids)
        ),
    );
}

/// A CSS selector for `css` inside the turn `turn`.
fn in_turn(turn: u64, css: &str) -> String {
    format!(".turn[data-turn-id=\"{turn}\"] {css}")
}

/// Edits the message of `turn` to `text` with the pencil, sent with Enter.
fn edit(browser: &Browser, turn: u64, text: &str) {
    browser.click(&in_turn(turn, ".edit"));
    let editor = in_turn(turn, ".editor textarea");
    browser.wait_for(
        "the editor",
        &format!("return document.querySelector('{editor}') !== null"),
    );
    browser.eval(&format!("document.querySelector('{editor}').value = ''"));
    browser.type_into(&editor, &format!("{text}\u{E007}"));
}

fn turns_api(server: &ChildServer, id: &str) -> Value {
    let (status, body) = http_json(
        server.addr,
        "GET",
        &format!("/api/conversations/{id}/turns"),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    body
}

fn events_api(server: &ChildServer, id: &str) -> Vec<Value> {
    let (status, body) = http_json(
        server.addr,
        "GET",
        &format!("/api/conversations/{id}/events?limit=1000"),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

/// How the turn `turn` closed, as the turns API says.
fn closing(turns: &Value, turn: u64) -> Value {
    let found = turns["turns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["turn_id"] == turn);
    found.unwrap_or_else(|| panic!("no turn {turn} in {turns:#}"))["closing"].clone()
}

/// The seq of the first event that `wanted` picks.
fn seq_of(events: &[Value], wanted: impl Fn(&Value) -> bool) -> u64 {
    let found = events.iter().find(|e| wanted(e));
    found
        .and_then(|e| e["seq"].as_u64())
        .expect("no such event")
}

/// The turns whose events the page fetched one turn at a time; it never fetches pages of every
/// branch's events (before_seq).
fn fetched_turns(browser: &Browser, id: &str) -> Vec<u64> {
    let urls = browser.eval(&format!(
        "return performance.getEntriesByType('resource').map((entry) => entry.name) \
           .filter((url) => url.includes('/api/conversations/{id}/events'))"
    ));
    urls.as_array()
        .unwrap()
        .iter()
        .filter_map(|url| {
            let url = url.as_str().unwrap();
            assert!(!url.contains("before_seq"), "a page of every branch: {url}");
            let (_, turn) = url.split_once("turn_id=")?;
            Some(turn.parse().unwrap())
        })
        .collect()
}
