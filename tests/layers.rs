//! The library's modules form layers, and no module uses one above it: the order written
//! at the top of `src/lib.rs`. A module may use the modules of lower layers and of its own;
//! every `crate::<module>` path in its source counts, in code and in doc links.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Bottom up, as in `src/lib.rs`.
const LAYERS: &[&[&str]] = &[
    &["key", "expiry", "http", "signing"],
    &["config", "settings_table"],
    &["store"],
    &["session", "session_tests"],
    &["guard", "router", "middleware"],
    &["pipeline", "cleanup", "tower"],
    &["server"],
    &["supervisor"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn sources(dir: &Path, module: Option<&str>, out: &mut Vec<(String, String, String)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name")
            .to_owned();
        if path.is_dir() {
            if module.is_none() && name == "bin" {
                continue; // the binary is a user of the library, not a part of it
            }
            sources(&path, Some(module.unwrap_or(&name)), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            if module.is_none() && name == "lib" {
                continue;
            }
            let text = fs::read_to_string(&path).expect("read source");
            let owner = module.unwrap_or(&name).to_owned();
            out.push((path.display().to_string(), owner, text));
        }
    }
}

/// What `src/lib.rs` re-exports at the root, item name to the module it comes from
/// (`pub use store::{SessionStore, ...}` maps `SessionStore` to `store`).
fn root_exports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut rest = lib;
    while let Some(at) = rest.find("pub use ") {
        rest = &rest[at + "pub use ".len()..];
        let end = rest.find(';').unwrap_or(rest.len());
        let statement = &rest[..end];
        let module: String = statement
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        for item in statement
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .skip(1)
            .filter(|w| !w.is_empty())
        {
            map.entry(item.to_owned()).or_insert_with(|| module.clone());
        }
        rest = &rest[end..];
    }
    map
}

/// The names after `crate::` in `text`: modules, or items re-exported at the root. A grouped
/// import gives each of its top-level names, over one line or many, whatever is nested in
/// it: `use crate::{config::Settings, store::{self, Record}, key};` gives `config`, `store`
/// and `key`.
fn crate_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `mycrate::`, not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            let (names, after) = group_names(group);
            found.extend(names);
            rest = after;
        } else {
            let name = leading_name(rest);
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

/// The top-level names of a `{...}` group, given the text after its `{`, and the text after
/// its `}`. A `self` (the crate itself) is no module; `//` comments are skipped.
fn group_names(text: &str) -> (Vec<String>, &str) {
    let mut names = Vec::new();
    let mut add = |element: &str| {
        // Without its comments, the element's first name: `store` of `store::{self, Record}`.
        let code: String = element
            .lines()
            .map(|line| line.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ");
        let name = leading_name(&code);
        if !name.is_empty() && name != "self" {
            names.push(name);
        }
    };
    let mut depth = 0usize;
    let mut element_start = 0;
    let mut at = 0;
    while let Some(c) = text[at..].chars().next() {
        match c {
            '/' if text[at..].starts_with("//") => {
                // A comment: its braces and commas are not the group's.
                at += text[at..].find('\n').unwrap_or(text.len() - at);
                continue;
            }
            '{' => depth += 1,
            '}' if depth == 0 => {
                add(&text[element_start..at]);
                return (names, &text[at + 1..]);
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                add(&text[element_start..at]);
                element_start = at + 1;
            }
            _ => {}
        }
        at += c.len_utf8();
    }
    add(&text[element_start..]);
    (names, "")
}

/// The identifier `text` starts with, after any whitespace.
fn leading_name(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn no_module_uses_one_above_it() {
    let mut files = Vec::new();
    sources(&repo_root().join("src"), None, &mut files);
    assert!(files.len() > 30, "the sources were found: {}", files.len());
    let lib = fs::read_to_string(repo_root().join("src/lib.rs")).expect("read lib.rs");
    let exports = root_exports(&lib);
    let mut upward: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, owner, text) in &files {
        let Some(own) = layer_of(owner) else {
            panic!("{path}: module {owner} is in no layer; add it to LAYERS and src/lib.rs");
        };
        for name in crate_paths(text) {
            // A root re-export counts as the module it comes from.
            let used = match exports.get(&name) {
                Some(module) if layer_of(&name).is_none() => module.clone(),
                _ => name,
            };
            match layer_of(&used) {
                Some(layer) if layer > own => upward
                    .entry(path.clone())
                    .or_default()
                    .push(format!("{owner} uses {used}")),
                Some(_) => {}
                None => panic!(
                    "{path}: crate::{used} is neither a module in LAYERS nor a root re-export"
                ),
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules using a layer above them: {upward:#?}"
    );
}

#[test]
fn the_check_sees_an_upward_use() {
    assert_eq!(
        crate_paths("use crate::server::Server; x = mycrate::a; [`S`](crate::Session)"),
        vec!["server".to_string(), "Session".to_string()]
    );
    let exports = root_exports("pub use session::{Session, TEST};\npub use http::{Limits};");
    assert_eq!(exports.get("Session").map(String::as_str), Some("session"));
    assert_eq!(exports.get("Limits").map(String::as_str), Some("http"));
    assert!(layer_of("server") > layer_of("store"));
}

#[test]
fn a_grouped_import_gives_each_of_its_top_level_names() {
    let names = |text: &str| crate_paths(text);
    assert_eq!(
        names("use crate::{config::Settings, store::{self, Record}, key};"),
        vec!["config", "store", "key"]
    );
    // Over many lines, nested, with comments and a trailing comma, then more paths after.
    let multi_line = "use crate::{
        // the settings, {not a group}, nor a name
        config::{Locking, Settings},
        server::{
            Server,
            StopHandle, // stops it
        },
        self,
        Session as S,
    };
    use crate::key::SessionKey;
    fn f() -> crate::store::Record {}";
    assert_eq!(
        names(multi_line),
        vec!["config", "server", "Session", "key", "store"]
    );
    // A group's names count as any path's: an upward one is seen.
    assert!(
        names("use crate::{key, server::Server};")
            .iter()
            .any(|name| layer_of(name) > layer_of("store"))
    );
}

/// The longest a source file may be: past it, a file holds more than one job.
const MAX_LINES: usize = 600;

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_source_file_is_over_600_lines() {
    let root = repo_root();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 30, "the sources were found: {}", files.len());
    files.sort();
    let over: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let lines = fs::read_to_string(path)
                .expect("read source")
                .lines()
                .count();
            let shown = path.strip_prefix(root).unwrap_or(path).display();
            (lines > MAX_LINES).then(|| format!("{shown}: {lines} lines"))
        })
        .collect();
    assert!(
        over.is_empty(),
        "source files over {MAX_LINES} lines (split each into modules of one job): {over:#?}"
    );
}

/// The repository's root: the library's package (this test belongs to the server package,
/// in `server/`).
fn repo_root() -> &'static Path {
    let server = Path::new(env!("CARGO_MANIFEST_DIR"));
    server.parent().unwrap_or(server)
}
