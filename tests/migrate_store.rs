//! `sparky migrate-store`: a SQLite data directory (one written by a running server, and one
//! of schema version 1) copied into PostgreSQL comes back whole on a server that uses the
//! database: every event replayed as it was, titles, owners, notes, facts and edges; accounts
//! (a user signs in with the same password, an API token and a share link work as before); an
//! occupied target, a directory in use and a bad URL are refused with exit code 1 and nothing
//! copied.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use sparky::common::protocol::{SessionId, TurnId};
use support::{
    Client, TestServer, events_seen, http_json, http_raw, postgres, replay, sparky_command,
    temp_dir, test_config, tool_result, wait_until,
};

/// Runs `sparky migrate-store --from dir --to url`; returns the exit code, stdout and stderr.
fn migrate(dir: &std::path::Path, url: &str) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args(["--log-level", "warn", "migrate-store", "--from"])
        .arg(dir)
        .args(["--to", url])
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A server on the PostgreSQL database at `url`, with `tokens`.
fn on_postgres(url: &str, tokens: &[&str]) -> TestServer {
    TestServer::with_config(|config| {
        config.database_url = Some(url.to_owned());
        config.auth_tokens = tokens.iter().map(|t| (*t).to_owned()).collect();
    })
}

fn titles(server: &TestServer, token: &str) -> Vec<(String, Value)> {
    let (status, list) = http_json(server.addr, "GET", "/api/conversations", Some(token), None);
    assert_eq!(status, 200, "{list}");
    list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_owned(), c["title"].clone()))
        .collect()
}

#[test]
fn a_data_directory_comes_back_whole_from_postgres() {
    let tokens = ["alpha", "beta"];
    let mut config = test_config();
    // The source is SQLite whatever the run's store.
    config.database_url = None;
    config.auth_tokens = tokens.iter().map(|t| (*t).to_owned()).collect();
    let dir = config.data_dir.clone();
    let connect =
        |server: &TestServer, token: &str| Client::connect(server.addr, json!({"token": token}));
    let (seen, listed, graph_text);
    {
        let server = TestServer::with_config(|c| *c = config.clone());
        let mut alpha = connect(&server, "alpha");
        alpha.ask("hello otters");
        alpha.ask("/note bring the map");
        alpha.ask("/remember the river is cold in April");
        alpha.ask(r#"/tool graph_add_node {"kind": "place", "label": "river", "content": "the big river"}"#);
        alpha.ask(r#"/tool graph_add_edge {"source": 1, "target": 2, "kind": "about"}"#);
        alpha.say("/wait 60000");
        alpha.expect("tool_use");
        let mut renamed = connect(&server, "alpha");
        renamed.ask("second conversation");
        let path = format!(
            "/api/conversations/{}",
            renamed.session_id.as_ref().unwrap().as_str()
        );
        let (status, _) = http_json(
            server.addr,
            "PATCH",
            &path,
            Some("alpha"),
            Some(r#"{"title": "renamed"}"#),
        );
        assert_eq!(status, 200);
        let mut gone = connect(&server, "alpha");
        gone.ask("delete me");
        let path = format!(
            "/api/conversations/{}",
            gone.session_id.as_ref().unwrap().as_str()
        );
        assert_eq!(
            http_json(server.addr, "DELETE", &path, Some("alpha"), None).0,
            204
        );
        let mut beta = connect(&server, "beta");
        beta.ask("beta's own words");
        beta.ask("/remember beta likes herons");
        graph_text = tool_result(&alpha_graph(&mut renamed)).1;
        listed = (titles(&server, "alpha"), titles(&server, "beta"));
        seen = [&alpha, &renamed, &beta]
            .map(|client| (client.session_id.clone().unwrap(), events_seen(client)));
        // The server stops with alpha's turn still waiting: it is copied open.
    }

    let url = postgres::fresh_database();
    let (code, stdout, stderr) = migrate(&dir, &url);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("copied 3 conversations") && stdout.contains("3 nodes and 1 edges"),
        "{stdout}"
    );

    let server = on_postgres(&url, &tokens);
    assert_eq!((titles(&server, "alpha"), titles(&server, "beta")), listed);
    assert!(
        listed.0.iter().any(|(_, title)| title == "renamed"),
        "{listed:?}"
    );
    for (id, events) in &seen {
        let token = if *id == seen[2].0 { "beta" } else { "alpha" };
        let mut client = Client::connect(
            server.addr,
            json!({"session_id": id.as_str(), "last_seq": 0, "token": token}),
        );
        let replayed: Vec<Value> = (0..events.len())
            .map(|_| serde_json::to_value(client.next()).unwrap())
            .collect();
        assert_eq!(&replayed, events, "{id}");
    }
    // The turn the stop cancelled is closed once (it was logged after `seen`), then the
    // conversation goes on with its notes and its numbering.
    let (alpha_id, alpha_events) = &seen[0];
    let mut alpha = Client::connect(
        server.addr,
        json!({"session_id": alpha_id.as_str(), "last_seq": alpha_events.len(), "token": "alpha"}),
    );
    let closing = alpha.next();
    assert_eq!(closing.seq, Some(alpha_events.len() as u64 + 1));
    assert!(
        closing.frame.closes_turn() && closing.frame.turn_id() == Some(TurnId(6)),
        "{closing:?}"
    );
    assert_eq!(alpha.ask("/notes"), "1. bring the map");
    assert_eq!(tool_result(&alpha_graph(&mut alpha)).1, graph_text);
    let (_, memories) = http_json(
        server.addr,
        "GET",
        "/api/memories?q=river",
        Some("alpha"),
        None,
    );
    assert_eq!(
        memories["memories"].as_array().unwrap().len(),
        2,
        "{memories}"
    );
    let (_, theirs) = http_json(
        server.addr,
        "GET",
        "/api/memories?q=herons",
        Some("alpha"),
        None,
    );
    assert!(
        theirs["memories"].as_array().unwrap().is_empty(),
        "{theirs}"
    );
    let (_, found) = http_json(
        server.addr,
        "GET",
        "/api/conversations?q=otters",
        Some("alpha"),
        None,
    );
    assert_eq!(found["conversations"][0]["id"], alpha_id.as_str());
    // New facts get new ids after the copied ones.
    assert!(alpha.ask("/remember a new fact").contains("#4"));
    drop(alpha);
    drop(server);

    // A database that holds anything is not a target.
    let (code, _, stderr) = migrate(&dir, &url);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("already holds"), "{stderr}");
}

/// `graph_get` of node 1 (the first fact), asked through `client`.
fn alpha_graph(client: &mut Client) -> Vec<sparky::common::protocol::ServerEnvelope> {
    client.say(r#"/tool graph_get {"id": 1}"#);
    let opened = client.expect("user_message");
    client.finish_turn(opened.frame.turn_id().unwrap().0)
}

#[test]
fn a_version_1_data_directory_is_copied_after_its_own_migration() {
    let dir = temp_dir("migrate-v1");
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1.db");
    std::fs::copy(fixture, dir.join("sparky.db")).unwrap();
    let ids: Vec<String> = rusqlite::Connection::open(dir.join("sparky.db"))
        .unwrap()
        .prepare("SELECT id FROM sessions ORDER BY key")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let url = postgres::fresh_database();
    let (code, stdout, stderr) = migrate(&dir, &url);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("copied 3 conversations"), "{stdout}");

    // What a SQLite server shows of the same directory, now at version 2.
    let expected: Vec<(SessionId, usize)> = {
        let sqlite = TestServer::with_config(|config| {
            config.data_dir = dir.clone();
            config.database_url = None;
        });
        ids.iter()
            .map(|id| {
                let id = SessionId::parse(id).unwrap();
                let summary = http_json(
                    sqlite.addr,
                    "GET",
                    &format!("/api/conversations/{}/events", id.as_str()),
                    None,
                    None,
                )
                .1;
                (id, summary["events"].as_array().unwrap().len())
            })
            .collect()
    };
    let server = on_postgres(&url, &[]);
    let sqlite_again = TestServer::with_config(|config| {
        config.data_dir = dir.clone();
        config.database_url = None;
    });
    for (id, count) in &expected {
        assert_eq!(
            replay(server.addr, id, *count),
            replay(sqlite_again.addr, id, *count),
            "{id}"
        );
    }
    let list = http_json(server.addr, "GET", "/api/conversations?q=hello", None, None).1;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 2);
    let mut client = server.client();
    assert!(
        client
            .ask("/recall cats")
            .contains("cats purr when content")
    );
}

#[test]
fn a_directory_in_use_a_missing_one_and_a_bad_url_are_refused() {
    let mut config = test_config();
    config.database_url = None;
    let dir = config.data_dir.clone();
    let url = postgres::fresh_database();
    {
        let server = TestServer::with_config(|c| *c = config.clone());
        server.client().ask("hello");
        let (code, _, stderr) = migrate(&dir, &url);
        assert_eq!(code, Some(1));
        assert!(
            stderr.contains("in use by another running sparky"),
            "{stderr}"
        );
    }
    let (code, _, stderr) = migrate(&temp_dir("migrate-nothing"), &url);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("holds no sparky.db"), "{stderr}");
    let (code, _, stderr) = migrate(&dir, "mysql://root@localhost/x");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("takes a PostgreSQL URL"), "{stderr}");
    // The stopped server's last connection threads may hold the directory for a moment.
    wait_until("the stopped server to let the directory go", || {
        let (code, _, stderr) = migrate(&dir, "postgres://ann:s3cret@127.0.0.1:1/x");
        assert_eq!(code, Some(1));
        assert!(!stderr.contains("s3cret"), "{stderr}");
        if stderr.contains("in use by another running sparky") {
            return false;
        }
        assert!(stderr.contains("cannot connect"), "{stderr}");
        true
    });
    // Nothing was copied by the refusals: the copy still works.
    let (code, stdout, stderr) = migrate(&dir, &url);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("copied 1 conversations"), "{stdout}");
}

/// Runs `sparky user ARGS` on `store` (a data directory, or a PostgreSQL URL with `dir`), with
/// `stdin`, and checks that it succeeded.
fn user(dir: &std::path::Path, store: Option<&str>, args: &[&str], stdin: &str) {
    let mut all: Vec<String> = std::iter::once("user")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    all.extend(["--data-dir".to_owned(), dir.display().to_string()]);
    if let Some(store) = store {
        all.extend(["--store".to_owned(), store.to_owned()]);
    }
    let out = sparky_command(&all, stdin);
    assert!(out.status.success(), "{out:?}");
}

/// A share link's copy, read without a token: the status and the answer.
fn shared_copy(server: &TestServer, share_id: &str) -> (u16, Value) {
    http_json(
        server.addr,
        "GET",
        &format!("/api/shares/{share_id}"),
        None,
        None,
    )
}

/// `POST /api/login`: the status and the answer.
fn login(server: &TestServer, name: &str, password: &str) -> (u16, Value, String) {
    let body = json!({"name": name, "password": password}).to_string();
    let (status, headers, answer) = http_raw(
        server.addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let cookie = headers
        .iter()
        .find(|(name, _)| name == "set-cookie")
        .and_then(|(_, value)| value.split(';').next())
        .unwrap_or_default()
        .to_owned();
    (
        status,
        serde_json::from_slice(&answer).unwrap_or(Value::Null),
        cookie,
    )
}

/// `SELECT`s one row of the database at `url`.
fn pg_row(url: &str, sql: &str) -> ::postgres::Row {
    let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
    client.query_one(sql, &[]).unwrap()
}

#[test]
fn accounts_api_tokens_and_share_links_survive_the_copy() {
    let mut config = test_config();
    // The source is SQLite whatever the run's store.
    config.database_url = None;
    let dir = config.data_dir.clone();
    let (token, share_id, conversation, shared);
    {
        let server = TestServer::with_config(|c| *c = config.clone());
        user(
            &dir,
            None,
            &["add", "alice", "--admin", "--password-stdin"],
            "pw-alice\n",
        );
        user(&dir, None, &["add", "bob", "--password-stdin"], "pw-bob\n");
        // A removed user's number is never given again, after the copy too.
        user(
            &dir,
            None,
            &["add", "carol", "--password-stdin"],
            "pw-carol\n",
        );
        user(&dir, None, &["remove", "carol"], "");
        let (status, body, cookie) = login(&server, "alice", "pw-alice");
        assert_eq!(status, 200, "{body}");
        let csrf = body["csrf"].as_str().unwrap().to_owned();
        let (status, _, made) = http_raw(
            server.addr,
            "POST",
            "/api/tokens",
            &[
                ("Cookie", &cookie),
                ("X-Sparky-CSRF", &csrf),
                ("Content-Type", "application/json"),
            ],
            br#"{"name": "laptop"}"#,
        );
        assert_eq!(status, 201);
        let made: Value = serde_json::from_slice(&made).unwrap();
        token = made["token"].as_str().unwrap().to_owned();
        let mut client = Client::connect(server.addr, json!({"token": token}));
        client.ask("a question worth sharing");
        conversation = client.session_id.clone().unwrap();
        let (status, made) = http_json(
            server.addr,
            "POST",
            &format!("/api/conversations/{}/share", conversation.as_str()),
            Some(&token),
            None,
        );
        assert_eq!(status, 201, "{made}");
        share_id = made["share_id"].as_str().unwrap().to_owned();
        let (status, copy) = shared_copy(&server, &share_id);
        assert_eq!(status, 200, "{copy}");
        shared = copy;
    }
    // Quotas have no command yet: set in the table, they travel as they are.
    rusqlite::Connection::open(dir.join("sparky.db"))
        .unwrap()
        .execute(
            "UPDATE users SET daily_turns = 5, daily_tokens = 1000 WHERE name = 'bob'",
            [],
        )
        .unwrap();

    let url = postgres::fresh_database();
    let (code, stdout, stderr) = migrate(&dir, &url);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("1 share links, 2 users (1 API tokens)"),
        "{stdout}"
    );

    let server = on_postgres(&url, &[]);
    // The same passwords sign in, the admin still an admin.
    let (status, body, _) = login(&server, "alice", "pw-alice");
    assert_eq!((status, &body["admin"]), (200, &json!(true)), "{body}");
    let (status, body, _) = login(&server, "bob", "pw-bob");
    assert_eq!((status, &body["admin"]), (200, &json!(false)), "{body}");
    assert_eq!(login(&server, "bob", "pw-alice").0, 401);
    assert_eq!(login(&server, "carol", "pw-carol").0, 401);
    // The token is still alice's: her conversation is hers, and goes on.
    let (status, list) = http_json(server.addr, "GET", "/api/conversations", Some(&token), None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list["conversations"][0]["id"],
        conversation.as_str(),
        "{list}"
    );
    let mut client = Client::connect(
        server.addr,
        json!({"token": token, "session_id": conversation.as_str()}),
    );
    assert_eq!(client.ask("and again"), "You said: and again");
    // The share link reads as it did, without a token, page included.
    assert_eq!(shared_copy(&server, &share_id), (200, shared));
    let (status, _, _) = http_raw(server.addr, "GET", &format!("/s/{share_id}"), &[], b"");
    assert_eq!(status, 200);
    let (status, list) = http_json(server.addr, "GET", "/api/shares", Some(&token), None);
    assert_eq!(status, 200, "{list}");
    assert!(list.to_string().contains(&share_id), "{list}");
    // Quotas came along; a new user gets a number no one had.
    let row = pg_row(
        &url,
        "SELECT daily_turns, daily_tokens FROM users WHERE name = 'bob'",
    );
    assert_eq!(
        (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)),
        (Some(5), Some(1000))
    );
    user(
        &dir,
        Some(&url),
        &["add", "dave", "--password-stdin"],
        "pw-dave\n",
    );
    let row = pg_row(&url, "SELECT id FROM users WHERE name = 'dave'");
    assert_eq!(row.get::<_, i64>(0), 4, "carol's 3 is not given again");
    assert_eq!(login(&server, "dave", "pw-dave").0, 200);
}
