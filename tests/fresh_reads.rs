//! Every request reads the session as the requests before it left it: pipelined requests on
//! one keep-alive connection (all written in one write, the answers read afterwards) and
//! parallel clients on one session, in both locking modes.
//!
//! The regression these pin down: in `merge` mode the connection thread used to open the
//! session file when a request arrived, and the handler read that open file later, after
//! other saves had swapped a new file in, so a request could see a stale copy (a logged out
//! session still logged in, a cycled key still alive, a one-time value deleted twice, lost
//! increments).
//!
//! Each pipelined case runs [`RUNS`] times on a fresh session and reports how many runs went
//! wrong, and how, before failing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::thread;

use common::{RawConnection, RawResponse, TestServer, raw_request};
use serde_json::{Value, json};

/// How often each pipelined case is run.
const RUNS: usize = 100;

/// Wrong outcomes over `runs` runs, counted by kind, with the first run's details of each.
struct Tally {
    what: String,
    runs: usize,
    wrong: BTreeMap<String, (usize, String)>,
}

/// What went wrong in a run: a kind to count runs by, and this run's details.
struct Wrong {
    kind: String,
    details: String,
}

impl From<String> for Wrong {
    fn from(kind: String) -> Wrong {
        Wrong {
            kind,
            details: String::new(),
        }
    }
}

impl Tally {
    fn new(what: &str, mode: &str) -> Tally {
        Tally {
            what: format!("{what} ({mode} locking)"),
            runs: 0,
            wrong: BTreeMap::new(),
        }
    }

    fn record(&mut self, outcome: Result<(), impl Into<Wrong>>) {
        self.runs += 1;
        if let Err(wrong) = outcome.map_err(Into::into) {
            self.wrong.entry(wrong.kind).or_insert((0, wrong.details)).0 += 1;
        }
    }

    fn assert_all_right(self) {
        let bad: usize = self.wrong.values().map(|(n, _)| n).sum();
        let lines: Vec<String> = self
            .wrong
            .iter()
            .map(|(kind, (n, details))| {
                if details.is_empty() {
                    format!("  {n} x {kind}")
                } else {
                    format!("  {n} x {kind}\n      first: {details}")
                }
            })
            .collect();
        assert!(
            bad == 0,
            "{}: wrong in {bad} of {} runs:\n{}",
            self.what,
            self.runs,
            lines.join("\n")
        );
    }
}

fn start(mode: &str) -> TestServer {
    TestServer::start(&[("SESSION_LOCKING", mode)])
}

fn file_of(server: &TestServer, key: &str) -> std::path::PathBuf {
    server.sessions().join(format!("{key}.json"))
}

fn file_data(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    let file: Value = serde_json::from_str(&text).expect("a session file is JSON");
    Some(file["data"].clone())
}

/// `POST /api/session` without a cookie: a new session holding `data`; its key.
fn create_session(conn: &mut RawConnection, data: &str) -> String {
    let r = conn
        .exchange(&raw_request("POST", "/api/session", None, Some(data)))
        .expect("create a session");
    assert_eq!(r.status, 200, "{}", r.show());
    let key = r.json()["session_key"]
        .as_str()
        .unwrap_or_else(|| panic!("no session_key: {}", r.show()))
        .to_owned();
    assert_eq!(
        r.session_cookie().as_deref(),
        Some(key.as_str()),
        "{}",
        r.show()
    );
    key
}

/// `GET /api/session` with `key`, on its own.
fn read_session(conn: &mut RawConnection, key: &str) -> Value {
    let r = conn
        .exchange(&raw_request("GET", "/api/session", Some(key), None))
        .expect("read the session");
    assert_eq!(r.status, 200, "{}", r.show());
    r.json()
}

/// `"<status> <body>"` of an answer, short, for outcome descriptions.
fn brief(r: &RawResponse) -> String {
    let body = r.body_text();
    let body = body.trim();
    let body: String = body.chars().take(120).collect();
    format!("{} {body}", r.status)
}

// ---------------------------------------------------------------------------------------
// a: logout, then a read with the same cookie
// ---------------------------------------------------------------------------------------

fn logout_then_get(server: &TestServer) -> Result<(), String> {
    let mut conn = RawConnection::open(server.addr);
    let set = conn
        .exchange(&raw_request("GET", "/setsession/", None, None))
        .expect("GET /setsession/");
    assert_eq!(set.status, 200, "{}", set.show());
    let key = set.session_cookie().expect("a session cookie");
    assert!(file_of(server, &key).exists(), "setsession wrote no file");

    let answers = conn
        .pipeline(&[
            raw_request("POST", "/api/session/flush", Some(&key), None),
            raw_request("GET", "/getsession/", Some(&key), None),
        ])
        .expect("the pipelined answers");
    let (flush, get) = (&answers[0], &answers[1]);
    if flush.status != 200 {
        return Err(format!("flush answered {}", brief(flush)));
    }
    if flush.session_cookie().as_deref() != Some("")
        || !flush.headers("set-cookie").any(|c| c.contains("Max-Age=0"))
    {
        return Err(format!("flush did not delete the cookie: {}", flush.show()));
    }
    if get.status != 404 {
        return Err(format!(
            "GET /getsession/ after the flush answered {}",
            brief(get)
        ));
    }
    if let Some(k) = get.session_cookie().filter(|k| !k.is_empty()) {
        return Err(format!(
            "GET /getsession/ after the flush set a session cookie {k}"
        ));
    }
    if let Some(data) = file_data(&file_of(server, &key)) {
        return Err(format!("the flushed session's file is still there: {data}"));
    }
    Ok(())
}

fn a_logout_is_seen_by_the_next_pipelined_request(mode: &str) {
    let server = start(mode);
    let mut tally = Tally::new("flush then GET /getsession/, pipelined", mode);
    for _ in 0..RUNS {
        tally.record(logout_then_get(&server));
    }
    tally.assert_all_right();
}

// ---------------------------------------------------------------------------------------
// b: pipelined increments
// ---------------------------------------------------------------------------------------

fn pipelined_increments(server: &TestServer, count: usize) -> Result<(), Wrong> {
    let mut conn = RawConnection::open(server.addr);
    let key = create_session(&mut conn, r#"{"seed": 1}"#);
    let requests: Vec<Vec<u8>> = (0..count)
        .map(|_| raw_request("POST", "/api/session/incr/n", Some(&key), None))
        .collect();
    let answers = conn.pipeline(&requests).expect("the pipelined answers");
    let mut seen = Vec::with_capacity(count);
    for r in &answers {
        if r.status != 200 {
            return Err(format!("an increment answered {}", brief(r)).into());
        }
        let body = r.json();
        if body["session_key"] != json!(key) {
            return Err(format!("an increment answered for another session: {body}").into());
        }
        seen.push(body["data"]["n"].as_i64().unwrap_or(-1));
    }
    let expected: Vec<i64> = (1..=count as i64).collect();
    let after = read_session(&mut conn, &key)["data"]["n"].clone();
    let on_disk = file_data(&file_of(server, &key)).map(|d| d["n"].clone());
    if seen != expected || after != json!(count) || on_disk != Some(json!(count)) {
        let after_n = after.as_i64().unwrap_or(-1);
        let lost = count as i64 - after_n;
        let kind = if after_n < count as i64 {
            format!("n ended at {after_n} of {count}: increments lost")
        } else {
            "the answers did not show n = 1, 2, 3, ... in order".to_owned()
        };
        let kind = if count <= 5 {
            kind
        } else {
            // Many different totals: count runs by the rough size of the loss.
            let bucket = match lost {
                i64::MIN..=0 => "no increment lost".to_owned(),
                1..=9 => "1 to 9 increments lost".to_owned(),
                _ => format!("{}0 to {}9 increments lost", lost / 10, lost / 10),
            };
            format!("{bucket} of {count}")
        };
        return Err(Wrong {
            kind,
            details: format!(
                "the answers showed n = {seen:?}; n afterwards = {after}, on disk = {}",
                on_disk.map_or("no file".into(), |v| v.to_string())
            ),
        });
    }
    Ok(())
}

fn five_pipelined_increments_count_to_five(mode: &str) {
    let server = start(mode);
    let mut tally = Tally::new("5 pipelined increments", mode);
    for _ in 0..RUNS {
        tally.record(pipelined_increments(&server, 5));
    }
    tally.assert_all_right();
}

fn a_hundred_pipelined_increments_count_to_a_hundred(mode: &str) {
    let server = start(mode);
    let mut tally = Tally::new("100 pipelined increments", mode);
    for _ in 0..RUNS {
        tally.record(pipelined_increments(&server, 100));
    }
    tally.assert_all_right();
}

// ---------------------------------------------------------------------------------------
// c: cycle, then a read with the old key
// ---------------------------------------------------------------------------------------

fn cycle_then_get_old(server: &TestServer) -> Result<(), String> {
    let mut conn = RawConnection::open(server.addr);
    let old = create_session(&mut conn, r#"{"user": "alice"}"#);
    let answers = conn
        .pipeline(&[
            raw_request("POST", "/api/session/cycle", Some(&old), None),
            raw_request("GET", "/api/session", Some(&old), None),
        ])
        .expect("the pipelined answers");
    let (cycle, get) = (&answers[0], &answers[1]);
    if cycle.status != 200 {
        return Err(format!("cycle answered {}", brief(cycle)));
    }
    let cycled = cycle.json();
    let new = cycled["session_key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if new.is_empty() || new == old || cycle.session_cookie().as_deref() != Some(new.as_str()) {
        return Err(format!("cycle gave no new key: {}", cycle.show()));
    }
    if cycled["data"] != json!({"user": "alice"}) {
        return Err(format!("cycle lost the data: {cycled}"));
    }
    if get.status != 200 {
        return Err(format!("GET with the old key answered {}", brief(get)));
    }
    let seen = get.json();
    if seen["session_key"] != Value::Null || seen["data"] != json!({}) {
        let shows = if seen["session_key"] == json!(old) {
            "the old key alive".to_owned()
        } else {
            format!("session_key {}", seen["session_key"])
        };
        return Err(format!(
            "GET with the old key after the cycle showed {shows} with data {}",
            seen["data"]
        ));
    }
    if file_of(server, &old).exists() {
        return Err("the old key's file is still there".into());
    }
    let fresh = read_session(&mut conn, &new);
    if fresh["session_key"] != json!(new) || fresh["data"] != json!({"user": "alice"}) {
        return Err(format!("GET with the new key showed {fresh}"));
    }
    if file_data(&file_of(server, &new)) != Some(json!({"user": "alice"})) {
        return Err("the new key's file does not hold the data".into());
    }
    Ok(())
}

fn a_cycled_key_is_dead_for_the_next_pipelined_request(mode: &str) {
    let server = start(mode);
    let mut tally = Tally::new("cycle then GET with the old key, pipelined", mode);
    for _ in 0..RUNS {
        tally.record(cycle_then_get_old(&server));
    }
    tally.assert_all_right();
}

// ---------------------------------------------------------------------------------------
// d: a one-time value deleted twice
// ---------------------------------------------------------------------------------------

fn delete_twice(server: &TestServer) -> Result<(), String> {
    let mut conn = RawConnection::open(server.addr);
    let key = create_session(&mut conn, r#"{"otp": "493817", "user": "alice"}"#);
    let delete = raw_request("DELETE", "/api/session/otp", Some(&key), None);
    let answers = conn
        .pipeline(&[delete.clone(), delete])
        .expect("the pipelined answers");
    let (first, second) = (&answers[0], &answers[1]);
    if (first.status, second.status) != (200, 404) {
        return Err(format!(
            "the two DELETEs answered {} and {}",
            first.status, second.status
        ));
    }
    let body = first.json();
    if body["session_key"] != json!(key) || body["data"] != json!({"user": "alice"}) {
        return Err(format!("the first DELETE answered {body}"));
    }
    if file_data(&file_of(server, &key)) != Some(json!({"user": "alice"})) {
        return Err("the file does not hold {user} alone".into());
    }
    Ok(())
}

fn a_one_time_value_is_deleted_only_once_when_pipelined(mode: &str) {
    let server = start(mode);
    let mut tally = Tally::new("two pipelined DELETEs of otp", mode);
    for _ in 0..RUNS {
        tally.record(delete_twice(&server));
    }
    tally.assert_all_right();
}

// ---------------------------------------------------------------------------------------
// parallel clients, one session
// ---------------------------------------------------------------------------------------

const CLIENTS: usize = 40;
const INCREMENTS_EACH: usize = 10;

fn increments_from_parallel_clients_all_count(mode: &str) {
    let server = start(mode);
    let key = create_session(&mut RawConnection::open(server.addr), r#"{"seed": 1}"#);
    let results: Vec<Result<Vec<i64>, String>> = thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (server, key) = (&server, &key);
                s.spawn(move || {
                    let mut conn = RawConnection::open(server.addr);
                    let mut seen = Vec::new();
                    for _ in 0..INCREMENTS_EACH {
                        let r = conn
                            .exchange(&raw_request("POST", "/api/session/incr/n", Some(key), None))
                            .map_err(|e| format!("an increment: {e}"))?;
                        if r.status != 200 {
                            return Err(format!("an increment answered {}", r.show()));
                        }
                        seen.push(r.json()["data"]["n"].as_i64().unwrap_or(-1));
                    }
                    Ok(seen)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = Vec::new();
    for result in results {
        seen.extend(result.unwrap_or_else(|e| panic!("{mode} locking: {e}")));
    }
    seen.sort_unstable();
    let total = (CLIENTS * INCREMENTS_EACH) as i64;
    let distinct = {
        let mut d = seen.clone();
        d.dedup();
        d.len()
    };
    let after = read_session(&mut RawConnection::open(server.addr), &key)["data"]["n"].clone();
    let on_disk = file_data(&file_of(&server, &key)).map(|d| d["n"].clone());
    assert!(
        after == json!(total) && on_disk == Some(json!(total)) && distinct == seen.len(),
        "{mode} locking: {total} increments from {CLIENTS} clients: n = {after} afterwards \
         (on disk {on_disk:?}); the answers showed {distinct} distinct values for {} increments, \
         so {} increments were lost",
        seen.len(),
        total - after.as_i64().unwrap_or(0)
    );
    assert_eq!(seen, (1..=total).collect::<Vec<_>>(), "{mode} locking");
}

fn four_hundred_increments_from_forty_parallel_clients_count_to_four_hundred(mode: &str) {
    increments_from_parallel_clients_all_count(mode);
}

/// Each case as a test in `merge::` and in `request::`.
macro_rules! in_both_locking_modes {
    ($($case:ident),* $(,)?) => {
        mod merge {
            $( #[test] fn $case() { super::$case("merge") } )*
        }
        mod request {
            $( #[test] fn $case() { super::$case("request") } )*
        }
    };
}

in_both_locking_modes!(
    a_logout_is_seen_by_the_next_pipelined_request,
    five_pipelined_increments_count_to_five,
    a_hundred_pipelined_increments_count_to_a_hundred,
    a_cycled_key_is_dead_for_the_next_pipelined_request,
    a_one_time_value_is_deleted_only_once_when_pipelined,
    four_hundred_increments_from_forty_parallel_clients_count_to_four_hundred,
);
