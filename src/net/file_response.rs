//! A stored file as an HTTP answer (`GET /api/files/{id}`, PROTOCOL.md section 10): the
//! headers that keep a file a user uploaded from ever running in the page's origin, and its
//! bytes streamed from the store to the socket a piece at a time, never gathered.
//!
//! - `Content-Type` as stored: decided by the file's bytes when it was uploaded, not its name.
//! - `Content-Disposition: attachment`, so that a browser saves it rather than shows it; only
//!   the images `files::is_inline_image` names (PNG, JPEG, GIF, WebP, checked by their bytes)
//!   are `inline`, for the page's thumbnails. An SVG or an HTML file is never inline. The name
//!   goes both as a plain ASCII `filename` and as RFC 8187's `filename*` (UTF-8,
//!   percent-encoded), so that no name can break out of the header.
//! - `X-Content-Type-Options: nosniff`: the browser takes the stored type and never guesses.
//! - `Content-Security-Policy: sandbox`: were a browser to render it anyway, it would be a
//!   unique origin without scripts, forms or plugins.
//! - `Cross-Origin-Resource-Policy: same-origin`: no other site may embed it.
//! - `Cache-Control: private`: no shared cache keeps it.
//!
//! Depends on: `files`, `net::http`, `store`.

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::files::is_inline_image;
use crate::net::http::{Body, Response, StreamBody, Streamed};
use crate::store::{FileStore, StoredFile};

/// Headers every stored file is served with.
pub const FILE_HEADERS: &[(&str, &str)] = &[
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "sandbox"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
];

/// `Cache-Control` of a stored file: the caller's own, kept by no shared cache.
const PRIVATE: &str = "private";

/// The type of a file stored without one.
const UNKNOWN_TYPE: &str = "application/octet-stream";

/// What RFC 8187 leaves as it is in an extended value (`attr-char`); every other byte is
/// percent-encoded.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// The answer to a `GET` (or `HEAD`) of `owner`'s `file`, whose bytes come from `store` as they
/// are written.
pub fn response(store: Arc<dyn FileStore>, owner: &str, file: &StoredFile) -> Response {
    let content_type = if file.content_type.trim().is_empty() {
        UNKNOWN_TYPE.to_owned()
    } else {
        file.content_type.clone()
    };
    let inline = is_inline_image(&content_type);
    let bytes = FileBytes {
        store,
        owner: owner.to_owned(),
        id: file.id.clone(),
        size: usize::try_from(file.size).unwrap_or(usize::MAX),
    };
    Response {
        extra_headers: FILE_HEADERS,
        cache_control: PRIVATE,
        body: Body::Stream(Box::new(Streamed {
            content_type,
            headers: vec![(
                "Content-Disposition",
                content_disposition(&file.name, inline),
            )],
            source: Arc::new(bytes),
        })),
        ..Response::text(200, "OK", "")
    }
}

/// A `Content-Disposition` value for a file named `name`: `attachment` (or `inline`), with the
/// name as an ASCII `filename` (anything else, and quotes, backslashes and control characters,
/// as `_`) and as a UTF-8 `filename*`.
pub fn content_disposition(name: &str, inline: bool) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '"' | '\\') || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let clean: String = name.chars().filter(|c| !c.is_control()).collect();
    format!(
        "{}; filename=\"{ascii}\"; filename*=UTF-8''{}",
        if inline { "inline" } else { "attachment" },
        utf8_percent_encode(&clean, ATTR_CHAR)
    )
}

/// A stored file's bytes, read from the store as they are written to the socket.
struct FileBytes {
    store: Arc<dyn FileStore>,
    owner: String,
    id: String,
    /// Its size as stored: the `Content-Length` sent before the first byte.
    size: usize,
}

impl fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileBytes")
            .field("id", &self.id)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl StreamBody for FileBytes {
    fn size(&self) -> usize {
        self.size
    }

    /// Writes exactly `size` bytes, or fails: a file deleted meanwhile, or a store that
    /// yields another number of bytes than it said, ends the answer short, never past its
    /// length.
    fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut written = 0usize;
        let found = self
            .store
            .read_bytes(&self.owner, &self.id, &mut |piece| {
                written = written.saturating_add(piece.len());
                if written > self.size {
                    return Err(io::Error::other("the file has more bytes than its size"));
                }
                out.write_all(piece)
            })
            .map_err(|e| io::Error::other(e.to_string()))?;
        if !found {
            return Err(io::Error::other("the file was deleted meanwhile"));
        }
        if written != self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file has fewer bytes than its size",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disposition_names_the_file_safely_in_ascii_and_in_utf_8() {
        assert_eq!(
            content_disposition("report.pdf", false),
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        assert_eq!(
            content_disposition("café au lait.png", true),
            "inline; filename=\"caf_ au lait.png\"; filename*=UTF-8''caf%C3%A9%20au%20lait.png"
        );
        let hostile = content_disposition("a\"b\\c\r\nX-Evil: 1;.txt", false);
        assert_eq!(
            hostile,
            "attachment; filename=\"a_b_c__X-Evil: 1;.txt\"; \
             filename*=UTF-8''a%22b%5CcX-Evil%3A%201%3B.txt"
        );
        assert!(!hostile.chars().any(char::is_control));
    }
}
