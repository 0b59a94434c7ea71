//! Connecting an OAuth-protected MCP server from the page: the Tools panel shows the MCP SDK's
//! example server (`simpleStreamableHttp --oauth`) as needing a sign-in, with Connect; the
//! click opens its authorization server's page in a new tab (the demo approves at once and
//! sends the browser back to Sparky's callback, which says the tab may close), and the panel
//! then shows the server running and signed in, and its tools answer.

use serde_json::json;

use crate::driver::Browser;
use crate::support::mcp::{Demo, oauth_example};
use crate::support::{self, ChildServer};

pub fn run(browser: &Browser) {
    let Some(script) = oauth_example() else {
        return;
    };
    let demo = Demo::start(&script);
    let dir = support::temp_dir("browser-oauth");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mcp.json");
    let servers = json!({"mcpServers": {"demo": {"url": demo.url(), "approve": "never"}}});
    std::fs::write(&config, servers.to_string()).unwrap();
    let data = dir.join("data");
    let (data, config) = (data.to_str().unwrap(), config.to_str().unwrap());
    let server = ChildServer::start(&["--data-dir", data, "--mcp-config", config]);
    let main = browser.window_handle();
    browser.goto(&format!("http://{}/", server.addr));

    browser.click("#open-tools");
    browser.wait_for(
        "the demo server to need a sign-in, with Connect",
        "const item = document.querySelector('#tool-server-list li[data-name=\"demo\"]'); \
         return item !== null && item.querySelector('button') !== null \
           && item.querySelector('.meta').textContent.startsWith('needs a sign-in')",
    );
    browser.screenshot("oauth-needs-sign-in");
    browser.click("#tool-server-list li[data-name=\"demo\"] button");

    // The sign-in's tab comes back to Sparky's callback page.
    let mut tab = None;
    support::wait_until("the sign-in's tab", || {
        let handles = browser.command("GET", "/window/handles", serde_json::Value::Null);
        tab = handles
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h.as_str())
            .find(|h| *h != main)
            .map(str::to_owned);
        tab.is_some()
    });
    browser.switch_to(tab.as_deref().unwrap());
    browser.wait_for(
        "the callback's page",
        "return document.body !== null && document.body.textContent.includes('Connected to demo')",
    );
    browser.close_tab();
    browser.switch_to(&main);

    // The panel, looking again every two seconds, shows it running and signed in.
    browser.wait_for(
        "the demo server running and signed in",
        "const item = document.querySelector('#tool-server-list li[data-name=\"demo\"]'); \
         return item !== null && item.querySelector('button') === null \
           && item.querySelector('.meta').textContent === 'running, signed in'",
    );
    browser.screenshot("oauth-signed-in");
    browser.click("#tools-close");
    drop(server);
    drop(demo);
}
