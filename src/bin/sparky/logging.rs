//! Logging: simplelog to stderr (stdout carries only the `listening on` line), colour only on
//! a terminal, and every token taken out of every line by the library's `Redactor`.

use std::io::IsTerminal;

use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};
use sparky::common::redact::Redactor;

/// Sends logs at `level` and above to stderr, with each of `tokens` replaced by `[redacted]`.
pub fn init(level: LevelFilter, tokens: &[String]) {
    let log_config = ConfigBuilder::new()
        .set_thread_level(LevelFilter::Off)
        .build();
    // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org): escape
    // codes in a file or in journald are noise.
    let colour = if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let terminal = TermLogger::new(level, log_config, TerminalMode::Stderr, colour);
    let logger = Redactor::new(terminal, tokens.iter().cloned());
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(level);
    }
}
