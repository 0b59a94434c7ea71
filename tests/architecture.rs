//! ARCHITECTURE.md is true, checked against the code:
//! - the code map has a row for every file of `src/` (the binary's own files aside), each row's
//!   "may depend on" names exactly what the file imports, and everything a file imports is listed
//!   above it, so dependencies point down and no two files import each other, inside a folder or
//!   across folders;
//! - each file's header says what it depends on in the same words as its row;
//! - the threads table names every thread the code starts, and nothing else.
//!
//! Imports are found by a small resolver of our own: `crate::`, `super::`, `self::` and
//! child-relative paths, in `use` trees and in expressions, with re-exports followed to the file
//! that defines the item. `ARCH_PRINT=1 cargo test --test architecture -- --nocapture` prints
//! what it found for every file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path without `crate::`: `""` is the crate root, `"store::postgres"` a folder's
/// `mod.rs`, `"common::protocol"` a file.
type Module = String;

/// One source file of the library.
struct File {
    /// The path relative to `src/`.
    path: String,
    module: Module,
    /// The code, comments and string literals blanked out, inline test modules removed.
    code: String,
    /// The `//!` header.
    header: String,
}

/// The library's files and their module tree.
struct Crate {
    files: BTreeMap<Module, File>,
}

fn src() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
}

fn module_of(path: &str) -> Module {
    let trimmed = path.trim_end_matches(".rs");
    let trimmed = trimmed
        .strip_suffix("/mod")
        .unwrap_or(trimmed)
        .trim_end_matches("lib");
    trimmed.trim_end_matches('/').replace('/', "::")
}

fn join(module: &str, name: &str) -> Module {
    if module.is_empty() {
        name.to_owned()
    } else {
        format!("{module}::{name}")
    }
}

/// Blanks comments, string and char literals (keeping line breaks), so that what is left is
/// code only.
fn strip(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        let next = chars.get(at + 1).copied();
        if c == '/' && next == Some('/') {
            while at < chars.len() && chars[at] != '\n' {
                at += 1;
            }
        } else if c == '/' && next == Some('*') {
            at += 2;
            while at < chars.len() && !(chars[at] == '*' && chars.get(at + 1) == Some(&'/')) {
                if chars[at] == '\n' {
                    out.push('\n');
                }
                at += 1;
            }
            at += 2;
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !is_ident(out.chars().last())
        {
            let mut hashes = 0;
            let mut probe = at + 1;
            while chars.get(probe) == Some(&'#') {
                hashes += 1;
                probe += 1;
            }
            if chars.get(probe) != Some(&'"') {
                out.push(c);
                at += 1;
                continue;
            }
            at = probe + 1;
            loop {
                if at >= chars.len() {
                    break;
                }
                if chars[at] == '"' && (0..hashes).all(|k| chars.get(at + 1 + k) == Some(&'#')) {
                    at += 1 + hashes;
                    break;
                }
                if chars[at] == '\n' {
                    out.push('\n');
                }
                at += 1;
            }
            out.push_str("\"\"");
        } else if c == '"' {
            at += 1;
            while at < chars.len() && chars[at] != '"' {
                if chars[at] == '\\' {
                    at += 1;
                }
                if chars.get(at) == Some(&'\n') {
                    out.push('\n');
                }
                at += 1;
            }
            at += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (chars.get(at + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal ('x' or an escape); a lifetime has no closing quote.
            at += 1;
            if chars.get(at) == Some(&'\\') {
                at += 1;
            }
            while at < chars.len() && chars[at] != '\'' {
                at += 1;
            }
            at += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            at += 1;
        }
    }
    out
}

fn is_ident(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Removes `#[cfg(test)] mod name { … }` blocks: a file's unit tests may use anything.
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_owned();
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at + "#[cfg(test)]".len()..];
        let trimmed = rest.trim_start();
        let is_inline_mod = trimmed.starts_with("mod ")
            && trimmed
                .find(['{', ';'])
                .is_some_and(|end| trimmed.as_bytes()[end] == b'{');
        if !is_inline_mod {
            // `#[cfg(test)] mod tests;` or a test-only item: blank the attribute only.
            out.replace_range(at..at + "#[cfg(test)]".len(), "");
            continue;
        }
        let open = at
            + "#[cfg(test)]".len()
            + (rest.len() - trimmed.len())
            + trimmed.find('{').unwrap_or(0);
        let mut depth = 0;
        let mut end = out.len();
        for (offset, byte) in out.as_bytes()[open..].iter().enumerate() {
            match byte {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + offset + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

fn header_of(source: &str) -> String {
    source
        .lines()
        .take_while(|line| line.starts_with("//!") || line.trim().is_empty())
        .filter_map(|line| line.strip_prefix("//!"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

fn load() -> Crate {
    let mut paths = Vec::new();
    sources(src(), &mut paths);
    let mut files = BTreeMap::new();
    for path in paths {
        if path.starts_with("bin/") {
            continue;
        }
        let source = std::fs::read_to_string(src().join(&path)).unwrap();
        let module = module_of(&path);
        files.insert(
            module.clone(),
            File {
                path,
                module,
                code: without_test_modules(&strip(&source)),
                header: header_of(&source),
            },
        );
    }
    Crate { files }
}

/// Every `.rs` file under `src/`, relative to it.
fn sources(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(src()).unwrap();
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// One `use` statement: whether it is a re-export, and its paths (each a list of segments, the
/// last one possibly renamed with `as`).
struct Use {
    public: bool,
    paths: Vec<(Vec<String>, String)>,
}

/// The `use` statements of a piece of code.
fn use_statements(code: &str) -> Vec<Use> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(offset) = code[from..].find("use ") {
        let at = from + offset;
        from = at + 4;
        if at > 0 && is_ident(Some(bytes[at - 1] as char)) {
            continue;
        }
        let Some(end) = code[at..].find(';') else {
            break;
        };
        let before = code[..at].trim_end();
        let statement_start = before
            .rfind([';', '{', '}', ']', '\n'])
            .map_or(0, |position| position + 1);
        let lead = code[statement_start..at].trim();
        if !lead.is_empty() && !lead.starts_with("pub") {
            continue;
        }
        let public = lead.starts_with("pub");
        let tree: String = code[at + 4..at + end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let mut paths = Vec::new();
        expand(&tree, &[], &mut paths);
        found.push(Use { public, paths });
        from = at + end;
    }
    found
}

/// The code with its `use` statements blanked, so that what is left are paths written in
/// expressions and types.
fn without_use_statements(code: &str) -> String {
    code.lines()
        .scan(false, |inside, line| {
            let trimmed = line.trim_start();
            if ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
                .iter()
                .any(|start| trimmed.starts_with(start))
            {
                *inside = true;
            }
            let kept = if *inside { "" } else { line };
            if *inside && line.contains(';') {
                *inside = false;
            }
            Some(kept)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a use tree (`a::{b, c::d as e}`) into paths.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|segment| !segment.is_empty())
            .map(str::to_owned)
            .collect();
        let mut base = prefix.to_vec();
        base.extend(head);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (at, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..at], &base, out);
                    start = at + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &base, out);
        return;
    }
    if tree.is_empty() {
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((path, alias)) => (path.trim(), alias.trim().to_owned()),
        None => (tree, String::new()),
    };
    let mut segments = prefix.to_vec();
    segments.extend(path.split("::").map(|segment| segment.trim().to_owned()));
    let name = if alias.is_empty() {
        segments.last().cloned().unwrap_or_default()
    } else {
        alias
    };
    out.push((segments, name));
}

/// Paths written in expressions and types: `crate::a::b`, `super::x`, `self::y`.
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(offset) = code[from..].find(start) {
            let at = from + offset;
            from = at + start.len();
            if at > 0 && (is_ident(code[..at].chars().last()) || code[..at].ends_with("::")) {
                continue;
            }
            let path: String = code[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segments: Vec<String> = path
                .split("::")
                .filter(|segment| !segment.is_empty())
                .map(str::to_owned)
                .collect();
            found.push(segments);
        }
    }
    found
}

impl Crate {
    /// The absolute segments a path written in `module` stands for, or `None` for another
    /// crate's path.
    fn absolute(&self, module: &str, segments: &[String], in_use: bool) -> Option<Vec<String>> {
        let mut base: Vec<String> = if module.is_empty() {
            Vec::new()
        } else {
            module.split("::").map(str::to_owned).collect()
        };
        let mut rest = segments;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                rest = &rest[1..];
            }
            Some("self") => rest = &rest[1..],
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            Some(first) if in_use && self.files.contains_key(&join(module, first)) => {}
            _ => return None,
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The file that defines what absolute `segments` name, following re-exports.
    fn resolve(&self, segments: &[String], depth: usize) -> Option<Module> {
        let mut module = String::new();
        let mut at = 0;
        while at < segments.len() && self.files.contains_key(&join(&module, &segments[at])) {
            module = join(&module, &segments[at]);
            at += 1;
        }
        if at < segments.len() && depth < 8 {
            let item = &segments[at];
            if let Some(target) = self.reexports(&module).get(item) {
                let mut path = target.clone();
                path.extend(segments[at + 1..].iter().cloned());
                return self.resolve(&path, depth + 1);
            }
        }
        self.files.contains_key(&module).then_some(module)
    }

    /// What a module re-exports (`pub use`): name to absolute path.
    fn reexports(&self, module: &str) -> BTreeMap<String, Vec<String>> {
        let mut map = BTreeMap::new();
        let Some(file) = self.files.get(module) else {
            return map;
        };
        for statement in use_statements(&file.code) {
            if !statement.public {
                continue;
            }
            for (segments, name) in statement.paths {
                if let Some(absolute) = self.absolute(module, &segments, true) {
                    map.insert(name, absolute);
                }
            }
        }
        map
    }

    /// The modules (files) a file depends on: what its `use` statements and its written paths
    /// name, re-exports aside.
    fn dependencies(&self, file: &File) -> BTreeSet<Module> {
        let mut paths = Vec::new();
        for statement in use_statements(&file.code) {
            if statement.public {
                continue;
            }
            for (segments, _) in statement.paths {
                paths.extend(self.absolute(&file.module, &segments, true));
            }
        }
        for segments in inline_paths(&without_use_statements(&file.code)) {
            paths.extend(self.absolute(&file.module, &segments, false));
        }
        paths
            .iter()
            .filter_map(|path| self.resolve(path, 0))
            .filter(|module| *module != file.module && !module.is_empty())
            .collect()
    }
}

/// One row of the code map.
struct Row {
    file: String,
    allowed: BTreeSet<String>,
}

fn architecture() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ARCHITECTURE.md")).unwrap()
}

fn section(text: &str, heading: &str) -> String {
    text.split(&format!("\n## {heading}\n"))
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no section {heading}"))
        .to_owned()
}

/// Module paths named in a list: "`a`, `b::c`" or "nothing".
fn names(list: &str) -> BTreeSet<String> {
    list.split(',')
        .map(|word| {
            word.trim()
                .trim_end_matches('.')
                .trim_matches('`')
                .to_owned()
        })
        .filter(|word| !word.is_empty() && word != "nothing")
        .collect()
}

fn code_map() -> Vec<Row> {
    section(&architecture(), "Code map")
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            Row {
                file: cells[1].trim_matches('`').to_owned(),
                allowed: names(cells[3]),
            }
        })
        .collect()
}

fn covers(entry: &str, module: &str) -> bool {
    module == entry || module.starts_with(&format!("{entry}::"))
}

/// How a dependency is written in the code map: its full path inside the file's own top-level
/// folder, else its first two segments.
fn written(own: &str, dependency: &str) -> String {
    let own_top = own.split("::").next().unwrap_or("");
    let mut segments = dependency.split("::");
    let top = segments.next().unwrap_or("");
    if top == own_top {
        return dependency.to_owned();
    }
    match segments.next() {
        Some(second) => format!("{top}::{second}"),
        None => top.to_owned(),
    }
}

#[test]
fn the_code_map_matches_the_imports_and_points_down() {
    let krate = load();
    let rows = code_map();
    assert!(rows.len() > 40, "the code map has too few rows");
    let position = |module: &str| rows.iter().position(|row| module_of(&row.file) == module);
    let print = std::env::var_os("ARCH_PRINT").is_some();
    let mut problems = Vec::new();
    for file in krate.files.values() {
        if file.path == "lib.rs" {
            continue;
        }
        let dependencies = krate.dependencies(file);
        if print {
            let listed: BTreeSet<String> = dependencies
                .iter()
                .map(|dependency| written(&file.module, dependency))
                .collect();
            let list: Vec<String> = listed.iter().map(|entry| format!("`{entry}`")).collect();
            println!(
                "{}: {}",
                file.path,
                if list.is_empty() {
                    "nothing".to_owned()
                } else {
                    list.join(", ")
                }
            );
        }
        if print {
            let raw: Vec<&str> = dependencies.iter().map(String::as_str).collect();
            println!("raw {}: {}", file.path, raw.join(" "));
        }
        let Some(at) = rows.iter().position(|row| row.file == file.path) else {
            problems.push(format!("{} has no row in the code map", file.path));
            continue;
        };
        let row = &rows[at];
        for dependency in &dependencies {
            if !row.allowed.iter().any(|entry| covers(entry, dependency)) {
                problems.push(format!(
                    "{} uses {dependency}, which its row does not list",
                    file.path
                ));
            }
            match position(dependency) {
                Some(below) if below > at => problems.push(format!(
                    "{} uses {dependency}, whose row is below it (a dependency that points up, or a circle)",
                    file.path
                )),
                _ => {}
            }
        }
        for entry in &row.allowed {
            if !krate.files.contains_key(entry) {
                problems.push(format!("{} lists {entry}, which is no module", file.path));
            } else if !dependencies
                .iter()
                .any(|dependency| covers(entry, dependency))
            {
                problems.push(format!(
                    "{} lists {entry}, which it does not use",
                    file.path
                ));
            }
        }
        match header_dependencies(&file.header) {
            None => problems.push(format!(
                "{}'s header has no \"Depends on\" sentence",
                file.path
            )),
            Some(said) if said != row.allowed => problems.push(format!(
                "{}'s header says it depends on {said:?}, its row {:?}",
                file.path, row.allowed
            )),
            Some(_) => {}
        }
    }
    for row in &rows {
        if !krate.files.values().any(|file| file.path == row.file) {
            problems.push(format!(
                "the code map lists {}, which does not exist",
                row.file
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md's code map is out of date:\n{}",
        problems.join("\n")
    );
}

/// What a header's "Depends on: `a`, `b`." or "Depends on nothing in the crate." names.
fn header_dependencies(header: &str) -> Option<BTreeSet<String>> {
    let at = header.find("Depends on")?;
    let rest = &header[at + "Depends on".len()..];
    if rest.trim_start().starts_with("nothing") {
        return Some(BTreeSet::new());
    }
    let rest = rest.strip_prefix(':')?;
    let sentence = rest.split(". ").next().unwrap_or(rest);
    Some(names(sentence))
}

/// Every thread name the code gives (`thread::Builder::name`), with `{…}` written `<…>`.
fn thread_names(krate: &Crate) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut sources = Vec::new();
    sources_under(src(), &mut sources);
    for source in sources {
        let code = without_test_modules(&keep_strings(&source));
        let mut from = 0;
        while let Some(offset) = code[from..].find(".name(") {
            let at = from + offset + ".name(".len();
            from = at;
            let Some(open) = code[at..].find('"') else {
                continue;
            };
            // Only a literal right after `.name(` or `.name(format!(`.
            let between = code[at..at + open].trim();
            if !(between.is_empty() || between == "format!(") {
                continue;
            }
            let start = at + open + 1;
            let Some(close) = code[start..].find('"') else {
                continue;
            };
            let mut name = String::new();
            let mut inside = false;
            for c in code[start..start + close].chars() {
                match c {
                    '{' => {
                        inside = true;
                        name.push('<');
                    }
                    '}' => {
                        inside = false;
                        name.push('>');
                    }
                    _ if inside => {}
                    _ => name.push(c),
                }
            }
            found.insert(name);
        }
    }
    let _ = krate;
    found
}

/// Every source of `src/`, the binary's included, comments blanked and strings kept.
fn sources_under(dir: &Path, out: &mut Vec<String>) {
    let mut paths = Vec::new();
    sources(dir, &mut paths);
    for path in paths {
        out.push(std::fs::read_to_string(src().join(path)).unwrap());
    }
}

/// Blanks comments only.
fn keep_strings(source: &str) -> String {
    source
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("//") { "" } else { line }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_threads_table_names_every_thread_the_code_starts() {
    let krate = load();
    let in_code = thread_names(&krate);
    let table: BTreeSet<String> = section(&architecture(), "Threads")
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cell = line.split('|').nth(1).unwrap_or("").trim();
            let name = cell.trim_matches('`');
            // `name <what>` placeholders are written `<what>` in both places; `<n>` and friends
            // stand for any value, so compare shapes.
            shape(name)
        })
        .collect();
    let code: BTreeSet<String> = in_code.iter().map(|name| shape(name)).collect();
    let missing: Vec<_> = code.difference(&table).collect();
    let stale: Vec<_> = table.difference(&code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "ARCHITECTURE.md's threads table is out of date: started but not listed {missing:?}, listed but never started {stale:?}"
    );
    // Every thread outside the tests is named: `thread::spawn` would start an anonymous one.
    let mut paths = Vec::new();
    sources(src(), &mut paths);
    for path in paths.iter().filter(|path| !path.ends_with("tests.rs")) {
        let source = std::fs::read_to_string(src().join(path)).unwrap();
        let code = without_test_modules(&strip(&source));
        assert!(
            !code.contains("thread::spawn("),
            "{path} starts an unnamed thread: use thread::Builder::name"
        );
    }
}

/// A thread name with each `<…>` placeholder written `*`.
fn shape(name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in name.chars() {
        match c {
            '<' => {
                inside = true;
                out.push('*');
            }
            '>' => inside = false,
            _ if inside => {}
            _ => out.push(c),
        }
    }
    out
}

#[test]
fn the_resolver_follows_paths_trees_and_reexports() {
    let code = strip(
        "use crate::store::{GraphStore, postgres::{Pool as P}};\n// crate::net::server only here\nlet x = \"crate::nope\";\nlet y = super::turn::Turn::new();",
    );
    let statements = use_statements(&code);
    assert_eq!(statements.len(), 1);
    let paths: Vec<String> = statements[0]
        .paths
        .iter()
        .map(|(segments, name)| format!("{}={name}", segments.join("::")))
        .collect();
    assert_eq!(
        paths,
        [
            "crate::store::GraphStore=GraphStore",
            "crate::store::postgres::Pool=P"
        ]
    );
    assert_eq!(
        inline_paths(&without_use_statements(&code)),
        [vec![
            "super".to_owned(),
            "turn".into(),
            "Turn".into(),
            "new".into()
        ]]
    );
    assert_eq!(
        module_of("conversation/session/mod.rs"),
        "conversation::session"
    );
    assert_eq!(module_of("store/sqlite.rs"), "store::sqlite");
    assert_eq!(module_of("lib.rs"), "");
    let removed = without_test_modules(
        "fn a() {}\n#[cfg(test)]\nmod tests {\n use super::*;\n fn b() { {} }\n}\n",
    );
    assert!(!removed.contains("super"), "{removed}");
    assert_eq!(
        header_dependencies("What it is. Depends on: `common::protocol`, `store`. More."),
        Some(["common::protocol".to_owned(), "store".to_owned()].into())
    );
    assert_eq!(
        header_dependencies("Depends on nothing in the crate."),
        Some(BTreeSet::new())
    );
    assert_eq!(shape("mcp-<name>-post-<n>"), "mcp-*-post-*");
}
