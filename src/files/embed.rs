//! Files' chunks embedded for semantic search, with `--embedding-model`: one worker thread
//! (`file-embedder`) asks the store for chunks without a vector by the model
//! ([`FileStore::unembedded_chunks`]), up to [`BATCH`] at a time, embeds them in one request
//! and stores the vectors. It is woken when a file's text is stored, and looks again every
//! minute (texts stored by another instance, a wake-up lost). A failed request is tried again
//! after a backoff that doubles from 1 s to 5 min; meanwhile the chunks are found by their
//! words. The same loop, as `conversation/memory.rs` runs for the knowledge graph's nodes.
//!
//! Depends on: `common::error`, `model::embed`, `model::error`, `store::files`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::common::error::{Error, Result};
use crate::model::embed::Embed;
use crate::model::error::ModelError;
use crate::store::FileStore;

/// Chunks embedded in one request at most.
pub const BATCH: usize = 32;

/// The first wait after a failed request; each later one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between two failed requests.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How often the worker looks for chunks without a vector when nothing woke it.
const IDLE_LOOK: Duration = Duration::from_secs(60);

/// Starts the `file-embedder` thread over `store` with `embedder`; the returned sender wakes
/// it (a text was stored), and dropping it ends the thread.
///
/// # Errors
///
/// [`Error::Io`] when the thread cannot be started.
pub fn start(store: Arc<dyn FileStore>, embedder: Arc<dyn Embed>) -> Result<Sender<()>> {
    let (wake, woken) = crossbeam_channel::bounded(1);
    let worker = Worker {
        store,
        embedder,
        woken,
    };
    std::thread::Builder::new()
        .name("file-embedder".into())
        .spawn(move || worker.run())
        .map_err(|e| Error::io("the file embedding worker", e))?;
    Ok(wake)
}

/// The worker: embeds chunks without a vector, in batches, with backoff on failure.
struct Worker {
    store: Arc<dyn FileStore>,
    embedder: Arc<dyn Embed>,
    woken: Receiver<()>,
}

impl Worker {
    fn run(self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let wait = match self.embed_some() {
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
                        "files: embedding chunks failed; trying again in {} s: {e}",
                        wait.as_secs()
                    );
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            // A wake-up during a backoff waits for the backoff's end: a server that just
            // failed is not asked again sooner because a file was read.
            let deadline = Instant::now() + wait;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.woken.recv_timeout(left) {
                    Ok(()) if backoff == FIRST_BACKOFF => break,
                    Ok(()) => {}
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    /// Embeds one batch; how many chunks it held.
    fn embed_some(&self) -> std::result::Result<usize, BatchError> {
        let model = self.embedder.model();
        let pending = self
            .store
            .unembedded_chunks(model, BATCH)
            .map_err(BatchError::Store)?;
        if pending.is_empty() {
            return Ok(0);
        }
        let texts: Vec<String> = pending.iter().map(|(_, _, text)| text.clone()).collect();
        let vectors = self.embedder.embed(&texts).map_err(BatchError::Embed)?;
        if vectors.len() != pending.len() {
            return Err(BatchError::Count {
                vectors: vectors.len(),
                texts: pending.len(),
            });
        }
        let rows: Vec<(String, u32, Vec<f32>)> = pending
            .into_iter()
            .zip(vectors)
            .map(|((id, n, _), vector)| (id, n, vector))
            .collect();
        self.store
            .store_chunk_vectors(model, &rows)
            .map_err(BatchError::Store)?;
        log::debug!("files: embedded {} chunks", rows.len());
        Ok(rows.len())
    }
}

/// Why a batch was not embedded, as the worker logs it.
enum BatchError {
    /// The store could not list the chunks without a vector, or keep their vectors.
    Store(Error),
    /// The embedding server failed.
    Embed(ModelError),
    /// The embedder returned another number of vectors than it was given texts.
    Count { vectors: usize, texts: usize },
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
