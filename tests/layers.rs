//! The library's modules form layers, and no module uses one above it: the order written
//! at the top of `src/lib.rs`. A module may use the modules of lower layers and of its own;
//! every `crate::<module>` path in its source counts, in code and in doc links.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Bottom up, as in `src/lib.rs`.
const LAYERS: &[&[&str]] = &[
    &["key", "expiry", "http"],
    &["config", "settings_table"],
    &["store"],
    &["session", "session_tests"],
    &["guard", "router", "middleware"],
    &["pipeline", "cleanup"],
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

/// The names after `crate::` in `text`: modules, or items re-exported at the root.
fn crate_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `mycrate::`, not ours
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.push(name);
        }
    }
    found
}

#[test]
fn no_module_uses_one_above_it() {
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        None,
        &mut files,
    );
    assert!(files.len() > 30, "the sources were found: {}", files.len());
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("read lib.rs");
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
