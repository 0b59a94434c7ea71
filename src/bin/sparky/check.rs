//! `sparky check`: looks at each thing a start depends on, with the same flags, and prints one
//! line per check. It stops at the first hard failure; a data directory that a running server
//! holds is a note, not a failure. Depends on `config`, `model` (with `model::embed`), `store`
//! and `tools`.

use std::io::Write;
use std::sync::Arc;

use sparky::common::config::{Config, connections_for};
use sparky::model::ModelBackend;
use sparky::model::embed::{Embed, EmbedOptions, RemoteEmbedder};
use sparky::store::{POSTGRES_SCHEMA_VERSION, PostgresStore, SCHEMA_VERSION, SqliteStore};
use sparky::tools::mcp;

use crate::beside;
use crate::start_error::StartError;

/// One check's outcome.
enum Outcome {
    /// Fine.
    Ok(String),
    /// Worth knowing; the server would start.
    Warn(String),
    /// Not checked, for a reason that is no failure (a running server holds the data).
    Note(String),
    /// The server would not start, or would not work.
    Fail(String),
}

/// Runs every check for `config` and writes a line for each to `out`. `model` is what building
/// the model backend gave, `tokens` what reading the tokens gave (their count, or why not),
/// `files` the open-file limit and whether `--max-connections` was given. True when nothing
/// failed.
pub fn run(
    config: &Config,
    model: Result<Arc<dyn ModelBackend>, StartError>,
    tokens: Result<usize, StartError>,
    files: (u64, bool),
    out: &mut dyn Write,
) -> bool {
    let mut report = |name: &str, outcomes: Vec<Outcome>| {
        for outcome in outcomes {
            let (mark, text, failed) = match outcome {
                Outcome::Ok(text) => ("ok  ", text, false),
                Outcome::Warn(text) => ("warn", text, false),
                Outcome::Note(text) => ("note", text, false),
                Outcome::Fail(text) => ("FAIL", text, true),
            };
            let _ = writeln!(out, "{mark} {name:<6} {text}");
            if failed {
                return false;
            }
        }
        true
    };
    // In order, each only if the ones before passed.
    report("data", vec![data_dir(config)])
        && report("tokens", vec![token_outcome(config, tokens)])
        && report("users", vec![accounts(config)])
        && report("files", vec![open_file_limit(config, files)])
        && report("model", vec![model_outcome(model)])
        && report("embed", vec![embeddings(config)])
        && report("mcp", mcp_servers(config))
}

fn data_dir(config: &Config) -> Outcome {
    if config.in_memory {
        return Outcome::Ok("in memory: nothing is written".into());
    }
    let found = match &config.database_url {
        Some(url) => PostgresStore::inspect(url),
        // A check beside the running server: its store is the server's to open.
        None if SqliteStore::in_use(&config.data_dir) => {
            return Outcome::Note(format!(
                "{} is in use by a running sparky: not opened; checking the rest",
                config.data_dir.display()
            ));
        }
        None => SqliteStore::inspect(&config.data_dir),
    };
    match found {
        Ok(found) => Outcome::Ok(found),
        Err(e) => Outcome::Fail(e.to_string()),
    }
}

fn token_outcome(config: &Config, tokens: Result<usize, StartError>) -> Outcome {
    match tokens {
        Ok(0) if config.addr.ip().is_loopback() => Outcome::Ok(
            "no tokens: anyone on this machine may connect, unless user accounts exist".into(),
        ),
        Ok(0) => Outcome::Warn(format!(
            "no tokens, and {} is reachable from elsewhere: anyone who can reach it may connect, \
             unless user accounts exist",
            config.addr
        )),
        Ok(n) => Outcome::Ok(format!("{n} token{}", if n == 1 { "" } else { "s" })),
        Err(e) => Outcome::Fail(e.to_string()),
    }
}

/// The account setup: how many users, how many admins (read only, beside a running server
/// too).
fn accounts(config: &Config) -> Outcome {
    if config.in_memory {
        return Outcome::Ok("in memory: no accounts (add none with sparky user)".into());
    }
    let found = match &config.database_url {
        Some(url) => PostgresStore::inspect_accounts(url),
        None => SqliteStore::inspect_accounts(&config.data_dir),
    };
    match found {
        Ok(None) | Ok(Some((0, _))) => {
            Outcome::Ok("no user accounts (sparky user add NAME --admin makes one)".into())
        }
        Ok(Some((users, 0))) => Outcome::Warn(format!(
            "{users} user account{}, no admin: nobody can manage accounts on the page \
             (sparky user add NAME --admin)",
            if users == 1 { "" } else { "s" }
        )),
        Ok(Some((users, admins))) => Outcome::Ok(format!(
            "{users} user account{}, {admins} admin{}; every client must sign in or present \
             a token",
            if users == 1 { "" } else { "s" },
            if admins == 1 { "" } else { "s" }
        )),
        Err(e) => Outcome::Fail(e.to_string()),
    }
}

fn open_file_limit(config: &Config, (available, explicit): (u64, bool)) -> Outcome {
    let fits = connections_for(available);
    if config.max_connections <= fits {
        Outcome::Ok(format!(
            "open-file limit {available}, enough for --max-connections {}",
            config.max_connections
        ))
    } else if !explicit {
        Outcome::Ok(format!(
            "open-file limit {available}: the server will hold at most {fits} connections"
        ))
    } else {
        Outcome::Warn(format!(
            "open-file limit {available}: {fits} connections fit, not --max-connections {}; \
             raise the limit (ulimit -n, LimitNOFILE=) or lower --max-connections",
            config.max_connections
        ))
    }
}

fn model_outcome(model: Result<Arc<dyn ModelBackend>, StartError>) -> Outcome {
    let model = match model {
        Ok(model) => model,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    match model.probe() {
        None => Outcome::Ok(format!("{}: built in", model.name())),
        Some(Ok(())) => Outcome::Ok(format!(
            "{}: the server answers and serves it",
            model.name()
        )),
        Some(Err(e)) => Outcome::Fail(e.to_string()),
    }
}

/// Semantic memory's embedding server (`--embedding-model`, at `--embedding-url`): one word
/// embedded, as the server will embed facts.
fn embeddings(config: &Config) -> Outcome {
    let Some(options) = EmbedOptions::from_config(config) else {
        return Outcome::Ok("no --embedding-model: facts are found by their words".into());
    };
    let embedder = RemoteEmbedder::new(options);
    match embedder.embed(&["sparky".to_owned()]) {
        Ok(vectors) => Outcome::Ok(format!(
            "{} at {}: embeds, {} dimensions",
            embedder.model(),
            embedder.endpoint(),
            vectors.first().map_or(0, Vec::len)
        )),
        Err(e) => Outcome::Fail(format!("{}: {e}", embedder.model())),
    }
}

fn mcp_servers(config: &Config) -> Vec<Outcome> {
    let Some(path) = &config.mcp_config else {
        return vec![Outcome::Ok("no --mcp-config".into())];
    };
    // OAuth servers' grants are in the store, opened (beside a running server) only when it
    // is there at this build's schema already: the check creates and migrates nothing. (A
    // token about to expire is refreshed, under the store's lease, as by any instance.)
    let current = |text: String, version: i64| text.ends_with(&format!("schema version {version}"));
    let ready = !config.in_memory
        && match &config.database_url {
            Some(url) => {
                PostgresStore::inspect(url).is_ok_and(|text| current(text, POSTGRES_SCHEMA_VERSION))
            }
            None => {
                SqliteStore::in_use(&config.data_dir)
                    || SqliteStore::inspect(&config.data_dir)
                        .is_ok_and(|text| current(text, SCHEMA_VERSION))
            }
        };
    let grants = ready
        .then(|| beside::open(&config.data_dir, config.database_url.as_deref()).ok())
        .flatten()
        .map(|opened| opened.mcp_auth);
    let options = mcp::OAuthOptions {
        store: grants,
        ..mcp::OAuthOptions::default()
    };
    let servers = match mcp::load_with(path, options) {
        Ok(servers) => servers,
        Err(e) => return vec![Outcome::Fail(e.to_string())],
    };
    let auth: std::collections::BTreeMap<String, mcp::AuthState> =
        servers.sign_ins().states().into_iter().collect();
    let mut outcomes: Vec<Outcome> = servers
        .loaded()
        .iter()
        .map(|(name, tools)| {
            let signed_in = match auth.get(name) {
                Some(mcp::AuthState::SignedIn) => ", signed in with OAuth",
                _ => "",
            };
            Outcome::Ok(format!(
                "{name}: started, {tools} tool{}{signed_in}",
                if *tools == 1 { "" } else { "s" }
            ))
        })
        .collect();
    outcomes.extend(
        servers
            .failed()
            .iter()
            .map(|(name, why)| match auth.get(name) {
                Some(mcp::AuthState::NeedsSignIn(reason)) => Outcome::Warn(format!(
                    "{name}: needs a sign-in ({reason}): Connect on the page, or `sparky mcp login \
             {name}`"
                )),
                _ => Outcome::Fail(format!("{name}: {why}")),
            }),
    );
    servers.shutdown();
    outcomes
}
