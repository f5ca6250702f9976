//! Bad input, by property and by corpus.
//!
//! Part 1 runs proptest properties in process: session keys, `Cookie` headers, JSON bodies,
//! request targets and the redirects they get (the router's `safe_location` has its own
//! property in `src/router.rs`), the session-file decoder with `clear_expired`, and
//! the page's forms behind a valid CSRF double submit.
//! Part 2 sends a corpus of several hundred hostile raw HTTP requests, generated from
//! families, over TCP to the real binary.
//!
//! Every part counts what it tried, the crashes (panics), the 5xx answers caused by input and
//! the files that appeared outside the sessions directory, and prints them:
//! `cargo test --test bad_input -- --nocapture` (`BAD_INPUT_VERBOSE=1` also prints every
//! corpus request with its answer). A bug found is kept as an `#[ignore]`d reproduction.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use filesession::{
    App, ExpiredDeletion, FileStore, MemoryStore, Method, Request, Response, Session,
    SessionConfig, SessionKey, SessionMiddleware, SessionStore, Settings, parse_rfc3339,
};

#[path = "../src/bin/filesession/app/mod.rs"]
#[allow(dead_code)]
mod app;
use app::demo_router;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};

use common::TestServer;

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

/// Test cases of one property; no regression files are written into the tree.
fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The figures of one part.
#[derive(Default)]
struct Tally {
    tried: AtomicUsize,
    crashes: AtomicUsize,
    server_errors: AtomicUsize,
    outside: AtomicUsize,
}

impl Tally {
    /// Runs `f` as one input: counts it, and turns a panic into a counted, failing case.
    fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
        self.tried.fetch_add(1, Relaxed);
        catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
            self.crashes.fetch_add(1, Relaxed);
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            TestCaseError::fail(format!("panicked: {message}"))
        })
    }

    /// Counts an answer; a 5xx fails the case.
    fn status(&self, status: u16, what: &str) -> Result<(), TestCaseError> {
        if status >= 500 {
            self.server_errors.fetch_add(1, Relaxed);
            return Err(TestCaseError::fail(format!("{status} for {what}")));
        }
        Ok(())
    }

    fn print(&self, part: &str) {
        eprintln!(
            "[bad_input] {part:<44} inputs {:>6}   crashes {}   5xx {}   files outside sessions/ {}",
            self.tried.load(Relaxed),
            self.crashes.load(Relaxed),
            self.server_errors.load(Relaxed),
            self.outside.load(Relaxed),
        );
    }

    fn assert_clean(&self, part: &str) {
        self.print(part);
        assert_eq!(self.crashes.load(Relaxed), 0, "{part}: crashes");
        assert_eq!(self.server_errors.load(Relaxed), 0, "{part}: 5xx answers");
        assert_eq!(
            self.outside.load(Relaxed),
            0,
            "{part}: files outside sessions/"
        );
    }
}

/// The reference rule for a session key: 36 bytes, lowercase hex, hyphens at 8/13/18/23,
/// version nibble 4, RFC 4122 variant.
fn is_canonical_v4(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// 16 bytes in canonical hyphenated lowercase form (any version and variant).
fn uuid_text(bytes: [u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// 16 bytes made a version-4, RFC 4122 UUID in canonical form.
fn v4_text(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid_text(bytes)
}

/// A random canonical key that no server issued.
fn fresh_key_text() -> impl Strategy<Value = String> {
    any::<[u8; 16]>().prop_map(v4_text)
}

/// Every canonical-looking key text (36 chars that parse) inside `text`.
fn keys_in(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(35))
        .filter_map(|i| std::str::from_utf8(&b[i..i + 36]).ok())
        .filter(|s| is_canonical_v4(s))
        .map(str::to_owned)
        .collect()
}

/// A directory layout for in-process tests: `<root>/sessions` for the store and
/// `<root>/outside/victim.json` that nothing may touch.
struct Sandbox {
    root: tempfile::TempDir,
    victim_bytes: Vec<u8>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let root = tempfile::tempdir().expect("temp dir");
        fs::create_dir(root.path().join("outside")).expect("outside dir");
        let victim_bytes =
            b"{\"format\": 1, \"expires_at\": \"2000-01-01T00:00:00Z\", \"data\": {}}\n".to_vec();
        fs::write(root.path().join("outside/victim.json"), &victim_bytes).expect("victim");
        Sandbox { root, victim_bytes }
    }

    fn sessions(&self) -> PathBuf {
        self.root.path().join("sessions")
    }

    fn victim(&self) -> PathBuf {
        self.root.path().join("outside/victim.json")
    }

    fn store(&self) -> Arc<FileStore> {
        Arc::new(FileStore::open(self.sessions()).expect("open the store"))
    }

    fn app(&self) -> (App, Arc<FileStore>) {
        let store = self.store();
        let middleware = SessionMiddleware::new(store.clone(), Settings::default());
        (App::new(demo_router(), middleware), store)
    }

    /// Entries that should not be there: anything in the root but `sessions/` and
    /// `outside/`, anything in `outside/` but the untouched victim, and (when
    /// `strict_sessions`) anything in `sessions/` that is not `<canonical key>.json`.
    fn strays(&self, strict_sessions: bool) -> Vec<String> {
        let mut strays = Vec::new();
        for name in names_in(self.root.path()) {
            if name != "sessions" && name != "outside" {
                strays.push(format!("<root>/{name}"));
            }
        }
        for name in names_in(&self.root.path().join("outside")) {
            if name != "victim.json" {
                strays.push(format!("outside/{name}"));
            }
        }
        if fs::read(self.victim()).ok().as_deref() != Some(&self.victim_bytes[..]) {
            strays.push("outside/victim.json was changed or removed".into());
        }
        if strict_sessions {
            for name in names_in(&self.sessions()) {
                if !is_session_file_name(&name) {
                    strays.push(format!("sessions/{name}"));
                }
            }
        }
        strays
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn is_session_file_name(name: &str) -> bool {
    name.strip_suffix(".json").is_some_and(is_canonical_v4)
}

/// The value of the `sessionid` cookie set by a response, if any.
fn set_session_cookie(response: &Response) -> Option<String> {
    response
        .headers()
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.strip_prefix("sessionid="))
        .map(|rest| rest.split(';').next().unwrap_or_default().to_owned())
        .next()
}

/// A JSON value that survives text and back exactly (floats that do not are made null).
fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| {
            let v = Value::from(f);
            let back: Option<Value> = serde_json::from_str(&v.to_string()).ok();
            if back.as_ref() == Some(&v) {
                v
            } else {
                Value::Null
            }
        }),
        any::<String>().prop_map(Value::String),
        "[ -~]{0,12}".prop_map(Value::String),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z_]{0,8}",
        1 => any::<String>(),
        1 => Just("_messages".to_owned()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(json_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(json_key(), json_value(), 0..8)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

// ---------------------------------------------------------------------------------------
// Part 1a: session keys
// ---------------------------------------------------------------------------------------

/// Checks everything a parsed key promises about its text and file name.
fn check_key(text: &str, parsed: Option<SessionKey>) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        parsed.is_some(),
        is_canonical_v4(text),
        "parse and the reference rule disagree on {:?}",
        text
    );
    if let Some(key) = parsed {
        prop_assert_eq!(text.len(), 36);
        prop_assert_eq!(key.to_string(), text);
        let name = key.file_name();
        prop_assert_eq!(&name, &format!("{text}.json"));
        prop_assert!(
            !name.contains('/')
                && !name.contains('\\')
                && !name.contains("..")
                && !name.contains('\0'),
            "unsafe file name {:?}",
            name
        );
    }
    Ok(())
}

/// A mutation of a canonical key text.
#[derive(Debug, Clone)]
enum KeyMutation {
    Uppercase(usize),
    DropHyphen(usize),
    Insert(usize, char),
    Replace(usize, char),
    Remove(usize),
    None,
}

fn apply_key_mutation(text: &str, m: &KeyMutation) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    match *m {
        KeyMutation::Uppercase(i) => chars[i % n] = chars[i % n].to_ascii_uppercase(),
        KeyMutation::DropHyphen(i) => {
            let hyphens = [8, 13, 18, 23];
            chars.remove(hyphens[i % 4]);
        }
        KeyMutation::Insert(i, c) => chars.insert(i % (n + 1), c),
        KeyMutation::Replace(i, c) => chars[i % n] = c,
        KeyMutation::Remove(i) => {
            chars.remove(i % n);
        }
        KeyMutation::None => {}
    }
    chars.into_iter().collect()
}

fn key_mutation() -> impl Strategy<Value = KeyMutation> {
    let near = prop_oneof![
        4 => prop::char::range('0', 'f'),
        1 => any::<char>(),
        1 => select(vec!['-', '/', '\\', '.', '\0', '{', ' ', 'A', 'F', 'g', 'é']),
    ];
    prop_oneof![
        any::<usize>().prop_map(KeyMutation::Uppercase),
        any::<usize>().prop_map(KeyMutation::DropHyphen),
        (any::<usize>(), near.clone()).prop_map(|(i, c)| KeyMutation::Insert(i, c)),
        (any::<usize>(), near).prop_map(|(i, c)| KeyMutation::Replace(i, c)),
        any::<usize>().prop_map(KeyMutation::Remove),
        Just(KeyMutation::None),
    ]
}

#[test]
fn session_keys() {
    let tally = Tally::default();

    // Arbitrary strings, and strings of the key alphabet near the key length.
    proptest!(cases(2000), |(text in prop_oneof![
        any::<String>(),
        "[0-9a-f-]{34,38}",
        "[0-9a-fA-F-]{36}",
        "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
    ])| {
        let parsed = tally.run(|| SessionKey::parse(&text))?;
        check_key(&text, parsed)?;
    });

    // Any 16 bytes in canonical form: accepted exactly when version 4 / RFC 4122.
    proptest!(cases(2000), |(bytes in any::<[u8; 16]>())| {
        let text = uuid_text(bytes);
        let parsed = tally.run(|| SessionKey::parse(&text))?;
        check_key(&text, parsed)?;
        prop_assert_eq!(parsed.is_some(), bytes[6] >> 4 == 4 && bytes[8] >> 6 == 0b10);
    });

    // Canonical keys with a mutation: rejected unless still canonical.
    proptest!(cases(2000), |(base in fresh_key_text(), mutation in key_mutation())| {
        let text = apply_key_mutation(&base, &mutation);
        let parsed = tally.run(|| SessionKey::parse(&text))?;
        check_key(&text, parsed)?;
        if matches!(mutation, KeyMutation::DropHyphen(_) | KeyMutation::Insert(..) | KeyMutation::Remove(_)) {
            prop_assert!(parsed.is_none(), "{:?} of {} accepted: {:?}", mutation, base, text);
        }
    });

    // Every generated key parses back to itself.
    for _ in 0..2000 {
        tally.tried.fetch_add(1, Relaxed);
        let key = SessionKey::generate();
        let text = key.to_string();
        assert!(is_canonical_v4(&text), "generated {text}");
        assert_eq!(SessionKey::parse(&text), Some(key));
        check_key(&text, Some(key)).expect("generated key");
    }
    tally.assert_clean("1a session keys");
}

// ---------------------------------------------------------------------------------------
// Part 1b: Cookie headers
// ---------------------------------------------------------------------------------------

fn cookie_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("sessionid".to_owned()),
        1 => select(vec![
            "SESSIONID", "sessionid ", " sessionid", "sessionid\t", "session", "sessionid[]",
            "csrftoken", "flash", "", "$sessionid", "sessionid=",
        ]).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn cookie_value(keys: Vec<String>) -> impl Strategy<Value = String> {
    let traversal = select(vec![
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "/etc/passwd",
        "..",
        ".",
        "",
        "..\\..\\windows\\win.ini",
        "%00",
        "\"\"",
        "sessions/../x",
        "00000000-0000-0000-0000-000000000000",
    ])
    .prop_map(str::to_owned);
    let k = select(keys);
    prop_oneof![
        3 => k.clone(),
        2 => fresh_key_text(),
        1 => k.clone().prop_map(|k| k.to_uppercase()),
        1 => k.clone().prop_map(|k| format!("\"{k}\"")),
        1 => k.clone().prop_map(|k| format!("{k}.json")),
        1 => k.clone().prop_map(|k| format!("../{k}")),
        2 => (k, key_mutation()).prop_map(|(k, m)| apply_key_mutation(&k, &m)),
        2 => traversal,
        2 => any::<String>(),
    ]
}

fn cookie_header(keys: Vec<String>) -> impl Strategy<Value = String> {
    let pair = (
        cookie_name(),
        prop_oneof![4 => Just("="), 1 => select(vec!["", " = ", "==", ":"])],
        cookie_value(keys),
        select(vec!["; ", ";", ", ", " ; ", "\t;", ";;", ""]),
    );
    prop_oneof![
        4 => prop::collection::vec(pair, 0..6).prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(n, eq, v, sep)| format!("{n}{eq}{v}{sep}"))
                .collect::<String>()
        }),
        1 => any::<String>(),
    ]
}

#[test]
fn cookie_headers_session_for() {
    let tally = Tally::default();
    let keys: Vec<String> = (0..4).map(|_| SessionKey::generate().to_string()).collect();
    let middleware = SessionMiddleware::new(Arc::new(MemoryStore::new()), Settings::default());
    let named = AtomicUsize::new(0);
    proptest!(cases(2000), |(header in cookie_header(keys.clone()))| {
        let key = tally.run(|| {
            let request = Request::new(Method::Get, "/", &[("Cookie", &header)], b"");
            let (session, _had_cookie) = middleware.session_for(&request);
            session.session_key().copied()
        })?;
        if let Some(key) = key {
            named.fetch_add(1, Relaxed);
            prop_assert!(header.contains(&key.to_string()), "key {} not in {:?}", key, header);
        }
        for k in &keys {
            if header == format!("sessionid={k}") {
                prop_assert_eq!(key.map(|k| k.to_string()), Some(k.clone()));
            }
        }
    });
    eprintln!(
        "[bad_input] 1b session_for: {} headers named a key",
        named.load(Relaxed)
    );
    tally.assert_clean("1b cookie headers -> session_for");
}

#[test]
fn cookie_headers_through_the_app() {
    let tally = Tally::default();
    let sandbox = Sandbox::new();
    let (app, _store) = sandbox.app();
    // Three sessions the server issued.
    let existing: Vec<String> = (0..3)
        .map(|_| {
            let response = app.handle(Request::new(Method::Get, "/setsession/", &[], b""));
            assert_eq!(response.status(), 200);
            set_session_cookie(&response).expect("a session cookie")
        })
        .collect();
    let headers = prop::collection::vec(cookie_header(existing.clone()), 1..3);
    let (found, kept_key) = (AtomicUsize::new(0), AtomicUsize::new(0));
    proptest!(cases(300), |(headers in headers)| {
        let on_disk: HashSet<String> = names_in(&sandbox.sessions()).into_iter().collect();
        let pairs: Vec<(&str, &str)> = headers.iter().map(|h| ("Cookie", h.as_str())).collect();
        let input = headers.join("\n");

        let get = tally.run(|| app.handle(Request::new(Method::Get, "/getsession/", &pairs, b"")))?;
        tally.status(get.status(), "GET /getsession/")?;
        if get.status() == 200 {
            found.fetch_add(1, Relaxed);
            prop_assert!(
                existing.iter().any(|k| input.contains(k.as_str())),
                "getsession found a session that no cookie named: {:?}", input
            );
        }
        if let Some(value) = set_session_cookie(&get) {
            prop_assert!(value.is_empty(), "getsession set a session cookie {:?}", value);
        }

        let set = tally.run(|| app.handle(Request::new(Method::Get, "/setsession/", &pairs, b"")))?;
        tally.status(set.status(), "GET /setsession/")?;
        prop_assert_eq!(set.status(), 200);
        let issued = set_session_cookie(&set).unwrap_or_default();
        prop_assert!(is_canonical_v4(&issued), "Set-Cookie key {:?}", issued);
        if input.contains(&issued) {
            kept_key.fetch_add(1, Relaxed);
            prop_assert!(
                on_disk.contains(&format!("{issued}.json")),
                "adopted a key from the cookie that was not on disk: {}", issued
            );
        }
        for looked in keys_in(&input) {
            if looked == issued {
                let name = format!("{looked}.json");
                prop_assert!(on_disk.contains(&name), "adopted {}", looked);
            }
        }
        let file = sandbox.sessions().join(format!("{issued}.json"));
        prop_assert!(file.is_file(), "no file for the issued key {}", issued);
    });
    let strays = sandbox.strays(true);
    tally.outside.fetch_add(strays.len(), Relaxed);
    assert!(strays.is_empty(), "{strays:?}");
    eprintln!(
        "[bad_input] 1b App: {} getsession found an issued session, {} setsession kept an issued key",
        found.load(Relaxed),
        kept_key.load(Relaxed)
    );
    tally.assert_clean("1b cookie headers -> App (getsession, setsession)");
}

// ---------------------------------------------------------------------------------------
// Part 1c: JSON bodies
// ---------------------------------------------------------------------------------------

fn post_json(body: &[u8]) -> Request {
    Request::new(
        Method::Post,
        "/api/session",
        &[("Content-Type", "application/json")],
        body,
    )
}

/// The response's JSON.
fn response_json(response: &Response) -> Value {
    serde_json::from_slice(response.body()).unwrap_or(Value::Null)
}

/// Checks a 200 answer to `POST /api/session` of `object`: the answer and the file hold it.
fn check_stored(
    sandbox: &Sandbox,
    response: &Response,
    object: &Map<String, Value>,
) -> Result<(), TestCaseError> {
    let answer = response_json(response);
    prop_assert_eq!(&answer["data"], &Value::Object(object.clone()));
    match answer["session_key"].as_str() {
        None => prop_assert!(object.is_empty(), "no session for a non-empty object"),
        Some(key) => {
            prop_assert!(!object.is_empty(), "a session for an empty object");
            prop_assert!(is_canonical_v4(key));
            let text = fs::read(sandbox.sessions().join(format!("{key}.json")))
                .map_err(|e| TestCaseError::fail(format!("session file: {e}")))?;
            let file: Value = serde_json::from_slice(&text)
                .map_err(|e| TestCaseError::fail(format!("session file JSON: {e}")))?;
            prop_assert_eq!(&file["format"], &json!(1));
            prop_assert_eq!(&file["data"], &Value::Object(object.clone()));
        }
    }
    Ok(())
}

#[test]
fn json_bodies() {
    let tally = Tally::default();
    let sandbox = Sandbox::new();
    let (app, _store) = sandbox.app();

    // Arbitrary bytes, and JSON text with one byte replaced.
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (json_object(), any::<usize>(), any::<u8>()).prop_map(|(v, i, b)| {
            let mut text = v.to_string().into_bytes();
            let n = text.len();
            text[i % n] = b;
            text
        }),
        (json_value(), any::<usize>()).prop_map(|(v, cut)| {
            let text = v.to_string().into_bytes();
            text[..cut % (text.len() + 1)].to_vec()
        }),
    ];
    let statuses = std::sync::Mutex::new(BTreeMap::<u16, usize>::new());
    proptest!(cases(500), |(body in bytes)| {
        let response = tally.run(|| app.handle(post_json(&body)))?;
        *statuses.lock().expect("statuses").entry(response.status()).or_default() += 1;
        tally.status(response.status(), "POST /api/session")?;
        let parsed = serde_json::from_slice::<Value>(&body);
        match (&parsed, response.status()) {
            (Ok(Value::Object(map)), 200) => check_stored(&sandbox, &response, map)?,
            (Ok(Value::Object(_)), status) => prop_assert!(status == 413, "object answered {}", status),
            (_, 400) => {}
            (_, status) => prop_assert!(false, "non-object answered {}: {:?}", status, String::from_utf8_lossy(&body)),
        }
    });

    // Arbitrary JSON values: objects are stored exactly, anything else is 400.
    let values = prop_oneof![3 => json_object(), 1 => json_value()];
    proptest!(cases(400), |(value in values)| {
        let body = serde_json::to_vec(&value).expect("serialize");
        let response = tally.run(|| app.handle(post_json(&body)))?;
        *statuses.lock().expect("statuses").entry(response.status()).or_default() += 1;
        tally.status(response.status(), "POST /api/session")?;
        match &value {
            Value::Object(map) => {
                prop_assert_eq!(response.status(), 200);
                check_stored(&sandbox, &response, map)?;
            }
            _ => prop_assert_eq!(response.status(), 400),
        }
    });

    // A few fixed edges: too large for a session file, too deep for serde_json.
    let big = json!({"big": "x".repeat(1_100_000)}).to_string();
    let deep_array = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    for (body, want) in [
        (big.as_bytes(), 413),
        (deep_array.as_bytes(), 400),
        (deep_object.as_bytes(), 400),
        (b"\xef\xbb\xbf{\"a\":1}".as_slice(), 400),
        // A number is kept as sent (serde_json's arbitrary_precision), even one no float holds.
        (b"{\"n\": 1e999999}".as_slice(), 200),
    ] {
        let response = tally.run(|| app.handle(post_json(body))).expect("no panic");
        tally
            .status(response.status(), "fixed body")
            .expect("no 5xx");
        assert_eq!(
            response.status(),
            want,
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
    }
    let strays = sandbox.strays(true);
    tally.outside.fetch_add(strays.len(), Relaxed);
    assert!(strays.is_empty(), "{strays:?}");
    eprintln!(
        "[bad_input] 1c statuses (properties): {:?}",
        statuses.lock().expect("statuses")
    );
    tally.assert_clean("1c JSON bodies -> POST /api/session");
}

// ---------------------------------------------------------------------------------------
// Part 1d: request targets and Location
// ---------------------------------------------------------------------------------------

fn check_location(location: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        !location.starts_with("//"),
        "Location {:?} starts with //",
        location
    );
    prop_assert!(
        location.is_ascii()
            && !location.contains(['\\', '\r', '\n', ' ', '\0'])
            && !location.bytes().any(|b| b.is_ascii_control()),
        "unsafe Location {:?}",
        location
    );
    Ok(())
}

fn method() -> impl Strategy<Value = Method> {
    select(vec![
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
        Method::Options,
        Method::Other,
    ])
}

fn target() -> impl Strategy<Value = String> {
    let prefix = select(vec![
        "/",
        "/setsession",
        "/getsession",
        "/setsession/",
        "/getsession/",
        "//setsession",
        "///getsession",
        "/\\setsession",
        "/api/session",
        "/api/session/",
        "/api/session/x",
        "/api/session/incr/",
        "/api/session/incr/n",
        "/api/session/flush",
        "/api/session/cycle",
        "/api/session/expiry",
        "/form/set",
        "/form/logout",
        "//evil.example",
        "/%2F%2Fevil",
        "/api/session/..%2f..%2f",
        "/../../etc/passwd",
        "/%2e%2e/",
        "/%",
        "/%zz",
        "/%00",
        "/%ff",
    ]);
    let tail = prop_oneof![
        3 => Just(String::new()),
        1 => "[ -~]{0,12}",
        1 => any::<String>(),
    ];
    let query = prop_oneof![
        2 => Just(None),
        1 => "[ -~]{0,16}".prop_map(Some),
        1 => any::<String>().prop_map(Some),
        1 => select(vec!["a=%0d%0aSet-Cookie:%20x=y", "x=\r\nX-Injected: 1", "next=//evil.example", "\\\\evil", "é=ü"])
            .prop_map(|q| Some(q.to_owned())),
    ];
    prop_oneof![
        4 => (prefix, tail, query).prop_map(|(p, t, q)| match q {
            Some(q) => format!("{p}{t}?{q}"),
            None => format!("{p}{t}"),
        }),
        1 => any::<String>().prop_map(|s| format!("/{s}")),
    ]
}

#[test]
fn targets_and_locations() {
    let tally = Tally::default();
    let sandbox = Sandbox::new();
    let (app, _store) = sandbox.app();
    let redirects = AtomicUsize::new(0);
    proptest!(cases(1000), |(method in method(), target in target())| {
        let response = tally.run(|| app.handle(Request::new(method, &target, &[], b"")))?;
        tally.status(response.status(), &format!("{} {target:?}", method.as_str()))?;
        if let Some(location) = response.header("location") {
            redirects.fetch_add(1, Relaxed);
            check_location(location)?;
        }
        for (name, value) in response.headers() {
            prop_assert!(!name.eq_ignore_ascii_case("x-injected"));
            prop_assert!(!value.contains(['\r', '\n', '\0']), "header {} = {:?}", name, value);
        }
    });
    eprintln!(
        "[bad_input] 1d: {} redirects seen through App::handle",
        redirects.load(Relaxed)
    );
    let strays = sandbox.strays(true);
    tally.outside.fetch_add(strays.len(), Relaxed);
    assert!(strays.is_empty(), "{strays:?}");
    tally.assert_clean("1d targets");
}

// ---------------------------------------------------------------------------------------
// Part 1e: the session-file decoder and clear_expired
// ---------------------------------------------------------------------------------------

/// Whether a piece of a generated session file is valid, invalid, or left undecided.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Good,
    Bad,
    Unknown,
}
use Verdict::{Bad, Good, Unknown};

fn piece(options: Vec<(&'static str, Verdict)>) -> impl Strategy<Value = (String, Verdict)> {
    // Mostly valid pieces, so that whole valid files come up often too.
    let good: Vec<(&'static str, Verdict)> = options
        .iter()
        .filter(|(_, v)| *v == Good)
        .copied()
        .collect();
    prop_oneof![3 => select(good), 1 => select(options)].prop_map(|(t, v)| (t.to_owned(), v))
}

/// A session file assembled from good, bad and doubtful pieces, with whether it must load.
fn session_file_text() -> impl Strategy<Value = (Vec<u8>, Verdict)> {
    let format = piece(vec![
        ("1", Good),
        (" 1 ", Good),
        ("2", Bad),
        ("0", Bad),
        ("-1", Bad),
        ("\"1\"", Bad),
        ("1.0", Bad),
        ("1e400", Bad),
        ("null", Bad),
        ("4294967297", Bad),
        ("[]", Bad),
    ]);
    let expires_at = prop_oneof![
        4 => piece(vec![
            ("\"2999-01-01T00:00:00Z\"", Good),
            ("\"9999-12-31T23:59:59Z\"", Good),
            ("\"2999-01-01T00:00:00.123456789Z\"", Good),
            ("\"2000-01-01T00:00:00Z\"", Bad),
            ("\"1970-01-01T00:00:00Z\"", Bad),
            ("\"2999-13-45T00:00:00Z\"", Bad),
            ("\"2999-02-30T00:00:00Z\"", Bad),
            ("\"soon\"", Bad),
            ("\"\"", Bad),
            ("null", Bad),
            ("12345", Bad),
            ("\"+10000-01-01T00:00:00Z\"", Bad),
            ("\"2999-06-30T23:59:60Z\"", Unknown),
            ("\"2999-01-01t00:00:00z\"", Unknown),
            ("\"2999-01-01T00:00:00+00:00\"", Unknown),
            ("\"2999-01-01 00:00:00Z\"", Unknown),
        ]),
        1 => any::<String>().prop_map(|s| (Value::String(s).to_string(), Unknown)),
    ];
    let expiry = prop_oneof![
        6 => piece(vec![
            ("", Good),
            ("\"default\"", Good),
            ("\"browser_close\"", Good),
            ("{\"seconds\": 0}", Good),
            ("{\"seconds\": 18446744073709551615}", Good),
            ("{\"at\": \"2000-01-01T00:00:00Z\"}", Good),
            ("{\"at\": \"9999-12-31T23:59:59Z\"}", Good),
            ("\"Default\"", Bad),
            ("\"seconds\"", Bad),
            ("{\"seconds\": -1}", Bad),
            ("{\"seconds\": 1.5}", Bad),
            ("{\"seconds\": 1e3}", Bad),
            ("{\"seconds\": 18446744073709551616}", Bad),
            ("{\"seconds\": \"5\"}", Bad),
            ("{\"at\": \"soon\"}", Bad),
            ("{\"at\": 5}", Bad),
            ("{}", Bad),
            ("[]", Bad),
            ("null", Bad),
            ("{\"seconds\": 1, \"at\": \"2000-01-01T00:00:00Z\"}", Bad),
        ]),
        1 => any::<u64>().prop_map(|n| (format!("{{\"seconds\": {n}}}"), Good)),
        1 => any::<i64>().prop_map(|n| (format!("{{\"seconds\": {n}}}"), if n >= 0 { Good } else { Bad })),
    ];
    let data = prop_oneof![
        3 => json_object().prop_map(|v| (v.to_string(), Good)),
        1 => piece(vec![("", Bad), ("[]", Bad), ("null", Bad), ("\"x\"", Bad), ("1", Bad), ("{}", Good)]),
    ];
    let extra = piece(vec![
        ("", Good),
        ("", Good),
        ("", Good),
        ("\"extra\": [1, 2]", Good),
        ("\"format\": 1", Good),
        ("\"data\": {}", Good),
        ("\"expires_at\": \"2999-01-01T00:00:00Z\"", Good),
        ("\"expiry\": \"default\"", Good),
    ]);
    let wrapper = piece(vec![
        ("", Good),
        ("\n\n  ", Good),
        ("\u{feff}", Bad),
        (" x", Bad),
        ("{}", Bad),
        ("\0", Bad),
    ]);
    (
        format,
        expires_at,
        expiry,
        data,
        extra,
        wrapper,
        any::<u64>(),
    )
        .prop_map(
            |(format, expires_at, expiry, data, extra, wrapper, order)| {
                let fields = [
                    ("format", format),
                    ("expires_at", expires_at),
                    ("expiry", expiry),
                    ("data", data),
                ];
                // An empty text means the field is missing.
                let mut verdicts = vec![extra.1];
                let mut parts: Vec<String> = Vec::new();
                for (name, (text, verdict)) in &fields {
                    if !text.is_empty() {
                        verdicts.push(*verdict);
                        parts.push(format!("\"{name}\": {text}"));
                    }
                }
                if !extra.0.is_empty() {
                    parts.push(extra.0.clone());
                }
                // Each field at most once (serde refuses duplicates); all but expiry required.
                for name in ["format", "expires_at", "expiry", "data"] {
                    let key = format!("\"{name}\":");
                    let count = parts.iter().filter(|p| p.starts_with(&key)).count();
                    if count > 1 || (count == 0 && name != "expiry") {
                        verdicts.push(Bad);
                    }
                }
                // Any field order is the same file.
                let n = parts.len();
                parts.rotate_left((order as usize) % n);
                if order & (1 << 40) != 0 {
                    parts.reverse();
                }
                let mut text = format!("{{{}}}", parts.join(", "));
                match wrapper.0.as_str() {
                    "\u{feff}" => text.insert(0, '\u{feff}'),
                    other => text.push_str(other),
                }
                verdicts.push(wrapper.1);
                let verdict = if verdicts.contains(&Bad) {
                    Bad
                } else if verdicts.contains(&Unknown) {
                    Unknown
                } else {
                    Good
                };
                (text.into_bytes(), verdict)
            },
        )
}

/// Whether loaded data agrees with the file's own text, read as plain JSON.
fn check_loaded(bytes: &[u8], data: &Map<String, Value>) -> Result<(), TestCaseError> {
    let file: Value = serde_json::from_slice(bytes)
        .map_err(|e| TestCaseError::fail(format!("loaded a file that is not JSON: {e}")))?;
    prop_assert_eq!(&file["format"], &json!(1));
    prop_assert_eq!(&file["data"], &Value::Object(data.clone()));
    let expires = file["expires_at"].as_str().and_then(parse_rfc3339);
    prop_assert!(
        expires.is_some_and(|t| t > SystemTime::now()),
        "loaded a file with expires_at {:?}",
        file["expires_at"]
    );
    Ok(())
}

/// How to damage a valid file.
#[derive(Debug, Clone)]
enum Damage {
    Flip(usize, u8),
    Truncate(usize),
    Set(usize, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Damage::Flip(i, m)),
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Set(i, b)),
    ]
}

fn apply_damage(bytes: &[u8], damage: &Damage) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let n = out.len();
    match *damage {
        Damage::Flip(i, mask) => out[i % n] ^= mask,
        Damage::Truncate(i) => out.truncate(i % n),
        Damage::Set(i, b) => out[i % n] = b,
    }
    out
}

/// The bytes of a valid session file holding `data`, written through `Session::save`.
fn valid_file(store: &Arc<FileStore>, data: &Value) -> (SessionKey, Vec<u8>) {
    let mut session = Session::new(store.clone(), None, SessionConfig::default());
    if let Value::Object(map) = data {
        session.update(map.clone());
    }
    session.insert("_anchor", "valid");
    session.save().expect("save a valid session");
    let key = *session.session_key().expect("saved");
    let bytes = fs::read(store.path_of(&key)).expect("read the session file");
    (key, bytes)
}

#[test]
fn session_file_decoder() {
    let tally = Tally::default();
    let sandbox = Sandbox::new();
    let store = sandbox.store();
    let dyn_store: Arc<dyn SessionStore> = store.clone();

    // Arbitrary bytes as a session file: no panic, no error, and loaded only if valid.
    proptest!(cases(500), |(bytes in prop::collection::vec(any::<u8>(), 0..400))| {
        let key = SessionKey::generate();
        fs::write(store.path_of(&key), &bytes).expect("write");
        let loaded = tally.run(|| store.load(&key))?;
        match loaded {
            Ok(None) => {}
            Ok(Some(l)) => check_loaded(&bytes, &l.record.data)?,
            Err(e) => prop_assert!(false, "load failed: {}", e),
        }
    });

    // Assembled files: each valid piece in place loads, any invalid piece does not.
    let verdicts: [AtomicUsize; 4] = Default::default();
    proptest!(cases(1000), |((bytes, verdict) in session_file_text())| {
        let key = SessionKey::generate();
        fs::write(store.path_of(&key), &bytes).expect("write");
        let loaded = tally.run(|| store.load(&key))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let slot = match (verdict, matches!(loaded, Ok(Some(_)))) {
            (Good, _) => 0,
            (Bad, _) => 1,
            (Unknown, true) => 2,
            (Unknown, false) => 3,
        };
        verdicts[slot].fetch_add(1, Relaxed);
        match loaded {
            Err(e) => prop_assert!(false, "load failed: {} on {:?}", e, text),
            Ok(Some(l)) => {
                prop_assert!(verdict != Bad, "loaded an invalid file: {:?}", text);
                check_loaded(&bytes, &l.record.data)?;
                // The loaded session is usable: read its expiry, change it, save it.
                let outcome = tally.run(|| {
                    let mut session = Session::new(dyn_store.clone(), Some(key), SessionConfig::default());
                    let _ = (session.len(), session.expiry_age(), session.expiry_date());
                    let _ = session.expire_at_browser_close();
                    session.insert("touched", true);
                    session.save()
                })?;
                prop_assert!(outcome.is_ok(), "save after load: {:?}", outcome.err());
                let after = fs::read(store.path_of(&key)).expect("read back");
                let file: Value = serde_json::from_slice(&after).expect("saved file is JSON");
                prop_assert_eq!(&file["data"]["touched"], &json!(true));
            }
            Ok(None) => prop_assert!(verdict != Good, "a valid file did not load: {:?}", text),
        }
    });

    // Valid files with one byte damaged or truncated.
    proptest!(cases(500), |(data in json_object(), how in damage())| {
        let (key, bytes) = valid_file(&store, &data);
        let damaged = apply_damage(&bytes, &how);
        fs::write(store.path_of(&key), &damaged).expect("write");
        let loaded = tally.run(|| store.load(&key))?;
        match loaded {
            Ok(None) => {}
            Ok(Some(l)) => check_loaded(&damaged, &l.record.data)?,
            Err(e) => prop_assert!(false, "load failed: {}", e),
        }
    });

    let strays = sandbox.strays(true);
    tally.outside.fetch_add(strays.len(), Relaxed);
    assert!(strays.is_empty(), "{strays:?}");
    eprintln!(
        "[bad_input] 1e assembled files: {} valid (all loaded), {} invalid (none loaded), {} undecided ({} loaded)",
        verdicts[0].load(Relaxed),
        verdicts[1].load(Relaxed),
        verdicts[2].load(Relaxed) + verdicts[3].load(Relaxed),
        verdicts[2].load(Relaxed),
    );
    tally.assert_clean("1e session-file decoder (load)");
}

type Data = Map<String, Value>;

/// What one entry of a directory to clear is.
#[derive(Debug, Clone)]
enum Entry {
    Valid(Value),
    Damaged(Value, Damage),
    Assembled(Vec<u8>),
    Garbage(Vec<u8>),
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        2 => json_object().prop_map(Entry::Valid),
        3 => (json_object(), damage()).prop_map(|(v, d)| Entry::Damaged(v, d)),
        3 => session_file_text().prop_map(|(b, _)| Entry::Assembled(b)),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Entry::Garbage),
    ]
}

#[test]
fn clear_expired_on_hostile_directories() {
    let tally = Tally::default();
    let removed = AtomicUsize::new(0);
    let kept = AtomicUsize::new(0);
    let has_mkfifo = std::process::Command::new("mkfifo")
        .arg("--version")
        .output()
        .is_ok();
    proptest!(cases(24), |(entries in prop::collection::vec(entry(), 1..24))| {
        let sandbox = Sandbox::new();
        let store = sandbox.store();
        let dir = sandbox.sessions();
        // The session files, each with whether it loaded before the sweep.
        let mut files: Vec<(SessionKey, bool, Option<Data>)> = Vec::new();
        for entry in &entries {
            let (key, bytes) = match entry {
                Entry::Valid(v) => valid_file(&store, v),
                Entry::Damaged(v, d) => {
                    let (key, bytes) = valid_file(&store, v);
                    (key, apply_damage(&bytes, d))
                }
                Entry::Assembled(b) | Entry::Garbage(b) => (SessionKey::generate(), b.clone()),
            };
            fs::write(store.path_of(&key), &bytes).expect("write");
            let live = store.load(&key).expect("load").filter(|l| {
                l.record.expires_at > SystemTime::now() + Duration::from_secs(60)
            });
            files.push((key, live.is_some(), live.map(|l| std::sync::Arc::unwrap_or_clone(l.record.data))));
        }
        // Entries that are not session files, and special files named like sessions.
        let others = [
            "notes.txt".to_owned(),
            ".hidden".to_owned(),
            format!("{}.json.bak", SessionKey::generate()),
            format!("{}.json", SessionKey::generate().to_string().to_uppercase()),
            format!(".{}.tmp", SessionKey::generate()),
            "..json".to_owned(),
        ];
        for name in &others {
            fs::write(dir.join(name), b"{}").expect("write other");
        }
        let symlink = dir.join(format!("{}.json", SessionKey::generate()));
        std::os::unix::fs::symlink(sandbox.victim(), &symlink).expect("symlink");
        let subdir = dir.join(format!("{}.json", SessionKey::generate()));
        fs::create_dir(&subdir).expect("dir");
        fs::write(subdir.join("inside.json"), b"{}").expect("file in dir");
        let fifo = dir.join(format!("{}.json", SessionKey::generate()));
        if has_mkfifo {
            std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        }

        let report = tally.run(|| store.clear_expired())?;
        prop_assert!(report.is_ok(), "clear_expired failed: {:?}", report.err());

        for (key, live, data) in &files {
            let path = store.path_of(key);
            if *live {
                kept.fetch_add(1, Relaxed);
                prop_assert!(path.is_file(), "a live session was removed: {}", key);
                let again = store.load(key).expect("load").map(|l| std::sync::Arc::unwrap_or_clone(l.record.data));
                prop_assert_eq!(&again, data);
            } else {
                removed.fetch_add(1, Relaxed);
                prop_assert!(!path.exists(), "an expired or corrupt file was left: {}", key);
            }
        }
        for name in &others {
            prop_assert!(dir.join(name).is_file(), "{} was removed", name);
        }
        prop_assert!(fs::symlink_metadata(&symlink).is_ok_and(|m| m.file_type().is_symlink()));
        prop_assert!(subdir.join("inside.json").is_file());
        if has_mkfifo {
            prop_assert!(fs::symlink_metadata(&fifo).is_ok());
            let loaded = tally.run(|| store.load(&SessionKey::parse(
                fifo.file_stem().and_then(|s| s.to_str()).unwrap_or_default()).expect("key")))?;
            prop_assert!(matches!(loaded, Ok(None)));
        }
        let strays = sandbox.strays(false);
        tally.outside.fetch_add(strays.len(), Relaxed);
        prop_assert!(strays.is_empty(), "{:?}", strays);
    });
    eprintln!(
        "[bad_input] 1e clear_expired: {} live sessions kept, {} expired/corrupt files removed",
        kept.load(Relaxed),
        removed.load(Relaxed)
    );
    tally.assert_clean("1e clear_expired on hostile directories");
}

// ---------------------------------------------------------------------------------------
// Part 1f: the page's forms with a valid CSRF double submit, and the page that shows them
// ---------------------------------------------------------------------------------------

const CSRF: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn form_field() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        4 => select(vec!["name", "value", "mode", "seconds"]).prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    let value = prop_oneof![
        2 => "[a-z_]{1,8}",
        2 => json_value().prop_map(|v| v.to_string()),
        1 => any::<String>(),
        1 => select(vec![
            "<script>alert(1)</script>", "\"><img src=x onerror=alert(1)>", "browser_close",
            "default", "seconds", "3600", "18446744073709551615", "18446744073709551616", "-1",
            "0", " 7200 ", "", "_messages", "\u{0}", "..\\..\\x",
        ])
        .prop_map(str::to_owned),
    ];
    (name, value)
}

#[test]
fn forms_through_the_app() {
    let tally = Tally::default();
    let sandbox = Sandbox::new();
    let (app, _store) = sandbox.app();
    let seed = app.handle(Request::new(Method::Get, "/setsession/", &[], b""));
    let existing = set_session_cookie(&seed).expect("a session");
    let routes = select(vec![
        "/form/set",
        "/form/delete",
        "/form/incr",
        "/form/expiry",
        "/form/cycle",
        "/form/logout",
    ]);
    let body = prop_oneof![
        5 => (
            proptest::option::weighted(0.8, form_field().prop_map(|(_, v)| v)),
            proptest::option::weighted(0.8, form_field().prop_map(|(_, v)| v)),
            prop::collection::vec(form_field(), 0..3),
            proptest::bool::weighted(0.85),
        )
            .prop_map(|(name, value, fields, csrf)| {
                let mut pairs: Vec<String> = fields
                    .iter()
                    .map(|(n, v)| format!("{}={}", urlencode(n), urlencode(v)))
                    .collect();
                if let Some(name) = name {
                    pairs.push(format!("name={}", urlencode(&name)));
                }
                if let Some(value) = value {
                    pairs.push(format!("value={}", urlencode(&value)));
                }
                if csrf {
                    pairs.push(format!("csrfmiddlewaretoken={CSRF}"));
                }
                pairs.join("&").into_bytes()
            }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    let flash = prop_oneof![3 => Just(None), 1 => any::<String>().prop_map(Some)];
    let outcomes = std::sync::Mutex::new(BTreeMap::<u16, usize>::new());
    let read_back = AtomicUsize::new(0);
    proptest!(cases(300), |(route in routes, body in body, with_session in any::<bool>(), flash in flash)| {
        let mut cookie = format!("csrftoken={CSRF}");
        if with_session {
            cookie.push_str(&format!("; sessionid={existing}"));
        }
        if let Some(flash) = &flash {
            cookie.push_str(&format!("; flash={flash}"));
        }
        let headers = [
            ("Cookie", cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        let posted = tally.run(|| app.handle(Request::new(Method::Post, route, &headers, &body)))?;
        tally.status(posted.status(), route)?;
        prop_assert!(matches!(posted.status(), 303 | 400 | 403), "{} answered {}", route, posted.status());
        outcomes.lock().expect("outcomes").entry(posted.status()).and_modify(|n| *n += 1).or_insert(1usize);

        // The session the answer leaves the client with.
        let key = match set_session_cookie(&posted) {
            Some(k) if k.is_empty() => None,
            Some(k) => Some(k),
            None if with_session => Some(existing.clone()),
            None => None,
        };
        let mut next = format!("csrftoken={CSRF}");
        if let Some(k) = &key {
            next.push_str(&format!("; sessionid={k}"));
        }
        let page = tally.run(|| app.handle(Request::new(Method::Get, "/", &[("Cookie", &next)], b"")))?;
        tally.status(page.status(), "GET /")?;
        prop_assert_eq!(page.status(), 200);
        let html = String::from_utf8_lossy(page.body()).to_lowercase();
        prop_assert!(!html.contains("<script") && !html.contains("<img"), "unescaped markup in the page");

        // A write the server answered for can be read back (unless it asked for a short expiry).
        let text = String::from_utf8_lossy(&body).into_owned();
        let short_expiry = route == "/form/expiry" && text.contains("seconds=");
        if let Some(k) = key.filter(|_| posted.status() == 303 && !short_expiry) {
            let cookie = format!("sessionid={k}");
            let api = tally.run(|| app.handle(Request::new(Method::Get, "/api/session", &[("Cookie", &cookie)], b"")))?;
            tally.status(api.status(), "GET /api/session")?;
            let answer = response_json(&api);
            read_back.fetch_add(1, Relaxed);
            prop_assert_eq!(answer["session_key"].as_str(), Some(k.as_str()), "the session written by {} is unreadable", route);
        }
    });
    let strays = sandbox.strays(true);
    tally.outside.fetch_add(strays.len(), Relaxed);
    assert!(strays.is_empty(), "{strays:?}");
    eprintln!(
        "[bad_input] 1f: form answers {:?}; {} written sessions read back",
        outcomes.lock().expect("outcomes"),
        read_back.load(Relaxed)
    );
    tally.assert_clean("1f forms (valid CSRF) + page render");
}

// ---------------------------------------------------------------------------------------
// Found by this suite, now fixed
// ---------------------------------------------------------------------------------------

/// A value nested 126 deep used to be written, answered 200, and never load again (the file
/// wraps the data in two more levels, over serde_json's limit of 128), losing the session.
/// Now the store refuses values nested deeper than it can read back (400), and the session
/// stays as it was.
#[test]
fn deeply_nested_value_is_stored_readably() {
    let sandbox = Sandbox::new();
    let (app, store) = sandbox.app();
    let seeded = app.handle(Request::new(Method::Get, "/setsession/", &[], b""));
    let key = set_session_cookie(&seeded).expect("a session");
    let cookie = format!("sessionid={key}");

    let n = 126;
    let body = format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
    let posted = app.handle(Request::new(
        Method::Post,
        "/api/session",
        &[("Cookie", &cookie), ("Content-Type", "application/json")],
        body.as_bytes(),
    ));
    assert!(posted.status() < 500);
    if posted.status() != 200 {
        // Refusing the value is a fine answer too, as long as the session is still there.
        let got = app.handle(Request::new(
            Method::Get,
            "/getsession/",
            &[("Cookie", &cookie)],
            b"",
        ));
        assert_eq!(got.status(), 200, "a refused write lost the session");
        return;
    }
    assert_eq!(set_session_cookie(&posted).as_deref(), Some(key.as_str()));
    let parsed = SessionKey::parse(&key).expect("key");
    assert!(
        store.load(&parsed).expect("load").is_some(),
        "the session file written for a 200 does not load"
    );
    let got = app.handle(Request::new(
        Method::Get,
        "/getsession/",
        &[("Cookie", &cookie)],
        b"",
    ));
    assert_eq!(got.status(), 200, "the session's other keys are gone");
}

// ---------------------------------------------------------------------------------------
// Part 2: a corpus of hostile raw HTTP requests against the real binary
// ---------------------------------------------------------------------------------------

struct Case {
    family: &'static str,
    label: String,
    bytes: Vec<u8>,
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `METHOD target HTTP/1.1`, `Host`, the header lines given, a blank line, the body.
fn request(method: &str, target: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn json_post(target: &str, body: &[u8]) -> Vec<u8> {
    let length = format!("Content-Length: {}", body.len());
    request(
        "POST",
        target,
        &["Content-Type: application/json", &length],
        body,
    )
}

/// Whether the server's HTTP layer sees a whole head in `bytes` (LF LF or LF CR LF).
/// Whether `bytes` hold a whole request head. Empty lines before a request line are not a
/// request: RFC 9112 §2.2 has a server ignore them, so "\r\n\r\n" alone is no head.
fn has_head_end(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(bytes.len());
    let bytes = &bytes[start..];
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

fn corpus(issued_key: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |family: &'static str, label: &str, bytes: Vec<u8>| {
        cases.push(Case {
            family,
            label: label.to_owned(),
            bytes,
        });
    };

    // Request lines.
    let f = "request line";
    for (label, line) in [
        ("missing version", "GET /setsession/"),
        ("HTTP/2.0", "GET /setsession/ HTTP/2.0"),
        ("HTTP/0.9", "GET /setsession/ HTTP/0.9"),
        ("HTTP/1.2", "GET /setsession/ HTTP/1.2"),
        ("HTTP/3", "GET /setsession/ HTTP/3"),
        ("HTTP/1.10", "GET /setsession/ HTTP/1.10"),
        ("lowercase version", "GET /setsession/ http/1.1"),
        ("HTTPS/1.1", "GET /setsession/ HTTPS/1.1"),
        ("trailing word", "GET /setsession/ HTTP/1.1 extra"),
        ("lowercase method", "get /setsession/ HTTP/1.1"),
        ("mixed-case method", "GeT /setsession/ HTTP/1.1"),
        (
            "absolute-form",
            "GET http://example.com/setsession/ HTTP/1.1",
        ),
        ("absolute-form https", "GET https://evil.example/ HTTP/1.1"),
        ("authority-form", "CONNECT example.com:443 HTTP/1.1"),
        ("asterisk", "OPTIONS * HTTP/1.1"),
        ("asterisk GET", "GET * HTTP/1.1"),
        ("empty target", "GET  HTTP/1.1"),
        ("double spaces", "GET  /setsession/  HTTP/1.1"),
        ("tabs", "GET\t/setsession/\tHTTP/1.1"),
        ("leading space", " GET /setsession/ HTTP/1.1"),
        ("fragment", "GET /setsession/#frag HTTP/1.1"),
        ("only method", "GET"),
        ("relative target", "GET setsession/ HTTP/1.1"),
        ("dot target", "GET ./setsession/ HTTP/1.1"),
    ] {
        add(
            f,
            label,
            format!("{line}\r\nHost: localhost\r\n\r\n").into_bytes(),
        );
    }
    add(
        f,
        "8 KB method",
        request(&"A".repeat(8192), "/setsession/", &[], b""),
    );
    add(
        f,
        "20 KB target",
        request("GET", &format!("/{}", "a".repeat(20_000)), &[], b""),
    );
    add(
        f,
        "40 KB target",
        request("GET", &format!("/{}", "a".repeat(40_000)), &[], b""),
    );
    add(
        f,
        "leading CRLF",
        cat(&[b"\r\n", &request("GET", "/setsession/", &[], b"")]),
    );
    add(
        f,
        "no headers",
        b"GET /setsession/ HTTP/1.1\r\n\r\n".to_vec(),
    );
    add(f, "blank lines only", b"\r\n\r\n".to_vec());
    add(f, "HTTP/1.0", b"GET /setsession/ HTTP/1.0\r\n\r\n".to_vec());
    add(
        f,
        "bare LF endings",
        b"GET /setsession/ HTTP/1.1\nHost: localhost\n\n".to_vec(),
    );

    // Control bytes (NUL, SOH, DEL, bare CR) in every position of a request.
    let f = "control bytes";
    let base = b"GET /getsession/?a=b HTTP/1.1\r\nHost: localhost\r\nCookie: k=v\r\n\r\n";
    for byte in [0x00u8, 0x01, 0x7f, b'\r'] {
        for at in 0..=base.len() {
            let mut bytes = base.to_vec();
            bytes.insert(at, byte);
            add(f, &format!("0x{byte:02x} at {at}"), bytes);
        }
    }

    // Bytes that are not UTF-8.
    let f = "non-UTF-8";
    for (label, bad) in [
        ("0xff", &b"\xff"[..]),
        ("0xc3 0x28", b"\xc3\x28"),
        ("surrogate", b"\xed\xa0\x80"),
        ("overlong slash", b"\xc0\xaf"),
        ("latin-1 e-acute", b"\xe9"),
    ] {
        add(
            f,
            &format!("{label} in path"),
            cat(&[
                b"GET /set",
                bad,
                b"session/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
            ]),
        );
        add(
            f,
            &format!("{label} in query"),
            cat(&[
                b"GET /setsession/?q=",
                bad,
                b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
            ]),
        );
        add(
            f,
            &format!("{label} in header value"),
            cat(&[
                b"GET /setsession/ HTTP/1.1\r\nHost: localhost\r\nX-A: ",
                bad,
                b"\r\n\r\n",
            ]),
        );
        add(
            f,
            &format!("{label} in header name"),
            cat(&[
                b"GET /setsession/ HTTP/1.1\r\nHost: localhost\r\nX-",
                bad,
                b": 1\r\n\r\n",
            ]),
        );
        add(
            f,
            &format!("{label} in cookie"),
            cat(&[
                b"GET /setsession/ HTTP/1.1\r\nHost: localhost\r\nCookie: sessionid=",
                bad,
                b"\r\n\r\n",
            ]),
        );
        add(
            f,
            &format!("{label} in method"),
            cat(&[
                b"GE",
                bad,
                b"T /setsession/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
            ]),
        );
        add(
            f,
            &format!("{label} in Content-Type"),
            cat(&[
                b"POST /api/session HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json",
                bad,
                b"\r\nContent-Length: 2\r\n\r\n{}",
            ]),
        );
    }

    // Header syntax.
    let f = "header syntax";
    for (label, lines) in [
        ("no colon", "X-No-Colon"),
        ("colon first", ": value"),
        ("space before colon", "Host : test"),
        ("space in name", "X Bad: 1"),
        ("obs-fold", "X-A: a\r\n b"),
        ("obs-fold tab", "X-A: a\r\n\tb"),
        ("obs-fold cookie", "Cookie: a=b\r\n sessionid=x"),
        ("fold first line", " X-A: a"),
        ("only spaces", "   "),
        ("bare CR in value", "X-A: a\rb"),
        ("empty value", "X-A:"),
        ("long name", &format!("X-{}: 1", "n".repeat(4000))),
        ("long value", &format!("X-A: {}", "v".repeat(16_000))),
        ("name with slash", "X/A: 1"),
        ("name with brackets", "X[A]: 1"),
    ] {
        add(
            f,
            label,
            format!("GET /setsession/ HTTP/1.1\r\nHost: localhost\r\n{lines}\r\n\r\n").into_bytes(),
        );
    }
    let many =
        |n: usize, line: &str| -> Vec<String> { (0..n).map(|i| format!("{line}{i}")).collect() };
    let h63 = many(63, "X-N: ");
    add(
        f,
        "64 headers",
        request(
            "GET",
            "/setsession/",
            &h63.iter().map(String::as_str).collect::<Vec<_>>(),
            b"",
        ),
    );
    let h64 = many(64, "X-N: ");
    add(
        f,
        "65 headers",
        request(
            "GET",
            "/setsession/",
            &h64.iter().map(String::as_str).collect::<Vec<_>>(),
            b"",
        ),
    );
    add(
        f,
        "LF and CRLF mixed",
        b"GET /setsession/ HTTP/1.1\nHost: localhost\r\nX-A: 1\n\r\n".to_vec(),
    );

    // Content-Length.
    let f = "content-length";
    let body = b"{\"a\":1}";
    for (label, lines, payload) in [
        ("exact", vec!["Content-Length: 7"], &body[..]),
        (
            "duplicate equal",
            vec!["Content-Length: 7", "Content-Length: 7"],
            &body[..],
        ),
        (
            "conflicting",
            vec!["Content-Length: 7", "Content-Length: 8"],
            &body[..],
        ),
        ("list in one", vec!["Content-Length: 7, 7"], &body[..]),
        ("negative", vec!["Content-Length: -1"], &body[..]),
        ("plus sign", vec!["Content-Length: +7"], &body[..]),
        ("hex", vec!["Content-Length: 0x7"], &body[..]),
        ("exponent", vec!["Content-Length: 7e0"], &body[..]),
        ("leading spaces", vec!["Content-Length:    7"], &body[..]),
        ("trailing spaces", vec!["Content-Length: 7   "], &body[..]),
        ("inner space", vec!["Content-Length: 7 7"], &body[..]),
        ("empty", vec!["Content-Length:"], &body[..]),
        ("leading zeros", vec!["Content-Length: 0000007"], &body[..]),
        (
            "20 digits",
            vec!["Content-Length: 99999999999999999999"],
            &body[..],
        ),
        ("huge", vec!["Content-Length: 999999999999"], &body[..]),
        (
            "u64 max",
            vec!["Content-Length: 18446744073709551615"],
            &body[..],
        ),
        ("over the limit", vec!["Content-Length: 65537"], &body[..]),
        ("longer than body", vec!["Content-Length: 100"], &body[..]),
        ("shorter than body", vec!["Content-Length: 3"], &body[..]),
        ("zero with body", vec!["Content-Length: 0"], &body[..]),
        ("uppercase name", vec!["CONTENT-LENGTH: 7"], &body[..]),
        (
            "unicode digits",
            vec!["Content-Length: \u{0667}"],
            &body[..],
        ),
    ] {
        let mut headers = vec!["Content-Type: application/json"];
        headers.extend(lines);
        add(f, label, request("POST", "/api/session", &headers, payload));
    }

    // Transfer-Encoding.
    let f = "transfer-encoding";
    let chunked_body = b"7\r\n{\"a\":1}\r\n0\r\n\r\n";
    for te in [
        "chunked",
        "gzip",
        "chunked, identity",
        " chunked",
        "CHUNKED",
        "identity",
        "gzip, chunked",
        "chunked\t",
        "x",
    ] {
        let line = format!("Transfer-Encoding: {te}");
        add(
            f,
            &format!("{te:?}"),
            request(
                "POST",
                "/api/session",
                &["Content-Type: application/json", &line],
                chunked_body,
            ),
        );
        add(
            f,
            &format!("{te:?} + Content-Length"),
            request(
                "POST",
                "/api/session",
                &["Content-Type: application/json", &line, "Content-Length: 7"],
                body,
            ),
        );
    }
    add(
        f,
        "two TE headers",
        request(
            "POST",
            "/api/session",
            &["Transfer-Encoding: chunked", "Transfer-Encoding: identity"],
            chunked_body,
        ),
    );
    add(
        f,
        "TE then smuggled GET",
        request(
            "POST",
            "/api/session",
            &["Content-Length: 4", "Transfer-Encoding: chunked"],
            b"0\r\n\r\nGET /setsession/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ),
    );

    // Expect.
    let f = "expect";
    for (label, expect, with_body) in [
        ("100-continue with body", "100-continue", true),
        ("100-continue without body", "100-continue", false),
        ("100-Continue", "100-Continue", true),
        ("200-ok", "200-ok", true),
        ("empty", "", true),
        ("list", "100-continue, foo", true),
        ("on GET", "100-continue", false),
    ] {
        let line = format!("Expect: {expect}");
        let bytes = if label == "on GET" {
            request("GET", "/setsession/", &[&line], b"")
        } else if with_body {
            request(
                "POST",
                "/api/session",
                &["Content-Type: application/json", "Content-Length: 7", &line],
                body,
            )
        } else {
            request(
                "POST",
                "/api/session",
                &["Content-Type: application/json", "Content-Length: 7", &line],
                b"",
            )
        };
        add(f, label, bytes);
    }

    // Connection.
    let f = "connection";
    let long_tokens = format!("Connection: {}", vec!["x"; 3000].join(", "));
    for (label, line) in [
        ("close", "Connection: close"),
        ("keep-alive", "Connection: keep-alive"),
        ("upgrade", "Connection: Upgrade\r\nUpgrade: websocket"),
        (
            "h2c",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ),
        ("close, keep-alive", "Connection: close, close, keep-alive"),
        (
            "hop-by-hop Content-Length",
            "Connection: Content-Length, Cookie",
        ),
        ("empty", "Connection:"),
        ("3000 tokens", &long_tokens),
        ("two headers", "Connection: keep-alive\r\nConnection: close"),
    ] {
        add(
            f,
            label,
            format!("GET /setsession/ HTTP/1.1\r\nHost: localhost\r\n{line}\r\n\r\n").into_bytes(),
        );
    }
    add(
        f,
        "HTTP/1.0 keep-alive",
        b"GET /setsession/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_vec(),
    );

    // Host.
    let f = "host";
    let long_host = format!("Host: {}", "h".repeat(8000));
    for (label, lines) in [
        ("no Host", ""),
        ("empty", "Host:"),
        ("two", "Host: a\r\nHost: b"),
        ("8 KB", long_host.as_str()),
        ("evil", "Host: evil.example"),
        ("bad port", "Host: localhost:99999"),
        ("open bracket", "Host: [::1"),
        ("space", "Host: a b"),
        ("userinfo", "Host: user@evil.example"),
        ("url", "Host: http://evil.example/"),
        ("unicode", "Host: \u{e9}.example"),
        ("slashes", "Host: ../../etc"),
    ] {
        let mut text = "GET /setsession/ HTTP/1.1\r\n".to_owned();
        if !lines.is_empty() {
            text.push_str(lines);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        add(f, label, text.into_bytes());
    }

    // Traversal paths.
    let f = "traversal";
    for (method, target) in [
        ("GET", "/../../etc/passwd"),
        ("GET", "/%2e%2e/%2e%2e/etc/passwd"),
        ("GET", "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd"),
        ("GET", "/./setsession/"),
        ("GET", "/setsession/../getsession/"),
        ("GET", "//etc/passwd"),
        ("GET", "/\\..\\..\\windows\\win.ini"),
        ("GET", "/sessions/"),
        ("GET", "/api/session/..%2f..%2f"),
        ("DELETE", "/api/session/..%2f..%2fetc%2fpasswd"),
        ("DELETE", "/api/session/%2e%2e"),
        ("DELETE", "/api/session/.."),
        ("POST", "/api/session/incr/..%2F..%2Fx"),
        ("POST", "/api/session/incr/%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
        ("POST", "/api/session/incr/sessions%2f..%2f..%2fx.json"),
        ("GET", "/getsession"),
        ("GET", "//getsession"),
    ] {
        add(
            f,
            &format!("{method} {target}"),
            request(method, target, &[], b""),
        );
    }

    // Percent-encoding edges.
    let f = "percent";
    for (method, target) in [
        ("GET", "/%"),
        ("GET", "/%z"),
        ("GET", "/%zz"),
        ("GET", "/%00"),
        ("GET", "/%ff"),
        ("GET", "/%2"),
        ("GET", "/setsession%2f"),
        ("GET", "/setsession?%"),
        ("GET", "/setsession?%00=%ff&%zz"),
        ("GET", "/setsession?a=%0d%0aX-Injected:%201"),
        ("GET", "/getsession?next=//evil.example/%5c"),
        ("GET", "/setsession?\\\\evil.example"),
        ("DELETE", "/api/session/%"),
        ("DELETE", "/api/session/%zz"),
        ("DELETE", "/api/session/%00"),
        ("DELETE", "/api/session/%ff"),
        ("DELETE", "/api/session/%c3%28"),
        ("POST", "/api/session/incr/%ff"),
        ("POST", "/api/session/incr/%00"),
        ("POST", "/api/session/incr/%0d%0aX-Injected:%201"),
    ] {
        add(
            f,
            &format!("{method} {target}"),
            request(method, target, &[], b""),
        );
    }

    // Cookies.
    let f = "cookies";
    let fresh = SessionKey::generate().to_string();
    let hundred: String = (0..100).map(|i| format!("c{i}=v{i}; ")).collect::<String>()
        + &format!("sessionid={fresh}");
    let big_cookie = format!("sessionid={}", "a".repeat(16 * 1024));
    let cookie_values = [
        "sessionid=../../etc/passwd".to_owned(),
        "sessionid=..%2F..%2Fetc%2Fpasswd".to_owned(),
        "sessionid=/etc/passwd".to_owned(),
        "sessionid=../sessions/../../x".to_owned(),
        format!("sessionid={}", fresh.to_uppercase()),
        format!("sessionid=\"{fresh}\""),
        format!("sessionid={fresh}"),
        format!("sessionid={fresh}/../x"),
        format!("sessionid={fresh}.json"),
        format!("sessionid={}", fresh.replace('-', "")),
        format!("sessionid={{{fresh}}}"),
        format!("sessionid=urn:uuid:{fresh}"),
        format!("sessionid={issued_key}"),
        format!("sessionid={issued_key}; sessionid=../../x"),
        format!("sessionid=../../x; sessionid={issued_key}"),
        "sessionid=00000000-0000-0000-0000-000000000000".to_owned(),
        hundred,
        big_cookie,
        String::new(),
        ";;;;".to_owned(),
        "=".to_owned(),
        "sessionid".to_owned(),
        "sessionid=; sessionid=; sessionid=".to_owned(),
        "sessionid=\0".to_owned(),
    ];
    for value in &cookie_values {
        let line = format!("Cookie: {value}");
        let label: String = value.chars().take(48).collect();
        add(
            f,
            &format!("setsession {label}"),
            request("GET", "/setsession/", &[&line], b""),
        );
        add(
            f,
            &format!("getsession {label}"),
            request("GET", "/getsession/", &[&line], b""),
        );
    }
    let lines: Vec<String> = (0..100).map(|i| format!("Cookie: c{i}=v")).collect();
    add(
        f,
        "100 Cookie headers",
        request(
            "GET",
            "/setsession/",
            &lines.iter().map(String::as_str).collect::<Vec<_>>(),
            b"",
        ),
    );
    let lines: Vec<String> = (0..60)
        .map(|i| format!("Cookie: sessionid=../{i}"))
        .collect();
    add(
        f,
        "60 sessionid headers",
        request(
            "GET",
            "/setsession/",
            &lines.iter().map(String::as_str).collect::<Vec<_>>(),
            b"",
        ),
    );

    // Every route with every method.
    let f = "route x method";
    let routes = [
        "/",
        "/form/set",
        "/form/delete",
        "/form/incr",
        "/form/expiry",
        "/form/cycle",
        "/form/logout",
        "/setsession/",
        "/getsession/",
        "/api/session",
        "/api/session/x",
        "/api/session/flush",
        "/api/session/cycle",
        "/api/session/expiry",
        "/api/session/incr/x",
        "/nowhere",
    ];
    for route in routes {
        for method in [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "FOO",
        ] {
            add(
                f,
                &format!("{method} {route}"),
                request(method, route, &[], b""),
            );
        }
    }

    // Bodies.
    let f = "bodies";
    let depth = |open: &str, close: &str, n: usize| {
        format!("{{\"a\":{}1{}}}", open.repeat(n), close.repeat(n))
    };
    let many_keys = format!(
        "{{{}}}",
        (0..4000)
            .map(|i| format!("\"k{i}\":{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let pretty_bomb = format!(
        "{{{}}}",
        (0..200)
            .map(|i| format!("\"k{i}\":{}{}", "[".repeat(120), "]".repeat(120)))
            .collect::<Vec<_>>()
            .join(",")
    );
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("unclosed", b"{\"a\":1".to_vec()),
        ("trailing comma", b"{\"a\":1,}".to_vec()),
        ("single quotes", b"{'a':1}".to_vec()),
        ("bare key", b"{a:1}".to_vec()),
        ("undefined", b"{\"a\":undefined}".to_vec()),
        ("NaN", b"{\"a\":NaN}".to_vec()),
        ("Infinity", b"{\"a\":Infinity}".to_vec()),
        ("leading zero", b"{\"a\":01}".to_vec()),
        ("extra brace", b"{\"a\":1}}".to_vec()),
        ("trailing text", b"{\"a\":1} x".to_vec()),
        ("two objects", b"{\"a\":1}{\"b\":2}".to_vec()),
        ("comment", b"{\"a\":1 /* c */}".to_vec()),
        ("array", b"[1,2]".to_vec()),
        ("string", b"\"str\"".to_vec()),
        ("null", b"null".to_vec()),
        ("number", b"1".to_vec()),
        ("empty", b"".to_vec()),
        ("spaces", b"   ".to_vec()),
        ("BOM", b"\xef\xbb\xbf{\"a\":1}".to_vec()),
        (
            "UTF-16LE",
            b"\xff\xfe{\x00\"\x00a\x00\"\x00:\x001\x00}\x00".to_vec(),
        ),
        ("lone surrogate escape", b"{\"a\":\"\\ud800\"}".to_vec()),
        ("NUL escape key", b"{\"\\u0000\":1}".to_vec()),
        ("raw NUL in string", b"{\"a\":\"\x00\"}".to_vec()),
        ("invalid UTF-8 in string", b"{\"a\":\"\xff\"}".to_vec()),
        ("duplicate keys", b"{\"a\":1,\"a\":2}".to_vec()),
        ("huge exponent", b"{\"n\":1e999999}".to_vec()),
        ("tiny exponent", b"{\"n\":1e-999999}".to_vec()),
        (
            "30 digits",
            b"{\"n\":123456789012345678901234567890}".to_vec(),
        ),
        ("u64 max + 1", b"{\"n\":18446744073709551616}".to_vec()),
        ("i64 min - 1", b"{\"n\":-9223372036854775809}".to_vec()),
        ("minus zero", b"{\"n\":-0}".to_vec()),
        ("depth 10 000 arrays", depth("[", "]", 10_000).into_bytes()),
        (
            "depth 10 000 objects",
            format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)).into_bytes(),
        ),
        ("depth 126", depth("[", "]", 126).into_bytes()),
        ("depth 127", depth("[", "]", 127).into_bytes()),
        ("depth 128", depth("[", "]", 128).into_bytes()),
        ("4000 keys", many_keys.into_bytes()),
        ("pretty-print bomb", pretty_bomb.into_bytes()),
    ];
    for (label, body) in &bodies {
        add(f, label, json_post("/api/session", body));
    }
    for (label, ct) in [
        ("charset", "application/json; charset=utf-8"),
        ("uppercase", "APPLICATION/JSON"),
        ("text/plain", "text/plain"),
        ("jsonx", "application/jsonx"),
        ("empty", ""),
        ("params only", ";charset=utf-8"),
    ] {
        let line = format!("Content-Type: {ct}");
        add(
            f,
            &format!("Content-Type {label}"),
            request("POST", "/api/session", &[&line, "Content-Length: 7"], body),
        );
    }
    add(
        f,
        "no Content-Type",
        request("POST", "/api/session", &["Content-Length: 7"], body),
    );
    for seconds in [
        "-1",
        "1e20",
        "1.5",
        "18446744073709551615",
        "9223372036854775807",
        "\"5\"",
        "null",
        "0",
        "[]",
    ] {
        let b = format!("{{\"seconds\": {seconds}}}");
        add(
            f,
            &format!("expiry {seconds}"),
            json_post("/api/session/expiry", b.as_bytes()),
        );
    }
    add(
        f,
        "form garbage",
        request(
            "POST",
            "/form/set",
            &[
                "Content-Type: application/x-www-form-urlencoded",
                "Content-Length: 11",
            ],
            b"%%%=&&=%zz",
        ),
    );
    add(f, "body 65536", json_post("/api/session", &[b' '; 65_536]));
    add(f, "body 65537", json_post("/api/session", &[b' '; 65_537]));

    // Requests the client never completes.
    let f = "truncated";
    for (label, bytes) in [
        ("empty", &b""[..]),
        ("half a request line", b"GET /set"),
        ("no blank line", b"GET /setsession/ HTTP/1.1\r\nHost: localhost\r\n"),
        ("CR only", b"GET /setsession/ HTTP/1.1\r\nHost: localhost\r\n\r"),
        ("body cut", b"POST /api/session HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"a\":"),
    ] {
        add(f, label, bytes.to_vec());
    }

    cases
}

/// One response off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
}

/// Parses every response in `data`; `head_only`: the first final response has no body.
fn parse_answers(mut data: &[u8], mut head_only: bool) -> Result<Vec<Answer>, String> {
    let mut answers = Vec::new();
    while !data.is_empty() {
        let end = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("partial response head: {:?}", String::from_utf8_lossy(data)))?;
        let head = String::from_utf8_lossy(&data[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not a status line: {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        data = &data[end + 4..];
        if (100..200).contains(&status) {
            continue;
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let length = if head_only { 0 } else { length };
        head_only = false;
        if data.len() < length {
            return Err(format!("short body: {} of {length}", data.len()));
        }
        data = &data[length..];
        answers.push(Answer { status, headers });
    }
    Ok(answers)
}

/// Sends `bytes` on a new connection, half-closes, and reads until the server closes.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    // The server may answer and close before it has read everything (431, 413).
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !out.is_empty() => {
                return Ok(out);
            }
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no end of answer in 5 s",
            ));
        }
    }
}

#[test]
fn hostile_request_corpus() {
    let started = Instant::now();
    let mut server = TestServer::start(&[]);
    let agent = common::agent();
    // One key the server really issued, to see it honoured next to hostile ones.
    let first = agent
        .get(&server.url("/setsession/"))
        .call()
        .expect("setsession");
    let issued = common::set_cookies(&first)
        .iter()
        .map(|c| common::cookie_value(c))
        .find(|v| is_canonical_v4(v))
        .expect("a session cookie");

    let cases = corpus(&issued);
    // BAD_INPUT_VERBOSE=1 prints every case with its answer.
    let verbose = std::env::var_os("BAD_INPUT_VERBOSE").is_some();
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    let mut failures: Vec<String> = Vec::new();
    let mut table: BTreeMap<&str, (usize, BTreeMap<String, usize>)> = BTreeMap::new();
    let mut crashes = 0;
    let mut server_errors = 0;
    for case in &cases {
        let what = format!("[{}] {}", case.family, case.label);
        let complete = has_head_end(&case.bytes);
        let head_only = case.bytes.starts_with(b"HEAD ");
        let seen = match exchange(server.addr, &case.bytes) {
            Err(e) => {
                failures.push(format!("{what}: {e}"));
                "error".to_owned()
            }
            Ok(data) if data.is_empty() => {
                if complete {
                    failures.push(format!(
                        "{what}: closed without an answer to a complete request"
                    ));
                }
                "closed".to_owned()
            }
            Ok(data) => match parse_answers(&data, head_only) {
                Err(e) => {
                    failures.push(format!("{what}: {e}"));
                    "garbled".to_owned()
                }
                Ok(answers) => {
                    for answer in &answers {
                        let s = answer.status;
                        if s >= 500 && s != 505 && s != 503 {
                            server_errors += 1;
                            failures.push(format!("{what}: answered {s}"));
                        }
                        for (name, value) in &answer.headers {
                            if name.eq_ignore_ascii_case("location")
                                && (value.starts_with("//")
                                    || !value.is_ascii()
                                    || value.contains(['\\', ' ']))
                            {
                                failures.push(format!("{what}: unsafe Location {value:?}"));
                            }
                            if name.eq_ignore_ascii_case("x-injected") {
                                failures.push(format!("{what}: injected header"));
                            }
                            if name.eq_ignore_ascii_case("set-cookie")
                                && let Some(rest) = value.strip_prefix("sessionid=")
                            {
                                let key = rest.split(';').next().unwrap_or_default();
                                if !key.is_empty() && !is_canonical_v4(key) {
                                    failures.push(format!("{what}: Set-Cookie {value:?}"));
                                }
                                let sent = String::from_utf8_lossy(&case.bytes);
                                if !key.is_empty() && key != issued && sent.contains(key) {
                                    failures
                                        .push(format!("{what}: adopted the client's key {key}"));
                                }
                            }
                        }
                    }
                    answers
                        .iter()
                        .map(|a| a.status.to_string())
                        .collect::<Vec<_>>()
                        .join("+")
                }
            },
        };
        if !server.is_alive() {
            crashes += 1;
            failures.push(format!("{what}: the server died"));
            break;
        }
        if verbose {
            eprintln!("[bad_input]     {what}: {seen}");
        }
        let row = table.entry(case.family).or_default();
        row.0 += 1;
        *row.1.entry(seen).or_default() += 1;
    }

    // A normal client is still served.
    let again = agent
        .get(&server.url("/setsession/"))
        .call()
        .expect("setsession at the end");
    assert_eq!(again.status(), 200);
    let get = agent
        .get(&server.url("/getsession/"))
        .call()
        .expect("getsession at the end");
    assert_eq!(get.status(), 200);

    // Nothing but sessions/ in the server's directory, nothing but sessions in sessions/.
    let mut outside = Vec::new();
    for name in names_in(server.dir.path()) {
        if name != "sessions" {
            outside.push(name);
        }
    }
    for name in names_in(&server.sessions()) {
        if !is_session_file_name(&name) {
            outside.push(format!("sessions/{name}"));
        }
    }
    if server.log().contains("panicked") {
        crashes += 1;
        failures.push("the server log shows a panic".into());
    }

    eprintln!("[bad_input] 2 raw HTTP corpus: statuses per family (first+pipelined answers)");
    eprintln!("[bad_input]   {:<18} {:>5}  statuses", "family", "count");
    for (family, (count, statuses)) in &table {
        let seen: Vec<String> = statuses.iter().map(|(s, n)| format!("{s} x{n}")).collect();
        eprintln!("[bad_input]   {family:<18} {count:>5}  {}", seen.join(", "));
    }
    eprintln!(
        "[bad_input] {:<44} inputs {:>6}   crashes {}   5xx {}   files outside sessions/ {}   ({:.1} s, {} session files)",
        "2 raw HTTP corpus",
        cases.len(),
        crashes,
        server_errors,
        outside.len(),
        started.elapsed().as_secs_f64(),
        server.session_files().len(),
    );
    assert!(outside.is_empty(), "unexpected files: {outside:?}");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let families: BTreeSet<&str> = cases.iter().map(|c| c.family).collect();
    assert!(families.len() >= 10);
}
