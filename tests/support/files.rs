//! Files made for the tests, byte by byte, so that no fixture needs committing: a real small
//! PDF with text on its pages, PDF bombs, a Word document, a zip, a PNG.

use std::io::{Cursor, Write};

use flate2::{Compress, Compression, FlushCompress};

/// A valid PDF with one page per entry of `pages`, each showing its text in Helvetica (one
/// line per `\n`), with a correct cross-reference table.
pub fn pdf(pages: &[&str]) -> Vec<u8> {
    let mut objects: Vec<Vec<u8>> = Vec::new();
    // 1: catalog, 2: pages, 3: font, then per page: the page and its content.
    let kids: Vec<String> = (0..pages.len())
        .map(|i| format!("{} 0 R", 4 + 2 * i))
        .collect();
    objects.push(b"<< /Type /Catalog /Pages 2 0 R >>".to_vec());
    objects.push(
        format!(
            "<< /Type /Pages /Kids [{}] /Count {} >>",
            kids.join(" "),
            pages.len()
        )
        .into_bytes(),
    );
    objects.push(
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_vec(),
    );
    for (i, text) in pages.iter().enumerate() {
        let content_id = 5 + 2 * i;
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
                 /Resources << /Font << /F1 3 0 R >> >> /Contents {content_id} 0 R >>"
            )
            .into_bytes(),
        );
        let mut content = String::from("BT /F1 12 Tf 14 TL 72 720 Td\n");
        for line in text.lines() {
            let escaped = line
                .replace('\\', "\\\\")
                .replace('(', "\\(")
                .replace(')', "\\)");
            content.push_str(&format!("({escaped}) Tj T*\n"));
        }
        content.push_str("ET");
        objects.push(stream("", content.as_bytes()));
    }
    assemble(&objects)
}

/// A PDF whose one page's content is a FlateDecode stream that inflates to `mib` MiB of
/// zeros (about 1 KiB of file per MiB inflated): a decompression bomb.
pub fn pdf_flate_bomb(mib: usize) -> Vec<u8> {
    let objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>".to_vec(),
        stream("/Filter /FlateDecode", &zeros_deflated(mib)),
    ];
    assemble(&objects)
}

/// A PDF whose catalog holds arrays nested `depth` deep: a parser that recurses runs out of
/// stack.
pub fn pdf_nested(depth: usize) -> Vec<u8> {
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = vec![
        format!("<< /Type /Catalog /Pages 2 0 R /Deep {nested} >>").into_bytes(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>".to_vec(),
    ];
    assemble(&objects)
}

/// A zlib stream of `mib` MiB of zeros, made without compressing them all: one MiB is
/// compressed with a full flush (which resets the compressor, so the next MiB compresses to
/// the same bytes), repeated, and closed with an empty final block and the Adler-32 of all of
/// it (for zeros: `a` stays 1, `b` is the count).
fn zeros_deflated(mib: usize) -> Vec<u8> {
    let zeros = vec![0u8; 1 << 20];
    let mut compress = Compress::new(Compression::best(), true);
    let mut first = Vec::with_capacity(1 << 16);
    compress
        .compress_vec(&zeros, &mut first, FlushCompress::Full)
        .unwrap();
    assert_eq!(compress.total_in(), 1 << 20, "one MiB in one call");
    let mut again = Vec::with_capacity(1 << 16);
    compress
        .compress_vec(&zeros, &mut again, FlushCompress::Full)
        .unwrap();
    let mut out = first;
    for _ in 1..mib {
        out.extend_from_slice(&again);
    }
    // An empty final block with fixed codes, then the checksum, big-endian.
    out.extend_from_slice(&[0x03, 0x00]);
    let b = ((mib as u64) << 20) % 65_521;
    out.extend_from_slice(&(((b << 16) | 1) as u32).to_be_bytes());
    out
}

/// An indirect object's body for a stream with `extra` in its dictionary.
fn stream(extra: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("<< /Length {} {extra} >>\nstream\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\nendstream");
    out
}

/// `objects` (numbered from 1) as a PDF file with its cross-reference table and trailer.
fn assemble(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

/// A zip archive of `entries` (name, bytes), deflated.
pub fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    for (name, body) in entries {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(body).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}

/// A Word document (DOCX) with one paragraph per entry of `paragraphs`, its entries laid out
/// as Word writes them.
pub fn docx(paragraphs: &[&str]) -> Vec<u8> {
    let body: String = paragraphs
        .iter()
        .map(|p| {
            let escaped = p
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            format!("<w:p><w:r><w:t xml:space=\"preserve\">{escaped}</w:t></w:r></w:p>")
        })
        .collect();
    let document = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<w:document \
         xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\"><w:body>{body}\
         </w:body></w:document>"
    );
    zip(&[
        ("[Content_Types].xml", b"<?xml version=\"1.0\"?><Types/>"),
        ("_rels/.rels", b"<?xml version=\"1.0\"?><Relationships/>"),
        (
            "word/_rels/document.xml.rels",
            b"<?xml version=\"1.0\"?><Relationships/>",
        ),
        ("word/document.xml", document.as_bytes()),
    ])
}

/// A 1×1 PNG (one opaque red pixel): signature, IHDR, IDAT and IEND, each with its CRC.
pub fn png() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    chunk(&mut out, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]);
    // One scanline: filter 0, then red.
    let mut pixels = Vec::with_capacity(64);
    let mut compress = Compress::new(Compression::default(), true);
    compress
        .compress_vec(&[0, 255, 0, 0], &mut pixels, FlushCompress::Finish)
        .unwrap();
    chunk(&mut out, b"IDAT", &pixels);
    chunk(&mut out, b"IEND", &[]);
    out
}
