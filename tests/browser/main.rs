//! The chat page in a real browser: headless Chromium, driven over WebDriver, against real
//! servers (and a few stand-ins, in `fakes.rs`).
//!
//! One test, so that Chromium starts once; it runs one scenario per concern, each in its own
//! file and against its own server: chatting through a proxy that cuts the network and a
//! server that is killed mid-turn (`chat.rs`), the conversation list, paging and export
//! (`conversations.rs`), editing, another answer, Retry and the arrows between branches, in
//! two tabs and across a reload (`branches.rs`), the model menu (`models.rs`), personas, token usage, a reload mid-answer and rendered answers with
//! the markdown payload list (`answers.rs`), memories listed, added, edited and deleted, and
//! the hints each kind of model gets (`memories.rs`), errors in words with their details
//! (`errors.rs`), the phone layout (`phone.rs`), tokens (`tokens.rs`), signing in and out (`accounts.rs`), MCP tool cards: Allow
//! and Deny, "running…" once allowed, progress, images (`mcp.rs`), an MCP server's
//! forms and sampling requests answered on the card (`mcp_asks.rs`), files attached by the
//! paperclip, drag and drop and paste, thumbnails, downloads, the Files panel, files kept on
//! edits, uploads that never run (`files.rs`), share links made, opened in a tab without a token
//! (their answers sanitised) and revoked (`shares.rs`). At the end the console must
//! hold no script error and no Content-Security-Policy violation. Screenshots go to `target/browser-artifacts/`.
//!
//! Chromium and chromedriver must be installed (`scripts/test` installs Debian's `chromium` and
//! `chromium-driver`); without them the test fails, unless `SPARKY_SKIP_BROWSER=1` is set.

#[path = "../support/mod.rs"]
mod support;

mod accounts;
mod answers;
mod branches;
mod chat;
mod conversations;
mod driver;
mod errors;
mod fakes;
mod files;
mod mcp;
mod mcp_asks;
mod memories;
mod models;
mod phone;
mod shares;
mod tokens;

use std::time::Instant;

use driver::{Browser, BrowserTools, artifacts_dir, notice};

#[test]
fn the_chat_page_works_in_a_real_browser() {
    let Some(tools) = BrowserTools::find() else {
        return;
    };
    let started = Instant::now();
    let browser = Browser::start(&tools);

    chat::run(&browser);
    conversations::run(&browser);
    branches::run(&browser);
    answers::run(&browser);
    memories::run(&browser);
    errors::run(&browser);
    models::run(&browser);
    phone::run(&browser);
    tokens::run(&browser);
    accounts::run(&browser);
    mcp::run(&browser);
    mcp_asks::run(&browser);
    files::run(&browser);
    shares::run(&browser);

    // No script error and no Content-Security-Policy violation anywhere along the way; the
    // only errors are the network failures the scenarios cause on purpose (a cut network, a
    // killed server, a refused token, a deleted conversation).
    let console = browser.console();
    std::fs::write(artifacts_dir().join("console.log"), console.join("\n")).unwrap();
    for entry in &console {
        let expected = entry.contains("WebSocket connection to")
            || entry.contains("Failed to load resource: net::ERR_")
            || entry.contains("status of 401 (Unauthorized)")
            || entry.contains("status of 404 (Not Found)")
            || entry.contains("status of 413 (")
            || entry.contains("status of 507 (");
        assert!(
            expected || !entry.starts_with("\"SEVERE\""),
            "the browser console says: {entry}"
        );
        assert!(
            !entry.contains("Content Security Policy")
                && !entry.contains("Content-Security-Policy")
                && !entry.contains("Refused to")
                && !entry.contains("Uncaught"),
            "the browser console says: {entry}"
        );
    }

    drop(browser);
    notice(&format!(
        "browser test took {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        artifacts_dir().display()
    ));
}
