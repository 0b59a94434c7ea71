//! The conversation list: newest first with titles, search, the URL naming the open
//! conversation (so another tab opens the same one), rename in place, delete with confirmation
//! (also while a turn runs); a long conversation shown at once and paged in by scrolling up
//! over more than 1,000 events; export as Markdown and as JSON.

use serde_json::{Value, json};

use crate::driver::{Browser, CONNECTED, PAGE_WAIT, POLL, Submit};
use crate::support::{ChildServer, Client, http_json};

/// Turns of the long conversation: three events each (message, thought, answer).
const LONG_TURNS: u64 = 350;

pub fn run(browser: &Browser) {
    let server = ChildServer::start(&["--in-memory", "--rate-limit", "off"]);
    let page = format!("http://{}/", server.addr);

    // Three conversations made elsewhere (by a terminal client, say): one long.
    let mut long = Client::connect(server.addr, json!({}));
    for n in 1..=LONG_TURNS {
        long.ask(&format!("message number {n}"));
    }
    let long_id = long.session_id.clone().unwrap().as_str().to_owned();
    drop(long);
    let mut otters = Client::connect(server.addr, json!({}));
    otters.ask("tell me about otters");
    let otters_id = otters.session_id.clone().unwrap().as_str().to_owned();
    let mut herons = Client::connect(server.addr, json!({}));
    herons.ask("what do herons eat");
    let herons_id = herons.session_id.clone().unwrap().as_str().to_owned();
    drop((otters, herons));

    // The list: newest first, with titles.
    browser.goto(&page);
    browser.wait_for(
        "the list of three",
        "return document.querySelectorAll('#conversation-list .conversation').length === 3",
    );
    assert_eq!(
        list(browser),
        json!([
            [herons_id, "what do herons eat"],
            [otters_id, "tell me about otters"],
            [long_id, "message number 1"]
        ])
    );

    // Search keeps the conversations whose messages have the words.
    browser.type_into("#search", "otters");
    browser.wait_for(
        "the search to narrow the list",
        "return document.querySelectorAll('#conversation-list .conversation').length === 1",
    );
    assert_eq!(list(browser), json!([[otters_id, "tell me about otters"]]));
    browser.eval("const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'))");
    browser.wait_for(
        "the whole list again",
        "return document.querySelectorAll('#conversation-list .conversation').length === 3",
    );

    // The long one, opened by its URL (a bookmark, a second tab): its newest turns at once.
    browser.goto(&format!("{page}#{long_id}"));
    browser.wait_for("the page to connect", CONNECTED);
    browser.wait_for_turn(LONG_TURNS, "done");
    let shown = turn_ids(browser);
    assert!(
        shown.len() < 100 && shown[0] > 1,
        "the first page should hold only recent turns: {shown:?}"
    );
    assert_eq!(*shown.last().unwrap(), LONG_TURNS);
    assert_eq!(
        browser.eval(
            "return document.querySelector('.conversation[aria-current=\"true\"]').dataset.id"
        ),
        long_id.as_str()
    );
    assert_eq!(
        browser.eval("return document.getElementById('title').textContent"),
        "message number 1"
    );
    browser.screenshot("conversations-01-long");

    // Scrolling up pages in older turns until the beginning.
    let deadline = std::time::Instant::now() + PAGE_WAIT * 4;
    loop {
        browser.eval("document.getElementById('log').scrollTop = 0");
        let done = browser.eval(
            "return document.getElementById('older').textContent === 'The beginning of this conversation'",
        );
        if done == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "scrolling up never reached the beginning"
        );
        std::thread::sleep(POLL);
    }
    let shown = turn_ids(browser);
    assert_eq!(
        shown,
        (1..=LONG_TURNS).collect::<Vec<_>>(),
        "turns missing or doubled"
    );
    let answers = browser.eval(
        "return Array.from(document.querySelectorAll('#log .turn')).every((turn) => \
           turn.querySelector('.bubble.answer').textContent.trim() === \
           'You said: message number ' + turn.dataset.turnId \
           && turn.querySelector('.bubble.user').textContent === \
           'message number ' + turn.dataset.turnId \
           && turn.querySelectorAll('.thought').length === 1)",
    );
    assert_eq!(answers, true, "a paged turn is incomplete");

    // Export: every event as JSON, and a Markdown transcript (over more than one API page).
    let blobs = export(browser);
    let json_export: Value = serde_json::from_str(&blobs[1]).unwrap();
    assert_eq!(json_export["id"], long_id.as_str());
    let events = json_export["events"].as_array().unwrap();
    assert_eq!(events.len() as u64, LONG_TURNS * 3);
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, event)| event["seq"] == i as u64 + 1)
    );
    let markdown = &blobs[0];
    assert!(markdown.starts_with("# message number 1\n"), "{markdown}");
    assert_eq!(markdown.matches("\n## You\n").count() as u64, LONG_TURNS);
    assert!(markdown.contains("\n## Sparky\n\nYou said: message number 350\n"));

    // Rename in place: the current conversation's pencil, a name, Enter.
    browser.goto(&format!("{page}#{otters_id}"));
    browser.wait_for_turn(1, "done");
    browser.click(&format!(".conversation[data-id=\"{otters_id}\"] .rename"));
    browser.wait_for(
        "the rename box",
        "return document.activeElement.classList.contains('rename')",
    );
    browser.eval("document.activeElement.value = ''");
    browser.type_into("input.rename", "Otters, renamed\u{E007}");
    browser.wait_for(
        "the new name in the list and the header",
        "return document.querySelector('.conversation[aria-current=\"true\"] .name').textContent === 'Otters, renamed' \
         && document.getElementById('title').textContent === 'Otters, renamed'",
    );
    let path = format!("/api/conversations/{otters_id}");
    wait_api(server.addr, &path, |entry| {
        entry["title"] == "Otters, renamed"
    });
    browser.screenshot("conversations-02-renamed");

    // Delete asks first; Cancel keeps it.
    browser.click(&format!(".conversation[data-id=\"{otters_id}\"] .delete"));
    browser.wait_for(
        "the confirmation",
        "return !document.getElementById('confirm-box').hidden",
    );
    assert!(
        browser
            .eval("return document.getElementById('confirm-text').textContent")
            .as_str()
            .unwrap()
            .contains("Otters, renamed")
    );
    browser.screenshot("conversations-03-confirm-delete");
    browser.click("#confirm-cancel");
    assert_eq!(http_json(server.addr, "GET", &path, None, None).0, 200);

    // Delete while a turn runs: the turn stops, the conversation goes, a new chat opens.
    browser.say("/wait 10000", Submit::EnterKey);
    browser.wait_for_tool_running(2);
    browser.click(&format!(".conversation[data-id=\"{otters_id}\"] .delete"));
    browser.click("#confirm-ok");
    browser.wait_for(
        "a new chat after the deletion",
        &format!(
            "return location.hash === '' && document.querySelectorAll('.turn').length === 0 \
             && document.querySelector('.conversation[data-id=\"{otters_id}\"]') === null \
             && document.querySelectorAll('#conversation-list .conversation').length === 2"
        ),
    );
    assert_eq!(http_json(server.addr, "GET", &path, None, None).0, 404);

    // And a conversation deleted elsewhere: its open tab says so and starts a new chat.
    browser.goto(&format!("{page}#{herons_id}"));
    browser.wait_for("the page to connect", CONNECTED);
    let herons_path = format!("/api/conversations/{herons_id}");
    assert_eq!(
        http_json(server.addr, "DELETE", &herons_path, None, None).0,
        204
    );
    browser.wait_for(
        "the deleted note",
        "return location.hash === '' \
         && document.getElementById('log').innerText.includes('That conversation was deleted.')",
    );
    browser.wait_for(
        "the list without it",
        "return document.querySelectorAll('#conversation-list .conversation').length === 1",
    );
}

/// `[id, title]` of every entry of the list, in order.
fn list(browser: &Browser) -> Value {
    browser.eval(
        "return Array.from(document.querySelectorAll('#conversation-list .conversation')) \
           .map((item) => [item.dataset.id, item.querySelector('.name').textContent])",
    )
}

/// The turn ids the page shows, in order.
fn turn_ids(browser: &Browser) -> Vec<u64> {
    let ids = browser.eval(
        "return Array.from(document.querySelectorAll('#log .turn')).map((t) => Number(t.dataset.turnId))",
    );
    ids.as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect()
}

/// Exports the open conversation as Markdown, then as JSON, and returns the two files' text
/// (the page's downloads are caught where it makes their blobs).
pub fn export(browser: &Browser) -> Vec<String> {
    browser.eval(
        "window.__exports = []; const make = URL.createObjectURL; \
         URL.createObjectURL = (blob) => { window.__exports.push(blob); return make.call(URL, blob); }; \
         HTMLAnchorElement.prototype.click = function () {};",
    );
    for (item, count) in [("#export-markdown", 1), ("#export-json", 2)] {
        browser.click("#export summary");
        browser.click(item);
        browser.wait_for(
            "the export",
            &format!("return window.__exports.length === {count}"),
        );
    }
    let texts = browser.eval_async(
        "const done = arguments[arguments.length - 1]; \
         Promise.all(window.__exports.map((blob) => blob.text())).then(done);",
    );
    texts
        .as_array()
        .unwrap()
        .iter()
        .map(|text| text.as_str().unwrap().to_owned())
        .collect()
}

/// Polls an API entry until `wanted` holds.
fn wait_api(addr: std::net::SocketAddr, path: &str, wanted: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + PAGE_WAIT;
    loop {
        let (status, body) = http_json(addr, "GET", path, None, None);
        if status == 200 && wanted(&body) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never showed the change: {body}"
        );
        std::thread::sleep(POLL);
    }
}
