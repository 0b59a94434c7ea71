//! How files reach a model as text: each file a user message carries is a `<file>` block after
//! the user's words (its text when it is small, else a note), and the passages of long files
//! that matter to a question are a system message of `<passage>` blocks just before it, each
//! named by file and place so that the model can cite them. Written here once, so that the
//! turn that builds them and the offline model that reads them agree.
//!
//! Depends on nothing in the crate.

/// How the system message that carries passages of attached files begins.
pub const PASSAGES_PREFIX: &str = "Passages from the files attached to this conversation, most \
relevant first. Cite them by file name and place, as in [report.pdf, page 3].";

/// What starts a file's block in a user message.
const FILE_OPEN: &str = "\n\n<file name=\"";

/// A file's block, to follow the user's words: `body` is its text, or a note about it.
/// Names are safe already (no quotes, no control characters).
pub fn file_block(name: &str, content_type: &str, body: &str) -> String {
    format!("{FILE_OPEN}{name}\" type=\"{content_type}\">\n{body}\n</file>")
}

/// One passage of a file, for the passages message: `at` is its place (`page 3`).
pub fn passage_block(name: &str, at: &str, text: &str) -> String {
    format!("<passage file=\"{name}\" at=\"{at}\">\n{text}\n</passage>")
}

/// A user message's own words and the names of the files its blocks carry.
pub fn split_files(content: &str) -> (&str, Vec<&str>) {
    let Some(start) = content.find(FILE_OPEN) else {
        return (content, Vec::new());
    };
    let names = content[start..]
        .split(FILE_OPEN)
        .skip(1)
        .filter_map(|block| block.split_once('"').map(|(name, _)| name))
        .collect();
    (&content[..start], names)
}

/// The passages a passages message cites, as `name, place`.
pub fn passages_cited(message: &str) -> Vec<String> {
    message
        .split("<passage file=\"")
        .skip(1)
        .filter_map(|block| {
            let (name, rest) = block.split_once("\" at=\"")?;
            let (at, _) = rest.split_once('"')?;
            Some(format!("{name}, {at}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_read_back() {
        let content = format!(
            "what is in these?{}{}",
            file_block("a.txt", "text/plain", "alpha"),
            file_block("b.pdf", "application/pdf", "a note")
        );
        assert_eq!(
            split_files(&content),
            ("what is in these?", vec!["a.txt", "b.pdf"])
        );
        assert_eq!(split_files("plain"), ("plain", vec![]));
        let passages = format!(
            "{PASSAGES_PREFIX}\n\n{}\n\n{}",
            passage_block("r.pdf", "page 3", "x"),
            passage_block("n.md", "lines 1-40", "y")
        );
        assert_eq!(
            passages_cited(&passages),
            ["r.pdf, page 3", "n.md, lines 1-40"]
        );
    }
}
