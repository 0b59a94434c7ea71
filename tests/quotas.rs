//! Daily quotas per user (issue 25, "Quotas per user"): a user past their turns or model tokens
//! of the day gets a turn `error` `quota` and stays connected while others are served; an
//! admin sets and clears a user's own limits (`PATCH /api/users/{name}`, `sparky user limit`),
//! the server's defaults (`--daily-turns`, `--daily-tokens`) apply to accounts only, and
//! `GET /api/usage` and the admin's list show the counts. Instances sharing a PostgreSQL
//! database count together. Runs on SQLite, and on PostgreSQL with `SPARKY_TEST_STORE=postgres`.

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use sparky::common::protocol::{ErrorCode, ServerFrame, Usage};
use support::accounts::{
    SignedIn, add_user, connected, login, socket_with_cookie, start, start_with_model,
    user_command, with_cookie,
};
use support::recording::Recording;
use support::{Client, TestServer, http_json, sparky_command};

/// The offline model, reporting 60 prompt and 40 completion tokens for every answer.
fn metered() -> Arc<Recording> {
    Arc::new(Recording {
        usage: Some(Usage {
            prompt_tokens: 60,
            completion_tokens: 40,
        }),
        ..Recording::default()
    })
}

/// Sends `frame` (a `message`, `edit` or `regenerate`) and reads its turn: a `user_message`,
/// then at once the turn `error` `quota` that closes it. Returns the error's message.
fn refused(socket: &mut Client, frame: Value) -> String {
    socket.send(frame);
    let opened = socket.expect("user_message");
    let turn = opened.frame.turn_id().unwrap().0;
    let frames = socket.finish_turn(turn);
    assert_eq!(frames.len(), 1, "nothing but the error: {frames:?}");
    match &frames[0].frame {
        ServerFrame::Error {
            code: ErrorCode::Quota,
            turn_id: Some(_),
            message,
            ..
        } => message.clone(),
        other => panic!("turn {turn} was not refused for its quota: {other:?}"),
    }
}

fn message(text: &str) -> Value {
    json!({"type": "message", "data": {"text": text}})
}

/// Today (UTC) as `YYYY-MM-DD`, asked before and after `read`, which runs between: a test run
/// across midnight accepts either day.
fn today_around<T>(read: impl FnOnce() -> T) -> (Vec<String>, T) {
    let day = || time::OffsetDateTime::now_utc().date().to_string();
    let before = day();
    let value = read();
    (vec![before, day()], value)
}

/// `GET /api/usage` with the cookie of `user`, checked to name today.
fn usage(server: &support::accounts::Server, user: &SignedIn) -> Value {
    let (days, (status, usage)) =
        today_around(|| with_cookie(server.addr(), user, "GET", "/api/usage", None, false));
    assert_eq!(status, 200, "{usage}");
    assert!(days.iter().any(|day| usage["day"] == *day), "{usage}");
    usage
}

/// `PATCH /api/users/{name}` with `body`, by `admin` (with the CSRF header).
fn set_limits(
    server: &support::accounts::Server,
    admin: &SignedIn,
    name: &str,
    body: &Value,
) -> (u16, Value) {
    let path = format!("/api/users/{name}");
    with_cookie(server.addr(), admin, "PATCH", &path, Some(body), true)
}

/// `GET /api/users`, by `admin`.
fn users(server: &support::accounts::Server, admin: &SignedIn) -> Value {
    let (status, list) = with_cookie(server.addr(), admin, "GET", "/api/users", None, false);
    assert_eq!(status, 200, "{list}");
    list
}

/// The entry of `name` in the admin's list of users.
fn listed(list: &Value, name: &str) -> Value {
    list["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|user| user["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {list}"))
        .clone()
}

#[test]
fn a_user_past_their_daily_turns_is_refused_while_another_is_served() {
    let server = start();
    add_user(&server, "alice", "pw-a", true);
    add_user(&server, "bob", "pw-b", false);
    add_user(&server, "carol", "pw-c", false);
    let alice = login(server.addr(), "alice", "pw-a");
    let bob = login(server.addr(), "bob", "pw-b");
    let carol = login(server.addr(), "carol", "pw-c");
    let two = json!({"daily_turns": 2});
    let (status, entry) = set_limits(&server, &alice, "bob", &two);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["name"], "bob");
    assert_eq!(entry["daily_turns"], 2);
    assert_eq!(entry["daily_tokens"], Value::Null);
    assert_eq!(entry["today"], json!({"turns": 0, "tokens": 0}));

    let mut socket = connected(socket_with_cookie(server.addr(), &bob, json!({})));
    assert_eq!(socket.ask("one"), "You said: one");
    assert_eq!(socket.ask("two"), "You said: two");
    let why = refused(&mut socket, message("three"));
    assert!(why.contains("2 of your 2 turns a day"), "{why}");
    assert!(why.contains("resets at 00:00 UTC"), "{why}");
    // The connection stays open; an edit and a regenerate are refused alike, and counted not.
    let edit = json!({"type": "edit", "data": {"turn_id": 1, "text": "one again"}});
    refused(&mut socket, edit);
    refused(
        &mut socket,
        json!({"type": "regenerate", "data": {"turn_id": 2}}),
    );
    // Someone else is served meanwhile.
    let mut other = connected(socket_with_cookie(server.addr(), &carol, json!({})));
    assert_eq!(other.ask("hello"), "You said: hello");

    let mine = usage(&server, &bob);
    assert_eq!(mine["turns"], 2, "{mine}");
    assert_eq!(mine["tokens"], 0, "{mine}");
    assert_eq!(mine["daily_turns"], 2, "{mine}");
    assert_eq!(mine["daily_tokens"], Value::Null, "{mine}");
    assert_eq!(usage(&server, &carol)["turns"], 1);

    // Cleared, bob is back on the server's default: no limit.
    let cleared = json!({"daily_turns": null});
    let (status, entry) = set_limits(&server, &alice, "bob", &cleared);
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["daily_turns"], Value::Null);
    assert_eq!(socket.ask("four"), "You said: four");
    assert_eq!(usage(&server, &bob)["daily_turns"], Value::Null);

    let list = users(&server, &alice);
    assert_eq!(
        list["defaults"],
        json!({"daily_turns": null, "daily_tokens": null})
    );
    let entry = listed(&list, "bob");
    assert_eq!(entry["today"], json!({"turns": 3, "tokens": 0}), "{entry}");
    assert_eq!(entry["tokens_used"], 0);
    assert_eq!(entry["daily_turns"], Value::Null);
    assert_eq!(entry["conversations"], 1);
    assert_eq!(entry["admin"], false);
    assert_eq!(listed(&list, "carol")["today"]["turns"], 1);
}

#[test]
fn a_daily_token_limit_counts_answers_usage_and_defaults_bind_accounts_only() {
    let server = start_with_model(
        |config| {
            config.daily_tokens = 150;
            config.auth_tokens = vec!["operator-token".into()];
        },
        metered(),
    );
    add_user(&server, "alice", "pw-a", true);
    add_user(&server, "bob", "pw-b", false);
    let alice = login(server.addr(), "alice", "pw-a");
    let bob = login(server.addr(), "bob", "pw-b");
    let mut socket = connected(socket_with_cookie(server.addr(), &bob, json!({})));
    // 100 tokens each: the second answer passes the limit, the third is refused.
    assert_eq!(socket.ask("one"), "You said: one");
    assert_eq!(socket.ask("two"), "You said: two");
    let why = refused(&mut socket, message("three"));
    assert!(why.contains("200 of your 150 model tokens a day"), "{why}");
    let mine = usage(&server, &bob);
    assert_eq!(
        (
            &mine["turns"],
            &mine["tokens"],
            &mine["daily_turns"],
            &mine["daily_tokens"]
        ),
        (&json!(2), &json!(200), &Value::Null, &json!(150)),
        "{mine}"
    );

    // A configured token is no account: counted, never limited.
    let mut operator = Client::connect(server.addr(), json!({"token": "operator-token"}));
    for text in ["a", "b", "c"] {
        assert_eq!(operator.ask(text), format!("You said: {text}"));
    }
    let (status, theirs) = http_json(
        server.addr(),
        "GET",
        "/api/usage",
        Some("operator-token"),
        None,
    );
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(theirs["turns"], 3);
    assert_eq!(theirs["tokens"], 300);
    assert_eq!(theirs["daily_tokens"], Value::Null);
    assert_eq!(
        http_json(server.addr(), "GET", "/api/usage", None, None).0,
        401
    );

    let list = users(&server, &alice);
    assert_eq!(
        list["defaults"],
        json!({"daily_turns": null, "daily_tokens": 150})
    );
    let entry = listed(&list, "bob");
    assert_eq!(entry["tokens_used"], 200, "{entry}");
    assert_eq!(entry["today"], json!({"turns": 2, "tokens": 200}));
    assert_eq!(entry["daily_tokens"], Value::Null, "bob's own: the default");

    // A user's own 0 is no limit, whatever the default.
    let unlimited = json!({"daily_tokens": 0});
    let (status, entry) = set_limits(&server, &alice, "bob", &unlimited);
    assert_eq!((status, &entry["daily_tokens"]), (200, &json!(0)));
    assert_eq!(socket.ask("four"), "You said: four");
    assert_eq!(usage(&server, &bob)["daily_tokens"], Value::Null);
    assert_eq!(usage(&server, &bob)["tokens"], 300);
}

#[test]
fn only_an_admin_sets_limits_and_a_bad_body_is_refused() {
    let server = start();
    add_user(&server, "alice", "pw-a", true);
    add_user(&server, "bob", "pw-b", false);
    let alice = login(server.addr(), "alice", "pw-a");
    let bob = login(server.addr(), "bob", "pw-b");
    let one = json!({"daily_turns": 1});
    let patch = |user: &SignedIn, path: &str, body: &Value, csrf: bool| {
        with_cookie(server.addr(), user, "PATCH", path, Some(body), csrf)
    };
    assert_eq!(patch(&bob, "/api/users/bob", &one, true).0, 403);
    assert_eq!(patch(&alice, "/api/users/bob", &one, false).0, 403, "CSRF");
    assert_eq!(patch(&alice, "/api/users/nobody", &one, true).0, 404);
    for bad in [
        json!({"daily_turns": "many"}),
        json!({"daily_turns": -1}),
        json!({"daily_turns": 1.5}),
        json!({"turns": 1}),
        json!([1]),
    ] {
        let (status, answer) = patch(&alice, "/api/users/bob", &bad, true);
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    let list = users(&server, &alice);
    assert_eq!(
        listed(&list, "bob")["daily_turns"],
        Value::Null,
        "unchanged"
    );
    // Each field is changed alone; the other is kept.
    let tokens = json!({"daily_tokens": 5000});
    patch(&alice, "/api/users/bob", &one, true);
    let (status, entry) = patch(&alice, "/api/users/bob", &tokens, true);
    assert_eq!(status, 200);
    assert_eq!(
        (&entry["daily_turns"], &entry["daily_tokens"]),
        (&json!(1), &json!(5000))
    );
    // A new account may come with its limits.
    let carol = json!({"name": "carol", "password": "pw-c", "daily_turns": 7});
    let addr = server.addr();
    let (status, made) = with_cookie(addr, &alice, "POST", "/api/users", Some(&carol), true);
    assert_eq!(status, 201, "{made}");
    let list = users(&server, &alice);
    let entry = listed(&list, "carol");
    assert_eq!(
        (&entry["daily_turns"], &entry["daily_tokens"]),
        (&json!(7), &Value::Null)
    );
    let carol = login(server.addr(), "carol", "pw-c");
    assert_eq!(usage(&server, &carol)["daily_turns"], 7);
}

#[test]
fn sparky_user_limit_sets_and_clears_a_running_servers_limits() {
    let server = start();
    add_user(&server, "bob", "pw-b", false);
    let out = user_command(&server.dir, &["limit", "bob", "--daily-turns", "1"], "");
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("turns a day: 1"), "{printed}");
    let listed = String::from_utf8(user_command(&server.dir, &["list"], "").stdout).unwrap();
    assert!(
        listed.contains("bob\tuser\t0 tokens\tturns a day: 1\tmodel tokens a day: default"),
        "{listed}"
    );
    let bob = login(server.addr(), "bob", "pw-b");
    let mut socket = connected(socket_with_cookie(server.addr(), &bob, json!({})));
    assert_eq!(socket.ask("one"), "You said: one");
    refused(&mut socket, message("two"));

    let out = user_command(
        &server.dir,
        &[
            "limit",
            "bob",
            "--daily-turns",
            "default",
            "--daily-tokens",
            "0",
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8(user_command(&server.dir, &["list"], "").stdout).unwrap();
    assert!(
        listed.contains("turns a day: default\tmodel tokens a day: unlimited"),
        "{listed}"
    );
    assert_eq!(socket.ask("three"), "You said: three");
    for bad in [
        &["limit", "nobody", "--daily-turns", "1"][..],
        &["limit", "bob", "--daily-turns", "lots"],
    ] {
        assert!(
            !user_command(&server.dir, bad, "").status.success(),
            "{bad:?}"
        );
    }
}

#[test]
fn instances_sharing_a_postgres_database_count_together() {
    // Two instances on one PostgreSQL database, whatever store the rest of the run uses.
    let url = support::postgres::fresh_database();
    let instance = || TestServer::with_config(|config| config.database_url = Some(url.clone()));
    let (a, b) = (instance(), instance());
    let store = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        all.extend(["--store".to_owned(), url.clone()]);
        let out = sparky_command(&all, "pw\n");
        assert!(out.status.success(), "{out:?}");
    };
    store(&["user", "add", "bob", "--password-stdin"]);
    store(&["user", "limit", "bob", "--daily-turns", "2"]);
    let on_a = login(a.addr, "bob", "pw");
    let on_b = login(b.addr, "bob", "pw");
    let mut first = connected(socket_with_cookie(a.addr, &on_a, json!({})));
    let mut second = connected(socket_with_cookie(b.addr, &on_b, json!({})));
    assert_eq!(first.ask("on a"), "You said: on a");
    assert_eq!(second.ask("on b"), "You said: on b");
    refused(&mut first, message("again on a"));
    refused(&mut second, message("again on b"));
    let (status, seen) = with_cookie(b.addr, &on_b, "GET", "/api/usage", None, false);
    assert_eq!(status, 200);
    assert_eq!(seen["turns"], 2, "{seen}");
}
