//! User accounts from the tests' side: the `sparky user` command against a server's store, a
//! server with the data directory its store stands for, signing in, API requests with the
//! session cookie (and its CSRF header), and a WebSocket opened with it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sparky::model::ModelBackend;
use sparky::model::offline::OfflineModel;

use super::{Client, TestServer, http_raw, sparky_command, store_args};

/// Runs `sparky user ARGS` against the store of `dir` (PostgreSQL's for `dir` in a run
/// against PostgreSQL), with `stdin` on its standard input.
pub fn user_command(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let dir = dir.to_str().unwrap();
    let mut all = vec!["user"];
    all.extend_from_slice(args);
    all.extend(["--data-dir", dir]);
    sparky_command(&store_args(&all), stdin)
}

/// Adds user `name` with `password` (an admin when `admin`) through the CLI.
pub fn add_user(server: &Server, name: &str, password: &str, admin: bool) {
    let mut args = vec!["add", name, "--password-stdin"];
    if admin {
        args.push("--admin");
    }
    let out = user_command(&server.dir, &args, &format!("{password}\n"));
    assert!(out.status.success(), "{out:?}");
}

/// A server and the data directory its store stands for.
pub struct Server {
    pub server: TestServer,
    pub dir: std::path::PathBuf,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}

pub fn start() -> Server {
    start_with(|_| {})
}

pub fn start_with(adjust: impl FnOnce(&mut sparky::common::config::Config)) -> Server {
    start_with_model(adjust, Arc::new(OfflineModel))
}

/// A server answering with `model`, its configuration adjusted by `adjust`.
pub fn start_with_model(
    adjust: impl FnOnce(&mut sparky::common::config::Config),
    model: Arc<dyn ModelBackend>,
) -> Server {
    let mut dir = None;
    let server = TestServer::with_model(
        |config| {
            adjust(config);
            dir = Some(config.data_dir.clone());
        },
        model,
    );
    Server {
        server,
        dir: dir.unwrap(),
    }
}

/// A signed-in user: the cookie's secret and the CSRF token.
pub struct SignedIn {
    pub cookie: String,
    pub csrf: String,
}

impl SignedIn {
    pub fn cookie_header(&self) -> String {
        format!("sparky_session={}", self.cookie)
    }
}

/// `POST /api/login`: the status, the headers and the body.
pub fn login_raw(
    addr: SocketAddr,
    name: &str,
    password: &str,
) -> (u16, Vec<(String, String)>, Value) {
    let body = json!({"name": name, "password": password}).to_string();
    let (status, headers, body) = http_raw(
        addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

pub fn login(addr: SocketAddr, name: &str, password: &str) -> SignedIn {
    let (status, headers, body) = login_raw(addr, name, password);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], name);
    let set_cookie = headers
        .iter()
        .find(|(name, _)| name == "set-cookie")
        .map(|(_, value)| value.clone())
        .expect("a Set-Cookie");
    let cookie = set_cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("sparky_session=")
        .unwrap()
        .to_owned();
    SignedIn {
        cookie,
        csrf: body["csrf"].as_str().unwrap().to_owned(),
    }
}

/// One API request with the cookie (and the CSRF header when `csrf`): status and JSON body.
pub fn with_cookie(
    addr: SocketAddr,
    user: &SignedIn,
    method: &str,
    path: &str,
    body: Option<&Value>,
    csrf: bool,
) -> (u16, Value) {
    let cookie = user.cookie_header();
    let mut headers = vec![
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/json"),
    ];
    if csrf {
        headers.push(("X-Sparky-CSRF", user.csrf.as_str()));
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    let (status, _, answer) = http_raw(addr, method, path, &headers, body.as_bytes());
    (
        status,
        serde_json::from_slice(&answer).unwrap_or(Value::Null),
    )
}

/// Makes an API token named `name` for the signed-in `user` (`POST /api/tokens`): its secret
/// and its id.
pub fn make_token(addr: SocketAddr, user: &SignedIn, name: &str) -> (String, String) {
    let body = serde_json::json!({ "name": name });
    let (status, made) = with_cookie(addr, user, "POST", "/api/tokens", Some(&body), true);
    assert_eq!(status, 201, "{made}");
    (
        made["token"].as_str().unwrap().to_owned(),
        made["id"].as_str().unwrap().to_owned(),
    )
}

/// A WebSocket opened with the cookie, connected (a new conversation, or `data`'s).
pub fn socket_with_cookie(addr: SocketAddr, user: &SignedIn, data: Value) -> Client {
    let cookie = user.cookie_header();
    let mut client = Client::open_with(
        addr,
        "/ws",
        &[("Cookie", &cookie)],
        Duration::from_millis(250),
    )
    .unwrap();
    client.send(json!({"type": "connect", "data": data}));
    client
}

/// `client` once its `connect` is answered (`session_info`, `ready`).
pub fn connected(client: Client) -> Client {
    client.greeted()
}
