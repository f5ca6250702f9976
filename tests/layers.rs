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

/// The modules named by `crate::<name>` in `text`.
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
        if name.starts_with(|c: char| c.is_ascii_lowercase()) {
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
    let mut upward: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, owner, text) in &files {
        let Some(own) = layer_of(owner) else {
            panic!("{path}: module {owner} is in no layer; add it to LAYERS and src/lib.rs");
        };
        for used in crate_paths(text) {
            match layer_of(&used) {
                Some(layer) if layer > own => upward
                    .entry(path.clone())
                    .or_default()
                    .push(format!("{owner} uses {used}")),
                Some(_) => {}
                None => panic!("{path}: crate::{used} is not a module in LAYERS"),
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
        vec!["server".to_string()]
    );
    assert!(layer_of("server") > layer_of("store"));
}
