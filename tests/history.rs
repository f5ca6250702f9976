//! Linearizability of the session API under concurrent clients, checked with stateright's
//! `LinearizabilityTester` over recorded histories.
//!
//! [`CLIENTS`] threads share one "current session key" slot. Each operation reads the slot,
//! records its invocation in one global event list BEFORE sending, sends the request with
//! `Cookie: sessionid=<key>` and records its return AFTER the whole answer is read: the event
//! list is the real-time order. Operations: read every name (`GET /api/session`), write one
//! name with a unique value (`POST /api/session`), delete one name
//! (`DELETE /api/session/{name}`), log out (`POST /api/session/flush`) and cycle the key
//! (`POST /api/session/cycle`). After a cycle returns, its client puts the new key into the
//! slot; after a logout, its client creates a new session (outside the checked histories) and
//! puts that key there. Clients that took the old key meanwhile work on a dead session, and
//! that is checked too.
//!
//! The objects checked are small: one register per (session key sent, name), a register
//! that can die ([`DyingRegister`]). Logouts and cycles belong to every name's register of
//! their key; reads too. A cycle's new key starts as the values its answer showed (nobody
//! learns the new key before the cycle returns).
//!
//! Four configurations, each over [`OPS`] operations: `merge` and `request` locking, with one
//! process or two processes sharing one sessions directory (clients alternate servers);
//! and the two-process ones again with `SESSION_ENGINE=db` on one SQLite file and (feature
//! `postgres`) on one PostgreSQL table.
//! In `merge` locking across two processes a read-modify-write is not atomic by design: a
//! DELETE decides its 200 at load and removes at save, so there, and only there, a 200 to a
//! DELETE counts as a blind write of "absent" (two processes can both answer 200 for one
//! value; a 404 is still a plain read at load, so it stays strict). Everywhere else the
//! model is strict.
//!
//! Checking: each register's history goes to stateright's `LinearizabilityTester`. Its
//! depth-first search remembers nothing it has tried, and on these histories (8 clients,
//! up to ~60 operations per register) it took from seconds to many minutes per register
//! whenever it had to backtrack. So a memoizing search ([`find_linearization`], Wing & Gong
//! with Lowe's cache) finds a linearization first and the tester gets the operations'
//! thread ids in that order: the tester's first path is then that linearization, checked
//! step by step against the model and the real-time order. A register the search finds no
//! linearization for fails the test; the shortest such history is printed and stateright
//! confirms it (its exhaustive search, within 10 s). A test also checks that the two agree on
//! thousands of small random histories. Every configuration prints one summary line
//! (`--nocapture`): operations, registers, seconds.
//!
//! What a stale read looks like here: a read that is only stale is linearizable (its copy
//! was current at some moment during the request), so the anomaly shows where a decision
//! is taken on the stale copy: two DELETEs of one value that both answer 200. That is why
//! `merge` locking with one process fails on the stale-read bug, while with two processes
//! (where such double 200s are allowed by design) it cannot tell; tests/fresh_reads.rs pins
//! the pipelined cases down exactly.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{RawConnection, RawResponse, TestServer, raw_request};
use serde_json::{Value, json};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// Client threads sharing the slot.
const CLIENTS: usize = 8;
/// Operations per configuration (all of them checked).
const OPS: usize = 10_000;
/// The names written, deleted and read.
const NAMES: [&str; 3] = ["a", "b", "c"];

// ---------------------------------------------------------------------------------------
// The model: a register that can die
// ---------------------------------------------------------------------------------------

/// An operation on one (key, name) register.
#[derive(Clone, Debug, PartialEq)]
enum Op {
    /// `GET /api/session` (a read of every name).
    Read,
    /// `POST /api/session` with `{name: value}`.
    Write(String),
    /// `DELETE /api/session/{name}`.
    Delete,
    /// `POST /api/session/flush` (belongs to every name of the key).
    Flush,
    /// `POST /api/session/cycle` (belongs to every name of the key).
    Cycle,
}

/// What an operation answered, as seen by one register.
#[derive(Clone, Debug, PartialEq)]
enum Ret {
    /// 200 to a read: whether it answered under the key sent (a live session), and the value.
    Read { found: bool, value: Option<String> },
    /// 200 to a write, under the key sent.
    Written,
    /// 200 to a write under another key: the load found no session, a new one was created.
    Fresh,
    /// 400: the save found the session deleted meanwhile (a write, delete or cycle).
    Interrupted,
    /// 200 to a delete.
    Existed,
    /// 404 to a delete.
    Absent,
    /// 200 to a flush.
    Flushed,
    /// 200 to a cycle with a new key; this name's value in its data.
    Cycled(Option<String>),
    /// 200 to a cycle without a key: there was no session to cycle.
    NoSession,
    /// 503: the lock was held too long; nothing was written.
    Busy,
}

/// A register's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Life {
    Live(Option<String>),
    Dead,
}

/// "A register that can die": a session key's value under one name.
#[derive(Clone, Debug)]
struct DyingRegister {
    life: Life,
    /// A 200 to a delete is a blind write of "absent" (merge locking, two processes).
    blind_delete: bool,
}

impl SequentialSpec for DyingRegister {
    type Op = Op;
    type Ret = Ret;

    /// The one answer a sequential session gives (used by the tester only for operations
    /// that never returned; every operation here returns).
    fn invoke(&mut self, op: &Op) -> Ret {
        match (op, &mut self.life) {
            (Op::Read, Life::Live(value)) => Ret::Read {
                found: true,
                value: value.clone(),
            },
            (Op::Read, Life::Dead) => Ret::Read {
                found: false,
                value: None,
            },
            (Op::Write(v), Life::Live(value)) => {
                *value = Some(v.clone());
                Ret::Written
            }
            (Op::Write(_), Life::Dead) => Ret::Fresh,
            (Op::Delete, Life::Live(value)) => match value.take() {
                Some(_) => Ret::Existed,
                None => Ret::Absent,
            },
            (Op::Delete, Life::Dead) => Ret::Absent,
            (Op::Flush, _) => {
                self.life = Life::Dead;
                Ret::Flushed
            }
            (Op::Cycle, Life::Live(value)) => {
                let value = value.clone();
                self.life = Life::Dead;
                Ret::Cycled(value)
            }
            (Op::Cycle, Life::Dead) => Ret::NoSession,
        }
    }

    fn is_valid_step(&mut self, op: &Op, ret: &Ret) -> bool {
        let blind_delete = self.blind_delete;
        match (op, ret, &mut self.life) {
            (_, Ret::Busy, _) => true,
            (Op::Read, Ret::Read { found, value }, Life::Live(v)) => *found && value == v,
            (Op::Read, Ret::Read { found, value }, Life::Dead) => !*found && value.is_none(),
            (Op::Write(new), Ret::Written, Life::Live(v)) => {
                *v = Some(new.clone());
                true
            }
            (Op::Write(_), Ret::Fresh, Life::Dead) => true,
            (Op::Write(_) | Op::Delete | Op::Cycle, Ret::Interrupted, Life::Dead) => true,
            (Op::Delete, Ret::Existed, Life::Live(v)) if v.is_some() || blind_delete => {
                *v = None;
                true
            }
            (Op::Delete, Ret::Absent, Life::Live(None) | Life::Dead) => true,
            (Op::Flush, Ret::Flushed, _) => {
                self.life = Life::Dead;
                true
            }
            (Op::Cycle, Ret::Cycled(value), Life::Live(v)) if value == v => {
                self.life = Life::Dead;
                true
            }
            (Op::Cycle, Ret::NoSession, Life::Dead) => true,
            _ => false,
        }
    }
}

#[test]
fn the_model_accepts_and_rejects_what_it_should() {
    let live = |v: Option<&str>, blind_delete| DyingRegister {
        life: Life::Live(v.map(str::to_owned)),
        blind_delete,
    };
    let read = |v: Option<&str>| Ret::Read {
        found: true,
        value: v.map(str::to_owned),
    };
    let dead_read = Ret::Read {
        found: false,
        value: None,
    };
    let w = |v: &str| Op::Write(v.to_owned());
    assert!(live(None, false).is_valid_history([
        (w("x"), Ret::Written),
        (Op::Read, read(Some("x"))),
        (Op::Delete, Ret::Existed),
        (Op::Delete, Ret::Absent),
        (Op::Read, read(None)),
        (Op::Cycle, Ret::Cycled(None)),
        (Op::Read, dead_read.clone()),
        (w("y"), Ret::Fresh),
        (Op::Delete, Ret::Interrupted),
        (Op::Cycle, Ret::NoSession),
        (Op::Flush, Ret::Flushed),
        (w("z"), Ret::Busy),
    ]));
    // A logged out session read as still there; a key alive after its cycle; a one-time
    // value deleted twice; a write lost; a write to a live session that says "fresh".
    assert!(
        !live(Some("x"), false)
            .is_valid_history([(Op::Flush, Ret::Flushed), (Op::Read, read(Some("x"))),])
    );
    assert!(!live(Some("x"), false).is_valid_history([
        (Op::Cycle, Ret::Cycled(Some("x".into()))),
        (Op::Read, read(Some("x"))),
    ]));
    assert!(
        !live(Some("x"), false)
            .is_valid_history([(Op::Delete, Ret::Existed), (Op::Delete, Ret::Existed),])
    );
    assert!(!live(None, false).is_valid_history([(w("x"), Ret::Written), (Op::Read, read(None))]));
    assert!(!live(None, false).is_valid_history([(w("x"), Ret::Fresh)]));
    assert!(!live(None, false).is_valid_history([(w("x"), Ret::Interrupted)]));
    // Blind deletes (merge locking, two processes): a second 200 is allowed; a 200 on a
    // dead session, or a 404 while the value is there, still is not.
    assert!(
        live(Some("x"), true)
            .is_valid_history([(Op::Delete, Ret::Existed), (Op::Delete, Ret::Existed),])
    );
    assert!(!live(Some("x"), true).is_valid_history([(Op::Delete, Ret::Absent)]));
    assert!(
        !live(Some("x"), true)
            .is_valid_history([(Op::Flush, Ret::Flushed), (Op::Delete, Ret::Existed),])
    );

    // The tester itself: a read strictly after a logout that still sees the value.
    let mut tester = LinearizabilityTester::new(live(Some("x"), false));
    tester
        .on_invoke(0, Op::Flush)
        .unwrap()
        .on_return(0, Ret::Flushed)
        .unwrap()
        .on_invoke(1, Op::Read)
        .unwrap()
        .on_return(1, read(Some("x")))
        .unwrap();
    assert!(!tester.is_consistent());
    // ... but concurrent with the logout it may be ordered first.
    let mut tester = LinearizabilityTester::new(live(Some("x"), false));
    tester
        .on_invoke(0, Op::Flush)
        .unwrap()
        .on_invoke(1, Op::Read)
        .unwrap()
        .on_return(0, Ret::Flushed)
        .unwrap()
        .on_return(1, read(Some("x")))
        .unwrap();
    assert!(tester.is_consistent());
}

// ---------------------------------------------------------------------------------------
// Recording
// ---------------------------------------------------------------------------------------

/// One operation as a client invoked it.
#[derive(Clone, Debug)]
enum Call {
    Read,
    Write(usize, String),
    Delete(usize),
    Flush,
    Cycle,
}

impl Call {
    /// The names whose registers this call belongs to, with the register operation.
    fn ops(&self) -> Vec<(usize, Op)> {
        match self {
            Call::Read => (0..NAMES.len()).map(|n| (n, Op::Read)).collect(),
            Call::Write(n, v) => vec![(*n, Op::Write(v.clone()))],
            Call::Delete(n) => vec![(*n, Op::Delete)],
            Call::Flush => (0..NAMES.len()).map(|n| (n, Op::Flush)).collect(),
            Call::Cycle => (0..NAMES.len()).map(|n| (n, Op::Cycle)).collect(),
        }
    }
}

#[derive(Clone, Debug)]
enum Event {
    /// A key came to be known with these values (a cycle's answer, or a new session).
    Born {
        key: String,
        values: [Option<String>; 3],
    },
    /// Recorded before the request is sent.
    Invoke {
        thread: usize,
        key: String,
        call: Call,
    },
    /// Recorded after the whole answer is read: the answer for each name of the call.
    Return {
        thread: usize,
        rets: Vec<(usize, Ret)>,
    },
}

/// What the clients share.
struct Shared {
    slot: Mutex<String>,
    events: Mutex<Vec<Event>>,
    issued: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    fn record(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

/// xorshift64*: enough randomness for the operation mix, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % n
    }
}

/// The value of every name in an answer's `data`.
fn values_of(body: &Value) -> Result<[Option<String>; 3], String> {
    let mut values: [Option<String>; 3] = Default::default();
    for (i, name) in NAMES.iter().enumerate() {
        values[i] = match &body["data"][name] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => return Err(format!("{name} holds {other}: {body}")),
        };
    }
    Ok(values)
}

fn unexpected(call: &Call, key: &str, r: &RawResponse) -> String {
    format!(
        "unexpected answer to {call:?} with key {key}:\n{}",
        r.show()
    )
}

/// The register answers of a call's response; `Err` for an answer the API never gives.
fn interpret(call: &Call, key: &str, r: &RawResponse) -> Result<Vec<(usize, Ret)>, String> {
    let bad = || unexpected(call, key, r);
    if r.status == 503 {
        if r.header("retry-after").is_none() || r.session_cookie().is_some() {
            return Err(bad());
        }
        return Ok(call
            .ops()
            .into_iter()
            .map(|(n, _)| (n, Ret::Busy))
            .collect());
    }
    if r.status == 400 {
        if matches!(call, Call::Read | Call::Flush) || r.session_cookie().is_some() {
            return Err(bad());
        }
        return Ok(call
            .ops()
            .into_iter()
            .map(|(n, _)| (n, Ret::Interrupted))
            .collect());
    }
    if r.status == 404 {
        return match call {
            Call::Delete(n) if r.session_cookie().is_none_or(|k| k.is_empty()) => {
                Ok(vec![(*n, Ret::Absent)])
            }
            _ => Err(bad()),
        };
    }
    if r.status != 200 {
        return Err(bad());
    }
    let body = r.json();
    let answered_key = body["session_key"].as_str().map(str::to_owned);
    let values = values_of(&body)?;
    match call {
        Call::Read => {
            let found = match answered_key.as_deref() {
                None => false,
                Some(k) if k == key => true,
                Some(_) => return Err(bad()),
            };
            if !found && body["data"] != json!({}) {
                return Err(bad());
            }
            Ok(values
                .into_iter()
                .enumerate()
                .map(|(n, value)| (n, Ret::Read { found, value }))
                .collect())
        }
        Call::Write(n, v) => {
            let Some(answered) = answered_key else {
                return Err(bad());
            };
            if values[*n].as_ref() != Some(v) || r.session_cookie().as_ref() != Some(&answered) {
                return Err(bad());
            }
            let ret = if answered == key {
                Ret::Written
            } else {
                Ret::Fresh
            };
            Ok(vec![(*n, ret)])
        }
        Call::Delete(n) => {
            if answered_key.as_deref() != Some(key) || values[*n].is_some() {
                return Err(bad());
            }
            Ok(vec![(*n, Ret::Existed)])
        }
        Call::Flush => {
            if answered_key.is_some() || body["data"] != json!({}) {
                return Err(bad());
            }
            Ok(call
                .ops()
                .into_iter()
                .map(|(n, _)| (n, Ret::Flushed))
                .collect())
        }
        Call::Cycle => match answered_key {
            None if body["data"] == json!({}) => Ok(call
                .ops()
                .into_iter()
                .map(|(n, _)| (n, Ret::NoSession))
                .collect()),
            Some(new) if new != key && r.session_cookie().as_ref() == Some(&new) => Ok(values
                .into_iter()
                .enumerate()
                .map(|(n, value)| (n, Ret::Cycled(value)))
                .collect()),
            _ => Err(bad()),
        },
    }
}

/// `POST /api/session` without a cookie: a new session (no checked name set); its key.
fn new_session(conn: &mut RawConnection, tag: &str) -> Result<String, String> {
    let r = conn
        .exchange(&raw_request(
            "POST",
            "/api/session",
            None,
            Some(&json!({ "born": tag }).to_string()),
        ))
        .map_err(|e| format!("creating a session: {e}"))?;
    match r.json()["session_key"].as_str() {
        Some(key) if r.status == 200 => Ok(key.to_owned()),
        _ => Err(format!("creating a session answered:\n{}", r.show())),
    }
}

/// One client: operations until [`OPS`] are issued (or another client failed).
fn client(
    shared: &Shared,
    servers: &[&TestServer],
    thread: usize,
    seed: u64,
) -> Result<(), String> {
    let mut conns: Vec<RawConnection> = servers
        .iter()
        .map(|s| RawConnection::open(s.addr))
        .collect();
    let mut rng = Rng(seed | 1);
    let mut step = 0usize;
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.issued.fetch_add(1, Ordering::Relaxed) >= OPS {
            break;
        }
        step += 1;
        let conn = &mut conns[(thread + step) % servers.len()];
        let name = rng.below(NAMES.len() as u64) as usize;
        let call = match rng.below(100) {
            0..40 => Call::Read,
            40..75 => Call::Write(name, format!("t{thread}-{step}")),
            75..90 => Call::Delete(name),
            90..95 => Call::Cycle,
            _ => Call::Flush,
        };
        let key = shared.slot.lock().unwrap().clone();
        let request = match &call {
            Call::Read => raw_request("GET", "/api/session", Some(&key), None),
            Call::Write(n, v) => raw_request(
                "POST",
                "/api/session",
                Some(&key),
                Some(&json!({ NAMES[*n]: v }).to_string()),
            ),
            Call::Delete(n) => raw_request(
                "DELETE",
                &format!("/api/session/{}", NAMES[*n]),
                Some(&key),
                None,
            ),
            Call::Flush => raw_request("POST", "/api/session/flush", Some(&key), None),
            Call::Cycle => raw_request("POST", "/api/session/cycle", Some(&key), None),
        };
        shared.record(Event::Invoke {
            thread,
            key: key.clone(),
            call: call.clone(),
        });
        let response = conn
            .exchange(&request)
            .map_err(|e| format!("{call:?} with key {key}: {e}"))?;
        let rets = interpret(&call, &key, &response)?;
        let busy = rets.iter().any(|(_, r)| *r == Ret::Busy);
        shared.record(Event::Return { thread, rets });
        match call {
            Call::Cycle if !busy => {
                let body = response.json();
                if let Some(new) = body["session_key"].as_str() {
                    shared.record(Event::Born {
                        key: new.to_owned(),
                        values: values_of(&body)?,
                    });
                    *shared.slot.lock().unwrap() = new.to_owned();
                }
            }
            Call::Flush if !busy => {
                let new = new_session(conn, &format!("t{thread}-{step}"))?;
                shared.record(Event::Born {
                    key: new.clone(),
                    values: Default::default(),
                });
                *shared.slot.lock().unwrap() = new;
            }
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Checking
// ---------------------------------------------------------------------------------------

/// One step of a register's recorded history.
#[derive(Clone)]
enum Step {
    Invoke { at: usize, client: usize, op: Op },
    Return { at: usize, client: usize, ret: Ret },
}

/// One operation of a register's history: when it was invoked and returned (indexes in the
/// global event list), what it was and what it answered.
struct Done {
    invoked: usize,
    returned: usize,
    op: Op,
    ret: Ret,
}

/// One register's history as recorded.
#[derive(Clone)]
struct Object {
    key: String,
    name: usize,
    init: Life,
    steps: Vec<Step>,
}

impl Object {
    /// The operations, in invocation order.
    fn operations(&self) -> Vec<Done> {
        let mut done: Vec<Done> = Vec::new();
        let mut open: HashMap<usize, usize> = HashMap::new();
        for step in &self.steps {
            match step {
                Step::Invoke { at, client, op } => {
                    open.insert(*client, done.len());
                    done.push(Done {
                        invoked: *at,
                        returned: usize::MAX,
                        op: op.clone(),
                        ret: Ret::Busy,
                    });
                }
                Step::Return { at, client, ret } => {
                    let i = open.remove(client).expect("a return after its invoke");
                    done[i].returned = *at;
                    done[i].ret = ret.clone();
                }
            }
        }
        done
    }

    fn len(&self) -> usize {
        self.steps.len() / 2
    }

    /// Stateright's `LinearizabilityTester` over this history, each operation with its own
    /// tester thread id from `ids` (indexed like [`operations`](Object::operations)). A
    /// client's operations are strictly sequential, so giving each its own id loses none of
    /// the order the tester enforces (real-time order contains program order). The ids only
    /// steer the order in which the tester's depth-first search tries operations: it tries
    /// lower ids first.
    fn stateright_says(&self, ids: &[usize], blind_delete: bool) -> bool {
        let mut tester = LinearizabilityTester::new(DyingRegister {
            life: self.init.clone(),
            blind_delete,
        });
        let mut open: HashMap<usize, usize> = HashMap::new();
        let mut k = 0;
        for step in &self.steps {
            match step {
                Step::Invoke { client, op, .. } => {
                    open.insert(*client, ids[k]);
                    tester
                        .on_invoke(ids[k], op.clone())
                        .expect("one operation in flight per id");
                    k += 1;
                }
                Step::Return { client, ret, .. } => {
                    let id = open.remove(client).expect("a return after its invoke");
                    tester
                        .on_return(id, ret.clone())
                        .expect("a return after its invoke");
                }
            }
        }
        tester.is_consistent()
    }

    /// Whether the history is linearizable, by stateright's tester.
    ///
    /// The tester's search has no memory of the states it has tried, so on a history that
    /// needs some backtracking it can take minutes even for 30 operations. So a memoizing
    /// search ([`find_linearization`]) looks for a linearization first, and the tester gets
    /// the operations' ids in that order: its first path is then that linearization, which it
    /// checks step by step against the model and the real-time order (ids cannot make it
    /// accept a history that is not linearizable). A history for which the search finds no
    /// linearization is broken; [`confirm_broken`] has stateright confirm the one reported.
    fn is_linearizable(&self, blind_delete: bool) -> bool {
        let ops = self.operations();
        let Some(order) = find_linearization(&self.init, &ops, blind_delete) else {
            return false;
        };
        let mut ids = vec![0; ops.len()];
        for (position, &op) in order.iter().enumerate() {
            ids[op] = position;
        }
        assert!(
            self.stateright_says(&ids, blind_delete),
            "stateright rejects the linearization {order:?} of\n{}",
            self.show()
        );
        true
    }

    fn show(&self) -> String {
        let mut text = String::new();
        for step in &self.steps {
            let _ = match step {
                Step::Invoke { at, client, op } => {
                    writeln!(text, "    #{at:<6} t{client}  invoke  {op:?}")
                }
                Step::Return { at, client, ret } => {
                    writeln!(text, "    #{at:<6} t{client}  return  {ret:?}")
                }
            };
        }
        text
    }
}

/// How long stateright's exhaustive search may take to confirm a broken history broken.
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

/// Stateright's verdict on a history the search found broken: `Some(false)` confirmed,
/// `Some(true)` contradicted (a bug in [`find_linearization`]), `None` no answer within
/// [`CONFIRM_WITHIN`] (its search is exhaustive here; the thread is left to finish).
fn confirm_broken(object: &Object, blind_delete: bool) -> Option<bool> {
    let object = object.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        // Ids in return order: near the order a server applies requests in.
        let ops = object.operations();
        let mut by_return: Vec<usize> = (0..ops.len()).collect();
        by_return.sort_by_key(|&i| ops[i].returned);
        let mut ids = vec![0; ops.len()];
        for (rank, &op) in by_return.iter().enumerate() {
            ids[op] = rank;
        }
        let _ = tx.send(object.stateright_says(&ids, blind_delete));
    });
    rx.recv_timeout(CONFIRM_WITHIN).ok()
}

/// A linearization of `ops` from `init` (the operations' indexes in order), or `None`.
///
/// Wing & Gong's search with Lowe's memoization (as in Porcupine): walk the calls and
/// returns in real-time order; linearize a pending call when the model allows its answer,
/// and backtrack at the return of an operation not yet linearized; never revisit a
/// (set of linearized operations, register state) pair.
fn find_linearization(init: &Life, ops: &[Done], blind_delete: bool) -> Option<Vec<usize>> {
    // The calls and returns in real-time order, as a doubly linked list with a head sentinel
    // at index 0: entry 1 + 2i is operation i's call, 2 + 2i its return.
    let n = ops.len();
    let mut times: Vec<(usize, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        times.push((op.invoked, 1 + 2 * i));
        times.push((op.returned, 2 + 2 * i));
    }
    times.sort_unstable();
    let end = 2 * n + 1;
    let mut next = vec![end; 2 * n + 2];
    let mut prev = vec![0; 2 * n + 2];
    let mut last = 0;
    for &(_, entry) in &times {
        next[last] = entry;
        prev[entry] = last;
        last = entry;
    }
    next[last] = end;
    prev[end] = last;
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, q) = (prev[e], next[e]);
        next[p] = q;
        prev[q] = p;
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, q) = (prev[e], next[e]);
        next[p] = e;
        prev[q] = e;
    };

    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut seen: std::collections::HashSet<(Vec<u64>, Life)> = std::collections::HashSet::new();
    let mut state = DyingRegister {
        life: init.clone(),
        blind_delete,
    };
    let mut stack: Vec<(usize, Life)> = Vec::new();
    let mut entry = next[0];
    while next[0] != end {
        if entry % 2 == 1 {
            let i = (entry - 1) / 2;
            let mut after = state.clone();
            if after.is_valid_step(&ops[i].op, &ops[i].ret) {
                linearized[i / 64] |= 1 << (i % 64);
                if seen.insert((linearized.clone(), after.life.clone())) {
                    stack.push((i, std::mem::replace(&mut state.life, after.life)));
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, entry + 1);
                    entry = next[0];
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            entry = next[entry];
        } else {
            // The return of an operation not linearized yet: undo the last choice.
            let (i, life) = stack.pop()?;
            state.life = life;
            linearized[i / 64] &= !(1 << (i % 64));
            let call = 1 + 2 * i;
            relink(&mut next, &mut prev, call + 1);
            relink(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
    Some(stack.into_iter().map(|(i, _)| i).collect())
}

struct Checked {
    ops: usize,
    objects: usize,
    /// The most operations one register had.
    largest: usize,
    /// Registers whose history is not linearizable, shortest first.
    broken: Vec<Object>,
}

/// Splits the history into registers and checks each.
fn check(events: &[Event], blind_delete: bool) -> Checked {
    let mut born: HashMap<&str, &[Option<String>; 3]> = HashMap::new();
    let mut objects: HashMap<(String, usize), Object> = HashMap::new();
    let mut in_flight: HashMap<usize, (String, Vec<usize>)> = HashMap::new();
    let mut ops = 0;
    for (at, event) in events.iter().enumerate() {
        match event {
            Event::Born { key, values } => {
                born.insert(key, values);
            }
            Event::Invoke { thread, key, call } => {
                ops += 1;
                let mut names = Vec::new();
                for (name, op) in call.ops() {
                    let object = objects.entry((key.clone(), name)).or_insert_with(|| {
                        let values = born
                            .get(key.as_str())
                            .unwrap_or_else(|| panic!("key {key} used before it was known"));
                        Object {
                            key: key.clone(),
                            name,
                            init: Life::Live(values[name].clone()),
                            steps: Vec::new(),
                        }
                    });
                    object.steps.push(Step::Invoke {
                        at,
                        client: *thread,
                        op,
                    });
                    names.push(name);
                }
                in_flight.insert(*thread, (key.clone(), names));
            }
            Event::Return { thread, rets } => {
                let (key, names) = in_flight.remove(thread).expect("a return after its invoke");
                let returned: Vec<usize> = rets.iter().map(|(n, _)| *n).collect();
                assert_eq!(names, returned, "the answer covers the names invoked");
                for (name, ret) in rets {
                    let object = objects.get_mut(&(key.clone(), *name)).expect("invoked");
                    object.steps.push(Step::Return {
                        at,
                        client: *thread,
                        ret: ret.clone(),
                    });
                }
            }
        }
    }
    assert!(in_flight.is_empty(), "every operation returned");
    let count = objects.len();
    let largest = objects.values().map(Object::len).max().unwrap_or(0);
    let mut broken: Vec<Object> = objects
        .into_values()
        .filter(|o| !o.is_linearizable(blind_delete))
        .collect();
    broken.sort_by_key(|o| (o.len(), first_at(o)));
    Checked {
        ops,
        objects: count,
        largest,
        broken,
    }
}

fn first_at(o: &Object) -> usize {
    match o.steps.first() {
        Some(Step::Invoke { at, .. } | Step::Return { at, .. }) => *at,
        None => 0,
    }
}

/// The memoizing search and stateright's tester agree on thousands of small random
/// histories (some linearizable, some not), with and without blind deletes.
#[test]
fn the_search_agrees_with_stateright_on_small_random_histories() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut verdicts = [0usize; 2];
    for round in 0..3000 {
        let blind_delete = round % 2 == 1;
        let values = ["v0", "v1", "v2", "v3"];
        let pick_value = |rng: &mut Rng| match rng.below(5) {
            0 => None,
            i => Some(values[i as usize - 1].to_owned()),
        };
        let init = match rng.below(4) {
            0 => Life::Dead,
            _ => Life::Live(pick_value(&mut rng)),
        };
        let mut object = Object {
            key: "k".into(),
            name: 0,
            init,
            steps: Vec::new(),
        };
        // 3 clients, 3 operations each: invoked, applied to a sequential register, and
        // returned at random moments; then, in about half the rounds, one answer is
        // replaced by a random one.
        let mut model = DyingRegister {
            life: object.init.clone(),
            blind_delete,
        };
        let mut left = [3usize; 3];
        let mut pending: [Option<(Op, Option<Ret>)>; 3] = Default::default();
        let mut at = 0;
        while left.iter().any(|&n| n > 0) || pending.iter().any(Option::is_some) {
            let client = rng.below(3) as usize;
            match pending[client].take() {
                Some((op, None)) => {
                    let ret = model.invoke(&op);
                    pending[client] = Some((op, Some(ret)));
                }
                Some((_, Some(ret))) => {
                    at += 1;
                    object.steps.push(Step::Return { at, client, ret });
                }
                None if left[client] > 0 => {
                    left[client] -= 1;
                    let op = match rng.below(6) {
                        0 | 1 => Op::Read,
                        2 | 3 => Op::Write(values[rng.below(4) as usize].to_owned()),
                        4 => Op::Delete,
                        _ => [Op::Flush, Op::Cycle][rng.below(2) as usize].clone(),
                    };
                    at += 1;
                    object.steps.push(Step::Invoke {
                        at,
                        client,
                        op: op.clone(),
                    });
                    pending[client] = Some((op, None));
                }
                None => {}
            }
        }
        if rng.below(2) == 0 {
            let returns: Vec<usize> = (0..object.steps.len())
                .filter(|&i| matches!(object.steps[i], Step::Return { .. }))
                .collect();
            let i = returns[rng.below(returns.len() as u64) as usize];
            if let Step::Return { ret, .. } = &mut object.steps[i] {
                *ret = match rng.below(8) {
                    0 => Ret::Read {
                        found: rng.below(2) == 0,
                        value: pick_value(&mut rng),
                    },
                    1 => Ret::Written,
                    2 => Ret::Fresh,
                    3 => Ret::Interrupted,
                    4 => Ret::Existed,
                    5 => Ret::Absent,
                    6 => Ret::Cycled(pick_value(&mut rng)),
                    _ => Ret::NoSession,
                };
            }
        }
        let ops = object.operations();
        let found = find_linearization(&object.init, &ops, blind_delete).is_some();
        let ids: Vec<usize> = (0..ops.len()).collect();
        let stateright = object.stateright_says(&ids, blind_delete);
        assert_eq!(
            found,
            stateright,
            "search {found}, stateright {stateright} (blind deletes {blind_delete}), from {:?}:\n{}",
            object.init,
            object.show()
        );
        verdicts[usize::from(found)] += 1;
    }
    assert!(
        verdicts[0] > 100 && verdicts[1] > 100,
        "too one-sided a sample: {verdicts:?} (broken, linearizable)"
    );
}

/// Runs [`CLIENTS`] clients against `servers` (alternating), then checks every register.
fn run(what: &str, servers: &[&TestServer], blind_delete: bool) {
    let started = Instant::now();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut first = RawConnection::open(servers[0].addr);
    let key = new_session(&mut first, "start").expect("the first session");
    let shared = Shared {
        slot: Mutex::new(key.clone()),
        events: Mutex::new(vec![Event::Born {
            key,
            values: Default::default(),
        }]),
        issued: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    };
    let errors: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let shared = &shared;
                let seed = seed.wrapping_add((t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                s.spawn(move || {
                    let result = client(shared, servers, t, seed);
                    if result.is_err() {
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap().err())
            .collect()
    });
    let ran = started.elapsed();
    assert!(
        errors.is_empty(),
        "{what}: a client failed:\n{}",
        errors.join("\n")
    );
    let events = shared.events.into_inner().unwrap();
    let checked = check(&events, blind_delete);
    let took = started.elapsed();
    println!(
        "{what}: {} ops, {} objects (the largest {} ops), {:.1} s ({:.1} s running, \
         {:.1} s checking), {}, seed {seed}",
        checked.ops,
        checked.objects,
        checked.largest,
        took.as_secs_f64(),
        ran.as_secs_f64(),
        (took - ran).as_secs_f64(),
        if checked.broken.is_empty() {
            "all linearizable".to_owned()
        } else {
            format!("{} NOT linearizable", checked.broken.len())
        },
    );
    if let Some(shortest) = checked.broken.first() {
        let confirmed = match confirm_broken(shortest, blind_delete) {
            Some(false) => " (confirmed by stateright's LinearizabilityTester)".to_owned(),
            Some(true) => panic!(
                "stateright finds a linearization that the search did not, of\n{}",
                shortest.show()
            ),
            None => format!(
                " (stateright's exhaustive search did not finish within {CONFIRM_WITHIN:?})"
            ),
        };
        panic!(
            "{what}: {} of {} registers have a history that is not linearizable.\n\
             The shortest{confirmed}: session {} name {:?}, starting as {:?}; \
             events in real-time order (#<event>, t<N> = client N):\n{}",
            checked.broken.len(),
            checked.objects,
            shortest.key,
            NAMES[shortest.name],
            shortest.init,
            shortest.show()
        );
    }
    assert!(
        checked.ops >= OPS,
        "{what}: only {} operations checked",
        checked.ops
    );
}

fn start(mode: &str) -> TestServer {
    TestServer::start(&[("SESSION_LOCKING", mode)])
}

fn start_second(first: &TestServer, mode: &str) -> TestServer {
    TestServer::start_sharing(&first.sessions(), &[("SESSION_LOCKING", mode)])
}

#[test]
fn merge_locking_in_one_process_is_linearizable() {
    let server = start("merge");
    run("merge locking, one process", &[&server], false);
}

#[test]
fn request_locking_in_one_process_is_linearizable() {
    let server = start("request");
    run("request locking, one process", &[&server], false);
}

#[test]
fn merge_locking_across_two_processes_is_linearizable_with_blind_deletes() {
    let a = start("merge");
    let b = start_second(&a, "merge");
    run("merge locking, two processes", &[&a, &b], true);
}

#[test]
fn request_locking_across_two_processes_is_linearizable() {
    let a = start("request");
    let b = start_second(&a, "request");
    run("request locking, two processes", &[&a, &b], false);
}

/// Django's format (`SESSION_FORMAT=django`): Django's keys, signed data and layout.
const DJANGO_FORMAT: [(&str, &str); 2] = [
    ("SESSION_FORMAT", "django"),
    ("SECRET_KEY", "history-test-only-not-secret"),
];

#[test]
fn merge_locking_across_two_processes_in_djangos_file_layout_is_linearizable_with_blind_deletes() {
    let env = [
        DJANGO_FORMAT[0],
        DJANGO_FORMAT[1],
        ("SESSION_LOCKING", "merge"),
    ];
    let a = TestServer::start(&env);
    let b = TestServer::start_sharing(&a.sessions(), &env);
    run(
        "merge locking, two processes, Django's file layout",
        &[&a, &b],
        true,
    );
}

#[test]
fn request_locking_across_two_processes_in_djangos_file_layout_is_linearizable() {
    let env = [
        DJANGO_FORMAT[0],
        DJANGO_FORMAT[1],
        ("SESSION_LOCKING", "request"),
    ];
    let a = TestServer::start(&env);
    let b = TestServer::start_sharing(&a.sessions(), &env);
    run(
        "request locking, two processes, Django's file layout",
        &[&a, &b],
        false,
    );
}

#[cfg(feature = "sqlite")]
#[test]
fn request_locking_across_two_processes_on_djangos_sqlite_table_is_linearizable() {
    let db = tempfile::tempdir().expect("temp dir");
    let url = sqlite_url(&db);
    let env = [
        DJANGO_FORMAT[0],
        DJANGO_FORMAT[1],
        ("SESSION_ENGINE", "db"),
        ("DATABASE_URL", url.as_str()),
        ("SESSION_LOCKING", "request"),
    ];
    let (a, b) = (TestServer::start(&env), TestServer::start(&env));
    run(
        "request locking, two processes, Django's table on SQLite",
        &[&a, &b],
        false,
    );
}

/// Two servers on one database (`SESSION_ENGINE=db`), each in a directory of its own.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn db_pair(mode: &str, database_url: &str, table: &str) -> (TestServer, TestServer) {
    let env = [
        ("SESSION_ENGINE", "db"),
        ("DATABASE_URL", database_url),
        ("SESSION_DB_TABLE", table),
        ("SESSION_LOCKING", mode),
    ];
    (TestServer::start(&env), TestServer::start(&env))
}

#[cfg(feature = "sqlite")]
fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite:///{}", dir.path().join("db.sqlite3").display())
}

#[cfg(feature = "sqlite")]
#[test]
fn merge_locking_across_two_processes_on_sqlite_is_linearizable_with_blind_deletes() {
    let db = tempfile::tempdir().expect("temp dir");
    let (a, b) = db_pair("merge", &sqlite_url(&db), "filesession_session");
    run("merge locking, two processes, SQLite", &[&a, &b], true);
}

#[cfg(feature = "sqlite")]
#[test]
fn request_locking_across_two_processes_on_sqlite_is_linearizable() {
    let db = tempfile::tempdir().expect("temp dir");
    let (a, b) = db_pair("request", &sqlite_url(&db), "filesession_session");
    run("request locking, two processes, SQLite", &[&a, &b], false);
}

/// Django's format on SQLite (`SESSION_FORMAT=django`): Django's table in a database in
/// Django's rollback-journal mode, where concurrent saves of a process share group commits.
#[cfg(feature = "sqlite")]
#[test]
fn merge_locking_across_two_processes_on_djangos_sqlite_is_linearizable_with_blind_deletes() {
    let db = tempfile::tempdir().expect("temp dir");
    let url = sqlite_url(&db);
    let env = [
        ("SESSION_ENGINE", "db"),
        ("DATABASE_URL", url.as_str()),
        ("SESSION_FORMAT", "django"),
        ("SECRET_KEY", "history-test-not-secret"),
        ("SESSION_LOCKING", "merge"),
    ];
    let (a, b) = (TestServer::start(&env), TestServer::start(&env));
    run(
        "merge locking, two processes, Django's SQLite",
        &[&a, &b],
        true,
    );
}

/// Without `--features postgres` the PostgreSQL histories are not compiled: say so where a
/// plain `cargo test` shows it.
#[cfg(not(feature = "postgres"))]
#[test]
fn postgres_histories_are_not_compiled_without_their_feature() {
    common::skip(
        "postgres history",
        "not compiled (cargo test --features postgres --test history, with a server at \
         FILESESSION_POSTGRES_URL)",
        "FILESESSION_POSTGRES_TEST",
    );
}

/// PostgreSQL at `FILESESSION_POSTGRES_URL` (default: the cluster `.ci/run` starts), a table
/// of the test's own, dropped after; unreachable, `SKIPPED` unless
/// `FILESESSION_POSTGRES_TEST=require`.
#[cfg(feature = "postgres")]
struct PgTable {
    url: String,
    name: String,
}

#[cfg(feature = "postgres")]
impl PgTable {
    fn new() -> Option<PgTable> {
        let url = std::env::var("FILESESSION_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5439/postgres".to_owned());
        if let Err(e) = common::Pg::connect(&url) {
            common::skip("postgres history", &e, "FILESESSION_POSTGRES_TEST");
            return None;
        }
        let name = format!("h_{}", uuid::Uuid::new_v4().simple());
        Some(PgTable { url, name })
    }
}

#[cfg(feature = "postgres")]
impl Drop for PgTable {
    fn drop(&mut self) {
        if let Ok(mut pg) = common::Pg::connect(&self.url) {
            let _ = pg.batch_execute(&format!(
                "DROP TABLE IF EXISTS {t}; DELETE FROM filesession_schema WHERE table_name = '{t}'",
                t = self.name
            ));
        }
    }
}

#[cfg(feature = "postgres")]
#[test]
fn merge_locking_across_two_processes_on_postgresql_is_linearizable_with_blind_deletes() {
    let Some(table) = PgTable::new() else { return };
    let (a, b) = db_pair("merge", &table.url, &table.name);
    run("merge locking, two processes, PostgreSQL", &[&a, &b], true);
}

#[cfg(feature = "postgres")]
#[test]
fn request_locking_across_two_processes_on_postgresql_is_linearizable() {
    let Some(table) = PgTable::new() else { return };
    let (a, b) = db_pair("request", &table.url, &table.name);
    run(
        "request locking, two processes, PostgreSQL",
        &[&a, &b],
        false,
    );
}

/// One server on SQLite: since the store is used off the server's one thread, requests of
/// one process overlap too (issue 23).
#[cfg(feature = "sqlite")]
#[test]
fn merge_locking_in_one_process_on_sqlite_is_linearizable() {
    let db = tempfile::tempdir().expect("temp dir");
    let env = [
        ("SESSION_ENGINE", "db"),
        ("DATABASE_URL", &sqlite_url(&db) as &str),
        ("SESSION_LOCKING", "merge"),
    ];
    let server = TestServer::start(&env);
    run("merge locking, one process, SQLite", &[&server], false);
}

#[cfg(feature = "postgres")]
#[test]
fn merge_locking_in_one_process_on_postgresql_is_linearizable() {
    let Some(table) = PgTable::new() else { return };
    let env = [
        ("SESSION_ENGINE", "db"),
        ("DATABASE_URL", table.url.as_str()),
        ("SESSION_DB_TABLE", table.name.as_str()),
        ("SESSION_LOCKING", "merge"),
    ];
    let server = TestServer::start(&env);
    run("merge locking, one process, PostgreSQL", &[&server], false);
}

/// Without `--features redis` the Redis histories are not compiled: say so.
#[cfg(not(feature = "redis"))]
#[test]
fn redis_histories_are_not_compiled_without_their_feature() {
    common::skip(
        "redis history",
        "not compiled (cargo test --features redis --test history, with a server at \
         FILESESSION_REDIS_URL)",
        "FILESESSION_REDIS_TEST",
    );
}

/// `FILESESSION_REDIS_URL` (default: the Redis `.ci/run` starts) if it answers; else the
/// test says it skipped (`FILESESSION_REDIS_TEST=require` makes that a failure).
#[cfg(feature = "redis")]
fn redis_url_or_skip(test: &str) -> Option<String> {
    let url = std::env::var("FILESESSION_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6390/0".to_owned());
    match filesession::RedisStore::open(&url) {
        Ok(_) => Some(url),
        Err(e) => {
            common::skip(test, &e.to_string(), "FILESESSION_REDIS_TEST");
            None
        }
    }
}

/// The Redis at `FILESESSION_REDIS_URL` (default: the one `.ci/run` starts); unreachable,
/// `SKIPPED` unless `FILESESSION_REDIS_TEST=require`. Sessions have random keys: tests may
/// share it.
#[cfg(feature = "redis")]
fn redis_servers(mode: &str, count: usize) -> Option<Vec<TestServer>> {
    let url = redis_url_or_skip("redis history")?;
    let env = [
        ("SESSION_ENGINE", "redis"),
        ("SESSION_REDIS_URL", url.as_str()),
        ("SESSION_LOCKING", mode),
    ];
    Some((0..count).map(|_| TestServer::start(&env)).collect())
}

#[cfg(feature = "redis")]
#[test]
fn merge_locking_in_one_process_on_redis_is_linearizable() {
    let Some(servers) = redis_servers("merge", 1) else {
        return;
    };
    run("merge locking, one process, Redis", &[&servers[0]], false);
}

#[cfg(feature = "redis")]
#[test]
fn merge_locking_across_two_processes_on_redis_is_linearizable_with_blind_deletes() {
    let Some(servers) = redis_servers("merge", 2) else {
        return;
    };
    run(
        "merge locking, two processes, Redis",
        &[&servers[0], &servers[1]],
        true,
    );
}

#[cfg(feature = "redis")]
#[test]
fn request_locking_across_two_processes_on_redis_is_linearizable() {
    let Some(servers) = redis_servers("request", 2) else {
        return;
    };
    run(
        "request locking, two processes, Redis",
        &[&servers[0], &servers[1]],
        false,
    );
}

/// `cached_db` servers: SQLite in a temp dir, the Redis of the Redis histories as the cache.
#[cfg(all(feature = "redis", feature = "sqlite"))]
fn cached_db_servers(db: &tempfile::TempDir, mode: &str, count: usize) -> Option<Vec<TestServer>> {
    let url = redis_url_or_skip("cached_db history")?;
    let database = sqlite_url(db);
    let env = [
        ("SESSION_ENGINE", "cached_db"),
        ("DATABASE_URL", database.as_str()),
        ("SESSION_REDIS_URL", url.as_str()),
        ("SESSION_LOCKING", mode),
    ];
    Some((0..count).map(|_| TestServer::start(&env)).collect())
}

#[cfg(all(feature = "redis", feature = "sqlite"))]
#[test]
fn merge_locking_in_one_process_on_cached_db_is_linearizable() {
    let db = tempfile::tempdir().expect("temp dir");
    let Some(servers) = cached_db_servers(&db, "merge", 1) else {
        return;
    };
    run(
        "merge locking, one process, cached_db",
        &[&servers[0]],
        false,
    );
}

/// Two processes, one filling the cache while the other writes: a copy read before a write
/// never lands in the cache after it (the cache's write counter, `store::redis::cache`).
#[cfg(all(feature = "redis", feature = "sqlite"))]
#[test]
fn merge_locking_across_two_processes_on_cached_db_is_linearizable_with_blind_deletes() {
    let db = tempfile::tempdir().expect("temp dir");
    let Some(servers) = cached_db_servers(&db, "merge", 2) else {
        return;
    };
    run(
        "merge locking, two processes, cached_db",
        &[&servers[0], &servers[1]],
        true,
    );
}

#[cfg(all(feature = "redis", feature = "sqlite"))]
#[test]
fn request_locking_across_two_processes_on_cached_db_is_linearizable() {
    let db = tempfile::tempdir().expect("temp dir");
    let Some(servers) = cached_db_servers(&db, "request", 2) else {
        return;
    };
    run(
        "request locking, two processes, cached_db",
        &[&servers[0], &servers[1]],
        false,
    );
}
