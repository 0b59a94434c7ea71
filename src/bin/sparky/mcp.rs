//! `sparky mcp login NAME`: signs in to an OAuth-protected MCP `url` server of the
//! `--mcp-config` file from a headless install: prints the authorization URL, waits (bounded)
//! for the browser's redirect to a loopback listener on 127.0.0.1, and keeps the grant in the
//! same store as the server (a SQLite store opened beside a running server, or PostgreSQL),
//! where a running server finds it on its next request.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use sparky::tools::mcp::{self, OAuthOptions};

use crate::beside;

/// What `sparky mcp` does.
#[derive(Debug, clap::Subcommand)]
pub enum McpCommand {
    /// Sign in to an OAuth-protected `url` server: prints the URL to open, then waits for
    /// the browser to come back to a listener on 127.0.0.1.
    Login {
        /// The server's name in the --mcp-config file.
        name: String,
        /// How long to wait for the sign-in (`90s`, `5m`).
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// Runs `command` with the MCP config at `config` and the store of `dir` (or the PostgreSQL
/// database `store`).
pub fn run(
    command: McpCommand,
    config: Option<&Path>,
    dir: &Path,
    store: Option<&str>,
) -> ExitCode {
    let Some(config) = config else {
        eprintln!("sparky: mcp: give the server's --mcp-config");
        return ExitCode::FAILURE;
    };
    let grants = match beside::open(dir, store) {
        Ok(opened) => opened.mcp_auth,
        Err(e) => {
            eprintln!("sparky: mcp: {e}");
            return ExitCode::FAILURE;
        }
    };
    let McpCommand::Login { name, timeout } = command;
    let options = OAuthOptions {
        store: Some(grants),
        ..OAuthOptions::default()
    };
    let signed_in = mcp::login(config, &name, options, timeout, |url| {
        println!("Open this URL to sign in to {name}:\n{url}");
    });
    match signed_in {
        Ok(()) => {
            println!("Signed in to {name}.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sparky: mcp: {e}");
            ExitCode::FAILURE
        }
    }
}
