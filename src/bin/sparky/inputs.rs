//! What the flags point to and what the environment adds, read into the `Config` at start:
//! tokens from `--auth-token-file` and `SPARKY_AUTH_TOKENS`, the system prompt from
//! `--system-prompt-file`, and the database URL from `SPARKY_DATABASE_URL`.

use std::path::Path;

use sparky::common::config::{Config, redact_url};

use crate::start_error::{StartError, TokenProblem};

/// The fewest characters a token may have, wherever it is given: a shorter one is a slip (or a
/// guess away), and a one-character token would make log redaction garble every line.
pub const MIN_TOKEN_CHARS: usize = 8;

/// Checks the `--auth-token` values already in `config`, then adds the tokens of `file` and of
/// `SPARKY_AUTH_TOKENS`.
///
/// # Errors
///
/// [`StartError::TokenValue`] for the first `--auth-token` or `SPARKY_AUTH_TOKENS` entry that
/// is empty, ends with a colon or is shorter than [`MIN_TOKEN_CHARS`] (a variable that is set
/// but blank is one empty entry); [`StartError::Read`] when the file cannot be read, and
/// [`StartError::TokenLine`] for the first line of it with an empty token, a token shorter
/// than [`MIN_TOKEN_CHARS`], or a name with nothing after its colon.
pub fn add_tokens(config: &mut Config, file: Option<&Path>) -> Result<(), StartError> {
    for (index, token) in config.auth_tokens.iter().enumerate() {
        value_problem(token).map_err(|problem| StartError::TokenValue {
            origin: "--auth-token",
            entry: index + 1,
            problem,
        })?;
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| StartError::Read {
            flag: "--auth-token-file",
            path: path.to_owned(),
            source,
        })?;
        let lines = text
            .lines()
            .map(str::trim)
            .enumerate()
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        for (index, line) in lines {
            let refuse = |problem| StartError::TokenLine {
                path: path.to_owned(),
                line: index + 1,
                problem,
            };
            // `name:token` names the principal; a bare token (or `:token`, for a token that
            // itself holds a colon) has none.
            let (name, token) = match line.split_once(':') {
                Some(("", "")) => return Err(refuse(TokenProblem::Empty)),
                Some((_, "")) => return Err(refuse(TokenProblem::NameWithoutToken)),
                Some((name, token)) => (name, token),
                None => ("", line),
            };
            token_problem(token).map_err(refuse)?;
            if !name.is_empty() {
                config.token_names.push((token.to_owned(), name.to_owned()));
            }
            config.auth_tokens.push(token.to_owned());
        }
    }
    if let Ok(list) = std::env::var("SPARKY_AUTH_TOKENS") {
        for (index, token) in list.split(',').map(str::trim).enumerate() {
            value_problem(token).map_err(|problem| StartError::TokenValue {
                origin: "SPARKY_AUTH_TOKENS",
                entry: index + 1,
                problem,
            })?;
            config.auth_tokens.push(token.to_owned());
        }
    }
    Ok(())
}

/// What makes `token` (a tokens file's token, after its `name:`) unusable, if anything.
fn token_problem(token: &str) -> Result<(), TokenProblem> {
    if token.trim().chars().all(|c| c == ':') {
        Err(TokenProblem::Empty)
    } else if token.chars().count() < MIN_TOKEN_CHARS {
        Err(TokenProblem::TooShort)
    } else {
        Ok(())
    }
}

/// What makes an `--auth-token` or `SPARKY_AUTH_TOKENS` value unusable, if anything: as
/// [`token_problem`], and a trailing colon, which is what `name:` without its token looks like
/// (told before its length, which is rarely the real slip).
fn value_problem(token: &str) -> Result<(), TokenProblem> {
    let blank = token.trim().chars().all(|c| c == ':');
    if !blank && token.trim_end().ends_with(':') {
        return Err(TokenProblem::TrailingColon);
    }
    token_problem(token)
}

/// The system prompt in `path`, trimmed.
pub fn read_system_prompt(path: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| StartError::Read {
            flag: "--system-prompt-file",
            path: path.to_owned(),
            source,
        })
}

/// Sets the store's URL: `--store`, else `SPARKY_DATABASE_URL`; none with `--in-memory`, which
/// says so when the variable is set.
pub fn choose_store(config: &mut Config) -> Result<(), StartError> {
    let url = database_url(config.database_url.take(), "--store")?;
    if config.in_memory {
        if url.is_some() {
            eprintln!(
                "sparky: --in-memory keeps everything in memory; SPARKY_DATABASE_URL is ignored"
            );
        }
        return Ok(());
    }
    config.database_url = url;
    Ok(())
}

/// The database URL given with a flag, else the one in `SPARKY_DATABASE_URL`; checked to be a
/// PostgreSQL one.
pub fn database_url(flag: Option<String>, name: &str) -> Result<Option<String>, StartError> {
    let url = flag.or_else(|| {
        std::env::var("SPARKY_DATABASE_URL")
            .ok()
            .filter(|url| !url.trim().is_empty())
    });
    match url {
        Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => {
            Err(StartError::Setting(format!(
                "{name} takes a PostgreSQL URL like postgres://USER@HOST[:PORT]/DB, not {}",
                redact_url(&url)
            )))
        }
        url => Ok(url),
    }
}
