//! One conformance suite for every session store: each case is a generic function over
//! `Arc<dyn SessionStore>`, stamped out per store by `conformance!`.
//!
//! Redis (feature `redis`): the server at `FILESESSION_REDIS_URL` (default
//! `redis://127.0.0.1:6390/0`). If it is unreachable the Redis cases print
//! `SKIPPED redis conformance: ...` and pass, unless `FILESESSION_REDIS_TEST=require`.
//!
//! SQLite (feature `sqlite`, on by default): a database file in a temp dir, always.
//! PostgreSQL (feature `postgres`): the server at `FILESESSION_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5439/postgres`), a table of its own per test, dropped
//! after; unreachable, the cases print `SKIPPED` and pass, unless
//! `FILESESSION_POSTGRES_TEST=require`. Both also in Django's format (`sqlite_django`,
//! `postgres_django`: Django's table, signed rows, Django's keys).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use filesession::{
    Acquired, Expiry, FileStore, Locking, MemoryStore, Record, Session, SessionConfig, SessionKey,
    SessionStore, StoreError,
};
use serde_json::{Map, json};

/// A store under test and what must outlive it (its temp dir).
struct Fixture {
    store: Arc<dyn SessionStore>,
    _dir: Option<tempfile::TempDir>,
    #[cfg(feature = "redis")]
    _redis: Option<RedisCleanup>,
    #[cfg(feature = "postgres")]
    _table: Option<TableCleanup>,
}

/// Drops a PostgreSQL test's table when the test ends.
#[cfg(feature = "postgres")]
struct TableCleanup {
    url: String,
    table: String,
}

#[cfg(feature = "postgres")]
impl Drop for TableCleanup {
    fn drop(&mut self) {
        if let Ok(mut client) = common::Pg::connect(&self.url) {
            // Apart: a Django-format test may run where filesession_schema does not exist.
            let _ = client.batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table));
            let _ = client.batch_execute(&format!(
                "DELETE FROM filesession_schema WHERE table_name = '{}'",
                self.table
            ));
        }
    }
}

/// `FILESESSION_POSTGRES_URL`, or the throwaway cluster `.ci/run` starts.
#[cfg(feature = "postgres")]
fn postgres_url() -> String {
    std::env::var("FILESESSION_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5439/postgres".to_owned())
}

/// Deletes a Redis test's keys (its own prefix) when the test ends.
#[cfg(feature = "redis")]
struct RedisCleanup {
    url: String,
    prefix: String,
}

#[cfg(feature = "redis")]
impl Drop for RedisCleanup {
    fn drop(&mut self) {
        let Ok(mut conn) =
            ::redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        else {
            return;
        };
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        for key in keys {
            let _ = ::redis::cmd("DEL").arg(key).query::<i64>(&mut conn);
        }
    }
}

fn memory(locking: Locking, _lock_timeout: Duration) -> Option<Fixture> {
    if locking == Locking::Request {
        // Not a missing service but a case that does not apply: said where a plain
        // `cargo test` shows it (libtest captures eprintln!), with no switch to require it.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: memory conformance, a request-locking case: MemoryStore has no request \
             locking mode (not applicable)"
        );
        return None;
    }
    Some(Fixture {
        store: Arc::new(MemoryStore::new()),
        _dir: None,
        #[cfg(feature = "redis")]
        _redis: None,
        #[cfg(feature = "postgres")]
        _table: None,
    })
}

#[cfg(feature = "sqlite")]
fn sqlite(locking: Locking, lock_timeout: Duration) -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:///{}", dir.path().join("db.sqlite3").display());
    let store = filesession::DbStore::open(&url, "filesession_session")
        .expect("open SQLite")
        .with_locking(locking)
        .with_lock_timeout(lock_timeout);
    Some(Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
        #[cfg(feature = "redis")]
        _redis: None,
        #[cfg(feature = "postgres")]
        _table: None,
    })
}

/// The signer of the Django-format stores: Django's `SECRET_KEY` and session salt.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn django_signer() -> filesession::signing::Signer {
    filesession::signing::Signer::new(
        "django-insecure-conformance",
        &[],
        filesession::signing::SESSION_SALT,
    )
}

/// SQLite in Django's format: Django's `django_session`, made as its migration makes it.
#[cfg(feature = "sqlite")]
fn sqlite_django(locking: Locking, lock_timeout: Duration) -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:///{}", dir.path().join("db.sqlite3").display());
    let store = filesession::DbStore::open_django(&url, "django_session", django_signer())
        .expect("open SQLite")
        .with_locking(locking)
        .with_lock_timeout(lock_timeout);
    Some(Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
        #[cfg(feature = "redis")]
        _redis: None,
        #[cfg(feature = "postgres")]
        _table: None,
    })
}

#[cfg(feature = "postgres")]
fn postgres(locking: Locking, lock_timeout: Duration) -> Option<Fixture> {
    postgres_as(locking, lock_timeout, false)
}

/// PostgreSQL in Django's format: a table of Django's layout per test.
#[cfg(feature = "postgres")]
fn postgres_django(locking: Locking, lock_timeout: Duration) -> Option<Fixture> {
    postgres_as(locking, lock_timeout, true)
}

#[cfg(feature = "postgres")]
fn postgres_as(locking: Locking, lock_timeout: Duration, django: bool) -> Option<Fixture> {
    let url = postgres_url();
    // A table of its own per test: tests run in parallel on one database.
    let table = format!("t_{}", SessionKey::generate().to_string().replace('-', ""));
    let opened = if django {
        filesession::DbStore::open_django(&url, &table, django_signer())
    } else {
        filesession::DbStore::open(&url, &table)
    };
    match opened {
        Ok(store) => Some(Fixture {
            store: Arc::new(store.with_locking(locking).with_lock_timeout(lock_timeout)),
            _dir: None,
            #[cfg(feature = "redis")]
            _redis: None,
            _table: Some(TableCleanup { url, table }),
        }),
        Err(e) => {
            common::skip(
                "postgres conformance",
                &e.to_string(),
                "FILESESSION_POSTGRES_TEST",
            );
            None
        }
    }
}

fn file(locking: Locking, lock_timeout: Duration) -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FileStore::open(dir.path())
        .expect("open file store")
        .with_locking(locking)
        .with_lock_timeout(lock_timeout);
    Some(Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
        #[cfg(feature = "redis")]
        _redis: None,
        #[cfg(feature = "postgres")]
        _table: None,
    })
}

/// Django's file layout (`SESSION_FORMAT=django`, `SESSION_ENGINE=file`): Django's keys,
/// `sessionid<key>` files of Django's signed data.
fn django_file(locking: Locking, lock_timeout: Duration) -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let signer = filesession::signing::Signer::new(
        "django-insecure-filesession-conformance-key",
        &[],
        filesession::signing::SESSION_SALT,
    );
    let store = filesession::DjangoFileStore::open(
        dir.path(),
        signer,
        "sessionid",
        Duration::from_secs(1_209_600),
    )
    .expect("open Django file store")
    .with_locking(locking)
    .with_lock_timeout(lock_timeout);
    Some(Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
        #[cfg(feature = "redis")]
        _redis: None,
        #[cfg(feature = "postgres")]
        _table: None,
    })
}

/// `cached_db`: a SQLite file in a temp dir, with the Redis of the Redis cases as its cache
/// (sessions have random keys: tests may share it).
#[cfg(all(feature = "redis", feature = "sqlite"))]
fn cached_db(locking: Locking, lock_timeout: Duration) -> Option<Fixture> {
    let url = std::env::var("FILESESSION_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6390/0".to_owned());
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite:///{}", dir.path().join("db.sqlite3").display());
    let db = filesession::DbStore::open(&db_url, "filesession_session")
        .expect("open SQLite")
        .with_locking(locking)
        .with_lock_timeout(lock_timeout);
    match filesession::CachedDbStore::open(db, &url) {
        Ok(store) => Some(Fixture {
            store: Arc::new(store),
            _dir: Some(dir),
            _redis: None,
            #[cfg(feature = "postgres")]
            _table: None,
        }),
        Err(e) => {
            common::skip(
                "cached_db conformance",
                &e.to_string(),
                "FILESESSION_REDIS_TEST",
            );
            None
        }
    }
}

#[cfg(feature = "redis")]
fn redis(locking: Locking, lock_timeout: Duration) -> Option<Fixture> {
    let url = std::env::var("FILESESSION_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6390/0".to_owned());
    match filesession::RedisStore::open(&url) {
        Ok(store) => {
            // A prefix of its own per test: tests run in parallel on one Redis.
            let prefix = format!("filesession-test:{}:", SessionKey::generate());
            let store = store
                .with_prefix(&prefix)
                .with_locking(locking)
                .with_lock_timeout(lock_timeout);
            Some(Fixture {
                store: Arc::new(store),
                _dir: None,
                _redis: Some(RedisCleanup { url, prefix }),
                #[cfg(feature = "postgres")]
                _table: None,
            })
        }
        Err(e) => {
            common::skip(
                "redis conformance",
                &e.to_string(),
                "FILESESSION_REDIS_TEST",
            );
            None
        }
    }
}

fn session(store: &Arc<dyn SessionStore>, key: Option<SessionKey>) -> Session {
    Session::new(store.clone(), key, SessionConfig::default())
}

/// A fresh random key of the kind `store` keeps (a UUID, or Django's key for a store of
/// Django's format): one that could name a session there, but names none.
fn unused_key(store: &Arc<dyn SessionStore>) -> SessionKey {
    let key = SessionKey::generate();
    if store.parse_key(&key.to_string()).is_some() {
        return key;
    }
    let key = SessionKey::generate_django();
    assert_eq!(
        store.parse_key(&key.to_string()),
        Some(key),
        "a key of some kind"
    );
    key
}

/// Saves a session holding `pairs` and returns its key.
fn stored(store: &Arc<dyn SessionStore>, pairs: &[(&str, serde_json::Value)]) -> SessionKey {
    let mut s = session(store, None);
    for (k, v) in pairs {
        s.insert(*k, v.clone());
    }
    s.save().expect("save new session");
    *s.session_key().expect("saved session has a key")
}

// ---------------------------------------------------------------------------------------
// The cases.

/// Django's SessionBase: insert/get/remove, accessed/modified, clear, flush, cycle_key.
fn session_semantics(store: Arc<dyn SessionStore>) {
    let mut s = session(&store, None);
    assert!(!s.accessed() && !s.modified());
    assert_eq!(s.get("a"), None);
    assert!(s.accessed() && !s.modified());
    s.insert("a", 1);
    s.insert("_auth_user_id", "42");
    s.insert("__expiry", "not metadata");
    s.insert("nested", json!({"x": [1, 2, null], "y": "é"}));
    s.insert("null", json!(null));
    assert!(s.modified());
    s.save().expect("create");
    let key = *s.session_key().expect("created");

    // Reload: everything is back, unmodified, accessed once read.
    let mut r = session(&store, Some(key));
    assert!(!r.accessed());
    assert_eq!(r.get("a"), Some(&json!(1)));
    assert_eq!(r.get("_auth_user_id"), Some(&json!("42")));
    assert_eq!(r.get("__expiry"), Some(&json!("not metadata")));
    assert_eq!(r.get("nested"), Some(&json!({"x": [1, 2, null], "y": "é"})));
    assert!(r.contains("null"));
    assert_eq!(r.len(), 5);
    assert!(r.accessed() && !r.modified());
    assert_eq!(r.expiry(), Expiry::Default);

    // Remove one key, set another.
    assert!(r.remove("a"));
    assert!(!r.remove("absent"));
    r.insert("b", "two");
    r.save().expect("save");
    let r = session(&store, Some(key));
    assert_eq!(r.get("a"), None);
    assert_eq!(r.get("b"), Some(&json!("two")));
    assert_eq!(r.len(), 5);
    drop(r); // a reader holds the lock in request mode until it is dropped

    // clear keeps the session (and its key), without its data; later writes stay.
    let mut c = session(&store, Some(key));
    c.clear();
    c.insert("after", true);
    c.save().expect("save after clear");
    let c = session(&store, Some(key));
    assert_eq!(c.len(), 1);
    assert_eq!(c.get("after"), Some(&json!(true)));
    drop(c);
    assert!(store.exists(&key).expect("exists"));

    // cycle_key: same data under a new key, the old one gone.
    let mut y = session(&store, Some(key));
    y.insert("cycled", 1);
    y.cycle_key();
    y.save().expect("cycle");
    let new_key = *y.session_key().expect("cycled key");
    assert_ne!(new_key, key);
    assert!(!store.exists(&key).expect("exists old"));
    let y = session(&store, Some(new_key));
    assert_eq!(y.get("after"), Some(&json!(true)));
    assert_eq!(y.get("cycled"), Some(&json!(1)));
    drop(y);
    assert_eq!(session(&store, Some(key)).get("after"), None);

    // set_expiry is stored.
    let mut e = session(&store, Some(new_key));
    e.set_expiry(Expiry::Seconds(300));
    e.save().expect("save expiry");
    let e = session(&store, Some(new_key));
    assert_eq!(e.expiry(), Expiry::Seconds(300));
    let left = e
        .expires_at()
        .expect("stored")
        .duration_since(SystemTime::now())
        .expect("in the future");
    // 300 s from the save, to the millisecond, rounded up: never less.
    assert!(left > Duration::from_secs(290) && left <= Duration::from_millis(300_001));
    drop(e);

    // flush: the stored session is deleted, the session is empty and keyless.
    let mut f = session(&store, Some(new_key));
    f.insert("x", 1);
    f.flush();
    assert!(f.is_empty());
    assert_eq!(f.session_key(), None);
    f.save().expect("save after flush");
    assert!(!store.exists(&new_key).expect("exists"));
    assert_eq!(f.session_key(), None);

    // An empty new session is never stored.
    let mut n = session(&store, None);
    n.save().expect("save empty");
    assert_eq!(n.session_key(), None);
}

/// Two requests of one session changing different keys both keep their change.
fn no_lost_updates(store: Arc<dyn SessionStore>) {
    let key = stored(&store, &[("base", json!(0))]);
    let mut a = session(&store, Some(key));
    let mut b = session(&store, Some(key));
    assert_eq!(a.get("base"), Some(&json!(0)));
    assert_eq!(b.get("base"), Some(&json!(0)));
    a.insert("from_a", "a");
    b.insert("from_b", "b");
    b.remove("base");
    a.save().expect("save a");
    b.save().expect("save b");
    let r = session(&store, Some(key));
    assert_eq!(r.get("from_a"), Some(&json!("a")));
    assert_eq!(r.get("from_b"), Some(&json!("b")));
    assert_eq!(r.get("base"), None);
    assert_eq!(r.len(), 2);
}

/// A save never brings back a session another request deleted.
fn no_resurrection(store: Arc<dyn SessionStore>) {
    let key = stored(&store, &[("user", json!(7))]);
    let mut logout = session(&store, Some(key));
    let mut other = session(&store, Some(key));
    assert_eq!(logout.get("user"), Some(&json!(7)));
    assert_eq!(other.get("user"), Some(&json!(7)));
    logout.flush();
    logout.save().expect("logout");
    other.insert("cart", json!([1, 2]));
    match other.save() {
        Err(StoreError::Deleted(k)) => assert_eq!(k, key),
        other => panic!("expected Deleted, got {other:?}"),
    }
    assert!(!store.exists(&key).expect("exists"));
    // cycle_key is no way back either.
    let key = stored(&store, &[("user", json!(8))]);
    let mut other = session(&store, Some(key));
    assert!(other.contains("user"));
    store.delete(&key, None).expect("delete");
    other.cycle_key();
    assert!(matches!(other.save(), Err(StoreError::Deleted(_))));
    assert!(!store.exists(&key).expect("exists"));
}

/// A session with a 1 s expiry is gone 2.1 s later.
fn expiry(store: Arc<dyn SessionStore>) {
    let mut s = session(&store, None);
    s.set_expiry(Expiry::Seconds(1));
    s.insert("short", "lived");
    s.save().expect("save");
    let key = *s.session_key().expect("key");
    assert_eq!(
        session(&store, Some(key)).get("short"),
        Some(&json!("lived"))
    );
    let keeper = stored(&store, &[("long", json!("lived"))]);
    thread::sleep(Duration::from_millis(2100));
    let gone = session(&store, Some(key));
    assert_eq!(gone.get("short"), None);
    assert_eq!(gone.session_key(), None);
    assert!(store.load(&key).expect("load").is_none());
    assert_eq!(
        session(&store, Some(keeper)).get("long"),
        Some(&json!("lived"))
    );
    if let Some(deletion) = store.expired_deletion() {
        deletion.clear_expired().expect("clear_expired");
    }
    assert_eq!(
        session(&store, Some(keeper)).get("long"),
        Some(&json!("lived"))
    );
}

/// An unknown key from a cookie is never adopted: a write creates a fresh key.
fn fixation(store: Arc<dyn SessionStore>) {
    let planted = unused_key(&store);
    let mut s = session(&store, Some(planted));
    assert_eq!(s.get("anything"), None);
    assert_eq!(s.session_key(), None);
    s.insert("user", 1);
    s.save().expect("save");
    let key = *s.session_key().expect("new key");
    assert_ne!(key, planted);
    // The cookie the store's key becomes names it again.
    assert_eq!(store.parse_key(&key.to_string()), Some(key));
    assert!(!store.exists(&planted).expect("exists planted"));
    assert!(store.exists(&key).expect("exists new"));
    // Nor is a key someone else saves into while we hold it.
    assert!(store.load(&planted).expect("load").is_none());
}

/// The keys a store makes are the keys its cookies are read as; a key of the other kind
/// (a UUID v4 given to a store of Django's format, a Django key to one of filesession's)
/// names no session of the store, and a write under it makes a fresh key of the store's.
fn foreign_keys(store: Arc<dyn SessionStore>) {
    let key = stored(&store, &[("user", json!(1))]);
    assert_eq!(store.parse_key(&key.to_string()), Some(key));
    let foreign = if key.is_django() {
        SessionKey::generate()
    } else {
        SessionKey::generate_django()
    };
    assert_eq!(store.parse_key(&foreign.to_string()), None);
    assert!(store.load(&foreign).expect("load").is_none());
    assert!(!store.exists(&foreign).expect("exists"));
    let mut s = session(&store, Some(foreign));
    assert_eq!(s.get("user"), None);
    s.insert("user", 2);
    s.save().expect("save");
    let fresh = *s.session_key().expect("a fresh key");
    assert_ne!(fresh, foreign);
    assert_eq!(fresh.is_django(), key.is_django());
    assert!(!store.exists(&foreign).expect("exists"));
    assert_eq!(session(&store, Some(key)).get("user"), Some(&json!(1)));
}

/// create never overwrites: 1000 creates from 4 threads give 1000 distinct live keys.
fn exclusive_create(store: Arc<dyn SessionStore>) {
    let mut data = Map::new();
    data.insert("n".to_owned(), json!(1));
    let record = Record {
        data: data.into(),
        expiry: Expiry::Default,
        expires_at: SystemTime::now() + Duration::from_secs(600),
    };
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let record = record.clone();
            thread::spawn(move || {
                (0..250)
                    .map(|_| store.create(&record).expect("create"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let keys: HashSet<SessionKey> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(keys.len(), 1000);
    for key in keys.iter().take(20) {
        let loaded = store.load(key).expect("load").expect("live");
        assert_eq!(loaded.record.data.get("n"), Some(&json!(1)));
    }
}

/// Request locking: a read-modify-write counter is exact across threads.
fn request_counter(store: Arc<dyn SessionStore>) {
    let key = stored(&store, &[("count", json!(0))]);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            thread::spawn(move || {
                for _ in 0..25 {
                    let mut s = session(&store, Some(key));
                    let n = s.get_as::<u64>("count").expect("number").expect("present");
                    s.insert("count", n + 1);
                    s.save().expect("save");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(session(&store, Some(key)).get("count"), Some(&json!(100)));
}

/// Request locking: a second request waits at most the lock timeout, then `LockTimeout`.
fn lock_timeout(store: Arc<dyn SessionStore>) {
    let key = stored(&store, &[("count", json!(0))]);
    let holder = session(&store, Some(key));
    assert_eq!(holder.get("count"), Some(&json!(0)));
    let started = std::time::Instant::now();
    match store.load(&key) {
        Err(StoreError::LockTimeout { key: k, waited }) => {
            assert_eq!(k, key);
            assert!(waited >= Duration::from_millis(200));
        }
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    let preflight = store
        .preflight()
        .expect("a store with request locking has a lock preflight");
    assert!(matches!(
        preflight.acquire(&key, Duration::from_millis(200)),
        Err(StoreError::LockTimeout { .. })
    ));
    let mut blocked = session(&store, Some(key));
    blocked.insert("count", 5);
    assert!(matches!(
        blocked.save(),
        Err(StoreError::LockTimeout { .. })
    ));
    drop(holder);
    let acquired = preflight
        .acquire(&key, Duration::from_secs(3))
        .expect("acquire")
        .expect("held");
    assert!(matches!(acquired, Acquired::Locked(_)), "{acquired:?}");
    let loaded = preflight
        .load_acquired(&key, acquired)
        .expect("load")
        .expect("live");
    assert_eq!(loaded.record.data.get("count"), Some(&json!(0)));
    let mut changes = filesession::ChangeSet::new(Duration::from_secs(60));
    changes.set("count", json!(1));
    store
        .save(&key, &changes, loaded.lock)
        .expect("save with the lock");
    let again = session(&store, Some(key));
    assert_eq!(again.get("count"), Some(&json!(1)));
}

// ---------------------------------------------------------------------------------------
// One module of tests per store: `<store>::<case>`.

/// Values come back exactly as stored, as Python keeps them: integers beyond 64 bits, `-0`,
/// decimals as written, and the keys of every object in insertion order (issue 12).
fn values_exactly(store: Arc<dyn SessionStore>) {
    let sent = r#"{"z": 1, "big": 10000000000000000000001, "neg": -0, "f": 1.50, "tiny": 1e-400,
                   "nested": {"y": [3, {"b": 1, "a": 2}], "x": null}, "a": "é"}"#;
    let value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(sent).expect("JSON");
    let mut s = session(&store, None);
    for (k, v) in &value {
        s.insert(k.as_str(), v.clone());
    }
    s.save().expect("save");
    let key = *s.session_key().expect("a key");
    let back = session(&store, Some(key));
    let items: serde_json::Map<String, serde_json::Value> =
        back.items().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(
        serde_json::Value::Object(items).to_string(),
        r#"{"z":1,"big":10000000000000000000001,"neg":-0,"f":1.50,"tiny":1e-400,"nested":{"y":[3,{"b":1,"a":2}],"x":null},"a":"é"}"#
    );
}

macro_rules! conformance {
    ($store:ident) => {
        mod $store {
            use super::*;

            fn run(locking: Locking, case: fn(Arc<dyn SessionStore>)) {
                run_with(locking, Duration::from_secs(10), case);
            }

            fn run_with(locking: Locking, timeout: Duration, case: fn(Arc<dyn SessionStore>)) {
                if let Some(fixture) = super::$store(locking, timeout) {
                    case(fixture.store.clone());
                }
            }

            #[test]
            fn session_semantics() {
                run(Locking::Merge, super::session_semantics);
            }
            #[test]
            fn session_semantics_request_mode() {
                run(Locking::Request, super::session_semantics);
            }
            #[test]
            fn no_lost_updates() {
                run(Locking::Merge, super::no_lost_updates);
            }
            #[test]
            fn no_resurrection() {
                run(Locking::Merge, super::no_resurrection);
            }
            #[test]
            fn expiry() {
                run(Locking::Merge, super::expiry);
            }
            #[test]
            fn fixation() {
                run(Locking::Merge, super::fixation);
            }
            #[test]
            fn foreign_keys() {
                run(Locking::Merge, super::foreign_keys);
            }
            #[test]
            fn exclusive_create() {
                run(Locking::Merge, super::exclusive_create);
            }
            #[test]
            fn lock_timeout() {
                run_with(
                    Locking::Request,
                    Duration::from_millis(200),
                    super::lock_timeout,
                );
            }
            #[test]
            fn request_counter() {
                run(Locking::Request, super::request_counter);
            }
            #[test]
            fn values_exactly() {
                run(Locking::Merge, super::values_exactly);
            }
        }
    };
}

conformance!(memory);
conformance!(file);
conformance!(django_file);
#[cfg(feature = "sqlite")]
conformance!(sqlite);
#[cfg(feature = "sqlite")]
conformance!(sqlite_django);
#[cfg(feature = "postgres")]
conformance!(postgres);
#[cfg(feature = "postgres")]
conformance!(postgres_django);
#[cfg(feature = "redis")]
conformance!(redis);
#[cfg(all(feature = "redis", feature = "sqlite"))]
conformance!(cached_db);

/// Without `--features postgres` the PostgreSQL cases are not compiled: say so where a plain
/// `cargo test` shows it (`.ci/run` runs them with the feature and a server).
#[cfg(not(feature = "postgres"))]
#[test]
fn postgres_conformance_is_not_compiled_without_its_feature() {
    common::skip(
        "postgres conformance",
        "not compiled (cargo test --features postgres --test conformance, with a server at \
         FILESESSION_POSTGRES_URL)",
        "FILESESSION_POSTGRES_TEST",
    );
}

/// Without `--features redis` the Redis cases are not compiled: say so.
#[cfg(not(feature = "redis"))]
#[test]
fn redis_conformance_is_not_compiled_without_its_feature() {
    common::skip(
        "redis conformance",
        "not compiled (cargo test --features redis --test conformance, with a server at \
         FILESESSION_REDIS_URL)",
        "FILESESSION_REDIS_TEST",
    );
}

/// Redis only: a field that is not JSON makes the session corrupt, i.e. no session; the
/// layout is one hash per session with `__expiry` and a TTL.
#[cfg(feature = "redis")]
#[test]
fn redis_layout_and_corrupt_fields() {
    let Some(fixture) = redis(Locking::Merge, Duration::from_secs(10)) else {
        return;
    };
    let Some(cleanup) = fixture._redis.as_ref() else {
        return;
    };
    let store = fixture.store.clone();
    let key = stored(&store, &[("a", json!({"b": 1})), ("_u", json!("x"))]);
    let mut conn = ::redis::Client::open(cleanup.url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect");
    let redis_key = format!("{}{key}", cleanup.prefix);
    let mut fields: Vec<String> = ::redis::cmd("HKEYS")
        .arg(&redis_key)
        .query(&mut conn)
        .expect("HKEYS");
    fields.sort();
    assert_eq!(fields, ["_:_u", "__expiry", "a"]);
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(&redis_key)
        .query(&mut conn)
        .expect("PTTL");
    // Two weeks from the save, to the millisecond, rounded up.
    assert!(ttl > 1_209_000_000 && ttl <= 1_209_600_001, "ttl {ttl}");
    ::redis::cmd("HSET")
        .arg(&redis_key)
        .arg("a")
        .arg("{not json")
        .query::<i64>(&mut conn)
        .expect("HSET");
    assert!(store.load(&key).expect("load").is_none());
    let s = session(&store, Some(key));
    assert_eq!(s.get("a"), None);
    assert_eq!(s.session_key(), None);
}

/// Redis only: an unreachable server is a `Backend` error that keeps Redis' own error as
/// its cause, and a dropped connection is replaced transparently.
#[cfg(feature = "redis")]
#[test]
fn redis_unreachable_and_reconnect() {
    match filesession::RedisStore::open("redis://127.0.0.1:1/0") {
        Err(e @ StoreError::Backend { .. }) => {
            assert!(e.to_string().contains("is unreachable"), "{e}");
            let cause = std::error::Error::source(&e).expect("the cause is kept");
            assert!(
                cause.downcast_ref::<::redis::RedisError>().is_some(),
                "{cause:?}"
            );
        }
        other => panic!("expected Backend, got {other:?}"),
    }
    let Some(fixture) = redis(Locking::Request, Duration::from_secs(10)) else {
        return;
    };
    let Some(cleanup) = fixture._redis.as_ref() else {
        return;
    };
    // A store of its own on database 15, so that only its connection is killed below.
    let mut url = url::Url::parse(&cleanup.url).expect("redis URL");
    url.set_path("/15");
    let store: Arc<dyn SessionStore> = Arc::new(
        filesession::RedisStore::open(url.as_str())
            .expect("open db 15")
            .with_prefix(&cleanup.prefix)
            .with_locking(Locking::Request),
    );
    let key = stored(&store, &[("n", json!(1))]);
    let mut conn = ::redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect");
    let me: i64 = ::redis::cmd("CLIENT")
        .arg("ID")
        .query(&mut conn)
        .expect("id");
    let list: String = ::redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut conn)
        .expect("list");
    let on_db15: Vec<i64> = list
        .lines()
        .filter(|l| l.split(' ').any(|f| f == "db=15"))
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .filter(|id| *id != me)
        .collect();
    assert!(!on_db15.is_empty(), "the store's connection is on db 15");
    for id in on_db15 {
        ::redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query::<i64>(&mut conn)
            .expect("CLIENT KILL");
    }
    let mut s = session(&store, Some(key));
    assert_eq!(s.get("n"), Some(&json!(1)));
    s.insert("n", 2);
    s.save().expect("save after reconnect");
    assert_eq!(session(&store, Some(key)).get("n"), Some(&json!(2)));
    let _ = ::redis::cmd("DEL")
        .arg(format!("{}{key}", cleanup.prefix))
        .query::<i64>(&mut conn);
}

/// PostgreSQL only: a table filesession did not make is refused, never adopted; and a request
/// lock lost with its connection (the server ended it) makes the save write nothing.
#[cfg(feature = "postgres")]
#[test]
fn postgres_refuses_foreign_tables_and_writes_nothing_without_its_lock() {
    let Some(fixture) = postgres(Locking::Request, Duration::from_secs(2)) else {
        return;
    };
    let Some(table) = fixture._table.as_ref() else {
        return;
    };
    let mut pg = common::Pg::connect(&table.url).expect("connect");
    let foreign = format!("{}_django", table.table);
    pg.batch_execute(&format!(
        "CREATE TABLE {foreign} (session_key varchar(40) PRIMARY KEY, session_data text, \
         expire_date timestamptz)"
    ))
    .expect("create a foreign table");
    let refused = filesession::DbStore::open(&table.url, &foreign)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    pg.batch_execute(&format!("DROP TABLE {foreign}"))
        .expect("drop");
    assert!(refused.contains("was not made by filesession"), "{refused}");

    let store = fixture.store.clone();
    let key = stored(&store, &[("n", json!(0))]);
    let loaded = store.load(&key).expect("load").expect("live");
    // The server ends the connection that holds this table's advisory lock (the class is
    // FNV-1a of the table name, as the store computes it; other tests' locks are left).
    let class = table.table.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let ended = pg
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid::bigint = $1",
            &[&i64::from(class)],
        )
        .expect("terminate");
    assert!(ended.get::<_, i64>(0) >= 1, "a lock holder was ended");
    let mut changes = filesession::ChangeSet::new(Duration::from_secs(60));
    changes.set("n", json!(1));
    let err = store
        .save(&key, &changes, loaded.lock)
        .expect_err("no lock, no write");
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");
    assert_eq!(session(&store, Some(key)).get("n"), Some(&json!(0)));
}

/// 64 requests wait for one session locked in `request` mode, with a pool of 16
/// connections (issue 23: waiters polling for the lock each kept a pooled connection, so 15
/// of them left the holder without one to save with until its wait for a connection ran
/// out). The holder's reads and writes go through the connection its lock holds: it saves
/// at once, and every waiter is answered (the lock, or `LockTimeout`) by its deadline.
#[cfg(feature = "postgres")]
#[test]
fn sixty_four_waiters_on_one_postgres_session_never_starve_its_holder() {
    use std::time::Instant;
    let lock_timeout = Duration::from_secs(2);
    let Some(fixture) = postgres(Locking::Request, lock_timeout) else {
        return;
    };
    let store = fixture.store.clone();
    let key = stored(&store, &[("n", json!(0))]);
    let held = store.load(&key).expect("load").expect("live");
    let waiters: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            thread::spawn(move || {
                let started = Instant::now();
                let outcome = match store.load(&key) {
                    Ok(Some(loaded)) => {
                        let mut changes = filesession::ChangeSet::new(Duration::from_secs(60));
                        changes.set(&format!("w{i}"), json!(true));
                        store
                            .save(&key, &changes, loaded.lock)
                            .map(|_| "saved")
                            .unwrap_or("save failed")
                    }
                    Ok(None) => "gone",
                    Err(StoreError::LockTimeout { .. }) => "lock timeout",
                    Err(_) => "other error",
                };
                (outcome, started.elapsed())
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500)); // every waiter waits by now
    let mut changes = filesession::ChangeSet::new(Duration::from_secs(60));
    changes.set("holder", json!(true));
    let started = Instant::now();
    let saved = store.save(&key, &changes, held.lock);
    let holder_took = started.elapsed();
    let outcomes: Vec<(&str, Duration)> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
    let count = |what: &str| outcomes.iter().filter(|(o, _)| *o == what).count();
    let slowest = outcomes.iter().map(|(_, t)| *t).max().unwrap_or_default();
    eprintln!(
        "conformance/postgres-64-waiters: the holder's save {:?} in {holder_took:?}; waiters: \
         {} saved, {} lock timeout, {} other; the slowest answered in {slowest:?}",
        saved.as_ref().map(|_| ()),
        count("saved"),
        count("lock timeout"),
        64 - count("saved") - count("lock timeout")
    );
    saved.expect("the holder saves while 64 wait");
    assert!(
        holder_took < lock_timeout,
        "the holder waited for nothing: {holder_took:?}"
    );
    assert_eq!(count("saved") + count("lock timeout"), 64, "{outcomes:?}");
    // Each waiter's deadline: its lock timeout, counted from its first try (plus the time
    // to take a connection and answer).
    assert!(
        slowest < lock_timeout + Duration::from_secs(1),
        "{slowest:?}"
    );
}
