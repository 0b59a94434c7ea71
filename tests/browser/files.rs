//! Files on the page: attached with the paperclip (the file input set over CDP), dropped on the
//! chat and pasted (synthetic events carrying Files made in the page), each a chip that reaches
//! 100% before Send is enabled; the message's files shown in its turn (a thumbnail for a PNG,
//! whose image really decodes, a chip with a download link for the rest), and downloaded with
//! their bytes intact; an SVG and an HTML page with scripts never run and are never shown
//! inline; at most 16 files a message, and the server's refusals (413, 507) said on the chip;
//! the Files panel lists the conversation's files and deletes one; an edit keeps its turn's
//! files, another answer reuses them; and, with a token, thumbnails still load (fetched with
//! the bearer header, which an `<img src>` could not send).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};

use crate::driver::{Browser, CONNECTED, OPEN_ID, PAGE_WAIT, POLL, Submit};
use crate::support::{self, ChildServer, http_json};

/// The composer's chips: name, state (`uploading`, `done`, `error`), the bar's value, and the
/// error's words.
const CHIPS_JS: &str = r#"
return Array.from(document.querySelectorAll('#attachments .file-chip')).map((chip) => ({
  name: chip.querySelector('.name').textContent,
  state: chip.dataset.state,
  value: chip.querySelector('progress').value,
  why: chip.querySelector('.why').hidden ? null : chip.querySelector('.why').textContent,
}));
"#;

/// An SVG whose script, if it ever ran in the page, would set `pwned`.
const SVG: &str = r#"<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8" onload="top.pwned = 'onload'"><script>top.pwned = 'script';</script><rect width="8" height="8" fill="red"/></svg>
"#;

/// An HTML page that would do the same.
const HTML: &str = "<!doctype html><title>x</title><script>top.pwned = 'html';</script><p>hi</p>\n";

pub fn run(browser: &Browser) {
    let dir = support::temp_dir("browser-files");
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let notes = write(&dir, "notes.txt", "The boat leaves at 9:40 from pier 3.\n");
    let svg = write(&dir, "drawing.svg", SVG);
    let html = write(&dir, "page.html", HTML);

    let server = ChildServer::start(&["--in-memory", "--rate-limit", "off"]);
    let page = format!("http://{}/", server.addr);
    browser.goto(&page);
    browser.wait_for(
        "the new-chat state",
        "return !document.getElementById('persona-picker').hidden",
    );

    // The paperclip: the chip shows the name and size, reaches 100%, then Send goes.
    choose_files(browser, &[&notes]);
    let chips = wait_uploaded(browser, 1);
    assert_eq!(chips[0]["name"], "notes.txt");
    assert_eq!(chips[0]["value"], 100);
    assert_eq!(
        browser.eval("return document.querySelector('#attachments .file-chip .size').textContent"),
        "37 B"
    );
    browser.screenshot("files-01-chip");
    browser.say("when does the boat leave?", Submit::EnterKey);
    browser.wait_for("the page to connect", CONNECTED);
    browser.wait_for_turn(1, "done");
    let id = browser.eval(OPEN_ID).as_str().unwrap().to_owned();
    assert_eq!(composer_chips(browser), json!([]), "the chips stayed");
    let shown = turn_files(browser, 1);
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["name"], "notes.txt");
    assert_eq!(shown[0]["kind"], "chip");
    assert_eq!(shown[0]["size"], "37 B");
    let events = events_of(&server, &id);
    let echo = user_message(&events, 1);
    let files = echo["attachments"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["name"], "notes.txt");
    assert_eq!(files[0]["size"], 37);
    let notes_id = files[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(shown[0]["id"], notes_id.as_str());
    let answer = browser.turn(1)["answer"].as_str().unwrap().to_owned();
    assert!(
        answer.starts_with("You said: when does the boat leave?"),
        "{answer}"
    );
    // The offline model names what was attached (PROTOCOL.md section 9), once the server's
    // conversation side passes the files on.
    if answer.contains("(attached") {
        assert_eq!(
            answer,
            "You said: when does the boat leave? (attached: notes.txt)"
        );
    }

    // Its download link saves the file's bytes under its name.
    allow_downloads(browser, &downloads);
    browser.click(".turn[data-turn-id=\"1\"] .user-files .download");
    let saved = wait_for_download(&downloads, "notes.txt");
    assert_eq!(
        saved,
        std::fs::read(&notes).unwrap(),
        "the download differs"
    );

    // Dropped on the chat: the drop zone shows while files are dragged over it; a message of
    // files alone (no text) goes, its empty bubble hidden.
    browser.eval(
        "const dt = new DataTransfer(); \
         dt.items.add(new File(['city,people\\nLisbon,545000\\n'], 'cities.csv', {type: 'text/csv'})); \
         window.dropped = dt; \
         document.getElementById('log').dispatchEvent(new DragEvent('dragenter', {dataTransfer: dt, bubbles: true, cancelable: true}));",
    );
    assert_eq!(
        browser.eval("return document.getElementById('main').classList.contains('dropping')"),
        true
    );
    browser.screenshot("files-02-dropping");
    browser.eval(
        "const log = document.getElementById('log'); \
         for (const type of ['dragover', 'drop']) \
           log.dispatchEvent(new DragEvent(type, {dataTransfer: window.dropped, bubbles: true, cancelable: true}));",
    );
    assert_eq!(
        browser.eval("return document.getElementById('main').classList.contains('dropping')"),
        false
    );
    let chips = wait_uploaded(browser, 1);
    assert_eq!(chips[0]["name"], "cities.csv");
    browser.click("#send");
    browser.wait_for_turn(2, "done");
    assert_eq!(
        browser.eval(
            "const bubble = document.querySelector('.turn[data-turn-id=\"2\"] .bubble.user'); \
             return [bubble.textContent, getComputedStyle(bubble).display]"
        ),
        json!(["", "none"])
    );
    let shown = turn_files(browser, 2);
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0]["name"], "cities.csv");
    let events = events_of(&server, &id);
    assert_eq!(user_message(&events, 2)["text"], "");
    let csv_id = user_message(&events, 2)["attachments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Pasted: a PNG made by a canvas goes in as a file; its turn shows a thumbnail that
    // decodes (from a blob: URL, under the page's CSP).
    let pasted = browser.eval_async(
        "const done = arguments[0]; \
         const canvas = document.createElement('canvas'); canvas.width = 3; canvas.height = 2; \
         const context = canvas.getContext('2d'); context.fillStyle = '#c00'; context.fillRect(0, 0, 3, 2); \
         canvas.toBlob((blob) => { \
           const dt = new DataTransfer(); \
           dt.items.add(new File([blob], 'image.png', {type: 'image/png'})); \
           const event = new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true}); \
           document.getElementById('input').dispatchEvent(event); \
           done(event.defaultPrevented); \
         }, 'image/png');",
    );
    assert_eq!(
        pasted, true,
        "a paste of a file alone puts no text in the box"
    );
    let chips = wait_uploaded(browser, 1);
    assert_eq!(chips[0]["name"], "image.png");
    browser.say("what colour is this?", Submit::EnterKey);
    browser.wait_for_turn(3, "done");
    let image = browser.wait_for(
        "the thumbnail to decode",
        "const img = document.querySelector('.turn[data-turn-id=\"3\"] .user-files .file-image img'); \
         return img !== null && img.complete && img.naturalWidth > 0 \
           && [img.naturalWidth, img.naturalHeight, img.src.slice(0, 5), img.alt]",
    );
    assert_eq!(image, json!([3, 2, "blob:", "image.png"]));
    assert_eq!(turn_files(browser, 3)[0]["kind"], "image");
    browser.screenshot("files-03-thumbnail");

    // An SVG and an HTML page with scripts: chips, not images; nothing runs, not even when
    // downloaded.
    choose_files(browser, &[&svg, &html]);
    wait_uploaded(browser, 2);
    browser.say("two dangerous files", Submit::EnterKey);
    browser.wait_for_turn(4, "done");
    let shown = turn_files(browser, 4);
    let kinds: Vec<(&str, &str)> = shown
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("drawing.svg", "chip"), ("page.html", "chip")]);
    assert_eq!(
        browser.eval("return document.querySelectorAll('.turn[data-turn-id=\"4\"] img').length"),
        0
    );
    browser.click(".turn[data-turn-id=\"4\"] .file[data-file-id] .download");
    let saved = wait_for_download(&downloads, "drawing.svg");
    assert_eq!(saved, SVG.as_bytes());
    assert_eq!(
        browser.eval("return typeof window.pwned"),
        "undefined",
        "an uploaded file ran in the page"
    );
    let types: Vec<String> = user_message(&events_of(&server, &id), 4)["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["content_type"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        types.iter().all(|t| !t.starts_with("image/png")),
        "{types:?}"
    );

    // At most 16 files a message: the 17th chip says so and uploads nothing; × takes chips
    // away.
    browser.eval(
        "const dt = new DataTransfer(); \
         for (let i = 1; i <= 17; i++) dt.items.add(new File(['file ' + i], 'many-' + i + '.txt', {type: 'text/plain'})); \
         document.getElementById('log').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));",
    );
    browser.wait_for(
        "sixteen uploads and one refusal",
        "const chips = Array.from(document.querySelectorAll('#attachments .file-chip')); \
         return chips.length === 17 && chips.filter((c) => c.dataset.state === 'done').length === 16 \
           && chips[16].dataset.state === 'error'",
    );
    let chips = composer_chips(browser);
    assert_eq!(chips[16]["why"], "A message carries at most 16 files.");
    browser.screenshot("files-04-too-many");
    browser.eval(
        "for (const remove of document.querySelectorAll('#attachments .remove')) remove.click()",
    );
    assert_eq!(composer_chips(browser), json!([]));
    assert_eq!(
        browser.eval("return document.getElementById('attachments').hidden"),
        true
    );

    // The Files panel: the conversation's files; Delete removes one, from the server too, and
    // its chip in the conversation says it is gone.
    browser.click("#open-files");
    let listed = browser.wait_for(
        "the conversation's files",
        "const names = Array.from(document.querySelectorAll('#file-list .file-entry .name')).map((n) => n.textContent); \
         return names.length === 5 && names.sort()",
    );
    assert_eq!(
        listed,
        json!([
            "cities.csv",
            "drawing.svg",
            "image.png",
            "notes.txt",
            "page.html"
        ])
    );
    browser.screenshot("files-05-panel");
    browser.click(&format!(
        "#file-list .file-entry[data-file-id=\"{csv_id}\"] button.forget"
    ));
    browser.wait_for(
        "the file to leave the list",
        "return document.querySelectorAll('#file-list .file-entry').length === 4",
    );
    let (status, answer) = http_json(
        server.addr,
        "GET",
        &format!("/api/files?conversation={id}"),
        None,
        None,
    );
    assert_eq!(status, 200);
    let ids: Vec<&str> = answer["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4);
    assert!(!ids.contains(&csv_id.as_str()));
    assert_eq!(
        browser.eval(&format!(
            "const item = document.querySelector('.turn[data-turn-id=\"2\"] .file[data-file-id=\"{csv_id}\"]'); \
             return [item.classList.contains('gone'), item.querySelector('.download') === null, \
                     item.querySelector('.deleted').textContent]"
        )),
        json!([true, true, "deleted"])
    );
    // "All my files": the files uploaded for no message are the caller's too.
    browser.click("#files-all");
    browser.wait_for(
        "every file of the caller",
        "return document.querySelectorAll('#file-list .file-entry').length === 20",
    );
    browser.type_into("#files-all", "\u{E00C}");
    browser.wait_for(
        "the panel to close",
        "return document.getElementById('files-box').hidden",
    );

    // A reload shows every file again, from the API's events.
    browser.refresh();
    browser.wait_for("the page to connect", CONNECTED);
    browser.wait_for(
        "the thumbnail after a reload",
        "const img = document.querySelector('.turn[data-turn-id=\"3\"] .file-image img'); \
         return img !== null && img.complete && img.naturalWidth === 3",
    );
    assert_eq!(turn_files(browser, 1)[0]["id"], notes_id.as_str());
    assert_eq!(browser.eval("return typeof window.pwned"), "undefined");

    // An edit keeps its turn's files (the editor shows them); × in the editor leaves one out.
    browser.click(".turn[data-turn-id=\"4\"] .edit");
    let in_editor = browser.wait_for(
        "the files in the editor",
        "const names = Array.from(document.querySelectorAll('.turn[data-turn-id=\"4\"] .editor .file .name')).map((n) => n.textContent); \
         return names.length === 2 && names",
    );
    assert_eq!(in_editor, json!(["drawing.svg", "page.html"]));
    browser.screenshot("files-06-editor");
    browser.type_into(
        ".turn[data-turn-id=\"4\"] .editor textarea",
        " (edited)\u{E007}",
    );
    browser.wait_for_turn(5, "done");
    let events = events_of(&server, &id);
    assert_eq!(user_message(&events, 5)["edit_of"], 4);
    assert_eq!(
        user_message(&events, 5)["attachments"],
        user_message(&events, 4)["attachments"]
    );
    let names: Vec<Value> = turn_files(browser, 5)
        .iter()
        .map(|f| f["name"].clone())
        .collect();
    assert_eq!(names, [json!("drawing.svg"), json!("page.html")]);
    // Leaving one out: the edit carries the other alone.
    browser.click(".turn[data-turn-id=\"5\"] .edit");
    browser.wait_for(
        "the editor",
        "return document.querySelectorAll('.turn[data-turn-id=\"5\"] .editor .file').length === 2",
    );
    browser.click(".turn[data-turn-id=\"5\"] .editor .file .remove");
    browser.click(".turn[data-turn-id=\"5\"] .editor .save");
    browser.wait_for_turn(6, "done");
    let events = events_of(&server, &id);
    let kept = user_message(&events, 6)["attachments"].clone();
    assert_eq!(kept.as_array().unwrap().len(), 1, "{kept}");
    assert_eq!(kept[0]["name"], "page.html");

    // Another answer to the pasted image's turn: the page shows the files the server echoes
    // (the same turn's files), thumbnail included.
    browser.click(".turn[data-turn-id=\"3\"] .regenerate");
    browser.wait_for_turn(7, "done");
    let events = events_of(&server, &id);
    assert_eq!(user_message(&events, 7)["regenerate_of"], 3);
    let echoed = user_message(&events, 7)["attachments"].clone();
    let shown = turn_files(browser, 7);
    assert_eq!(
        shown.len(),
        echoed.as_array().map_or(0, Vec::len),
        "{shown:?} for {echoed}"
    );
    if !shown.is_empty() {
        browser.wait_for(
            "the regenerated turn's thumbnail",
            "const img = document.querySelector('.turn[data-turn-id=\"7\"] .file-image img'); \
             return img !== null && img.complete && img.naturalWidth === 3",
        );
    }

    assert_eq!(browser.eval("return typeof window.pwned"), "undefined");
    drop(server);

    refusals(browser);
    with_a_token(browser, &notes);
}

/// The server's refusals on the chip: a file over the size limit (413), then one past the
/// storage quota (507).
fn refusals(browser: &Browser) {
    let server = ChildServer::start(&[
        "--in-memory",
        "--max-upload-mib",
        "1",
        "--file-quota-mib",
        "1",
    ]);
    browser.goto(&format!("http://{}/", server.addr));
    browser.wait_for(
        "the new-chat state",
        "return !document.getElementById('persona-picker').hidden",
    );
    drop_bytes(browser, "big.bin", (1 << 20) + 1, 1);
    let chip = browser.wait_for(
        "the size refusal",
        "const chip = document.querySelector('#attachments .file-chip'); \
         return chip !== null && chip.dataset.state === 'error' && chip.querySelector('.why').textContent",
    );
    assert!(chip.as_str().unwrap().contains("larger than"), "{chip}");
    assert_eq!(
        browser.eval("return document.getElementById('send').disabled"),
        false,
        "a refused file holds Send back"
    );
    browser.eval("document.querySelector('#attachments .remove').click()");

    // Two files of 600 KiB (different bytes): the second passes the 1 MiB quota.
    drop_bytes(browser, "first.bin", 600 << 10, 2);
    wait_uploaded(browser, 1);
    drop_bytes(browser, "second.bin", 600 << 10, 3);
    let chip = browser.wait_for(
        "the quota refusal",
        "const chips = document.querySelectorAll('#attachments .file-chip'); \
         return chips.length === 2 && chips[1].dataset.state === 'error' && chips[1].querySelector('.why').textContent",
    );
    assert!(chip.as_str().unwrap().contains("storage"), "{chip}");
    browser.screenshot("files-07-refused");
    drop(server);
}

/// With a token, every request of the page carries it: the upload, and the thumbnail's bytes.
fn with_a_token(browser: &Browser, notes: &Path) {
    let server = ChildServer::start(&["--in-memory", "--auth-token", "file-secret"]);
    let page = format!("http://{}/", server.addr);
    browser.goto(&page);
    browser.eval("localStorage.setItem('sparky.token', 'file-secret')");
    browser.refresh();
    browser.wait_for(
        "the new-chat state",
        "return !document.getElementById('persona-picker').hidden",
    );
    choose_files(browser, &[notes]);
    wait_uploaded(browser, 1);
    browser.eval_async(
        "const done = arguments[0]; \
         const canvas = document.createElement('canvas'); canvas.width = 5; canvas.height = 4; \
         canvas.getContext('2d').fillRect(0, 0, 5, 4); \
         canvas.toBlob((blob) => { \
           const dt = new DataTransfer(); dt.items.add(new File([blob], 'shot.png', {type: 'image/png'})); \
           document.getElementById('input').dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true})); \
           done(true); \
         }, 'image/png');",
    );
    wait_uploaded(browser, 2);
    browser.say("with a token", Submit::EnterKey);
    browser.wait_for("the page to connect", CONNECTED);
    browser.wait_for_turn(1, "done");
    browser.wait_for(
        "the thumbnail, fetched with the token",
        "const img = document.querySelector('.turn[data-turn-id=\"1\"] .file-image img'); \
         return img !== null && img.complete && img.naturalWidth === 5",
    );
    assert_eq!(turn_files(browser, 1).len(), 2);
    browser.eval("localStorage.removeItem('sparky.token')");
    drop(server);
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// Sets the hidden file input behind the paperclip to `paths`, as choosing them would (CDP
/// `DOM.setFileInputFiles`, which fires its `change` event).
fn choose_files(browser: &Browser, paths: &[&Path]) {
    let root = browser.cdp("DOM.getDocument", json!({"depth": 0}));
    let node = browser.cdp(
        "DOM.querySelector",
        json!({"nodeId": root["root"]["nodeId"], "selector": "#file-input"}),
    );
    let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    browser.cdp(
        "DOM.setFileInputFiles",
        json!({"nodeId": node["nodeId"], "files": files}),
    );
}

/// Drops a file of `size` bytes (each `fill`) on the chat.
fn drop_bytes(browser: &Browser, name: &str, size: usize, fill: u8) {
    browser.eval(&format!(
        "const dt = new DataTransfer(); \
         dt.items.add(new File([new Uint8Array({size}).fill({fill})], '{name}', {{type: 'application/octet-stream'}})); \
         document.getElementById('log').dispatchEvent(new DragEvent('drop', {{dataTransfer: dt, bubbles: true, cancelable: true}}));"
    ));
}

fn composer_chips(browser: &Browser) -> Value {
    browser.eval(CHIPS_JS)
}

/// Waits until the composer holds `count` chips, all uploaded, and Send is enabled; returns
/// them.
fn wait_uploaded(browser: &Browser, count: usize) -> Vec<Value> {
    browser.wait_for(
        &format!("{count} uploaded chip(s)"),
        &format!(
            "const chips = Array.from(document.querySelectorAll('#attachments .file-chip')); \
             return chips.length === {count} && chips.every((c) => c.dataset.state === 'done' \
               && c.querySelector('progress').value === 100) \
               && !document.getElementById('send').disabled"
        ),
    );
    composer_chips(browser).as_array().unwrap().clone()
}

/// The files a turn shows under its message: id, name, size, and kind (`image` or `chip`).
fn turn_files(browser: &Browser, turn: u64) -> Vec<Value> {
    let found = browser.eval(&format!(
        "return Array.from(document.querySelectorAll('.turn[data-turn-id=\"{turn}\"] > .user-files .file')).map((item) => ({{ \
           id: item.dataset.fileId, \
           name: item.querySelector('.name').textContent, \
           size: item.querySelector('.size').textContent, \
           kind: item.classList.contains('file-image') ? 'image' : 'chip', \
         }}))"
    ));
    found.as_array().unwrap().clone()
}

/// Lets the page save downloads into `dir`.
fn allow_downloads(browser: &Browser, dir: &Path) {
    browser.cdp(
        "Browser.setDownloadBehavior",
        json!({"behavior": "allow", "downloadPath": dir.display().to_string()}),
    );
}

/// Waits for the file `name` to be saved in `dir`, and returns its bytes.
fn wait_for_download(dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        // Chromium writes `name.crdownload` first and renames it when done.
        if let Ok(bytes) = std::fs::read(&path) {
            return bytes;
        }
        assert!(
            Instant::now() < deadline,
            "no download {name} in {}",
            dir.display()
        );
        std::thread::sleep(POLL);
    }
}

fn events_of(server: &ChildServer, id: &str) -> Vec<Value> {
    let (status, answer) = http_json(
        server.addr,
        "GET",
        &format!("/api/conversations/{id}/events?limit=1000"),
        None,
        None,
    );
    assert_eq!(status, 200, "{answer}");
    answer["events"].as_array().unwrap().clone()
}

/// The `data` of turn `turn`'s `user_message`.
fn user_message(events: &[Value], turn: u64) -> Value {
    events
        .iter()
        .find(|e| e["type"] == "user_message" && e["data"]["turn_id"] == turn)
        .unwrap_or_else(|| panic!("no user_message of turn {turn}"))["data"]
        .clone()
}
