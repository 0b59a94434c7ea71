//! What the model is given of the files on a turn's path (issue 23, "what the model gets").
//!
//! - Each file the turn's user message carries becomes a block after the user's words
//!   (`model::attached`): a small document's whole text, labelled with its name; for a long one,
//!   a note that its passages come with each question and that `read_file` reads more; for an
//!   image, the image itself to a model that takes images, else a note; for a file whose text
//!   could not be read, why. The blocks are part of the stored message, so later turns see
//!   them too.
//! - For every long document on the path (this turn's and earlier turns'), the chunks most
//!   relevant to the question (full-text search, and the embedding model's nearest when one is
//!   configured, taking turns) go into a system message just before the user's, each labelled
//!   with its file and place, within a share of the context budget. They are for this turn
//!   only: the next question gets its own.
//!
//! The text of a file just uploaded may still be being read: the turn waits for it (bounded,
//! and woken by a cancel).
//!
//! Depends on: `common::cancel`, `common::protocol`, `files`, `files::sniff`, `model`, `model::attached`, `store::files`, `tools`.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::cancel::CancelFlag;
use crate::common::protocol::Attachment;
use crate::files::{Library, is_inline_image};
use crate::model::attached::{PASSAGES_PREFIX, file_block, passage_block};
use crate::model::{Image, describe_bytes};
use crate::store::{TextChunk, TextState};
use crate::tools::MAX_IMAGE_BYTES;

/// Characters of one document put into a message whole at most; a longer one is given by its
/// passages.
pub const INLINE_CHARS: usize = 12_000;

/// Passages given to one turn at most.
pub const PASSAGES: usize = 6;

/// The context window assumed when neither the operator nor the model server says.
const DEFAULT_WINDOW_TOKENS: usize = 8_192;

/// How long a turn waits for the text of a file still being read.
const TEXT_WAIT: Duration = Duration::from_secs(60);

/// What a turn's files add to what the model sees.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The blocks that follow the user's words.
    pub blocks: String,
    /// The images the user attached, for a model that takes images.
    pub images: Vec<Image>,
    /// The passages message, when long documents are on the path.
    pub passages: Option<String>,
    /// The passages given, as `name, place`, for the turn's thought.
    pub cited: Vec<String>,
}

/// The files of one turn and what preparing them needs.
#[derive(Debug)]
pub struct TurnFiles<'a> {
    /// Where the files are.
    pub library: &'a Library,
    /// Whose they are.
    pub owner: &'a str,
    /// The files the turn's user message carries.
    pub attached: &'a [Attachment],
    /// The files on the turn's path, this turn's included.
    pub on_path: &'a [Attachment],
    /// The user's words, which the passages are chosen for.
    pub question: &'a str,
    /// True when the model takes images.
    pub vision: bool,
    /// The model's context window in tokens, when known.
    pub window_tokens: Option<usize>,
    /// The turn's cancel flag, which ends a wait for a file's text.
    pub cancel: &'a CancelFlag,
}

impl TurnFiles<'_> {
    /// Characters the files may take in all: a quarter of the context for whole documents,
    /// and as much for passages (about three characters a token, to be safe).
    fn share(&self) -> usize {
        self.window_tokens.unwrap_or(DEFAULT_WINDOW_TOKENS) * 3 / 4
    }

    /// Reads the files and builds what the model is given. A file that cannot be read is
    /// described, never fatal.
    pub fn prepare(&self) -> Prepared {
        let mut prepared = Prepared::default();
        let mut inline_left = self.share();
        let mut long: Vec<&Attachment> = Vec::new();
        for file in self.attached {
            if self.cancel.is_cancelled() {
                return prepared;
            }
            let body = self.block_body(file, &mut inline_left, &mut prepared.images, &mut long);
            prepared
                .blocks
                .push_str(&file_block(&file.name, &file.content_type, &body));
        }
        // The long documents of earlier turns on the path: their text was read then.
        for file in self.on_path {
            if self.attached.iter().any(|a| a.id == file.id) || is_inline_image(&file.content_type)
            {
                continue;
            }
            if let Ok(Some(TextState::Ready { chars, .. })) =
                self.library
                    .text_state(self.owner, &file.id, Duration::ZERO, None)
                && usize::try_from(chars).unwrap_or(usize::MAX) > INLINE_CHARS
            {
                long.push(file);
            }
        }
        if !long.is_empty() {
            self.passages(&long, &mut prepared);
        }
        prepared
    }

    /// The body of `file`'s block; a long document is added to `long`, an image for the model
    /// to `images`.
    fn block_body<'f>(
        &self,
        file: &'f Attachment,
        inline_left: &mut usize,
        images: &mut Vec<Image>,
        long: &mut Vec<&'f Attachment>,
    ) -> String {
        let size = describe_bytes(usize::try_from(file.size).unwrap_or(usize::MAX));
        if is_inline_image(&file.content_type) {
            if !self.vision {
                return format!(
                    "An image ({size}). This model cannot see images: say so if asked about it."
                );
            }
            return match self.image(file) {
                Some(image) => {
                    images.push(image);
                    format!("An image ({size}), attached.")
                }
                None => format!("An image ({size}) that could not be read."),
            };
        }
        let state = self
            .library
            .text_state(self.owner, &file.id, TEXT_WAIT, Some(self.cancel));
        match state {
            Ok(Some(TextState::Ready { chunks, chars })) => {
                let chars = usize::try_from(chars).unwrap_or(usize::MAX);
                if chars <= INLINE_CHARS.min(*inline_left)
                    && let Ok(read) = self.library.store().chunks(self.owner, &file.id, 0, chunks)
                {
                    *inline_left -= chars;
                    return read
                        .iter()
                        .map(|chunk| chunk.text.as_str())
                        .collect::<Vec<_>>()
                        .join("\n");
                }
                long.push(file);
                format!(
                    "A long document ({chars} characters of text). The passages that matter \
                     to each question are given with it; the read_file tool (id {}) reads it \
                     a page at a time.",
                    file.id
                )
            }
            Ok(Some(TextState::Failed(note))) => format!("Its text could not be read: {note}"),
            Ok(Some(TextState::Pending)) => format!(
                "Its text is still being read; the read_file tool (id {}) can read it later.",
                file.id
            ),
            Ok(None) => "This file was deleted.".to_owned(),
            Err(e) => {
                log::warn!("files: cannot read the text of a file: {e}");
                "Its text could not be read right now.".to_owned()
            }
        }
    }

    /// `file`'s bytes as an image for the model, within [`MAX_IMAGE_BYTES`].
    fn image(&self, file: &Attachment) -> Option<Image> {
        if usize::try_from(file.size).ok()? > MAX_IMAGE_BYTES {
            return None;
        }
        let mut bytes = Vec::with_capacity(usize::try_from(file.size).ok()?);
        let found = self
            .library
            .store()
            .read_bytes(self.owner, &file.id, &mut |piece| {
                bytes.extend_from_slice(piece);
                Ok(())
            })
            .ok()?;
        found.then(|| Image {
            mime_type: file.content_type.clone(),
            data: data_encoding::BASE64.encode(&bytes),
        })
    }

    /// The chunks of the files `ids` nearest to the question in meaning, nearest first, when an
    /// embedding model is configured; none otherwise, or when it fails.
    fn nearest(&self, ids: &[String]) -> Vec<TextChunk> {
        let Some(embedder) = self.library.embedder() else {
            return Vec::new();
        };
        let vector = match embedder.embed(&[self.question.to_owned()]) {
            Ok(mut vectors) if !vectors.is_empty() => vectors.swap_remove(0),
            Ok(_) => return Vec::new(),
            Err(e) => {
                log::warn!("files: cannot embed a question: {e}");
                return Vec::new();
            }
        };
        self.library
            .store()
            .nearest_chunks(self.owner, ids, embedder.model(), &vector, PASSAGES)
            .map(|found| found.into_iter().map(|(chunk, _)| chunk).collect())
            .unwrap_or_else(|e| {
                log::warn!("files: nearest passages failed: {e}");
                Vec::new()
            })
    }

    /// The passages of the long documents `long` that best answer the question, within the
    /// passages' share of the context.
    fn passages(&self, long: &[&Attachment], prepared: &mut Prepared) {
        let ids: Vec<String> = long.iter().map(|file| file.id.clone()).collect();
        let names: HashMap<&str, &str> = long
            .iter()
            .map(|file| (file.id.as_str(), file.name.as_str()))
            .collect();
        let store = self.library.store();
        let mut chosen: Vec<TextChunk> = store
            .search_chunks(self.owner, &ids, self.question, PASSAGES)
            .unwrap_or_else(|e| {
                log::warn!("files: passage search failed: {e}");
                Vec::new()
            });
        // With an embedding model, the chunks nearest in meaning join those that share words,
        // each once, taking turns so that both kinds of match reach the model.
        for (n, near) in self.nearest(&ids).into_iter().enumerate() {
            if !chosen
                .iter()
                .any(|c| c.file_id == near.file_id && c.n == near.n)
            {
                let at = (2 * n + 1).min(chosen.len());
                chosen.insert(at, near);
            }
        }
        if chosen.is_empty() {
            // Nothing matched the words: the start of each document is the best guess.
            for id in &ids {
                chosen.extend(store.chunks(self.owner, id, 0, 2).unwrap_or_default());
            }
        }
        let mut left = self.share();
        let mut blocks = Vec::new();
        for chunk in chosen.into_iter().take(PASSAGES) {
            let chars = chunk.text.chars().count();
            if chars > left {
                break;
            }
            left -= chars;
            let name = names.get(chunk.file_id.as_str()).copied().unwrap_or("file");
            prepared.cited.push(format!("{name}, {}", chunk.label));
            blocks.push(passage_block(name, &chunk.label, &chunk.text));
        }
        if !blocks.is_empty() {
            prepared.passages = Some(format!("{PASSAGES_PREFIX}\n\n{}", blocks.join("\n\n")));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::common::config::Config;
    use crate::model::embed::HashEmbedder;
    use crate::store::{FileStore, SqliteStore, Upload};

    /// A long document in which one paragraph, and only it, names the cat.
    fn document() -> String {
        (0..400)
            .map(|n| {
                if n == 250 {
                    "The lighthouse keeper's cat is named Marmalade.".to_owned()
                } else {
                    format!("Paragraph {n} tells of the tides, the boats and the gulls.")
                }
            })
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    /// The passages a question gets from the document, with or without an embedding model.
    fn passages_for(question: &str, embed: bool) -> String {
        let store: Arc<dyn FileStore> = Arc::new(SqliteStore::in_memory().unwrap());
        let library = Library::new(store.clone(), &Config::default(), Arc::default());
        if embed {
            library
                .embed_with(Arc::new(HashEmbedder::new("hash")))
                .unwrap();
        }
        let Upload::Stored(file) = library
            .upload("ann", "log.txt", None, &mut document().as_bytes(), None)
            .unwrap()
        else {
            panic!("not stored");
        };
        let ready = library
            .text_state("ann", &file.id, Duration::from_secs(10), None)
            .unwrap();
        assert!(matches!(ready, Some(TextState::Ready { .. })), "{ready:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while embed && !store.unembedded_chunks("hash", 1).unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the chunks were not embedded");
            std::thread::sleep(Duration::from_millis(20));
        }
        let attached = [file.attachment()];
        let cancel = CancelFlag::new();
        TurnFiles {
            library: &library,
            owner: "ann",
            attached: &attached,
            on_path: &attached,
            question,
            vision: false,
            window_tokens: Some(8_192),
            cancel: &cancel,
        }
        .prepare()
        .passages
        .unwrap_or_default()
    }

    #[test]
    fn words_find_their_passage_and_meaning_finds_a_misspelt_one() {
        assert!(passages_for("What is the cat named?", false).contains("Marmalade"));
        // No word of the question is in the document: the start of it is given.
        let unmatched = passages_for("marmalaid", false);
        assert!(!unmatched.contains("Marmalade"), "{unmatched}");
        assert!(unmatched.contains("Paragraph 0 "), "{unmatched}");
        // The embedding model finds the paragraph by its likeness.
        let near = passages_for("marmalaid", true);
        assert!(near.contains("Marmalade"), "{near}");
    }
}
