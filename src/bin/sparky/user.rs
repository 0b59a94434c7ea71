//! `sparky user add|list|limit|remove`: user accounts and their daily limits, managed from the
//! shell against the same store as the server, while it runs. The store is
//! opened as `beside.rs` says.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use sparky::common::password;
use sparky::net::accounts::check_name;
use sparky::store::{AccountStore, LimitChange, UsageStore};

use crate::beside;

/// What `sparky user` does.
#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add an account; prints a new random password once, unless --password-stdin.
    Add {
        /// The user's name (letters, digits, `.`, `_`, `-`, `@`; at most 64).
        name: String,
        /// The user manages accounts (an admin still never sees others' conversations).
        #[arg(long)]
        admin: bool,
        /// Read the password from standard input (its first line) instead of making one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the accounts, with their API tokens and their own daily limits.
    List,
    /// Set a user's own daily limits (unset ones are kept); `default` goes back to the
    /// server's --daily-turns / --daily-tokens, 0 is no limit.
    Limit {
        /// The user's name.
        name: String,
        /// Turns a day (UTC): a number, or `default`.
        #[arg(long, value_name = "N|default", value_parser = parse_limit)]
        daily_turns: Option<Setting>,
        /// Model tokens a day (UTC): a number, or `default`.
        #[arg(long, value_name = "N|default", value_parser = parse_limit)]
        daily_tokens: Option<Setting>,
    },
    /// Remove an account, its sign-ins and its tokens: they stop working at once.
    Remove {
        /// The user's name.
        name: String,
    },
}

/// A limit given on the command line: a number, or `None` for the server's default.
#[derive(Clone, Copy, Debug)]
pub struct Setting(Option<u64>);

/// `N` or `default`.
fn parse_limit(text: &str) -> Result<Setting, String> {
    match text.trim() {
        "default" => Ok(Setting(None)),
        number => number
            .parse()
            .map(|n| Setting(Some(n)))
            .map_err(|_| format!("{text:?} is neither a whole number nor `default`")),
    }
}

/// A user's own limit as `sparky user list` shows it.
fn shown(limit: Option<u64>) -> String {
    match limit {
        None => "default".to_owned(),
        Some(0) => "unlimited".to_owned(),
        Some(n) => n.to_string(),
    }
}

/// Runs `command` against the store of `dir`, or the PostgreSQL database `store` when given.
pub fn run(command: UserCommand, dir: &Path, store: Option<&str>) -> ExitCode {
    let opened = match beside::open(dir, store) {
        Ok(opened) => opened,
        Err(e) => {
            eprintln!("sparky: user: {e}");
            return ExitCode::FAILURE;
        }
    };
    match execute(command, opened.accounts.as_ref(), opened.usage.as_ref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("sparky: user: {why}");
            ExitCode::FAILURE
        }
    }
}

fn execute(
    command: UserCommand,
    accounts: &dyn AccountStore,
    usage: &dyn UsageStore,
) -> Result<(), String> {
    match command {
        UserCommand::Add {
            name,
            admin,
            password_stdin,
        } => {
            check_name(&name)?;
            let (password, made) = if password_stdin {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
                let line = text.lines().next().unwrap_or("").to_owned();
                if line.is_empty() {
                    return Err("the password on stdin is empty".into());
                }
                (line, false)
            } else {
                (password::secret(15).map_err(|e| e.to_string())?, true)
            };
            let hash = password::hash(&password).map_err(|e| e.to_string())?;
            match accounts
                .add_user(&name, &hash, admin)
                .map_err(|e| e.to_string())?
            {
                None => Err(format!("there is already a user named {name}")),
                Some(user) => {
                    let role = if user.admin { "admin" } else { "user" };
                    if made {
                        println!("added {role} {name}; password (shown once): {password}");
                    } else {
                        println!("added {role} {name}");
                    }
                    Ok(())
                }
            }
        }
        UserCommand::List => {
            let users = accounts.users().map_err(|e| e.to_string())?;
            if users.is_empty() {
                println!("no users");
            }
            for summary in users {
                println!(
                    "{}\t{}\t{} tokens\tturns a day: {}\tmodel tokens a day: {}",
                    summary.user.name,
                    if summary.user.admin { "admin" } else { "user" },
                    summary.tokens,
                    shown(summary.limits.turns),
                    shown(summary.limits.tokens),
                );
            }
            Ok(())
        }
        UserCommand::Limit {
            name,
            daily_turns,
            daily_tokens,
        } => {
            let change = LimitChange {
                turns: daily_turns.map(|setting| setting.0),
                tokens: daily_tokens.map(|setting| setting.0),
            };
            if usage.set_limits(&name, change).map_err(|e| e.to_string())? {
                let users = accounts.users().map_err(|e| e.to_string())?;
                if let Some(summary) = users.iter().find(|summary| summary.user.name == name) {
                    println!(
                        "{name}: turns a day: {}, model tokens a day: {}",
                        shown(summary.limits.turns),
                        shown(summary.limits.tokens),
                    );
                }
                Ok(())
            } else {
                Err(format!("there is no user named {name}"))
            }
        }
        UserCommand::Remove { name } => {
            if accounts.remove_user(&name).map_err(|e| e.to_string())? {
                println!("removed {name}");
                Ok(())
            } else {
                Err(format!("there is no user named {name}"))
            }
        }
    }
}
