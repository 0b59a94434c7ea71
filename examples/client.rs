//! The terminal client as a program of your own: the library's client (`sparky::client`, what
//! `sparky chat` runs) on this terminal. `sparky chat --help` describes it.
//!
//! ```text
//! cargo run --example client -- [--url ws://127.0.0.1:8000/ws] [--state FILE] [--token T] [--new]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sparky::client::{ChatOptions, DEFAULT_STATE_FILE, DEFAULT_URL, Terminal};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "Interactive terminal client for the Sparky chat server")]
struct Args {
    /// WebSocket URL of the server (ws:// only: this client has no TLS).
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    /// File that keeps the session id and the last seen seq between runs.
    #[arg(long, default_value = DEFAULT_STATE_FILE)]
    state: PathBuf,
    /// Credential for a server that requires one.
    #[arg(long)]
    token: Option<String>,
    /// Start a new session instead of resuming the one in the state file.
    #[arg(long)]
    new: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = ChatOptions {
        url: args.url,
        state_file: args.state,
        token: args.token,
        new: args.new,
    };
    match sparky::client::run(options, Terminal::stdio()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sparky client: {e}");
            ExitCode::FAILURE
        }
    }
}
