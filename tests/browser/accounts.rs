//! Accounts: the page offers a sign-in beside the token, says when a password is wrong, signs
//! in with the session cookie (the WebSocket and the API carry it; changes send the CSRF
//! header), and "Sign out" ends the sign-in and asks again.

use std::process::{Command, Stdio};

use crate::driver::{Browser, CONNECTED, Submit, TOKEN_FORM};
use crate::support::{ChildServer, store_args, temp_dir};

pub fn run(browser: &Browser) {
    let dir = temp_dir("browser-accounts");
    let dir_arg = dir.to_str().unwrap().to_owned();
    let server = ChildServer::start(&["--data-dir", &dir_arg]);
    let mut add = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(store_args(&[
            "user",
            "add",
            "alice",
            "--password-stdin",
            "--data-dir",
            &dir_arg,
        ]))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        add.stdin
            .take()
            .unwrap()
            .write_all(b"alice's password\n")
            .unwrap();
    }
    assert!(add.wait().unwrap().success());

    browser.goto(&format!("http://{}/", server.addr));
    browser.wait_for("the sign-in form", TOKEN_FORM);
    browser.screenshot("accounts-01-sign-in");
    browser.type_into("#signin-name", "alice");
    browser.type_into("#signin-password", "not it\u{E007}");
    browser.wait_for(
        "the wrong password note",
        "return document.getElementById('signin-note').textContent.includes('Wrong name or password')",
    );
    browser.type_into("#signin-password", "alice's password\u{E007}");
    browser.wait_for(
        "the form to go",
        "return document.getElementById('token-box').hidden",
    );
    browser.say("signed in", Submit::EnterKey);
    browser.wait_for("the page to connect with the cookie", CONNECTED);
    browser.wait_for_turn(1, "done");
    assert_eq!(
        browser.eval("return document.getElementById('sign-out').hidden"),
        false
    );
    // A change sends the CSRF header: a memory added by hand is accepted.
    let added = browser.eval_async(
        "const done = arguments[arguments.length - 1]; \
         fetch('/api/memories', {method: 'POST', headers: {'Content-Type': 'application/json', \
           'X-Sparky-CSRF': localStorage.getItem('sparky.csrf')}, \
           body: JSON.stringify({content: 'alice likes tea'})}).then(r => done(r.status))",
    );
    assert_eq!(added, 201);
    browser.wait_for(
        "the list with the conversation",
        "return document.querySelectorAll('#conversation-list .conversation').length === 1",
    );
    browser.screenshot("accounts-02-signed-in");

    browser.click("#sign-out");
    browser.wait_for("the sign-in form after signing out", TOKEN_FORM);
    assert_eq!(
        browser.eval("return localStorage.getItem('sparky.csrf')"),
        serde_json::Value::Null
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('#conversation-list .conversation').length"),
        0
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
