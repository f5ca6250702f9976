//! The database store in Django's format (`SESSION_FORMAT=django`) against Django 5.2's own
//! `django.contrib.sessions.backends.db`, both ways, on one database: Django loads the
//! sessions filesession writes (data, keys, `_session_expiry`, `expire_date`), filesession
//! loads the sessions Django writes (`set_expiry(60)` is `Expiry::Seconds(60)`), sees
//! Django's blind updates, cycles and deletes, and the table it makes is the one Django's
//! `migrate` makes.
//!
//! Needs a Python with Django 5.2 (`FILESESSION_DJANGO_PYTHON`, `tests/django/.venv` or
//! `bench/.venv`; for PostgreSQL also psycopg 3): without one the tests print `SKIPPED` and
//! pass, unless `FILESESSION_DJANGO_TEST=require`. PostgreSQL (feature `postgres`): the
//! server at `FILESESSION_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5439/postgres`),
//! scratch databases made and dropped by the test (Django's table name is fixed); unreachable,
//! `SKIPPED` unless `FILESESSION_POSTGRES_TEST=require`.

#![cfg(feature = "sqlite")]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use filesession::signing::{SESSION_SALT, Signer};
use filesession::{DbStore, Expiry, Session, SessionConfig, SessionKey, SessionStore, StoreError};
use serde_json::{Value, json};

const SECRET_KEY: &str = "django-insecure-filesession-db-key";

/// Django's side: settings from the command on stdin, then each operation in turn, the
/// answers printed as one JSON list.
const SCRIPT: &str = r#"
import json, sys
cmd = json.loads(sys.stdin.read())
from django.conf import settings
settings.configure(
    SECRET_KEY=cmd["secret"],
    SECRET_KEY_FALLBACKS=[],
    DATABASES={"default": cmd["db"]},
    INSTALLED_APPS=["django.contrib.sessions"],
    USE_TZ=True,
)
import django
django.setup()
from django.contrib.sessions.backends.db import SessionStore
from django.core.management import call_command
out = []
for op in cmd["ops"]:
    kind = op["op"]
    if kind == "migrate":
        call_command("migrate", "sessions", verbosity=0, fake_initial=op.get("fake_initial", False))
        out.append(None)
    elif kind == "load":
        s = SessionStore(session_key=op["key"])
        data = dict(s.items())
        out.append({"key": s.session_key, "data": data,
                    "age": s.get_expiry_age() if s.session_key else None})
    elif kind == "create":
        s = SessionStore()
        s.update(op["data"])
        if "expiry" in op:
            s.set_expiry(op["expiry"])
        s.save()
        out.append(s.session_key)
    elif kind == "update":
        s = SessionStore(session_key=op["key"])
        s.update(op["data"])
        try:
            s.save()
            out.append("saved")
        except Exception as e:
            out.append(type(e).__name__)
    elif kind == "cycle":
        s = SessionStore(session_key=op["key"])
        s.cycle_key()
        out.append(s.session_key)
    elif kind == "delete":
        SessionStore(session_key=op["key"]).delete()
        out.append(None)
print(json.dumps(out))
"#;

/// Runs `ops` in Django against the database `db` (Django's `DATABASES["default"]`).
fn django(python: &Path, db: &Value, ops: Value) -> Vec<Value> {
    let cmd = json!({"secret": SECRET_KEY, "db": db, "ops": ops});
    match common::run_python_json(python, SCRIPT, &[], &cmd) {
        Value::Array(answers) => answers,
        other => panic!("not a list: {other}"),
    }
}

fn signer() -> Signer {
    Signer::new(SECRET_KEY, &[], SESSION_SALT)
}

fn session(store: &Arc<DbStore>, key: Option<SessionKey>) -> Session {
    Session::new(store.clone(), key, SessionConfig::default())
}

/// What filesession writes, Django loads: the data as written (compressed or not,
/// non-ASCII, a 20-digit integer), the keys, `_session_expiry`, the end.
fn django_loads_what_filesession_writes(python: &Path, db: &Value, store: &Arc<DbStore>) {
    let data = json!({
        "_auth_user_id": "1",
        "name": "Zoë 😀 日本",
        "cart": [1, 2, 3],
        "big": 12345678901234567890u64,
        "text": "x".repeat(2000),
    });
    let mut s = session(store, None);
    for (k, v) in data.as_object().expect("an object") {
        s.insert(k.as_str(), v.clone());
    }
    s.set_expiry(Expiry::Seconds(300));
    s.save().expect("save");
    let key = *s.session_key().expect("a key");
    assert!(key.is_django());
    let mut at = session(store, None);
    at.insert("n", 1);
    at.set_expiry(Expiry::At(SystemTime::now() + Duration::from_secs(3600)));
    at.save().expect("save");
    let at_key = *at.session_key().expect("a key");
    // Cycled by filesession: Django finds the new key, not the old.
    let mut cycled = session(store, None);
    cycled.insert("c", true);
    cycled.save().expect("save");
    let old = *cycled.session_key().expect("a key");
    cycled.cycle_key();
    cycled.save().expect("cycle");
    let new = *cycled.session_key().expect("a key");

    let answers = django(
        python,
        db,
        json!([
            {"op": "load", "key": key.to_string()},
            {"op": "load", "key": at_key.to_string()},
            {"op": "load", "key": old.to_string()},
            {"op": "load", "key": new.to_string()},
        ]),
    );
    let mut expected = data.clone();
    expected["_session_expiry"] = json!(300);
    assert_eq!(answers[0]["key"], json!(key.to_string()));
    assert_eq!(answers[0]["data"], expected);
    assert_eq!(answers[0]["age"], json!(300));
    let age = answers[1]["age"].as_i64().expect("an age");
    assert!((3590..=3600).contains(&age), "{age}");
    assert_eq!(answers[2]["key"], Value::Null, "the old key is gone");
    assert_eq!(answers[3]["data"], json!({"c": true}));
}

/// What Django writes, filesession loads: `set_expiry(60)` is `Expiry::Seconds(60)`, the
/// end Django's; Django's blind update, cycle and delete are seen; a save after Django's
/// delete resurrects nothing.
fn filesession_loads_what_django_writes(python: &Path, db: &Value, store: &Arc<DbStore>) {
    let answers = django(
        python,
        db,
        json!([
            {"op": "create", "data": {"_auth_user_id": "7", "name": "Zoë"}, "expiry": 60},
            {"op": "create", "data": {"plain": [1, {"a": null}]}},
            {"op": "create", "data": {"doomed": true}},
        ]),
    );
    let keys: Vec<SessionKey> = answers
        .iter()
        .map(|k| {
            store
                .parse_key(k.as_str().expect("a key"))
                .expect("Django's key")
        })
        .collect();
    let loaded = store
        .load(&keys[0])
        .expect("load")
        .expect("Django's session");
    assert_eq!(loaded.record.expiry, Expiry::Seconds(60));
    assert_eq!(
        loaded.record.data.get("_auth_user_id"),
        Some(&json!("7")),
        "{:?}",
        loaded.record.data
    );
    assert_eq!(loaded.record.data.get("name"), Some(&json!("Zoë")));
    let left = loaded
        .record
        .expires_at
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(
        left > Duration::from_secs(50) && left <= Duration::from_secs(60),
        "{left:?}"
    );
    drop(loaded);
    let plain = session(store, Some(keys[1]));
    assert_eq!(plain.get("plain"), Some(&json!([1, {"a": null}])));
    assert_eq!(plain.expiry(), Expiry::Default);
    // Two weeks (SESSION_COOKIE_AGE), Django's.
    let left = plain
        .expires_at()
        .expect("stored")
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(left > Duration::from_secs(1_209_500), "{left:?}");
    drop(plain);

    // Ours, then Django's blind update of it: the row is Django's whole dictionary.
    let mut ours = session(store, Some(keys[0]));
    ours.insert("ours", 1);
    ours.save().expect("save");
    let answers = django(
        python,
        db,
        json!([
            {"op": "update", "key": keys[0].to_string(), "data": {"django": 2}},
            {"op": "cycle", "key": keys[1].to_string()},
            {"op": "delete", "key": keys[2].to_string()},
        ]),
    );
    assert_eq!(answers[0], json!("saved"));
    let s = session(store, Some(keys[0]));
    assert_eq!(s.get("ours"), Some(&json!(1)));
    assert_eq!(s.get("django"), Some(&json!(2)));
    assert_eq!(s.expiry(), Expiry::Seconds(60));
    drop(s);
    let cycled = store
        .parse_key(answers[1].as_str().expect("a key"))
        .expect("Django's key");
    assert!(store.load(&keys[1]).expect("load").is_none());
    assert_eq!(
        session(store, Some(cycled)).get("plain"),
        Some(&json!([1, {"a": null}]))
    );
    assert!(store.load(&keys[2]).expect("load").is_none());
    let mut changes = filesession::ChangeSet::new(Duration::from_secs(60));
    changes.set("late", json!(true));
    assert!(matches!(
        store.save(&keys[2], &changes, None),
        Err(StoreError::Deleted(_))
    ));
    assert!(!store.exists(&keys[2]).expect("exists"));
}

fn sqlite_db(path: &Path) -> Value {
    json!({"ENGINE": "django.db.backends.sqlite3", "NAME": path})
}

fn open_sqlite(path: &Path) -> Arc<DbStore> {
    let url = format!("sqlite:///{}", path.display());
    Arc::new(DbStore::open_django(&url, "django_session", signer()).expect("open"))
}

/// `sqlite_master`'s lines for Django's table and its indexes.
fn sqlite_schema(path: &Path) -> Vec<(String, String, Option<String>)> {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.prepare(
        "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'django_session' \
         ORDER BY name",
    )
    .expect("prepare")
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    .expect("query")
    .collect::<rusqlite::Result<_>>()
    .expect("rows")
}

fn sqlite_pragma(path: &Path, sql: &str) -> String {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row(sql, [], |r| r.get(0)).expect("pragma")
}

#[test]
fn django_and_filesession_share_sessions_on_sqlite() {
    let python = match common::django_python_with(&[]) {
        Ok(python) => python,
        Err(why) => return common::skip("Django db on SQLite", &why, "FILESESSION_DJANGO_TEST"),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    // filesession makes the table; Django's migrate then takes it with --fake-initial.
    let ours = dir.path().join("ours.sqlite3");
    let store = open_sqlite(&ours);
    let db = sqlite_db(&ours);
    django(
        &python,
        &db,
        json!([{"op": "migrate", "fake_initial": true}]),
    );
    django_loads_what_filesession_writes(&python, &db, &store);
    filesession_loads_what_django_writes(&python, &db, &store);

    // Django's migrate makes the table: the same as ours, line for line, and left as it is.
    let djangos = dir.path().join("djangos.sqlite3");
    let db = sqlite_db(&djangos);
    django(&python, &db, json!([{"op": "migrate"}]));
    let made_by_django = sqlite_schema(&djangos);
    assert_eq!(sqlite_schema(&ours), made_by_django);
    let store = open_sqlite(&djangos);
    filesession_loads_what_django_writes(&python, &db, &store);
    assert_eq!(sqlite_schema(&djangos), made_by_django, "not altered");
    assert_eq!(sqlite_pragma(&djangos, "PRAGMA journal_mode"), "delete");
    assert_eq!(
        sqlite_pragma(
            &djangos,
            "SELECT count(*) || '' FROM sqlite_master WHERE name = 'filesession_schema'"
        ),
        "0"
    );
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    /// A database of its own, dropped (with its connections) when the test ends.
    struct Scratch {
        admin: String,
        name: String,
        url: String,
    }

    impl Scratch {
        fn create(admin: &str) -> Result<Scratch, String> {
            let name = format!("fs_django_{}", SessionKey::generate_django());
            common::Pg::connect(admin)?.batch_execute(&format!("CREATE DATABASE {name}"))?;
            let mut url = url::Url::parse(admin).map_err(|e| e.to_string())?;
            url.set_path(&name);
            Ok(Scratch {
                admin: admin.to_owned(),
                name,
                url: url.to_string(),
            })
        }

        /// Django's `DATABASES["default"]` for it.
        fn django_db(&self) -> Value {
            let url = url::Url::parse(&self.url).expect("URL");
            json!({
                "ENGINE": "django.db.backends.postgresql",
                "NAME": self.name,
                "USER": url.username(),
                "PASSWORD": url.password().unwrap_or_default(),
                "HOST": url.host_str().unwrap_or("127.0.0.1"),
                "PORT": url.port().unwrap_or(5432),
            })
        }

        /// The table's columns and indexes, as PostgreSQL describes them.
        fn schema(&self) -> String {
            let mut pg = common::Pg::connect(&self.url).expect("connect");
            let columns: String = pg
                .query_one(
                    "SELECT string_agg(column_name || ' ' || data_type || ' ' || \
                     coalesce(character_maximum_length::text, '-') || ' ' || is_nullable, \
                     ', ' ORDER BY ordinal_position) FROM information_schema.columns \
                     WHERE table_name = 'django_session'",
                    &[],
                )
                .expect("columns")
                .get(0);
            let indexes: String = pg
                .query_one(
                    "SELECT string_agg(indexdef, E'\\n' ORDER BY indexname) FROM pg_indexes \
                     WHERE tablename = 'django_session'",
                    &[],
                )
                .expect("indexes")
                .get(0);
            format!("{columns}\n{indexes}")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            if let Ok(mut pg) = common::Pg::connect(&self.admin) {
                let _ = pg.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ));
            }
        }
    }

    fn postgres_url() -> String {
        std::env::var("FILESESSION_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5439/postgres".to_owned())
    }

    #[test]
    fn django_and_filesession_share_sessions_on_postgres() {
        let python = match common::django_python_with(&["psycopg"]) {
            Ok(python) => python,
            Err(why) => {
                return common::skip("Django db on PostgreSQL", &why, "FILESESSION_DJANGO_TEST");
            }
        };
        let admin = postgres_url();
        let ours = match Scratch::create(&admin) {
            Ok(scratch) => scratch,
            Err(why) => {
                return common::skip("Django db on PostgreSQL", &why, "FILESESSION_POSTGRES_TEST");
            }
        };
        let djangos = Scratch::create(&admin).expect("a second scratch database");
        // filesession makes the table; Django's migrate then takes it with --fake-initial.
        let store =
            Arc::new(DbStore::open_django(&ours.url, "django_session", signer()).expect("open"));
        let db = ours.django_db();
        django(
            &python,
            &db,
            json!([{"op": "migrate", "fake_initial": true}]),
        );
        django_loads_what_filesession_writes(&python, &db, &store);
        filesession_loads_what_django_writes(&python, &db, &store);
        drop(store);

        // Django's migrate makes the table: the same columns and indexes as ours.
        let db = djangos.django_db();
        django(&python, &db, json!([{"op": "migrate"}]));
        let made_by_django = djangos.schema();
        assert!(
            made_by_django.contains("timestamp with time zone")
                && made_by_django.contains("varchar_pattern_ops"),
            "{made_by_django}"
        );
        assert_eq!(ours.schema(), made_by_django);
        let store =
            Arc::new(DbStore::open_django(&djangos.url, "django_session", signer()).expect("open"));
        filesession_loads_what_django_writes(&python, &db, &store);
        drop(store);
        assert_eq!(djangos.schema(), made_by_django, "not altered");
    }
}

/// Without `--features postgres` the PostgreSQL half is not compiled: say so where a plain
/// `cargo test` shows it.
#[cfg(not(feature = "postgres"))]
#[test]
fn the_postgres_half_is_not_compiled_without_its_feature() {
    common::skip(
        "Django db on PostgreSQL",
        "not compiled (cargo test --features postgres --test django_db, with a server at \
         FILESESSION_POSTGRES_URL)",
        "FILESESSION_POSTGRES_TEST",
    );
}
