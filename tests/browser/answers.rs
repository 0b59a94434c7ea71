//! Answers from a model (a fake OpenAI-compatible server): the persona chosen for a new chat
//! reaching the model as its system message and showing on the conversation; token usage per
//! answer and for the conversation; a reload in the middle of a streamed answer showing the
//! text so far; rendered markdown (tables, fenced code in monospace with a copy button, links
//! in a new tab); and the list of markdown payloads, each shown inert. Also the desktop and
//! dark screenshots for the README.

use serde_json::json;

use crate::driver::{Browser, CONNECTED, OPEN_ID, Submit};
use crate::fakes::{Beacon, FAKE_USAGE, FakeModel, TEA_ANSWER, TEA_QUESTION};
use crate::support::{ChildServer, http};

/// Markdown and HTML that must never run, load or navigate anywhere: each is the whole answer.
/// `{beacon}` becomes the address of a listener that must never be contacted.
const PAYLOADS: &[&str] = &[
    "<script>window.__xss = 'script'</script>",
    "<img src=x onerror=\"window.__xss = 'img'\">",
    "<svg onload=\"window.__xss = 'svg'\"><circle r=\"5\"/></svg>",
    "<a href=\"javascript:window.__xss='raw link'\">raw link</a>",
    "<iframe src=\"javascript:window.__xss='iframe'\"></iframe>",
    "<details open ontoggle=\"window.__xss='details'\">x</details>",
    "<style>body { display: none }</style>",
    "<math><mtext><table><mglyph><style><img src=x onerror=\"window.__xss='mxss'\">",
    "[click me](javascript:window.__xss='md link')",
    "[click me](JaVaScRiPt:window.__xss='mixed case')",
    "[click me](&#106;avascript:window.__xss='entity')",
    "[click me](java\nscript:window.__xss='newline')",
    "<javascript:window.__xss='autolink'>",
    "[click me](vbscript:msgbox('x'))",
    "[click me](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[hover](https://example.com \"a\\\" onmouseover=\\\"window.__xss='title'\")",
    "![pixel](http://{beacon}/pixel.png)",
    "![x](javascript:window.__xss='md image')",
    "![x](x\" onerror=\"window.__xss='image attr')",
    "[![nested](http://{beacon}/nested.png)](https://example.com)",
    "<img src=\"http://{beacon}/raw.png\">",
    "[ref]\n\n[ref]: javascript:window.__xss='reference'",
    "```html\n<script>window.__xss='fence'</script>\n```",
];

pub fn run(browser: &Browser) {
    let model = FakeModel::start();
    let beacon = Beacon::start();
    let mut args = model.args();
    args.push("--in-memory".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ChildServer::start(&args);
    let page = format!("http://{}/", server.addr);

    // A new chat with a persona: it reaches the model as the system message, and shows.
    browser.goto(&page);
    browser.wait_for(
        "the persona picker",
        "return !document.getElementById('persona-picker').hidden",
    );
    browser.eval(
        "const s = document.getElementById('persona-select'); s.value = 'teacher'; \
         s.dispatchEvent(new Event('change'))",
    );
    let teacher = browser.eval("return document.getElementById('persona-preview').textContent");
    assert!(
        teacher
            .as_str()
            .unwrap()
            .starts_with("You are Sparky, a patient teacher.")
    );
    browser.screenshot("answers-01-persona");
    browser.say("hello", Submit::EnterKey);
    browser.wait_for("the page to connect", CONNECTED);
    browser.wait_for_turn(1, "done");
    let request = model.request();
    assert_eq!(request["messages"][0]["role"], "system");
    assert_eq!(request["messages"][0]["content"], teacher);
    assert_eq!(request["stream_options"]["include_usage"], true);
    assert_eq!(
        browser.eval("return document.getElementById('persona-chip').textContent"),
        "Persona: Patient teacher"
    );

    // Usage: each answer's tokens, and the conversation's total.
    let used = FAKE_USAGE.0 + FAKE_USAGE.1;
    let turn = browser.turn(1);
    assert_eq!(turn["answer"], "Hello from the fake model.");
    assert_eq!(
        turn["usage"],
        format!("{used} tokens ({} in, {} out)", FAKE_USAGE.0, FAKE_USAGE.1)
    );
    assert_eq!(
        browser.eval("return document.getElementById('usage-total').textContent"),
        format!("{used} tokens in all")
    );
    browser.say("again", Submit::EnterKey);
    browser.wait_for_turn(2, "done");
    let second = model.request();
    assert_eq!(second["messages"][0]["content"], teacher);
    assert_eq!(
        browser.eval("return document.getElementById('usage-total').textContent"),
        format!("{} tokens in all", used * 2)
    );
    // A custom persona, for another new chat.
    browser.click("#new-chat");
    browser.eval(
        "const s = document.getElementById('persona-select'); s.value = 'custom'; \
         s.dispatchEvent(new Event('change'))",
    );
    browser.type_into("#persona-text", "Answer only in haiku.");
    browser.say("hello again", Submit::EnterKey);
    browser.wait_for_turn(1, "done");
    assert_eq!(
        model.request()["messages"][0]["content"],
        "Answer only in haiku."
    );
    assert_eq!(
        browser.eval("return document.getElementById('persona-chip').textContent"),
        "Persona: Custom"
    );

    // A reload in the middle of a streamed answer shows the text so far at once (the server's
    // message_delta with replace), then the rest.
    browser.say("slow", Submit::EnterKey);
    let streaming = "const answer = document.querySelector('.turn[data-turn-id=\"2\"] .bubble.answer'); \
         return answer !== null && answer.textContent.trim() === 'Streaming part one.'";
    browser.wait_for("the first part of the answer", streaming);
    model.request();
    browser.refresh();
    browser.wait_for("the page to reconnect", CONNECTED);
    browser.wait_for("the answer so far, after the reload", streaming);
    assert_eq!(browser.turn(2)["outcome"], "open");
    assert_eq!(
        browser.eval("return document.getElementById('send').dataset.mode"),
        "stop"
    );
    model.release();
    browser.wait_for_turn(2, "done");
    assert_eq!(
        browser.turn(2)["answer"],
        "Streaming part one. And the end."
    );

    // Stopped while it streams: the text shown so far stays, after a reload too (the closing
    // `status cancelled` carries it), marked as stopped.
    browser.say("slow", Submit::EnterKey);
    let stopping = "const answer = document.querySelector('.turn[data-turn-id=\"3\"] .bubble.answer'); \
         return answer !== null && answer.textContent.trim() === 'Streaming part one.'";
    browser.wait_for("the first part of the answer to stop", stopping);
    model.request();
    browser.click("#send");
    browser.wait_for_turn(3, "cancelled");
    model.release();
    browser.refresh();
    browser.wait_for("the page to reconnect", CONNECTED);
    browser.wait_for_turn(3, "cancelled");
    browser.wait_for("the stopped answer, after the reload", stopping);

    // Rendered markdown: headings, emphasis, a table with its alignment, code in monospace
    // with a copy button, links that open in a new tab without an opener.
    browser.click("#new-chat");
    browser.say_text(&format!("say:{TEA_ANSWER}"));
    browser.wait_for_turn(1, "done");
    model.request();
    let rendered = browser.eval(
        "const a = document.querySelector('.turn[data-turn-id=\"1\"] .bubble.answer'); \
         const code = a.querySelector('pre code'); \
         const link = a.querySelector('a'); \
         return { \
           h2: a.querySelector('h2').textContent, \
           strong: a.querySelector('strong').textContent, \
           em: a.querySelector('em').textContent, \
           rows: a.querySelectorAll('table tbody tr').length, \
           right: a.querySelector('table td:nth-child(2)').className, \
           code: code.textContent, \
           lang: a.querySelector('.code-head .lang').textContent, \
           mono: getComputedStyle(code).fontFamily, \
           copy: a.querySelectorAll('.code .copy').length, \
           items: a.querySelectorAll('ul li').length, \
           href: link.getAttribute('href'), target: link.target, rel: link.rel, \
         }",
    );
    assert_eq!(
        rendered,
        json!({
            "h2": "Brewing green tea", "strong": "70–80 °C", "em": "two minutes", "rows": 2,
            "right": "align-right",
            "code": "def steep(minutes):\n    return f\"steep for {minutes} min\"\n",
            "lang": "python",
            "mono": rendered["mono"], "copy": 1, "items": 2,
            "href": "https://example.com/tea", "target": "_blank", "rel": "noopener noreferrer",
        })
    );
    assert!(
        rendered["mono"].as_str().unwrap().contains("monospace"),
        "code is not monospace: {}",
        rendered["mono"]
    );
    browser.click(".turn[data-turn-id=\"1\"] .code .copy");
    browser.wait_for(
        "the copy button to say it copied",
        "return document.querySelector('.turn[data-turn-id=\"1\"] .code .copy').classList.contains('copied')",
    );
    let id = browser.eval(OPEN_ID);

    // The payload list: each is shown, and inert.
    for (n, payload) in PAYLOADS.iter().enumerate() {
        let payload = payload.replace("{beacon}", &beacon.addr.to_string());
        let turn = n as u64 + 2;
        browser.say_text(&format!("say:{payload}"));
        browser.wait_for_turn(turn, "done");
        model.request();
        let verdict = browser.eval(&format!(
            "const a = document.querySelector('.turn[data-turn-id=\"{turn}\"] .bubble.answer'); \
             const bad = []; \
             for (const node of a.querySelectorAll('*')) {{ \
               if (!['P','A','CODE','PRE','DIV','SPAN','BUTTON','UL','OL','LI','STRONG','EM', \
                     'BLOCKQUOTE','BR','H1','H2','H3','TABLE','THEAD','TBODY','TR','TH','TD'].includes(node.tagName)) \
                 bad.push('tag ' + node.tagName); \
               for (const attr of node.attributes) {{ \
                 if (attr.name.startsWith('on') || attr.name === 'style' || attr.name === 'src') bad.push('attribute ' + attr.name); \
               }} \
               if (node.tagName === 'A') {{ \
                 if (!/^(https?:|mailto:)/i.test(node.getAttribute('href') || 'http:')) bad.push('href ' + node.getAttribute('href')); \
                 if (node.target !== '_blank' || !node.rel.includes('noopener')) bad.push('link target'); \
               }} \
             }} \
             return {{ bad, xss: window.__xss || null, text: a.textContent.trim(), \
               images: document.querySelectorAll('img, svg, iframe, math, style:not(head style)').length }};",
        ));
        assert_eq!(verdict["bad"], json!([]), "payload {payload:?}: {verdict}");
        assert_eq!(verdict["xss"], json!(null), "payload {payload:?} ran");
        assert_eq!(verdict["images"], 0, "payload {payload:?}: {verdict}");
        assert!(
            !verdict["text"].as_str().unwrap().is_empty(),
            "payload {payload:?} shows nothing"
        );
        browser.assert_no_alert();
    }
    assert!(!beacon.was_hit(), "an image from an answer was fetched");
    // An image in markdown shows as a link to it, which is never followed by itself.
    let pixel = browser.eval(
        "return Array.from(document.querySelectorAll('a.image-link')).map((a) => a.textContent)",
    );
    assert!(
        pixel.as_array().unwrap().contains(&json!("pixel")),
        "{pixel}"
    );

    // Screenshots for the README: a question with a persona, its rendered answer, light and
    // dark, after a fresh load.
    let payloads = format!("/api/conversations/{}", id.as_str().unwrap());
    let renamed = http(
        server.addr,
        "PATCH",
        &payloads,
        None,
        Some(r#"{"title": "Markdown payloads"}"#),
    );
    assert_eq!(renamed.0, 200);
    browser.click("#new-chat");
    browser.eval(
        "const s = document.getElementById('persona-select'); s.value = 'engineer'; \
         s.dispatchEvent(new Event('change'))",
    );
    browser.say(TEA_QUESTION, Submit::EnterKey);
    browser.wait_for_turn(1, "done");
    model.request();
    let tea = browser.eval(OPEN_ID);
    browser.goto("about:blank");
    browser.goto(&format!("{page}#{}", tea.as_str().unwrap()));
    browser.wait_for_turn(1, "done");
    browser.wait_for(
        "the list of four",
        "return document.querySelectorAll('#conversation-list .conversation').length === 4",
    );
    browser.screenshot("answers-02-desktop");
    browser.cdp(
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
    );
    browser.screenshot("answers-03-dark");
    browser.cdp("Emulation.setEmulatedMedia", json!({"features": []}));
    drop(server);
}
