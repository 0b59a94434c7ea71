//! The file store's tests, each body run against both stores as the other store tests are:
//! uploads of every size (one piece, several, a body that reads a little at a time), bytes
//! kept once per owner, the upload limits and the size cap, reading back, another owner's
//! view, deletion, a conversation's deletion taking the files only it used, text and its
//! searches, and what a crash leaves half-written, removed at the next start.
//!
//! Depends on: `common::error`, `common::protocol`, `store`, `store::files`, `store::postgres`, `store::sqlite`, `store::tests`.

use std::io::Read;

use sha2::Digest;

use super::{TestStore, cluster, create, id, postgres, temp_dir};
use crate::common::protocol::SessionId;
use crate::store::files::{
    BLOB_CHUNK, FileStore, NewChunk, NewFile, StoredFile, TextChunk, TextState, Upload,
    UploadLimits,
};
use crate::store::{ConversationStore, PostgresStore, SqliteStore, WriteOp};

/// Limits that take anything.
const OPEN: UploadLimits = UploadLimits {
    max_bytes: u64::MAX,
    quota: None,
};

/// `len` bytes that look random, the same for the same `seed` (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A body that hands out at most `step` bytes per read, then fails with `fail` if given.
struct Trickle<'a> {
    bytes: &'a [u8],
    step: usize,
    fail: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.bytes.is_empty() && self.fail {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the client went away",
            ));
        }
        let n = self.step.min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

fn new_file<'a>(owner: &'a str, name: &'a str) -> NewFile<'a> {
    NewFile {
        owner,
        name,
        content_type: "application/octet-stream",
        conversation: None,
    }
}

/// Uploads `bytes` as `owner`'s file `name` within `limits`.
fn put<S: TestStore>(
    store: &S,
    owner: &str,
    name: &str,
    bytes: &[u8],
    limits: UploadLimits,
) -> Upload {
    store
        .upload(new_file(owner, name), &mut &bytes[..], limits)
        .unwrap()
}

/// Uploads `bytes` with no limits, and the file stored.
fn stored<S: TestStore>(store: &S, owner: &str, name: &str, bytes: &[u8]) -> StoredFile {
    match put(store, owner, name, bytes, OPEN) {
        Upload::Stored(file) => file,
        other => panic!("{name} was not stored: {other:?}"),
    }
}

/// The bytes of `owner`'s file `id`, read back a piece at a time; `None` when absent.
fn bytes_of<S: TestStore>(store: &S, owner: &str, id: &str) -> Option<Vec<u8>> {
    let mut read = Vec::new();
    let mut pieces = 0;
    let found = store
        .read_bytes(owner, id, &mut |piece| {
            assert!(piece.len() <= BLOB_CHUNK);
            pieces += 1;
            read.extend_from_slice(piece);
            Ok(())
        })
        .unwrap();
    found.then_some(read)
}

fn ids(files: &[StoredFile]) -> Vec<&str> {
    files.iter().map(|file| file.id.as_str()).collect()
}

/// Uploads of every size come back byte for byte; the same bytes twice are one blob (counted
/// once) under two files; another owner sees none of it; a deletion keeps a blob another file
/// still holds.
fn uploads_round_trip_once_per_owner<S: TestStore>(store: S) {
    let small = b"hello, files".to_vec();
    let one_piece = noise(1, BLOB_CHUNK);
    let several = noise(2, 4 * BLOB_CHUNK + 12_345);
    let a = stored(&store, "ann", "a.txt", &small);
    assert_eq!(a.id.len(), 32);
    assert!(a.id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!((a.name.as_str(), a.size), ("a.txt", small.len() as u64));
    let digest = data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(&small));
    assert_eq!(a.sha256, digest);
    let b = stored(&store, "ann", "b.bin", &one_piece);
    // A body that reads a little at a time makes the same pieces.
    let c = store
        .upload(
            new_file("ann", "c.bin"),
            &mut Trickle {
                bytes: &several,
                step: 7_000,
                fail: false,
            },
            OPEN,
        )
        .unwrap();
    let Upload::Stored(c) = c else {
        panic!("{c:?}")
    };
    assert_eq!(store.rows("blob_chunks"), 1 + 1 + 5);
    assert_eq!(bytes_of(&store, "ann", &a.id), Some(small.clone()));
    assert_eq!(bytes_of(&store, "ann", &b.id), Some(one_piece.clone()));
    assert_eq!(bytes_of(&store, "ann", &c.id), Some(several.clone()));
    let used = (small.len() + one_piece.len() + several.len()) as u64;
    assert_eq!(store.used_bytes("ann").unwrap(), used);

    // The same bytes again: a second file over the first one's blob.
    let again = stored(&store, "ann", "copy.bin", &several);
    assert_ne!(again.id, c.id);
    assert_eq!(
        (again.sha256.as_str(), again.size),
        (c.sha256.as_str(), c.size)
    );
    assert_eq!(store.rows("blobs"), 3);
    assert_eq!(store.rows("files"), 4);
    assert_eq!(store.used_bytes("ann").unwrap(), used);
    assert_eq!(bytes_of(&store, "ann", &again.id), Some(several.clone()));
    // Another owner's copy is its own.
    let bobs = stored(&store, "bob", "mine.bin", &several);
    assert_eq!(store.rows("blobs"), 4);
    assert_eq!(store.used_bytes("bob").unwrap(), several.len() as u64);

    // Newest first; in the order asked; another owner's ids left out.
    assert_eq!(
        ids(&store.list_files("ann", None).unwrap()),
        [&again.id, &c.id, &b.id, &a.id]
    );
    let asked = vec![
        b.id.clone(),
        bobs.id.clone(),
        a.id.clone(),
        "nope".to_owned(),
    ];
    assert_eq!(ids(&store.files("ann", &asked).unwrap()), [&b.id, &a.id]);
    assert_eq!(store.file("ann", &a.id).unwrap(), Some(a.clone()));
    assert_eq!(a.attachment().size, small.len() as u64);

    // Another owner gets nothing of ann's, everywhere.
    assert_eq!(store.file("bob", &a.id).unwrap(), None);
    assert_eq!(bytes_of(&store, "bob", &a.id), None);
    assert!(!store.delete_file("bob", &a.id).unwrap());
    assert_eq!(store.text_state("bob", &a.id).unwrap(), None);
    assert_eq!(ids(&store.list_files("bob", None).unwrap()), [&bobs.id]);

    // A deleted file keeps the blob another file holds; the last one takes it.
    assert!(store.delete_file("ann", &c.id).unwrap());
    assert!(!store.delete_file("ann", &c.id).unwrap());
    assert_eq!(store.file("ann", &c.id).unwrap(), None);
    assert_eq!(bytes_of(&store, "ann", &again.id), Some(several.clone()));
    assert_eq!(store.used_bytes("ann").unwrap(), used);
    assert!(store.delete_file("ann", &again.id).unwrap());
    assert_eq!(
        store.used_bytes("ann").unwrap(),
        used - several.len() as u64
    );
    assert_eq!(store.rows("blobs"), 3);
    assert_eq!(store.rows("blob_chunks"), 1 + 1 + 5);
    // An empty file is a file too.
    let empty = stored(&store, "ann", "empty", b"");
    assert_eq!(empty.size, 0);
    assert_eq!(bytes_of(&store, "ann", &empty.id), Some(Vec::new()));
    assert_eq!(
        stored(&store, "ann", "empty again", b"").sha256,
        empty.sha256
    );
}

/// A megabyte and more of random bytes comes back as it went in, in pieces of at most
/// [`BLOB_CHUNK`].
fn a_large_file_reads_back_in_pieces<S: TestStore>(store: S) {
    let bytes = noise(7, (1 << 20) + 4_097);
    let file = stored(&store, "ann", "big.bin", &bytes);
    let mut pieces = Vec::new();
    assert!(
        store
            .read_bytes("ann", &file.id, &mut |piece| {
                pieces.push(piece.to_vec());
                Ok(())
            })
            .unwrap()
    );
    assert_eq!(pieces.len(), 5);
    assert!(pieces[..4].iter().all(|piece| piece.len() == BLOB_CHUNK));
    assert_eq!(pieces.concat(), bytes);
    // A sink that fails stops the read, as an error of its own.
    let failed = store
        .read_bytes("ann", &file.id, &mut |_| {
            Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone"))
        })
        .unwrap_err();
    assert!(failed.to_string().contains("gone"), "{failed}");
}

/// Past `max_bytes` by one byte, past the quota, or with a body that fails: nothing is kept.
/// Bytes the owner has already cost nothing more, even at its quota.
fn limits_keep_nothing_of_what_they_refuse<S: TestStore>(store: S) {
    let max = 3 * BLOB_CHUNK as u64 + 10;
    let limits = UploadLimits {
        max_bytes: max,
        quota: None,
    };
    let exactly = noise(3, max as usize);
    let over = noise(4, max as usize + 1);
    assert!(matches!(
        put(&store, "ann", "max", &exactly, limits),
        Upload::Stored(_)
    ));
    assert_eq!(put(&store, "ann", "over", &over, limits), Upload::TooLarge);
    assert_eq!((store.rows("blobs"), store.rows("blob_chunks")), (1, 4));
    assert_eq!(store.used_bytes("ann").unwrap(), max);

    // A quota of what ann holds and one piece more.
    let quota = UploadLimits {
        max_bytes: u64::MAX,
        quota: Some(max + BLOB_CHUNK as u64),
    };
    let fits = noise(5, BLOB_CHUNK);
    let too_much = noise(6, 2 * BLOB_CHUNK);
    assert_eq!(
        put(&store, "ann", "too much", &too_much, quota),
        Upload::OverQuota
    );
    assert_eq!((store.rows("blobs"), store.rows("blob_chunks")), (1, 4));
    assert!(matches!(
        put(&store, "ann", "fits", &fits, quota),
        Upload::Stored(_)
    ));
    // Full: new bytes are refused, bytes already held are not (they cost nothing).
    assert_eq!(
        put(&store, "ann", "one more", b"x", quota),
        Upload::OverQuota
    );
    assert!(matches!(
        put(&store, "ann", "same", &exactly, quota),
        Upload::Stored(_)
    ));
    assert_eq!(store.used_bytes("ann").unwrap(), max + BLOB_CHUNK as u64);
    // Another owner has its own quota.
    assert!(matches!(
        put(&store, "bob", "b", &too_much, quota),
        Upload::Stored(_)
    ));

    // A body that fails halfway is an I/O error, and leaves nothing.
    let (blobs, chunks) = (store.rows("blobs"), store.rows("blob_chunks"));
    let failed = store
        .upload(
            new_file("ann", "cut"),
            &mut Trickle {
                bytes: &noise(8, 2 * BLOB_CHUNK + 5),
                step: 100_000,
                fail: true,
            },
            OPEN,
        )
        .unwrap_err();
    assert!(
        matches!(failed, crate::common::error::Error::Io { .. }),
        "{failed}"
    );
    assert_eq!(
        (store.rows("blobs"), store.rows("blob_chunks")),
        (blobs, chunks)
    );
    assert_eq!(store.rows("blobs WHERE sha256 IS NULL"), 0);
}

/// A conversation's deletion takes the files only it used (and the blobs no file holds any
/// more); files another conversation uses too, and files never used, stay.
fn a_conversation_takes_the_files_only_it_used<S: TestStore>(store: S) {
    let (one, two) = (id(1), id(2));
    store
        .apply(&[create(&one, "ann"), create(&two, "ann")])
        .unwrap();
    let only = stored(&store, "ann", "only one's", &noise(10, 1000));
    let shared = stored(&store, "ann", "both use it", &noise(11, 1000));
    let loose = stored(&store, "ann", "never used", &noise(12, 1000));
    // A copy of `only`'s bytes that no conversation uses keeps the blob alive.
    let only_twin = stored(&store, "ann", "twin", &noise(10, 1000));
    let twins = stored(&store, "ann", "only one's too", &noise(13, 1000));
    // A tool's file: used by its conversation from the start.
    let tools = store
        .upload(
            NewFile {
                owner: "ann",
                name: "chart.png",
                content_type: "image/png",
                conversation: Some(&one),
            },
            &mut &noise(14, 3000)[..],
            OPEN,
        )
        .unwrap();
    let Upload::Stored(tools) = tools else {
        panic!("{tools:?}")
    };
    store
        .use_files(
            &one,
            &[only.id.clone(), shared.id.clone(), twins.id.clone()],
        )
        .unwrap();
    // Twice is once.
    store
        .use_files(&one, std::slice::from_ref(&only.id))
        .unwrap();
    store
        .use_files(&two, std::slice::from_ref(&shared.id))
        .unwrap();
    // Another owner's conversation naming ann's file never deletes it.
    let bobs = id(3);
    store.apply(&[create(&bobs, "bob")]).unwrap();
    store
        .use_files(&bobs, std::slice::from_ref(&loose.id))
        .unwrap();
    let mut listed = ids(&store.list_files("ann", Some(&one)).unwrap())
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    listed.sort();
    let mut wanted = vec![
        only.id.clone(),
        shared.id.clone(),
        twins.id.clone(),
        tools.id.clone(),
    ];
    wanted.sort();
    assert_eq!(listed, wanted);
    assert_eq!(
        ids(&store.list_files("ann", Some(&two)).unwrap()),
        [&shared.id]
    );
    assert!(store.list_files("bob", Some(&one)).unwrap().is_empty());

    store
        .apply(&[WriteOp::DeleteSession {
            session: one.clone(),
        }])
        .unwrap();
    let left: Vec<String> = store
        .list_files("ann", None)
        .unwrap()
        .into_iter()
        .map(|file| file.id)
        .collect();
    assert!(!left.contains(&only.id) && !left.contains(&twins.id) && !left.contains(&tools.id));
    assert!(left.contains(&shared.id) && left.contains(&loose.id) && left.contains(&only_twin.id));
    assert_eq!(
        bytes_of(&store, "ann", &only_twin.id),
        Some(noise(10, 1000))
    );
    // `twins` and the tool's file took their blobs along; `only`'s is held by its twin.
    assert_eq!(store.rows("blobs"), 3);
    assert_eq!(store.rows("file_uses"), 2);
    assert!(store.list_files("ann", Some(&one)).unwrap().is_empty());
    // The last conversation that uses a file takes it.
    store
        .apply(&[WriteOp::DeleteSession { session: two }])
        .unwrap();
    assert_eq!(store.file("ann", &shared.id).unwrap(), None);
    store
        .apply(&[WriteOp::DeleteSession { session: bobs }])
        .unwrap();
    assert!(store.file("ann", &loose.id).unwrap().is_some());
}

fn chunk(label: &str, text: &str) -> NewChunk {
    NewChunk {
        label: label.into(),
        text: text.into(),
    }
}

fn found(chunks: &[TextChunk]) -> Vec<(&str, u32)> {
    chunks
        .iter()
        .map(|chunk| (chunk.file_id.as_str(), chunk.n))
        .collect()
}

/// A blob's text: pending, then ready (or failed), read a range at a time, searched by words
/// within the owner's files asked about, and by vectors.
fn text_is_stored_per_blob_and_searched_per_file<S: TestStore>(store: S) {
    let report = stored(&store, "ann", "report.txt", b"the report");
    let copy = stored(&store, "ann", "copy.txt", b"the report");
    let notes = stored(&store, "ann", "notes.txt", b"the notes");
    let bobs = stored(&store, "bob", "report.txt", b"the report");
    assert_eq!(
        store.text_state("ann", &report.id).unwrap(),
        Some(TextState::Pending)
    );
    assert_eq!(store.text_state("ann", "nope").unwrap(), None);
    let text = [
        chunk("lines 1-10", "Otters live in rivers and eat fish."),
        chunk("lines 11-20", "Beavers build dams across rivers."),
        chunk("lines 21-30", "Herons stand still in shallow water."),
    ];
    store.put_text(&report.id, &text, None).unwrap();
    // Stored per blob: the copy has it too.
    let ready = TextState::Ready {
        chunks: 3,
        chars: text.iter().map(|c| c.text.chars().count() as u64).sum(),
    };
    assert_eq!(
        store.text_state("ann", &copy.id).unwrap(),
        Some(ready.clone())
    );
    assert_eq!(
        store.text_state("bob", &bobs.id).unwrap(),
        Some(TextState::Pending)
    );
    store
        .put_text(&notes.id, &[], Some("an encrypted PDF"))
        .unwrap();
    assert_eq!(
        store.text_state("ann", &notes.id).unwrap(),
        Some(TextState::Failed("an encrypted PDF".into()))
    );
    store
        .put_text(&bobs.id, &[chunk("page 1", "otters otters otters")], None)
        .unwrap();

    let range = store.chunks("ann", &copy.id, 1, 5).unwrap();
    assert_eq!(
        found(&range),
        [(copy.id.as_str(), 1), (copy.id.as_str(), 2)]
    );
    assert_eq!(range[0].label, "lines 11-20");
    assert_eq!(range[0].text, text[1].text);
    assert!(store.chunks("bob", &copy.id, 0, 5).unwrap().is_empty());

    // Words: the best first; only the files asked about; each chunk once, under the first id
    // that named its blob; never another owner's.
    let asked = vec![report.id.clone(), copy.id.clone(), bobs.id.clone()];
    let rivers = store.search_chunks("ann", &asked, "rivers", 10).unwrap();
    assert_eq!(found(&rivers).len(), 2);
    assert!(rivers.iter().all(|chunk| chunk.file_id == report.id));
    let otters = store
        .search_chunks("ann", &asked, "otters in the river", 10)
        .unwrap();
    assert_eq!(found(&otters)[0], (report.id.as_str(), 0));
    // Any of the words, when no chunk has them all, after those that do.
    let either = store
        .search_chunks("ann", &asked, "herons beavers", 10)
        .unwrap();
    assert_eq!(found(&either).len(), 2);
    assert_eq!(
        store
            .search_chunks("ann", &asked, "rivers", 1)
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .search_chunks("ann", std::slice::from_ref(&notes.id), "rivers", 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .search_chunks("ann", std::slice::from_ref(&bobs.id), "otters", 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        found(&store.search_chunks("bob", &asked, "otters", 10).unwrap()),
        [(bobs.id.as_str(), 0)]
    );

    // Vectors: every chunk of every owner is embedded once per model.
    let pending = store.unembedded_chunks("m", 10).unwrap();
    assert_eq!(pending.len(), 4);
    let vectors: Vec<(String, u32, Vec<f32>)> = pending
        .iter()
        .map(|(id, n, _)| {
            let v = match n {
                0 => vec![1.0, 0.0],
                1 => vec![0.0, 1.0],
                _ => vec![0.6, 0.8],
            };
            (id.clone(), *n, v)
        })
        .collect();
    store.store_chunk_vectors("m", &vectors).unwrap();
    assert!(store.unembedded_chunks("m", 10).unwrap().is_empty());
    assert_eq!(store.unembedded_chunks("other", 10).unwrap().len(), 4);
    let near = store
        .nearest_chunks(
            "ann",
            &[copy.id.clone(), bobs.id.clone()],
            "m",
            &[0.0, 1.0],
            2,
        )
        .unwrap();
    let near_found: Vec<(&str, u32)> = near
        .iter()
        .map(|(c, _)| (c.file_id.as_str(), c.n))
        .collect();
    assert_eq!(near_found, [(copy.id.as_str(), 1), (copy.id.as_str(), 2)]);
    assert!((near[0].1 - 1.0).abs() < 1e-6 && (near[1].1 - 0.8).abs() < 1e-6);
    assert_eq!(near[0].0.text, text[1].text);
    assert!(
        store
            .nearest_chunks("ann", std::slice::from_ref(&bobs.id), "m", &[1.0, 0.0], 5)
            .unwrap()
            .is_empty()
    );
    // New text replaces the old, and its vectors go with it.
    store
        .put_text(&copy.id, &[chunk("all", "only kingfishers now")], None)
        .unwrap();
    assert_eq!(
        store.text_state("ann", &report.id).unwrap(),
        Some(TextState::Ready {
            chunks: 1,
            chars: 20
        })
    );
    assert!(
        store
            .search_chunks("ann", &asked, "rivers", 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.unembedded_chunks("m", 10).unwrap().len(), 1);
    // The last file over a blob takes its text along.
    assert!(store.delete_file("ann", &report.id).unwrap());
    assert!(store.delete_file("ann", &copy.id).unwrap());
    assert_eq!(store.rows("text_chunks"), 1);
    assert_eq!(store.rows("blob_text"), 2);
    assert_eq!(store.rows("chunk_vectors"), 1);
}

/// A full store refuses an upload as full, and keeps nothing of it.
fn a_full_store_refuses_an_upload<S: TestStore>(store: S) {
    store.set_size_limit(Some(1)).unwrap();
    let refused = store
        .upload(
            new_file("ann", "x"),
            &mut &noise(20, 2 * BLOB_CHUNK)[..],
            OPEN,
        )
        .unwrap_err();
    assert!(refused.is_store_full(), "{refused}");
    store.set_size_limit(None).unwrap();
    assert_eq!((store.rows("blobs"), store.rows("blob_chunks")), (0, 0));
}

/// The blobs whose text is not read yet, each once (as its oldest file), with its owner; a
/// blob leaves the list once its text or its note is stored.
fn unread_blobs_are_found_again<S: TestStore>(store: S) {
    let report = stored(&store, "ann", "report.txt", b"the report");
    let _copy = stored(&store, "ann", "copy.txt", b"the report");
    let notes = stored(&store, "ann", "notes.txt", b"the notes");
    let bobs = stored(&store, "bob", "report.txt", b"the report");
    let pending = |limit| {
        let mut found: Vec<(String, String)> = store
            .pending_texts(limit)
            .unwrap()
            .into_iter()
            .map(|(owner, file)| (owner, file.id))
            .collect();
        found.sort();
        found
    };
    let mut all = vec![
        ("ann".to_owned(), report.id.clone()),
        ("ann".to_owned(), notes.id.clone()),
        ("bob".to_owned(), bobs.id.clone()),
    ];
    all.sort();
    assert_eq!(pending(10), all);
    assert_eq!(pending(2).len(), 2);
    store
        .put_text(&report.id, &[chunk("line 1", "the report")], None)
        .unwrap();
    store.put_text(&bobs.id, &[], Some("unreadable")).unwrap();
    assert_eq!(pending(10), [("ann".to_owned(), notes.id.clone())]);
    let found = store.pending_texts(10).unwrap();
    assert_eq!(found[0].1.name, "notes.txt");
    assert_eq!(found[0].1.size, 9);
}

#[test]
fn sqlite_unread_blobs() {
    unread_blobs_are_found_again(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_unread_blobs() {
    unread_blobs_are_found_again(postgres(&cluster::fresh_database()));
}

#[test]
fn sqlite_uploads() {
    uploads_round_trip_once_per_owner(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_uploads() {
    uploads_round_trip_once_per_owner(postgres(&cluster::fresh_database()));
}

#[test]
fn sqlite_large_file() {
    a_large_file_reads_back_in_pieces(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_large_file() {
    a_large_file_reads_back_in_pieces(postgres(&cluster::fresh_database()));
}

#[test]
fn sqlite_upload_limits() {
    limits_keep_nothing_of_what_they_refuse(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_upload_limits() {
    limits_keep_nothing_of_what_they_refuse(postgres(&cluster::fresh_database()));
}

#[test]
fn sqlite_conversation_files() {
    a_conversation_takes_the_files_only_it_used(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_conversation_files() {
    a_conversation_takes_the_files_only_it_used(postgres(&cluster::fresh_database()));
}

#[test]
fn sqlite_file_text() {
    text_is_stored_per_blob_and_searched_per_file(SqliteStore::in_memory().unwrap());
}

#[test]
fn postgres_file_text() {
    text_is_stored_per_blob_and_searched_per_file(postgres(&cluster::fresh_database()));
}

#[test]
fn sqlite_full_store_refuses_an_upload() {
    a_full_store_refuses_an_upload(SqliteStore::open(&temp_dir("full-upload")).unwrap());
}

#[test]
fn postgres_full_store_refuses_an_upload() {
    a_full_store_refuses_an_upload(postgres(&cluster::fresh_database()));
}

/// A crash mid-upload leaves a blob with no digest and some pieces: the next start removes
/// them, and keeps every finished file.
#[test]
fn sqlite_a_crash_mid_upload_is_swept_at_start() {
    let dir = temp_dir("crash-upload");
    let store = SqliteStore::open(&dir).unwrap();
    let kept = stored(&store, "ann", "kept", &noise(30, 1000));
    drop(store);
    let db = rusqlite::Connection::open(dir.join(crate::store::DATABASE_FILE)).unwrap();
    db.execute_batch(
        "INSERT INTO blobs (key, owner, size, created_at) VALUES (99, 'ann', 3, 0); \
         INSERT INTO blob_chunks (blob_key, n, data) VALUES (99, 0, x'010203');",
    )
    .unwrap();
    drop(db);
    let store = SqliteStore::open(&dir).unwrap();
    assert_eq!((store.rows("blobs"), store.rows("blob_chunks")), (1, 1));
    assert_eq!(bytes_of(&store, "ann", &kept.id), Some(noise(30, 1000)));
}

/// In PostgreSQL, an instance starting removes what a writer that is gone left half-written,
/// and leaves an upload that a connected instance is still writing.
#[test]
fn postgres_a_crash_mid_upload_is_swept_at_start() {
    let url = cluster::fresh_database();
    let store = postgres(&url);
    let kept = stored(&store, "ann", "kept", &noise(31, 1000));
    drop(store);
    let mut alive = url
        .parse::<postgres::Config>()
        .unwrap()
        .application_name("sparky alive")
        .connect(postgres::NoTls)
        .unwrap();
    alive
        .batch_execute(
            "INSERT INTO blobs (key, owner, size, created_at, writer) \
             VALUES (1001, 'ann', 3, 0, 'sparky gone'), (1002, 'ann', 3, 0, 'sparky alive'); \
             INSERT INTO blob_chunks (blob_key, n, data) \
             VALUES (1001, 0, '\\x010203'), (1002, 0, '\\x040506');",
        )
        .unwrap();
    let store = postgres(&url);
    assert_eq!((store.rows("blobs"), store.rows("blob_chunks")), (2, 2));
    assert_eq!(store.rows("blobs WHERE key = 1002"), 1);
    assert_eq!(bytes_of(&store, "ann", &kept.id), Some(noise(31, 1000)));
    // A blob carries the name of the instance that wrote it.
    assert_eq!(store.rows("blobs WHERE writer LIKE 'sparky %'"), 2);
    // Once its writer is gone, the next start takes the other too.
    drop(alive);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.rows("pg_stat_activity WHERE application_name = 'sparky alive'") > 0 {
        assert!(std::time::Instant::now() < deadline, "the connection stays");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(PostgresStore::connect(&url, 1).unwrap());
    assert_eq!((store.rows("blobs"), store.rows("blob_chunks")), (1, 1));
}

/// `SessionId` in file uses is the conversation's id, so that a use may come before the
/// journal writes the conversation's row.
#[test]
fn a_use_may_come_before_its_conversation_is_written() {
    let store = SqliteStore::in_memory().unwrap();
    let file = stored(&store, "ann", "early", b"early bytes");
    let early: SessionId = id(9);
    store
        .use_files(&early, std::slice::from_ref(&file.id))
        .unwrap();
    store.apply(&[create(&early, "ann")]).unwrap();
    assert_eq!(
        ids(&store.list_files("ann", Some(&early)).unwrap()),
        [&file.id]
    );
    store
        .apply(&[WriteOp::DeleteSession { session: early }])
        .unwrap();
    assert_eq!(store.file("ann", &file.id).unwrap(), None);
    assert_eq!(store.rows("blobs"), 0);
}
