//! Fault injection against the real binary: SIGKILL in a storm of writes, a full disk, a
//! read-only or deleted sessions directory, hostile entries named like sessions, a lock held
//! by another process, and four servers sharing one sessions directory.
//!
//! Each case prints its figure on stderr: `cargo test --test faults -- --nocapture`.
//! The tmpfs cases need `mount` (root); without it they print `SKIPPED ...` and pass, unless
//! `FILESESSION_TMPFS_TEST=require` (set by `.ci/run`) makes that a failure.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{TestServer, agent, cookie_value, header, set_cookies};
use filesession::SessionKey;
use serde_json::{Value, json};

type Resp = ureq::http::Response<ureq::Body>;

fn body(mut r: Resp) -> String {
    r.body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_string()
        .unwrap_or_default()
}

fn cookie(key: &str) -> String {
    format!("sessionid={key}")
}

/// GET `url`, with `sessionid=<key>` sent by hand when given, from a fresh agent.
fn get_as(url: &str, key: Option<&str>) -> Resp {
    let mut request = agent().get(url);
    if let Some(key) = key {
        request = request.header("Cookie", cookie(key));
    }
    request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// POST a JSON body to `url`, with `sessionid=<key>` sent by hand when given.
fn post_json_as(agent: &ureq::Agent, url: &str, key: Option<&str>, json: &str) -> Resp {
    let mut request = agent.post(url).header("Content-Type", "application/json");
    if let Some(key) = key {
        request = request.header("Cookie", cookie(key));
    }
    request
        .send(json)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// POST without a body to `url`, with `sessionid=<key>` sent by hand.
fn post_empty_as(agent: &ureq::Agent, url: &str, key: &str) -> Resp {
    agent
        .post(url)
        .header("Cookie", cookie(key))
        .send_empty()
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// The session keys a response sets (deletion cookies excluded).
fn session_cookies(r: &Resp) -> Vec<String> {
    set_cookies(r)
        .iter()
        .filter(|c| c.starts_with("sessionid="))
        .map(|c| cookie_value(c))
        .filter(|v| !v.is_empty())
        .collect()
}

/// The one session key a response sets.
fn new_key(r: &Resp) -> String {
    let keys = session_cookies(r);
    assert_eq!(keys.len(), 1, "one session cookie: {:?}", set_cookies(r));
    keys[0].clone()
}

/// Creates a session (`/setsession/`) through `server`; its key.
fn setsession(server: &TestServer) -> String {
    let r = get_as(&server.url("/setsession/"), None);
    assert_eq!(r.status(), 200);
    new_key(&r)
}

fn file_of(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.json"))
}

fn read_session(dir: &Path, key: &str) -> Value {
    let text = fs::read(file_of(dir, key)).unwrap_or_else(|e| panic!("session {key}: {e}"));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("session {key} is not JSON: {e}"))
}

/// The names in `dir` that end with `suffix`.
fn names_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A tmpfs mounted on `<tempdir>/sessions` (mode 0700), lazily unmounted on drop; the
/// temp dir goes after the unmount.
struct Tmpfs {
    path: PathBuf,
    _root: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one, or says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = root.path().join("sessions");
        fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { path, _root: root })
    }

    fn remount(&self, how: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -o remount,{how} failed");
    }

    /// `mount -o remount,<how>`, refused or not (`EBUSY` while a file is open for writing).
    fn try_remount(&self, how: &str) -> bool {
        Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&self.path)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run mount")
            .success()
    }

    fn path_str(&self) -> String {
        self.path.to_str().expect("UTF-8 temp path").to_owned()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

// ---- 1. SIGKILL during a storm of writes ----

/// One client of the storm: its session key and every `i` whose write got a 2xx.
struct Client {
    thread: usize,
    key: String,
    acked: Vec<u64>,
}

fn storm_key(thread: usize, i: u64) -> String {
    format!("k{thread}_{i}")
}

/// Whether a session file's bytes are a whole document, as the store decides: JSON, and when
/// it begins with a `"check"` (128 bits of the SHA-256 of everything after the check's line,
/// up to the document's end), that check right.
fn is_whole(bytes: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    const START: &[u8] = b"{\n  \"check\": \"";
    if serde_json::from_slice::<Value>(bytes).is_err() {
        return false;
    }
    if !bytes.starts_with(START) {
        return true; // no check: a document read as it is
    }
    let text = bytes.trim_ascii_end();
    let from = START.len() + 32 + 3;
    let Some(body) = text.get(from..) else {
        return false;
    };
    let hex: String = Sha256::digest(body)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    bytes[START.len()..START.len() + 32] == *hex.as_bytes()
}

/// Storm clients from this index on are counters: each rewrites one key of its session
/// (`c<thread>`: i), a change that fits the file, so it is written in place.
const COUNTER_FROM: usize = 6;

/// Checks that every acknowledged write of `client` is in `data`; the number found.
fn check_acked(client: &Client, data: &Value, round: usize) -> usize {
    if client.thread >= COUNTER_FROM {
        // A counter's file holds its last acknowledged value, or the one in flight.
        let last = client.acked.last().copied().unwrap_or(0);
        let name = format!("c{}", client.thread);
        let held = data.get(&name).and_then(Value::as_u64);
        assert!(
            held == Some(last) || held == Some(last + 1),
            "round {round}: session {} holds {name} = {held:?}, the last acknowledged {last}",
            client.key
        );
        return client.acked.len();
    }
    for &i in &client.acked {
        let name = storm_key(client.thread, i);
        assert_eq!(
            data.get(&name),
            Some(&json!(i)),
            "round {round}: session {} lost the acknowledged write {name}",
            client.key
        );
    }
    client.acked.len()
}

#[test]
fn kill_9_during_a_storm_of_writes_loses_no_acknowledged_write() {
    // 6 clients add a key each time (their files outgrow their room: new files and
    // renames), 2 rewrite one key (in place); a reader reads every file all along, without
    // a lock.
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 3;
    let started = Instant::now();
    let mut dir = tempfile::tempdir().unwrap();
    let mut old: Vec<Client> = Vec::new();
    let (mut acked_total, mut found_total, mut files_checked, mut leftovers) = (0, 0, 0, 0);
    let (mut old_reread, mut reads_total, mut caught_total) = (0, 0, 0);
    for round in 0..=ROUNDS {
        let mut server = TestServer::start_in(dir, &[]);
        // The sessions of the rounds before, through the new server, with the old cookies.
        for client in &old {
            let r = get_as(&server.url("/api/session"), Some(&client.key));
            assert_eq!(r.status(), 200);
            let v: Value = serde_json::from_str(&body(r)).unwrap();
            assert_eq!(v["session_key"], json!(client.key), "round {round}");
            check_acked(client, &v["data"], round);
            old_reread += 1;
        }
        if round == ROUNDS {
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(Barrier::new(CLIENTS + 1));
        let url = server.url("/api/session");
        let clients: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let (stop, ready, url) = (stop.clone(), ready.clone(), url.clone());
                thread::spawn(move || {
                    let a = agent();
                    let body_of = |i: u64| {
                        if t >= COUNTER_FROM {
                            format!("{{\"c{t}\": {i}}}")
                        } else {
                            format!("{{\"k{t}_{i}\": {i}}}")
                        }
                    };
                    let first = post_json_as(&a, &url, None, &body_of(0));
                    assert_eq!(first.status(), 200);
                    let v: Value = serde_json::from_str(&body(first)).unwrap();
                    let key = v["session_key"].as_str().unwrap().to_owned();
                    let mut acked = vec![0];
                    let mut refused = 0;
                    ready.wait();
                    for i in 1u64.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let sent = a
                            .post(&url)
                            .header("Content-Type", "application/json")
                            .send(body_of(i));
                        match sent {
                            Ok(r) if r.status().is_success() => acked.push(i),
                            Ok(_) => refused += 1,
                            Err(_) => break, // the server is gone
                        }
                    }
                    (
                        Client {
                            thread: t,
                            key,
                            acked,
                        },
                        refused,
                    )
                })
            })
            .collect();
        // A reader, as the store reads: every session file, without any lock, over and over;
        // a copy caught half written (its check wrong, or its JSON cut) is read again, as the
        // store does, and every file must then be whole.
        let reader = {
            let (stop, sessions) = (stop.clone(), server.sessions());
            thread::spawn(move || {
                let (mut reads, mut caught, mut torn) = (0u64, 0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    for name in names_ending(&sessions, ".json") {
                        let mut whole = false;
                        for attempt in 0..4 {
                            let Ok(bytes) = fs::read(sessions.join(&name)) else {
                                whole = true; // removed meanwhile
                                break;
                            };
                            reads += 1;
                            if is_whole(&bytes) {
                                whole = true;
                                break;
                            }
                            if attempt == 0 {
                                caught += 1;
                            }
                            thread::sleep(Duration::from_micros(50));
                        }
                        if !whole {
                            torn.push(name);
                        }
                    }
                }
                (reads, caught, torn)
            })
        };
        ready.wait();
        thread::sleep(Duration::from_millis(1500));
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("reap");
        stop.store(true, Ordering::Relaxed);
        let (reads, caught, torn) = reader.join().expect("reader thread");
        assert!(
            torn.is_empty(),
            "round {round}: a reader saw torn files: {torn:?}"
        );
        assert!(reads > 0, "round {round}: the reader read");
        reads_total += reads;
        caught_total += caught;
        let sessions = server.sessions();
        let mut round_acked = 0;
        let mut round_clients = Vec::new();
        for handle in clients {
            let (client, refused) = handle.join().expect("client thread");
            assert_eq!(refused, 0, "non-2xx answers during the storm");
            round_acked += client.acked.len();
            round_clients.push(client);
        }
        // Every session file parses, whole.
        let files = names_ending(&sessions, ".json");
        for name in &files {
            let bytes = fs::read(sessions.join(name)).unwrap();
            let v: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("round {round}: {name} is torn: {e}"));
            assert_eq!(v["format"], json!(1), "{name}");
            assert!(is_whole(&bytes), "{name}: its check does not hold");
            assert!(v["data"].is_object(), "{name}");
        }
        let mut round_found = 0;
        for client in &round_clients {
            round_found +=
                check_acked(client, &read_session(&sessions, &client.key)["data"], round);
        }
        let round_leftovers = names_ending(&sessions, ".tmp").len();
        eprintln!(
            "faults/kill-9 round {round}: {round_acked} writes acknowledged by 8 clients in 1.5 s, \
             {round_found} found after SIGKILL, {} files parsed, {round_leftovers} temp leftovers",
            files.len()
        );
        acked_total += round_acked;
        found_total += round_found;
        files_checked += files.len();
        leftovers += round_leftovers;
        old.extend(round_clients);
        // Keep the directory for the next server.
        dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    }
    assert_eq!(acked_total, found_total);
    eprintln!(
        "faults/kill-9: {ROUNDS} rounds: writes acknowledged {acked_total}, writes found \
         {found_total}, files checked {files_checked}, temp leftovers {leftovers}, \
         old sessions re-read through a restarted server {old_reread}, files read whole by a \
         reader without a lock during the storms {reads_total} (caught half written, then read \
         whole: {caught_total}); {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---- 2. Disk full ----

/// Writes a filler file in `dir` until the file system says ENOSPC; its size.
fn fill(dir: &Path) -> u64 {
    let mut filler = fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match filler.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filler: {e}"),
        }
    }
    // Every page is taken: even one byte in a new file does not fit.
    let probe = dir.join("probe");
    let err = fs::write(&probe, b"x").expect_err("the disk is full");
    assert_eq!(err.raw_os_error(), Some(28), "{err}");
    let _ = fs::remove_file(&probe);
    written
}

/// A tmpfs case that cannot mount says so and passes, unless `FILESESSION_TMPFS_TEST=require`
/// (set by `.ci/run`), which makes it a failure.
fn skipped_tmpfs(what: &str, why: &str) {
    common::skip(
        what,
        &format!("needs root to mount a tmpfs: {why}"),
        "FILESESSION_TMPFS_TEST",
    );
}

#[test]
fn a_full_disk_answers_507_and_keeps_every_session_whole() {
    let started = Instant::now();
    let mnt = match Tmpfs::mount("1m") {
        Ok(mnt) => mnt,
        Err(why) => {
            skipped_tmpfs("faults/disk-full", &why);
            return;
        }
    };
    let dir = mnt.path.clone();
    let mut server = TestServer::start(&[("SESSION_FILE_PATH", &mnt.path_str())]);
    let a = setsession(&server);
    let r = post_json_as(
        &agent(),
        &server.url("/api/session"),
        None,
        r#"{"cart": [1, 2]}"#,
    );
    assert_eq!(r.status(), 200);
    let b = new_key(&r);
    let c = setsession(&server);
    let before_a = fs::read(file_of(&dir, &a)).unwrap();
    let before_b = fs::read(file_of(&dir, &b)).unwrap();
    let filled = fill(&dir);

    let mut statuses = Vec::new();
    // A new session.
    let r = get_as(&server.url("/setsession/"), None);
    statuses.push(("new /setsession/", r.status().as_u16()));
    assert_eq!(r.status(), 507);
    assert!(set_cookies(&r).is_empty(), "{:?}", set_cookies(&r));
    let text = body(r);
    assert!(text.contains("out of space"), "{text}");
    let r = post_json_as(&agent(), &server.url("/api/session"), None, r#"{"x": 1}"#);
    statuses.push(("new POST /api/session", r.status().as_u16()));
    assert_eq!(r.status(), 507);
    assert!(set_cookies(&r).is_empty());
    let v: Value = serde_json::from_str(&body(r)).unwrap();
    assert!(v["error"].as_str().unwrap().contains("out of space"), "{v}");
    // Existing sessions: a change that fits the file is written in place, which needs no
    // new block: it works on a full disk.
    let r = post_empty_as(&agent(), &server.url("/api/session/incr/n"), &b);
    statuses.push(("existing POST incr (in place)", r.status().as_u16()));
    assert_eq!(r.status(), 200);
    let in_place_b = fs::read(file_of(&dir, &b)).unwrap();
    assert_eq!(read_session(&dir, &b)["data"]["n"], json!(1));
    assert_eq!(
        in_place_b.len(),
        before_b.len(),
        "the same file, the same size"
    );
    // One that does not fit needs a new file: 507, and the file stays as it was.
    let big = format!(r#"{{"more": "{}"}}"#, "d".repeat(3000));
    let r = post_json_as(&agent(), &server.url("/api/session"), Some(&a), &big);
    statuses.push(("existing POST /api/session (grows)", r.status().as_u16()));
    assert_eq!(r.status(), 507);
    assert!(set_cookies(&r).is_empty());
    let text = body(r);
    assert!(text.contains("out of space"), "{text}");
    // Reads.
    let r = get_as(&server.url("/getsession/"), Some(&a));
    statuses.push(("existing GET /getsession/", r.status().as_u16()));
    assert_eq!(r.status(), 200);
    assert_eq!(body(r), "abc abc@gmail.com");
    let r = get_as(&server.url("/api/session"), Some(&b));
    statuses.push(("existing GET /api/session", r.status().as_u16()));
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_str(&body(r)).unwrap();
    assert_eq!(v["data"], json!({"cart": [1, 2], "n": 1}));
    // A logout needs no space: it works, and says so.
    let r = post_empty_as(&agent(), &server.url("/api/session/flush"), &c);
    statuses.push(("existing POST flush", r.status().as_u16()));
    assert_eq!(r.status(), 200);
    assert!(session_cookies(&r).is_empty(), "{:?}", set_cookies(&r));
    assert!(
        set_cookies(&r).iter().any(|c| c.contains("Max-Age=0")),
        "the cookie is deleted"
    );
    assert!(!file_of(&dir, &c).exists(), "the logged-out file is gone");
    // Nothing else changed, nothing left behind.
    assert_eq!(fs::read(file_of(&dir, &a)).unwrap(), before_a);
    assert_eq!(fs::read(file_of(&dir, &b)).unwrap(), in_place_b);
    assert_eq!(
        names_ending(&dir, ".json"),
        {
            let mut v = vec![format!("{a}.json"), format!("{b}.json")];
            v.sort();
            v
        },
        "no session file was created while full"
    );
    assert!(
        names_ending(&dir, ".tmp").is_empty(),
        "{:?}",
        names_ending(&dir, ".tmp")
    );
    assert!(server.is_alive());

    // Space again: writes work.
    fs::remove_file(dir.join("filler")).unwrap();
    let r = post_json_as(&agent(), &server.url("/api/session"), Some(&a), &big);
    assert_eq!(r.status(), 200);
    assert_eq!(new_key(&r), a);
    assert_eq!(
        read_session(&dir, &a)["data"]["more"],
        json!("d".repeat(3000))
    );
    let d = setsession(&server);
    assert_eq!(read_session(&dir, &d)["data"]["sname"], json!("abc"));
    eprintln!(
        "faults/disk-full: filler {filled} bytes on a 1 MiB tmpfs; while full: {statuses:?}; \
         a session file unchanged by a refused write: {} bytes, byte for byte; one written in \
         place: {} bytes; 0 temp files left; after freeing: 200 with Set-Cookie; {:.1} s",
        before_a.len(),
        in_place_b.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---- 3. The sessions directory made read-only, or deleted ----

#[test]
fn a_read_only_sessions_directory_answers_5xx_and_reads_still_work() {
    let started = Instant::now();
    let mnt = match Tmpfs::mount("4m") {
        Ok(mnt) => mnt,
        Err(why) => {
            skipped_tmpfs("faults/read-only", &why);
            return;
        }
    };
    let dir = mnt.path.clone();
    let mut server = TestServer::start(&[("SESSION_FILE_PATH", &mnt.path_str())]);
    let a = setsession(&server);
    // A read and a write in place: the server keeps the file open (for writing) for the
    // session's next request. It closes it once idle (100 ms without a request), so that
    // the remount is not refused as busy for long (issue 22: it was refused for good).
    let r = post_json_as(
        &agent(),
        &server.url("/api/session"),
        Some(&a),
        r#"{"y": 1}"#,
    );
    assert_eq!(r.status(), 200);
    assert_eq!(get_as(&server.url("/getsession/"), Some(&a)).status(), 200);
    let before = fs::read(file_of(&dir, &a)).unwrap();
    let asked = Instant::now();
    let mut tries = 0;
    while !mnt.try_remount("ro") {
        tries += 1;
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "remount,ro still refused after {tries} tries in 10 s: the server holds a file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let remounted_after = asked.elapsed();

    let mut statuses = Vec::new();
    let r = get_as(&server.url("/setsession/"), None);
    statuses.push(r.status().as_u16());
    assert!(r.status().is_server_error(), "{}", r.status());
    assert!(set_cookies(&r).is_empty());
    let new_message = body(r);
    assert!(new_message.contains("Read-only"), "{new_message}");
    let r = post_json_as(
        &agent(),
        &server.url("/api/session"),
        Some(&a),
        r#"{"x": 1}"#,
    );
    statuses.push(r.status().as_u16());
    assert!(r.status().is_server_error(), "{}", r.status());
    assert!(set_cookies(&r).is_empty());
    let v: Value = serde_json::from_str(&body(r)).unwrap();
    let existing_message = v["error"].as_str().unwrap().to_owned();
    assert!(existing_message.contains("Read-only"), "{existing_message}");
    assert!(!existing_message.contains(&a), "no key in the message");
    let r = get_as(&server.url("/getsession/"), Some(&a));
    statuses.push(r.status().as_u16());
    assert_eq!(r.status(), 200);
    assert_eq!(body(r), "abc abc@gmail.com");
    // A logout that cannot remove the file says so and does not delete the cookie.
    let r = post_empty_as(&agent(), &server.url("/api/session/flush"), &a);
    statuses.push(r.status().as_u16());
    assert!(r.status().is_server_error(), "{}", r.status());
    assert!(set_cookies(&r).is_empty(), "{:?}", set_cookies(&r));
    assert_eq!(fs::read(file_of(&dir, &a)).unwrap(), before);
    assert!(server.is_alive());

    mnt.remount("rw");
    let r = post_json_as(
        &agent(),
        &server.url("/api/session"),
        Some(&a),
        r#"{"x": 1}"#,
    );
    assert_eq!(r.status(), 200);
    assert_eq!(new_key(&r), a);
    assert_eq!(read_session(&dir, &a)["data"]["x"], json!(1));
    let b = setsession(&server);
    assert!(file_of(&dir, &b).is_file());
    eprintln!(
        "faults/read-only: remount,ro with a kept file refused {tries} times, done after \
         {remounted_after:?}; statuses while ro (new write, existing write, read, logout): \
         {statuses:?}; messages: {new_message:?} / {existing_message:?}; after remount,rw: \
         200; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_deleted_sessions_directory_answers_500_saying_restart_and_is_never_followed() {
    let started = Instant::now();
    let mut server = TestServer::start(&[]);
    let dir = server.sessions();
    let a = setsession(&server);
    fs::remove_dir_all(&dir).unwrap();

    let mut statuses = Vec::new();
    let r = get_as(&server.url("/setsession/"), None);
    statuses.push(r.status().as_u16());
    assert_eq!(r.status(), 500);
    assert!(set_cookies(&r).is_empty());
    let new_message = body(r);
    assert!(new_message.contains("Restart the server"), "{new_message}");
    assert!(new_message.contains("nothing was saved"), "{new_message}");
    let r = post_json_as(
        &agent(),
        &server.url("/api/session"),
        Some(&a),
        r#"{"x": 1}"#,
    );
    statuses.push(r.status().as_u16());
    assert_eq!(r.status(), 500);
    assert!(set_cookies(&r).is_empty(), "{:?}", set_cookies(&r));
    let v: Value = serde_json::from_str(&body(r)).unwrap();
    let existing_message = v["error"].as_str().unwrap().to_owned();
    assert!(
        existing_message.contains("Restart the server"),
        "{existing_message}"
    );
    // A read is an error too, not "no session": the cookie is not deleted.
    let r = get_as(&server.url("/getsession/"), Some(&a));
    statuses.push(r.status().as_u16());
    assert_eq!(r.status(), 500);
    assert!(set_cookies(&r).is_empty(), "{:?}", set_cookies(&r));
    assert!(server.is_alive());
    assert!(
        !dir.exists(),
        "a failed write does not recreate the directory"
    );

    // A directory made again at the path is not adopted behind the operator's back.
    fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    let r = get_as(&server.url("/setsession/"), None);
    assert_eq!(
        r.status(),
        500,
        "the server never follows the path to a new directory"
    );
    assert!(
        fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing written there"
    );

    // A restart opens it.
    let restarted = TestServer::start(&[("SESSION_FILE_PATH", dir.to_str().unwrap())]);
    let b = setsession(&restarted);
    assert_eq!(read_session(&dir, &b)["data"]["sname"], json!("abc"));
    eprintln!(
        "faults/deleted-dir: statuses while gone (new write, old-cookie write, read): \
         {statuses:?}; messages: {new_message:?} / {existing_message:?}; server alive; \
         a directory made again at the path: still 500, nothing written; after a restart: \
         200; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---- 4. Hostile entries named like sessions ----

/// Makes one entry at a session's path.
type MakeEntry<'a> = Box<dyn Fn(&Path) + 'a>;

fn make_fifo(p: &Path) {
    let status = Command::new("mkfifo").arg(p).status().expect("mkfifo");
    assert!(status.success());
}

fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let at = haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("marker present");
    [&haystack[..at], with, &haystack[at + needle.len()..]].concat()
}

#[test]
fn hostile_entries_named_like_sessions_are_no_session() {
    let started = Instant::now();
    let mut server = TestServer::start(&[]);
    let dir = server.sessions();
    // A real session file as the template of valid ones.
    let template_key = setsession(&server);
    let template = read_session(&dir, &template_key);
    let with_data = |extra: &[(&str, Value)]| -> Vec<u8> {
        let mut v = template.clone();
        for (k, x) in extra {
            v["data"][*k] = x.clone();
        }
        serde_json::to_vec_pretty(&v).unwrap()
    };
    let valid = with_data(&[]);
    // Positive control: a copy of the template under a new name is a live session, so the
    // 404s below come from the entries' shape, not from a bad template.
    let control = SessionKey::generate().to_string();
    fs::write(file_of(&dir, &control), &valid).unwrap();
    let r = get_as(&server.url("/getsession/"), Some(&control));
    assert_eq!(r.status(), 200, "the control session loads");
    assert_eq!(body(r), "abc abc@gmail.com");

    let secret = format!("outside-secret-{}", SessionKey::generate());
    let outside = server.dir.path().join("outside.json");
    let outside_bytes = with_data(&[("secret", json!(secret))]);
    fs::write(&outside, &outside_bytes).unwrap();

    let entries: Vec<(&str, MakeEntry)> = vec![
        (
            "corrupt",
            Box::new(|p| {
                fs::write(p, b"{\"format\": 1, \"data\": {\"sname\": \"abc\"]]] }").unwrap()
            }),
        ),
        (
            "truncated",
            Box::new(|p| fs::write(p, &valid[..valid.len() / 2]).unwrap()),
        ),
        ("empty", Box::new(|p| fs::write(p, b"").unwrap())),
        (
            "huge 2 MiB",
            Box::new(|p| fs::write(p, with_data(&[("pad", json!("x".repeat(2 << 20)))])).unwrap()),
        ),
        (
            "non-UTF-8",
            Box::new(|p| {
                let bytes = with_data(&[("sname", json!("NONUTF8MARK"))]);
                fs::write(p, replace_bytes(&bytes, b"NONUTF8MARK", b"ab\xff\xfec")).unwrap()
            }),
        ),
        (
            "symlink outside",
            Box::new(|p| std::os::unix::fs::symlink(&outside, p).unwrap()),
        ),
        ("FIFO", Box::new(make_fifo)),
        ("directory", Box::new(|p| fs::create_dir(p).unwrap())),
    ];
    let mut figure = Vec::new();
    for (name, make) in &entries {
        let key = SessionKey::generate().to_string();
        let path = file_of(&dir, &key);
        make(&path);
        let shape = fs::symlink_metadata(&path).unwrap();
        let bytes_before = shape.is_file().then(|| fs::read(&path).unwrap());

        let t = Instant::now();
        let r = get_as(&server.url("/getsession/"), Some(&key));
        let get_ms = t.elapsed().as_millis();
        let get_status = r.status().as_u16();
        let text = body(r);
        assert_eq!(get_status, 404, "{name}: {text}");
        assert!(!text.contains(&secret), "{name}");
        assert!(
            get_ms < 2000,
            "{name}: GET took {get_ms} ms, the server hung"
        );

        let r = get_as(&server.url("/api/session"), Some(&key));
        assert_eq!(r.status(), 200, "{name}");
        let v: Value = serde_json::from_str(&body(r)).unwrap();
        assert_eq!(v["session_key"], Value::Null, "{name}: {v}");
        assert_eq!(v["data"], json!({}), "{name}: {v}");

        let t = Instant::now();
        let r = get_as(&server.url("/setsession/"), Some(&key));
        let set_ms = t.elapsed().as_millis();
        let set_status = r.status().as_u16();
        assert_eq!(set_status, 200, "{name}");
        assert!(set_ms < 2000, "{name}: took {set_ms} ms");
        let fresh = new_key(&r);
        assert_ne!(fresh, key, "{name}: the entry's key was adopted");
        assert!(file_of(&dir, &fresh).is_file(), "{name}: no new file");
        assert_eq!(read_session(&dir, &fresh)["data"]["sname"], json!("abc"));

        // Other writes through the hostile key: never a 5xx, never the entry's key.
        let r = post_json_as(
            &agent(),
            &server.url("/api/session"),
            Some(&key),
            r#"{"w": 1}"#,
        );
        assert_eq!(r.status(), 200, "{name}");
        assert_ne!(new_key(&r), key, "{name}");
        let r = post_empty_as(&agent(), &server.url("/api/session/cycle"), &key);
        assert!(r.status().as_u16() < 500, "{name}: cycle {}", r.status());
        assert!(!session_cookies(&r).contains(&key), "{name}");
        // (A logout through such a key: see the two `logout_with_a_cookie_naming_*` tests.)

        // The entry itself is left as it was.
        let after = fs::symlink_metadata(&path).unwrap();
        assert_eq!(after.file_type(), shape.file_type(), "{name}");
        if let Some(before) = bytes_before {
            assert_eq!(fs::read(&path).unwrap(), before, "{name}: entry rewritten");
        }
        assert!(server.is_alive(), "{name}: the server died");
        figure.push(format!("{name}: {get_status}/{set_status}"));
    }
    assert_eq!(
        fs::read(&outside).unwrap(),
        outside_bytes,
        "the symlink's target was written through"
    );
    let fifo_key_file = names_ending(&dir, ".json")
        .into_iter()
        .map(|n| dir.join(n))
        .filter(|p| fs::symlink_metadata(p).unwrap().file_type().is_fifo())
        .count();
    assert_eq!(fifo_key_file, 1);
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
    eprintln!(
        "faults/hostile-entries: {} entries tried (GET /getsession/ / GET /setsession/): {}; \
         symlink target byte-identical and never returned; server alive; {:.1} s",
        entries.len(),
        figure.join(", "),
        started.elapsed().as_secs_f64()
    );
}

/// A logout whose cookie names a symlink, FIFO or directory is a plain logout: the cookie is
/// deleted, the entry left alone, no server path shown.
#[test]
fn logout_with_a_cookie_naming_a_non_regular_entry_is_a_plain_logout() {
    let server = TestServer::start(&[]);
    let dir = server.sessions();
    let outside = server.dir.path().join("outside.json");
    fs::write(&outside, b"{\"secret\": 1}").unwrap();
    let entries: Vec<(&str, MakeEntry)> = vec![
        (
            "symlink outside",
            Box::new(|p| std::os::unix::fs::symlink(&outside, p).unwrap()),
        ),
        ("FIFO", Box::new(make_fifo)),
        ("directory", Box::new(|p| fs::create_dir(p).unwrap())),
    ];
    let mut seen = Vec::new();
    for (name, make) in &entries {
        let key = SessionKey::generate().to_string();
        let path = file_of(&dir, &key);
        make(&path);
        let r = post_empty_as(&agent(), &server.url("/api/session/flush"), &key);
        let status = r.status().as_u16();
        let cookies = set_cookies(&r);
        let text = body(r);
        seen.push(format!("{name}: {status} {text}"));
        eprintln!("faults/logout-non-regular {name}: {status} {cookies:?} {text}");
        assert_eq!(
            status, 200,
            "{name}: a logout of no session is a logout: {text}"
        );
        assert!(
            cookies.iter().any(|c| c.contains("Max-Age=0")),
            "{name}: the cookie is deleted: {cookies:?}"
        );
        assert!(
            !text.contains("sessions/"),
            "{name}: server path leaked: {text}"
        );
        assert!(
            fs::symlink_metadata(&path).is_ok(),
            "{name}: entry left alone"
        );
    }
    assert_eq!(fs::read(&outside).unwrap(), b"{\"secret\": 1}");
}

/// A logout whose cookie names a corrupt file leaves the file for clearsessions.
#[test]
fn logout_with_a_cookie_naming_a_corrupt_file_leaves_it() {
    let server = TestServer::start(&[]);
    let dir = server.sessions();
    let key = SessionKey::generate().to_string();
    let path = file_of(&dir, &key);
    fs::write(&path, b"{\"format\": 1, \"data\": {").unwrap();
    let r = get_as(&server.url("/getsession/"), Some(&key));
    assert_eq!(r.status(), 404, "the corrupt file is no session");
    let r = post_empty_as(&agent(), &server.url("/api/session/flush"), &key);
    assert_eq!(r.status(), 200);
    eprintln!(
        "faults/logout-corrupt: flush answered {}; the corrupt file exists afterwards: {}",
        r.status(),
        path.exists()
    );
    assert!(
        path.exists(),
        "the corrupt file named by the cookie was deleted"
    );
}

// ---- 5. A session's lock held by another process ----

#[test]
fn a_lock_held_elsewhere_gives_503_after_the_timeout_and_others_are_answered() {
    let started = Instant::now();
    let server = TestServer::start(&[("SESSION_LOCK_TIMEOUT", "1")]);
    let dir = server.sessions();
    let locked = setsession(&server);
    let others: Vec<String> = (0..3).map(|_| setsession(&server)).collect();
    let path = file_of(&dir, &locked);
    let before = fs::read(&path).unwrap();
    let file = fs::File::open(&path).unwrap();
    fs2::FileExt::lock_exclusive(&file).unwrap();

    let url = server.url("/api/session/incr/n");
    let t0 = Instant::now();
    let waiting = {
        let (url, key) = (url.clone(), locked.clone());
        thread::spawn(move || {
            let r = post_empty_as(&agent(), &url, &key);
            (r, t0.elapsed())
        })
    };
    thread::sleep(Duration::from_millis(200));
    // Other sessions, from other threads, while that write waits for the lock.
    let mut probes = Vec::new();
    for key in &others {
        let (url, key) = (server.url("/getsession/"), key.clone());
        probes.push(thread::spawn(move || {
            let t = Instant::now();
            let r = get_as(&url, Some(&key));
            ("read other", r.status().as_u16(), t.elapsed(), t0.elapsed())
        }));
    }
    {
        let (url, key) = (server.url("/api/session"), others[0].clone());
        probes.push(thread::spawn(move || {
            let t = Instant::now();
            let r = post_json_as(&agent(), &url, Some(&key), r#"{"other": true}"#);
            (
                "write other",
                r.status().as_u16(),
                t.elapsed(),
                t0.elapsed(),
            )
        }));
    }
    {
        let url = server.url("/setsession/");
        probes.push(thread::spawn(move || {
            let t = Instant::now();
            let r = get_as(&url, None);
            (
                "new session",
                r.status().as_u16(),
                t.elapsed(),
                t0.elapsed(),
            )
        }));
    }
    let (r, waited) = waiting.join().unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        waited >= Duration::from_secs(1),
        "answered after {waited:?}"
    );
    assert_eq!(header(&r, "retry-after").as_deref(), Some("1"));
    assert!(set_cookies(&r).is_empty(), "{:?}", set_cookies(&r));
    let message = body(r);
    assert!(message.contains("busy"), "{message}");
    assert_eq!(fs::read(&path).unwrap(), before, "nothing written");
    let mut latencies = Vec::new();
    for probe in probes {
        let (what, status, took, done_at) = probe.join().unwrap();
        assert_eq!(status, 200, "{what}");
        latencies.push(format!(
            "{what} {status} in {} ms (done {} ms after the locked write started)",
            took.as_millis(),
            done_at.as_millis()
        ));
    }
    drop(file);
    let r = post_empty_as(&agent(), &url, &locked);
    assert_eq!(r.status(), 200);
    assert_eq!(read_session(&dir, &locked)["data"]["n"], json!(1));
    eprintln!(
        "faults/lock-held: the locked write answered 503 after {} ms (Retry-After: 1, no \
         Set-Cookie, file unchanged); meanwhile: {}; after release: 200, n = 1; {:.1} s",
        waited.as_millis(),
        latencies.join("; "),
        started.elapsed().as_secs_f64()
    );
}

// ---- 6. Four servers sharing one sessions directory ----

/// Four servers on four ports, each in its own temp dir, all with their sessions in `dir`.
fn four_servers(dir: &Path, env: &[(&str, &str)]) -> Vec<TestServer> {
    let path = dir.to_str().expect("UTF-8 temp path").to_owned();
    (0..4)
        .map(|_| {
            let mut env: Vec<(&str, &str)> = env.to_vec();
            env.push(("SESSION_FILE_PATH", &path));
            TestServer::start_in(tempfile::tempdir().unwrap(), &env)
        })
        .collect()
}

#[test]
fn four_servers_merge_distinct_keys_of_one_session() {
    const THREADS: usize = 8;
    const KEYS: usize = 100;
    let started = Instant::now();
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().join("sessions");
    let servers = four_servers(&dir, &[]);
    let key = setsession(&servers[0]);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (url, key) = (servers[t % 4].url("/api/session"), key.clone());
            thread::spawn(move || {
                let a = agent();
                let mut acked = Vec::new();
                for i in 0..KEYS {
                    let name = format!("t{t}_{i}");
                    let r = post_json_as(&a, &url, Some(&key), &json!({ &name: i }).to_string());
                    if r.status() == 200 {
                        acked.push((name, i));
                    }
                }
                acked
            })
        })
        .collect();
    let acked: Vec<(String, usize)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let data = read_session(&dir, &key)["data"].clone();
    let found = acked
        .iter()
        .filter(|(name, i)| data.get(name) == Some(&json!(i)))
        .count();
    eprintln!(
        "faults/4-servers merge: {THREADS} threads x {KEYS} keys through 4 servers: {} \
         acknowledged, {found} in the file; {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(found, acked.len(), "acknowledged keys lost");
    assert_eq!(acked.len(), THREADS * KEYS, "some writes were refused");
    assert_eq!(data["sname"], json!("abc"));
}

#[test]
fn four_servers_with_request_locking_count_exactly() {
    const THREADS: usize = 8;
    const INCRS: usize = 50;
    let started = Instant::now();
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().join("sessions");
    let servers = four_servers(&dir, &[("SESSION_LOCKING", "request")]);
    let key = setsession(&servers[0]);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (url, key) = (servers[t % 4].url("/api/session/incr/n"), key.clone());
            thread::spawn(move || {
                let a = agent();
                let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
                for _ in 0..INCRS {
                    let r = post_empty_as(&a, &url, &key);
                    *statuses.entry(r.status().as_u16()).or_default() += 1;
                }
                statuses
            })
        })
        .collect();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for t in threads {
        for (status, n) in t.join().unwrap() {
            *statuses.entry(status).or_default() += n;
        }
    }
    let n = read_session(&dir, &key)["data"]["n"].clone();
    eprintln!(
        "faults/4-servers request locking: {THREADS} threads x {INCRS} increments through 4 \
         servers: n = {n}, statuses {statuses:?}; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(n, json!(THREADS * INCRS));
}

#[test]
fn four_servers_never_undo_a_logout() {
    logout_race("merge");
}

#[test]
fn four_servers_never_undo_a_logout_with_request_locking() {
    logout_race("request");
}

/// 50 rounds: a session, then a logout through one server and a write through another at
/// once; a logout answered 200 is never undone.
fn logout_race(locking: &str) {
    const ROUNDS: usize = 50;
    let started = Instant::now();
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().join("sessions");
    let servers = four_servers(&dir, &[("SESSION_LOCKING", locking)]);
    let (mut flushed, mut interrupted, mut new_keys, mut before_flush, mut resurrections) =
        (0, 0, 0, 0, 0);
    let mut statuses: BTreeMap<(u16, u16), usize> = BTreeMap::new();
    for round in 0..ROUNDS {
        let key = setsession(&servers[round % 4]);
        let path = file_of(&dir, &key);
        let go = Arc::new(Barrier::new(2));
        let flush = {
            let (url, key, go) = (
                servers[(round + 1) % 4].url("/api/session/flush"),
                key.clone(),
                go.clone(),
            );
            thread::spawn(move || {
                let a = agent();
                go.wait();
                post_empty_as(&a, &url, &key)
            })
        };
        let write = {
            let (url, key, go) = (
                servers[(round + 2) % 4].url("/api/session"),
                key.clone(),
                go.clone(),
            );
            thread::spawn(move || {
                let a = agent();
                go.wait();
                post_json_as(&a, &url, Some(&key), &json!({ "round": round }).to_string())
            })
        };
        let flush = flush.join().unwrap();
        let write = write.join().unwrap();
        let (fs_, ws) = (flush.status().as_u16(), write.status().as_u16());
        *statuses.entry((fs_, ws)).or_default() += 1;
        assert_eq!(fs_, 200, "round {round}: the logout failed");
        assert!(session_cookies(&flush).is_empty());
        flushed += 1;
        match ws {
            400 => {
                interrupted += 1;
                assert!(session_cookies(&write).is_empty());
                let v: Value = serde_json::from_str(&body(write)).unwrap();
                assert_eq!(
                    v["error"],
                    json!(filesession::SESSION_INTERRUPTED),
                    "round {round}"
                );
            }
            200 => {
                let got = new_key(&write);
                if got == key {
                    before_flush += 1;
                } else {
                    new_keys += 1;
                    let v = read_session(&dir, &got);
                    assert_eq!(
                        v["data"],
                        json!({ "round": round }),
                        "only the write's data"
                    );
                }
            }
            other => panic!("round {round}: the write answered {other}"),
        }
        if path.exists() {
            resurrections += 1;
            eprintln!("round {round}: {key} exists after a 200 logout (write {ws})");
        }
    }
    eprintln!(
        "faults/4-servers logout ({locking}): {ROUNDS} rounds, {flushed} logouts answered 200; the \
         concurrent write: {interrupted} x 400 (session deleted meanwhile), {new_keys} x 200 \
         with a new key, {before_flush} x 200 before the logout; resurrections: \
         {resurrections}; (flush, write) statuses {statuses:?}; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(resurrections, 0);
}

#[cfg(feature = "sqlite")]
#[test]
fn a_full_disk_under_the_sqlite_database_answers_507_and_writes_resume() {
    let mnt = match Tmpfs::mount("2m") {
        Ok(mnt) => mnt,
        Err(why) => {
            skipped_tmpfs("faults/disk-full-sqlite", &why);
            return;
        }
    };
    let dir = mnt.path.clone();
    let url = format!("sqlite:///{}/db.sqlite3", mnt.path_str());
    let mut server = TestServer::start(&[("SESSION_ENGINE", "db"), ("DATABASE_URL", &url)]);
    let a = setsession(&server);
    let filled = fill(&dir);
    // A write that needs new pages: the database cannot grow.
    let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(50 * 1024));
    let r = post_json_as(&agent(), &server.url("/api/session"), Some(&a), &big);
    assert_eq!(r.status(), 507, "{}", body(r));
    let r = post_json_as(&agent(), &server.url("/api/session"), None, &big);
    assert_eq!(r.status(), 507);
    assert!(set_cookies(&r).is_empty(), "{:?}", set_cookies(&r));
    assert!(body(r).contains("out of space"));
    // Reads go on; the session is as it was.
    let r = get_as(&server.url("/getsession/"), Some(&a));
    assert_eq!(r.status(), 200);
    assert_eq!(body(r), "abc abc@gmail.com");
    assert!(server.is_alive());
    // Space again: the same write works.
    fs::remove_file(dir.join("filler")).unwrap();
    let r = post_json_as(&agent(), &server.url("/api/session"), Some(&a), &big);
    assert_eq!(r.status(), 200);
    let r = get_as(&server.url("/api/session"), Some(&a));
    let v: Value = serde_json::from_str(&body(r)).unwrap();
    assert_eq!(v["data"]["blob"].as_str().map(str::len), Some(50 * 1024));
    assert_eq!(v["data"]["sname"], json!("abc"));
    eprintln!("faults/disk-full-sqlite: filler {filled} bytes; 507 while full, 200 after");
}
