//! What only a PostgreSQL store does, whatever store the rest of the run uses: the flags and
//! `SPARKY_DATABASE_URL`, a clear exit when the database cannot be reached at start, the
//! database's state in `/healthz` and the pool's figures in `/metrics`, and a database that
//! goes away under a running server: turns get `storage` errors, `/healthz` says degraded, and
//! once it is back every event is committed and delivered, in order, with nothing lost.

mod support;

use std::process::{Command, Stdio};

use serde_json::json;
use sparky::common::protocol::{ErrorCode, ServerFrame};
use support::{
    Client, TestServer, events_seen, http, http_json, postgres, replay, test_config, wait_until,
};

fn on_postgres(url: &str) -> TestServer {
    TestServer::with_config(|config| config.database_url = Some(url.to_owned()))
}

#[test]
fn an_unreachable_database_or_a_bad_url_stops_the_start_with_exit_code_1() {
    for (url, expected) in [
        (
            "postgres://ann:s3cret@127.0.0.1:1/sparky",
            "cannot connect to database postgres://ann:***@127.0.0.1:1/sparky",
        ),
        ("mysql://ann:s3cret@db/sparky", "takes a PostgreSQL URL"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_sparky"))
            .args(["--addr", "127.0.0.1:0", "--store", url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}

#[test]
fn the_database_url_comes_from_the_environment_and_shows_in_healthz_and_metrics() {
    let url = postgres::fresh_database();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "--store-pool",
            "3",
        ])
        .env("SPARKY_DATABASE_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = support::first_line(&mut child, "the server");
    let addr: std::net::SocketAddr = line
        .strip_prefix("listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    let mut client = Client::connect(addr, json!({}));
    assert_eq!(
        client.ask("/remember herons stand still"),
        "Remembered as #1."
    );
    let (status, health) = http_json(addr, "GET", "/healthz", None, None);
    assert_eq!(status, 200);
    assert_eq!(health["store"], "ok", "{health}");
    assert_eq!(health["store_backend"], "postgres", "{health}");
    let (_, metrics) = http(addr, "GET", "/metrics", None, None);
    for line in [
        "sparky_store_up 1\n",
        "sparky_store_pool_size 3\n",
        "sparky_store_pool_in_use 0\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let checkouts: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("sparky_store_pool_checkouts_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(checkouts > 0, "{metrics}");
    // The facts are in the database the variable names.
    let mut db = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let row = db.query_one("SELECT content FROM nodes", &[]).unwrap();
    assert_eq!(row.get::<_, String>(0), "herons stand still");
    let _ = child.kill();
    let _ = child.wait();
}

/// The code of a frame that is an error.
fn error_code(frame: &sparky::common::protocol::ServerEnvelope) -> Option<ErrorCode> {
    match &frame.frame {
        ServerFrame::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[test]
fn a_database_that_goes_away_delays_events_refuses_turns_and_loses_nothing() {
    let mut config = test_config();
    let url = postgres::fresh_database();
    config.database_url = Some(url.clone());
    let (seen, ids);
    {
        let server = TestServer::with_config(|c| *c = config.clone());
        let mut talker = server.client();
        let mut other = server.client();
        assert_eq!(talker.ask("before"), "You said: before");
        assert_eq!(other.ask("me too"), "You said: me too");

        postgres::cut_off(&url);
        talker.say("while it is gone");
        let journal = server.handle.journal().clone();
        wait_until("the journal to fail", || journal.failing());
        let (status, health) = http_json(server.addr, "GET", "/healthz", None, None);
        assert_eq!((status, health["status"].as_str()), (503, Some("degraded")));
        assert_eq!(health["store"], "failing", "{health}");
        let (_, metrics) = http(server.addr, "GET", "/metrics", None, None);
        assert!(metrics.contains("sparky_store_up 0\n"), "{metrics}");

        // A new turn is refused at once, with nothing logged.
        other.say("anyone there?");
        let refused = other.next();
        assert_eq!(
            error_code(&refused),
            Some(ErrorCode::Storage),
            "{refused:?}"
        );
        assert_eq!(refused.seq, None);
        let shown = talker.seen.len();

        postgres::reopen(&url);
        wait_until("the store to take writes", || !journal.failing());
        // The turn sent while the database was gone closes (answered, or stopped with
        // `storage`), and everything it logged arrives, in order.
        let turn = talker.finish_turn(2);
        assert!(talker.seen.len() > shown);
        let closing = turn.last().unwrap();
        assert!(
            matches!(closing.frame, ServerFrame::Message { .. })
                || error_code(closing) == Some(ErrorCode::Storage),
            "{turn:?}"
        );
        let (status, health) = http_json(server.addr, "GET", "/healthz", None, None);
        assert_eq!((status, health["store"].as_str()), (200, Some("ok")));
        assert_eq!(other.ask("and now?"), "You said: and now?");
        seen = [events_seen(&talker), events_seen(&other)];
        ids = [
            talker.session_id.clone().unwrap(),
            other.session_id.clone().unwrap(),
        ];
    }
    // After a restart, every event a client saw is there, numbered without a gap.
    let server = on_postgres(&url);
    for (id, events) in ids.iter().zip(&seen) {
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
        assert_eq!(&replay(server.addr, id, events.len()), events);
    }
}

#[test]
fn a_restarted_database_server_costs_no_reader_an_error() {
    let url = postgres::fresh_database();
    let server = on_postgres(&url);
    let mut client = server.client();
    client.ask("/remember kingfishers dive");
    let (id, last_seq) = (client.session_id.clone().unwrap(), client.last_seq);
    drop(client);
    // Every connection the server had is cut, as when PostgreSQL restarts.
    postgres::terminate_connections(&url);
    let (status, found) = http_json(
        server.addr,
        "GET",
        "/api/memories?q=kingfishers",
        None,
        None,
    );
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["memories"].as_array().unwrap().len(), 1);
    // The writer reconnects on its next batch.
    let mut again = Client::resume(server.addr, &id, last_seq);
    assert_eq!(again.ask("still here?"), "You said: still here?");
}

#[test]
fn healthz_sees_the_database_return_with_no_other_traffic() {
    let url = postgres::fresh_database();
    let server = on_postgres(&url);
    assert_eq!(server.client().ask("hello"), "You said: hello");
    postgres::cut_off(&url);
    // A read finds the database gone; nothing else happens on this server afterwards (a load
    // balancer would send it nothing while its health check fails).
    let (status, _) = http(server.addr, "GET", "/api/conversations", None, None);
    assert_ne!(status, 200);
    let (status, health) = http_json(server.addr, "GET", "/healthz", None, None);
    assert_eq!((status, health["store"].as_str()), (503, Some("failing")));
    postgres::reopen(&url);
    wait_until("/healthz to see the database again", || {
        http_json(server.addr, "GET", "/healthz", None, None).0 == 200
    });
    let (status, list) = http_json(server.addr, "GET", "/api/conversations", None, None);
    assert_eq!(status, 200);
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
}

#[test]
fn check_looks_at_the_database_and_changes_nothing() {
    let check = |url: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_sparky"))
            .args(["check", "--store", url])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let url = postgres::fresh_database();
    let (ok, out) = check(&url);
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("is new")),
        "{out}"
    );
    let mut db = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let tables: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "check created nothing");

    // A running server does not keep another (nor `check`) off the database.
    let server = on_postgres(&url);
    let (ok, out) = check(&url);
    let version = format!("schema version {}", sparky::store::POSTGRES_SCHEMA_VERSION);
    assert!(ok && out.contains(&version), "{out}");
    drop(server);
    let (ok, out) = check("postgres://ann:s3cret@127.0.0.1:1/x");
    assert!(
        !ok && out.contains("FAIL data") && !out.contains("s3cret"),
        "{out}"
    );
}
