//! The conversation API (PROTOCOL.md section 10) over real sockets: listing and searching,
//! reading events, renaming, deleting (also while a connection is live), memories, and a `404`
//! for everything of another principal.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sparky::common::protocol::{ServerFrame, StatusCode};
use support::{Client, TestServer, http, http_json, wait_until};
use tungstenite::protocol::frame::coding::CloseCode;

fn conversations(server: &TestServer, path: &str, token: Option<&str>) -> Vec<Value> {
    let (status, body) = http_json(server.addr, "GET", path, token, None);
    assert_eq!(status, 200, "{body}");
    body["conversations"].as_array().unwrap().clone()
}

#[test]
fn conversations_are_listed_newest_first_and_searched_by_their_words() {
    let server = TestServer::start();
    let mut first = server.client();
    let long = "tell me about otters ".repeat(10);
    first.ask(&long);
    first.ask("and beavers");
    let mut second = server.client();
    second.ask("what do herons eat");
    let list = conversations(&server, "/api/conversations", None);
    assert_eq!(list.len(), 2);
    let (newest, oldest) = (&list[0], &list[1]);
    assert_eq!(newest["id"], second.session_id.as_ref().unwrap().as_str());
    assert_eq!(newest["title"], "what do herons eat");
    assert_eq!(newest["turns"], 1);
    assert_eq!(newest["running"], false);
    assert_eq!(oldest["turns"], 2);
    let title = oldest["title"].as_str().unwrap();
    assert_eq!(title, long.chars().take(80).collect::<String>());
    for field in ["created_at", "updated_at"] {
        let at = newest[field].as_str().unwrap();
        assert!(at.ends_with('Z') && at.contains('T'), "{field}: {at}");
    }
    let found = conversations(&server, "/api/conversations?q=beavers", None);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], oldest["id"]);
    // Answers are searched too ("You said: …"), and words are matched, not substrings.
    assert_eq!(
        conversations(&server, "/api/conversations?q=herons", None).len(),
        1
    );
    assert!(conversations(&server, "/api/conversations?q=hero", None).is_empty());
    assert!(conversations(&server, "/api/conversations?q=%22%28%2A", None).is_empty());
}

#[test]
fn a_conversation_is_found_by_its_title_and_a_command_gets_a_readable_one() {
    let server = TestServer::start();
    let mut trip = server.client();
    trip.ask("plan the trip");
    let mut command = server.client();
    command.ask(r#"/tool echo {"text": "hello otters"}"#);
    let mut calc = server.client();
    calc.ask("/calc 6*7");
    let list = conversations(&server, "/api/conversations", None);
    let titles: Vec<&str> = list.iter().map(|c| c["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["calc: 6*7", "echo: hello otters", "plan the trip"]);
    // A renamed title is searched, and so is one made from a command.
    let path = format!(
        "/api/conversations/{}",
        trip.session_id.as_ref().unwrap().as_str()
    );
    let body = json!({"title": "Holiday in Lisbon"}).to_string();
    assert_eq!(http(server.addr, "PATCH", &path, None, Some(&body)).0, 200);
    let found = conversations(&server, "/api/conversations?q=lisbon+holidays", None);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["title"], "Holiday in Lisbon");
    let found = conversations(&server, "/api/conversations?q=calc", None);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["title"], "calc: 6*7");
    // Its messages are still searched as well.
    assert_eq!(
        conversations(&server, "/api/conversations?q=trip", None).len(),
        1
    );
}

#[test]
fn events_come_back_exactly_as_sent_a_page_at_a_time() {
    let server = TestServer::start();
    let mut client = server.client();
    client.ask("one");
    client.ask("/calc 2+2");
    client.ask("three");
    let id = client.session_id.clone().unwrap();
    let sent: Vec<Value> = client
        .seen
        .iter()
        .filter(|frame| frame.seq.is_some())
        .map(|frame| serde_json::to_value(frame).unwrap())
        .collect();
    let path = format!("/api/conversations/{}/events", id.as_str());
    let (status, all) = http_json(server.addr, "GET", &path, None, None);
    assert_eq!(status, 200);
    assert_eq!(all["events"].as_array().unwrap(), &sent);
    let last = sent.len() as u64;
    let (_, page) = http_json(
        server.addr,
        "GET",
        &format!("{path}?before_seq={last}&limit=3"),
        None,
        None,
    );
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [last - 3, last - 2, last - 1]);
    let (status, _) = http(server.addr, "GET", &format!("{path}?limit=x"), None, None);
    assert_eq!(status, 400);
    let (status, _) = http(server.addr, "HEAD", &path, None, None);
    assert_eq!(status, 200);
}

/// The `seq`s of a page of events.
fn seqs_of(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {page}"))
        .iter()
        .map(|event| event["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn pages_of_large_events_are_cut_by_bytes_and_page_on_to_the_whole_conversation() {
    let server = TestServer::with_config(|config| {
        config.max_text_chars = 4_000_000;
        config.max_frame_bytes = 8 << 20;
    });
    let mut client = server.client();
    client.ask("a small start");
    // Its text comes back in the user message, the thought and the tool call: three events of
    // 3 MB each in one turn.
    let big = "z".repeat(3_000_000);
    client.say(&format!("/note {big}"));
    let opened = client.expect("user_message");
    let big_turn = opened.frame.turn_id().unwrap().0;
    client.finish_turn(big_turn);
    client.ask("a small end");
    let id = client.session_id.clone().unwrap();
    let sent = support::events_seen(&client);
    let sent_seqs: Vec<u64> = sent.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let bound = sparky::net::api::MAX_PAGE_BYTES + 3_100_000 + 4096;

    // Six large pages at once, while others are served: each stops at the byte cap.
    let path = format!("/api/conversations/{}/events", id.as_str());
    let addr = server.addr;
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let path = format!("{path}?limit=1000");
            std::thread::spawn(move || http(addr, "GET", &path, None, None))
        })
        .collect();
    let mut other = server.client();
    assert_eq!(other.ask("still served"), "You said: still served");
    let (status, _) = http(server.addr, "GET", "/api/conversations", None, None);
    assert_eq!(status, 200);
    let pages: Vec<(u16, String)> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    for (status, body) in &pages {
        assert_eq!(*status, 200);
        assert!(body.len() <= bound, "a page of {} bytes", body.len());
        assert_eq!(body, &pages[0].1);
    }
    let newest: Value = serde_json::from_str(&pages[0].1).unwrap();
    let newest = seqs_of(&newest);
    assert!(newest.len() < sent.len(), "one page held everything");
    assert_eq!(newest.last(), sent_seqs.last());

    // Paging on with before_seq brings the whole conversation, exactly as it was sent.
    let mut all: Vec<Value> = Vec::new();
    let mut before = None;
    loop {
        let query = before.map_or(String::new(), |seq| format!("&before_seq={seq}"));
        let (status, page) = http_json(
            addr,
            "GET",
            &format!("{path}?limit=1000{query}"),
            None,
            None,
        );
        assert_eq!(status, 200);
        let events = page["events"].as_array().unwrap().clone();
        let Some(first) = events.first() else { break };
        before = first["seq"].as_u64();
        all.splice(0..0, events);
        if before == Some(1) {
            break;
        }
    }
    assert_eq!(all, sent);

    // One turn's events come in pages too, on from the last one seen.
    let mut turn: Vec<Value> = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let query = format!("{path}?turn_id={big_turn}&after_seq={after}");
        let (status, body) = http(addr, "GET", &query, None, None);
        assert_eq!(status, 200);
        assert!(body.len() <= bound, "a page of {} bytes", body.len());
        let page: Value = serde_json::from_str(&body).unwrap();
        let events = page["events"].as_array().unwrap().clone();
        let Some(last) = events.last() else { break };
        after = last["seq"].as_u64().unwrap();
        turn.extend(events);
        pages += 1;
    }
    assert!(pages > 1, "the turn came in one page");
    let expected: Vec<Value> = sent
        .iter()
        .filter(|e| e["data"]["turn_id"].as_u64() == Some(big_turn))
        .cloned()
        .collect();
    assert_eq!(turn, expected);
    let (status, _) = http(
        addr,
        "GET",
        &format!("{path}?turn_id=1&after_seq=x"),
        None,
        None,
    );
    assert_eq!(status, 400);
}

#[test]
fn a_conversation_can_be_renamed() {
    let server = TestServer::start();
    let mut client = server.client();
    client.ask("hello");
    let path = format!(
        "/api/conversations/{}",
        client.session_id.as_ref().unwrap().as_str()
    );
    let body = json!({"title": "  Greetings  "}).to_string();
    let (status, entry) = http_json(server.addr, "PATCH", &path, None, Some(&body));
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["title"], "Greetings");
    assert_eq!(
        conversations(&server, "/api/conversations", None)[0]["title"],
        "Greetings"
    );
    for bad in ["{}", "not json", r#"{"title": ""}"#] {
        let (status, _) = http(server.addr, "PATCH", &path, None, Some(bad));
        assert_eq!(status, 400, "{bad}");
    }
    let (status, _) = http(server.addr, "POST", &path, None, Some(&body));
    assert_eq!(status, 405);
}

#[test]
fn deleting_a_live_conversation_stops_it_closes_its_connections_and_removes_it() {
    let server = TestServer::start();
    let mut client = server.client();
    client.ask("/note private");
    client.say("/wait 60000");
    client.expect("tool_use");
    let id = client.session_id.clone().unwrap();
    let path = format!("/api/conversations/{}", id.as_str());
    let listed = conversations(&server, "/api/conversations", None);
    assert_eq!(listed[0]["running"], true);
    let (status, body) = http(server.addr, "DELETE", &path, None, None);
    assert_eq!((status, body.as_str()), (204, ""));
    let deleted = client.expect("status");
    assert!(
        matches!(&deleted.frame, ServerFrame::Status(s) if s.code == StatusCode::Deleted),
        "{deleted:?}"
    );
    assert_eq!(deleted.seq, None);
    let close = client.expect_close().expect("a close frame");
    assert_eq!(close.code, CloseCode::Normal);
    assert!(server.handle.sessions().get(&id).is_none());
    assert_eq!(http(server.addr, "GET", &path, None, None).0, 404);
    assert_eq!(http(server.addr, "DELETE", &path, None, None).0, 404);
    assert_eq!(
        http(server.addr, "GET", &format!("{path}/events"), None, None).0,
        404
    );
    assert!(conversations(&server, "/api/conversations?q=private", None).is_empty());
    // Its id is not adopted again: a resume makes a new conversation.
    let again = Client::resume(server.addr, &id, 0);
    let ServerFrame::SessionInfo { is_new, .. } = again.seen[0].frame else {
        unreachable!()
    };
    assert!(is_new);
}

#[test]
fn memories_are_listed_searched_and_deleted() {
    let server = TestServer::start();
    let mut client = server.client();
    client.ask("/remember the cat is called Tom");
    client.ask("/remember the dog is called Rex");
    let (status, all) = http_json(server.addr, "GET", "/api/memories", None, None);
    assert_eq!(status, 200);
    let memories = all["memories"].as_array().unwrap();
    assert_eq!(memories.len(), 2);
    let (_, found) = http_json(server.addr, "GET", "/api/memories?q=cat", None, None);
    let found = found["memories"].as_array().unwrap().clone();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["content"], "the cat is called Tom");
    let path = format!("/api/memories/{}", found[0]["id"]);
    assert_eq!(http(server.addr, "DELETE", &path, None, None).0, 204);
    assert_eq!(http(server.addr, "DELETE", &path, None, None).0, 404);
    assert_eq!(
        http(server.addr, "DELETE", "/api/memories/x", None, None).0,
        404
    );
    assert!(client.ask("/recall cat").starts_with("Nothing found"));
}

#[test]
fn memories_are_added_and_edited_by_hand() {
    let server = TestServer::with_config(|config| {
        config.auth_tokens = vec!["alice-token".into(), "bob-token".into()];
    });
    let (alice, bob) = (Some("alice-token"), Some("bob-token"));
    let add =
        |token, body: &str| http_json(server.addr, "POST", "/api/memories", token, Some(body));
    let (status, added) = add(alice, r#"{"content": "  My locker code is 4512  "}"#);
    assert_eq!(status, 201, "{added}");
    let id = added["id"].as_i64().unwrap();
    assert_eq!(added["content"], "My locker code is 4512");
    let at = added["created_at"].as_str().unwrap();
    assert!(at.ends_with('Z') && at.contains('T'), "{at}");
    // The same memory again is the one already there.
    let (status, again) = add(alice, r#"{"content": "My locker code is 4512"}"#);
    assert_eq!((status, again["id"].as_i64()), (200, Some(id)));
    let (_, listed) = http_json(server.addr, "GET", "/api/memories?q=locker", alice, None);
    assert_eq!(listed["memories"][0]["id"], id);
    // The model's memory lookup finds it like any other.
    let mut ann = Client::connect(server.addr, json!({"token": "alice-token"}));
    assert!(ann.ask("/recall locker").contains("4512"));

    let path = format!("/api/memories/{id}");
    let body = r#"{"content": "My locker code is 7781"}"#;
    let (status, edited) = http_json(server.addr, "PATCH", &path, alice, Some(body));
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["id"], id);
    assert_eq!(edited["content"], "My locker code is 7781");
    assert_eq!(edited["created_at"], added["created_at"]);
    assert!(ann.ask("/recall locker").contains("7781"));
    assert!(!ann.ask("/recall locker").contains("4512"));
    let (_, listed) = http_json(server.addr, "GET", "/api/memories", alice, None);
    assert_eq!(listed["memories"].as_array().unwrap().len(), 1);

    // Another memory may not be made to say what one says already.
    let (_, other) = add(alice, r#"{"content": "The bike is blue"}"#);
    let other_path = format!("/api/memories/{}", other["id"]);
    let (status, conflict) = http_json(server.addr, "PATCH", &other_path, alice, Some(body));
    assert_eq!(status, 409, "{conflict}");
    assert!(
        conflict["error"]
            .as_str()
            .unwrap()
            .contains(&id.to_string())
    );

    // Someone else's, or nobody's, is not found; nothing of Alice's changes.
    for (token, path) in [(bob, path.as_str()), (alice, "/api/memories/999999")] {
        let (status, _) = http(server.addr, "PATCH", path, token, Some(body));
        assert_eq!(status, 404, "{path}");
    }
    assert_eq!(
        http(server.addr, "PATCH", "/api/memories/x", alice, Some(body)).0,
        404
    );
    let (_, theirs) = http_json(server.addr, "GET", "/api/memories", bob, None);
    assert!(theirs["memories"].as_array().unwrap().is_empty());
    assert_eq!(
        http(server.addr, "POST", "/api/memories", None, Some(body)).0,
        401
    );

    // What is wrong with a body is said.
    let long = json!({"content": "x".repeat(sparky::net::api::MAX_MEMORY_CHARS + 1)}).to_string();
    for (bad, says) in [
        ("not json", "the body must be"),
        ("{}", "the body must be"),
        (r#"{"content": 7}"#, "the body must be"),
        (r#"{"content": "   "}"#, "must not be empty"),
        (long.as_str(), "at most 10000 characters"),
    ] {
        for (method, path) in [("POST", "/api/memories"), ("PATCH", path.as_str())] {
            let (status, answer) = http_json(server.addr, method, path, alice, Some(bad));
            assert_eq!(status, 400, "{method} {bad}");
            assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
        }
    }
    let (_, listed) = http_json(server.addr, "GET", "/api/memories", alice, None);
    let contents: Vec<&str> = listed["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|memory| memory["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["The bike is blue", "My locker code is 7781"]);
}

#[test]
fn another_principal_sees_nothing_and_gets_404_for_everything() {
    let server = TestServer::with_config(|config| {
        config.auth_tokens = vec!["alice-token".into(), "bob-token".into()];
    });
    let (alice, bob) = (Some("alice-token"), Some("bob-token"));
    let mut ann = Client::connect(server.addr, json!({"token": "alice-token"}));
    ann.ask("/remember the launch code is swordfish");
    ann.ask("/note alice's note");
    let id = ann.session_id.clone().unwrap();
    let (_, memories) = http_json(server.addr, "GET", "/api/memories", alice, None);
    let fact = memories["memories"][0]["id"].as_i64().unwrap();

    assert_eq!(conversations(&server, "/api/conversations", alice).len(), 1);
    assert!(conversations(&server, "/api/conversations", bob).is_empty());
    assert!(conversations(&server, "/api/conversations?q=swordfish", bob).is_empty());
    let path = format!("/api/conversations/{}", id.as_str());
    let rename = Some(r#"{"title": "mine now"}"#);
    for (method, path, body) in [
        ("GET", path.clone(), None),
        ("GET", format!("{path}/events"), None),
        ("PATCH", path.clone(), rename),
        ("DELETE", path.clone(), None),
        ("DELETE", format!("/api/memories/{fact}"), None),
    ] {
        assert_eq!(
            http(server.addr, method, &path, bob, body).0,
            404,
            "{method} {path}"
        );
        assert_eq!(
            http(server.addr, method, &path, None, body).0,
            401,
            "{method} {path}"
        );
        let wrong = Some("mallory");
        assert_eq!(http(server.addr, method, &path, wrong, body).0, 401);
    }
    let (_, theirs) = http_json(server.addr, "GET", "/api/memories?q=swordfish", bob, None);
    assert!(theirs["memories"].as_array().unwrap().is_empty());

    // Over the WebSocket: no tool and no prompt of Bob's reaches Alice's facts.
    let mut bo = Client::connect(server.addr, json!({"token": "bob-token"}));
    assert!(bo.ask("/recall launch code").starts_with("Nothing found"));
    for tool in ["graph_get", "graph_delete"] {
        bo.say(&format!("/tool {tool} {{\"id\": {fact}}}"));
        let turn = bo.expect("user_message").frame.turn_id().unwrap().0;
        let (status, text) = support::tool_result(&bo.finish_turn(turn));
        assert_eq!(
            status,
            sparky::common::protocol::ToolStatus::Error,
            "{tool}: {text}"
        );
        assert!(!text.contains("swordfish"));
    }
    bo.say("what is the launch code");
    let turn = bo.expect("user_message").frame.turn_id().unwrap().0;
    let frames = bo.finish_turn(turn);
    assert!(
        frames
            .iter()
            .all(|frame| !format!("{frame:?}").contains("swordfish")),
        "{frames:?}"
    );
    // Alice's memory is still hers, and her prompts use it.
    ann.say("what is the launch code");
    let turn = ann.expect("user_message").frame.turn_id().unwrap().0;
    let frames = ann.finish_turn(turn);
    assert!(
        frames
            .iter()
            .any(|frame| format!("{frame:?}").contains("Memory in context: #")),
        "{frames:?}"
    );
    assert!(ann.ask("/notes").contains("alice's note"));
    // Bob cannot resume Alice's conversation either.
    let mut intruder = Client::open(server.addr);
    intruder.send(
        json!({"type": "connect", "data": {"token": "bob-token", "session_id": id.as_str()}}),
    );
    let refused = intruder.expect("error");
    assert!(format!("{refused:?}").contains("Unauthorized"));
}

#[test]
fn the_retention_policy_deletes_idle_conversations_and_only_those() {
    let server = TestServer::with_config(|config| {
        config.retention = Some(Duration::from_secs(1));
        config.idle_timeout = Duration::from_millis(200);
    });
    let mut old = server.client();
    old.ask("soon forgotten");
    let id = old.session_id.clone().unwrap();
    drop(old);
    let mut kept = server.client();
    wait_until("the idle conversation to be deleted", || {
        // The connected one keeps chatting, so it is never idle for a second.
        kept.ask("still here");
        let list = conversations(&server, "/api/conversations", None);
        list.iter().all(|entry| entry["id"] != id.as_str())
    });
    assert_eq!(conversations(&server, "/api/conversations", None).len(), 1);
}

/// Sends `method path` with an empty body and returns the status, the `Allow` header and the
/// body.
fn status_allow_body(
    server: &TestServer,
    method: &str,
    path: &str,
) -> (u16, Option<String>, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(support::WAIT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let allow = head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("allow")
            .then(|| value.trim().to_owned())
    });
    (status, allow, body.to_owned())
}

#[test]
fn an_api_path_asked_with_another_method_gets_405_naming_the_methods_it_takes() {
    let server = TestServer::start();
    for (method, path, allowed) in [
        ("POST", "/api/conversations/abc", "GET, HEAD, PATCH, DELETE"),
        ("PUT", "/api/conversations/abc/", "GET, HEAD, PATCH, DELETE"),
        ("DELETE", "/api/conversations", "GET, HEAD"),
        ("POST", "/api/conversations/abc/events", "GET, HEAD"),
        ("PUT", "/api/memories/7", "PATCH, DELETE"),
        ("DELETE", "/api/memories", "GET, HEAD, POST"),
    ] {
        let (status, allow, body) = status_allow_body(&server, method, path);
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert_eq!(allow.as_deref(), Some(allowed), "{method} {path}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, allow, _) = status_allow_body(&server, "POST", "/api/nothing");
    assert_eq!((status, allow), (404, None));
}
