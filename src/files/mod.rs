//! Files in the conversation, above the store: what a file is (by its bytes, `sniff.rs`), its
//! text (read in a bounded child process for documents, `extract.rs` and `child.rs`), that text
//! in labelled chunks (`chunk.rs`), and [`Library`], which joins them: an upload is sniffed,
//! streamed into the store and queued for reading on a small pool of `extract` threads; a
//! turn waits (bounded, cancellable) for a file's text.
//!
//! Reading order: this file, `sniff.rs`, `extract.rs`, `child.rs`, `chunk.rs`.
//!
//! Depends on: `common::cancel`, `common::config`, `common::error`, `common::metrics`,
//! `common::protocol`, `files::child`, `files::chunk`, `files::embed`, `files::extract`,
//! `files::sniff`, `model::embed`, `store::files`.

pub mod child;
pub mod chunk;
pub mod embed;
pub mod extract;
pub mod sniff;

use std::collections::HashSet;
use std::fmt;
use std::io::{Cursor, Read};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::{Condvar, Mutex};

use crate::common::cancel::CancelFlag;
use crate::common::config::Config;
use crate::common::error::{Error, Result};
use crate::common::metrics::Metrics;
use crate::common::protocol::SessionId;
use crate::files::child::{Extractor, Unread};
use crate::files::chunk::{MAX_TEXT_BYTES, Section, chunk};
use crate::files::extract::{Reading, nothing_to_read, read_text, reading};
use crate::files::sniff::SNIFF_BYTES;
use crate::model::embed::Embed;
use crate::store::{FileStore, NewFile, StoredFile, TextState, Upload, UploadLimits, safe_name};

pub use sniff::is_inline_image;

/// How many `extract` threads read files' text. Each waits on a child process for a
/// document, so two keep the machine's cores for the turns while one hostile PDF runs out its
/// time.
const EXTRACT_THREADS: usize = 2;

/// How many files may wait to be read. Past it an upload's file stays `Pending` (logged), and
/// is queued again when the server next starts.
const QUEUE: usize = 4_096;

/// How long a wait for a file's text sleeps before it looks at the store again, for a file
/// another instance (sharing a PostgreSQL store) is reading.
const RECHECK: Duration = Duration::from_secs(1);

/// Files in the conversation: uploads (typed by their bytes, stored within the limits), the
/// reading of their text on the `extract` threads, and waiting for it. A cheap handle: clones
/// share one pool, which ends when the last handle is dropped.
#[derive(Clone)]
pub struct Library {
    inner: Arc<Inner>,
}

/// What the handles share.
struct Inner {
    shared: Arc<Shared>,
    /// The queue to the `extract` threads; dropping it ends them.
    jobs: Sender<Job>,
    limits: UploadLimits,
}

/// What the handles and the `extract` threads share.
struct Shared {
    store: Arc<dyn FileStore>,
    extractor: Extractor,
    metrics: Arc<Metrics>,
    /// The blobs queued or being read, as `(owner, sha256)`: a blob is read once, whichever
    /// of its files asked.
    reading: Mutex<HashSet<(String, String)>>,
    /// Bumped each time a text is stored; waits for a text sleep on `stored`.
    generation: Mutex<u64>,
    stored: Condvar,
    /// With an embedding model: the embedder, and what wakes the `file-embedder` thread.
    embedding: OnceLock<(Arc<dyn Embed>, Sender<()>)>,
}

/// A file to read.
struct Job {
    owner: String,
    file: StoredFile,
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library")
            .field("limits", &self.inner.limits)
            .field("extractor", &self.inner.shared.extractor)
            .field("queued", &self.inner.jobs.len())
            .finish_non_exhaustive()
    }
}

impl Library {
    /// A library over `store`, with `config`'s limits (`--max-upload-mib`, `--file-quota-mib`)
    /// and reader (`--extractor`, `--extract-timeout`, `--extract-memory-mib`). Starts the
    /// `extract` threads and queues the files whose text a previous run left unread.
    pub fn new(store: Arc<dyn FileStore>, config: &Config, metrics: Arc<Metrics>) -> Self {
        let shared = Arc::new(Shared {
            store,
            extractor: Extractor::from_config(config),
            metrics,
            reading: Mutex::new(HashSet::new()),
            generation: Mutex::new(0),
            stored: Condvar::new(),
            embedding: OnceLock::new(),
        });
        let (jobs, queue) = crossbeam_channel::bounded(QUEUE);
        for _ in 0..EXTRACT_THREADS {
            let shared = shared.clone();
            let queue: Receiver<Job> = queue.clone();
            let started = std::thread::Builder::new()
                .name("extract".into())
                .spawn(move || {
                    for job in queue {
                        shared.run(&job);
                    }
                });
            if let Err(e) = started {
                log::error!("files: cannot start an extract thread: {e}");
            }
        }
        let library = Library {
            inner: Arc::new(Inner {
                shared,
                jobs,
                limits: UploadLimits {
                    max_bytes: config.max_upload_bytes,
                    quota: config.file_quota_bytes,
                },
            }),
        };
        library.queue_pending();
        library
    }

    /// The store the files are in.
    pub fn store(&self) -> &Arc<dyn FileStore> {
        &self.inner.shared.store
    }

    /// What an upload may take.
    pub fn limits(&self) -> UploadLimits {
        self.inner.limits
    }

    /// Embeds files' chunks with `embedder` from now on, on a `file-embedder` thread: each
    /// text as it is stored, and at once those stored earlier without a vector by its model.
    /// A second call is ignored.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the thread cannot be started.
    pub fn embed_with(&self, embedder: Arc<dyn Embed>) -> Result<()> {
        let shared = &self.inner.shared;
        if shared.embedding.get().is_some() {
            return Ok(());
        }
        let wake = self::embed::start(shared.store.clone(), embedder.clone())?;
        let _ = shared.embedding.set((embedder, wake));
        Ok(())
    }

    /// The embedder of files' chunks, when there is one ([`Library::embed_with`]): what a
    /// question is embedded with to find the nearest chunks.
    pub fn embedder(&self) -> Option<&Arc<dyn Embed>> {
        self.inner
            .shared
            .embedding
            .get()
            .map(|(embedder, _)| embedder)
    }

    /// Stores a file that `owner` uploads (or a tool of `conversation` returned, which then
    /// uses it from the start): its type sniffed from its first bytes (`declared`, the
    /// client's `Content-Type`, only breaks ties among text types), its name made safe, its
    /// body streamed into the store within the limits, and its text queued to be read.
    /// Identical bytes are stored once, and their text read once.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `body` fails, the store's otherwise.
    pub fn upload(
        &self,
        owner: &str,
        name: &str,
        declared: Option<&str>,
        body: &mut dyn Read,
        conversation: Option<&SessionId>,
    ) -> Result<Upload> {
        let mut head = Vec::with_capacity(SNIFF_BYTES);
        Read::take(&mut *body, SNIFF_BYTES as u64)
            .read_to_end(&mut head)
            .map_err(|e| Error::io("reading an upload", e))?;
        let name = safe_name(name);
        let content_type = sniff::content_type(&head, &name, declared);
        let mut whole = Cursor::new(head).chain(body);
        let file = NewFile {
            owner,
            name: &name,
            content_type: &content_type,
            conversation,
        };
        let upload = self.store().upload(file, &mut whole, self.inner.limits)?;
        if let Upload::Stored(file) = &upload {
            self.queue(owner, file)?;
        }
        Ok(upload)
    }

    /// Where the text of `owner`'s file `id` stands, waiting at most `wait` while it is being
    /// read (woken early when `cancel` is set); `None` when there is no such file. A wait that
    /// ends before the text is read answers [`TextState::Pending`].
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn text_state(
        &self,
        owner: &str,
        id: &str,
        wait: Duration,
        cancel: Option<&CancelFlag>,
    ) -> Result<Option<TextState>> {
        let shared = &self.inner.shared;
        let deadline = Instant::now() + wait;
        let _woken = cancel.map(|flag| {
            let shared = shared.clone();
            flag.on_cancel(move || {
                let _generation = shared.generation.lock();
                shared.stored.notify_all();
            })
        });
        let cancelled = || cancel.is_some_and(CancelFlag::is_cancelled);
        loop {
            let seen = *shared.generation.lock();
            let state = shared.store.text_state(owner, id)?;
            if state != Some(TextState::Pending) {
                return Ok(state);
            }
            let now = Instant::now();
            if now >= deadline || cancelled() {
                return Ok(state);
            }
            let until = deadline.min(now + RECHECK);
            let mut generation = shared.generation.lock();
            while *generation == seen && !cancelled() {
                if shared.stored.wait_until(&mut generation, until).timed_out() {
                    break;
                }
            }
        }
    }

    /// Queues `owner`'s `file` to have its text read, unless its blob's text is known already
    /// (the same bytes were uploaded before) or is being read. A file with nothing to read
    /// gets its note at once.
    fn queue(&self, owner: &str, file: &StoredFile) -> Result<()> {
        let shared = &self.inner.shared;
        if shared.store.text_state(owner, &file.id)? != Some(TextState::Pending) {
            return Ok(());
        }
        if reading(&file.content_type) == Reading::Nothing {
            shared.finish(&file.id, Err(nothing_to_read(&file.content_type)), false);
            return Ok(());
        }
        let blob = (owner.to_owned(), file.sha256.clone());
        if !shared.reading.lock().insert(blob.clone()) {
            return Ok(());
        }
        let job = Job {
            owner: owner.to_owned(),
            file: file.clone(),
        };
        match self.inner.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                shared.reading.lock().remove(&blob);
                log::warn!(
                    "files: {QUEUE} files are waiting to be read; {} waits for the next start",
                    file.id
                );
            }
        }
        Ok(())
    }

    /// Queues the files whose text a previous run left unread.
    fn queue_pending(&self) {
        match self.store().pending_texts(QUEUE / 2) {
            Ok(pending) => {
                if !pending.is_empty() {
                    log::info!(
                        "files: reading the text of {} files left unread",
                        pending.len()
                    );
                }
                for (owner, file) in pending {
                    if let Err(e) = self.queue(&owner, &file) {
                        log::warn!("files: cannot queue {} to be read: {e}", file.id);
                    }
                }
            }
            Err(e) => log::warn!("files: cannot find the files left unread: {e}"),
        }
    }
}

impl Shared {
    /// Reads one file's text, stores it, and wakes the waits. A panic is caught and becomes the
    /// file's note, so that the thread goes on.
    fn run(&self, job: &Job) {
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.read(job)));
        match read {
            Ok(Ok(Some((text, cut)))) => self.finish(&job.file.id, Ok(text), cut),
            Ok(Ok(None)) => {}
            Ok(Err(note)) => self.finish(&job.file.id, Err(note), false),
            Err(_) => self.finish(
                &job.file.id,
                Err("could not read the file: its reader failed".to_owned()),
                false,
            ),
        }
        self.reading
            .lock()
            .remove(&(job.owner.clone(), job.file.sha256.clone()));
        self.wake();
    }

    /// The text of `job`'s file: `Ok(None)` when there is nothing to do (its text was read
    /// meanwhile, it was deleted, or the store failed: then it stays pending); `Err` with a
    /// note when it cannot be read.
    #[allow(clippy::type_complexity)]
    fn read(&self, job: &Job) -> Result<Option<(Vec<Section>, bool)>, String> {
        let (owner, file) = (&job.owner, &job.file);
        match self.store.text_state(owner, &file.id) {
            Ok(Some(TextState::Pending)) => {}
            Ok(_) => return Ok(None),
            Err(e) => {
                log::warn!("files: cannot read the text state of {}: {e}", file.id);
                return Ok(None);
            }
        }
        match reading(&file.content_type) {
            Reading::Nothing => Err(nothing_to_read(&file.content_type)),
            Reading::Text => {
                // At most the cap (and a byte more, to know it was passed).
                let mut bytes = Vec::new();
                let limit = MAX_TEXT_BYTES + 1;
                let read = self.store.read_bytes(owner, &file.id, &mut |piece| {
                    let room = limit - bytes.len();
                    bytes.extend_from_slice(&piece[..piece.len().min(room)]);
                    if bytes.len() >= limit {
                        return Err(std::io::Error::other("enough"));
                    }
                    Ok(())
                });
                match read {
                    Ok(true) => {}
                    Ok(false) => return Ok(None),
                    Err(_) if bytes.len() >= limit => {}
                    Err(e) => {
                        log::warn!("files: cannot read {}: {e}", file.id);
                        return Ok(None);
                    }
                }
                let cut = bytes.len() > MAX_TEXT_BYTES;
                bytes.truncate(MAX_TEXT_BYTES);
                Ok(Some((read_text(&bytes), cut)))
            }
            Reading::Document(document) => {
                let read = self.extractor.read(document, |stdin| {
                    self.store
                        .read_bytes(owner, &file.id, &mut |piece| stdin.write_all(piece))
                        .map(|_| ())
                });
                match read {
                    Ok(text) => Ok(Some((text.sections, text.cut))),
                    Err(Unread::Document(note)) => Err(note),
                    Err(Unread::Server(e)) => {
                        log::warn!("files: cannot feed {} to its reader: {e}", file.id);
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Stores the text read from file `id`'s blob (chunked), or the note that says why there
    /// is none.
    fn finish(&self, id: &str, text: Result<Vec<Section>, String>, cut: bool) {
        let stored = match &text {
            Ok(sections) => {
                let chunks = chunk(sections, MAX_TEXT_BYTES, cut);
                Metrics::bump(&self.metrics.file_texts_read);
                let stored = self.store.put_text(id, &chunks, None);
                if let Some((_, wake)) = self.embedding.get()
                    && !chunks.is_empty()
                {
                    let _ = wake.try_send(());
                }
                stored
            }
            Err(note) => {
                Metrics::bump(&self.metrics.file_texts_failed);
                log::info!("files: {id}: {note}");
                self.store.put_text(id, &[], Some(note))
            }
        };
        if let Err(e) = stored {
            log::warn!("files: cannot store the text of {id}: {e}");
        }
        self.wake();
    }

    /// Wakes every wait for a text.
    fn wake(&self) {
        *self.generation.lock() += 1;
        self.stored.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use sha2::{Digest, Sha256};

    use super::*;
    use crate::store::{NewChunk, TextChunk};

    /// A blob of the fake store: its bytes and its text.
    #[derive(Default)]
    struct Blob {
        bytes: Vec<u8>,
        state: Option<TextState>,
        chunks: Vec<NewChunk>,
    }

    /// A small in-memory `FileStore`: files over blobs per owner and SHA-256, the limits kept,
    /// and a count of the texts put.
    #[derive(Default)]
    struct FakeStore {
        files: Mutex<Vec<(String, StoredFile)>>,
        blobs: Mutex<HashMap<(String, String), Blob>>,
        puts: AtomicUsize,
        next: AtomicUsize,
    }

    impl FakeStore {
        fn blob_of(&self, owner: Option<&str>, id: &str) -> Option<(String, String)> {
            self.files
                .lock()
                .iter()
                .find(|(o, f)| f.id == id && owner.is_none_or(|owner| owner == o))
                .map(|(o, f)| (o.clone(), f.sha256.clone()))
        }
    }

    impl FileStore for FakeStore {
        fn upload(
            &self,
            file: NewFile<'_>,
            body: &mut dyn Read,
            limits: UploadLimits,
        ) -> Result<Upload> {
            let mut bytes = Vec::new();
            Read::take(body, limits.max_bytes + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io("test", e))?;
            if bytes.len() as u64 > limits.max_bytes {
                return Ok(Upload::TooLarge);
            }
            let sha256 = data_encoding::HEXLOWER.encode(&Sha256::digest(&bytes));
            let key = (file.owner.to_owned(), sha256.clone());
            let mut blobs = self.blobs.lock();
            if !blobs.contains_key(&key) {
                let used: usize = blobs
                    .iter()
                    .filter(|((o, _), _)| o == file.owner)
                    .map(|(_, b)| b.bytes.len())
                    .sum();
                if limits
                    .quota
                    .is_some_and(|q| (used + bytes.len()) as u64 > q)
                {
                    return Ok(Upload::OverQuota);
                }
                blobs.insert(
                    key,
                    Blob {
                        bytes: bytes.clone(),
                        state: Some(TextState::Pending),
                        chunks: Vec::new(),
                    },
                );
            }
            let stored = StoredFile {
                id: format!("{:032x}", self.next.fetch_add(1, Ordering::SeqCst)),
                name: file.name.to_owned(),
                content_type: file.content_type.to_owned(),
                size: bytes.len() as u64,
                sha256,
                created_at: 0,
            };
            self.files
                .lock()
                .push((file.owner.to_owned(), stored.clone()));
            Ok(Upload::Stored(stored))
        }

        fn file(&self, owner: &str, id: &str) -> Result<Option<StoredFile>> {
            Ok(self
                .files
                .lock()
                .iter()
                .find(|(o, f)| o == owner && f.id == id)
                .map(|(_, f)| f.clone()))
        }

        fn files(&self, owner: &str, ids: &[String]) -> Result<Vec<StoredFile>> {
            Ok(ids
                .iter()
                .filter_map(|id| self.file(owner, id).ok().flatten())
                .collect())
        }

        fn list_files(&self, owner: &str, _: Option<&SessionId>) -> Result<Vec<StoredFile>> {
            Ok(self
                .files
                .lock()
                .iter()
                .filter(|(o, _)| o == owner)
                .map(|(_, f)| f.clone())
                .collect())
        }

        fn read_bytes(
            &self,
            owner: &str,
            id: &str,
            sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
        ) -> Result<bool> {
            let Some(key) = self.blob_of(Some(owner), id) else {
                return Ok(false);
            };
            let bytes = self.blobs.lock()[&key].bytes.clone();
            for piece in bytes.chunks(1000) {
                sink(piece).map_err(|e| Error::io("test sink", e))?;
            }
            Ok(true)
        }

        fn delete_file(&self, _: &str, _: &str) -> Result<bool> {
            Ok(false)
        }

        fn used_bytes(&self, _: &str) -> Result<u64> {
            Ok(0)
        }

        fn use_files(&self, _: &SessionId, _: &[String]) -> Result<()> {
            Ok(())
        }

        fn text_state(&self, owner: &str, id: &str) -> Result<Option<TextState>> {
            Ok(self
                .blob_of(Some(owner), id)
                .and_then(|key| self.blobs.lock()[&key].state.clone()))
        }

        fn put_text(&self, id: &str, chunks: &[NewChunk], failure: Option<&str>) -> Result<()> {
            self.puts.fetch_add(1, Ordering::SeqCst);
            let key = self
                .blob_of(None, id)
                .ok_or_else(|| Error::store("no file"))?;
            let mut blobs = self.blobs.lock();
            let blob = blobs.get_mut(&key).ok_or_else(|| Error::store("no blob"))?;
            blob.state = Some(match failure {
                Some(note) => TextState::Failed(note.to_owned()),
                None => TextState::Ready {
                    chunks: chunks.len() as u32,
                    chars: chunks.iter().map(|c| c.text.chars().count() as u64).sum(),
                },
            });
            blob.chunks = chunks.to_vec();
            Ok(())
        }

        fn chunks(&self, owner: &str, id: &str, from: u32, limit: u32) -> Result<Vec<TextChunk>> {
            let Some(key) = self.blob_of(Some(owner), id) else {
                return Ok(Vec::new());
            };
            Ok(self.blobs.lock()[&key]
                .chunks
                .iter()
                .enumerate()
                .skip(from as usize)
                .take(limit as usize)
                .map(|(n, c)| TextChunk {
                    file_id: id.to_owned(),
                    n: n as u32,
                    label: c.label.clone(),
                    text: c.text.clone(),
                })
                .collect())
        }

        fn search_chunks(
            &self,
            _: &str,
            _: &[String],
            _: &str,
            _: usize,
        ) -> Result<Vec<TextChunk>> {
            Ok(Vec::new())
        }

        fn unembedded_chunks(&self, _: &str, _: usize) -> Result<Vec<(String, u32, String)>> {
            Ok(Vec::new())
        }

        fn store_chunk_vectors(&self, _: &str, _: &[(String, u32, Vec<f32>)]) -> Result<()> {
            Ok(())
        }

        fn nearest_chunks(
            &self,
            _: &str,
            _: &[String],
            _: &str,
            _: &[f32],
            _: usize,
        ) -> Result<Vec<(TextChunk, f32)>> {
            Ok(Vec::new())
        }

        fn pending_texts(&self, limit: usize) -> Result<Vec<(String, StoredFile)>> {
            let blobs = self.blobs.lock();
            let mut seen = HashSet::new();
            Ok(self
                .files
                .lock()
                .iter()
                .filter(|(o, f)| {
                    blobs[&(o.clone(), f.sha256.clone())].state == Some(TextState::Pending)
                        && seen.insert((o.clone(), f.sha256.clone()))
                })
                .take(limit)
                .cloned()
                .collect())
        }
    }

    const WAIT: Duration = Duration::from_secs(20);

    fn library(store: &Arc<FakeStore>) -> Library {
        let config = Config {
            max_upload_bytes: 100_000,
            file_quota_bytes: Some(150_000),
            ..Config::default()
        };
        Library::new(store.clone(), &config, Arc::new(Metrics::default()))
    }

    fn stored(upload: Upload) -> StoredFile {
        match upload {
            Upload::Stored(file) => file,
            other => panic!("not stored: {other:?}"),
        }
    }

    #[test]
    fn a_text_upload_is_typed_by_its_bytes_and_read_into_labelled_chunks() {
        let store = Arc::new(FakeStore::default());
        let library = library(&store);
        let body = (1..=300)
            .map(|i| format!("line {i}: the quick brown fox"))
            .collect::<Vec<_>>()
            .join("\n");
        let file = stored(
            library
                .upload("alice", "../notes\n.md", None, &mut body.as_bytes(), None)
                .unwrap(),
        );
        assert_eq!(file.name, "notes.md");
        assert_eq!(file.content_type, "text/markdown");
        let state = library.text_state("alice", &file.id, WAIT, None).unwrap();
        let Some(TextState::Ready { chunks, .. }) = state else {
            panic!("{state:?}");
        };
        assert!(chunks > 1);
        let read = store.chunks("alice", &file.id, 0, 100).unwrap();
        assert!(read[0].label.starts_with("lines 1-"), "{}", read[0].label);
        assert!(read[0].text.starts_with("line 1: the quick"));
        assert!(read.last().unwrap().label.ends_with("-300"));
        // Another owner does not see it.
        assert_eq!(
            library.text_state("bob", &file.id, WAIT, None).unwrap(),
            None
        );
    }
}
