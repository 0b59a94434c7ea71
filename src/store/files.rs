//! Files in the store: what a principal uploaded (`POST /api/files`) and what its tools
//! returned, their bytes, which conversations use them, and the text read out of them, split
//! into chunks for the model and for search.
//!
//! - A file is a row of its own (its id, owner, name, type, time) over a *blob*: the bytes,
//!   kept once per owner and SHA-256, in chunks of [`BLOB_CHUNK`] bytes, so that no file is
//!   ever held whole in memory on its way in or out.
//! - A conversation *uses* a file when one of its messages carries it or one of its tools
//!   returned it. Deleting a conversation deletes the files that only it used (and that were
//!   used at all); deleting a file keeps the messages that carried it.
//! - A blob's text is extracted once (`files/`), stored as [`TextChunk`]s, indexed for
//!   full-text search and, with an embedding model, for vector search.
//!
//! Depends on: `common::error`, `common::protocol`.

use std::io::Read;

use crate::common::error::Result;
use crate::common::protocol::{Attachment, SessionId};

/// The bytes of a blob are stored in pieces of this size (the last one shorter).
pub const BLOB_CHUNK: usize = 256 * 1024;

/// A stored file, as the API and frames describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFile {
    /// Its id: 32 hex characters from a cryptographic random source.
    pub id: String,
    /// Its name, made safe ([`safe_name`]).
    pub name: String,
    /// Its type, decided by its bytes.
    pub content_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// The SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl StoredFile {
    /// The file as a frame lists it.
    pub fn attachment(&self) -> Attachment {
        Attachment {
            id: self.id.clone(),
            name: self.name.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
        }
    }
}

/// A file about to be stored.
#[derive(Clone, Copy, Debug)]
pub struct NewFile<'a> {
    /// The principal that owns it.
    pub owner: &'a str,
    /// Its name, already made safe.
    pub name: &'a str,
    /// Its type, decided by its first bytes.
    pub content_type: &'a str,
    /// The conversation whose tool returned it: it uses the file from the start.
    pub conversation: Option<&'a SessionId>,
}

/// What an upload may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadLimits {
    /// The most bytes one file may have (`--max-upload-mib`).
    pub max_bytes: u64,
    /// The most bytes the owner's files may hold in all, counting each blob once; `None`: no
    /// quota.
    pub quota: Option<u64>,
}

/// How an upload ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upload {
    /// Stored (or found: the owner already had these bytes, which are then kept once).
    Stored(StoredFile),
    /// The body passed [`UploadLimits::max_bytes`]; nothing was kept.
    TooLarge,
    /// The owner's files would pass [`UploadLimits::quota`]; nothing was kept.
    OverQuota,
}

/// Where a blob's text stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextState {
    /// Not extracted yet.
    Pending,
    /// Extracted, in `chunks` chunks holding `chars` characters in all.
    Ready {
        /// How many chunks.
        chunks: u32,
        /// Characters in all.
        chars: u64,
    },
    /// Nothing could be read; the note says why, for the model and the person.
    Failed(String),
}

/// A piece of a file's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextChunk {
    /// The file it was read from (the id the caller asked about).
    pub file_id: String,
    /// Its place in the file, from 0.
    pub n: u32,
    /// Where it is, for a citation: `page 3`, `lines 120-180`.
    pub label: String,
    /// The text.
    pub text: String,
}

/// A piece of text as an extractor made it, before it is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewChunk {
    /// As [`TextChunk::label`].
    pub label: String,
    /// As [`TextChunk::text`].
    pub text: String,
}

/// Files, their bytes, their uses and their text. Implemented once for both stores
/// (`plan/files.rs`); every read and change is scoped to an owner, and an id another owner has
/// reads as absent.
pub trait FileStore: Send + Sync {
    /// Stores the bytes read from `body` as a new file of `file.owner`, a piece at a time,
    /// within `limits`. Identical bytes from one owner are kept once.
    ///
    /// # Errors
    ///
    /// [`crate::common::error::Error::Io`] when `body` fails, the store's own otherwise.
    fn upload(
        &self,
        file: NewFile<'_>,
        body: &mut dyn Read,
        limits: UploadLimits,
    ) -> Result<Upload>;

    /// `owner`'s file `id`.
    ///
    /// # Errors
    ///
    /// The store's.
    fn file(&self, owner: &str, id: &str) -> Result<Option<StoredFile>>;

    /// `owner`'s files among `ids`, in the order asked; ids that are not `owner`'s are left out.
    ///
    /// # Errors
    ///
    /// The store's.
    fn files(&self, owner: &str, ids: &[String]) -> Result<Vec<StoredFile>>;

    /// `owner`'s files, newest first: all of them, or those `conversation` uses.
    ///
    /// # Errors
    ///
    /// The store's.
    fn list_files(&self, owner: &str, conversation: Option<&SessionId>) -> Result<Vec<StoredFile>>;

    /// Hands the bytes of `owner`'s file `id` to `sink`, a piece at a time, in order; false
    /// when there is no such file.
    ///
    /// # Errors
    ///
    /// The store's, or `sink`'s as [`crate::common::error::Error::Io`].
    fn read_bytes(
        &self,
        owner: &str,
        id: &str,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<bool>;

    /// Deletes `owner`'s file `id` (its blob too, when no other file holds it); false when
    /// there was none.
    ///
    /// # Errors
    ///
    /// The store's.
    fn delete_file(&self, owner: &str, id: &str) -> Result<bool>;

    /// The bytes `owner`'s files hold, each blob counted once.
    ///
    /// # Errors
    ///
    /// The store's.
    fn used_bytes(&self, owner: &str) -> Result<u64>;

    /// Records that `conversation` uses the files `ids` (a message carries them).
    ///
    /// # Errors
    ///
    /// The store's.
    fn use_files(&self, conversation: &SessionId, ids: &[String]) -> Result<()>;

    /// Where the text of `owner`'s file `id` stands; `None` when there is no such file.
    ///
    /// # Errors
    ///
    /// The store's.
    fn text_state(&self, owner: &str, id: &str) -> Result<Option<TextState>>;

    /// Stores the text read from the file `id`'s blob (for every file over that blob), or why
    /// none could be read (`chunks` empty and `failure` given).
    ///
    /// # Errors
    ///
    /// The store's.
    fn put_text(&self, id: &str, chunks: &[NewChunk], failure: Option<&str>) -> Result<()>;

    /// Files whose text is still [`TextState::Pending`], one per blob, as `(owner, file)`,
    /// at most `limit`: what a server that stopped before reading them left, queued again
    /// when the next one starts (`files::Library::new`).
    ///
    /// # Errors
    ///
    /// The store's.
    fn pending_texts(&self, limit: usize) -> Result<Vec<(String, StoredFile)>>;

    /// Chunks `from..from + limit` of `owner`'s file `id`, in order.
    ///
    /// # Errors
    ///
    /// The store's.
    fn chunks(&self, owner: &str, id: &str, from: u32, limit: u32) -> Result<Vec<TextChunk>>;

    /// The chunks of `owner`'s files `ids` that best match the words of `query` (full-text),
    /// best first, at most `limit`.
    ///
    /// # Errors
    ///
    /// The store's.
    fn search_chunks(
        &self,
        owner: &str,
        ids: &[String],
        query: &str,
        limit: usize,
    ) -> Result<Vec<TextChunk>>;

    /// Chunks of files that have no vector from `model` yet: `(file id, n, text)`, at most
    /// `limit`.
    ///
    /// # Errors
    ///
    /// The store's.
    fn unembedded_chunks(&self, model: &str, limit: usize) -> Result<Vec<(String, u32, String)>>;

    /// Stores each chunk's vector from `model`: `(file id, n, vector)`.
    ///
    /// # Errors
    ///
    /// The store's.
    fn store_chunk_vectors(&self, model: &str, vectors: &[(String, u32, Vec<f32>)]) -> Result<()>;

    /// The chunks of `owner`'s files `ids` nearest to `vector` by `model`'s vectors, nearest
    /// first, at most `limit`, with their cosine similarity.
    ///
    /// # Errors
    ///
    /// The store's.
    fn nearest_chunks(
        &self,
        owner: &str,
        ids: &[String],
        model: &str,
        vector: &[f32],
        limit: usize,
    ) -> Result<Vec<(TextChunk, f32)>>;
}

/// A name a client gave a file, made safe to store, show and send back in a
/// `Content-Disposition`: the last path segment (no `../`), control characters, quotes and
/// backslashes dropped, at most 200 characters; `file` when nothing is left.
pub fn safe_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\\' | '/'))
        .take(200)
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.');
    if trimmed.is_empty() {
        "file".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::safe_name;

    #[test]
    fn names_lose_paths_controls_and_quotes() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("a\\b\\c.txt"), "c.txt");
        assert_eq!(safe_name("re\"port\n\u{7}.pdf"), "report.pdf");
        assert_eq!(safe_name(".."), "file");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name(".hidden"), "hidden");
        assert_eq!(safe_name(&"x".repeat(500)).len(), 200);
    }
}
