//! A team on one server: an admin (`boss`) and a user (`alice`) added from the shell; alice
//! signs in, chats, shares the conversation (the link opens in a fresh browser profile, with no
//! cookie, read-only), makes an API token on the page (its secret, shown once, works from a
//! plain HTTP client; a revoked one does not), sees today's use, and signs out (the old cookie
//! stops working); her API token entered in the token form brings her account too. Then boss's
//! "Users" panel lists alice with her conversation, adds an account with a one-time password
//! and removes it, and sets alice's daily turns to the one she used; alice, signed in again,
//! is refused her next turn in words.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::driver::{Browser, BrowserTools, OPEN_ID, Submit, TOKEN_FORM};
use crate::support::{ChildServer, http, http_raw, store_args, temp_dir};

pub fn run(browser: &Browser, tools: &BrowserTools) {
    let dir = temp_dir("browser-team");
    let dir_arg = dir.to_str().unwrap().to_owned();
    let server = ChildServer::start(&["--data-dir", &dir_arg]);
    add_user(&dir_arg, "boss", "boss's password", true);
    add_user(&dir_arg, "alice", "alice's password", false);

    browser.goto(&format!("http://{}/", server.addr));
    browser.wait_for("the sign-in form", TOKEN_FORM);
    sign_in(browser, "alice", "alice's password");
    browser.wait_for(
        "alice's name in the sidebar",
        "return document.getElementById('account-name').textContent === 'Signed in as alice'",
    );
    let shown = browser.eval(
        "return { account: !document.getElementById('open-account').hidden, \
                  users: !document.getElementById('open-users').hidden }",
    );
    assert_eq!(shown["account"], true, "{shown}");
    assert_eq!(shown["users"], false, "alice is no admin: {shown}");

    browser.say("hello from alice", Submit::EnterKey);
    browser.wait_for_turn(1, "done");
    assert_eq!(browser.turn(1)["answer"], "You said: hello from alice");

    // Share: the link opens in a fresh profile (no cookie, no storage), read-only.
    let url = crate::shares::share(browser);
    browser.click("#shares-close");
    {
        let fresh = Browser::start(tools);
        fresh.goto(&url);
        fresh.wait_for(
            "the shared copy in a fresh profile",
            "return document.body.dataset.loaded === 'true'",
        );
        fresh.screenshot("team-01-share-fresh-profile");
        let copy = fresh.eval(
            "return { answer: document.querySelector('.bubble.answer').textContent, \
                      controls: document.querySelectorAll('input, textarea, button, #composer').length, \
                      cookie: document.cookie }",
        );
        assert!(
            copy["answer"]
                .as_str()
                .unwrap()
                .contains("You said: hello from alice"),
            "{copy}"
        );
        assert_eq!(
            copy["controls"], 0,
            "no composer, no approval buttons: {copy}"
        );
        assert_eq!(
            fresh.cookie("sparky_session"),
            None,
            "the fresh profile has no sign-in"
        );
    }

    // An API token made on the page: shown once, it works from a plain HTTP client.
    browser.click("#open-account");
    browser.wait_for(
        "the account box",
        "return !document.getElementById('account-box').hidden \
         && document.getElementById('apitoken-note').textContent.includes('No API tokens')",
    );
    assert_eq!(
        browser.eval("return document.getElementById('account-user').textContent"),
        "alice"
    );
    browser.type_into("#apitoken-name", "laptop script\u{E007}");
    let secret = browser.wait_for(
        "the new token's secret",
        "return !document.getElementById('apitoken-new').hidden \
         && document.getElementById('apitoken-secret').value",
    );
    let secret = secret.as_str().unwrap().to_owned();
    assert!(
        browser
            .eval("return document.getElementById('apitoken-new').textContent")
            .as_str()
            .unwrap()
            .contains("will not be shown again")
    );
    browser.wait_for(
        "the token in the list",
        "return Array.from(document.querySelectorAll('#apitoken-list .apitoken .name')) \
         .map((n) => n.textContent).join() === 'laptop script'",
    );
    browser.screenshot("team-02-api-token");
    let (status, body) = http(
        server.addr,
        "GET",
        "/api/conversations",
        Some(&secret),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        listed["conversations"].as_array().unwrap().len(),
        1,
        "{listed}"
    );

    // A second token, revoked on the page (asked first), stops working.
    browser.type_into("#apitoken-name", "to revoke\u{E007}");
    let doomed = browser.wait_for(
        "the second secret",
        &format!(
            "const v = document.getElementById('apitoken-secret').value; \
             return v !== '{secret}' && v"
        ),
    );
    let doomed = doomed.as_str().unwrap().to_owned();
    assert_eq!(listed_with(server.addr, &doomed), 200);
    browser.wait_for(
        "two tokens listed",
        "return document.querySelectorAll('#apitoken-list .apitoken').length === 2",
    );
    browser.eval(
        "Array.from(document.querySelectorAll('#apitoken-list .apitoken')) \
         .find((t) => t.querySelector('.name').textContent === 'to revoke') \
         .querySelector('.revoke').click()",
    );
    browser.wait_for(
        "the confirm box",
        "return !document.getElementById('confirm-box').hidden \
         && document.getElementById('confirm-title').textContent === 'Revoke this token?'",
    );
    browser.click("#confirm-ok");
    browser.wait_for(
        "one token left",
        "return document.querySelectorAll('#apitoken-list .apitoken').length === 1",
    );
    assert_eq!(listed_with(server.addr, &doomed), 401);
    assert_eq!(listed_with(server.addr, &secret), 200);

    // Today's use, in the sidebar and the account box.
    let (usage_status, usage) = http(server.addr, "GET", "/api/usage", Some(&secret), None);
    assert_eq!(usage_status, 200, "{usage}");
    let usage: Value = serde_json::from_str(&usage).unwrap();
    assert_eq!(usage["turns"], 1, "{usage}");
    browser.wait_for(
        "today's use in the sidebar",
        "return !document.getElementById('usage-today').hidden \
         && document.getElementById('usage-today').textContent.startsWith('Today: 1 turn,')",
    );
    browser.click("#account-close");

    // Sign out: the page asks again, and the old cookie no longer works.
    let cookie = browser
        .cookie("sparky_session")
        .expect("the sign-in cookie");
    assert_eq!(with_cookie(server.addr, &cookie), 200);
    browser.click("#sign-out");
    browser.wait_for("the sign-in form after signing out", TOKEN_FORM);
    assert_eq!(with_cookie(server.addr, &cookie), 401);
    assert_eq!(
        browser.eval(
            "return [localStorage.getItem('sparky.csrf'), localStorage.getItem('sparky.account')]"
        ),
        serde_json::json!([null, null])
    );
    assert_eq!(
        browser.eval(OPEN_ID),
        "",
        "whoever signs in next starts on a new chat"
    );

    // alice's API token in the token form, with no sign-in: the page asks the server who it
    // stands for (`GET /api/me`) and shows her account as a sign-in does.
    browser.type_into("#token", &format!("{secret}\u{E007}"));
    browser.wait_for(
        "alice's account by her API token",
        "return document.getElementById('token-box').hidden \
         && document.getElementById('account-name').textContent === 'Signed in as alice' \
         && !document.getElementById('open-account').hidden \
         && document.getElementById('open-users').hidden",
    );
    browser.click("#forget-token");
    browser.wait_for("the sign-in form after forgetting the token", TOKEN_FORM);

    // boss: the Users panel lists alice with her conversation, never its content.
    sign_in(browser, "boss", "boss's password");
    browser.wait_for(
        "the Users button",
        "return !document.getElementById('open-users').hidden",
    );
    browser.click("#open-users");
    let alice = browser.wait_for(
        "alice in the list",
        "const item = document.querySelector('#user-list .user[data-name=\"alice\"]'); \
         return item && item.querySelector('.facts').textContent",
    );
    let alice = alice.as_str().unwrap();
    assert!(alice.contains("1 conversation ·"), "{alice}");
    assert!(alice.contains("1 API token, last used"), "{alice}");
    let text = browser.eval("return document.getElementById('users-box').innerText");
    assert!(
        !text.as_str().unwrap().contains("hello from alice"),
        "the admin sees no content: {text}"
    );
    browser.screenshot("team-03-users");

    // An account added on the page gets a password shown once, which signs in; then removed.
    browser.type_into("#user-new-name", "bob\u{E007}");
    let password = browser.wait_for(
        "bob's one-time password",
        "return !document.getElementById('user-made').hidden \
         && document.querySelector('#user-list .user[data-name=\"bob\"]') !== null \
         && document.getElementById('user-made-password').value",
    );
    let login = serde_json::json!({"name": "bob", "password": password}).to_string();
    let (status, body) = http(server.addr, "POST", "/api/login", None, Some(&login));
    assert_eq!(status, 200, "bob signs in with the shown password: {body}");
    browser.click("#user-list .user[data-name=\"bob\"] .remove");
    browser.wait_for(
        "the confirm box",
        "return !document.getElementById('confirm-box').hidden",
    );
    browser.click("#confirm-ok");
    browser.wait_for(
        "bob gone",
        "return document.querySelector('#user-list .user[data-name=\"bob\"]') === null \
         && document.getElementById('user-note').textContent.includes('bob was removed')",
    );
    let (status, _) = http(server.addr, "POST", "/api/login", None, Some(&login));
    assert_eq!(status, 401, "a removed account cannot sign in");

    // Limits: alice's daily turns set on the page to the one she has used.
    browser.type_into(
        "#user-list .user[data-name=\"alice\"] input[name=\"daily_turns\"]",
        "1",
    );
    browser.click("#user-list .user[data-name=\"alice\"] .limits .save");
    browser.wait_for(
        "the limits set",
        "return document.getElementById('user-note').textContent.includes('limits of alice are set')",
    );
    let turns = browser.eval_async(
        "const done = arguments[arguments.length - 1]; \
         fetch('/api/users').then((r) => r.json()).then((d) => \
           done(d.users.find((u) => u.name === 'alice').daily_turns))",
    );
    assert_eq!(turns, 1);
    browser.screenshot("team-04-limits");
    browser.click("#users-close");

    // alice, back, is told in words that her day is used up, and her use shows it.
    browser.click("#sign-out");
    browser.wait_for("the sign-in form after boss", TOKEN_FORM);
    sign_in(browser, "alice", "alice's password");
    browser.wait_for(
        "alice signed in again",
        "return document.getElementById('account-name').textContent === 'Signed in as alice'",
    );
    browser.say("one more, please", Submit::EnterKey);
    browser.wait_for(
        "the quota refusal in words",
        "return document.getElementById('log').innerText.includes('Daily quota reached: 1 of your 1 turns a day are used')",
    );
    browser.wait_for(
        "today's use at its limit",
        "return document.getElementById('usage-today').textContent.startsWith('Today: 1 turn (of 1)')",
    );
    browser.screenshot("team-05-quota");

    // Leave no sign-in behind for the scenarios after this one (cookies ignore the port).
    browser.click("#sign-out");
    browser.wait_for("the sign-in form at the end", TOKEN_FORM);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sparky user add NAME [--admin] --password-stdin` against the server's data directory.
fn add_user(dir: &str, name: &str, password: &str, admin: bool) {
    let mut args = vec!["user", "add", name, "--password-stdin", "--data-dir", dir];
    if admin {
        args.push("--admin");
    }
    let mut add = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(store_args(&args))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = add.stdin.take().unwrap();
        stdin.write_all(password.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
    }
    assert!(add.wait().unwrap().success(), "sparky user add {name}");
}

/// Signs in on the form and waits for it to go.
fn sign_in(browser: &Browser, name: &str, password: &str) {
    browser.wait_for("the sign-in form", TOKEN_FORM);
    browser.eval("document.getElementById('signin-name').value = ''");
    browser.type_into("#signin-name", name);
    browser.type_into("#signin-password", &format!("{password}\u{E007}"));
    browser.wait_for(
        "the form to go",
        "return document.getElementById('token-box').hidden",
    );
}

/// The status of `GET /api/conversations` with the API token `secret`.
fn listed_with(addr: SocketAddr, secret: &str) -> u16 {
    http(addr, "GET", "/api/conversations", Some(secret), None).0
}

/// The status of `GET /api/conversations` with the sign-in cookie `value` and nothing else.
fn with_cookie(addr: SocketAddr, value: &str) -> u16 {
    let cookie = format!("sparky_session={value}");
    http_raw(
        addr,
        "GET",
        "/api/conversations",
        &[("Cookie", &cookie)],
        b"",
    )
    .0
}
