//! `sparky user add|list|remove`: user accounts, managed from the shell against the same store
//! as the server, while it runs. A SQLite store is opened beside the server (no directory lock:
//! SQLite orders the few writes), a PostgreSQL one is connected to.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use sparky::common::password;
use sparky::net::accounts::check_name;
use sparky::store::{AccountStore, PostgresStore, SqliteStore};

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
    /// List the accounts.
    List,
    /// Remove an account, its sign-ins and its tokens: they stop working at once.
    Remove {
        /// The user's name.
        name: String,
    },
}

/// Runs `command` against the store of `dir`, or the PostgreSQL database `store` when given.
pub fn run(command: UserCommand, dir: &Path, store: Option<String>) -> ExitCode {
    let opened: sparky::common::error::Result<Arc<dyn AccountStore>> = match &store {
        Some(url) => PostgresStore::connect(url, 1).map(|s| Arc::new(s) as Arc<dyn AccountStore>),
        None => SqliteStore::open_beside(dir).map(|s| Arc::new(s) as Arc<dyn AccountStore>),
    };
    let accounts = match opened {
        Ok(accounts) => accounts,
        Err(e) => {
            eprintln!("sparky: user: {e}");
            return ExitCode::FAILURE;
        }
    };
    match execute(command, accounts.as_ref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("sparky: user: {why}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: UserCommand, accounts: &dyn AccountStore) -> Result<(), String> {
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
                    "{}\t{}\t{} tokens",
                    summary.user.name,
                    if summary.user.admin { "admin" } else { "user" },
                    summary.tokens
                );
            }
            Ok(())
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
