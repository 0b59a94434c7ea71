//! Reading a document's text, by its type: a PDF a page at a time (`pdf-extract`), an HTML
//! page without its scripts and styles (`html2text`), a Word document's paragraphs (`zip` and
//! `quick-xml` over `word/document.xml`), and a text as it is (UTF-8, lossy). Nothing here is a
//! parser of our own.
//!
//! PDF, HTML and DOCX are read in a child process held to a time and a memory limit
//! (`files/child.rs`), since their parsers meet hostile input: [`read_document`] is what that
//! child runs. A text needs no child ([`read_text`]).
//!
//! Depends on: `files::chunk`, `files::sniff`.

use std::io::{Cursor, Read};

use quick_xml::events::Event;

use crate::files::chunk::Section;
use crate::files::sniff::{self, DOCX};

/// The most bytes of XML a Word document's body may inflate to before the rest is left out.
const MAX_DOCX_XML_BYTES: u64 = 64 << 20;

/// The width HTML is laid out at: wide, so that lines break where the page breaks them.
const HTML_WIDTH: usize = 10_000;

/// How a file's text is read, by its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Its bytes are its text: read in process.
    Text,
    /// A PDF, an HTML page or a Word document: read in a child process.
    Document(Document),
    /// It has no text to read (an image, an archive, anything unknown).
    Nothing,
}

/// The documents read in a child process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Document {
    /// `application/pdf`.
    Pdf,
    /// `text/html`.
    Html,
    /// A Word document (DOCX).
    Docx,
}

impl Document {
    /// The document by its type, as the child is told it.
    pub fn from_type(content_type: &str) -> Option<Document> {
        match content_type {
            "application/pdf" => Some(Document::Pdf),
            "text/html" => Some(Document::Html),
            DOCX => Some(Document::Docx),
            _ => None,
        }
    }

    /// Its content type: what the child is told, which [`Document::from_type`] reads back.
    pub fn content_type(self) -> &'static str {
        match self {
            Document::Pdf => "application/pdf",
            Document::Html => "text/html",
            Document::Docx => DOCX,
        }
    }

    /// What it is called in a note: `the PDF`, `the HTML page`, `the Word document`.
    pub fn name(self) -> &'static str {
        match self {
            Document::Pdf => "the PDF",
            Document::Html => "the HTML page",
            Document::Docx => "the Word document",
        }
    }
}

/// How a file of `content_type` is read.
pub fn reading(content_type: &str) -> Reading {
    if sniff::is_plain_text(content_type) {
        Reading::Text
    } else if let Some(document) = Document::from_type(content_type) {
        Reading::Document(document)
    } else {
        Reading::Nothing
    }
}

/// Why a file of `content_type` has no text, for the model and the person.
pub fn nothing_to_read(content_type: &str) -> String {
    let what = if sniff::is_inline_image(content_type) || content_type.starts_with("image/") {
        "an image"
    } else if matches!(
        content_type,
        "application/zip"
            | "application/gzip"
            | "application/x-tar"
            | "application/x-7z-compressed"
            | "application/vnd.rar"
            | "application/x-bzip2"
            | "application/x-xz"
    ) {
        "an archive"
    } else if content_type.starts_with("audio/") {
        "a sound"
    } else if content_type.starts_with("video/") {
        "a video"
    } else {
        "a file whose text this server cannot read"
    };
    format!("no text: {what} ({content_type})")
}

/// A text's bytes as its one section (invalid UTF-8 replaced).
pub fn read_text(bytes: &[u8]) -> Vec<Section> {
    vec![Section {
        page: None,
        text: String::from_utf8_lossy(bytes).into_owned(),
    }]
}

/// The text of `document`, from its bytes, as sections (a PDF's pages numbered from 1); the
/// error says why nothing could be read, in words for a person (the child puts it after
/// "could not read the PDF: ").
///
/// # Errors
///
/// The parser's error, as text.
pub fn read_document(document: Document, bytes: &[u8]) -> Result<Vec<Section>, String> {
    match document {
        Document::Pdf => read_pdf(bytes),
        Document::Html => read_html(bytes),
        Document::Docx => read_docx(bytes),
    }
}

/// A PDF's pages, from 1.
fn read_pdf(bytes: &[u8]) -> Result<Vec<Section>, String> {
    let pages = pdf_extract::extract_text_from_mem_by_pages(bytes).map_err(|e| e.to_string())?;
    if pages.is_empty() {
        return Err("no page of it could be read".to_owned());
    }
    if pages.iter().all(|page| page.trim().is_empty()) {
        return Err(format!(
            "it holds no text ({} pages; they may be scanned images)",
            pages.len()
        ));
    }
    Ok(pages
        .into_iter()
        .enumerate()
        .map(|(i, text)| Section {
            page: Some(u32::try_from(i + 1).unwrap_or(u32::MAX)),
            text,
        })
        .collect())
}

/// An HTML page's text: its scripts and styles left out, its links' text kept.
fn read_html(bytes: &[u8]) -> Result<Vec<Section>, String> {
    let text = html2text::config::plain_no_decorate()
        .string_from_read(bytes, HTML_WIDTH)
        .map_err(|e| e.to_string())?;
    Ok(vec![Section { page: None, text }])
}

/// A Word document's paragraphs, one a line: the text of `word/document.xml`.
fn read_docx(bytes: &[u8]) -> Result<Vec<Section>, String> {
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a zip archive ({e})"))?;
    let entry = archive
        .by_name("word/document.xml")
        .map_err(|_| "it has no word/document.xml".to_owned())?;
    let mut xml = Vec::new();
    entry
        .take(MAX_DOCX_XML_BYTES)
        .read_to_end(&mut xml)
        .map_err(|e| format!("its word/document.xml cannot be inflated ({e})"))?;
    let mut reader = quick_xml::Reader::from_reader(&xml[..]);
    let mut text = String::new();
    let mut buf = Vec::new();
    // Inside a `w:t`: its text is the document's.
    let mut in_text = false;
    loop {
        let event = match reader.read_event_into(&mut buf) {
            Ok(event) => event,
            // Cut at the cap: keep what was read.
            Err(_) if xml.len() as u64 >= MAX_DOCX_XML_BYTES => break,
            Err(e) => return Err(format!("its word/document.xml is not XML ({e})")),
        };
        match event {
            Event::Start(tag) if tag.local_name().as_ref() == "t" => in_text = true,
            Event::End(tag) => match tag.local_name().as_ref() {
                "t" => in_text = false,
                "p" => text.push('\n'),
                _ => {}
            },
            Event::Empty(tag) => match tag.local_name().as_ref() {
                "tab" => text.push('\t'),
                "br" | "cr" => text.push('\n'),
                "p" => text.push('\n'),
                _ => {}
            },
            Event::Text(t) if in_text => text.push_str(&t.xml10_content()),
            Event::CData(t) if in_text => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) if in_text => {
                let reference = format!("&{};", r.xml10_content());
                if let Ok(resolved) = quick_xml::escape::unescape(&reference) {
                    text.push_str(&resolved);
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(vec![Section { page: None, text }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_choose_how_they_are_read() {
        assert_eq!(reading("text/plain"), Reading::Text);
        assert_eq!(reading("text/markdown"), Reading::Text);
        assert_eq!(reading("application/json"), Reading::Text);
        assert_eq!(reading("application/pdf"), Reading::Document(Document::Pdf));
        assert_eq!(reading("text/html"), Reading::Document(Document::Html));
        assert_eq!(reading(DOCX), Reading::Document(Document::Docx));
        assert_eq!(reading("image/svg+xml"), Reading::Nothing);
        assert_eq!(reading("application/zip"), Reading::Nothing);
        assert_eq!(
            nothing_to_read("application/zip"),
            "no text: an archive (application/zip)"
        );
        assert_eq!(
            nothing_to_read("image/png"),
            "no text: an image (image/png)"
        );
    }

    #[test]
    fn html_loses_its_scripts_and_styles() {
        let page = b"<!doctype html><html><head><title>T</title><style>p { color: red }</style>\
            <script>alert('boo')</script></head><body><h1>Heading</h1><p>Some <b>bold</b> \
            text and <a href=\"https://example.com\">a link</a>.</p><script>steal()</script>\
            </body></html>";
        let sections = read_document(Document::Html, page).unwrap();
        let text = &sections[0].text;
        assert!(text.contains("Heading"), "{text}");
        assert!(text.contains("Some bold text and [a link]"), "{text}");
        assert!(!text.contains("alert") && !text.contains("steal"), "{text}");
        assert!(!text.contains("color"), "{text}");
    }

    #[test]
    fn a_word_documents_paragraphs_are_read() {
        use std::io::Write;
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>
<w:p><w:r><w:t>First &amp; foremost</w:t></w:r><w:r><w:tab/><w:t xml:space="preserve"> tabbed</w:t></w:r></w:p>
<w:p><w:r><w:t>Second paragraph</w:t></w:r></w:p>
<w:p><w:r><w:rPr><w:b/></w:rPr><w:t>Third</w:t></w:r></w:p></w:body></w:document>"#;
        let mut out = Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file("[Content_Types].xml", options).unwrap();
        zip.write_all(b"<Types/>").unwrap();
        zip.start_file("word/document.xml", options).unwrap();
        zip.write_all(body.as_bytes()).unwrap();
        zip.finish().unwrap();
        let sections = read_document(Document::Docx, out.get_ref()).unwrap();
        assert_eq!(
            sections[0].text,
            "First & foremost\t tabbed\nSecond paragraph\nThird\n"
        );
        let err = read_document(Document::Docx, b"PK\x03\x04 not really").unwrap_err();
        assert!(err.contains("zip"), "{err}");
    }

    #[test]
    fn text_is_read_as_it_is() {
        let sections = read_text(b"caf\xc3\xa9 \xff ok");
        assert_eq!(sections[0].text, "café \u{fffd} ok");
        assert_eq!(sections[0].page, None);
    }
}
