//! `sparky chat [URL]`: the library's terminal client on this process's terminal.

use std::process::ExitCode;

use sparky::client::{ChatError, ChatOptions, Terminal};

/// Runs the client until the user quits; exit code 2 for a URL it cannot use, 1 when it had to
/// stop (refused credentials, the conversation taken over).
pub fn run(options: ChatOptions) -> ExitCode {
    match sparky::client::run(options, Terminal::stdio()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sparky chat: {e}");
            match e {
                ChatError::Url { .. } => ExitCode::from(2),
                ChatError::Start(_) | ChatError::Ended(_) => ExitCode::FAILURE,
            }
        }
    }
}
