//! [`FileStore`] for every [`Backend`]: an upload streamed a piece at a time (each piece its
//! own short write, so that neither a transaction nor SQLite's one writer is held while the
//! body trickles in), kept once per owner and SHA-256, and held to the upload's limits as the
//! pieces arrive; a file read back a piece at a time; listing and deleting files; the
//! conversations that use them ([`forget_conversation`]: a conversation's deletion takes the
//! files only it used, in the journal's batch); a blob's text as chunks, searched by words in
//! the dialect's full-text index (scoped to the owner and to each blob asked about) and by
//! vectors (brute force over the few files asked about); and the sweep at start of what a
//! crash left half-written ([`sweep_uploads`]).
//!
//! Depends on: `common::error`, `common::protocol`, `store::files`, `store::plan`, `store::plan::conversations`.

use std::io::{ErrorKind, Read};

use data_encoding::HEXLOWER;
use sha2::{Digest, Sha256};

use super::conversations::count;
use super::{
    Backend, Column, Counters, Db, Param, Row, Table, View, Write, big, small, stored_similarity,
    unix_now, vector_bytes,
};
use crate::common::error::{Error, Result};
use crate::common::protocol::SessionId;
use crate::store::files::{
    BLOB_CHUNK, FileStore, NewChunk, NewFile, StoredFile, TextChunk, TextState, Upload,
    UploadLimits,
};

/// The columns a file is read from, in the order [`file_from_row`] takes them (a macro, so
/// that `concat!` can build the statements with it).
macro_rules! file_columns {
    () => {
        "f.id, f.name, f.content_type, b.size, b.sha256, f.created_at \
         FROM files f JOIN blobs b ON b.key = f.blob_key"
    };
}

const FILE: &str = concat!(
    "SELECT ",
    file_columns!(),
    " WHERE f.id = ?1 AND f.owner = ?2"
);
const LIST_FILES: &str = concat!(
    "SELECT ",
    file_columns!(),
    " WHERE f.owner = ?1 ORDER BY f.created_at DESC, f.key DESC"
);
const CONVERSATION_FILES: &str = concat!(
    "SELECT ",
    file_columns!(),
    " JOIN file_uses u ON u.file_key = f.key WHERE f.owner = ?1 AND u.session_id = ?2 \
     ORDER BY f.created_at DESC, f.key DESC"
);
/// An owner's file: its key, its blob's key and size.
const FILE_BLOB: &str = "SELECT f.key, f.blob_key, b.size FROM files f \
     JOIN blobs b ON b.key = f.blob_key WHERE f.id = ?1 AND f.owner = ?2";
/// The blob of any owner's file `?1`, and the blob's owner.
const BLOB_OF: &str = "SELECT f.blob_key, b.owner FROM files f \
     JOIN blobs b ON b.key = f.blob_key WHERE f.id = ?1";
/// Complete blobs only: one being written counts once it is done.
const USED_BYTES: &str = "SELECT CAST(coalesce(sum(size), 0) AS BIGINT) FROM blobs \
     WHERE owner = ?1 AND sha256 IS NOT NULL";
const NEW_BLOB: &str = "INSERT INTO blobs (owner, created_at) VALUES (?1, ?2) RETURNING key";
const PUT_PIECE: &str = "INSERT INTO blob_chunks (blob_key, n, data) VALUES (?1, ?2, ?3)";
const GROW_BLOB: &str = "UPDATE blobs SET size = size + ?2 WHERE key = ?1";
const BLOB_BY_DIGEST: &str = "SELECT key FROM blobs WHERE owner = ?1 AND sha256 = ?2";
const SEAL_BLOB: &str = "UPDATE blobs SET sha256 = ?2, size = ?3 WHERE key = ?1";
/// A blob with no pieces: an empty file.
const EMPTY_BLOB: &str = "INSERT INTO blobs (owner, sha256, size, created_at) \
     VALUES (?1, ?2, 0, ?3) RETURNING key";
const NEW_FILE: &str = "INSERT INTO files (id, owner, blob_key, name, content_type, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING key";
const USE_NEW_FILE: &str = "INSERT INTO file_uses (file_key, session_id) VALUES (?1, ?2) \
     ON CONFLICT (file_key, session_id) DO NOTHING";
const USE_FILE: &str = "INSERT INTO file_uses (file_key, session_id) \
     SELECT key, CAST(?2 AS TEXT) FROM files WHERE id = ?1 \
     ON CONFLICT (file_key, session_id) DO NOTHING";
/// The first piece of blob `?1` numbered `?2` or more.
const PIECE: &str = "SELECT n, data FROM blob_chunks WHERE blob_key = ?1 AND n >= ?2 \
     ORDER BY n LIMIT 1";
const FORGET_FILE_USES: &str = "DELETE FROM file_uses WHERE file_key = ?1";
const DELETE_FILE: &str = "DELETE FROM files WHERE key = ?1";
const BLOB_HELD: &str = "SELECT 1 FROM files WHERE blob_key = ?1";
/// A blob and everything read from it, in an order that leaves no row without its parent.
const DROP_BLOB: [&str; 5] = [
    "DELETE FROM chunk_vectors WHERE blob_key = ?1",
    "DELETE FROM text_chunks WHERE blob_key = ?1",
    "DELETE FROM blob_text WHERE blob_key = ?1",
    "DELETE FROM blob_chunks WHERE blob_key = ?1",
    "DELETE FROM blobs WHERE key = ?1",
];
const CONVERSATION_OF: &str = "SELECT id, owner FROM sessions WHERE key = ?1";
/// The files of owner `?2` that conversation `?1` uses and no other does, and their blobs.
const USED_ONLY_BY: &str = "SELECT f.key, f.blob_key FROM file_uses u \
     JOIN files f ON f.key = u.file_key WHERE u.session_id = ?1 AND f.owner = ?2 \
     AND NOT EXISTS (SELECT 1 FROM file_uses o WHERE o.file_key = f.key AND o.session_id <> ?1)";
const FORGET_CONVERSATION_USES: &str = "DELETE FROM file_uses WHERE session_id = ?1";
const TEXT_STATE: &str = "SELECT t.state, t.note, t.chunks, t.chars FROM files f \
     LEFT JOIN blob_text t ON t.blob_key = f.blob_key WHERE f.id = ?1 AND f.owner = ?2";
/// A blob's text, dropped before it is stored again.
const DROP_TEXT: [&str; 2] = [
    "DELETE FROM chunk_vectors WHERE blob_key = ?1",
    "DELETE FROM text_chunks WHERE blob_key = ?1",
];
const PUT_TEXT_STATE: &str = "INSERT INTO blob_text (blob_key, state, note, chunks, chars) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (blob_key) DO UPDATE SET state = excluded.state, \
     note = excluded.note, chunks = excluded.chunks, chars = excluded.chars";
const CHUNKS: &str = "SELECT c.n, c.label, c.text FROM files f \
     JOIN text_chunks c ON c.blob_key = f.blob_key \
     WHERE f.id = ?1 AND f.owner = ?2 AND c.n >= ?3 ORDER BY c.n LIMIT ?4";
const CHUNK: &str = "SELECT label, text FROM text_chunks WHERE blob_key = ?1 AND n = ?2";
const OWNED_BLOB: &str = "SELECT blob_key FROM files WHERE id = ?1 AND owner = ?2";
/// Chunks without a `?1` vector, at most `?2`, each under the oldest file over its blob.
const UNEMBEDDED: &str = "SELECT f.id, c.n, c.text FROM text_chunks c \
     JOIN files f ON f.key = (SELECT min(g.key) FROM files g WHERE g.blob_key = c.blob_key) \
     WHERE NOT EXISTS (SELECT 1 FROM chunk_vectors v \
     WHERE v.blob_key = c.blob_key AND v.n = c.n AND v.model = ?1) \
     ORDER BY c.blob_key, c.n LIMIT ?2";
/// Blobs with no text yet, at most `?1`, each as its oldest file (its columns as
/// [`file_from_row`] reads them) and owner.
const PENDING_TEXTS: &str = "SELECT f.id, f.name, f.content_type, b.size, b.sha256, \
     f.created_at, f.owner FROM files f JOIN blobs b ON b.key = f.blob_key \
     WHERE b.sha256 IS NOT NULL \
     AND f.key = (SELECT min(g.key) FROM files g WHERE g.blob_key = f.blob_key) \
     AND NOT EXISTS (SELECT 1 FROM blob_text t WHERE t.blob_key = f.blob_key) \
     ORDER BY f.key LIMIT ?1";
const VECTORS: &str = "SELECT n, vector FROM chunk_vectors WHERE blob_key = ?1 AND model = ?2";

impl<B: Backend> FileStore for B {
    fn upload(
        &self,
        file: NewFile<'_>,
        body: &mut dyn Read,
        limits: UploadLimits,
    ) -> Result<Upload> {
        let mut upload = Uploading::default();
        let used = match limits.quota {
            Some(_) => self.used_bytes(file.owner)?,
            None => 0,
        };
        let mut piece = vec![0; BLOB_CHUNK];
        loop {
            let read = match fill(body, &mut piece) {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) => {
                    discard(self, upload.blob);
                    return Err(Error::io("read an upload", e));
                }
            };
            upload.size += read as u64;
            if upload.size > limits.max_bytes {
                discard(self, upload.blob);
                return Ok(Upload::TooLarge);
            }
            upload.hasher.update(&piece[..read]);
            if upload.refused {
                continue;
            }
            // Past the quota nothing more is kept; the rest is only hashed, since these may be
            // bytes the owner has already (which cost nothing more).
            if limits
                .quota
                .is_some_and(|quota| used.saturating_add(upload.size) > quota)
            {
                upload.refused = true;
                discard(self, upload.blob.take());
                continue;
            }
            if let Err(e) = put_piece(self, file.owner, &mut upload, &piece[..read]) {
                discard(self, upload.blob);
                return Err(e);
            }
        }
        let digest = HEXLOWER.encode(&std::mem::take(&mut upload.hasher).finalize());
        let finished = finish(self, file, &upload, &digest, limits);
        match finished {
            Ok(Some(stored)) => Ok(Upload::Stored(stored)),
            Ok(None) => Ok(Upload::OverQuota),
            Err(e) => {
                discard(self, upload.blob);
                Err(e)
            }
        }
    }

    fn file(&self, owner: &str, id: &str) -> Result<Option<StoredFile>> {
        self.read("read a file", View::Statement, &mut |db| {
            db.row(FILE, &[Param::Text(id), Param::Text(owner)], file_from_row)
        })
    }

    fn files(&self, owner: &str, ids: &[String]) -> Result<Vec<StoredFile>> {
        self.read("read files", View::Snapshot, &mut |db| {
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                let params = [Param::Text(id), Param::Text(owner)];
                found.extend(db.row(FILE, &params, file_from_row)?);
            }
            Ok(found)
        })
    }

    fn list_files(&self, owner: &str, conversation: Option<&SessionId>) -> Result<Vec<StoredFile>> {
        self.read(
            "list files",
            View::Statement,
            &mut |db| match conversation {
                Some(conversation) => {
                    let params = [Param::Text(owner), Param::Text(conversation.as_str())];
                    db.rows(CONVERSATION_FILES, &params, file_from_row)
                }
                None => db.rows(LIST_FILES, &[Param::Text(owner)], file_from_row),
            },
        )
    }

    fn read_bytes(
        &self,
        owner: &str,
        id: &str,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<bool> {
        let found = self.read("read a file", View::Statement, &mut |db| {
            db.row(FILE_BLOB, &[Param::Text(id), Param::Text(owner)], |row| {
                Ok((row.int(1)?, small(row.int(2)?)))
            })
        })?;
        let Some((blob, size)) = found else {
            return Ok(false);
        };
        // One piece per read, and the connection is back in the pool while `sink` sends it.
        let (mut next, mut sent) = (0, 0);
        loop {
            let piece = self.read("read a file", View::Statement, &mut |db| {
                db.row(PIECE, &[Param::Int(blob), Param::Int(next)], |row| {
                    Ok((row.int(0)?, row.bytes(1)?.to_vec()))
                })
            })?;
            let Some((n, bytes)) = piece else {
                break;
            };
            sink(&bytes).map_err(|e| Error::io("send a file", e))?;
            sent += bytes.len() as u64;
            next = n + 1;
        }
        if sent != size {
            return Err(Error::store(format!(
                "file {id} was deleted while it was read ({sent} of {size} bytes sent)"
            )));
        }
        Ok(true)
    }

    fn delete_file(&self, owner: &str, id: &str) -> Result<bool> {
        self.write("delete a file", Write::Delete, &mut |db| {
            let params = [Param::Text(id), Param::Text(owner)];
            let Some((key, blob)) =
                db.row(FILE_BLOB, &params, |row| Ok((row.int(0)?, row.int(1)?)))?
            else {
                return Ok(false);
            };
            db.run(FORGET_FILE_USES, &[Param::Int(key)])?;
            db.run(DELETE_FILE, &[Param::Int(key)])?;
            drop_unheld_blob(db, blob)?;
            Ok(true)
        })
    }

    fn used_bytes(&self, owner: &str) -> Result<u64> {
        self.read("count a principal's files", View::Statement, &mut |db| {
            used_bytes(db, owner)
        })
    }

    fn use_files(&self, conversation: &SessionId, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(
            "record the files a conversation uses",
            Write::Upsert,
            &mut |db| {
                for id in ids {
                    db.run(
                        USE_FILE,
                        &[Param::Text(id), Param::Text(conversation.as_str())],
                    )?;
                }
                Ok(())
            },
        )
    }

    fn text_state(&self, owner: &str, id: &str) -> Result<Option<TextState>> {
        self.read("read a file's text", View::Statement, &mut |db| {
            db.row(TEXT_STATE, &[Param::Text(id), Param::Text(owner)], |row| {
                Ok(match row.opt_text(0)?.as_deref() {
                    Some("ready") => TextState::Ready {
                        chunks: u32::try_from(row.int(2)?).unwrap_or(u32::MAX),
                        chars: small(row.int(3)?),
                    },
                    Some("failed") => TextState::Failed(row.text(1)?),
                    _ => TextState::Pending,
                })
            })
        })
    }

    fn put_text(&self, id: &str, chunks: &[NewChunk], failure: Option<&str>) -> Result<()> {
        let kept = if failure.is_some() { &[][..] } else { chunks };
        let numbers: Vec<i64> = (0..kept.len() as i64).collect();
        let labels: Vec<&str> = kept.iter().map(|chunk| chunk.label.as_str()).collect();
        let texts: Vec<&str> = kept.iter().map(|chunk| chunk.text.as_str()).collect();
        let chars: u64 = kept
            .iter()
            .map(|chunk| chunk.text.chars().count() as u64)
            .sum();
        let state = if failure.is_some() { "failed" } else { "ready" };
        self.write("store a file's text", Write::Upsert, &mut |db| {
            let Some((blob, owner)) = db.row(BLOB_OF, &[Param::Text(id)], |row| {
                Ok((row.int(0)?, row.text(1)?))
            })?
            else {
                // Deleted meanwhile.
                return Ok(());
            };
            for statement in DROP_TEXT {
                db.run(statement, &[Param::Int(blob)])?;
            }
            let table = Table {
                rows: kept.len(),
                columns: vec![
                    Column::Same(Param::Int(blob)),
                    Column::Ints(&numbers),
                    Column::Same(Param::Text(&owner)),
                    Column::Texts(&labels),
                    Column::Texts(&texts),
                ],
            };
            if table.rows > 0 {
                db.write_table(B::SQL.put_chunks, &table)?;
            }
            let text_state = [
                Param::Int(blob),
                Param::Text(state),
                Param::OptText(failure),
                Param::Int(big(kept.len() as u64)),
                Param::Int(big(chars)),
            ];
            db.run(PUT_TEXT_STATE, &text_state)?;
            Ok(())
        })
    }

    fn pending_texts(&self, limit: usize) -> Result<Vec<(String, StoredFile)>> {
        self.read("find files to read", View::Statement, &mut |db| {
            db.rows(PENDING_TEXTS, &[Param::Int(count(limit))], |row| {
                Ok((row.text(6)?, file_from_row(row)?))
            })
        })
    }

    fn chunks(&self, owner: &str, id: &str, from: u32, limit: u32) -> Result<Vec<TextChunk>> {
        self.read("read a file's text", View::Statement, &mut |db| {
            let params = [
                Param::Text(id),
                Param::Text(owner),
                Param::Int(i64::from(from)),
                Param::Int(i64::from(limit)),
            ];
            db.rows(CHUNKS, &params, |row| {
                Ok(TextChunk {
                    file_id: id.to_owned(),
                    n: chunk_number(row.int(0)?),
                    label: row.text(1)?,
                    text: row.text(2)?,
                })
            })
        })
    }

    fn search_chunks(
        &self,
        owner: &str,
        ids: &[String],
        query: &str,
        limit: usize,
    ) -> Result<Vec<TextChunk>> {
        let queries = (B::SQL.search_queries)(query);
        if queries.is_empty() || ids.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let Some(_turn) = Counters::of(self).search_turn(owner) else {
            return Ok(Vec::new());
        };
        let owner_term = (B::SQL.owner_term)(owner);
        self.read("search files", View::Search, &mut |db| {
            let blobs = owned_blobs(db, owner, ids)?;
            let mut found: Vec<TextChunk> = Vec::new();
            // Every word first, then any of them, as the graph's search: each pass ranks the
            // chunks of every blob together, and fills what the passes before left.
            'passes: for words in &queries {
                if found.len() >= limit {
                    break;
                }
                let mut pass: Vec<(f64, usize, TextChunk)> = Vec::new();
                for (at, (blob, id)) in blobs.iter().enumerate() {
                    if !db.time_left()? {
                        break 'passes;
                    }
                    let params = [
                        Param::Int(*blob),
                        Param::Text(words),
                        Param::Text(&owner_term),
                        Param::Int(count(limit)),
                    ];
                    let rows = db.rows(B::SQL.search_chunks, &params, |row| {
                        let chunk = TextChunk {
                            file_id: (*id).to_owned(),
                            n: chunk_number(row.int(0)?),
                            label: row.text(1)?,
                            text: row.text(2)?,
                        };
                        Ok((row.real(3)?, at, chunk))
                    });
                    match rows {
                        Ok(rows) => pass.extend(rows.into_iter().filter(|(_, _, chunk)| {
                            !found
                                .iter()
                                .any(|known| known.file_id == chunk.file_id && known.n == chunk.n)
                        })),
                        Err(e) if B::out_of_time(&e) => {
                            log::debug!("files: a search ran out of time");
                            take_best(&mut found, pass, limit);
                            break 'passes;
                        }
                        Err(e) => return Err(e),
                    }
                }
                take_best(&mut found, pass, limit);
            }
            Ok(found)
        })
    }

    fn unembedded_chunks(&self, model: &str, limit: usize) -> Result<Vec<(String, u32, String)>> {
        self.read("find chunks to embed", View::Statement, &mut |db| {
            let params = [Param::Text(model), Param::Int(count(limit))];
            db.rows(UNEMBEDDED, &params, |row| {
                Ok((row.text(0)?, chunk_number(row.int(1)?), row.text(2)?))
            })
        })
    }

    fn store_chunk_vectors(&self, model: &str, vectors: &[(String, u32, Vec<f32>)]) -> Result<()> {
        if vectors.is_empty() {
            return Ok(());
        }
        self.write("store chunk vectors", Write::Replace, &mut |db| {
            // Each file's blob once; two files over one blob name the same chunks, and the
            // last vector given for a chunk is kept.
            let mut blobs: Vec<(&str, Option<i64>)> = Vec::new();
            let mut rows: Vec<(i64, i64, Vec<u8>)> = Vec::new();
            for (id, n, vector) in vectors {
                let blob = match blobs.iter().find(|(known, _)| known == id) {
                    Some((_, blob)) => *blob,
                    None => {
                        let blob = db.row(BLOB_OF, &[Param::Text(id)], |row| row.int(0))?;
                        blobs.push((id, blob));
                        blob
                    }
                };
                let Some(blob) = blob else {
                    continue;
                };
                let n = i64::from(*n);
                rows.retain(|(b, m, _)| (*b, *m) != (blob, n));
                rows.push((blob, n, vector_bytes(vector)));
            }
            let keys: Vec<i64> = rows.iter().map(|(blob, _, _)| *blob).collect();
            let numbers: Vec<i64> = rows.iter().map(|(_, n, _)| *n).collect();
            let bytes: Vec<Vec<u8>> = rows.into_iter().map(|(_, _, bytes)| bytes).collect();
            let table = Table {
                rows: keys.len(),
                columns: vec![
                    Column::Ints(&keys),
                    Column::Ints(&numbers),
                    Column::Same(Param::Text(model)),
                    Column::Blobs(&bytes),
                ],
            };
            if table.rows > 0 {
                db.write_table(B::SQL.put_chunk_vectors, &table)?;
            }
            Ok(())
        })
    }

    fn nearest_chunks(
        &self,
        owner: &str,
        ids: &[String],
        model: &str,
        vector: &[f32],
        limit: usize,
    ) -> Result<Vec<(TextChunk, f32)>> {
        if ids.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        self.read("search files by meaning", View::Snapshot, &mut |db| {
            let blobs = owned_blobs(db, owner, ids)?;
            // (similarity, the blob's place, chunk number): brute force, since the files asked
            // about are a few of one conversation.
            let mut scored: Vec<(f32, usize, i64)> = Vec::new();
            for (at, (blob, _)) in blobs.iter().enumerate() {
                let params = [Param::Int(*blob), Param::Text(model)];
                for (n, similarity) in db.rows(VECTORS, &params, |row| {
                    Ok((row.int(0)?, stored_similarity(vector, row.bytes(1)?)))
                })? {
                    if let Some(similarity) = similarity {
                        scored.push((similarity, at, n));
                    }
                }
            }
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            scored.truncate(limit);
            let mut found = Vec::with_capacity(scored.len());
            for (similarity, at, n) in scored {
                let (blob, id) = blobs[at];
                let chunk = db.row(CHUNK, &[Param::Int(blob), Param::Int(n)], |row| {
                    Ok(TextChunk {
                        file_id: id.to_owned(),
                        n: chunk_number(n),
                        label: row.text(0)?,
                        text: row.text(1)?,
                    })
                })?;
                found.extend(chunk.map(|chunk| (chunk, similarity)));
            }
            Ok(found)
        })
    }
}

/// Where an upload stands between its pieces.
#[derive(Default)]
struct Uploading {
    /// The blob being written: `None` before the first piece, and once the quota refused it.
    blob: Option<i64>,
    /// Pieces written.
    pieces: i64,
    /// Bytes read.
    size: u64,
    /// The bytes read so far.
    hasher: Sha256,
    /// True once the quota refused the upload: the rest is hashed and not kept.
    refused: bool,
}

/// Writes one piece of an upload, creating its blob with the first: its own short write.
fn put_piece<B: Backend>(
    store: &B,
    owner: &str,
    upload: &mut Uploading,
    piece: &[u8],
) -> Result<()> {
    let now = unix_now();
    let (known, n) = (upload.blob, upload.pieces);
    let key = store.write("store an upload", Write::Insert, &mut |db| {
        let key = match known {
            Some(key) => Some(key),
            None => db.row(NEW_BLOB, &[Param::Text(owner), Param::Int(now)], |row| {
                row.int(0)
            })?,
        };
        let Some(key) = key else {
            return Ok(None);
        };
        let bytes = Param::Bytes(piece.into());
        db.run(PUT_PIECE, &[Param::Int(key), Param::Int(n), bytes])?;
        db.run(
            GROW_BLOB,
            &[Param::Int(key), Param::Int(piece.len() as i64)],
        )?;
        Ok(Some(key))
    })?;
    upload.blob = Some(key.ok_or_else(|| Error::store("a new blob got no key"))?);
    upload.pieces += 1;
    Ok(())
}

/// Ends an upload of bytes whose SHA-256 is `digest`: the blob the owner holds already (the
/// new one dropped), or the new one sealed, and a file row over it; `None` when the quota
/// refuses it.
fn finish<B: Backend>(
    store: &B,
    file: NewFile<'_>,
    upload: &Uploading,
    digest: &str,
    limits: UploadLimits,
) -> Result<Option<StoredFile>> {
    let id = new_file_id()?;
    let now = unix_now();
    let owner = file.owner;
    let lock = format!("{owner}\n{digest}");
    let size = big(upload.size);
    let stored = store.write("store an upload", Write::Insert, &mut |db| {
        db.row(B::SQL.lock_digest, &[Param::Text(&lock)], |_| Ok(()))?;
        let known = [Param::Text(owner), Param::Text(digest)];
        let blob = match db.row(BLOB_BY_DIGEST, &known, |row| row.int(0))? {
            Some(kept) => {
                if let Some(partial) = upload.blob {
                    drop_blob(db, partial)?;
                }
                kept
            }
            None if upload.refused => return Ok(None),
            None => {
                let used = used_bytes(db, owner)?;
                if limits
                    .quota
                    .is_some_and(|quota| used.saturating_add(upload.size) > quota)
                {
                    if let Some(partial) = upload.blob {
                        drop_blob(db, partial)?;
                    }
                    return Ok(None);
                }
                match upload.blob {
                    Some(partial) => {
                        let seal = [Param::Int(partial), Param::Text(digest), Param::Int(size)];
                        db.run(SEAL_BLOB, &seal)?;
                        partial
                    }
                    None => {
                        let empty = [Param::Text(owner), Param::Text(digest), Param::Int(now)];
                        match db.row(EMPTY_BLOB, &empty, |row| row.int(0))? {
                            Some(key) => key,
                            None => return Ok(None),
                        }
                    }
                }
            }
        };
        let row = [
            Param::Text(&id),
            Param::Text(owner),
            Param::Int(blob),
            Param::Text(file.name),
            Param::Text(file.content_type),
            Param::Int(now),
        ];
        let key = db.row(NEW_FILE, &row, |row| row.int(0))?;
        if let (Some(key), Some(conversation)) = (key, file.conversation) {
            let usage = [Param::Int(key), Param::Text(conversation.as_str())];
            db.run(USE_NEW_FILE, &usage)?;
        }
        Ok(Some(()))
    })?;
    Ok(stored.map(|()| StoredFile {
        id,
        name: file.name.to_owned(),
        content_type: file.content_type.to_owned(),
        size: upload.size,
        sha256: digest.to_owned(),
        created_at: now,
    }))
}

/// Deletes the half-written `blob`, if any; a failure is logged, and the sweep at the next
/// start removes it.
fn discard<B: Backend>(store: &B, blob: Option<i64>) {
    let Some(blob) = blob else {
        return;
    };
    if let Err(e) = store.write("discard an upload", Write::Delete, &mut |db| {
        drop_blob(db, blob)
    }) {
        log::warn!("files: an unfinished upload stays until the next start: {e}");
    }
}

/// Removes the blobs that uploads left half-written when their writer stopped (a crash, a
/// kill): every one in SQLite, those of writers that are gone in PostgreSQL
/// ([`super::Dialect::stale_blobs`]). Both stores run it as they open.
///
/// # Errors
///
/// The store's.
pub(crate) fn sweep_uploads<B: Backend>(store: &B) -> Result<()> {
    let stale = store.read("find unfinished uploads", View::Statement, &mut |db| {
        db.rows(B::SQL.stale_blobs, &[], |row| row.int(0))
    })?;
    for blob in &stale {
        store.write("remove an unfinished upload", Write::Delete, &mut |db| {
            drop_blob(db, *blob)
        })?;
    }
    if !stale.is_empty() {
        log::info!(
            "store: removed {} upload(s) a stopped server left unfinished",
            stale.len()
        );
    }
    Ok(())
}

/// Deletes what conversation `key` alone used among its owner's files, with their blobs when
/// no other file holds them, and its record of the files it used. Runs in the journal's
/// batch, before the conversation's own rows go (it reads the conversation's id from them).
///
/// # Errors
///
/// The database's.
pub(super) fn forget_conversation<E>(db: &mut dyn Db<Error = E>, key: i64) -> Result<(), E> {
    let Some((id, owner)) = db.row(CONVERSATION_OF, &[Param::Int(key)], |row| {
        Ok((row.text(0)?, row.text(1)?))
    })?
    else {
        return Ok(());
    };
    let used = [Param::Text(&id), Param::Text(&owner)];
    let doomed = db.rows(USED_ONLY_BY, &used, |row| Ok((row.int(0)?, row.int(1)?)))?;
    db.run(FORGET_CONVERSATION_USES, &[Param::Text(&id)])?;
    let mut blobs: Vec<i64> = Vec::new();
    for (file, blob) in doomed {
        db.run(FORGET_FILE_USES, &[Param::Int(file)])?;
        db.run(DELETE_FILE, &[Param::Int(file)])?;
        if !blobs.contains(&blob) {
            blobs.push(blob);
        }
    }
    for blob in blobs {
        drop_unheld_blob(db, blob)?;
    }
    Ok(())
}

/// Deletes blob `blob` and everything read from it, when no file holds it.
fn drop_unheld_blob<E>(db: &mut dyn Db<Error = E>, blob: i64) -> Result<(), E> {
    if db
        .row(BLOB_HELD, &[Param::Int(blob)], |_| Ok(()))?
        .is_none()
    {
        drop_blob(db, blob)?;
    }
    Ok(())
}

/// Deletes blob `blob`, its pieces and its text.
fn drop_blob<E>(db: &mut dyn Db<Error = E>, blob: i64) -> Result<(), E> {
    for statement in DROP_BLOB {
        db.run(statement, &[Param::Int(blob)])?;
    }
    Ok(())
}

/// The bytes `owner`'s complete blobs hold.
fn used_bytes<E>(db: &mut dyn Db<Error = E>, owner: &str) -> Result<u64, E> {
    let used = db.row(USED_BYTES, &[Param::Text(owner)], |row| row.int(0))?;
    Ok(small(used.unwrap_or(0)))
}

/// The blobs of `owner`'s files among `ids`, each once, in the order asked, with the first id
/// that named it; other owners' ids are left out.
fn owned_blobs<'i, E>(
    db: &mut dyn Db<Error = E>,
    owner: &str,
    ids: &'i [String],
) -> Result<Vec<(i64, &'i str)>, E> {
    let mut blobs: Vec<(i64, &str)> = Vec::new();
    for id in ids {
        let params = [Param::Text(id), Param::Text(owner)];
        if let Some(blob) = db.row(OWNED_BLOB, &params, |row| row.int(0))?
            && !blobs.iter().any(|(known, _)| *known == blob)
        {
            blobs.push((blob, id));
        }
    }
    Ok(blobs)
}

/// Adds the best of `pass` (score, the blob's place, chunk) to `found`, best first, until it
/// holds `limit`.
fn take_best(found: &mut Vec<TextChunk>, mut pass: Vec<(f64, usize, TextChunk)>, limit: usize) {
    pass.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.n.cmp(&b.2.n))
    });
    let room = limit.saturating_sub(found.len());
    found.extend(pass.into_iter().take(room).map(|(_, _, chunk)| chunk));
}

/// A file as [`file_columns`] reads it.
fn file_from_row<E>(row: &dyn Row<Error = E>) -> Result<StoredFile, E> {
    Ok(StoredFile {
        id: row.text(0)?,
        name: row.text(1)?,
        content_type: row.text(2)?,
        size: small(row.int(3)?),
        sha256: row.text(4)?,
        created_at: row.int(5)?,
    })
}

/// A chunk's number as stored.
fn chunk_number(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A new file's id: 32 hex characters from the OS's cryptographic random source.
fn new_file_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::store(format!("no file id could be drawn: {e}")))?;
    Ok(HEXLOWER.encode(&bytes))
}

/// Reads from `body` until `piece` is full or the body ends; how many bytes it holds.
fn fill(body: &mut dyn Read, piece: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < piece.len() {
        match body.read(&mut piece[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
