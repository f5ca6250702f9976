//! `DjangoFileStore` against Django 5.2's own file backend
//! (`django.contrib.sessions.backends.file`) on one directory, both ways: Django loads the
//! sessions this store writes (non-ASCII text, a 20-digit integer, nested JSON, exactly)
//! and this store loads Django's (a compressed payload too); a `set_expiry` with a
//! datetime made by Django is enforced here, and this store's by Django; each side's
//! cleanup removes the other's ended sessions and nothing else. Needs a Python with Django
//! 5.2 (`tests/django/.venv`, `bench/.venv` or `FILESESSION_DJANGO_PYTHON`); without one it
//! prints `SKIPPED` and passes, unless `FILESESSION_DJANGO_TEST=require`.

mod common;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use filesession::signing::{SESSION_SALT, Signer};
use filesession::{
    DjangoFileStore, Expiry, Record, Session, SessionConfig, SessionKey, SessionStore,
    format_rfc3339,
};
use serde_json::{Value, json};

const KEY: &str = "django-insecure-filesession-file-key";
/// Django's default `SESSION_COOKIE_AGE`.
const AGE: Duration = Duration::from_secs(1_209_600);

/// Django's file backend on the directory `argv[2]`, running the operations on stdin (one
/// JSON list) and printing what each gave (one JSON list).
const SCRIPT: &str = r#"
import datetime, json, os, sys
from django.conf import settings
settings.configure(
    SECRET_KEY=sys.argv[1],
    SESSION_ENGINE="django.contrib.sessions.backends.file",
    SESSION_FILE_PATH=sys.argv[2],
    INSTALLED_APPS=["django.contrib.sessions"],
    USE_TZ=True,
)
import django
django.setup()
from django.contrib.sessions.backends.file import SessionStore

out = []
for op in json.loads(sys.stdin.read()):
    if op["op"] == "create":
        s = SessionStore()
        s.update(op["data"])
        if op.get("expiry") is not None:
            s.set_expiry(datetime.datetime.fromisoformat(op["expiry"]))
        s.save()
        out.append(s.session_key)
    elif op["op"] == "load":
        s = SessionStore(op["key"])
        s.create = lambda: None  # as clear_expired: an ended session makes no new one
        data = s.load()
        s._session_cache = data
        out.append({
            "data": data,
            "file_left": os.path.exists(s._key_to_file(op["key"])),
            "expiry_date": s.get_expiry_date().isoformat() if data else None,
        })
    elif op["op"] == "clear_expired":
        SessionStore.clear_expired()
        out.append(None)
print(json.dumps(out))
"#;

/// Runs `ops` through Django's file backend on `dir`.
fn django(python: &Path, dir: &Path, ops: &Value) -> Vec<Value> {
    let args = [std::ffi::OsStr::new(KEY), dir.as_os_str()];
    match common::run_python_json(python, SCRIPT, &args, ops) {
        Value::Array(answers) => answers,
        other => panic!("not a list: {other}"),
    }
}

fn store(dir: &Path) -> Arc<DjangoFileStore> {
    Arc::new(
        DjangoFileStore::open(dir, Signer::new(KEY, &[], SESSION_SALT), "sessionid", AGE)
            .expect("open"),
    )
}

fn objects() -> Vec<Value> {
    vec![
        json!({"name": "Zoë 😀 日本", "ctrl": "\u{0}\u{7f}\n\t\"\\"}),
        serde_json::from_str(r#"{"big": 12345678901234567890, "neg": -98765432109876543210}"#)
            .expect("big integers"),
        json!({"a": {"b": [1, {"c": null, "d": true}], "e": 1.5}, "_auth_user_id": "1"}),
        json!({"text": "x".repeat(2000), "list": vec![7; 300]}),
    ]
}

/// The session `key` as this store loads it, or `None`.
fn ours(store: &Arc<DjangoFileStore>, key: &SessionKey) -> Option<Value> {
    store
        .load(key)
        .expect("load")
        .map(|loaded| Value::Object((*loaded.record.data).clone()))
}

fn key_of(answer: &Value) -> SessionKey {
    let text = answer.as_str().expect("a key");
    SessionKey::parse_django(text).expect("Django's key")
}

fn python_or_skip() -> Option<std::path::PathBuf> {
    match common::django_python() {
        Ok(python) => Some(python),
        Err(why) => {
            common::skip("Django file backend", &why, "FILESESSION_DJANGO_TEST");
            None
        }
    }
}

#[test]
fn django_and_filesession_read_each_others_session_files() {
    let Some(python) = python_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let store = store(dir);
    let objects = objects();

    // Ours, through a Session (created, then saved again with a change): Django loads them.
    let mut keys = Vec::new();
    for object in &objects {
        let mut session = Session::new(store.clone(), None, SessionConfig::default());
        for (k, v) in object.as_object().expect("an object") {
            session.insert(k.as_str(), v.clone());
        }
        session.insert("step", 1);
        session.save().expect("create");
        let key = *session.session_key().expect("a key");
        let mut again = Session::new(store.clone(), Some(key), SessionConfig::default());
        again.remove("step");
        again.save().expect("save");
        keys.push(key);
    }
    let ops: Vec<Value> = keys
        .iter()
        .map(|k| json!({"op": "load", "key": k.to_string()}))
        .collect();
    let loaded = django(&python, dir, &Value::Array(ops));
    for (object, answer) in objects.iter().zip(&loaded) {
        assert_eq!(&answer["data"], object, "Django read ours");
    }

    // Django's: this store loads them, a compressed payload among them.
    let ops: Vec<Value> = objects
        .iter()
        .map(|o| json!({"op": "create", "data": o}))
        .collect();
    let created = django(&python, dir, &Value::Array(ops));
    let mut compressed = 0;
    for (object, answer) in objects.iter().zip(&created) {
        let key = key_of(answer);
        let text = std::fs::read_to_string(dir.join(format!("sessionid{key}"))).expect("read");
        compressed += usize::from(text.starts_with('.'));
        assert_eq!(
            ours(&store, &key).as_ref(),
            Some(object),
            "we read Django's"
        );
    }
    assert!(compressed >= 1, "a compressed payload was tried");

    // A change of ours to Django's session, read back by Django with Django's data.
    let key = key_of(&created[2]);
    let mut session = Session::new(store.clone(), Some(key), SessionConfig::default());
    session.insert("ours", "é");
    session.save().expect("save into Django's");
    let loaded = django(
        &python,
        dir,
        &json!([{"op": "load", "key": key.to_string()}]),
    );
    let mut expected = objects[2].clone();
    expected["ours"] = json!("é");
    assert_eq!(loaded[0]["data"], expected);
}

#[test]
fn each_side_enforces_the_others_expiry() {
    let Some(python) = python_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let store = store(dir);
    let now = SystemTime::now();
    let in_an_hour = now + Duration::from_secs(3600);
    let iso = |t: SystemTime| format_rfc3339(t).replace('Z', "+00:00");

    // Django's set_expiry(datetime): an hour ahead, and a minute ago.
    let created = django(
        &python,
        dir,
        &json!([
            {"op": "create", "data": {"a": 1}, "expiry": iso(in_an_hour)},
            {"op": "create", "data": {"a": 2}, "expiry": iso(now - Duration::from_secs(60))},
            {"op": "create", "data": {"a": 3}},
        ]),
    );
    let (ahead, ended, default) = (
        key_of(&created[0]),
        key_of(&created[1]),
        key_of(&created[2]),
    );
    // Kept to the millisecond, as every expiry here (Django's text says as much).
    let at = Expiry::At(in_an_hour).date(now, AGE);
    let loaded = store.load(&ahead).expect("load").expect("live");
    assert_eq!(loaded.record.expiry, Expiry::At(at));
    assert_eq!(loaded.record.expires_at, at);
    assert_eq!(
        ours(&store, &ended),
        None,
        "Django's ended session is none here"
    );
    let loaded = store.load(&default).expect("load").expect("live");
    let mtime = std::fs::metadata(store.path_of(&default))
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(loaded.record.expires_at, Expiry::Default.date(mtime, AGE));

    // Ours: an hour ahead, ended a minute ago, and the default ended by its mtime.
    let record = |expiry| Record {
        data: json!({"b": 1})
            .as_object()
            .cloned()
            .unwrap_or_default()
            .into(),
        expiry,
        expires_at: now,
    };
    let ours_ahead = store
        .create(&record(Expiry::At(in_an_hour)))
        .expect("create");
    let ours_ended = store
        .create(&record(Expiry::At(now - Duration::from_secs(60))))
        .expect("create");
    let ours_aged = store.create(&record(Expiry::Default)).expect("create");
    File::options()
        .write(true)
        .open(store.path_of(&ours_aged))
        .and_then(|f| f.set_modified(now - AGE - Duration::from_secs(60)))
        .expect("age the file");
    let loaded = django(
        &python,
        dir,
        &json!([
            {"op": "load", "key": ours_ahead.to_string()},
            {"op": "load", "key": ours_ended.to_string()},
            {"op": "load", "key": ours_aged.to_string()},
        ]),
    );
    assert_eq!(loaded[0]["data"]["b"], json!(1));
    let django_end = loaded[0]["expiry_date"].as_str().expect("an expiry date");
    assert_eq!(
        filesession::parse_rfc3339(&django_end.replace("+00:00", "Z")),
        Some(at),
        "Django ends ours when we said: {django_end}"
    );
    for (answer, what) in [(&loaded[1], "ended"), (&loaded[2], "aged")] {
        assert_eq!(answer["data"], json!({}), "Django finds ours {what}: none");
        assert_eq!(
            answer["file_left"],
            json!(false),
            "and removes it, as it does"
        );
    }

    // Cleanup, each side: only the other's ended sessions go.
    let ours_ended = store
        .create(&record(Expiry::At(now - Duration::from_secs(60))))
        .expect("create");
    let answers = django(
        &python,
        dir,
        &json!([
            {"op": "clear_expired"},
            {"op": "create", "data": {"c": 1}, "expiry": iso(now - Duration::from_secs(60))},
        ]),
    );
    assert!(
        !store.exists(&ours_ended).expect("exists"),
        "Django removed ours"
    );
    let djangos_ended = key_of(&answers[1]);
    let report = filesession::ExpiredDeletion::clear_expired(&*store).expect("clear");
    assert_eq!(report.expired, 1, "{report:?}");
    assert!(
        !store.exists(&djangos_ended).expect("exists"),
        "we removed Django's"
    );
    for live in [ahead, default, ours_ahead] {
        assert!(store.exists(&live).expect("exists"), "{live:?} kept");
    }
}
