//! The `--mcp-config` file: the usual `{"mcpServers": {"name": {"command", "args", "env"}}}`
//! format, read into one [`ServerSpec`] per server: a [`ServerCommand`] to run (stdio) or an
//! [`HttpEndpoint`] to connect to (`"url"`, Streamable HTTP), each with its [`ServerPolicy`]
//! (`"approve"`, `"timeout"`, `"instructions"`, `"roots"`). Plain data; depends on nothing outside `tools/mcp/`.
//!
//! Depends on: `tools::mcp::oauth`, `tools::mcp::oauth::registration`, `tools::mcp::policy`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::oauth::{Authorizer, ConfiguredClient};
use super::policy::{Approve, CallTimeout, Root, ServerPolicy};

/// The usual MCP config file: `{"mcpServers": {"name": {"command", "args", "env"}}}`.
#[derive(Deserialize)]
struct ConfigFile {
    #[serde(rename = "mcpServers")]
    servers: BTreeMap<String, ConfigEntry>,
}

/// One entry of `mcpServers`: a `command` (stdio) or a `url` (Streamable HTTP, with optional
/// `headers`). An entry whose `type` is `"sse"` (the transport MCP replaced in 2025-03-26) is
/// skipped with a warning.
#[derive(Deserialize)]
struct ConfigEntry {
    command: Option<String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A `url` server's OAuth client, when registered by hand (`client_id`, `client_secret`,
    /// `scope`).
    #[serde(default)]
    oauth: ConfiguredClient,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    approve: Approve,
    #[serde(default)]
    timeout: CallTimeout,
    /// `false` leaves the server's `instructions` out of the system prompt.
    #[serde(default = "yes")]
    instructions: bool,
    /// What `roots/list` answers the server.
    #[serde(default)]
    roots: Vec<Root>,
}

/// The default of a setting that is on unless turned off.
fn yes() -> bool {
    true
}

/// How to reach one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ServerSpec {
    /// A process to start, spoken to over its stdio.
    Stdio(ServerCommand),
    /// A Streamable HTTP endpoint.
    Http(HttpEndpoint),
}

/// Where a Streamable HTTP server is, and what every request to it carries.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct HttpEndpoint {
    /// The MCP endpoint's URL (`http://` or `https://`).
    pub(super) url: String,
    /// Headers sent with every request (for a bearer token, say), by name.
    pub(super) headers: BTreeMap<String, String>,
    /// Its OAuth client from the config (`"oauth"`), when registered by hand.
    pub(super) oauth: ConfiguredClient,
    /// Its sign-in, set when the servers are set up (`mod.rs`); none when `headers` carries
    /// an `Authorization` of its own.
    pub(super) auth: Authorizer,
}

impl fmt::Debug for HttpEndpoint {
    /// Header values are left out: they are usually secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.keys().map(String::as_str).collect();
        f.debug_struct("HttpEndpoint")
            .field("url", &self.url)
            .field("headers", &names)
            .finish()
    }
}

/// How to start one stdio server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ServerCommand {
    /// The program to run, found on `PATH` when it has no slash.
    pub(super) command: String,
    /// Its arguments.
    pub(super) args: Vec<String>,
    /// Variables set for it, besides the few it inherits.
    pub(super) env: BTreeMap<String, String>,
    /// Where it runs; Sparky's own directory when `None`.
    pub(super) cwd: Option<PathBuf>,
}

/// One configured server: its name, how to reach it, and how its tools are used.
pub(super) type ServerEntry = (String, ServerSpec, ServerPolicy);

/// Reads a config file's text into the servers to start, in name order.
pub(super) fn parse_config(text: &str) -> Result<Vec<ServerEntry>, serde_json::Error> {
    let file: ConfigFile = serde_json::from_str(text)?;
    let mut servers = Vec::new();
    for (name, mut entry) in file.servers {
        if entry.disabled {
            log::info!("mcp {name}: disabled in the config");
            continue;
        }
        let policy = ServerPolicy {
            approve: std::mem::take(&mut entry.approve),
            timeout: entry.timeout,
            instructions: entry.instructions,
            roots: std::mem::take(&mut entry.roots),
        };
        if let Some(spec) = entry.into_spec(&name) {
            servers.push((name, spec, policy));
        }
    }
    Ok(servers)
}

impl ConfigEntry {
    /// The server this entry describes, or `None` (logged) when it cannot be used.
    fn into_spec(self, name: &str) -> Option<ServerSpec> {
        if let Some(command) = self.command.filter(|c| !c.trim().is_empty()) {
            return Some(ServerSpec::Stdio(ServerCommand {
                command,
                args: self.args,
                env: self.env,
                cwd: self.cwd,
            }));
        }
        let Some(url) = self.url.filter(|u| !u.trim().is_empty()) else {
            log::warn!("mcp {name}: left out: it has neither a \"command\" nor a \"url\"");
            return None;
        };
        if self.kind.as_deref() == Some("sse") {
            log::warn!(
                "mcp {name}: left out: it uses the old HTTP+SSE transport (\"type\": \"sse\"); \
                 sparky speaks Streamable HTTP (drop \"type\" if the server offers it)"
            );
            return None;
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            log::warn!("mcp {name}: left out: its url {url:?} is not http:// or https://");
            return None;
        }
        Some(ServerSpec::Http(HttpEndpoint {
            url,
            headers: self.headers,
            oauth: self.oauth,
            auth: Authorizer::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_config_format_is_read() {
        let servers = parse_config(
            r#"{"mcpServers": {
                "files": {"command": "npx", "args": ["-y", "server-files", "/tmp"],
                          "env": {"A": "1"}},
                "plain": {"command": "plain-server"},
                "remote": {"url": "https://example.com/mcp",
                           "headers": {"Authorization": "Bearer secret"}},
                "typed": {"type": "http", "url": "http://127.0.0.1:1/mcp"},
                "old": {"type": "sse", "url": "https://example.com/sse"},
                "ftp": {"url": "ftp://example.com/"},
                "empty": {},
                "off": {"command": "x", "disabled": true}
            }}"#,
        )
        .unwrap();
        let names: Vec<&str> = servers.iter().map(|(name, ..)| name.as_str()).collect();
        assert_eq!(names, ["files", "plain", "remote", "typed"]);
        assert_eq!(
            servers[0].1,
            ServerSpec::Stdio(ServerCommand {
                command: "npx".into(),
                args: vec!["-y".into(), "server-files".into(), "/tmp".into()],
                env: BTreeMap::from([("A".into(), "1".into())]),
                cwd: None,
            })
        );
        assert!(matches!(&servers[1].1, ServerSpec::Stdio(c) if c.args.is_empty()));
        assert_eq!(servers[0].2, ServerPolicy::default());
        let ServerSpec::Http(remote) = &servers[2].1 else {
            panic!("remote is not an HTTP server: {:?}", servers[2].1);
        };
        assert_eq!(remote.url, "https://example.com/mcp");
        assert_eq!(remote.headers["Authorization"], "Bearer secret");
        // The token never reaches a log line through Debug.
        assert!(!format!("{remote:?}").contains("secret"));
        let rooted = parse_config(
            r#"{"mcpServers": {"n": {"command": "n", "roots": ["file:///srv/notes",
                {"uri": "file:///srv/docs", "name": "docs"}]}}}"#,
        )
        .unwrap();
        assert_eq!(
            rooted[0].2.roots,
            [
                Root {
                    uri: "file:///srv/notes".into(),
                    name: None
                },
                Root {
                    uri: "file:///srv/docs".into(),
                    name: Some("docs".into())
                }
            ]
        );
        assert!(parse_config("{}").is_err());
        assert!(parse_config(r#"{"mcpServers": {"a": {"command": 3}}}"#).is_err());
        assert!(parse_config("not json").is_err());
    }

    #[test]
    fn approve_and_timeout_are_read_per_server() {
        let servers = parse_config(
            r#"{"mcpServers": {
                "a": {"command": "a", "approve": "never", "timeout": 5},
                "b": {"command": "b", "approve": ["write"], "timeout": "2m"},
                "c": {"command": "c", "approve": "always"}
            }}"#,
        )
        .unwrap();
        let policies: Vec<&ServerPolicy> = servers.iter().map(|(.., policy)| policy).collect();
        assert_eq!(policies[0].approve, Approve::Never);
        assert_eq!(policies[0].timeout.0, std::time::Duration::from_secs(5));
        assert_eq!(
            policies[1].approve,
            Approve::Tools(["write".to_owned()].into())
        );
        assert_eq!(policies[1].timeout.0, std::time::Duration::from_secs(120));
        assert_eq!(policies[2].approve, Approve::Always);
        assert_eq!(policies[2].timeout, CallTimeout::default());
        assert!(policies.iter().all(|policy| policy.instructions));
        let bad = parse_config(r#"{"mcpServers": {"a": {"command": "a", "approve": "maybe"}}}"#);
        assert!(bad.unwrap_err().to_string().contains("approve"));
        assert!(parse_config(r#"{"mcpServers": {"a": {"command": "a", "timeout": 0}}}"#).is_err());
    }

    #[test]
    fn instructions_are_on_unless_an_entry_turns_them_off() {
        let servers = parse_config(
            r#"{"mcpServers": {
                "quiet": {"command": "q", "instructions": false},
                "plain": {"url": "http://127.0.0.1:1/mcp"},
                "loud": {"command": "l", "instructions": true}
            }}"#,
        )
        .unwrap();
        let on: Vec<(&str, bool)> = servers
            .iter()
            .map(|(name, _, policy)| (name.as_str(), policy.instructions))
            .collect();
        assert_eq!(on, [("loud", true), ("plain", true), ("quiet", false)]);
        assert!(
            parse_config(r#"{"mcpServers": {"a": {"command": "a", "instructions": "no"}}}"#)
                .is_err()
        );
    }
}
