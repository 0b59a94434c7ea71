//! Reading documents' text through the real child process (`sparky extract-text`, the built
//! binary): real PDFs, HTML and Word documents come out as labelled text, and hostile files (a
//! decompression bomb, arrays nested past any stack, a zip renamed `.pdf`, a reader that
//! hangs) each get a clear note within the time and memory allowed.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sparky::Config;
use sparky::common::cancel::CancelFlag;
use sparky::common::metrics::Metrics;
use sparky::files::Library;
use sparky::files::child::{Extractor, ReadText, Unread};
use sparky::files::chunk::{MAX_TEXT_BYTES, chunk};
use sparky::files::extract::{Document, Reading, nothing_to_read, reading};
use sparky::files::sniff::{self, DOCX};
use sparky::store::{FileStore, NewFile, SqliteStore, StoredFile, TextState, Upload, UploadLimits};
use support::files;

/// The time a document may take here: long enough for a slow machine's debug build, short
/// enough that the bombs show they are stopped by a limit, not by luck.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The memory a document may use here.
const MEMORY_MIB: u64 = 256;

/// The settings of a server whose reader is the built `sparky`.
fn config(timeout: Duration) -> Config {
    Config {
        extractor: Some(PathBuf::from(env!("CARGO_BIN_EXE_sparky"))),
        extract_timeout: timeout,
        extract_memory_bytes: MEMORY_MIB << 20,
        ..Config::default()
    }
}

fn extractor(timeout: Duration) -> Extractor {
    Extractor::from_config(&config(timeout))
}

/// Reads `bytes` as `document` through the child, and how long it took.
fn read(document: Document, bytes: &[u8]) -> (Result<ReadText, String>, Duration) {
    read_within(TIMEOUT, document, bytes)
}

/// Reads `bytes` as `document` through the child given `timeout`, and how long it took.
fn read_within(
    timeout: Duration,
    document: Document,
    bytes: &[u8],
) -> (Result<ReadText, String>, Duration) {
    let started = Instant::now();
    let read = extractor(timeout).read(document, |stdin| {
        stdin
            .write_all(bytes)
            .map_err(|e| sparky::common::error::Error::io("feeding the reader", e))
    });
    let read = read.map_err(|unread| match unread {
        Unread::Document(note) => note,
        Unread::Server(e) => panic!("the feed failed: {e}"),
    });
    (read, started.elapsed())
}

#[test]
fn a_real_pdfs_text_comes_out_labelled_by_page() {
    let pdf = files::pdf(&[
        "The first page speaks of apples.\nA second line.",
        "The second page speaks of pears.",
    ]);
    assert_eq!(
        sniff::content_type(&pdf, "fruit.pdf", None),
        "application/pdf"
    );
    let (read, _) = read(Document::Pdf, &pdf);
    let text = read.unwrap();
    assert!(!text.cut);
    let chunks = chunk(&text.sections, MAX_TEXT_BYTES, text.cut);
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(chunks[0].label, "page 1");
    assert!(chunks[0].text.contains("apples"), "{:?}", chunks[0].text);
    assert!(
        chunks[0].text.contains("second line"),
        "{:?}",
        chunks[0].text
    );
    assert_eq!(chunks[1].label, "page 2");
    assert!(chunks[1].text.contains("pears"), "{:?}", chunks[1].text);
}

#[test]
fn a_flate_bomb_gets_a_note_within_the_limits() {
    // 4 GiB of zeros behind 4 MiB of file: far past the 256 MiB the reader may use.
    let bomb = files::pdf_flate_bomb(4096);
    assert!(bomb.len() < 8 << 20, "{}", bomb.len());
    assert_eq!(
        sniff::content_type(&bomb, "bomb.pdf", None),
        "application/pdf"
    );
    let (read, took) = read(Document::Pdf, &bomb);
    let note = read.unwrap_err();
    // Stopped by its limit, not read to the end (which would find no text).
    assert_eq!(
        note,
        format!(
            "could not read the PDF: it needed more than the {MEMORY_MIB} MiB of memory a document may use"
        )
    );
    assert!(took < TIMEOUT + Duration::from_secs(5), "took {took:?}");
}

#[test]
fn arrays_nested_past_the_stack_get_a_note() {
    let nested = files::pdf_nested(1_000_000);
    let (read, took) = read(Document::Pdf, &nested);
    // lopdf may refuse the depth, or run out of stack: either way a note, never a crash here.
    eprintln!("nested: {read:?} in {took:?}");
    match read {
        Err(note) => assert!(note.starts_with("could not read the PDF: "), "{note}"),
        Ok(text) => assert!(
            text.sections.iter().all(|s| s.text.trim().is_empty()),
            "{text:?}"
        ),
    }
    assert!(took < TIMEOUT + Duration::from_secs(5), "took {took:?}");
}

#[test]
fn html_nested_past_the_stack_gets_a_note_or_its_text() {
    let mut page = "<div>".repeat(500_000);
    page.push_str("deep words");
    let timeout = Duration::from_secs(3);
    let (read, took) = read_within(timeout, Document::Html, page.as_bytes());
    if let Err(note) = read {
        assert!(note.starts_with("could not read the HTML page: "), "{note}");
    }
    assert!(took < timeout + Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_zip_renamed_pdf_is_a_zip_and_never_read_as_a_pdf() {
    let zip = files::zip(&[("secret.txt", b"not a pdf at all")]);
    let content_type = sniff::content_type(&zip, "report.pdf", Some("application/pdf"));
    assert_eq!(content_type, "application/zip");
    assert_eq!(reading(&content_type), Reading::Nothing);
    assert_eq!(
        nothing_to_read(&content_type),
        "no text: an archive (application/zip)"
    );
    // Even handed to the PDF reader, it gets a note.
    let (read, _) = read(Document::Pdf, &zip);
    let note = read.unwrap_err();
    assert!(note.starts_with("could not read the PDF: "), "{note}");
}

#[test]
fn html_is_read_without_its_scripts() {
    let page = b"<!DOCTYPE html><html><head><script>document.cookie</script>\
        <style>body{}</style></head><body><p>Visible words.</p></body></html>";
    assert_eq!(sniff::content_type(page, "page.txt", None), "text/html");
    let (read, _) = read(Document::Html, page);
    let text = read.unwrap();
    let chunks = chunk(&text.sections, MAX_TEXT_BYTES, text.cut);
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    assert_eq!(chunks[0].text, "Visible words.");
    assert_eq!(chunks[0].label, "line 1");
}

#[test]
fn a_word_document_is_read() {
    let docx = files::docx(&["Dear reader,", "the answer is 42 & more."]);
    assert_eq!(sniff::content_type(&docx, "letter.docx", None), DOCX);
    let (read, _) = read(Document::Docx, &docx);
    let text = read.unwrap();
    let chunks = chunk(&text.sections, MAX_TEXT_BYTES, text.cut);
    assert_eq!(chunks[0].text, "Dear reader,\nthe answer is 42 & more.");
}

#[test]
fn a_reader_that_cannot_finish_in_time_is_killed() {
    // 64 MiB of zeros inflate within the memory allowed, but not in 1 ms.
    let started = Instant::now();
    let bomb = files::pdf_flate_bomb(64);
    let read = extractor(Duration::from_millis(1)).read(Document::Pdf, |stdin| {
        stdin
            .write_all(&bomb)
            .map_err(|e| sparky::common::error::Error::io("feeding the reader", e))
    });
    let Err(Unread::Document(note)) = read else {
        panic!("read in 1 ms: {read:?}");
    };
    assert_eq!(note, "could not read the PDF: it took longer than 1ms");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn images_are_typed_by_their_bytes() {
    let png = files::png();
    assert_eq!(sniff::content_type(&png, "photo.pdf", None), "image/png");
    assert!(sniff::is_inline_image("image/png"));
    assert_eq!(reading("image/png"), Reading::Nothing);
}

/// A library over a SQLite store in memory, reading with the built `sparky`.
fn library() -> (Library, Arc<SqliteStore>, Arc<Metrics>) {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let metrics = Arc::new(Metrics::default());
    let library = Library::new(store.clone(), &config(TIMEOUT), metrics.clone());
    (library, store, metrics)
}

fn upload(library: &Library, name: &str, bytes: &[u8]) -> StoredFile {
    match library
        .upload("ann", name, None, &mut &bytes[..], None)
        .unwrap()
    {
        Upload::Stored(file) => file,
        other => panic!("{name} not stored: {other:?}"),
    }
}

/// The text state of `file` once it is read (the wait is bounded by far more than a
/// document may take).
fn text_of(library: &Library, file: &StoredFile) -> TextState {
    library
        .text_state("ann", &file.id, TIMEOUT * 2, None)
        .unwrap()
        .expect("the file is there")
}

#[test]
fn the_library_reads_uploads_once_per_blob() {
    let (library, store, metrics) = library();
    let pdf = files::pdf(&["Otters hold hands while they sleep.", "Page two."]);
    let report = upload(&library, "report.bin", &pdf);
    assert_eq!(report.content_type, "application/pdf");
    assert_eq!(
        text_of(&library, &report),
        TextState::Ready {
            chunks: 2,
            chars: store
                .chunks("ann", &report.id, 0, 10)
                .unwrap()
                .iter()
                .map(|c| c.text.chars().count() as u64)
                .sum()
        }
    );
    let chunks = store.chunks("ann", &report.id, 0, 10).unwrap();
    assert_eq!(chunks[0].label, "page 1");
    assert!(chunks[0].text.contains("Otters hold hands"), "{chunks:?}");
    assert_eq!(chunks[1].label, "page 2");

    // The same bytes again: the blob's text is there already, and is not read again.
    let copy = upload(&library, "copy.pdf", &pdf);
    assert!(matches!(
        text_of(&library, &copy),
        TextState::Ready { chunks: 2, .. }
    ));
    assert_eq!(Metrics::get(&metrics.file_texts_read), 1);

    // Text is read in process, labelled by lines.
    let notes = upload(&library, "notes.md", b"# Notes\n\nBeavers build dams.");
    assert_eq!(notes.content_type, "text/markdown");
    assert!(matches!(
        text_of(&library, &notes),
        TextState::Ready { chunks: 1, .. }
    ));
    assert_eq!(
        store.chunks("ann", &notes.id, 0, 1).unwrap()[0].label,
        "lines 1-3"
    );
}

#[test]
fn the_library_gives_hostile_files_a_note() {
    let (library, _store, metrics) = library();
    let bomb = upload(&library, "bomb.pdf", &files::pdf_flate_bomb(4096));
    let zip = upload(
        &library,
        "report.pdf",
        &files::zip(&[("a.txt", b"not a pdf".as_slice())]),
    );
    let page = upload(
        &library,
        "page.txt",
        b"<html><script>alert(1)</script>hi</html>",
    );
    let empty = upload(&library, "empty.pdf", b"");
    assert_eq!(zip.content_type, "application/zip");
    assert_eq!(page.content_type, "text/html");
    assert_eq!(empty.content_type, "text/plain");
    assert_eq!(
        text_of(&library, &bomb),
        TextState::Failed(format!(
            "could not read the PDF: it needed more than the {MEMORY_MIB} MiB of memory a document may use"
        ))
    );
    assert_eq!(
        text_of(&library, &zip),
        TextState::Failed("no text: an archive (application/zip)".into())
    );
    assert!(matches!(
        text_of(&library, &page),
        TextState::Ready { chunks: 1, .. }
    ));
    assert_eq!(
        text_of(&library, &empty),
        TextState::Ready {
            chunks: 0,
            chars: 0
        }
    );
    assert_eq!(Metrics::get(&metrics.file_texts_failed), 2);
}

#[test]
fn files_left_unread_are_read_at_the_next_start() {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    // Stored as a server that stopped before reading it would leave it.
    let file = NewFile {
        owner: "ann",
        name: "left.txt",
        content_type: "text/plain",
        conversation: None,
    };
    let limits = UploadLimits {
        max_bytes: 1 << 20,
        quota: None,
    };
    let Upload::Stored(left) = store
        .upload(file, &mut &b"left behind"[..], limits)
        .unwrap()
    else {
        panic!("not stored");
    };
    assert_eq!(
        store.text_state("ann", &left.id).unwrap(),
        Some(TextState::Pending)
    );
    let library = Library::new(
        store.clone(),
        &config(TIMEOUT),
        Arc::new(Metrics::default()),
    );
    assert!(matches!(
        text_of(&library, &left),
        TextState::Ready { chunks: 1, .. }
    ));
}

#[test]
fn a_wait_for_text_ends_at_its_limit_or_its_cancel() {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    // No reader thread will read it: stored behind the library's back, after it started.
    let library = Library::new(
        store.clone(),
        &config(TIMEOUT),
        Arc::new(Metrics::default()),
    );
    let file = NewFile {
        owner: "ann",
        name: "waiting.txt",
        content_type: "text/plain",
        conversation: None,
    };
    let limits = UploadLimits {
        max_bytes: 1 << 20,
        quota: None,
    };
    let Upload::Stored(waiting) = store.upload(file, &mut &b"waiting"[..], limits).unwrap() else {
        panic!("not stored");
    };
    let started = Instant::now();
    let state = library
        .text_state("ann", &waiting.id, Duration::from_millis(200), None)
        .unwrap();
    assert_eq!(state, Some(TextState::Pending));
    assert!(started.elapsed() >= Duration::from_millis(200));

    let cancel = CancelFlag::new();
    let canceller = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            cancel.cancel();
        })
    };
    let started = Instant::now();
    let state = library
        .text_state("ann", &waiting.id, Duration::from_secs(60), Some(&cancel))
        .unwrap();
    assert_eq!(state, Some(TextState::Pending));
    // Woken by the cancel, not by the store's recheck a second into the wait.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    canceller.join().unwrap();
    assert_eq!(
        library
            .text_state("bob", &waiting.id, Duration::from_secs(60), None)
            .unwrap(),
        None
    );
}

#[test]
fn chunks_are_embedded_once_read() {
    use sparky::model::embed::{Embed, HashEmbedder};
    let (library, store, _) = library();
    let embedder: Arc<dyn Embed> = Arc::new(HashEmbedder::new("hash"));
    library.embed_with(embedder.clone()).unwrap();
    assert_eq!(library.embedder().map(|e| e.model()), Some("hash"));
    let text: String = (0..40)
        .map(|i| format!("Paragraph {i} is about otters and rivers, line after line.\n\n"))
        .collect::<String>()
        + "The last paragraph speaks of herons standing in shallow water.";
    let notes = upload(&library, "notes.txt", text.as_bytes());
    let Some(TextState::Ready { chunks, .. }) =
        library.text_state("ann", &notes.id, TIMEOUT, None).unwrap()
    else {
        panic!("not read");
    };
    assert!(chunks > 1);
    support::wait_until("the chunks' vectors", || {
        store.unembedded_chunks("hash", 10).unwrap().is_empty()
    });
    let question = embedder
        .embed(&["herons standing in shallow water".to_owned()])
        .unwrap()
        .remove(0);
    let nearest = store
        .nearest_chunks("ann", std::slice::from_ref(&notes.id), "hash", &question, 1)
        .unwrap();
    assert!(nearest[0].0.text.contains("herons"), "{nearest:?}");
}
