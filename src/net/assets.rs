//! The chat page and the static files it loads, bundled into the binary with `include_str!` so
//! that the server needs nothing beside it: `page.html` (served at `/`), the page's own script
//! and style sheet, a share link's read-only page (`share.html`, at `/s/{share_id}`) and its
//! script, and two vendored libraries, markdown-it (CommonMark to HTML) and DOMPurify
//! (the sanitizer), each minified with its license header (ARCHITECTURE.md says why).
//!
//! Every asset is served at `/assets/<name>`. The page names each one with `?v=<hash of its
//! content>`, so a browser may keep it for a year: a new binary with a changed file names a new
//! URL. Plain data and a digest; no IO.
//!
//! Depends on nothing in the crate.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The page as written, before asset URLs get their version.
const PAGE_SOURCE: &str = include_str!("assets/page.html");

/// A share link's page as written (`/s/{share_id}`), before asset URLs get their version.
const SHARE_PAGE_SOURCE: &str = include_str!("assets/share.html");

/// Every file under `/assets/`: name, `Content-Type`, content.
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "share.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/share.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
    (
        "markdown-it.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/markdown-it.min.js"),
    ),
    (
        "purify.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/purify.min.js"),
    ),
];

/// Hex digits of the content hash that version an asset's URL.
const VERSION_CHARS: usize = 16;

/// One static file of the page.
#[derive(Debug)]
pub struct Asset {
    /// The name after `/assets/`, e.g. `app.js`.
    pub name: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its content.
    pub body: &'static str,
    /// The start of the SHA-256 of its content, in hex: the `v` parameter of its URL.
    pub version: String,
}

impl Asset {
    /// The URL the page names it by: `/assets/<name>?v=<version>`.
    pub fn url(&self) -> String {
        format!("/assets/{}?v={}", self.name, self.version)
    }
}

/// Every asset, with its version computed once.
pub fn all() -> &'static [Asset] {
    static ASSETS: OnceLock<Vec<Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|&(name, content_type, body)| {
                let digest = Sha256::digest(body.as_bytes());
                let mut version: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
                version.truncate(VERSION_CHARS);
                Asset {
                    name,
                    content_type,
                    body,
                    version,
                }
            })
            .collect()
    })
}

/// The asset served at `path` (`/assets/<name>`), if there is one.
pub fn find(path: &str) -> Option<&'static Asset> {
    let name = path.strip_prefix("/assets/")?;
    all().iter().find(|asset| asset.name == name)
}

/// The chat page, every `/assets/<name>` it names carrying its asset's version.
pub fn page() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| versioned(PAGE_SOURCE))
}

/// A share link's read-only page, versioned as [`page`] is. The same for every link: its
/// script reads the link's id from the address.
pub fn share_page() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| versioned(SHARE_PAGE_SOURCE))
}

/// `source` with every `/assets/<name>` it names carrying its asset's version.
fn versioned(source: &str) -> String {
    let mut page = source.to_owned();
    for asset in all() {
        let plain = format!("\"/assets/{}\"", asset.name);
        page = page.replace(&plain, &format!("\"{}\"", asset.url()));
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_page_loads_the_sanitizer_and_its_script_versioned() {
        let page = share_page();
        for name in ["markdown-it.min.js", "purify.min.js", "share.js", "app.css"] {
            let asset = find(&format!("/assets/{name}")).unwrap();
            assert!(page.contains(&asset.url()), "{name} is not named");
        }
        assert!(!page.contains("<script>"), "the page has an inline script");
        assert!(!page.contains("<textarea") && !page.contains("<input"));
    }

    #[test]
    fn the_page_names_every_asset_with_its_version() {
        let page = page();
        for asset in all().iter().filter(|asset| asset.name != "share.js") {
            assert!(page.contains(&asset.url()), "{} is not named", asset.name);
            assert_eq!(asset.version.len(), VERSION_CHARS);
            assert!(std::ptr::eq(
                find(&format!("/assets/{}", asset.name)).unwrap(),
                asset
            ));
        }
        assert!(find("/assets/../page.html").is_none());
        assert!(find("/assets/").is_none());
        assert!(!page.contains("<script>"), "the page has an inline script");
    }

    #[test]
    fn vendored_files_keep_their_license_headers() {
        let markdown = find("/assets/markdown-it.min.js").unwrap();
        assert!(markdown.body.starts_with("/*! markdown-it"));
        assert!(markdown.body[..200].contains("@license MIT"));
        let purify = find("/assets/purify.min.js").unwrap();
        assert!(purify.body.starts_with("/*! @license DOMPurify"));
    }
}
