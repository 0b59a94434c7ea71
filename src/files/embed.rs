//! Files' chunks embedded for semantic search, with `--embedding-model`: one worker thread
//! (`file-embedder`) asks the store for chunks without a vector by the model
//! ([`FileStore::unembedded_chunks`]), up to [`BATCH`] at a time, embeds them in one request
//! and stores the vectors. It is woken when a file's text is stored, and looks again every
//! minute; a failed request is tried again after a backoff (`model/backfill.rs`, the loop
//! semantic memory runs for the knowledge graph's nodes too).
//!
//! Depends on: `common::error`, `model::backfill`, `model::embed`, `store::files`.

use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::common::error::Result;
use crate::model::backfill::{self, BATCH, BatchError};
use crate::model::embed::Embed;
use crate::store::FileStore;

/// Starts the `file-embedder` thread over `store` with `embedder`; the returned sender wakes
/// it (a text was stored), and dropping it ends the thread.
///
/// # Errors
///
/// [`crate::common::error::Error::Io`] when the thread cannot be started.
pub fn start(store: Arc<dyn FileStore>, embedder: Arc<dyn Embed>) -> Result<Sender<()>> {
    let thread = std::thread::Builder::new().name("file-embedder".into());
    backfill::start(thread, "files", move || {
        embed_some(store.as_ref(), embedder.as_ref())
    })
}

/// Embeds one batch of chunks; how many it held.
fn embed_some(store: &dyn FileStore, embedder: &dyn Embed) -> Result<usize, BatchError> {
    let model = embedder.model();
    let pending = store
        .unembedded_chunks(model, BATCH)
        .map_err(BatchError::Store)?;
    if pending.is_empty() {
        return Ok(0);
    }
    let pending = pending
        .into_iter()
        .map(|(id, n, text)| ((id, n), text))
        .collect();
    let rows: Vec<(String, u32, Vec<f32>)> = backfill::embed_all(embedder, pending)?
        .into_iter()
        .map(|((id, n), vector)| (id, n, vector))
        .collect();
    store
        .store_chunk_vectors(model, &rows)
        .map_err(BatchError::Store)?;
    log::debug!("files: embedded {} chunks", rows.len());
    Ok(rows.len())
}
