//! Share links: "Share" makes a link to the conversation and shows it, the "Shares" box lists
//! it; the link opens in another tab, which has no token, as a read-only page whose answer is
//! rendered as sanitised markdown (a `<script>` in it runs nothing); Revoke makes the link a
//! `404`.

use crate::driver::{Browser, Submit, TOKEN_FORM};
use crate::support::ChildServer;

pub fn run(browser: &Browser) {
    let server = ChildServer::start(&["--in-memory", "--auth-token", "share-secret"]);
    browser.goto(&format!("http://{}/", server.addr));
    browser.wait_for("the token form", TOKEN_FORM);
    browser.type_into("#token", "share-secret\u{E007}");
    browser.say(
        "<script>window.pwned = 1</script> <img src=x onerror=\"window.pwned = 2\"> **bold**",
        Submit::EnterKey,
    );
    browser.wait_for_turn(1, "done");

    let url = share(browser);
    browser.wait_for(
        "the link in the list",
        "return document.querySelectorAll('#share-list .share').length === 1",
    );
    browser.screenshot("shares-01-made");

    // Another tab, with no token: the page reads the copy without one.
    let chat = browser.window_handle();
    let tab = browser.new_tab();
    browser.switch_to(&tab);
    browser.goto(&url);
    browser.wait_for(
        "the shared copy",
        "return document.body.dataset.loaded === 'true'",
    );
    browser.screenshot("shares-02-page");
    let shown = browser.eval(
        "const answer = document.querySelector('.bubble.answer'); \
         return { bold: answer.querySelector('strong') && answer.querySelector('strong').textContent, \
                  scripts: document.querySelectorAll('#log script, #log img').length, \
                  pwned: window.pwned === undefined ? null : window.pwned, \
                  inputs: document.querySelectorAll('input, textarea, button').length, \
                  user: document.querySelector('.bubble.user').textContent }",
    );
    assert_eq!(shown["bold"], "bold", "{shown}");
    assert_eq!(shown["scripts"], 0, "{shown}");
    assert_eq!(shown["pwned"], serde_json::Value::Null, "{shown}");
    assert_eq!(shown["inputs"], 0, "{shown}");
    assert!(
        shown["user"].as_str().unwrap().contains("<script>"),
        "what the person wrote is shown as text: {shown}"
    );

    // Revoke, in the chat's tab: the link's page says it is gone.
    browser.switch_to(&chat);
    browser.click("#share-list .share .revoke");
    browser.wait_for(
        "the list to be empty",
        "return document.querySelectorAll('#share-list .share').length === 0",
    );
    browser.switch_to(&tab);
    browser.refresh();
    browser.wait_for(
        "the revoked page",
        "return document.body.innerText.includes('not found')",
    );
    browser.close_tab();
    browser.switch_to(&chat);
}

/// Clicks "Share" and returns the new link the Shares box shows.
pub fn share(browser: &Browser) -> String {
    browser.click("#share-chat");
    let url = browser.wait_for(
        "the new link",
        "return !document.getElementById('shares-box').hidden \
         && document.getElementById('share-url').value",
    );
    let url = url.as_str().unwrap().to_owned();
    assert!(url.contains("/s/"), "{url}");
    url
}
