//! Sign-ins against a fake authorization server on 127.0.0.1: discovery's fallbacks, and the
//! refresh, single-flight across two "instances" sharing one store, a refused refresh token
//! leading to "needs sign-in" once, with no second request; when a short-lived token counts as
//! expiring.
//!
//! Depends on: `common::cancel`, `store::sqlite`, `tools::mcp::config`, `tools::mcp::oauth`, `tools::mcp::oauth::discovery`, `tools::mcp::oauth::grant`, `tools::mcp::oauth::registration`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use serde_json::{Value, json};

use super::discovery::{self, Challenge, discover};
use super::grant::Grant;
use super::registration::Client;
use super::*;
use crate::store::SqliteStore;

/// A fake authorization (and resource) server: answers each request with `route(method,
/// path, body)` (status, JSON); counts the requests to `/token`.
struct Fake {
    base: String,
    tokens: Arc<AtomicUsize>,
}

fn fake(route: impl Fn(&str, &str, &str) -> (u16, Value) + Send + Sync + 'static) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let tokens = Arc::new(AtomicUsize::new(0));
    let counted = tokens.clone();
    let route = Arc::new(route);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (route, counted) = (route.clone(), counted.clone());
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_owned();
                let path = parts.next().unwrap_or("").to_owned();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                if path == "/token" {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                let (status, answer) = route(&method, &path, &String::from_utf8_lossy(&body));
                let text = answer.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
            });
        }
    });
    Fake { base, tokens }
}

fn metadata(base: &str) -> Value {
    json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "registration_endpoint": format!("{base}/register"),
        "code_challenge_methods_supported": ["S256"],
    })
}

#[test]
fn discovery_follows_the_challenge_else_the_well_known_paths_else_the_origin() {
    // The resource metadata only at the root, the server metadata only as OpenID's.
    let server = fake(|_, path, _| match path {
        "/.well-known/oauth-protected-resource" => (
            200,
            json!({"resource": "r", "authorization_servers": ["http://placeholder"],
                   "scopes_supported": ["a", "b"]}),
        ),
        _ => (404, json!({})),
    });
    let agent = http::agent();
    // No authorization server's metadata anywhere: an error naming what was tried.
    let failed = discover(
        &agent,
        &format!("{}/mcp", server.base),
        &Challenge::default(),
    );
    assert!(
        matches!(failed, Err(OAuthError::Discovery(_))),
        "{failed:?}"
    );

    let auth = fake(|_, path, _| match path {
        "/tenant/.well-known/openid-configuration" => (200, metadata("https://as/tenant")),
        _ => (404, json!({})),
    });
    let issuer = format!("{}/tenant", auth.base);
    let named = fake(move |_, path, _| match path {
        "/custom/prm" => (200, json!({"authorization_servers": [issuer]})),
        "/other/prm" => (
            200,
            json!({"resource": "https://elsewhere.example/mcp", "authorization_servers": []}),
        ),
        _ => (404, json!({})),
    });
    let challenge = Challenge {
        resource_metadata: Some(format!("{}/custom/prm", named.base)),
        scope: Some("from-challenge".into()),
    };
    let found = discover(&agent, &format!("{}/mcp", named.base), &challenge).unwrap();
    assert_eq!(found.resource, format!("{}/mcp", named.base));
    assert_eq!(found.server.token_endpoint, "https://as/tenant/token");
    assert_eq!(found.scope.as_deref(), Some("from-challenge"));
    // Metadata for another resource is refused (RFC 9728 section 3.3).
    let elsewhere = Challenge {
        resource_metadata: Some(format!("{}/other/prm", named.base)),
        scope: None,
    };
    let refused = discover(&agent, &format!("{}/mcp", named.base), &elsewhere);
    assert!(matches!(&refused, Err(OAuthError::Discovery(why)) if why.contains("elsewhere")));

    // No resource metadata at all: the server's origin is its authorization server, and the
    // resource is the server's own URL.
    let origin = fake(|_, path, _| match path {
        "/.well-known/oauth-authorization-server" => (200, metadata("https://o")),
        _ => (404, json!({})),
    });
    let found = discover(
        &agent,
        &format!("{}/v1/mcp/", origin.base),
        &Challenge::default(),
    )
    .unwrap();
    assert_eq!(found.resource, format!("{}/v1/mcp", origin.base));
    assert_eq!(found.server.authorization_endpoint, "https://o/authorize");
    assert_eq!(found.scope, None);
}

/// A fake token endpoint: refresh token `good-N` gives access token `access-N+1` and refresh
/// token `good-N+1`; anything else is `invalid_grant`.
fn token_server() -> Fake {
    fake(|_, path, body| {
        if path != "/token" {
            return (404, json!({}));
        }
        let form: std::collections::HashMap<String, String> =
            form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect();
        assert_eq!(
            form.get("resource").map(String::as_str),
            Some("https://mcp/r")
        );
        match form
            .get("refresh_token")
            .and_then(|t| t.strip_prefix("good-"))
        {
            Some(n) => {
                let n: u32 = n.parse().unwrap();
                // Slow enough that the other callers arrive while it runs.
                thread::sleep(std::time::Duration::from_millis(200));
                (
                    200,
                    json!({"access_token": format!("access-{}", n + 1), "token_type": "bearer",
                           "expires_in": 3600, "refresh_token": format!("good-{}", n + 1)}),
                )
            }
            None => (
                400,
                json!({"error": "invalid_grant", "error_description": "revoked"}),
            ),
        }
    })
}

fn expired_grant(token_endpoint: &str, refresh: &str) -> String {
    serde_json::to_string(&Grant {
        server_url: "https://mcp/r".into(),
        resource: "https://mcp/r".into(),
        token_endpoint: token_endpoint.into(),
        client: Client {
            id: "c".into(),
            secret: None,
            redirect_uri: "http://127.0.0.1:1/cb".into(),
            how: "registered".into(),
        },
        access_token: "access-1".into(),
        refresh_token: Some(refresh.into()),
        expires_at: Some(unix_now() - 5),
        lifetime: None,
        scope: None,
    })
    .unwrap()
}

#[test]
fn a_short_lived_token_is_refreshed_halfway_through_its_life_a_long_one_a_minute_ahead() {
    let now = unix_now();
    let grant = |lifetime: Option<i64>, left: i64| {
        let mut grant: Grant = serde_json::from_str(&expired_grant("http://t", "r")).unwrap();
        grant.lifetime = lifetime;
        grant.expires_at = Some(now + left);
        grant
    };
    // 3 s: fresh for 1 s, expiring in its last 1 s (not from the start, as with 60 s ahead).
    assert!(!grant(Some(3), 3).expiring(now));
    assert!(!grant(Some(3), 2).expiring(now));
    assert!(grant(Some(3), 1).expiring(now));
    // An hour: a minute ahead, as for a grant stored without its lifetime.
    assert!(!grant(Some(3600), 61).expiring(now));
    assert!(grant(Some(3600), 60).expiring(now));
    assert!(grant(None, 60).expiring(now));
    assert!(!grant(None, 61).expiring(now));
}

fn instance(store: &Arc<SqliteStore>) -> Arc<ServerAuth> {
    let options = OAuthOptions {
        store: Some(store.clone() as Arc<dyn McpAuthStore>),
        ..OAuthOptions::default()
    };
    let sign_ins = SignIns::new(
        options,
        [(
            "s".to_owned(),
            "https://mcp/r".to_owned(),
            ConfiguredClient::default(),
        )],
    );
    sign_ins.server("s").unwrap()
}

#[test]
fn an_expired_token_is_refreshed_once_by_every_caller_of_every_instance() {
    let server = token_server();
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    store
        .put_mcp_grant(
            "s",
            &expired_grant(&format!("{}/token", server.base), "good-1"),
        )
        .unwrap();
    // Two "instances" (each its own sign-in and mutex) on one store, three callers each.
    let instances = [instance(&store), instance(&store)];
    let barrier = Arc::new(Barrier::new(6));
    let callers: Vec<_> = (0..6)
        .map(|i| {
            let (auth, barrier) = (instances[i % 2].clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                auth.bearer()
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.join().unwrap().as_deref(), Some("access-2"));
    }
    assert_eq!(server.tokens.load(Ordering::SeqCst), 1);
    assert_eq!(instances[0].state(), AuthState::SignedIn);
    // The rotated refresh token is the stored one; the lease is free.
    let stored = store.mcp_grant("s").unwrap().unwrap();
    assert!(stored.grant.contains("good-2"));
    assert_eq!(stored.refreshing_until, None);
}

#[test]
fn a_refused_refresh_token_needs_a_sign_in_once_and_is_not_tried_again() {
    let server = token_server();
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    store
        .put_mcp_grant(
            "s",
            &expired_grant(&format!("{}/token", server.base), "revoked"),
        )
        .unwrap();
    let auth = instance(&store);
    assert_eq!(auth.bearer(), None);
    assert!(matches!(auth.state(), AuthState::NeedsSignIn(reason) if reason.contains("refused")));
    assert!(
        store.mcp_grant("s").unwrap().is_none(),
        "the grant is forgotten"
    );
    // Nothing is left to refresh: more requests (and a 401) send nothing to the server.
    assert_eq!(auth.bearer(), None);
    auth.challenged(Some("Bearer"), None);
    assert_eq!(server.tokens.load(Ordering::SeqCst), 1);
    assert!(auth.needs_sign_in());
}

#[test]
fn a_lease_held_by_another_instance_is_waited_for_not_doubled() {
    let server = token_server();
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let version = store
        .put_mcp_grant(
            "s",
            &expired_grant(&format!("{}/token", server.base), "good-7"),
        )
        .unwrap();
    let now = unix_now();
    // Another instance holds the lease; ours waits, then sees its result.
    assert!(
        store
            .claim_mcp_refresh("s", version, now, now + 30)
            .unwrap()
    );
    assert!(
        !store
            .claim_mcp_refresh("s", version, now, now + 30)
            .unwrap()
    );
    let auth = instance(&store);
    let waiter = thread::spawn(move || auth.bearer());
    let other = instance(&store);
    let fresh = flow::refresh(&http::agent(), &other.stored().unwrap().0).unwrap();
    other.keep(&fresh).unwrap();
    assert_eq!(waiter.join().unwrap().as_deref(), Some("access-8"));
    assert_eq!(server.tokens.load(Ordering::SeqCst), 1);
}

#[test]
fn a_callback_works_once_for_a_known_state_and_a_config_names_its_client() {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let options = OAuthOptions {
        store: Some(store as Arc<dyn McpAuthStore>),
        ..OAuthOptions::default()
    };
    let sign_ins = SignIns::new(options, []);
    assert!(matches!(
        sign_ins.finish("made-up", "code"),
        Err(OAuthError::UnknownSignIn)
    ));
    assert!(matches!(
        sign_ins.begin("nobody", "http://127.0.0.1:1/cb"),
        Err(OAuthError::UnknownServer(_))
    ));
    assert_eq!(sign_ins.page_redirect_uri(), None);

    let servers = crate::tools::mcp::config::parse_config(
        r#"{"mcpServers": {"gh": {"url": "https://x/mcp",
            "oauth": {"client_id": "abc", "client_secret": "shh", "scope": "repo"}}}}"#,
    )
    .unwrap();
    let crate::tools::mcp::config::ServerSpec::Http(endpoint) = &servers[0].1 else {
        panic!("not an HTTP server");
    };
    assert_eq!(endpoint.oauth.client_id.as_deref(), Some("abc"));
    assert_eq!(endpoint.oauth.scope.as_deref(), Some("repo"));
    assert!(!format!("{:?}", endpoint.oauth).contains("shh"));
}

#[test]
fn a_sign_in_on_another_instance_ends_the_wait_for_one() {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let (here, there) = (instance(&store), instance(&store));
    here.challenged(Some("Bearer"), None);
    assert!(here.needs_sign_in());
    let waiting = here.clone();
    let waiter =
        thread::spawn(move || waiting.wait_for_sign_in(&crate::common::cancel::CancelFlag::new()));
    // The other instance signs in: its grant lands in the store.
    let mut grant: Value =
        serde_json::from_str(&expired_grant("http://127.0.0.1:1/token", "good-1")).unwrap();
    grant["expires_at"] = json!(unix_now() + 3600);
    let grant = grant.to_string();
    store.put_mcp_grant("s", &grant).unwrap();
    drop(there);
    assert!(waiter.join().unwrap());
    assert!(!here.needs_sign_in());
}

#[test]
fn the_client_is_the_configured_one_else_a_metadata_document_else_a_registration() {
    let registrar = fake(|method, path, body| match (method, path) {
        ("POST", "/register") => {
            let asked: Value = serde_json::from_str(body).unwrap();
            assert_eq!(asked["token_endpoint_auth_method"], "none");
            (
                201,
                json!({"client_id": "registered-1", "redirect_uris": asked["redirect_uris"]}),
            )
        }
        _ => (404, json!({})),
    });
    let mut server: discovery::ServerMetadata =
        serde_json::from_value(metadata(&registrar.base)).unwrap();
    let agent = http::agent();
    let redirect = "https://chat.example/api/mcp/oauth/callback";
    let configured = ConfiguredClient {
        client_id: Some("by-hand".into()),
        client_secret: Some("s".into()),
        scope: None,
    };
    let client = client_for(&agent, &server, &configured, redirect, None).unwrap();
    assert_eq!(
        (client.id.as_str(), client.how.as_str()),
        ("by-hand", "config")
    );
    assert_eq!(client.secret.as_deref(), Some("s"));

    let none = ConfiguredClient::default();
    let client = client_for(&agent, &server, &none, redirect, None).unwrap();
    assert_eq!(
        (client.id.as_str(), client.how.as_str()),
        ("registered-1", "registered")
    );

    // A metadata document needs the server's support and an https public URL.
    server.client_id_metadata_document_supported = true;
    let client = client_for(
        &agent,
        &server,
        &none,
        redirect,
        Some("https://chat.example/"),
    )
    .unwrap();
    assert_eq!(
        client.id,
        format!("https://chat.example{CLIENT_DOCUMENT_PATH}")
    );
    assert_eq!(client.how, "metadata-document");
    assert_eq!(
        client_document("https://chat.example")["redirect_uris"],
        json!([redirect])
    );
    let plain = client_for(
        &agent,
        &server,
        &none,
        redirect,
        Some("http://chat.example"),
    )
    .unwrap();
    assert_eq!(plain.how, "registered");

    // Nothing to register with and no configured client: an error that says what to do.
    server.client_id_metadata_document_supported = false;
    server.registration_endpoint = None;
    let refused = client_for(&agent, &server, &none, redirect, None);
    assert!(
        matches!(&refused, Err(OAuthError::Registration(why)) if why.contains("client_id")),
        "{refused:?}"
    );
}
