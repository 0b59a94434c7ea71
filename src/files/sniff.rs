//! A file's type, decided by its bytes rather than its name: binary formats by their magic
//! bytes (`infer`), HTML and SVG by their first tag, text by being UTF-8 without NULs. The
//! name (or the declared type) only tells text types apart (markdown, CSV, JSON, plain), so a
//! name can never make a file HTML, SVG or an image, and a zip renamed `.pdf` stays a zip.
//!
//! Depends on nothing in the crate.

/// How many bytes of a file [`content_type`] looks at.
pub const SNIFF_BYTES: usize = 8 * 1024;

/// The type of anything that is not recognised.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The type of a Word document (DOCX), as `infer` names it.
pub const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";

/// The text types a name or a declared type may choose between, by extension.
const TEXT_TYPES: [(&str, &str); 6] = [
    ("md", "text/markdown"),
    ("markdown", "text/markdown"),
    ("csv", "text/csv"),
    ("json", "application/json"),
    ("tsv", "text/tab-separated-values"),
    ("txt", "text/plain"),
];

/// The tags that make a text HTML when it starts with one (after white space, a byte-order
/// mark and comments), compared without case. A page that starts otherwise is shown as text,
/// which is harmless.
const HTML_STARTS: [&str; 12] = [
    "<!doctype html",
    "<html",
    "<head",
    "<body",
    "<script",
    "<iframe",
    "<title",
    "<style",
    "<meta",
    "<link",
    "<div",
    "<a ",
];

/// The type of a file that starts with `head` (its first [`SNIFF_BYTES`] or fewer, when it is
/// shorter) and is called `name`; `declared` (the client's `Content-Type`) breaks ties among
/// text types only.
///
/// An empty file is `text/plain` (refined by its name, like any text): it holds no bytes that
/// could run or be shown as anything else.
pub fn content_type(head: &[u8], name: &str, declared: Option<&str>) -> String {
    let head = &head[..head.len().min(SNIFF_BYTES)];
    if let Some(kind) = infer::get(head)
        && kind.matcher_type() != infer::MatcherType::Text
    {
        return kind.mime_type().to_owned();
    }
    let Some(text) = as_text(head) else {
        return OCTET_STREAM.to_owned();
    };
    let start = markup_start(text);
    if is_svg(&start) {
        return "image/svg+xml".to_owned();
    }
    if is_html(&start) {
        return "text/html".to_owned();
    }
    text_type(name, declared).to_owned()
}

/// True for the image types a browser may be shown inline: PNG, JPEG, GIF and WebP, decided
/// by [`content_type`] from the bytes. Never SVG, which can hold script.
pub fn is_inline_image(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    )
}

/// True for the text types whose bytes are their text: [`content_type`]'s text types (not
/// HTML, whose text must be read out of its markup).
pub fn is_plain_text(content_type: &str) -> bool {
    content_type == "text/plain"
        || content_type == "application/json"
        || TEXT_TYPES.iter().any(|(_, t)| *t == content_type)
}

/// `head` as UTF-8 text: valid (a character cut at the end of the head is allowed) and
/// without NUL bytes; `None` otherwise.
fn as_text(head: &[u8]) -> Option<&str> {
    if head.contains(&0) {
        return None;
    }
    match std::str::from_utf8(head) {
        Ok(text) => Some(text),
        // A character cut by the end of the head: the rest is in the bytes not looked at.
        Err(e) if e.error_len().is_none() && head.len() - e.valid_up_to() < 4 => {
            std::str::from_utf8(&head[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    }
}

/// The text from its first markup on, in lower case: past a byte-order mark, white space,
/// an XML declaration and comments (at most a few, so a long run of them is not chased).
fn markup_start(text: &str) -> String {
    let mut rest = text.trim_start_matches('\u{feff}');
    for _ in 0..16 {
        rest = rest.trim_start();
        if let Some(comment) = rest.strip_prefix("<!--") {
            match comment.find("-->") {
                Some(end) => rest = &comment[end + 3..],
                None => return String::new(),
            }
        } else {
            break;
        }
    }
    rest.chars().take(1024).collect::<String>().to_lowercase()
}

/// True when the markup is an SVG image: `<svg`, or an XML declaration, doctype or comments
/// followed by `<svg` near the start.
fn is_svg(start: &str) -> bool {
    if start.starts_with("<svg") {
        return true;
    }
    (start.starts_with("<?xml") || start.starts_with("<!doctype svg")) && start.contains("<svg")
}

/// True when the markup starts like an HTML page (XHTML included).
fn is_html(start: &str) -> bool {
    HTML_STARTS.iter().any(|tag| start.starts_with(tag))
        || (start.starts_with("<?xml") && start.contains("<html"))
}

/// A text's type: by the name's extension among the text types, else by the declared type
/// when it is one of them, else `text/plain` (source code included).
fn text_type(name: &str, declared: Option<&str>) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase());
    if let Some(ext) = extension
        && let Some((_, kind)) = TEXT_TYPES.iter().find(|(e, _)| *e == ext)
    {
        return kind;
    }
    let declared = declared
        .and_then(|d| d.split(';').next())
        .map(|d| d.trim().to_ascii_lowercase());
    if let Some(declared) = declared
        && let Some((_, kind)) = TEXT_TYPES.iter().find(|(_, t)| *t == declared)
    {
        return kind;
    }
    "text/plain"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny but valid PDF, as a person would write one by hand.
    fn tiny_pdf() -> Vec<u8> {
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n\
          2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n\
          trailer << /Root 1 0 R >>\n%%EOF\n"
            .to_vec()
    }

    /// The first bytes of a PNG: the signature and an IHDR chunk.
    fn png_head() -> Vec<u8> {
        let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
        png.extend_from_slice(&[0, 0, 0, 13]);
        png.extend_from_slice(b"IHDR");
        png.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]);
        png.extend_from_slice(&[0x90, 0x77, 0x53, 0xde]);
        png
    }

    /// A zip archive holding one stored file.
    fn zip_bytes(entry: &str, body: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut out = std::io::Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file(entry, options).unwrap();
        zip.write_all(body).unwrap();
        zip.finish().unwrap();
        out.into_inner()
    }

    #[test]
    fn binary_formats_are_known_by_their_bytes_whatever_the_name() {
        assert_eq!(
            content_type(&tiny_pdf(), "report.pdf", None),
            "application/pdf"
        );
        assert_eq!(
            content_type(&tiny_pdf(), "notes.txt", None),
            "application/pdf"
        );
        assert_eq!(content_type(&png_head(), "photo.png", None), "image/png");
        assert_eq!(content_type(&png_head(), "photo.html", None), "image/png");
        let jpeg = [0xff, 0xd8, 0xff, 0xe0, 0, 0x10, b'J', b'F', b'I', b'F', 0];
        assert_eq!(content_type(&jpeg, "x", None), "image/jpeg");
        assert_eq!(
            content_type(b"GIF89a\x01\x00\x01\x00", "x", None),
            "image/gif"
        );
        assert_eq!(
            content_type(b"RIFF\x24\x00\x00\x00WEBPVP8 ", "x", None),
            "image/webp"
        );
    }

    #[test]
    fn a_zip_renamed_pdf_is_a_zip() {
        let zip = zip_bytes("evil.txt", b"hello");
        assert_eq!(
            content_type(&zip, "report.pdf", Some("application/pdf")),
            "application/zip"
        );
    }

    /// A DOCX is known by its entries, laid out as Word writes them (infer looks at the
    /// third and fourth).
    #[test]
    fn a_docx_is_known_inside_its_zip() {
        use std::io::Write;
        let mut out = std::io::Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default();
        for (name, body) in [
            ("[Content_Types].xml", "<Types/>"),
            ("_rels/.rels", "<Relationships/>"),
            ("word/_rels/document.xml.rels", "<Relationships/>"),
            ("word/document.xml", "<w:document/>"),
        ] {
            zip.start_file(name, options).unwrap();
            zip.write_all(body.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
        assert_eq!(content_type(out.get_ref(), "letter.pdf", None), DOCX);
    }

    #[test]
    fn html_is_known_by_its_first_tag_not_its_name() {
        let page = b"\xef\xbb\xbf  \n<!DOCTYPE html><html><script>alert(1)</script></html>";
        assert_eq!(
            content_type(page, "notes.txt", Some("text/plain")),
            "text/html"
        );
        assert_eq!(
            content_type(b"<script>alert(1)</script>", "a.md", None),
            "text/html"
        );
        assert_eq!(
            content_type(b"<!-- hi --><HTML><body>x", "a.csv", None),
            "text/html"
        );
        // A text that only mentions a tag later on is text.
        assert_eq!(
            content_type(b"use <html> tags like this", "a.md", None),
            "text/markdown"
        );
        // A declared type never makes text HTML.
        assert_eq!(
            content_type(b"hello", "page", Some("text/html")),
            "text/plain"
        );
    }

    #[test]
    fn svg_is_known_by_its_markup_and_is_never_an_inline_image() {
        let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>";
        assert_eq!(content_type(svg, "cat.png", None), "image/svg+xml");
        let declared = b"<?xml version=\"1.0\"?>\n<!-- made by hand -->\n<svg></svg>";
        assert_eq!(content_type(declared, "cat.txt", None), "image/svg+xml");
        assert!(!is_inline_image("image/svg+xml"));
        assert!(is_inline_image("image/png"));
        assert!(is_inline_image("image/webp"));
        assert!(!is_inline_image("image/bmp"));
        assert!(!is_inline_image("text/html"));
    }

    #[test]
    fn text_types_follow_the_name_then_the_declared_type() {
        assert_eq!(content_type(b"# Title", "README.md", None), "text/markdown");
        assert_eq!(content_type(b"a,b\n1,2", "data.CSV", None), "text/csv");
        assert_eq!(
            content_type(b"{\"a\": 1}", "x.json", None),
            "application/json"
        );
        assert_eq!(content_type(b"fn main() {}", "main.rs", None), "text/plain");
        assert_eq!(
            content_type(b"a,b", "data", Some("text/csv; charset=utf-8")),
            "text/csv"
        );
        assert_eq!(
            content_type(b"a,b", "data", Some("image/png")),
            "text/plain"
        );
        assert_eq!(
            content_type("héllo wörld".as_bytes(), "x", None),
            "text/plain"
        );
        assert!(is_plain_text("text/csv"));
        assert!(is_plain_text("application/json"));
        assert!(!is_plain_text("text/html"));
        assert!(!is_plain_text("image/svg+xml"));
    }

    #[test]
    fn a_character_cut_by_the_end_of_the_head_is_still_text() {
        let mut text = "a".repeat(SNIFF_BYTES - 1).into_bytes();
        text.extend_from_slice("é".as_bytes());
        assert_eq!(
            content_type(&text[..SNIFF_BYTES], "x.txt", None),
            "text/plain"
        );
    }

    #[test]
    fn bytes_that_are_not_text_are_an_octet_stream() {
        assert_eq!(content_type(b"abc\0def", "a.txt", None), OCTET_STREAM);
        assert_eq!(
            content_type(b"\xff\xfe\xfd\x80", "a.txt", None),
            OCTET_STREAM
        );
    }

    #[test]
    fn an_empty_file_is_plain_text() {
        assert_eq!(content_type(b"", "empty", None), "text/plain");
        assert_eq!(content_type(b"", "empty.csv", None), "text/csv");
        assert_eq!(
            content_type(b"", "empty.pdf", Some("application/pdf")),
            "text/plain"
        );
    }
}
