//! Files in the conversation (PROTOCOL.md sections 3, 5 and 9): a message carries uploaded
//! files, its `user_message` lists them, the model is given a small document whole and a long
//! one's relevant passages (cited by file and place, within the context budget), `edit` and
//! `regenerate` keep a turn's files, and the `files` and `read_file` tools read them.

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use sparky::common::protocol::{ServerEnvelope, ServerFrame};
use sparky::model::Role;
use support::recording::Recording;
use support::{Client, TestServer, upload};

/// Sends `frame` and reads the turn it opens to its end: its `user_message` and every frame.
fn run(client: &mut Client, frame: Value) -> (ServerEnvelope, Vec<ServerEnvelope>) {
    client.send(frame);
    let opened = client.expect("user_message");
    let turn = opened.frame.turn_id().unwrap().0;
    let frames = client.finish_turn(turn);
    (opened, frames)
}

fn answer(frames: &[ServerEnvelope]) -> String {
    match &frames.last().unwrap().frame {
        ServerFrame::Message { text, .. } => text.clone(),
        other => panic!("the turn did not answer: {other:?}"),
    }
}

fn id(file: &Value) -> String {
    file["id"].as_str().unwrap().to_owned()
}

/// A long document: `paragraphs` paragraphs of filler, one of which (the `needle`th) holds a
/// fact found nowhere else.
fn long_document(paragraphs: usize, needle: usize) -> String {
    (0..paragraphs)
        .map(|n| {
            if n == needle {
                "The lighthouse keeper's cat is named Marmalade and sleeps on the lamp room \
                 stairs.\n"
                    .to_owned()
            } else {
                format!(
                    "Paragraph {n} describes the weather over the harbour, the tides, the \
                     fishing boats and the gulls in some detail, for the log book.\n"
                )
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_message_carries_files_and_the_offline_model_names_them() {
    let server = TestServer::start();
    let notes = upload(server.addr, None, "notes.txt", b"buy milk\n");
    let data = upload(server.addr, None, "data.csv", b"a,b\n1,2\n");
    let mut client = server.client();
    let (opened, frames) = run(
        &mut client,
        json!({"type": "message", "data": {"text": "what is here?", "attachments": [id(&notes), id(&data)]}}),
    );
    let ServerFrame::UserMessage { attachments, .. } = &opened.frame else {
        panic!("{opened:?}");
    };
    let names: Vec<&str> = attachments.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["notes.txt", "data.csv"]);
    assert_eq!(attachments[0].size, 9);
    assert_eq!(attachments[0].content_type, "text/plain");
    assert_eq!(
        answer(&frames),
        "You said: what is here? (attached: notes.txt, data.csv)"
    );
    // A message of files alone is a message.
    let (_, frames) = run(
        &mut client,
        json!({"type": "message", "data": {"text": "", "attachments": [id(&notes)]}}),
    );
    assert_eq!(answer(&frames), "You said:  (attached: notes.txt)");
    // The conversation lists its files.
    let session = client.session_id.clone().unwrap();
    let (status, listed) = support::http_json(
        server.addr,
        "GET",
        &format!("/api/files?conversation={session}"),
        None,
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(listed["files"].as_array().unwrap().len(), 2, "{listed}");
    // The turns API lists each turn's files.
    let (_, turns) = support::http_json(
        server.addr,
        "GET",
        &format!("/api/conversations/{session}/turns"),
        None,
        None,
    );
    assert_eq!(
        turns["turns"][0]["attachments"][1]["name"], "data.csv",
        "{turns}"
    );
}

#[test]
fn unknown_foreign_and_too_many_attachments_are_refused_and_start_nothing() {
    let server = TestServer::with_config(|config| {
        config.auth_tokens = vec!["ann-token".into(), "bob-token".into()];
    });
    let bobs = upload(server.addr, Some("bob-token"), "bob.txt", b"private");
    let anns = upload(server.addr, Some("ann-token"), "ann.txt", b"mine");
    let mut client = Client::connect(server.addr, json!({"token": "ann-token"}));
    for attachments in [
        json!(["0123456789abcdef0123456789abcdef"]),
        json!([id(&bobs)]),
        json!(vec![id(&anns); 17]),
        json!("not a list"),
    ] {
        client.send(json!({"type": "message", "data": {"text": "hi", "attachments": attachments}}));
        let error = client.expect("error");
        let ServerFrame::Error { code, .. } = &error.frame else {
            unreachable!()
        };
        assert_eq!(
            serde_json::to_value(code).unwrap(),
            "invalid_message",
            "{attachments}"
        );
    }
    // Nothing started, and the connection still works.
    assert_eq!(client.ask("still here"), "You said: still here");
    let (_, frames) = run(
        &mut client,
        json!({"type": "message", "data": {"text": "mine", "attachments": [id(&anns)]}}),
    );
    assert_eq!(answer(&frames), "You said: mine (attached: ann.txt)");
}

#[test]
fn edit_and_regenerate_keep_the_files_of_the_turn() {
    let model = Arc::new(Recording::default());
    let server = TestServer::with_model(|_| {}, model.clone());
    let notes = upload(
        server.addr,
        None,
        "notes.txt",
        b"the code word is swordfish\n",
    );
    let mut client = server.client();
    let (first, _) = run(
        &mut client,
        json!({"type": "message", "data": {"text": "the word?", "attachments": [id(&notes)]}}),
    );
    let turn = first.frame.turn_id().unwrap().0;
    let (again, frames) = run(
        &mut client,
        json!({"type": "regenerate", "data": {"turn_id": turn}}),
    );
    let ServerFrame::UserMessage { attachments, .. } = &again.frame else {
        panic!("{again:?}");
    };
    assert_eq!(attachments.len(), 1);
    assert_eq!(answer(&frames), "You said: the word? (attached: notes.txt)");
    // The model was given the document whole, labelled with its name, in the user's message.
    let user = model
        .last()
        .into_iter()
        .rev()
        .find(|(role, _)| *role == Role::User)
        .unwrap()
        .1;
    assert!(
        user.starts_with(
            "the word?\n\n<file name=\"notes.txt\" type=\"text/plain\">\nthe code word is swordfish"
        ),
        "{user}"
    );
    let (edited, frames) = run(
        &mut client,
        json!({"type": "edit", "data": {"turn_id": turn, "text": "which word?", "attachments": [id(&notes)]}}),
    );
    let ServerFrame::UserMessage { attachments, .. } = &edited.frame else {
        panic!("{edited:?}");
    };
    assert_eq!(attachments[0].name, "notes.txt");
    assert_eq!(
        answer(&frames),
        "You said: which word? (attached: notes.txt)"
    );
}

#[test]
fn a_long_document_gives_the_model_its_relevant_passages_cited_within_the_budget() {
    let model = Arc::new(Recording {
        window: Some(4_096),
        ..Recording::default()
    });
    let server = TestServer::with_model(|_| {}, model.clone());
    let document = long_document(400, 321);
    let log = upload(server.addr, None, "harbour-log.txt", document.as_bytes());
    let mut client = server.client();
    let (_, frames) = run(
        &mut client,
        json!({"type": "message", "data": {"text": "What is the lighthouse keeper's cat named?", "attachments": [id(&log)]}}),
    );
    let request = model.last();
    let passages: Vec<&String> = request
        .iter()
        .filter(|(role, text)| *role == Role::System && text.starts_with("Passages from"))
        .map(|(_, text)| text)
        .collect();
    assert_eq!(passages.len(), 1, "{request:#?}");
    let passages = passages[0];
    // The passage with the answer is there, first, cited by file and place.
    let first = passages.split("<passage ").nth(1).unwrap();
    assert!(
        first.starts_with("file=\"harbour-log.txt\" at=\"lines "),
        "{passages}"
    );
    assert!(first.contains("Marmalade"), "{passages}");
    // Within the budget: the passages take no more than a quarter of the window (in
    // characters, at three a token), so far less than the document.
    assert!(
        passages.len() <= 4_096 * 3 / 4 + 2_000,
        "{}",
        passages.len()
    );
    assert!(passages.len() < document.len() / 10);
    // The user's message names the document and does not hold it whole.
    let user = &request
        .iter()
        .rfind(|(role, _)| *role == Role::User)
        .unwrap()
        .1;
    assert!(user.contains("<file name=\"harbour-log.txt\""), "{user}");
    assert!(!user.contains("Marmalade"), "{user}");
    // The thought says which passages were read.
    assert!(
        frames.iter().any(|f| matches!(&f.frame,
            ServerFrame::Thought { text, .. } if text.contains("Passages in context: harbour-log.txt, lines"))),
        "{frames:#?}"
    );
    // A later question about the same document gets its own passages.
    let (_, _) = run(
        &mut client,
        json!({"type": "message", "data": {"text": "Which paragraph describes the gulls?"}}),
    );
    let later = model.last();
    assert!(
        later
            .iter()
            .any(|(role, text)| *role == Role::System && text.starts_with("Passages from")),
        "{later:#?}"
    );
}

#[test]
fn the_files_and_read_file_tools_read_a_conversations_files() {
    let server = TestServer::start();
    let document = long_document(300, 250);
    let log = upload(server.addr, None, "harbour-log.txt", document.as_bytes());
    let mut client = server.client();
    run(
        &mut client,
        json!({"type": "message", "data": {"text": "here", "attachments": [id(&log)]}}),
    );
    let (_, frames) = run(
        &mut client,
        json!({"type": "message", "data": {"text": "/files"}}),
    );
    let (_, listed) = support::tool_result(&frames);
    assert!(listed.contains("harbour-log.txt"), "{listed}");
    assert!(listed.contains(&id(&log)), "{listed}");
    let (_, frames) = run(
        &mut client,
        json!({"type": "message", "data": {"text": format!("/read {}", id(&log))}}),
    );
    let (_, page) = support::tool_result(&frames);
    assert!(page.starts_with("harbour-log.txt, page 1 of "), "{page}");
    assert!(page.contains("Call read_file with page 2"), "{page}");
    assert!(page.contains("[lines 1-"), "{page}");
    // Someone else's id, or none, is not found.
    let (_, frames) = run(
        &mut client,
        json!({"type": "message", "data": {"text": "/read 0123456789abcdef0123456789abcdef"}}),
    );
    let (status, text) = support::tool_result(&frames);
    assert_eq!(serde_json::to_value(status).unwrap(), "error", "{text}");
}

#[test]
fn hostile_documents_get_a_note_and_the_conversation_goes_on() {
    let model = Arc::new(Recording::default());
    let server = TestServer::with_model(
        |config| config.extract_timeout = std::time::Duration::from_secs(20),
        model.clone(),
    );
    let bomb = upload(
        server.addr,
        None,
        "bomb.pdf",
        &support::files::pdf_flate_bomb(4096),
    );
    let zip = upload(
        server.addr,
        None,
        "archive.pdf",
        &support::files::zip(&[("a.txt", b"hello")]),
    );
    assert_eq!(zip["content_type"], "application/zip", "{zip}");
    let report = upload(
        server.addr,
        None,
        "report.pdf",
        &support::files::pdf(&["The quarterly figures rose by nine percent."]),
    );
    let mut client = server.client();
    let (_, frames) = run(
        &mut client,
        json!({"type": "message", "data": {"text": "read these", "attachments": [id(&bomb), id(&zip), id(&report)]}}),
    );
    assert_eq!(
        answer(&frames),
        "You said: read these (attached: bomb.pdf, archive.pdf, report.pdf)"
    );
    let user = model
        .last()
        .into_iter()
        .rfind(|(role, _)| *role == Role::User)
        .unwrap()
        .1;
    let block = |name: &str| {
        user.split("<file name=\"")
            .find(|block| block.starts_with(name))
            .unwrap_or_else(|| panic!("no block for {name}: {user}"))
            .to_owned()
    };
    assert!(block("bomb.pdf").contains("could not be read"), "{user}");
    assert!(block("archive.pdf").contains("an archive"), "{user}");
    assert!(
        block("report.pdf").contains("The quarterly figures rose by nine percent."),
        "{user}"
    );
    // The server and the conversation go on.
    assert_eq!(client.ask("still there?"), "You said: still there?");
}

#[test]
fn an_image_goes_to_a_vision_model_and_another_model_reads_a_note() {
    let png = support::files::png();
    for vision in [true, false] {
        let model = Arc::new(Recording {
            vision,
            ..Recording::default()
        });
        let server = TestServer::with_model(|_| {}, model.clone());
        let photo = upload(server.addr, None, "photo.png", &png);
        assert_eq!(photo["content_type"], "image/png");
        let mut client = server.client();
        run(
            &mut client,
            json!({"type": "message", "data": {"text": "what is it?", "attachments": [id(&photo)]}}),
        );
        let images = model.images.lock().last().cloned().unwrap();
        let user = model
            .last()
            .into_iter()
            .rfind(|(role, _)| *role == Role::User)
            .unwrap()
            .1;
        if vision {
            assert_eq!(
                images,
                [("image/png".to_owned(), data_encoding::BASE64.encode(&png))]
            );
            assert!(user.contains("attached."), "{user}");
        } else {
            assert!(images.is_empty());
            assert!(user.contains("This model cannot see images"), "{user}");
        }
    }
}

#[test]
fn deleting_a_conversation_deletes_the_files_only_it_used() {
    let server = TestServer::start();
    let own = upload(server.addr, None, "own.txt", b"only the first uses me");
    let shared = upload(server.addr, None, "shared.txt", b"both use me");
    let kept = upload(server.addr, None, "kept.txt", b"uploaded, never sent");
    let mut first = server.client();
    run(
        &mut first,
        json!({"type": "message", "data": {"text": "a", "attachments": [id(&own), id(&shared)]}}),
    );
    let mut second = server.client();
    run(
        &mut second,
        json!({"type": "message", "data": {"text": "b", "attachments": [id(&shared)]}}),
    );
    let session = first.session_id.clone().unwrap();
    let (status, _) = support::http(
        server.addr,
        "DELETE",
        &format!("/api/conversations/{session}"),
        None,
        None,
    );
    assert_eq!(status, 204);
    let status_of = |file: &Value| {
        support::http_raw(
            server.addr,
            "GET",
            &format!("/api/files/{}", id(file)),
            &[],
            b"",
        )
        .0
    };
    assert_eq!(status_of(&own), 404);
    assert_eq!(status_of(&shared), 200);
    assert_eq!(status_of(&kept), 200);
    // The other conversation goes on with its file.
    let (_, frames) = run(
        &mut second,
        json!({"type": "regenerate", "data": {"turn_id": 1}}),
    );
    assert_eq!(answer(&frames), "You said: b (attached: shared.txt)");
}
