//! DjangoFileStore's own tests: Django's bytes, Django's expiry rules, refused files and
//! keys, the directory's mode, cleanup among foreign files, and Django renames during a save.

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::UNIX_EPOCH;

use serde_json::{Value, json};

use super::*;
use crate::expiry::Expiry;

mod races;
use crate::signing::SESSION_SALT;

const SECRET: &str = "django-insecure-filesession-vector-key";
const AGE: Duration = Duration::from_secs(1_209_600);
/// Django 5.2's `session_data` of `{"_auth_user_id": "1", "cart": [1, 2, 3]}` at 1700000000.
const VECTOR: &str = "eyJfYXV0aF91c2VyX2lkIjoiMSIsImNhcnQiOlsxLDIsM119:1r31eq:\
                      0RpGJPWrzlS_z6JhV9XsntzMZM9mSiKEIGe9QCselcw";
/// Django 5.2's `session_data` of `{"name": "Zoë 😀"}` at 1700000000.
const VECTOR_UNICODE: &str = "eyJuYW1lIjoiWm9cdTAwZWIgXHVkODNkXHVkZTAwIn0:1r31eq:\
                              HhPHUxZIahHMgavFS4JtRzfELqoeq0g6pprWugRV_o8";

fn signer() -> Signer {
    Signer::new(SECRET, &[], SESSION_SALT)
}

fn store_in(dir: &Path) -> DjangoFileStore {
    DjangoFileStore::open(dir, signer(), "sessionid", AGE).expect("open")
}

fn vector_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn record(value: Value, expiry: Expiry) -> Record {
    Record {
        data: value.as_object().cloned().unwrap_or_default().into(),
        expiry,
        expires_at: SystemTime::now() + AGE,
    }
}

fn changes(pairs: &[(&str, Value)]) -> ChangeSet {
    let mut c = ChangeSet::new(AGE);
    for (k, v) in pairs {
        c.set(k, v.clone());
    }
    c
}

fn set_mtime(path: &Path, t: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .expect("open to stamp")
        .set_modified(t)
        .expect("set mtime");
}

/// A session file written as Django writes it (its own temp file renamed over the name).
fn django_writes(dir: &Path, key: &SessionKey, text: &str) {
    let path = dir.join(key.django_file_name("sessionid"));
    let temp = dir.join(format!(
        "{}_out_x1y2z3w4",
        key.django_file_name("sessionid")
    ));
    fs::write(&temp, text).expect("write Django's temp file");
    fs::rename(&temp, &path).expect("rename");
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn data_of(loaded: &Loaded) -> Value {
    Value::Object((*loaded.record.data).clone())
}

#[test]
fn djangos_vectors_are_written_byte_for_byte() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut store = store_in(tmp.path());
    store.clock = vector_time;
    for (value, vector) in [
        (json!({"_auth_user_id": "1", "cart": [1, 2, 3]}), VECTOR),
        (json!({"name": "Zoë 😀"}), VECTOR_UNICODE),
    ] {
        let key = store
            .create(&record(value.clone(), Expiry::Default))
            .expect("create");
        assert!(key.is_django(), "{key:?}");
        let path = store.path_of(&key);
        assert_eq!(
            path.file_name().and_then(|n| n.to_str()),
            Some(format!("sessionid{key}").as_str())
        );
        assert_eq!(fs::read(&path).expect("read"), vector.as_bytes());
        let meta = fs::metadata(&path).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o600);
        // The mtime is the time of the save (Django's rule), not the session's end.
        let mtime = meta.modified().expect("mtime");
        assert!(mtime <= SystemTime::now() && mtime + Duration::from_secs(60) > SystemTime::now());
        let loaded = store.load(&key).expect("load").expect("live");
        assert_eq!(data_of(&loaded), value);
        assert_eq!(loaded.record.expires_at, Expiry::Default.date(mtime, AGE));
    }
    // A save writes Django's bytes too: the same dictionary, signed at the same time.
    let key = store
        .create(&record(json!({"_auth_user_id": "1"}), Expiry::Default))
        .expect("create");
    store
        .save(&key, &changes(&[("cart", json!([1, 2, 3]))]), None)
        .expect("save");
    assert_eq!(
        fs::read(store.path_of(&key)).expect("read"),
        VECTOR.as_bytes()
    );
}

#[test]
fn a_file_django_wrote_is_read_and_its_placeholder_is_an_empty_session() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = store_in(tmp.path());
    let key = SessionKey::generate_django();
    django_writes(tmp.path(), &key, VECTOR_UNICODE);
    let loaded = store.load(&key).expect("load").expect("live");
    assert_eq!(data_of(&loaded), json!({"name": "Zoë 😀"}));
    assert_eq!(loaded.record.expiry, Expiry::Default);
    // Ours, written over Django's: Django's data kept, ours added.
    store
        .save(&key, &changes(&[("n", json!(1))]), None)
        .expect("save");
    let loaded = store.load(&key).expect("load").expect("live");
    assert_eq!(data_of(&loaded), json!({"name": "Zoë 😀", "n": 1}));
    // An empty file: Django's placeholder, read by Django as `{}`.
    let empty = SessionKey::generate_django();
    fs::write(store.path_of(&empty), "").expect("placeholder");
    let loaded = store.load(&empty).expect("load").expect("an empty session");
    assert_eq!(data_of(&loaded), json!({}));
}

#[test]
fn a_tampered_or_foreign_file_is_no_session_and_never_written_into() {
    let tmp = tempfile::tempdir().expect("temp dir");
    for locking in [Locking::Merge, Locking::Request] {
        let store = store_in(tmp.path()).with_locking(locking);
        let foreign = DjangoCodec::new(Signer::new("another site", &[], SESSION_SALT))
            .encode(
                None,
                &record(json!({"a": 1}), Expiry::Default),
                vector_time(),
                1 << 20,
            )
            .expect("encode");
        let tampered = VECTOR.replacen("eyJf", "eyJg", 1);
        for text in [
            foreign.as_str(),
            tampered.as_str(),
            "not signed at all",
            "\u{e9}",
            &format!("{VECTOR}\n"),
        ] {
            let key = SessionKey::generate_django();
            django_writes(tmp.path(), &key, text);
            // No session, told apart from a missing one (the middleware keeps the cookie).
            assert!(
                matches!(store.load(&key), Err(StoreError::Unverified(k)) if k == key),
                "{text:?}"
            );
            assert!(store.exists(&key).expect("exists"), "the file is there");
            let save = store.save(&key, &changes(&[("user", json!(1))]), None);
            assert!(
                matches!(save, Err(StoreError::Deleted(k)) if k == key),
                "{save:?}"
            );
            let cycle = store.cycle(&key, &changes(&[]), None);
            assert!(matches!(cycle, Err(StoreError::Deleted(_))), "{cycle:?}");
            assert_eq!(
                fs::read(store.path_of(&key)).expect("read"),
                text.as_bytes(),
                "left as it was"
            );
        }
    }
    // A session key's entry that is not a regular file: no session, not an error.
    let store = store_in(tmp.path()).with_locking(Locking::Request);
    let key = SessionKey::generate_django();
    fs::create_dir(store.path_of(&key)).expect("mkdir");
    assert!(store.load(&key).expect("load").is_none());
    assert!(matches!(
        store.save(&key, &changes(&[]), None),
        Err(StoreError::Deleted(_))
    ));
}

#[test]
fn a_session_ends_by_its_files_mtime_as_django_reads_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = store_in(tmp.path());
    let codec = DjangoCodec::new(signer());
    let now = SystemTime::now();
    let written = |expiry: Expiry, mtime: SystemTime| {
        let key = SessionKey::generate_django();
        let text = codec
            .encode(None, &record(json!({"a": 1}), expiry), now, 1 << 20)
            .expect("encode");
        django_writes(tmp.path(), &key, &text);
        set_mtime(&store.path_of(&key), mtime);
        key
    };
    let expires_at = |key: &SessionKey| {
        store
            .load(key)
            .expect("load")
            .map(|loaded| loaded.record.expires_at)
    };
    let minute = Duration::from_secs(60);
    // Default and browser close: mtime + SESSION_COOKIE_AGE.
    for expiry in [Expiry::Default, Expiry::BrowserClose] {
        let mtime = now - AGE + minute;
        assert_eq!(
            expires_at(&written(expiry, mtime)),
            Some(Expiry::Default.date(mtime, AGE))
        );
        assert_eq!(expires_at(&written(expiry, now - AGE - minute)), None);
    }
    // An int: mtime + n, enforced here (Django's file backend never ends it).
    let mtime = now - Duration::from_secs(100);
    let key = written(Expiry::Seconds(300), mtime);
    assert_eq!(
        expires_at(&key),
        Some(Expiry::Seconds(300).date(mtime, AGE))
    );
    assert_eq!(
        store.load(&key).expect("load").map(|l| l.record.expiry),
        Some(Expiry::Seconds(300))
    );
    assert_eq!(
        expires_at(&written(
            Expiry::Seconds(300),
            now - Duration::from_secs(301)
        )),
        None
    );
    // A time: that time, whatever the mtime.
    let at = now + Duration::from_secs(3600);
    assert_eq!(
        expires_at(&written(Expiry::At(at), now - AGE - minute)),
        Some(Expiry::At(at).date(now, AGE))
    );
    assert_eq!(
        expires_at(&written(Expiry::At(now - Duration::from_secs(1)), now)),
        None
    );
    // An ended session is no session, and a save of it is not lost: the request loaded it.
    let key = written(Expiry::Default, now - AGE - minute);
    assert!(store.load(&key).expect("load").is_none());
    assert!(store.path_of(&key).exists(), "left for cleanup");
}

#[test]
fn keys_other_than_djangos_name_no_session() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = store_in(tmp.path());
    let uuid = SessionKey::generate();
    assert_eq!(store.parse_key(&uuid.to_string()), None);
    assert_eq!(store.parse_key("sessionid/../x1234567"), None);
    assert_eq!(store.parse_key("ABCDEFGH"), None);
    let django = SessionKey::generate_django();
    assert_eq!(store.parse_key(&django.to_string()), Some(django));
    assert!(store.load(&uuid).expect("load").is_none());
    assert!(!store.exists(&uuid).expect("exists"));
    assert!(matches!(
        store.save(&uuid, &changes(&[("a", json!(1))]), None),
        Err(StoreError::Deleted(k)) if k == uuid
    ));
    assert!(matches!(
        store.cycle(&uuid, &changes(&[]), None),
        Err(StoreError::Deleted(_))
    ));
    store.delete(&uuid, None).expect("deleting nothing");
    let acquired = store
        .with_locking(Locking::Request)
        .acquire(&uuid, Duration::ZERO)
        .expect("acquire");
    assert!(acquired.is_none());
    assert!(names_in(tmp.path()).is_empty(), "nothing written");
}

#[test]
fn an_existing_directory_keeps_its_mode_and_a_missing_one_is_made_private() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let shared = tmp.path().join("shared");
    fs::create_dir(&shared).expect("mkdir");
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).expect("chmod");
    let store = store_in(&shared);
    let key = store
        .create(&record(json!({"a": 1}), Expiry::Default))
        .expect("create");
    store
        .save(&key, &changes(&[("b", json!(2))]), None)
        .expect("save");
    let mode = |p: &Path| fs::metadata(p).expect("stat").mode() & 0o7777;
    assert_eq!(mode(&shared), 0o755, "Django's directory is left as it is");
    assert_eq!(mode(&store.path_of(&key)), 0o600);
    drop(store);
    assert!(DjangoFileStore::open_existing(&shared, signer(), "sessionid", AGE).is_ok());
    assert_eq!(mode(&shared), 0o755);

    let missing = tmp.path().join("made");
    assert!(matches!(
        DjangoFileStore::open_existing(&missing, signer(), "sessionid", AGE),
        Err(StoreError::Unavailable(_))
    ));
    assert!(!missing.exists(), "open_existing creates nothing");
    store_in(&missing);
    assert_eq!(mode(&missing), 0o700);
    for bad in ["", "a/b", "x\0"] {
        assert!(matches!(
            DjangoFileStore::open(&missing, signer(), bad, AGE),
            Err(StoreError::Unavailable(_))
        ));
    }
}

#[test]
fn cleanup_removes_ended_sessions_and_our_leftovers_and_nothing_else() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let store = store_in(dir).with_leftover_age(Duration::from_secs(60));
    let long_ago = SystemTime::now() - AGE - Duration::from_secs(3600);
    let live = store
        .create(&record(json!({"live": 1}), Expiry::Default))
        .expect("create");
    let ended = store
        .create(&record(json!({"ended": 1}), Expiry::Default))
        .expect("create");
    set_mtime(&store.path_of(&ended), long_ago);
    let (young_garbage, old_garbage) =
        (SessionKey::generate_django(), SessionKey::generate_django());
    django_writes(dir, &young_garbage, "tampered");
    django_writes(dir, &old_garbage, "tampered");
    set_mtime(&store.path_of(&old_garbage), long_ago);
    let our_leftover = format!(".{}.tmp", SessionKey::generate());
    let our_young_temp = format!(".{}.tmp", SessionKey::generate());
    let other_key = SessionKey::generate_django();
    // Entries that are not ours to remove, all old: only their names protect them.
    let foreign = [
        "passwd".to_owned(),
        "sessionid".to_owned(),
        "sessionidABCDEFGH".to_owned(),
        "sessionidshort".to_owned(),
        format!("sessionid{other_key}_out_abcd1234"),
        format!("csrftoken{other_key}"),
        format!("{other_key}"),
        format!(".{}.tmpx", SessionKey::generate()),
        ".tmp-abc".to_owned(),
    ];
    for name in foreign.iter().chain([&our_leftover, &our_young_temp]) {
        fs::write(dir.join(name), "x").expect("write");
        set_mtime(&dir.join(name), long_ago);
    }
    set_mtime(&dir.join(&our_young_temp), SystemTime::now());
    let subdir = format!("sessionid{}", SessionKey::generate_django());
    fs::create_dir(dir.join(&subdir)).expect("mkdir");
    let link = format!("sessionid{}", SessionKey::generate_django());
    std::os::unix::fs::symlink(store.path_of(&ended), dir.join(&link)).expect("symlink");

    let report = store.clear_expired().expect("clear");
    assert_eq!(
        (
            report.expired,
            report.corrupt,
            report.leftovers,
            report.kept
        ),
        (1, 0, 1, 1),
        "{report:?}"
    );
    let mut left = names_in(dir);
    let mut expected: Vec<String> = foreign.to_vec();
    expected.extend([
        our_young_temp,
        subdir,
        link,
        live.django_file_name("sessionid"),
        // Unreadable: perhaps a live session of Django's under a key we were not given.
        young_garbage.django_file_name("sessionid"),
        old_garbage.django_file_name("sessionid"),
    ]);
    expected.sort();
    left.sort();
    assert_eq!(left, expected);
    for name in &foreign {
        assert_eq!(fs::read(dir.join(name)).expect("read"), b"x", "{name}");
    }
}

#[test]
fn cycle_moves_the_session_to_a_new_django_key() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = store_in(tmp.path());
    let key = store
        .create(&record(json!({"a": 1}), Expiry::Default))
        .expect("create");
    let (new_key, record) = store
        .cycle(&key, &changes(&[("b", json!(2))]), None)
        .expect("cycle");
    assert!(new_key.is_django() && new_key != key);
    assert!(!store.exists(&key).expect("exists"));
    assert_eq!(
        Value::Object((*record.data).clone()),
        json!({"a": 1, "b": 2})
    );
    let loaded = store.load(&new_key).expect("load").expect("live");
    assert_eq!(data_of(&loaded), json!({"a": 1, "b": 2}));
    // What a lock shows names no whole key.
    let locked = store_in(tmp.path()).with_locking(Locking::Request);
    let loaded = locked.load(&new_key).expect("load").expect("live");
    let shown = format!("{:?}", loaded.lock);
    assert!(!shown.contains(&new_key.to_string()), "{shown}");
}

/// `store::open` with `SESSION_FORMAT=django` and `SESSION_ENGINE=file`: this store on
/// `SESSION_FILE_PATH`, prefixed with `SESSION_COOKIE_NAME`; without a `SECRET_KEY`, refused
/// (never a panic).
#[test]
fn the_settings_open_djangos_layout_and_refuse_it_without_a_secret_key() {
    use crate::config::{Engine, SessionFormat, Settings};
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        engine: Engine::File,
        format: SessionFormat::Django,
        file_path: tmp.path().join("sessions"),
        cookie_name: "mysite_session".into(),
        secret_key: None,
        ..Settings::default()
    };
    let refused = crate::store::open(&settings).err();
    assert!(
        matches!(&refused, Some(StoreError::Unavailable(why)) if why.contains("SECRET_KEY")),
        "{refused:?}"
    );
    settings.secret_key = Some(crate::signing::SecretKey::new(SECRET));
    let store = crate::store::open(&settings).expect("open");
    let key = store
        .create(&record(json!({"a": 1}), Expiry::Default))
        .expect("create");
    assert_eq!(store.parse_key(&key.to_string()), Some(key));
    assert_eq!(
        names_in(&settings.file_path),
        [format!("mysite_session{key}")]
    );
    let again = crate::store::open_existing(&settings).expect("open existing");
    assert!(again.load(&key).expect("load").is_some());
}
