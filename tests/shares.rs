//! Share links over HTTP (PROTOCOL.md section 10: `POST /api/conversations/{id}/share`,
//! `GET /api/shares`, `GET /api/shares/{id}`, `GET /s/{id}`, `DELETE /api/shares/{id}`), over
//! real sockets, on the store the run names (SQLite, or PostgreSQL with
//! `SPARKY_TEST_STORE=postgres`): a link read without a token, frozen as it was made; another
//! principal can neither share someone else's conversation nor revoke their link; a revoked link
//! is gone at once; only the files the copy lists are readable through it; an answer's markup
//! reaches the page as raw text, for the page's sanitizer.

mod support;

use serde_json::{Value, json};
use support::{Client, TestServer, http, http_json, http_raw, upload};

const ANN: &str = "ann-token";
const BOB: &str = "bob-token";

fn server() -> TestServer {
    TestServer::with_config(|config| {
        config.auth_tokens = vec![ANN.into(), BOB.into()];
    })
}

/// Sends a message (with `attachments`, file ids) and waits for its answer.
fn say(client: &mut Client, text: &str, attachments: &[&str]) {
    client.send(json!({"type": "message", "data": {"text": text, "attachments": attachments}}));
    let opened = client.expect("user_message");
    let turn = opened.frame.turn_id().unwrap().0;
    client.finish_turn(turn);
}

/// Shares `conversation` as `token`; the answer's JSON, which must be a `201`.
fn share(server: &TestServer, token: &str, conversation: &str) -> Value {
    let (status, made) = http_json(
        server.addr,
        "POST",
        &format!("/api/conversations/{conversation}/share"),
        Some(token),
        None,
    );
    assert_eq!(status, 201, "{made}");
    made
}

/// A file read through a share link, without a token: its status and bytes.
fn shared_file(server: &TestServer, share_id: &str, file_id: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = http_raw(
        server.addr,
        "GET",
        &format!("/api/shares/{share_id}/files/{file_id}"),
        &[],
        b"",
    );
    (status, body)
}

#[test]
fn a_link_is_read_without_a_token_and_holds_the_path_as_it_was() {
    let server = server();
    let mut ann = Client::connect(server.addr, json!({"token": ANN}));
    say(&mut ann, "first question", &[]);
    say(&mut ann, "second question", &[]);
    let conversation = ann.session_id.clone().unwrap();
    let made = share(&server, ANN, conversation.as_str());
    let share_id = made["share_id"].as_str().unwrap().to_owned();
    assert_eq!(share_id.len(), 32, "{made}");
    assert!(share_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(made["url"], format!("/s/{share_id}"));

    // A later turn is not in the copy.
    say(&mut ann, "a later question", &[]);

    let (status, copy) = http_json(
        server.addr,
        "GET",
        &format!("/api/shares/{share_id}"),
        None,
        None,
    );
    assert_eq!(status, 200, "{copy}");
    assert_eq!(copy["share_id"], share_id.as_str());
    assert_eq!(copy["title"], "first question");
    let turns = copy["turns"].as_array().unwrap();
    let texts: Vec<&str> = turns.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["first question", "second question"], "{copy}");
    assert_eq!(turns[1]["answer"], "You said: second question");
    assert_eq!(turns[1]["closing"], "message");
    assert!(!copy.to_string().contains("token"), "{copy}");

    // The page, without a token: the bundled read-only page with the chat page's policy.
    let (status, headers, body) = http_raw(server.addr, "GET", &format!("/s/{share_id}"), &[], b"");
    let page = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{page}");
    let csp = headers
        .iter()
        .find(|(name, _)| name == "content-security-policy")
        .map(|(_, value)| value.as_str())
        .unwrap_or_default();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.contains("/assets/share.js?v="), "{page}");
    assert!(!page.contains("<textarea") && !page.contains("approve"));

    // The owner's list names it; another principal's does not.
    let (_, listed) = http_json(server.addr, "GET", "/api/shares", Some(ANN), None);
    assert_eq!(
        listed["shares"][0]["share_id"],
        share_id.as_str(),
        "{listed}"
    );
    assert_eq!(listed["shares"][0]["conversation"], conversation.as_str());
    let (_, bobs) = http_json(server.addr, "GET", "/api/shares", Some(BOB), None);
    assert_eq!(bobs["shares"], json!([]));
    // The list needs a token.
    assert_eq!(http(server.addr, "GET", "/api/shares", None, None).0, 401);
}

#[test]
fn only_the_owner_shares_and_revokes_and_a_revoked_link_is_gone_at_once() {
    let server = server();
    let mut ann = Client::connect(server.addr, json!({"token": ANN}));
    say(&mut ann, "hello", &[]);
    let conversation = ann.session_id.clone().unwrap();
    // Bob cannot share Ann's conversation, nor without a token.
    let path = format!("/api/conversations/{conversation}/share");
    assert_eq!(http(server.addr, "POST", &path, Some(BOB), None).0, 404);
    assert_eq!(http(server.addr, "POST", &path, None, None).0, 401);
    let made = share(&server, ANN, conversation.as_str());
    let share_id = made["share_id"].as_str().unwrap();
    let link = format!("/api/shares/{share_id}");
    // Bob cannot revoke it, and nobody without a token can.
    assert_eq!(http(server.addr, "DELETE", &link, Some(BOB), None).0, 404);
    assert_eq!(http(server.addr, "DELETE", &link, None, None).0, 401);
    assert_eq!(http(server.addr, "GET", &link, None, None).0, 200);
    // Ann revokes it: the copy and the page are gone at once.
    assert_eq!(http(server.addr, "DELETE", &link, Some(ANN), None).0, 204);
    assert_eq!(http(server.addr, "GET", &link, None, None).0, 404);
    assert_eq!(
        http(server.addr, "GET", &format!("/s/{share_id}"), None, None).0,
        404
    );
    assert_eq!(http(server.addr, "DELETE", &link, Some(ANN), None).0, 404);
    // Unknown and malformed ids.
    for id in ["0123456789abcdef0123456789abcdef", "nope", "..%2f"] {
        assert_eq!(
            http(server.addr, "GET", &format!("/api/shares/{id}"), None, None).0,
            404
        );
        assert_eq!(
            http(server.addr, "GET", &format!("/s/{id}"), None, None).0,
            404
        );
    }
}

#[test]
fn files_the_copy_lists_are_readable_through_it_and_no_others() {
    let server = server();
    let shared = upload(server.addr, Some(ANN), "notes.txt", b"shared notes\n");
    let later = upload(server.addr, Some(ANN), "later.txt", b"attached after\n");
    let private = upload(server.addr, Some(ANN), "private.txt", b"never attached\n");
    let bobs = upload(server.addr, Some(BOB), "bob.txt", b"bob's\n");
    let id = |file: &Value| file["id"].as_str().unwrap().to_owned();
    let mut ann = Client::connect(server.addr, json!({"token": ANN}));
    say(&mut ann, "read this", &[&id(&shared)]);
    let conversation = ann.session_id.clone().unwrap();
    let made = share(&server, ANN, conversation.as_str());
    let share_id = made["share_id"].as_str().unwrap();
    say(&mut ann, "and this", &[&id(&later)]);

    let (status, copy) = http_json(
        server.addr,
        "GET",
        &format!("/api/shares/{share_id}"),
        None,
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        copy["turns"][0]["attachments"][0]["id"],
        id(&shared).as_str()
    );

    let (status, bytes) = shared_file(&server, share_id, &id(&shared));
    assert_eq!(status, 200);
    assert_eq!(bytes, b"shared notes\n");
    for other in [&later, &private, &bobs] {
        assert_eq!(shared_file(&server, share_id, &id(other)).0, 404, "{other}");
    }
    // The file itself still needs its owner's token.
    assert_eq!(
        http(
            server.addr,
            "GET",
            &format!("/api/files/{}", id(&shared)),
            None,
            None
        )
        .0,
        401
    );
    // Once revoked, the file is not readable through the link either.
    let link = format!("/api/shares/{share_id}");
    assert_eq!(http(server.addr, "DELETE", &link, Some(ANN), None).0, 204);
    assert_eq!(shared_file(&server, share_id, &id(&shared)).0, 404);
}

#[test]
fn markup_in_an_answer_reaches_the_page_raw_for_its_sanitizer() {
    let server = server();
    let mut ann = Client::connect(server.addr, json!({"token": ANN}));
    let hostile = "<script>alert(1)</script> <img src=x onerror=alert(2)> **bold**";
    say(&mut ann, hostile, &[]);
    let conversation = ann.session_id.clone().unwrap();
    let made = share(&server, ANN, conversation.as_str());
    let share_id = made["share_id"].as_str().unwrap();
    let (status, copy) = http_json(
        server.addr,
        "GET",
        &format!("/api/shares/{share_id}"),
        None,
        None,
    );
    assert_eq!(status, 200);
    // The JSON carries the text as written (served as JSON, never as HTML).
    assert_eq!(
        copy["turns"][0]["answer"],
        format!("You said: {hostile}").as_str()
    );
    // The page holds none of it: its script fetches the copy and renders it through
    // markdown-it (raw HTML off) and DOMPurify.
    let (_, body) = http(server.addr, "GET", &format!("/s/{share_id}"), None, None);
    assert!(!body.contains("alert("), "{body}");
    assert!(body.contains("/assets/markdown-it.min.js?v="), "{body}");
    assert!(body.contains("/assets/purify.min.js?v="), "{body}");
    let (status, script) = http(server.addr, "GET", "/assets/share.js", None, None);
    assert_eq!(status, 200);
    assert!(script.contains("DOMPurify.sanitize"), "{script}");
    assert!(script.contains("html: false"));
}

#[test]
fn deleting_the_conversation_revokes_its_links() {
    let server = server();
    let mut ann = Client::connect(server.addr, json!({"token": ANN}));
    say(&mut ann, "soon gone", &[]);
    let conversation = ann.session_id.clone().unwrap();
    let made = share(&server, ANN, conversation.as_str());
    let link = format!("/api/shares/{}", made["share_id"].as_str().unwrap());
    assert_eq!(http(server.addr, "GET", &link, None, None).0, 200);
    let path = format!("/api/conversations/{conversation}");
    assert_eq!(http(server.addr, "DELETE", &path, Some(ANN), None).0, 204);
    assert_eq!(http(server.addr, "GET", &link, None, None).0, 404);
    let (_, listed) = http_json(server.addr, "GET", "/api/shares", Some(ANN), None);
    assert_eq!(listed["shares"], json!([]));
}
