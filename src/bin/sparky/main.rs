//! The `sparky` binary: parses the flags, sets up logging, and runs the server, `sparky check`,
//! `sparky chat`, `sparky backup` or `sparky migrate-store`. The settings and their flags are the library's `Config`; the
//! binary adds only its own few. Each other job has a file here: what the flags point to
//! (`inputs.rs`), logging (`logging.rs`), the open-file limit (`limits.rs`), the model backend
//! and its probe (`model.rs`), `migrate-store` (`migrate.rs`), `backup` (`backup.rs`), the store of the
//! subcommands that work beside a running server (`beside.rs`), `chat`
//! (`chat.rs`, over the library's client), `check` (`check.rs`) and the hidden `extract-text`,
//! the child process that reads a document's text (`extract.rs`).

mod backup;
mod beside;
mod chat;
mod check;
mod extract;
mod inputs;
mod limits;
mod logging;
mod mcp;
mod migrate;
mod model;
mod start_error;
mod user;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use simplelog::LevelFilter;
use sparky::common::config::Config;

/// A self-hosted chat-agent server: WebSocket chat with a thinking, tool-using bot.
#[derive(Debug, Parser)]
#[command(name = "sparky", version, about)]
struct Cli {
    // Every setting of the server, each with its flag.
    #[command(flatten)]
    config: Config,
    /// Read the system prompt from FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "system_prompt")]
    system_prompt_file: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: LevelFilter,
    /// A file with one token per line (blank lines and lines starting with # are ignored).
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What `sparky` does besides serving.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Chat with a Sparky server from this terminal.
    ///
    /// Type a line to send it; answers stream in. Ctrl-C stops an answer, a second Ctrl-C (or
    /// /quit) quits. /list shows your conversations, /open N opens one, /new starts another;
    /// /history shows the turns as a tree, /edit N text and /regen N start a branch beside
    /// turn N, /switch N follows another. Lines that start with another / go to the server
    /// (/help lists the built-in model's commands). The conversation's id and the last event
    /// seen are kept in the state file: a dropped connection or a new run resumes it, missing
    /// nothing, and a message cut off by a dropped connection is sent again and runs once.
    Chat {
        /// The server's WebSocket URL (ws:// only: the client has no TLS).
        #[arg(value_name = "URL", default_value = sparky::client::DEFAULT_URL)]
        url: String,
        /// The file that keeps the conversation's id and the last event seen between runs.
        #[arg(long, value_name = "FILE", default_value = sparky::client::DEFAULT_STATE_FILE)]
        state: PathBuf,
        /// The token, for a server that requires one (default: the SPARKY_TOKEN environment
        /// variable, which keeps it out of ps).
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
        /// Start a new conversation instead of resuming the state file's.
        #[arg(long)]
        new: bool,
    },
    /// Copy a SQLite data directory into an empty PostgreSQL database.
    ///
    /// Copies the conversations, events, messages, notes and the knowledge graph, in one
    /// transaction. Stop the server that uses the directory first.
    MigrateStore {
        /// The SQLite data directory (--data-dir of the server that wrote it).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The PostgreSQL database: postgres://USER[:PASSWORD]@HOST[:PORT]/DB (default: the
        /// SPARKY_DATABASE_URL environment variable).
        #[arg(long, value_name = "URL")]
        to: Option<String>,
    },
    /// Copy a running server's SQLite store to FILE, consistently, without stopping it.
    ///
    /// Uses SQLite's online backup API: the copy holds every event committed before it began,
    /// turns go on meanwhile, and FILE is one self-contained, checked database. To restore,
    /// stop the server, delete sparky.db-wal and sparky.db-shm in the data directory, and put
    /// FILE there as sparky.db. A PostgreSQL store is refused: back it up with pg_dump.
    Backup {
        /// The new file to write (an existing file is never overwritten).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The data directory of the server (its --data-dir) [default: sparky-data].
        #[arg(long = "data-dir", value_name = "DIR")]
        dir: Option<PathBuf>,
        /// A PostgreSQL store (or the SPARKY_DATABASE_URL environment variable, when no
        /// --data-dir is given): refused, with how to back it up with pg_dump.
        #[arg(long = "store", value_name = "URL")]
        store: Option<String>,
    },
    /// Manage user accounts (add, list, limit, remove), also while the server runs.
    User {
        #[command(subcommand)]
        command: user::UserCommand,
        #[command(flatten)]
        place: beside::Place,
    },
    /// Sign in to OAuth-protected MCP servers of the --mcp-config file (`mcp login NAME`).
    Mcp {
        #[command(subcommand)]
        command: mcp::McpCommand,
        #[command(flatten)]
        place: beside::Place,
    },
    /// Read a document's text: its bytes on stdin, its text on stdout as JSON lines. The
    /// server runs it, one process per document, held to a memory and a CPU limit.
    #[command(hide = true)]
    ExtractText {
        /// The document's type: application/pdf, text/html, or a Word document's.
        #[arg(long = "type", value_name = "TYPE")]
        content_type: String,
        /// The most memory (address space) the process may use, in MiB.
        #[arg(long, value_name = "MIB", default_value_t = 512)]
        memory_mib: u64,
        /// The most CPU time it may use, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        cpu_seconds: u64,
    },
}

/// The binary's own flags, each shown in `--help` beside the setting it goes with, as
/// `(flag, setting)`: the flag takes the setting's place, and clap lists the flags of one place
/// by name, so `--system-prompt-file` follows `--system-prompt`, `--log-level` comes just
/// before `--max-connections`, and `--auth-token-file` follows `--auth-token`.
const SHOWN_BESIDE: [(&str, &str); 3] = [
    ("system_prompt_file", "system_prompt"),
    ("log_level", "max_connections"),
    ("auth_token_file", "auth_tokens"),
];

/// What `sparky check` does, as `--help` lists it.
const CHECK_ABOUT: &str =
    "Check what a start depends on, with the server's flags, instead of serving";

/// What `sparky help check` adds below [`CHECK_ABOUT`].
const CHECK_LONG_ABOUT: &str = "Check what a start depends on, with the server's flags, instead \
    of serving.\n\nOne line each for the data directory (or with --store the database), the \
    tokens, the open-file limit, the model server, the embedding server (one word embedded) \
    and each MCP server. Exits 1 at the first failure; a data directory that a running server \
    holds is a note, and the rest is checked.";

fn main() -> ExitCode {
    // `sparky check [FLAGS]`: the same flags, checked instead of run.
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    let checking = argv.get(1).is_some_and(|first| first == "check");
    if checking {
        argv.remove(1);
    }
    let (mut cli, max_connections_given) = if checking {
        parse(check_command(), argv)
    } else {
        parse(command(), argv)
    };
    match cli.command.take() {
        Some(Command::Chat {
            url,
            state,
            token,
            new,
        }) => {
            // The environment keeps the token out of `ps`.
            let token = token.or_else(|| {
                std::env::var("SPARKY_TOKEN")
                    .ok()
                    .filter(|token| !token.trim().is_empty())
            });
            return chat::run(sparky::client::ChatOptions {
                url,
                state_file: state,
                token,
                new,
            });
        }
        Some(Command::MigrateStore { from, to }) => {
            logging::init(cli.log_level, &[]);
            return migrate::run(&from, to, cli.config.store_pool);
        }
        Some(Command::Backup { file, dir, store }) => {
            let (dir, store) = beside(&cli, dir, store);
            return backup::run(&file, &dir, store);
        }
        Some(Command::User { command, place }) => {
            let (dir, store) = beside(&cli, place.dir, place.store);
            return user::run(command, &dir, store.as_deref());
        }
        Some(Command::Mcp { command, place }) => {
            let (dir, store) = beside(&cli, place.dir, place.store);
            return mcp::run(
                command,
                cli.config.mcp_config.as_deref(),
                &dir,
                store.as_deref(),
            );
        }
        Some(Command::ExtractText {
            content_type,
            memory_mib,
            cpu_seconds,
        }) => return extract::run(&content_type, memory_mib, cpu_seconds),
        None => {}
    }
    if let Err(e) = inputs::choose_store(&mut cli.config) {
        eprintln!("sparky: {e}");
        return ExitCode::FAILURE;
    }
    if checking {
        return check(cli, max_connections_given);
    }
    run(cli, max_connections_given)
}

/// The command line, read by `command`, and whether `--max-connections` was on it: the
/// open-file limit may lower the default, never a value the operator gave. Exits with clap's
/// message when the flags are wrong, and after `--help` or `--version`.
fn parse(mut command: clap::Command, argv: Vec<OsString>) -> (Cli, bool) {
    let matches = command
        .try_get_matches_from_mut(argv)
        .unwrap_or_else(|e| e.exit());
    if matches.subcommand_name() == Some("check") {
        // `check` is listed so that `--help` and `sparky help check` show it, but it is read
        // only as the first word, before its flags: flags given before it would be lost.
        command
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "check comes first, before its flags: sparky check [FLAGS]",
            )
            .exit();
    }
    let max_connections_given =
        matches.value_source("max_connections") == Some(ValueSource::CommandLine);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command).exit());
    (cli, max_connections_given)
}

/// `Cli`'s flags, with the binary's own placed as [`SHOWN_BESIDE`] says, and `check` listed
/// among the subcommands.
fn command() -> clap::Command {
    server_flags().subcommand(check_flags())
}

/// The command that reads `sparky check`'s flags (what follows `check` on the command line):
/// the server's, with its own name and help.
fn check_command() -> clap::Command {
    check_flags()
        .bin_name("sparky check")
        .display_name("sparky")
}

/// `check` with the server's flags, as `--help` lists it.
fn check_flags() -> clap::Command {
    let server = server_flags();
    clap::Command::new("check")
        .version(env!("CARGO_PKG_VERSION"))
        .about(CHECK_ABOUT)
        .long_about(CHECK_LONG_ABOUT)
        .args(server.get_arguments().cloned())
        .groups(server.get_groups().cloned())
}

/// `Cli`'s flags, with the binary's own placed as [`SHOWN_BESIDE`] says.
fn server_flags() -> clap::Command {
    let mut command = Cli::command();
    for (flag, setting) in SHOWN_BESIDE {
        let place = command
            .get_arguments()
            .find(|arg| arg.get_id() == setting)
            .map(clap::Arg::get_display_order);
        command = command.mut_arg(flag, |arg| arg.display_order(place));
    }
    command
}

/// `sparky check`: one line per thing a start depends on; exit 1 at the first hard failure.
fn check(cli: Cli, max_connections_given: bool) -> ExitCode {
    let Cli {
        mut config,
        log_level,
        auth_token_file,
        ..
    } = cli;
    // Quiet unless asked: the lines of the check are the output.
    logging::init(log_level.min(LevelFilter::Error), &config.auth_tokens);
    let tokens = inputs::add_tokens(&mut config, auth_token_file.as_deref())
        .map(|()| config.auth_tokens.len());
    let model = model::build(&config);
    let files = (limits::hard_open_file_limit(), max_connections_given);
    if check::run(&config, model, tokens, files, &mut std::io::stdout()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Serves until SIGINT or SIGTERM, then shuts down gracefully; a second signal stops it at
/// once.
fn run(cli: Cli, max_connections_given: bool) -> ExitCode {
    let Cli {
        mut config,
        log_level,
        auth_token_file,
        system_prompt_file,
        ..
    } = cli;
    if let Err(e) = inputs::add_tokens(&mut config, auth_token_file.as_deref()) {
        eprintln!("sparky: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(path) = system_prompt_file {
        match inputs::read_system_prompt(&path) {
            Ok(text) => config.system_prompt = Some(text),
            Err(e) => {
                eprintln!("sparky: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Once the tokens are known, so that the logger can keep them out.
    logging::init(log_level, &config.auth_tokens);
    if config.auth_tokens.is_empty() && !config.addr.ip().is_loopback() {
        log::warn!(
            "server: listening on {} with no --auth-token: anyone who can reach this address can \
             chat and use the tools",
            config.addr
        );
    }
    limits::raise_open_file_limit(&mut config, max_connections_given);
    let grace = config.shutdown_grace;
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("sparky: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };

    let listener = match sparky::bind(config.addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("sparky: cannot listen on {}: {e}", config.addr);
            return ExitCode::FAILURE;
        }
    };
    let model = match model::build(&config) {
        Ok(model) => model,
        Err(e) => {
            eprintln!("sparky: {e}");
            return ExitCode::FAILURE;
        }
    };
    let probed = model.clone();
    let handle = match sparky::net::server::spawn_with(listener, config, model) {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("sparky: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on http://{}", handle.addr());
    model::watch(probed);
    if handle.addr().ip().is_unspecified()
        && let Ok(system) = nix::sys::utsname::uname()
    {
        let port = handle.addr().port();
        let host = system.nodename().to_string_lossy();
        log::info!(
            "server: open http://127.0.0.1:{port}/ on this machine, or http://{host}:{port}/ \
             from another (with --allowed-host {host})"
        );
    }
    let _ = std::io::stdout().flush();
    if let Some(signal) = signals.forever().next() {
        log::info!(
            "server: signal {signal}; shutting down, letting turns in flight finish for up to \
             {grace:?} (press Ctrl-C again to stop at once)"
        );
    }
    // A second SIGINT or SIGTERM during the grace period ends it at once.
    let hurry = Arc::new(AtomicBool::new(false));
    let second = hurry.clone();
    let handle_signals = signals.handle();
    // Without this thread a second signal would only wait for the grace period to end.
    let watcher = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                log::warn!("server: signal {signal} again; stopping now");
                second.store(true, Ordering::SeqCst);
            }
        });
    handle.shutdown_gracefully_unless(grace, &hurry);
    handle_signals.close();
    if let Ok(watcher) = watcher {
        let _ = watcher.join();
    }
    ExitCode::SUCCESS
}

/// Sets up a subcommand that works beside the server (`backup`, `user`, `mcp`): its logging,
/// and the data directory and PostgreSQL URL it uses (see [`beside::chosen`]).
fn beside(cli: &Cli, dir: Option<PathBuf>, store: Option<String>) -> (PathBuf, Option<String>) {
    logging::init(cli.log_level, &[]);
    beside::chosen(
        dir,
        store,
        cli.config.database_url.clone(),
        cli.config.data_dir.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_are_consistent() {
        command().debug_assert();
        check_command().debug_assert();
    }

    #[test]
    fn the_binarys_flags_show_beside_their_settings() {
        let help = command().render_long_help().to_string();
        let at = |flag: &str| {
            help.find(&format!("  {flag} "))
                .unwrap_or_else(|| panic!("{flag} not in --help"))
        };
        assert!(at("--system-prompt") < at("--system-prompt-file"));
        assert!(at("--system-prompt-file") < at("--model"));
        assert!(at("--retention") < at("--log-level"));
        assert!(at("--log-level") < at("--max-connections"));
        assert!(at("--auth-token") < at("--auth-token-file"));
        assert!(at("--auth-token-file") < at("--allowed-origin"));
    }
}
