//! What an MCP server asks during a call, on the page, against the real
//! `@modelcontextprotocol/server-everything` (installed by `scripts/npm-fixtures.sh`): its
//! elicitation tool's form rendered from the schema and answered with Accept (a field typed
//! in), Decline and Cancel; its sampling tool's messages on a card, answered by the offline
//! model after Allow, and after "Always allow" no card for its next request.

use std::path::Path;

use serde_json::json;

use crate::driver::{Browser, CONNECTED, Submit};
use crate::support::mcp::{EVERYTHING, NODE};
use crate::support::{self, ChildServer};

/// The result text on the card of turn `turn`'s tool.
fn result(browser: &Browser, turn: u64) -> String {
    let script = format!(
        "return document.querySelector('.turn[data-turn-id=\"{turn}\"] .tool .result').textContent"
    );
    browser
        .eval(&script)
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits for the card of turn `turn` to ask (`what` on it).
fn wait_for_card(browser: &Browser, turn: u64, what: &str) {
    browser.wait_for(
        &format!("the ask card of turn {turn}"),
        &format!(
            "return document.querySelector('.turn[data-turn-id=\"{turn}\"] .tool .ask-card {what}') !== null"
        ),
    );
}

pub fn run(browser: &Browser) {
    if !Path::new(EVERYTHING).exists() || !Path::new(NODE).exists() {
        let message = format!("{EVERYTHING} is missing: run scripts/npm-fixtures.sh");
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("skipped the MCP asks scenario: {message}");
        return;
    }
    let dir = support::temp_dir("browser-mcp-asks");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mcp.json");
    let servers = json!({"mcpServers": {"everything": {
        "command": NODE, "args": [EVERYTHING, "stdio"], "approve": "never"
    }}});
    std::fs::write(&config, servers.to_string()).unwrap();
    let data = dir.join("data");
    let (data, config) = (data.to_str().unwrap(), config.to_str().unwrap());
    let server = ChildServer::start(&["--data-dir", data, "--mcp-config", config]);
    support::wait_until("server-everything's tools", || {
        let client = support::Client::connect(server.addr, json!({}));
        client.seen.iter().any(|f| match &f.frame {
            sparky::common::protocol::ServerFrame::Ready { tools, .. } => tools
                .iter()
                .any(|t| t == "everything__trigger-elicitation-request"),
            _ => false,
        })
    });
    browser.goto(&format!("http://{}/", server.addr));

    // A form from the schema: the required name typed in, then Accept.
    browser.say(
        "/tool everything__trigger-elicitation-request {}",
        Submit::EnterKey,
    );
    browser.wait_for("the page to connect", CONNECTED);
    wait_for_card(browser, 1, ".ask-form");
    let kinds = browser.eval(
        "return [...document.querySelectorAll('.turn[data-turn-id=\"1\"] .ask-field')] \
           .map(f => f.querySelector('input, select').type)",
    );
    let kinds: Vec<&str> = kinds
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"checkbox") && kinds.contains(&"email") && kinds.contains(&"number"),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"select-one"), "{kinds:?}");
    browser.screenshot("mcp-elicitation");
    browser.type_into(
        ".turn[data-turn-id=\"1\"] .ask-field[data-name=\"name\"] input",
        "Page Person",
    );
    browser.click(".turn[data-turn-id=\"1\"] .ask-card button.allow");
    browser.wait_for_turn(1, "done");
    let text = result(browser, 1);
    assert!(text.contains("- Name: Page Person"), "{text}");
    assert_eq!(
        browser.eval("return document.querySelectorAll('.tool .ask-card').length"),
        0
    );

    // Decline and Cancel.
    for (turn, button, said) in [(2, "deny", "declined"), (3, "cancel", "cancelled")] {
        browser.say(
            "/tool everything__trigger-elicitation-request {}",
            Submit::EnterKey,
        );
        wait_for_card(browser, turn, ".ask-form");
        browser.click(&format!(
            ".turn[data-turn-id=\"{turn}\"] .ask-card button.{button}"
        ));
        browser.wait_for_turn(turn, "done");
        let text = result(browser, turn);
        assert!(text.contains(said), "{button}: {text}");
    }

    // Sampling: the messages on a card; Allow has the offline model answer.
    let sample = r#"/tool everything__trigger-sampling-request {"prompt": "from the page", "maxTokens": 30}"#;
    browser.say(sample, Submit::EnterKey);
    wait_for_card(browser, 4, ".ask-message");
    let asked = browser
        .eval("return document.querySelector('.turn[data-turn-id=\"4\"] .ask-card').textContent");
    assert!(asked.as_str().unwrap().contains("from the page"), "{asked}");
    browser.screenshot("mcp-sampling");
    browser.click(".turn[data-turn-id=\"4\"] .ask-card .ask-buttons button.allow:first-child");
    browser.wait_for_turn(4, "done");
    let text = result(browser, 4);
    assert!(text.contains("LLM sampling result"), "{text}");

    // "Always allow": this request runs, and the next one asks nobody.
    browser.say(sample, Submit::EnterKey);
    wait_for_card(browser, 5, ".ask-message");
    browser.click(".turn[data-turn-id=\"5\"] .ask-card .ask-buttons button.allow:nth-child(2)");
    browser.wait_for_turn(5, "done");
    browser.say(sample, Submit::EnterKey);
    browser.wait_for_turn(6, "done");
    let text = result(browser, 6);
    assert!(text.contains("LLM sampling result"), "{text}");
}
