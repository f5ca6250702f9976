//! The SQLite store's own tests: its writer and readers.

use super::connections::READERS;
use super::*;
use std::sync::mpsc;

fn opened(dir: &tempfile::TempDir) -> Sqlite {
    let path = format!("/{}", dir.path().join("db.sqlite3").display());
    Sqlite::open(
        &path,
        "filesession_session",
        "SQLite (test)",
        true,
        crate::store::db::row_format::Layout::Filesession,
    )
    .unwrap()
}

#[test]
fn reads_go_on_while_the_writer_connection_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(opened(&dir));
    let key = SessionKey::generate();
    let row = Row {
        document: r#"{"a": 1}"#.into(),
        expires_at: SystemTime::now() + Duration::from_secs(60),
    };
    assert!(db.insert(&key, &row).unwrap());
    // The writer held, as by a write of this process waiting on the disk: a load and a
    // lookup are answered while it is still held.
    let writer = crate::store::locked(&db.inner.conn);
    let (tx, rx) = mpsc::channel();
    let reader = Arc::clone(&db);
    std::thread::spawn(move || {
        let read = reader.read(&key, None).map(|r| r.map(|r| r.document));
        let found = reader.exists(&key, None);
        let _ = tx.send((read, found));
    });
    // A guard against a hang, not a speed goal: before readers this never came.
    let (read, found) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("read while the writer is held");
    assert_eq!(read.unwrap().as_deref(), Some(r#"{"a": 1}"#));
    assert!(found.unwrap());
    drop(writer);
}

#[test]
fn readers_see_every_write_committed_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = opened(&dir);
    let key = SessionKey::generate();
    assert_eq!(db.inner.readers.len(), READERS);
    for n in 0..3 {
        let row = Row {
            document: format!(r#"{{"n": {n}}}"#),
            expires_at: SystemTime::now() + Duration::from_secs(60),
        };
        if n == 0 {
            assert!(db.insert(&key, &row).unwrap());
        } else {
            let write = Row {
                document: row.document.clone(),
                expires_at: row.expires_at,
            };
            let mut write = Some(write);
            db.update(&key, None, &mut |_| {
                Ok(write.take().map_or(Change::Keep, Change::Write))
            })
            .unwrap();
        }
        // Every reader sees the write just made on the writer.
        let sql = "SELECT session_data FROM filesession_session WHERE session_key = ?1";
        for (i, reader) in db.inner.readers.iter().enumerate() {
            let read: String = db
                .inner
                .run_on(
                    || crate::store::locked(reader),
                    "read",
                    |c| c.query_row(sql, [key.to_string()], |r| r.get(0)),
                )
                .unwrap();
            assert_eq!(read, row.document, "write {n}, reader {i}");
        }
    }
    db.delete(&key, None).unwrap();
    assert!(!db.exists(&key, None).unwrap());
    assert_eq!(db.read(&key, None).unwrap().map(|r| r.document), None);
}
