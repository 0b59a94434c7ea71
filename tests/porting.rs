//! Export and import (PROTOCOL.md section 10): a conversation exported in Sparky's format and
//! imported again keeps every branch and its leaf; ChatGPT and Claude data exports, built here
//! from the formats' public descriptions in their current and older layouts, import with their
//! branches and the right leaf, and the conversation goes on with the model seeing the leaf's
//! path; hostile imports are refused with a clear reason and import nothing; nobody exports
//! another principal's conversation. Each runs on the run's store (SQLite, or PostgreSQL with
//! `SPARKY_TEST_STORE=postgres`).

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;

use serde_json::{Value, json};
use sparky::common::protocol::SessionId;
use support::recording::Recording;
use support::{Client, TestServer, http_json, http_raw, read_answer};

/// Sends `frame` and reads the turn it opens to its end.
fn run(client: &mut Client, frame: Value) {
    client.send(frame);
    let opened = client.expect("user_message");
    let turn = opened.frame.turn_id().unwrap().0;
    client.finish_turn(turn);
}

fn message(text: &str) -> Value {
    json!({"type": "message", "data": {"text": text}})
}

/// The turns API's leaf and `(turn_id, parent, text, closing)` of each turn.
fn tree(
    server: &TestServer,
    token: Option<&str>,
    id: &str,
) -> (u64, Vec<(u64, u64, String, Value)>) {
    let path = format!("/api/conversations/{id}/turns");
    let (status, body) = http_json(server.addr, "GET", &path, token, None);
    assert_eq!(status, 200, "{body}");
    let turns = body["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["turn_id"].as_u64().unwrap(),
                t["parent"].as_u64().unwrap(),
                t["text"].as_str().unwrap().to_owned(),
                t["closing"].clone(),
            )
        })
        .collect();
    (body["leaf"].as_u64().unwrap(), turns)
}

/// `POST /api/import` with `body`: the status and the answer.
fn import(server: &TestServer, token: Option<&str>, body: &str) -> (u16, Value) {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    let (status, _, answer) = http_raw(
        server.addr,
        "POST",
        "/api/import",
        &headers,
        body.as_bytes(),
    );
    let text = String::from_utf8_lossy(&answer);
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
    )
}

/// The conversations an import made, which must be a `201`.
fn imported(server: &TestServer, token: Option<&str>, body: &str) -> Vec<String> {
    let (status, answer) = import(server, token, body);
    assert_eq!(status, 201, "{answer}");
    answer["imported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

/// The one conversation an import made.
fn imported_one(server: &TestServer, token: Option<&str>, body: &str) -> String {
    let ids = imported(server, token, body);
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

fn count(server: &TestServer, token: Option<&str>) -> usize {
    let (status, body) = http_json(server.addr, "GET", "/api/conversations", token, None);
    assert_eq!(status, 200, "{body}");
    body["conversations"].as_array().unwrap().len()
}

/// Sends `text` in conversation `id` and returns the answer.
fn go_on(server: &TestServer, id: &str, text: &str) -> String {
    let session = SessionId::parse(id).unwrap();
    let mut client = Client::connect(server.addr, json!({"session_id": session.as_str()}));
    client.ask(text)
}

#[test]
fn an_export_imported_again_keeps_every_branch_and_the_leaf() {
    let model = Arc::new(Recording::default());
    let server = TestServer::with_model(|_| {}, model.clone());
    let mut client = server.client();
    for text in ["one", "two", "three"] {
        run(&mut client, message(text));
    }
    run(
        &mut client,
        json!({"type": "edit", "data": {"turn_id": 2, "text": "two, better"}}),
    );
    run(
        &mut client,
        json!({"type": "regenerate", "data": {"turn_id": 4}}),
    );
    run(&mut client, message("/calc 6*7"));
    client.send(json!({"type": "switch", "data": {"turn_id": 2}}));
    client.expect("branch");
    let id = client.session_id.clone().unwrap();
    let original = tree(&server, None, id.as_str());
    assert_eq!(original.0, 3);

    let path = format!("/api/conversations/{}/export", id.as_str());
    let (status, headers, body) = http_raw(server.addr, "GET", &path, &[], b"");
    assert_eq!(status, 200);
    let disposition = headers
        .iter()
        .find(|(name, _)| name == "content-disposition")
        .map(|(_, value)| value.clone())
        .unwrap();
    assert!(
        disposition.starts_with("attachment") && disposition.contains("filename=\"one.json\""),
        "{disposition}"
    );
    let export: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(export["format"], "sparky-conversation");
    assert_eq!(export["version"], 1);
    assert_eq!(export["id"], id.as_str());
    assert_eq!(export["leaf"], 3);
    assert_eq!(export["turns"].as_array().unwrap().len(), 6);
    let calc = &export["turns"][5]["events"];
    let kinds: Vec<&str> = calc
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"tool_use") && kinds.contains(&"tool_result"),
        "{kinds:?}"
    );

    let before = count(&server, None);
    let copy = imported_one(&server, None, &String::from_utf8(body.clone()).unwrap());
    assert_ne!(copy, id.as_str());
    assert_eq!(count(&server, None), before + 1);
    assert_eq!(
        tree(&server, None, &copy),
        original,
        "the tree and the leaf survive"
    );
    // The copy's events are the original's, renumbered for the copy.
    let events = |id: &str| {
        let (_, body) = http_json(
            server.addr,
            "GET",
            &format!("/api/conversations/{id}/events?turn_id=6"),
            None,
            None,
        );
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["type"].clone(), e["data"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(events(&copy), events(id.as_str()));
    // An export of a list of exports imports each.
    let list = format!(
        "[{},{}]",
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&body)
    );
    let (status, answer) = import(&server, None, &list);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["imported"].as_array().unwrap().len(), 2);

    // The copy goes on from its leaf, turn 3: the model sees that path.
    assert_eq!(go_on(&server, &copy, "four"), "You said: four");
    assert_eq!(
        model.dialogue(),
        [
            "one",
            "You said: one",
            "two",
            "You said: two",
            "three",
            "You said: three",
            "four"
        ]
    );
    let (leaf, turns) = tree(&server, None, &copy);
    assert_eq!((leaf, turns.last().unwrap().1), (7, 3));
}

/// A ChatGPT `conversations.json` node.
fn node(id: &str, parent: Option<&str>, children: &[&str], message: Value) -> (String, Value) {
    (
        id.to_owned(),
        json!({"id": id, "message": message, "parent": parent, "children": children}),
    )
}

fn gpt_message(role: &str, content: Value, time: f64) -> Value {
    json!({"id": "m", "author": {"role": role, "name": null, "metadata": {}},
           "create_time": time, "content": content, "status": "finished_successfully",
           "metadata": {}, "recipient": "all"})
}

fn text(parts: &[&str]) -> Value {
    json!({"content_type": "text", "parts": parts})
}

/// Today's layout: a root without a message, a hidden system message, a question answered
/// twice (two replies), a follow-up asked in two versions (an edit), and `current_node` at the
/// end of the edited version.
fn chatgpt_current() -> Value {
    let mapping: serde_json::Map<String, Value> = [
        node("root", None, &["sys"], Value::Null),
        node(
            "sys",
            Some("root"),
            &["u1"],
            gpt_message("system", text(&[""]), 1.0),
        ),
        node(
            "u1",
            Some("sys"),
            &["a1", "a1b"],
            gpt_message("user", text(&["Hello"]), 2.0),
        ),
        node(
            "a1",
            Some("u1"),
            &["u2", "u2b"],
            gpt_message("assistant", text(&["Hi there"]), 3.0),
        ),
        node(
            "a1b",
            Some("u1"),
            &[],
            gpt_message("assistant", text(&["Hey!"]), 4.0),
        ),
        node(
            "u2",
            Some("a1"),
            &["a2"],
            gpt_message("user", text(&["Tell me a joke"]), 5.0),
        ),
        node(
            "a2",
            Some("u2"),
            &[],
            gpt_message("assistant", text(&["Knock knock."]), 6.0),
        ),
        node(
            "u2b",
            Some("a1"),
            &["a2b"],
            gpt_message("user", text(&["Tell me a story"]), 7.0),
        ),
        node(
            "a2b",
            Some("u2b"),
            &[],
            gpt_message("assistant", text(&["Once upon a time."]), 8.0),
        ),
    ]
    .into_iter()
    .collect();
    json!({"title": "Greetings", "create_time": 1.0, "update_time": 8.0, "mapping": mapping,
           "current_node": "a2b", "conversation_id": "c1", "id": "c1"})
}

/// An older layout: no `current_node`, a multimodal question whose parts are a string and an
/// image object, code and a tool's output folded into the answer, and an edited first question
/// written last.
fn chatgpt_older() -> Value {
    let multimodal = json!({"content_type": "multimodal_text", "parts": [
        {"content_type": "image_asset_pointer", "asset_pointer": "file-service://x", "size_bytes": 1},
        "Compute 2+2"
    ]});
    let code = json!({"content_type": "code", "language": "python", "text": "print(2+2)"});
    let output = json!({"content_type": "execution_output", "text": "4"});
    let mapping: serde_json::Map<String, Value> = [
        node("r", None, &["q", "qb"], Value::Null),
        node("q", Some("r"), &["c"], gpt_message("user", multimodal, 1.0)),
        node("c", Some("q"), &["t"], gpt_message("assistant", code, 2.0)),
        node("t", Some("c"), &["a"], gpt_message("tool", output, 3.0)),
        node(
            "a",
            Some("t"),
            &[],
            gpt_message("assistant", text(&["It is 4."]), 4.0),
        ),
        node(
            "qb",
            Some("r"),
            &["ab"],
            gpt_message("user", text(&["Compute 3+3"]), 5.0),
        ),
        node(
            "ab",
            Some("qb"),
            &[],
            gpt_message("assistant", text(&["6"]), 6.0),
        ),
    ]
    .into_iter()
    .collect();
    json!({"title": "Sums", "create_time": 1.0, "mapping": mapping})
}

#[test]
fn chatgpt_exports_import_with_their_branches_and_leaf_in_both_layouts() {
    let model = Arc::new(Recording::default());
    let server = TestServer::with_model(|_| {}, model.clone());
    let body = json!([chatgpt_current(), chatgpt_older()]).to_string();
    let ids = imported(&server, None, &body);
    assert_eq!(ids.len(), 2);

    let (leaf, turns) = tree(&server, None, &ids[0]);
    let shape: Vec<(u64, u64, &str)> = turns
        .iter()
        .map(|(t, p, x, _)| (*t, *p, x.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            (1, 0, "Hello"),
            (2, 1, "Tell me a joke"),
            (3, 1, "Tell me a story"),
            (4, 0, "Hello"),
        ]
    );
    assert_eq!(leaf, 3, "current_node is on turn 3");
    assert!(turns.iter().all(|turn| turn.3 == "message"));
    let (_, entry) = http_json(
        server.addr,
        "GET",
        &format!("/api/conversations/{}", ids[0]),
        None,
        None,
    );
    assert_eq!(entry["title"], "Greetings");

    let (leaf, turns) = tree(&server, None, &ids[1]);
    let shape: Vec<(u64, u64, &str)> = turns
        .iter()
        .map(|(t, p, x, _)| (*t, *p, x.as_str()))
        .collect();
    assert_eq!(shape, [(1, 0, "Compute 2+2"), (2, 0, "Compute 3+3")]);
    assert_eq!(leaf, 2, "without current_node, the newest message's turn");
    let (_, events) = http_json(
        server.addr,
        "GET",
        &format!("/api/conversations/{}/events?turn_id=1", ids[1]),
        None,
        None,
    );
    let answer = events["events"].as_array().unwrap().last().unwrap()["data"]["text"].clone();
    assert_eq!(answer, "```python\nprint(2+2)\n```\n\nIt is 4.");

    // The conversation goes on from its leaf: the model sees the current path only.
    assert_eq!(go_on(&server, &ids[0], "And then?"), "You said: And then?");
    assert_eq!(
        model.dialogue(),
        [
            "Hello",
            "Hi there",
            "Tell me a story",
            "Once upon a time.",
            "And then?"
        ]
    );
    let (leaf, turns) = tree(&server, None, &ids[0]);
    assert_eq!((leaf, turns.last().unwrap().1), (5, 3));
}

#[test]
fn claude_exports_import_in_both_layouts() {
    let model = Arc::new(Recording::default());
    let server = TestServer::with_model(|_| {}, model.clone());
    let older = json!({"uuid": "c-old", "name": "Linear", "created_at": "2024-01-01T00:00:00Z",
    "updated_at": "2024-01-01T00:00:00Z", "account": {"uuid": "a"},
    "chat_messages": [
        {"uuid": "m1", "text": "Hi", "sender": "human", "created_at": "2024-01-01T00:00:00Z",
         "attachments": [], "files": []},
        {"uuid": "m2", "text": "Hello!", "sender": "assistant", "created_at": "2024-01-01T00:00:01Z"},
        {"uuid": "m3", "text": "Bye", "sender": "human", "created_at": "2024-01-01T00:00:02Z"},
        {"uuid": "m4", "text": "Goodbye!", "sender": "assistant", "created_at": "2024-01-01T00:00:03Z"}
    ]});
    let root = "00000000-0000-4000-8000-000000000000";
    let msg = |uuid: &str, parent: &str, sender: &str, text: &str| {
        json!({"uuid": uuid, "parent_message_uuid": parent, "sender": sender, "text": "",
               "content": [{"type": "text", "text": text}, {"type": "tool_use", "name": "x", "input": {}}],
               "created_at": "2024-02-01T00:00:00Z"})
    };
    let newer = json!({"uuid": "c-new", "name": "Tree", "created_at": "2024-02-01T00:00:00Z",
    "chat_messages": [
        msg("h1", root, "human", "Q1"),
        msg("a1", "h1", "assistant", "A1"),
        msg("h2", "a1", "human", "Q2"),
        msg("a2", "h2", "assistant", "A2"),
        msg("h2b", "a1", "human", "Q2 edited"),
        msg("a2b", "h2b", "assistant", "A2 edited")
    ]});
    let (status, answer) = import(&server, None, &json!([older, newer]).to_string());
    assert_eq!(status, 201, "{answer}");
    let ids = answer["imported"].as_array().unwrap();
    let (leaf, turns) = tree(&server, None, ids[0].as_str().unwrap());
    let shape: Vec<(u64, u64, &str)> = turns
        .iter()
        .map(|(t, p, x, _)| (*t, *p, x.as_str()))
        .collect();
    assert_eq!(shape, [(1, 0, "Hi"), (2, 1, "Bye")]);
    assert_eq!(leaf, 2);
    let newer_id = ids[1].as_str().unwrap().to_owned();
    let (leaf, turns) = tree(&server, None, &newer_id);
    let shape: Vec<(u64, u64, &str)> = turns
        .iter()
        .map(|(t, p, x, _)| (*t, *p, x.as_str()))
        .collect();
    assert_eq!(shape, [(1, 0, "Q1"), (2, 1, "Q2"), (3, 1, "Q2 edited")]);
    assert_eq!(leaf, 3);
    assert_eq!(go_on(&server, &newer_id, "Q3"), "You said: Q3");
    assert_eq!(
        model.dialogue(),
        ["Q1", "A1", "Q2 edited", "A2 edited", "Q3"]
    );
}

#[test]
fn hostile_imports_are_refused_with_a_reason_and_import_nothing() {
    let server = TestServer::start();
    let mut client = server.client();
    client.ask("already here");
    let before = count(&server, None);
    let cyclic = json!([{"title": "Loop", "mapping": {
        "a": {"id": "a", "message": null, "parent": "b", "children": ["b"]},
        "b": {"id": "b", "message": null, "parent": "a", "children": ["a"]}
    }}]);
    let children_loop = json!([{"title": "Back", "mapping": {
        "r": {"id": "r", "message": null, "parent": null, "children": ["x"]},
        "x": {"id": "x", "message": gpt_message("user", text(&["hi"]), 1.0), "parent": "r", "children": ["r"]}
    }}]);
    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let too_many = format!("[{}]", vec!["{}"; 1_001].join(","));
    let nodes: serde_json::Map<String, Value> = (0..20_001)
        .map(|n| {
            let parent = (n > 0).then(|| (n - 1).to_string());
            (n.to_string(), json!({"message": null, "parent": parent}))
        })
        .collect();
    let long = json!([{"title": "Long", "mapping": nodes}]).to_string();
    let cases: Vec<(String, &str)> = vec![
        (cyclic.to_string(), "loops"),
        (children_loop.to_string(), "conversation 0 (\"Back\")"),
        (deep, "nested"),
        ("{not json".into(), "not JSON"),
        ("\"a string\"".into(), "list of conversations"),
        (
            json!([{"title": "Typed", "mapping": 5}]).to_string(),
            "ChatGPT",
        ),
        (
            json!([{"name": "C", "chat_messages": "x"}]).to_string(),
            "Claude",
        ),
        (
            json!([{"name": "C", "chat_messages": [{"sender": "robot", "text": "x"}]}]).to_string(),
            "unknown sender",
        ),
        (
            json!([{"format": "sparky-conversation", "version": 2, "turns": []}]).to_string(),
            "version 2",
        ),
        (
            json!([{"format": "sparky-conversation", "version": 1, "turns": [
            {"turn_id": 1, "parent": 1, "text": "x"}]}])
            .to_string(),
            "not an earlier turn",
        ),
        (json!([{"what": 1}]).to_string(), "not a Sparky export"),
        // The first is fine, the second is not: nothing of either is imported.
        (
            json!([chatgpt_current(), {"title": "Bad", "mapping": {"a": {"parent": 7}}}])
                .to_string(),
            "conversation 1 (\"Bad\")",
        ),
        (too_many, "1000 at most"),
        (long, "20000 at most"),
    ];
    for (body, reason) in cases {
        let (status, answer) = import(&server, None, &body);
        assert_eq!(status, 400, "{answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(reason), "{reason:?} not in {message:?}");
        assert!(message.starts_with("nothing was imported"), "{message}");
        assert_eq!(
            count(&server, None),
            before,
            "{reason}: something was imported"
        );
    }

    // Past the size limit: refused from the declared length, before the body is read.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    write!(
        stream,
        "POST /api/import HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n[",
        60 << 20
    )
    .unwrap();
    let (status, _, body) = read_answer(&mut stream);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(count(&server, None), before);
}

#[test]
fn nobody_exports_or_reaches_another_principals_conversation() {
    let server = TestServer::with_config(|config| {
        config.auth_tokens = vec!["ann-token".into(), "bob-token".into()];
    });
    let file = support::upload(server.addr, Some("ann-token"), "plan.txt", b"step one\n");
    let mut ann = Client::connect(server.addr, json!({"token": "ann-token"}));
    run(
        &mut ann,
        json!({"type": "message", "data": {"text": "my secret plan", "attachments": [file["id"]]}}),
    );
    let id = ann.session_id.clone().unwrap();
    let path = format!("/api/conversations/{}/export", id.as_str());
    let (status, _) = http_json(server.addr, "GET", &path, Some("bob-token"), None);
    assert_eq!(status, 404);
    let (status, _) = http_json(server.addr, "GET", &path, None, None);
    assert_eq!(status, 401);
    let (status, body) = http_json(server.addr, "GET", &path, Some("ann-token"), None);
    assert_eq!(status, 200);
    assert_eq!(body["files"][0]["name"], "plan.txt");
    assert_eq!(body["turns"][0]["attachments"][0]["id"], file["id"]);
    // What Bob imports is Bob's alone, and names none of Ann's files.
    let copy = imported_one(&server, Some("bob-token"), &body.to_string());
    let (_, turns) = http_json(
        server.addr,
        "GET",
        &format!("/api/conversations/{copy}/turns"),
        Some("bob-token"),
        None,
    );
    assert_eq!(turns["turns"][0]["attachments"], json!([]), "{turns}");
    let (_, bobs_files) = http_json(server.addr, "GET", "/api/files", Some("bob-token"), None);
    assert_eq!(bobs_files["files"], json!([]));
    // Ann's own copy keeps her file, and uses it.
    let own = imported_one(&server, Some("ann-token"), &body.to_string());
    let (_, turns) = http_json(
        server.addr,
        "GET",
        &format!("/api/conversations/{own}/turns"),
        Some("ann-token"),
        None,
    );
    assert_eq!(turns["turns"][0]["attachments"][0]["id"], file["id"]);
    let (_, used) = http_json(
        server.addr,
        "GET",
        &format!("/api/files?conversation={own}"),
        Some("ann-token"),
        None,
    );
    assert_eq!(used["files"][0]["id"], file["id"]);
    assert_eq!(count(&server, Some("bob-token")), 1);
    assert_eq!(count(&server, Some("ann-token")), 2);
    let copy_path = format!("/api/conversations/{copy}/export");
    let (status, _) = http_json(server.addr, "GET", &copy_path, Some("ann-token"), None);
    assert_eq!(status, 404);
    let (status, _) = import(&server, None, "[]");
    assert_eq!(status, 401, "an import needs a token");
}

/// The listing's entry for conversation `id`: `(title, created_at, updated_at, model)`.
fn listed(server: &TestServer, id: &str) -> (Value, Value, Value, Value) {
    let (status, body) = http_json(server.addr, "GET", "/api/conversations", None, None);
    assert_eq!(status, 200, "{body}");
    let entry = body["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not listed: {body}"))
        .clone();
    (
        entry["title"].clone(),
        entry["created_at"].clone(),
        entry["updated_at"].clone(),
        entry["model"].clone(),
    )
}

/// The `created_at` of each turn of conversation `id`.
fn turn_times(server: &TestServer, id: &str) -> Vec<Value> {
    let path = format!("/api/conversations/{id}/turns");
    let (status, body) = http_json(server.addr, "GET", &path, None, None);
    assert_eq!(status, 200, "{body}");
    body["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["created_at"].clone())
        .collect()
}

#[test]
fn imports_keep_their_original_times_titles_and_models() {
    let server = TestServer::start();
    // ChatGPT: fractional unix seconds; the newest answer's `model_slug`, else the default.
    let mut gpt = chatgpt_current();
    gpt["create_time"] = json!(1_700_000_000.25);
    gpt["update_time"] = json!(1_700_003_600.75);
    gpt["default_model_slug"] = json!("gpt-4");
    gpt["mapping"]["u1"]["message"]["create_time"] = json!(1_700_000_100.5);
    gpt["mapping"]["u2"]["message"]["create_time"] = json!(1_700_000_200.0);
    gpt["mapping"]["u2b"]["message"]["create_time"] = json!(1_700_000_300.0);
    gpt["mapping"]["a2b"]["message"]["create_time"] = json!(1_700_000_400.0);
    gpt["mapping"]["a2b"]["message"]["metadata"] = json!({"model_slug": "gpt-4o"});
    gpt["mapping"]["a1"]["message"]["metadata"] = json!({"model_slug": "gpt-3.5"});
    let mut older = chatgpt_older();
    older["create_time"] = json!(1_600_000_000.0);
    older["update_time"] = json!(1_600_000_060.0);
    older["default_model_slug"] = json!("text-davinci-002-render");
    // Claude: RFC 3339 with fractions and offsets.
    let claude = json!({"uuid": "c", "name": "Claude talk",
    "created_at": "2024-03-01T12:00:00.123456Z", "updated_at": "2024-03-02T08:30:00+02:00",
    "chat_messages": [
        {"uuid": "m1", "text": "Hi", "sender": "human", "created_at": "2024-03-01T12:00:01Z"},
        {"uuid": "m2", "text": "Hello!", "sender": "assistant",
         "created_at": "2024-03-01T12:00:02Z"}
    ]});
    let ids = imported(&server, None, &json!([gpt, older, claude]).to_string());
    assert_eq!(
        listed(&server, &ids[0]),
        (
            json!("Greetings"),
            json!("2023-11-14T22:13:20Z"),
            json!("2023-11-14T23:13:20Z"),
            json!("gpt-4o")
        )
    );
    assert_eq!(
        turn_times(&server, &ids[0]),
        [
            "2023-11-14T22:15:00Z",
            "2023-11-14T22:16:40Z",
            "2023-11-14T22:18:20Z",
            "2023-11-14T22:15:00Z"
        ]
    );
    assert_eq!(
        listed(&server, &ids[1]),
        (
            json!("Sums"),
            json!("2020-09-13T12:26:40Z"),
            json!("2020-09-13T12:27:40Z"),
            json!("text-davinci-002-render")
        )
    );
    let (title, created, updated, _) = listed(&server, &ids[2]);
    assert_eq!(
        (title, created, updated),
        (
            json!("Claude talk"),
            json!("2024-03-01T12:00:00Z"),
            json!("2024-03-02T06:30:00Z")
        )
    );
    assert_eq!(turn_times(&server, &ids[2]), ["2024-03-01T12:00:01Z"]);
    // The listing is by the original times, most recent first, after anything chatted now.
    let mut client = server.client();
    client.ask("made today");
    let today = client.session_id.clone().unwrap();
    let (_, body) = http_json(server.addr, "GET", "/api/conversations", None, None);
    let order: Vec<&str> = body["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, [today.as_str(), &ids[2], &ids[0], &ids[1]], "{body}");

    // Sparky's own export: its times, turn times and model come back.
    let path = format!("/api/conversations/{}/export", today.as_str());
    let (status, _, body) = http_raw(server.addr, "GET", &path, &[], b"");
    assert_eq!(status, 200);
    let mut export: Value = serde_json::from_slice(&body).unwrap();
    assert!(export["updated_at"].is_string(), "{export}");
    export["title"] = json!("Sparky's own");
    export["created_at"] = json!("2022-01-02T03:04:05Z");
    export["updated_at"] = json!("2022-02-03T04:05:06Z");
    export["model"] = json!("some-model");
    export["turns"][0]["created_at"] = json!("2022-01-02T03:04:06Z");
    let copy = imported_one(&server, None, &export.to_string());
    assert_eq!(
        listed(&server, &copy),
        (
            json!("Sparky's own"),
            json!("2022-01-02T03:04:05Z"),
            json!("2022-02-03T04:05:06Z"),
            json!("some-model")
        )
    );
    assert_eq!(turn_times(&server, &copy), ["2022-01-02T03:04:06Z"]);
    // An export of this server, imported as it is, keeps the original's times and model.
    let (status, _, body) = http_raw(server.addr, "GET", &path, &[], b"");
    assert_eq!(status, 200);
    let again = imported_one(&server, None, &String::from_utf8(body).unwrap());
    let (_, created, updated, model) = listed(&server, today.as_str());
    let (_, created_copy, updated_copy, model_copy) = listed(&server, &again);
    assert_eq!(
        (created_copy, updated_copy, model_copy),
        (created, updated, model)
    );
}
