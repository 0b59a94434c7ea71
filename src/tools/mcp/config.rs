//! The `--mcp-config` file: the usual `{"mcpServers": {"name": {"command", "args", "env"}}}`
//! format, read into one [`ServerCommand`] per stdio server, with its [`ServerPolicy`]
//! (`"approve"`, `"timeout"`). Plain data; depends on nothing outside `tools/mcp/`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::policy::{Approve, CallTimeout, ServerPolicy};

/// The usual MCP config file: `{"mcpServers": {"name": {"command", "args", "env"}}}`.
#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(rename = "mcpServers")]
    servers: BTreeMap<String, ConfigEntry>,
}

/// One entry of `mcpServers`. Entries for other transports (a `url` instead of a `command`)
/// are skipped with a warning: Sparky speaks stdio only.
#[derive(Debug, Deserialize)]
struct ConfigEntry {
    command: Option<String>,
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
}

/// How to start one server.
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

/// One configured server: its name, how to start it, and how its tools are used.
pub(super) type ServerEntry = (String, ServerCommand, ServerPolicy);

/// Reads a config file's text into the servers to start, in name order.
pub(super) fn parse_config(text: &str) -> Result<Vec<ServerEntry>, serde_json::Error> {
    let file: ConfigFile = serde_json::from_str(text)?;
    let mut servers = Vec::new();
    for (name, entry) in file.servers {
        if entry.disabled {
            log::info!("mcp {name}: disabled in the config");
            continue;
        }
        let Some(command) = entry.command.filter(|c| !c.trim().is_empty()) else {
            log::warn!("mcp {name}: left out: it has no \"command\" (only stdio servers work)");
            continue;
        };
        servers.push((
            name,
            ServerCommand {
                command,
                args: entry.args,
                env: entry.env,
                cwd: entry.cwd,
            },
            ServerPolicy {
                approve: entry.approve,
                timeout: entry.timeout,
            },
        ));
    }
    Ok(servers)
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
                "remote": {"url": "https://example.com/mcp"},
                "off": {"command": "x", "disabled": true}
            }}"#,
        )
        .unwrap();
        let names: Vec<&str> = servers.iter().map(|(name, ..)| name.as_str()).collect();
        assert_eq!(names, ["files", "plain"]);
        assert_eq!(
            servers[0].1,
            ServerCommand {
                command: "npx".into(),
                args: vec!["-y".into(), "server-files".into(), "/tmp".into()],
                env: BTreeMap::from([("A".into(), "1".into())]),
                cwd: None,
            }
        );
        assert!(servers[1].1.args.is_empty());
        assert_eq!(servers[0].2, ServerPolicy::default());
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
        let bad = parse_config(r#"{"mcpServers": {"a": {"command": "a", "approve": "maybe"}}}"#);
        assert!(bad.unwrap_err().to_string().contains("approve"));
        assert!(parse_config(r#"{"mcpServers": {"a": {"command": "a", "timeout": 0}}}"#).is_err());
    }
}
