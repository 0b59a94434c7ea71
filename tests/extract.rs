//! Reading documents' text through the real child process (`sparky extract-text`, the built
//! binary): real PDFs, HTML and Word documents come out as labelled text, and hostile files (a
//! decompression bomb, arrays nested past any stack, a zip renamed `.pdf`, a reader that
//! hangs) each get a clear note within the time and memory allowed.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sparky::Config;
use sparky::files::child::{Extractor, ReadText, Unread};
use sparky::files::chunk::{MAX_TEXT_BYTES, chunk};
use sparky::files::extract::{Document, Reading, nothing_to_read, reading};
use sparky::files::sniff::{self, DOCX};
use support::files;

/// The time a document may take here: long enough for a slow machine's debug build, short
/// enough that the bombs show they are stopped by a limit, not by luck.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The memory a document may use here.
const MEMORY_MIB: u64 = 256;

fn extractor(timeout: Duration) -> Extractor {
    let config = Config {
        extractor: Some(PathBuf::from(env!("CARGO_BIN_EXE_sparky"))),
        extract_timeout: timeout,
        extract_memory_bytes: MEMORY_MIB << 20,
        ..Config::default()
    };
    Extractor::from_config(&config)
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
