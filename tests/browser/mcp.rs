//! MCP tools on the page: a call that waits for approval shows Allow and Deny on its card (and
//! each does what it says), an allowed call reads "running…" (not the answer given) until its
//! result, a long call shows a progress bar while it reports progress, and an image a tool
//! returns is stored as a file and shown on its card (under the page's CSP, `img-src blob:`).
//! Against the Python fixture server with its extra tools (`MCP_FIXTURE_EXTRAS=1`).

use serde_json::json;

use crate::driver::{Browser, CONNECTED, Submit};
use crate::support::{self, ChildServer};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_fixture.py");

pub fn run(browser: &Browser) {
    let dir = support::temp_dir("browser-mcp");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mcp.json");
    // `delete` and the long `progress` ask first.
    let servers = json!({"mcpServers": {"fx": {
        "command": "python3", "args": [FIXTURE], "env": {"MCP_FIXTURE_EXTRAS": "1"},
        "approve": ["delete", "progress"]
    }}});
    std::fs::write(&config, servers.to_string()).unwrap();
    let data = dir.join("data");
    let (data, config) = (data.to_str().unwrap(), config.to_str().unwrap());
    let server = ChildServer::start(&["--data-dir", data, "--mcp-config", config]);
    let page = format!("http://{}/", server.addr);
    browser.goto(&page);
    // The fixture starts in the background: wait until its tools are listed.
    support::wait_until("the fixture's tools", || {
        let client = support::Client::connect(server.addr, json!({}));
        client.seen.iter().any(|f| match &f.frame {
            sparky::common::protocol::ServerFrame::Ready { tools, .. } => {
                tools.iter().any(|t| t == "fx__delete")
            }
            _ => false,
        })
    });

    // Allow: the card asks, the click runs the call.
    browser.say(r#"/tool fx__delete {"path": "/a"}"#, Submit::EnterKey);
    browser.wait_for("the page to connect", CONNECTED);
    browser.wait_for(
        "Allow and Deny on the card",
        "const box = document.querySelector('.turn[data-turn-id=\"1\"] .tool.asking'); \
         return box !== null && box.querySelector('button.allow') !== null \
           && box.querySelector('button.deny') !== null \
           && box.querySelector('.state').textContent === 'waiting for approval'",
    );
    browser.screenshot("mcp-approval");
    browser.click(".turn[data-turn-id=\"1\"] .tool button.allow");
    browser.wait_for_turn(1, "done");
    let turn = browser.turn(1);
    assert_eq!(
        turn["tools"],
        json!(["fx__delete|done|{\"path\":\"/a\"}|deleted /a"])
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('.tool .approval').length"),
        0
    );

    // Deny: the call never runs; the model is told.
    browser.say(r#"/tool fx__delete {"path": "/b"}"#, Submit::EnterKey);
    browser.wait_for(
        "Deny on the second card",
        "return document.querySelector('.turn[data-turn-id=\"2\"] .tool button.deny') !== null",
    );
    browser.click(".turn[data-turn-id=\"2\"] .tool button.deny");
    browser.wait_for_turn(2, "done");
    let tools = browser.turn(2)["tools"].clone();
    let card = tools[0].as_str().unwrap();
    assert!(
        card.starts_with("fx__delete|error|")
            && card.ends_with("the user denied this call; it was not run"),
        "{card}"
    );

    // Allowed, a long call reads "running…", without the buttons; then a progress bar with
    // the tool's words while it runs, gone once it answers.
    browser.say(
        r#"/tool fx__progress {"steps": 6, "interval_ms": 300}"#,
        Submit::EnterKey,
    );
    browser.wait_for(
        "Allow on the third card",
        "return document.querySelector('.turn[data-turn-id=\"3\"] .tool button.allow') !== null",
    );
    browser.click(".turn[data-turn-id=\"3\"] .tool button.allow");
    let card = browser.eval(
        "const box = document.querySelector('.turn[data-turn-id=\"3\"] .tool'); \
         return [box.className, box.querySelector('.state').textContent, \
                 box.querySelectorAll('button').length]",
    );
    assert_eq!(card, json!(["tool running", "running…", 0]));
    let label = browser.wait_for(
        "a progress bar on the card",
        "const bar = document.querySelector('.turn[data-turn-id=\"3\"] .tool .progress progress'); \
         return bar !== null && bar.max === 6 && bar.value >= 1 \
           && document.querySelector('.turn[data-turn-id=\"3\"] .tool .progress .label').textContent",
    );
    assert!(label.as_str().unwrap().starts_with("step "), "{label}");
    browser.screenshot("mcp-progress");
    browser.wait_for_turn(3, "done");
    assert_eq!(
        browser.eval("return document.querySelectorAll('.tool .progress').length"),
        0
    );
    assert_eq!(
        browser.turn(3)["tools"][0],
        "fx__progress|done|{\"interval_ms\":300,\"steps\":6}|done in 6 steps"
    );

    // An image: stored as a file, listed on the tool result, and shown on the card as a
    // thumbnail (fetched with the page's credentials, from a blob: URL); its note stays in the
    // text, without a data: URL.
    browser.say("/tool fx__image {}", Submit::EnterKey);
    browser.wait_for_turn(4, "done");
    let image = browser.wait_for(
        "the image on the card",
        "const img = document.querySelector('.turn[data-turn-id=\"4\"] .tool .tool-files .file-image img'); \
         return img !== null && img.complete && img.naturalWidth === 1 \
           && [img.src.slice(0, 5), img.closest('.file').querySelector('.size').textContent]",
    );
    assert_eq!(image, json!(["blob:", "70 B"]));
    assert_eq!(
        browser.turn(4)["tools"][0],
        "fx__image|done|{}|a red dot\n[image: image/png, 70 B]"
    );
    browser.screenshot("mcp-image");
    drop(server);
}
