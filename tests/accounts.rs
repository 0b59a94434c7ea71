//! User accounts (PROTOCOL.md section 8, "Accounts"): the `sparky user` commands beside a
//! running server, signing in and out with the session cookie and its CSRF header, failed
//! sign-ins (the same answer for an unknown name and a wrong password, then 429), API tokens,
//! the admin's accounts, `GET /api/me`, revocation that closes live sockets (1008), and privacy
//! across users.
//! Runs on SQLite, and on PostgreSQL with `SPARKY_TEST_STORE=postgres`.

mod support;

use serde_json::json;
use sparky::common::protocol::{ErrorCode, ServerFrame};
use support::accounts::{
    SignedIn, add_user, connected, login, login_raw, make_token, socket_with_cookie, start,
    start_with, user_command, with_cookie,
};
use support::{Client, TestServer, http_json, sparky_command};
use tungstenite::protocol::frame::coding::CloseCode;

/// Reads the next frame: an `unauthorized` error.
fn expect_unauthorized(client: &mut Client) {
    let frame = client.next();
    assert!(
        matches!(
            frame.frame,
            ServerFrame::Error {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{frame:?}"
    );
}

fn expect_closed_1008(client: &mut Client) {
    let close = client.expect_close().expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy, "{close:?}");
}

#[test]
fn the_cli_adds_lists_and_removes_users_beside_a_running_server() {
    let server = start();
    // A made-up password, printed once.
    let out = user_command(&server.dir, &["add", "alice", "--admin"], "");
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let password = printed.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(printed.starts_with("added admin alice"), "{printed}");
    add_user(&server, "bob", "bob's password", false);
    let again = user_command(&server.dir, &["add", "bob", "--password-stdin"], "x\n");
    assert!(!again.status.success(), "a name is taken once");
    let bad = user_command(&server.dir, &["add", "no spaces"], "");
    assert!(!bad.status.success());

    let list = user_command(&server.dir, &["list"], "");
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(listed.contains("alice\tadmin"), "{listed}");
    assert!(listed.contains("bob\tuser"), "{listed}");
    assert!(!listed.contains(&password), "never a password");

    // The running server knows them at once.
    login(server.addr(), "alice", &password);
    login(server.addr(), "bob", "bob's password");

    let removed = user_command(&server.dir, &["remove", "bob"], "");
    assert!(removed.status.success(), "{removed:?}");
    let listed = String::from_utf8(user_command(&server.dir, &["list"], "").stdout).unwrap();
    assert!(!listed.contains("bob"), "{listed}");
    assert!(
        !user_command(&server.dir, &["remove", "bob"], "")
            .status
            .success()
    );
    assert_eq!(login_raw(server.addr(), "bob", "bob's password").0, 401);
}

#[test]
fn signing_in_sets_a_strict_cookie_and_signing_out_ends_it_at_once() {
    let server = start();
    add_user(&server, "alice", "pw-alice", false);
    // Accounts exist: nobody gets in without signing in.
    assert_eq!(
        http_json(server.addr(), "GET", "/api/conversations", None, None).0,
        401
    );
    let (status, headers, body) = login_raw(server.addr(), "alice", "pw-alice");
    assert_eq!(status, 200);
    assert_eq!(body["admin"], false);
    let cookie = &headers.iter().find(|(n, _)| n == "set-cookie").unwrap().1;
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "not without an https --public-url"
    );

    let alice = login(server.addr(), "alice", "pw-alice");
    let (status, list) = with_cookie(
        server.addr(),
        &alice,
        "GET",
        "/api/conversations",
        None,
        false,
    );
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["principal"], "alice");
    let (status, _) = with_cookie(server.addr(), &alice, "POST", "/api/logout", None, true);
    assert_eq!(status, 204);
    let (status, _) = with_cookie(
        server.addr(),
        &alice,
        "GET",
        "/api/conversations",
        None,
        false,
    );
    assert_eq!(status, 401, "the cookie stopped working");
}

#[test]
fn the_cookie_is_secure_behind_https() {
    let server = start_with(|config| config.public_url = Some("https://chat.example.com".into()));
    add_user(&server, "alice", "pw", false);
    let (status, headers, _) = login_raw(server.addr(), "alice", "pw");
    assert_eq!(status, 200);
    let cookie = &headers.iter().find(|(n, _)| n == "set-cookie").unwrap().1;
    assert!(cookie.contains("; Secure"), "{cookie}");
}

#[test]
fn a_wrong_password_and_an_unknown_name_answer_alike_then_lock_out() {
    let server = start();
    add_user(&server, "alice", "right", false);
    let (wrong_status, _, wrong) = login_raw(server.addr(), "alice", "wrong");
    let (unknown_status, _, unknown) = login_raw(server.addr(), "nobody", "wrong");
    assert_eq!(wrong_status, 401);
    assert_eq!((unknown_status, &unknown), (wrong_status, &wrong));
    // Four more failures for alice's name, and the name is locked, the right password too.
    for _ in 0..4 {
        assert_eq!(login_raw(server.addr(), "alice", "wrong").0, 401);
    }
    assert_eq!(login_raw(server.addr(), "alice", "right").0, 429);
    assert_eq!(login_raw(server.addr(), "alice", "wrong").0, 429);
}

#[test]
fn a_change_made_with_the_cookie_needs_the_csrf_header() {
    let server = start();
    add_user(&server, "alice", "pw", false);
    let alice = login(server.addr(), "alice", "pw");
    let fact = json!({"content": "the sky is green"});
    let (status, body) = with_cookie(
        server.addr(),
        &alice,
        "POST",
        "/api/memories",
        Some(&fact),
        false,
    );
    assert_eq!(status, 403, "{body}");
    let forged = SignedIn {
        cookie: alice.cookie.clone(),
        csrf: "forged".into(),
    };
    let (status, _) = with_cookie(
        server.addr(),
        &forged,
        "POST",
        "/api/memories",
        Some(&fact),
        true,
    );
    assert_eq!(status, 403);
    let (status, _) = with_cookie(server.addr(), &alice, "POST", "/api/logout", None, false);
    assert_eq!(status, 403, "signing out is a change too");
    let (status, body) = with_cookie(
        server.addr(),
        &alice,
        "POST",
        "/api/memories",
        Some(&fact),
        true,
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = with_cookie(server.addr(), &alice, "GET", "/api/memories", None, false);
    assert_eq!(status, 200);
    assert_eq!(body["memories"].as_array().unwrap().len(), 1, "{body}");
}

#[test]
fn api_tokens_stand_for_their_user_until_revoked_live_sockets_included() {
    let server = start();
    add_user(&server, "alice", "pw", false);
    let alice = login(server.addr(), "alice", "pw");
    let (token, id) = make_token(server.addr(), &alice, "laptop");
    let (status, list) = with_cookie(server.addr(), &alice, "GET", "/api/tokens", None, false);
    assert_eq!(status, 200);
    assert_eq!(list["tokens"][0]["name"], "laptop");
    assert!(!list.to_string().contains(&token), "never the secret again");

    // The token is alice: what it makes, her cookie sees.
    let mut socket = Client::connect(server.addr(), json!({"token": token}));
    let conversation = socket.session_id.clone().unwrap();
    socket.ask("hello from the laptop");
    let (status, list) = with_cookie(
        server.addr(),
        &alice,
        "GET",
        "/api/conversations",
        None,
        false,
    );
    assert_eq!(status, 200);
    assert!(list.to_string().contains(conversation.as_str()), "{list}");
    assert_eq!(
        http_json(
            server.addr(),
            "GET",
            "/api/conversations",
            Some(&token),
            None
        )
        .0,
        200
    );

    let (status, _) = with_cookie(
        server.addr(),
        &alice,
        "DELETE",
        &format!("/api/tokens/{id}"),
        None,
        true,
    );
    assert_eq!(status, 204);
    assert_eq!(
        http_json(
            server.addr(),
            "GET",
            "/api/conversations",
            Some(&token),
            None
        )
        .0,
        401,
        "a revoked token is refused at once"
    );
    expect_closed_1008(&mut socket);
    let mut refused = Client::open(server.addr());
    refused.send(json!({"type": "connect", "data": {"token": token}}));
    expect_unauthorized(&mut refused);
}

#[test]
fn a_removed_users_live_socket_is_closed_and_their_cookie_refused() {
    let server = start();
    // Another account stays: with none left, the server would be open again, as before any.
    add_user(&server, "alice", "pw", true);
    add_user(&server, "bob", "pw", false);
    let bob = login(server.addr(), "bob", "pw");
    let mut socket = connected(socket_with_cookie(server.addr(), &bob, json!({})));
    assert_eq!(socket.ask("still here?"), "You said: still here?");
    let out = user_command(&server.dir, &["remove", "bob"], "");
    assert!(out.status.success(), "{out:?}");
    expect_closed_1008(&mut socket);
    let (status, _) = with_cookie(
        server.addr(),
        &bob,
        "GET",
        "/api/conversations",
        None,
        false,
    );
    assert_eq!(status, 401);
}

#[test]
fn a_logged_out_cookies_live_socket_is_closed() {
    let server = start();
    add_user(&server, "bob", "pw", false);
    let bob = login(server.addr(), "bob", "pw");
    let mut socket = connected(socket_with_cookie(server.addr(), &bob, json!({})));
    let (status, _) = with_cookie(server.addr(), &bob, "POST", "/api/logout", None, true);
    assert_eq!(status, 204);
    expect_closed_1008(&mut socket);
}

#[test]
fn users_never_see_each_others_conversations() {
    let server = start();
    add_user(&server, "alice", "pw-a", true);
    add_user(&server, "bob", "pw-b", false);
    let alice = login(server.addr(), "alice", "pw-a");
    let bob = login(server.addr(), "bob", "pw-b");
    let mut socket = connected(socket_with_cookie(server.addr(), &bob, json!({})));
    let id = socket.session_id.clone().unwrap();
    socket.ask("bob's secret plan");
    let mine = format!("/api/conversations/{}", id.as_str());
    assert_eq!(
        with_cookie(server.addr(), &bob, "GET", &mine, None, false).0,
        200
    );

    // Alice, an admin, sees none of it: not in her list, not by id, not its events, not by
    // resuming it.
    let (status, list) = with_cookie(
        server.addr(),
        &alice,
        "GET",
        "/api/conversations",
        None,
        false,
    );
    assert_eq!(status, 200);
    assert!(!list.to_string().contains(id.as_str()), "{list}");
    let (status, list) = with_cookie(
        server.addr(),
        &alice,
        "GET",
        "/api/conversations?q=secret",
        None,
        false,
    );
    assert_eq!(status, 200);
    assert!(!list.to_string().contains(id.as_str()), "{list}");
    for path in [
        mine.clone(),
        format!("{mine}/events"),
        format!("{mine}/turns"),
    ] {
        assert_eq!(
            with_cookie(server.addr(), &alice, "GET", &path, None, false).0,
            404,
            "{path}"
        );
    }
    assert_eq!(
        with_cookie(server.addr(), &alice, "DELETE", &mine, None, true).0,
        404
    );
    let mut intruder = socket_with_cookie(
        server.addr(),
        &alice,
        json!({"session_id": id.as_str(), "last_seq": 0}),
    );
    expect_unauthorized(&mut intruder);
    expect_closed_1008(&mut intruder);
    // Bob still has it.
    assert_eq!(
        with_cookie(server.addr(), &bob, "GET", &mine, None, false).0,
        200
    );
}

#[test]
fn only_an_admin_manages_accounts() {
    let server = start();
    add_user(&server, "alice", "pw-a", true);
    add_user(&server, "bob", "pw-b", false);
    let alice = login(server.addr(), "alice", "pw-a");
    let bob = login(server.addr(), "bob", "pw-b");
    assert_eq!(
        with_cookie(server.addr(), &bob, "GET", "/api/users", None, false).0,
        403
    );
    let carol = json!({"name": "carol"});
    assert_eq!(
        with_cookie(
            server.addr(),
            &bob,
            "POST",
            "/api/users",
            Some(&carol),
            true
        )
        .0,
        403
    );
    assert_eq!(
        with_cookie(
            server.addr(),
            &bob,
            "DELETE",
            "/api/users/alice",
            None,
            true
        )
        .0,
        403
    );

    let mut socket = connected(socket_with_cookie(server.addr(), &bob, json!({})));
    socket.ask("one conversation of bob's");
    // The count is of stored conversations: the journal writes bob's soon.
    support::wait_until("bob's conversation to be counted", || {
        let (_, list) = with_cookie(server.addr(), &alice, "GET", "/api/users", None, false);
        list["users"][1]["conversations"] == 1
    });
    let (status, list) = with_cookie(server.addr(), &alice, "GET", "/api/users", None, false);
    assert_eq!(status, 200);
    assert_eq!(list["users"][0]["conversations"], 0, "{list}");
    let names: Vec<&str> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let (status, made) = with_cookie(
        server.addr(),
        &alice,
        "POST",
        "/api/users",
        Some(&carol),
        true,
    );
    assert_eq!(status, 201, "{made}");
    let password = made["password"].as_str().unwrap();
    login(server.addr(), "carol", password);
    assert_eq!(
        with_cookie(
            server.addr(),
            &alice,
            "POST",
            "/api/users",
            Some(&carol),
            true
        )
        .0,
        409
    );
    assert_eq!(
        with_cookie(
            server.addr(),
            &alice,
            "DELETE",
            "/api/users/carol",
            None,
            true
        )
        .0,
        204
    );
    assert_eq!(login_raw(server.addr(), "carol", password).0, 401);
}

#[test]
fn configured_tokens_and_accounts_work_side_by_side() {
    let server = start_with(|config| config.auth_tokens = vec!["operator-token".into()]);
    add_user(&server, "alice", "pw", false);
    let alice = login(server.addr(), "alice", "pw");
    let (status, operator) = http_json(
        server.addr(),
        "GET",
        "/api/conversations",
        Some("operator-token"),
        None,
    );
    assert_eq!(status, 200);
    let (status, mine) = with_cookie(
        server.addr(),
        &alice,
        "GET",
        "/api/conversations",
        None,
        false,
    );
    assert_eq!(status, 200);
    assert_ne!(operator["principal"], mine["principal"], "two principals");
    // A configured token is no user: it has no API tokens of its own.
    assert_eq!(
        http_json(
            server.addr(),
            "GET",
            "/api/tokens",
            Some("operator-token"),
            None
        )
        .0,
        403
    );
    let mut socket = Client::connect(server.addr(), json!({"token": "operator-token"}));
    assert_eq!(socket.ask("hi"), "You said: hi");
}

#[test]
fn a_user_removed_through_one_instance_is_closed_out_on_every_instance() {
    // Two instances on one PostgreSQL database, whatever store the rest of the run uses.
    let url = support::postgres::fresh_database();
    let instance = || TestServer::with_config(|config| config.database_url = Some(url.clone()));
    let (a, b) = (instance(), instance());
    for (name, admin) in [("alice", true), ("bob", false)] {
        let mut args = vec!["user", "add", name, "--password-stdin", "--store", &url];
        if admin {
            args.push("--admin");
        }
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let out = sparky_command(&args, "pw\n");
        assert!(out.status.success(), "{out:?}");
    }
    let bob = login(b.addr, "bob", "pw");
    let mut socket = connected(socket_with_cookie(b.addr, &bob, json!({})));
    assert_eq!(socket.ask("on b"), "You said: on b");
    let alice = login(a.addr, "alice", "pw");
    let (status, _) = with_cookie(a.addr, &alice, "DELETE", "/api/users/bob", None, true);
    assert_eq!(status, 204);
    expect_closed_1008(&mut socket);
    assert_eq!(
        with_cookie(b.addr, &bob, "GET", "/api/conversations", None, false).0,
        401
    );
}

#[test]
fn an_unknown_name_costs_a_password_check_too() {
    // Without the check an unknown name would answer in well under a millisecond, and a wrong
    // password after an Argon2id hash: the fastest of three of each must be of one order.
    let server = start();
    add_user(&server, "alice", "right", false);
    let fastest = |name: &str| {
        (0..3)
            .map(|_| {
                let started = std::time::Instant::now();
                assert_eq!(login_raw(server.addr(), name, "wrong").0, 401);
                started.elapsed()
            })
            .min()
            .unwrap()
    };
    let wrong = fastest("alice");
    let unknown = fastest("nobody");
    assert!(
        unknown * 4 >= wrong && wrong * 4 >= unknown,
        "a wrong password took {wrong:?}, an unknown name {unknown:?}"
    );
}

#[test]
fn api_me_says_who_the_caller_is_by_cookie_token_or_none() {
    let server = start_with(|config| {
        config.auth_tokens = vec!["operator-token".into()];
        config.token_names = vec![("operator-token".into(), "ops".into())];
    });
    add_user(&server, "alice", "pw-alice", true);
    add_user(&server, "bob", "pw-bob", false);
    let me = |token: Option<&str>| http_json(server.addr(), "GET", "/api/me", token, None);

    // Signed in with the cookie: the account, as the sign-in answered it.
    let alice = login(server.addr(), "alice", "pw-alice");
    let (status, body) = with_cookie(server.addr(), &alice, "GET", "/api/me", None, false);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"name": "alice", "admin": true, "kind": "user"})
    );

    // With one of a user's API tokens and no cookie: the same account.
    let bob = login(server.addr(), "bob", "pw-bob");
    let (token, id) = make_token(server.addr(), &bob, "laptop");
    assert_eq!(
        me(Some(&token)),
        (200, json!({"name": "bob", "admin": false, "kind": "user"}))
    );

    // A configured token: its name; it manages the server, with no account.
    assert_eq!(
        me(Some("operator-token")),
        (200, json!({"name": "ops", "admin": true, "kind": "token"}))
    );

    // Nothing, or a wrong token: 401, as every /api/ route.
    assert_eq!(me(None).0, 401);
    assert_eq!(me(Some("not-a-token")).0, 401);

    // A revoked token is nobody at once.
    let path = format!("/api/tokens/{id}");
    assert_eq!(
        with_cookie(server.addr(), &bob, "DELETE", &path, None, true).0,
        204
    );
    assert_eq!(me(Some(&token)).0, 401);
}

#[test]
fn api_me_is_the_local_admin_on_a_server_without_tokens_or_accounts() {
    let server = start();
    assert_eq!(
        http_json(server.addr(), "GET", "/api/me", None, None),
        (200, json!({"name": null, "admin": true, "kind": "local"}))
    );
}
