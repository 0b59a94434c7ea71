//! ARCHITECTURE.md's code map is true: every file of `src/` has a row, uses only the modules
//! its row allows, and those modules are listed above it (dependencies point down).

use std::collections::BTreeSet;
use std::path::Path;

/// One row of the code map: the file (relative to `src/`) and the modules it may use.
struct Row {
    file: String,
    allowed: BTreeSet<String>,
}

/// The top-level module a file belongs to: `session/turn.rs` and `session/mod.rs` are both
/// `session`.
fn module_of(file: &str) -> String {
    let first = file.split('/').next().unwrap_or(file);
    first.trim_end_matches(".rs").to_owned()
}

fn code_map() -> Vec<Row> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ARCHITECTURE.md"))
        .expect("ARCHITECTURE.md");
    let section = text
        .split("## Code map")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Code map section");
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let file = cells[1].trim_matches('`').to_owned();
            let allowed = cells[3]
                .split(',')
                .map(|word| word.trim().to_owned())
                .filter(|word| !word.is_empty() && word != "nothing" && word != "the library")
                .collect();
            Row { file, allowed }
        })
        .collect()
}

/// Every `.rs` file under `dir`, relative to `src/`.
fn sources(dir: &Path, base: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, base, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(base).unwrap();
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// The top-level modules a file names as `crate::<module>`, outside comments.
fn uses(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn the_code_map_matches_the_imports_and_points_down() {
    let rows = code_map();
    assert!(rows.len() > 20, "the code map has too few rows");
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut files = Vec::new();
    sources(src, src, &mut files);
    let position = |module: &str| rows.iter().position(|row| module_of(&row.file) == module);
    let mut problems = Vec::new();
    for file in &files {
        if file == "lib.rs" || file == "main.rs" {
            continue;
        }
        let Some(at) = rows.iter().position(|row| &row.file == file) else {
            problems.push(format!("{file} has no row in ARCHITECTURE.md"));
            continue;
        };
        let row = &rows[at];
        let own = module_of(file);
        let source = std::fs::read_to_string(src.join(file)).unwrap();
        for used in uses(&source) {
            if used == own {
                continue;
            }
            if !row.allowed.contains(&used) {
                problems.push(format!("{file} uses {used}, which its row does not list"));
            }
        }
        for allowed in &row.allowed {
            match position(allowed) {
                None => problems.push(format!("{file} lists {allowed}, which has no row")),
                Some(dep) if dep >= at => {
                    problems.push(format!("{file} may use {allowed}, listed below it"));
                }
                Some(_) => {}
            }
        }
    }
    for row in &rows {
        if row.file != "main.rs" && !files.contains(&row.file) {
            problems.push(format!(
                "ARCHITECTURE.md lists {}, which does not exist",
                row.file
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md is out of date:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_imports_and_skips_comments() {
    let source = "use crate::store::{GraphStore};\n// crate::server is only named here\nlet x = crate::auth::Principal::local();";
    let found: Vec<String> = uses(source).into_iter().collect();
    assert_eq!(found, ["auth", "store"]);
    assert_eq!(module_of("session/turn.rs"), "session");
}
