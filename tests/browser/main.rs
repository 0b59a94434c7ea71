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
//! forms and sampling requests answered on the card (`mcp_asks.rs`), an OAuth-protected MCP
//! server connected from the Tools panel (`oauth.rs`), files attached by the
//! paperclip, drag and drop and paste, thumbnails, downloads, the Files panel, files kept on
//! edits, uploads that never run (`files.rs`), share links made, opened in a tab without a token
//! (their answers sanitised) and revoked (`shares.rs`), a team: an admin and a user added from
//! the shell, the user's API tokens, share link in a fresh profile and sign-out, the admin's
//! Users panel (`team.rs`). At the end the console must
//! hold no script error and no Content-Security-Policy violation. Screenshots go to `target/browser-artifacts/`.
//!
//! `SPARKY_BROWSER_SCENARIOS=accounts,team` runs only the scenarios it names (by file name).
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
mod oauth;
mod phone;
mod shares;
mod team;
mod tokens;

use std::time::Instant;

use driver::{Browser, BrowserTools, artifacts_dir, notice};

/// True when the scenario `name` is to run: every one, unless `SPARKY_BROWSER_SCENARIOS` names
/// some (`accounts,team`).
fn wanted(name: &str) -> bool {
    std::env::var("SPARKY_BROWSER_SCENARIOS")
        .map_or(true, |list| list.split(',').any(|n| n.trim() == name))
}

#[test]
fn the_chat_page_works_in_a_real_browser() {
    let Some(tools) = BrowserTools::find() else {
        return;
    };
    let started = Instant::now();
    let browser = Browser::start(&tools);

    if wanted("chat") {
        chat::run(&browser);
    }
    if wanted("conversations") {
        conversations::run(&browser);
    }
    if wanted("branches") {
        branches::run(&browser);
    }
    if wanted("answers") {
        answers::run(&browser);
    }
    if wanted("memories") {
        memories::run(&browser);
    }
    if wanted("errors") {
        errors::run(&browser);
    }
    if wanted("models") {
        models::run(&browser);
    }
    if wanted("phone") {
        phone::run(&browser);
    }
    if wanted("tokens") {
        tokens::run(&browser);
    }
    if wanted("accounts") {
        accounts::run(&browser);
    }
    if wanted("mcp") {
        mcp::run(&browser);
    }
    if wanted("mcp_asks") {
        mcp_asks::run(&browser);
    }
    if wanted("oauth") {
        oauth::run(&browser);
    }
    if wanted("files") {
        files::run(&browser);
    }
    if wanted("shares") {
        shares::run(&browser);
    }
    if wanted("team") {
        team::run(&browser, &tools);
    }

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
