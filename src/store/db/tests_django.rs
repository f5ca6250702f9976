//! DbStore in Django's format on SQLite: Django's rows, keys and table; the contract is
//! `tests/conformance.rs`, Django itself `tests/django_db.rs`.

use rusqlite::OptionalExtension;
use serde_json::json;

use super::*;
use crate::expiry::Expiry;
use crate::signing::{SESSION_SALT, Signer};
use crate::store::django::{format_expire_date, parse_expire_date};

/// The key of Django's vectors (`../shared/reference/django-formats.md`).
const VECTOR_KEY: &str = "django-insecure-filesession-vector-key";
/// `{"_auth_user_id": "1", "cart": [1, 2, 3]}` signed by Django at 1700000000.
const VECTOR: &str = "eyJfYXV0aF91c2VyX2lkIjoiMSIsImNhcnQiOlsxLDIsM119:1r31eq:\
                      0RpGJPWrzlS_z6JhV9XsntzMZM9mSiKEIGe9QCselcw";
/// A Django key, as Django makes them.
const KEY: &str = "q2u7ep5ma0s2oa5tq1krtb3z86yg0h5n";

fn signer(key: &str, fallbacks: &[&str]) -> Signer {
    let fallbacks: Vec<String> = fallbacks.iter().map(|k| (*k).to_owned()).collect();
    Signer::new(key, &fallbacks, SESSION_SALT)
}

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite:///{}", dir.path().join("db.sqlite3").display())
}

fn connect(dir: &tempfile::TempDir) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.path().join("db.sqlite3")).expect("open")
}

/// Django's table as its migration makes it, in a database in Django's journal mode.
fn djangos_database(dir: &tempfile::TempDir) -> rusqlite::Connection {
    let conn = connect(dir);
    conn.execute_batch(
        "CREATE TABLE \"django_session\" (\"session_key\" varchar(40) NOT NULL PRIMARY KEY, \
         \"session_data\" text NOT NULL, \"expire_date\" datetime NOT NULL);
         CREATE INDEX \"django_session_expire_date_a5c62663\" ON \"django_session\" \
         (\"expire_date\");",
    )
    .expect("Django's table");
    conn
}

fn insert(conn: &rusqlite::Connection, key: &str, data: &str, expire_date: &str) {
    conn.execute(
        "INSERT INTO django_session VALUES (?1, ?2, ?3)",
        [key, data, expire_date],
    )
    .expect("insert");
}

fn key() -> SessionKey {
    SessionKey::parse_django(KEY).expect("a Django key")
}

fn data_of(conn: &rusqlite::Connection, key: &SessionKey) -> (String, String) {
    conn.query_row(
        "SELECT session_data, expire_date FROM django_session WHERE session_key = ?1",
        [key.to_string()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("the row")
}

fn sql_of(conn: &rusqlite::Connection, name: &str) -> Option<String> {
    conn.query_row(
        "SELECT sql FROM sqlite_master WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .optional()
    .expect("sqlite_master")
}

fn journal_mode(conn: &rusqlite::Connection) -> String {
    conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode")
}

#[test]
fn djangos_vector_round_trips_through_a_row() {
    let dir = tempfile::tempdir().expect("dir");
    let conn = djangos_database(&dir);
    insert(&conn, KEY, VECTOR, "2099-01-02 03:04:05.250000");
    let store =
        DbStore::open_django(&url(&dir), "django_session", signer(VECTOR_KEY, &[])).expect("open");
    let loaded = store.load(&key()).expect("load").expect("live");
    let record = loaded.record;
    assert_eq!(
        serde_json::to_value(&*record.data).expect("json"),
        json!({"_auth_user_id": "1", "cart": [1, 2, 3]})
    );
    assert_eq!(record.expiry, Expiry::Default);
    assert_eq!(
        Some(record.expires_at),
        parse_expire_date("2099-01-02 03:04:05.250000")
    );
    // Encoded again: Django's payload, the end as Django's text.
    let row = store.row(Some(&key()), &record).expect("encodes");
    assert_eq!(row.document.split(':').next(), VECTOR.split(':').next());
    assert_eq!(
        format_expire_date(row.expires_at),
        "2099-01-02 03:04:05.250000"
    );
    // A save writes the row Django reads: signed, `_session_expiry` in place, the end as text.
    let mut changes = ChangeSet::new(Duration::from_secs(60));
    changes.set_expiry(Expiry::Seconds(300));
    changes.set("n", 1.into());
    let saved = store.save(&key(), &changes, None).expect("save");
    let (data, expire_date) = data_of(&conn, &key());
    let object = signer(VECTOR_KEY, &[])
        .unsign_object(&data, None, SystemTime::now())
        .expect("signed with SECRET_KEY");
    assert_eq!(
        object,
        json!({"_auth_user_id": "1", "cart": [1, 2, 3], "_session_expiry": 300, "n": 1})
    );
    assert_eq!(expire_date, format_expire_date(saved.expires_at));
    let typeof_: String = conn
        .query_row(
            "SELECT typeof(expire_date) FROM django_session WHERE session_key = ?1",
            [KEY],
            |r| r.get(0),
        )
        .expect("typeof");
    assert_eq!(typeof_, "text");
    let again = store.load(&key()).expect("load").expect("live");
    assert_eq!(again.record.expiry, Expiry::Seconds(300));
    assert_eq!(again.record.expires_at, saved.expires_at);
}

#[test]
fn a_tampered_row_or_another_keys_row_is_no_session() {
    let dir = tempfile::tempdir().expect("dir");
    let conn = djangos_database(&dir);
    let tampered = VECTOR.replacen("eyJf", "eyJg", 1);
    insert(&conn, KEY, &tampered, "2099-01-01 00:00:00");
    let other = "abcdefgh12345678abcdefgh12345678";
    insert(&conn, other, VECTOR, "2099-01-01 00:00:00");
    let store = DbStore::open_django(&url(&dir), "django_session", signer("another key", &[]))
        .expect("open");
    for k in [key(), SessionKey::parse_django(other).expect("key")] {
        // No session, told apart from a missing one (the middleware keeps the cookie).
        assert!(matches!(store.load(&k), Err(StoreError::Unverified(u)) if u == k));
        assert!(store.exists(&k).expect("exists"), "the row is there");
        assert!(matches!(
            store.save(&k, &ChangeSet::new(Duration::from_secs(60)), None),
            Err(StoreError::Deleted(_))
        ));
    }
    // Verified with the right key, the untampered row is a session.
    let right =
        DbStore::open_django(&url(&dir), "django_session", signer(VECTOR_KEY, &[])).expect("open");
    assert!(
        matches!(right.load(&key()), Err(StoreError::Unverified(_))),
        "tampered"
    );
    let other = SessionKey::parse_django(other).expect("key");
    assert!(right.load(&other).expect("load").is_some());
}

#[test]
fn a_row_signed_with_a_fallback_key_verifies_and_is_signed_again_with_secret_key() {
    let dir = tempfile::tempdir().expect("dir");
    let conn = djangos_database(&dir);
    insert(&conn, KEY, VECTOR, "2099-01-01 00:00:00");
    let store = DbStore::open_django(
        &url(&dir),
        "django_session",
        signer("the new key", &["unrelated", VECTOR_KEY]),
    )
    .expect("open");
    let loaded = store.load(&key()).expect("load").expect("verified");
    assert_eq!(loaded.record.data.get("_auth_user_id"), Some(&json!("1")));
    let mut changes = ChangeSet::new(Duration::from_secs(60));
    changes.set("n", 2.into());
    store.save(&key(), &changes, None).expect("save");
    let (data, _) = data_of(&conn, &key());
    assert!(
        signer("the new key", &[])
            .unsign_object(&data, None, SystemTime::now())
            .is_ok()
    );
    assert!(
        signer(VECTOR_KEY, &[])
            .unsign_object(&data, None, SystemTime::now())
            .is_err()
    );
}

#[test]
fn a_key_not_djangos_is_no_session_and_runs_no_statement() {
    let dir = tempfile::tempdir().expect("dir");
    let conn = djangos_database(&dir);
    let uuid = SessionKey::generate();
    // Even a row under the UUID's text, signed well, is not found through a UUID key.
    insert(&conn, &uuid.to_string(), VECTOR, "2099-01-01 00:00:00");
    for locking in [Locking::Merge, Locking::Request] {
        let store = DbStore::open_django(&url(&dir), "django_session", signer(VECTOR_KEY, &[]))
            .expect("open")
            .with_locking(locking);
        assert!(store.load(&uuid).expect("load").is_none());
        assert!(!store.exists(&uuid).expect("exists"));
        let mut changes = ChangeSet::new(Duration::from_secs(60));
        changes.set("n", 1.into());
        assert!(matches!(
            store.save(&uuid, &changes, None),
            Err(StoreError::Deleted(k)) if k == uuid
        ));
        assert!(matches!(
            store.cycle(&uuid, &changes, None),
            Err(StoreError::Deleted(_))
        ));
        store.delete(&uuid, None).expect("delete: nothing");
        if let Some(preflight) = store.preflight() {
            assert!(
                preflight
                    .acquire(&uuid, Duration::ZERO)
                    .expect("acquire")
                    .is_none()
            );
        }
        assert_eq!(store.parse_key(&uuid.to_string()), None);
        assert_eq!(store.parse_key(KEY), Some(key()));
        let fresh = store
            .create(&changes.to_new_record(SystemTime::now()))
            .expect("create");
        assert!(fresh.is_django() && fresh.to_string().len() == 32);
    }
    let (data, _) = data_of(&conn, &uuid);
    assert_eq!(data, VECTOR, "untouched");
    // A filesession store takes no Django key either.
    let dir = tempfile::tempdir().expect("dir");
    let ours = DbStore::open(&url(&dir), DEFAULT_DB_TABLE).expect("open");
    assert!(ours.load(&key()).expect("load").is_none());
    assert_eq!(ours.parse_key(KEY), None);
}

#[test]
fn a_missing_table_is_made_as_djangos_migration_makes_it() {
    let dir = tempfile::tempdir().expect("dir");
    let err = DbStore::open_existing_django(&url(&dir), "django_session", signer("k", &[]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("No such file"), "nothing created: {err}");
    assert!(!dir.path().join("db.sqlite3").exists());
    let store = DbStore::open_django(&url(&dir), "django_session", signer("k", &[])).expect("open");
    let conn = connect(&dir);
    // `manage.py sqlmigrate sessions 0001` on Django 5.2, byte for byte.
    assert_eq!(
        sql_of(&conn, "django_session").as_deref(),
        Some(
            "CREATE TABLE \"django_session\" (\"session_key\" varchar(40) NOT NULL PRIMARY KEY, \
             \"session_data\" text NOT NULL, \"expire_date\" datetime NOT NULL)"
        )
    );
    assert_eq!(
        sql_of(&conn, "django_session_expire_date_a5c62663").as_deref(),
        Some(
            "CREATE INDEX \"django_session_expire_date_a5c62663\" ON \"django_session\" \
             (\"expire_date\")"
        )
    );
    let indexes: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE tbl_name = 'django_session' \
             AND type = 'index' AND sql IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(indexes, 1);
    assert_eq!(sql_of(&conn, "filesession_schema"), None, "no schema row");
    assert!(sql_of(&conn, "django_session_lock").is_some());
    assert_eq!(journal_mode(&conn), "delete", "never WAL");
    drop(store);
    // A table of another name: Django's index name for it.
    DbStore::open_django(&url(&dir), "my_sessions", signer("k", &[])).expect("open");
    assert!(sql_of(&conn, "my_sessions_expire_date_8a6b8a8d").is_some());
    // Then clearsessions opens both.
    DbStore::open_existing_django(&url(&dir), "django_session", signer("k", &[]))
        .expect("open existing");
}

#[test]
fn djangos_table_in_place_is_left_as_it_is() {
    let dir = tempfile::tempdir().expect("dir");
    let conn = djangos_database(&dir);
    insert(&conn, KEY, VECTOR, "2099-01-01 00:00:00");
    let before = sql_of(&conn, "django_session");
    assert_eq!(journal_mode(&conn), "delete");
    // clearsessions first: nothing is created, not even the lock table.
    let existing =
        DbStore::open_existing_django(&url(&dir), "django_session", signer(VECTOR_KEY, &[]))
            .expect("open existing");
    assert_eq!(sql_of(&conn, "django_session_lock"), None);
    let deletion = existing.expired_deletion().expect("deletion");
    assert_eq!(deletion.clear_expired().expect("clear").kept, 1);
    let store = DbStore::open_django(&url(&dir), "django_session", signer(VECTOR_KEY, &[]))
        .expect("open")
        .with_locking(Locking::Request);
    let loaded = store.load(&key()).expect("load").expect("live");
    let mut changes = ChangeSet::new(Duration::from_secs(60));
    changes.set("n", 1.into());
    store.save(&key(), &changes, loaded.lock).expect("save");
    let (data, _) = data_of(&conn, &key());
    assert_ne!(data, VECTOR, "saved");
    assert_eq!(sql_of(&conn, "django_session"), before, "not altered");
    assert_eq!(sql_of(&conn, "filesession_schema"), None, "no schema row");
    assert_eq!(journal_mode(&conn), "delete", "not switched to WAL");
    assert!(!dir.path().join("db.sqlite3-wal").exists());
}

#[test]
fn a_table_not_djangos_is_refused_and_named() {
    let dir = tempfile::tempdir().expect("dir");
    let conn = connect(&dir);
    conn.execute_batch("CREATE TABLE other (session_key text PRIMARY KEY, data text)")
        .expect("create");
    let err = DbStore::open_django(&url(&dir), "other", signer("k", &[]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("table other is not Django's session table")
            && err.contains("session_data, expire_date"),
        "{err}"
    );
    assert_eq!(sql_of(&conn, "other_lock"), None, "nothing made beside it");
    // filesession's own table is not Django's, nor Django's ours.
    DbStore::open(&url(&dir), DEFAULT_DB_TABLE).expect("ours");
    let err = DbStore::open_django(&url(&dir), DEFAULT_DB_TABLE, signer("k", &[]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("holds filesession's own format"), "{err}");
    let err = DbStore::open_existing_django(&url(&dir), "absent", signer("k", &[]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("no session table absent"), "{err}");
    assert_eq!(sql_of(&conn, "absent"), None);
}

#[test]
fn clear_expired_deletes_what_djangos_clear_expired_deletes() {
    let dir = tempfile::tempdir().expect("dir");
    let conn = djangos_database(&dir);
    let now = SystemTime::now();
    insert(&conn, "expiredkey000001", VECTOR, "2001-01-01 00:00:00");
    insert(
        &conn,
        "expiredkey000002",
        VECTOR,
        &format_expire_date(now - Duration::from_millis(1500)),
    );
    insert(
        &conn,
        KEY,
        VECTOR,
        &format_expire_date(now + Duration::from_secs(60)),
    );
    let store =
        DbStore::open_django(&url(&dir), "django_session", signer(VECTOR_KEY, &[])).expect("open");
    let report = store
        .expired_deletion()
        .expect("deletion")
        .clear_expired()
        .expect("clear");
    assert_eq!((report.expired, report.kept), (2, 1));
    let left: Vec<String> = conn
        .prepare("SELECT session_key FROM django_session")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    assert_eq!(left, [KEY]);
    // A row whose end has passed is no session before any cleanup.
    insert(
        &conn,
        "expiredkey000003",
        VECTOR,
        &format_expire_date(now - Duration::from_secs(1)),
    );
    let gone = SessionKey::parse_django("expiredkey000003").expect("key");
    assert!(store.load(&gone).expect("load").is_none());
}
