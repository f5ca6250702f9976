//! DbStore's own tests; the contract is `tests/conformance.rs`.

use super::*;

#[test]
fn only_plain_table_names_are_written_into_sql() {
    for good in ["filesession_session", "_t", "t1"] {
        assert!(check_table_name(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "1t",
        "a b",
        "t;drop table x",
        "t\"",
        "é",
        &"x".repeat(51),
    ] {
        assert!(check_table_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn an_unknown_scheme_is_refused_without_its_password() {
    let err = DbStore::open("mysql://u:secret@h/db", DEFAULT_DB_TABLE)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("sqlite://") && !err.contains("secret"),
        "{err}"
    );
}

#[cfg(feature = "sqlite")]
fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite:///{}", dir.path().join("db.sqlite3").display())
}

#[cfg(feature = "sqlite")]
#[test]
fn a_table_filesession_did_not_make_is_refused_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("db.sqlite3")).unwrap();
    conn.execute_batch(
        "CREATE TABLE django_session (session_key varchar(40) PRIMARY KEY,
         session_data text NOT NULL, expire_date datetime NOT NULL);
         INSERT INTO django_session VALUES ('k', 'signed:data', '2030-01-01');",
    )
    .unwrap();
    let err = DbStore::open(&sqlite_url(&dir), "django_session")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("was not made by filesession"), "{err}");
    let data: String = conn
        .query_row("SELECT session_data FROM django_session", [], |r| r.get(0))
        .unwrap();
    assert_eq!(data, "signed:data", "untouched");
    // Our own table opens again and again.
    for _ in 0..2 {
        DbStore::open(&sqlite_url(&dir), DEFAULT_DB_TABLE).unwrap();
    }
}

#[cfg(feature = "sqlite")]
#[test]
fn a_request_lock_taken_over_meanwhile_makes_the_save_write_nothing() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        DbStore::open(&sqlite_url(&dir), DEFAULT_DB_TABLE)
            .unwrap()
            .with_locking(Locking::Request),
    );
    let key = store
        .create(&ChangeSet::new(Duration::from_secs(60)).to_new_record(SystemTime::now()))
        .unwrap();
    let loaded = store.load(&key).unwrap().expect("live");
    // The lease ran out and another request took the lock: its token is another's.
    let conn = rusqlite::Connection::open(dir.path().join("db.sqlite3")).unwrap();
    let changed = conn
        .execute(
            "UPDATE filesession_session_lock SET token = 'someone else' WHERE session_key = ?1",
            [key.to_string()],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let mut changes = ChangeSet::new(Duration::from_secs(60));
    changes.set("n", 1.into());
    let err = store.save(&key, &changes, loaded.lock).unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");
    let data: String = conn
        .query_row(
            "SELECT session_data FROM filesession_session WHERE session_key = ?1",
            [key.to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!data.contains("\"n\""), "nothing written: {data}");
}

#[cfg(feature = "sqlite")]
#[test]
fn a_row_ending_within_a_second_is_kept_until_its_end_to_the_millisecond() {
    let dir = tempfile::tempdir().unwrap();
    let store = DbStore::open(&sqlite_url(&dir), DEFAULT_DB_TABLE).unwrap();
    // Ends 1.5 s from now: expire_date is rounded up, the document keeps the millisecond.
    let mut changes = ChangeSet::new(Duration::from_millis(1_500));
    changes.set("n", 1.into());
    let record = changes.to_new_record(SystemTime::now());
    let key = store.create(&record).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("db.sqlite3")).unwrap();
    let (data, column): (String, i64) = conn
        .query_row(
            "SELECT session_data, expire_date FROM filesession_session WHERE session_key = ?1",
            [key.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let end = record
        .expires_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    assert_eq!(
        column,
        i64::try_from(end.as_millis().div_ceil(1000)).unwrap()
    );
    let text = crate::expiry::format_rfc3339(record.expires_at);
    assert!(
        text.contains('.') && data.contains(&text),
        "{text} in {data}"
    );
    // Cleanup one second before the rounded column, and at the end's own second: kept.
    let second_of_end = SystemTime::UNIX_EPOCH + Duration::from_secs(end.as_secs());
    assert_eq!(store.db.delete_expired(second_of_end, 10).unwrap(), 0);
    assert!(store.load(&key).unwrap().is_some());
}
