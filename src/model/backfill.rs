//! The embedding loop that semantic memory (`conversation/memory.rs`, the graph's nodes) and
//! files (`files/embed.rs`, their chunks) share: one named worker thread asks its store for up
//! to [`BATCH`] texts without a vector by the model, embeds them in one request and stores the
//! vectors. It is woken when something is stored and looks again every minute (rows stored by
//! another instance, a wake-up lost). A failed request (server down, a `500`, a timeout, an
//! answer that is not one vector per text) is tried again after a backoff that doubles from
//! 1 s to 5 min; the rows wait in the store meanwhile, and are found by their words.
//!
//! Depends on: `common::error`, `model::embed`, `model::error`.

use std::fmt;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};

use crate::common::error::{Error, Result};
use crate::model::embed::Embed;
use crate::model::error::ModelError;

/// Texts embedded in one request at most.
pub const BATCH: usize = 32;

/// The first wait after a failed request; each later one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between two failed requests.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How often the worker looks for rows without a vector when nothing woke it.
const IDLE_LOOK: Duration = Duration::from_secs(60);

/// Why a batch was not embedded, as the worker logs it.
#[derive(Debug)]
pub enum BatchError {
    /// The store could not list the rows without a vector, or keep their vectors.
    Store(Error),
    /// The embedding server failed.
    Embed(ModelError),
    /// The embedder returned another number of vectors than it was given texts.
    Count {
        /// Vectors returned.
        vectors: usize,
        /// Texts given.
        texts: usize,
    },
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Store(e) => write!(f, "{e}"),
            BatchError::Embed(e) => write!(f, "{e}"),
            BatchError::Count { vectors, texts } => {
                write!(f, "{vectors} vectors for {texts} texts")
            }
        }
    }
}

/// Embeds the texts of `pending` (`(key, text)`) in one request: each key with its vector.
///
/// # Errors
///
/// [`BatchError::Embed`] when the server fails, [`BatchError::Count`] when it does not answer
/// one vector per text.
pub fn embed_all<K>(
    embedder: &dyn Embed,
    pending: Vec<(K, String)>,
) -> Result<Vec<(K, Vec<f32>)>, BatchError> {
    let texts: Vec<String> = pending.iter().map(|(_, text)| text.clone()).collect();
    let vectors = embedder.embed(&texts).map_err(BatchError::Embed)?;
    if vectors.len() != pending.len() {
        return Err(BatchError::Count {
            vectors: vectors.len(),
            texts: pending.len(),
        });
    }
    Ok(pending
        .into_iter()
        .map(|(key, _)| key)
        .zip(vectors)
        .collect())
}

/// Starts the worker thread `thread` (named by the caller), which runs `embed_some` (one batch: how many rows it
/// embedded) until nothing is left, then waits to be woken; `what` names its rows in the log.
/// The returned sender wakes it (something was stored), and dropping it ends the thread.
///
/// # Errors
///
/// [`Error::Io`] when the thread cannot be started.
pub fn start(
    thread: std::thread::Builder,
    what: &'static str,
    mut embed_some: impl FnMut() -> Result<usize, BatchError> + Send + 'static,
) -> Result<Sender<()>> {
    let (wake, woken) = crossbeam_channel::bounded(1);
    thread
        .spawn(move || {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let wait = match embed_some() {
                    // A full batch: there may be more at once.
                    Ok(n) if n == BATCH => {
                        backoff = FIRST_BACKOFF;
                        continue;
                    }
                    Ok(_) => {
                        backoff = FIRST_BACKOFF;
                        IDLE_LOOK
                    }
                    Err(e) => {
                        let wait = backoff;
                        log::warn!(
                            "{what}: embedding failed; trying again in {} s: {e}",
                            wait.as_secs()
                        );
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        wait
                    }
                };
                // A wake-up during a backoff waits for the backoff's end: a server that just
                // failed is not asked again sooner because something was stored.
                let deadline = Instant::now() + wait;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match woken.recv_timeout(left) {
                        Ok(()) if backoff == FIRST_BACKOFF => break,
                        Ok(()) => {}
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
        })
        .map_err(|e| Error::io("an embedding worker", e))?;
    Ok(wake)
}
