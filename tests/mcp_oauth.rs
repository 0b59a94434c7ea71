//! OAuth for MCP `url` servers against the real thing, from npm (`scripts/npm-fixtures.sh`;
//! skipped with a note when missing, failed under CI). The test plays the browser: it follows
//! the authorization URL's redirects with a plain HTTP client that keeps cookies, up to
//! Sparky's callback (the page's Connect) or `sparky mcp login`'s loopback listener.
//!
//! - The MCP TypeScript SDK's example server `simpleStreamableHttp --oauth` and its demo
//!   authorization server (which approves every sign-in, and gives no refresh tokens): tools
//!   absent and the state saying why until a sign-in; the sign-in, the tools appearing and a
//!   call; a restart using the stored grant; a token that expires with a refresh the demo
//!   server cannot do leading to "needs sign-in" once, and a new Connect working;
//!   `sparky mcp login` and `sparky check`.
//! - `tests/fixtures/mcp-oauth-refresh.mjs`: `oidc-provider` (panva's certified OpenID
//!   provider) as the authorization server, with dynamic registration, PKCE, resource
//!   indicators, 3-second JWT access tokens and refresh tokens rotated on every use (one sent
//!   twice revokes its grant), in front of an SDK MCP server that checks the JWT against its
//!   keys: two calls started at once after the token expired cause exactly one refresh; the
//!   next expiry refreshes with the rotated token; a token the MCP server refuses before its
//!   expiry is refreshed once and the call sent again; a grant revoked at the authorization
//!   server means one refused refresh, a call that fails cleanly, "needs sign-in", and a new
//!   Connect working; and two instances on one PostgreSQL database (whatever store the rest
//!   of the run uses), a call on each after the token expired: exactly one refresh.
//!
//! A lease held by an instance that died, and the other failure paths of the refresh, are
//! tested against a fake authorization server in `tools/mcp/oauth/tests.rs`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde_json::{Value, json};
use sparky::common::protocol::ToolStatus;
use sparky::store::{McpAuthStore, SqliteStore};
use support::mcp::{
    Demo, OidcFixture, begin_call, call, end_call, oauth_example, oidc_fixture_installed, ready,
    wait_for_tool, write_config,
};
use support::{Client, TestServer, http, wait_until};

/// Plays the browser: GETs `url` and follows its redirects until one leads to `until` (a URL
/// prefix), then GETs that and returns its status and body, and that URL. It keeps the
/// cookies it is given (every host here is this machine) and sends them back, as a browser
/// does: `oidc-provider` ties a sign-in's steps together with them.
fn browse(url: &str, until: &str) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let mut cookies = std::collections::BTreeMap::<String, String>::new();
    let mut next = url.to_owned();
    for _ in 0..10 {
        let mut request = agent.get(&next);
        if !cookies.is_empty() {
            let jar: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request = request.header("cookie", jar.join("; "));
        }
        let response = request.call().unwrap();
        let status = response.status().as_u16();
        for set in response.headers().get_all("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() {
                    cookies.remove(name.trim());
                } else {
                    cookies.insert(name.trim().to_owned(), value.to_owned());
                }
            }
        }
        if next.starts_with(until) {
            let body = response.into_body().read_to_string().unwrap_or_default();
            return (status, body, next);
        }
        let location = response
            .headers()
            .get("location")
            .unwrap_or_else(|| panic!("no redirect from {next} (HTTP {status})"))
            .to_str()
            .unwrap()
            .to_owned();
        // A path alone is on the same origin.
        next = match location.strip_prefix('/') {
            Some(path) => {
                let authority_end = next[8..].find('/').map_or(next.len(), |i| i + 8);
                format!("{}/{path}", &next[..authority_end])
            }
            None => location,
        };
    }
    panic!("too many redirects from {url}");
}

/// `GET /api/mcp`'s entry for server `name`.
fn state_of(server: &TestServer, name: &str) -> Value {
    let (status, body) = http(server.addr, "GET", "/api/mcp", None, None);
    assert_eq!(status, 200, "{body}");
    let all: Value = serde_json::from_str(&body).unwrap();
    all["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Presses Connect for `name` and plays the browser up to Sparky's callback; returns the
/// callback's URL.
fn connect(server: &TestServer, name: &str) -> String {
    let (status, body) = http(
        server.addr,
        "POST",
        &format!("/api/mcp/{name}/connect"),
        None,
        Some(""),
    );
    assert_eq!(status, 200, "{body}");
    let url = serde_json::from_str::<Value>(&body).unwrap()["authorize_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(url.contains("resource="), "{url}");
    let callback = format!(
        "http://127.0.0.1:{}/api/mcp/oauth/callback",
        server.addr.port()
    );
    let (status, page, came_back) = browse(&url, &callback);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&format!("Connected to {name}")), "{page}");
    came_back
}

/// An MCP config naming `demo` as server `demo`, in a directory of the test's own (`name`).
fn config_for(demo: &Demo, name: &str) -> (PathBuf, PathBuf) {
    let dir = support::temp_dir(&format!("mcp-oauth-{name}"));
    let config = write_config(
        &dir,
        &json!({ "demo": { "url": demo.url(), "approve": "never" } }),
    );
    (dir, config)
}

#[test]
fn connect_from_the_page_then_tools_a_call_a_restart_and_an_expired_token() {
    let Some(script) = oauth_example() else {
        return;
    };
    let demo = Demo::start(&script);
    let (_dir, config) = config_for(&demo, "page");
    let data_dir = support::test_config().data_dir;
    let configured = {
        let (config, data_dir) = (config.clone(), data_dir.clone());
        move |c: &mut sparky::common::config::Config| {
            c.mcp_config = Some(config.clone());
            c.data_dir = data_dir.clone();
        }
    };
    let server = TestServer::restart_with(&data_dir, &configured);

    // Until a sign-in: no tools, and the state says why, on the page's list and in /healthz.
    wait_until("the server to need a sign-in", || {
        state_of(&server, "demo")["state"] == "needs_sign_in"
    });
    let shown = state_of(&server, "demo");
    assert_eq!(shown["auth"], "needs_sign_in", "{shown}");
    let (_, health) = http(server.addr, "GET", "/healthz", None, None);
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["mcp"]["demo"]["state"], "needs_sign_in", "{health}");
    let names = ready(&server.client()).1;
    assert!(!names.iter().any(|n| n.starts_with("demo__")), "{names:?}");

    // Connect: the tools come, and a call works. The callback works once.
    let callback = connect(&server, "demo");
    let path = callback
        .split_once(&server.addr.port().to_string())
        .unwrap()
        .1;
    let (status, page) = http(server.addr, "GET", path, None, None);
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("unknown, used or expired"), "{page}");
    wait_for_tool(&server, "demo__greet");
    let mut client = server.client();
    assert_eq!(
        call(&mut client, "demo__greet", json!({"name": "Ada"})),
        (ToolStatus::Success, "Hello, Ada!".to_owned())
    );
    assert_eq!(state_of(&server, "demo")["auth"], "signed_in");
    drop(client);
    drop(server);

    // A restart uses the stored grant: no sign-in.
    let server = TestServer::restart_with(&data_dir, &configured);
    wait_for_tool(&server, "demo__greet");
    let mut client = server.client();
    assert_eq!(
        call(&mut client, "demo__greet", json!({"name": "Bo"})),
        (ToolStatus::Success, "Hello, Bo!".to_owned())
    );

    // The token expires, and the demo server cannot refresh (it gives no refresh tokens; one
    // is made up here): the next call says to sign in, once, and nothing loops.
    if !support::on_postgres() {
        let store = Arc::new(SqliteStore::open_beside(&data_dir).unwrap());
        let stored = store.mcp_grant("demo").unwrap().expect("a stored grant");
        let mut grant: Value = serde_json::from_str(&stored.grant).unwrap();
        assert!(!stored.grant.is_empty());
        grant["expires_at"] = json!(1);
        grant["refresh_token"] = json!("made-up");
        store.put_mcp_grant("demo", &grant.to_string()).unwrap();
        let (status, text) = call(&mut client, "demo__greet", json!({"name": "Cy"}));
        assert_eq!(status, ToolStatus::Error, "{text}");
        assert!(text.contains("sign-in"), "{text}");
        wait_until("the server to need a sign-in again", || {
            state_of(&server, "demo")["auth"] == "needs_sign_in"
        });
        // A new Connect brings it back.
        connect(&server, "demo");
        wait_until("the call to work again", || {
            call(&mut client, "demo__greet", json!({"name": "Di"}))
                == (ToolStatus::Success, "Hello, Di!".to_owned())
        });
    }
}

#[test]
fn sparky_mcp_login_signs_in_through_a_loopback_redirect() {
    let Some(script) = oauth_example() else {
        return;
    };
    if support::on_postgres() {
        return;
    }
    let demo = Demo::start(&script);
    let (_dir, config) = config_for(&demo, "login");
    let data_dir = support::test_config().data_dir;
    std::fs::create_dir_all(&data_dir).unwrap();
    // Before: `sparky check` says it needs a sign-in, as a warning, not a failure.
    let report = check(&config, &data_dir);
    assert!(
        report.contains("warn") && report.contains("demo: needs a sign-in"),
        "{report}"
    );

    let mut login = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .arg("--mcp-config")
        .arg(&config)
        .args(["mcp", "login", "demo", "--timeout", "60s", "--data-dir"])
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(login.stdout.take().unwrap()).lines();
    let url = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|line| line.starts_with("http"))
        .expect("the authorization URL");
    let redirect = url
        .split("redirect_uri=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .map(form_urlencoded_decode)
        .expect("a redirect_uri");
    assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");
    let (status, page, _) = browse(&url, &redirect);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Signed in"), "{page}");
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(login.wait().unwrap().success(), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("Signed in to demo")),
        "{rest:?}"
    );

    // `sparky check` reports it signed in.
    let report = check(&config, &data_dir);
    assert!(
        report.contains("demo: started, 5 tools, signed in with OAuth"),
        "{report}"
    );

    // The server finds the grant: its tools come without a sign-in.
    let server = TestServer::restart_with(&data_dir, |c| c.mcp_config = Some(config.clone()));
    wait_for_tool(&server, "demo__greet");
    let mut client = server.client();
    assert_eq!(
        call(&mut client, "demo__greet", json!({"name": "Eve"})),
        (ToolStatus::Success, "Hello, Eve!".to_owned())
    );
}

/// What `sparky check` prints for the MCP config `config` and the store in `data_dir`.
fn check(config: &std::path::Path, data_dir: &std::path::Path) -> String {
    let checked = Command::new(env!("CARGO_BIN_EXE_sparky"))
        .arg("check")
        .arg("--mcp-config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    )
}

/// A percent-encoded query value, decoded.
fn form_urlencoded_decode(encoded: &str) -> String {
    form_urlencoded::parse(format!("v={encoded}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

/// A server for `fixture`'s MCP server (as `oidc`), in a directory of the test's own (`name`),
/// signed in by Connect, its tools listed, and a client whose call worked. Returns the
/// directory too (the config is in it).
fn signed_in_to(fixture: &OidcFixture, name: &str) -> (PathBuf, TestServer, Client) {
    let dir = support::temp_dir(&format!("mcp-oauth-{name}"));
    let config = write_config(
        &dir,
        &json!({ "oidc": { "url": fixture.mcp_url, "approve": "never" } }),
    );
    let data_dir = support::test_config().data_dir;
    let server = TestServer::restart_with(&data_dir, |c| c.mcp_config = Some(config.clone()));
    wait_until("the server to need a sign-in", || {
        state_of(&server, "oidc")["state"] == "needs_sign_in"
    });
    connect(&server, "oidc");
    wait_for_tool(&server, "oidc__slow");
    assert_eq!(fixture.granted("authorization_code"), 1);
    let mut client = server.client();
    assert_eq!(
        call(&mut client, "oidc__echo", json!({"text": "hi"})),
        success("echo: hi")
    );
    (dir, server, client)
}

/// `(status, text)` of a successful call whose answer is `text`.
fn success(text: &str) -> (ToolStatus, String) {
    (ToolStatus::Success, text.to_owned())
}

/// Waits until the access token has expired, then starts a `slow` call from each client at
/// once, and checks that both succeed, overlapping, after exactly one refresh that nothing
/// refused. Returns how many refreshes there had been in all.
fn two_calls_after_expiry(fixture: &OidcFixture, first: &mut Client, second: &mut Client) -> u64 {
    fixture.wait_for_expiry();
    let refreshed = fixture.granted("refresh_token");
    let slow = |text: &str| json!({"ms": 1000, "text": text});
    let a = begin_call(first, "oidc__slow", slow("a"));
    let b = begin_call(second, "oidc__slow", slow("b"));
    assert_eq!(end_call(first, a), success("slow: a"));
    assert_eq!(end_call(second, b), success("slow: b"));
    let stats = fixture.stats();
    assert_eq!(
        stats["granted"]["refresh_token"].as_u64().unwrap_or(0),
        refreshed + 1,
        "{stats}"
    );
    assert_eq!(stats["refused"], json!({}), "{stats}");
    assert_eq!(stats["slow_most"], 2, "the calls did not overlap: {stats}");
    refreshed + 1
}

#[test]
fn an_expired_token_is_refreshed_once_for_two_calls_and_its_rotated_refresh_token_kept() {
    if !oidc_fixture_installed() {
        return;
    }
    let fixture = OidcFixture::start(3);
    let (_dir, server, mut first) = signed_in_to(&fixture, "rotate");
    let mut second = server.client();

    // The access token expires; two calls start at once: one refresh serves both.
    let refreshed = two_calls_after_expiry(&fixture, &mut first, &mut second);
    assert_eq!(state_of(&server, "oidc")["auth"], "signed_in");

    // It expires again: the refresh uses the rotated refresh token (the first one, sent
    // again, would be refused, and its whole grant revoked with it).
    fixture.wait_for_expiry();
    assert_eq!(
        call(&mut first, "oidc__echo", json!({"text": "again"})),
        success("echo: again")
    );
    let stats = fixture.stats();
    assert_eq!(stats["granted"]["refresh_token"], refreshed + 1, "{stats}");
    assert_eq!(stats["refused"], json!({}), "{stats}");
    assert_eq!(stats["granted"]["authorization_code"], 1, "{stats}");
}

#[test]
fn a_token_refused_before_its_expiry_is_refreshed_once_and_the_call_sent_again() {
    if !oidc_fixture_installed() {
        return;
    }
    // Tokens that live a minute: not refreshed ahead of time during the test.
    let fixture = OidcFixture::start(60);
    let (_dir, server, mut client) = signed_in_to(&fixture, "rejected");
    assert!(fixture.reject_tokens() >= 1);
    assert_eq!(
        call(&mut client, "oidc__echo", json!({"text": "again"})),
        success("echo: again")
    );
    let stats = fixture.stats();
    assert_eq!(stats["rejected_requests"], 1, "{stats}");
    assert_eq!(stats["granted"]["refresh_token"], 1, "{stats}");
    assert_eq!(stats["refused"], json!({}), "{stats}");
    assert_eq!(state_of(&server, "oidc")["auth"], "signed_in");
}

#[test]
fn a_revoked_refresh_token_is_refused_once_and_a_new_connect_works() {
    if !oidc_fixture_installed() {
        return;
    }
    let fixture = OidcFixture::start(3);
    let (_dir, server, mut client) = signed_in_to(&fixture, "revoked");

    // The grant is revoked at the authorization server; once the access token has expired
    // (it is a JWT, good until then), the refresh is refused and the call fails cleanly.
    assert!(fixture.revoke() >= 1);
    fixture.wait_for_expiry();
    let (status, text) = call(&mut client, "oidc__echo", json!({"text": "late"}));
    assert_eq!(status, ToolStatus::Error, "{text}");
    assert!(text.contains("sign-in"), "{text}");
    wait_until("the server to need a sign-in", || {
        state_of(&server, "oidc")["auth"] == "needs_sign_in"
    });
    let (_, health) = http(server.addr, "GET", "/healthz", None, None);
    let health: Value = serde_json::from_str(&health).unwrap();
    let oidc = &health["mcp"]["oidc"];
    assert_eq!(oidc["state"], "needs_sign_in", "{health}");
    assert_eq!(oidc["auth"], "needs_sign_in", "{health}");
    let reason = oidc["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("refresh token was refused"), "{health}");
    let stats = fixture.stats();
    assert_eq!(stats["refused"], json!({"refresh_token": 1}), "{stats}");

    // A new Connect brings it back, and nothing was retried meanwhile.
    connect(&server, "oidc");
    wait_until("the call to work again", || {
        call(&mut client, "oidc__echo", json!({"text": "back"})) == success("echo: back")
    });
    let stats = fixture.stats();
    assert_eq!(stats["refused"], json!({"refresh_token": 1}), "{stats}");
    assert_eq!(stats["granted"]["authorization_code"], 2, "{stats}");
}

#[test]
fn two_instances_on_one_postgresql_refresh_an_expired_token_once() {
    if !oidc_fixture_installed() {
        return;
    }
    let fixture = OidcFixture::start(3);
    let url = support::postgres::fresh_database();
    let dir = support::temp_dir("mcp-oauth-instances");
    let config = write_config(
        &dir,
        &json!({ "oidc": { "url": fixture.mcp_url, "approve": "never" } }),
    );
    let instance = || {
        TestServer::with_config(|c| {
            c.database_url = Some(url.clone());
            c.mcp_config = Some(config.clone());
        })
    };
    let (a, b) = (instance(), instance());
    wait_until("the server to need a sign-in", || {
        state_of(&a, "oidc")["state"] == "needs_sign_in"
    });
    // Signed in through A; B finds the grant in the store.
    connect(&a, "oidc");
    wait_for_tool(&a, "oidc__slow");
    wait_for_tool(&b, "oidc__slow");
    let (mut on_a, mut on_b) = (a.client(), b.client());

    // The token expires; a call on each instance at once: one refresh serves both.
    two_calls_after_expiry(&fixture, &mut on_a, &mut on_b);
    assert_eq!(fixture.granted("authorization_code"), 1);
}
