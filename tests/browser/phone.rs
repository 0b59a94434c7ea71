//! A phone-sized screen: nothing runs off the side, the conversation list hides behind a
//! button, opens over the chat, and closes when a conversation is picked. The phone screenshot
//! for the README.

use serde_json::json;

use crate::driver::{Browser, CONNECTED, WINDOW};
use crate::support::{ChildServer, Client};

pub fn run(browser: &Browser) {
    let server = ChildServer::start(&["--in-memory"]);
    let mut first = Client::connect(server.addr, json!({}));
    first.ask("/calc (2+3)*7");
    first.ask("/remember The train to Sintra leaves at 9:40");
    first.ask("thanks, that helps!");
    let first_id = first.session_id.clone().unwrap().as_str().to_owned();
    let mut second = Client::connect(server.addr, json!({}));
    second.ask("plan a weekend in Lisbon");
    drop((first, second));

    browser.set_window(390, 760);
    browser.goto(&format!("http://{}/", server.addr));
    browser.wait_for(
        "the narrow layout with the list hidden",
        "const side = document.getElementById('sidebar').getBoundingClientRect(); \
         return window.innerWidth < 420 && side.right <= 0 \
         && getComputedStyle(document.getElementById('toggle-sidebar')).display !== 'none' \
         && document.documentElement.scrollWidth <= window.innerWidth",
    );
    browser.click("#toggle-sidebar");
    browser.wait_for(
        "the list over the chat",
        "const side = document.getElementById('sidebar').getBoundingClientRect(); \
         return side.left >= 0 && side.right > 200 \
         && document.querySelectorAll('#conversation-list .conversation').length === 2",
    );
    browser.screenshot("phone-01-sidebar");
    browser.click(&format!(".conversation[data-id=\"{first_id}\"] .open"));
    browser.wait_for("the page to connect", CONNECTED);
    browser.wait_for_turn(1, "done");
    browser.wait_for(
        "the list to hide again",
        "return document.getElementById('sidebar').getBoundingClientRect().right <= 0 \
         && document.documentElement.scrollWidth <= window.innerWidth",
    );
    browser.screenshot("phone-02-chat");
    browser.set_window(WINDOW.0, WINDOW.1);
}
