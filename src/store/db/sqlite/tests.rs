//! The SQLite store's own tests: its writer and readers.

use super::connections::READERS;
use super::*;
use std::sync::mpsc;
use std::time::Instant;

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

fn django_opened(dir: &tempfile::TempDir) -> Sqlite {
    let path = format!("/{}", dir.path().join("django.sqlite3").display());
    Sqlite::open(
        &path,
        "django_session",
        "SQLite (test)",
        true,
        crate::store::db::row_format::Layout::Django,
    )
    .unwrap()
}

fn counter_row(n: i64) -> Row {
    Row {
        document: n.to_string(),
        expires_at: SystemTime::now() + Duration::from_secs(60),
    }
}

#[test]
fn grouped_saves_of_one_counter_lose_nothing_and_readers_see_it_grow() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(django_opened(&dir));
    assert!(db.grouped);
    let key = SessionKey::generate();
    assert!(db.insert(&key, &counter_row(0)).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A reader: only committed values, so never a smaller one than before.
    let reader = {
        let (db, stop) = (Arc::clone(&db), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut last = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let row = db.read(&key, None).unwrap().unwrap();
                let n: i64 = row.document.parse().unwrap();
                assert!(n >= last, "read {n} after {last}");
                last = n;
            }
        })
    };
    const THREADS: i64 = 8;
    const EACH: i64 = 40;
    let writers: Vec<_> = (0..THREADS)
        .map(|_| {
            let db = Arc::clone(&db);
            std::thread::spawn(move || {
                for _ in 0..EACH {
                    let applied = db
                        .update(&key, None, &mut |row| {
                            let n: i64 = row.unwrap().document.parse().unwrap();
                            Ok(Change::Write(counter_row(n + 1)))
                        })
                        .unwrap();
                    assert!(applied);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    let n: i64 = db
        .read(&key, None)
        .unwrap()
        .unwrap()
        .document
        .parse()
        .unwrap();
    assert_eq!(n, THREADS * EACH);
}

#[test]
fn a_group_is_answered_after_its_commit_and_unseen_before() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(django_opened(&dir));
    let key = SessionKey::generate();
    assert!(db.insert(&key, &counter_row(0)).unwrap());
    let sql = "UPDATE django_session SET session_data = ?2 WHERE session_key = ?1";
    // A member that joined first and works last holds the group open.
    let late = db.inner.group.join();
    let (wrote, written) = mpsc::channel();
    let (answer, answered) = mpsc::channel();
    let first = {
        let db = Arc::clone(&db);
        std::thread::spawn(move || {
            let done = db.inner.group.save(&db.inner, "write", |c| {
                let n = c.execute(sql, params![key.to_string(), "1"])?;
                let _ = wrote.send(());
                Ok(n)
            });
            let _ = answer.send(done.is_ok());
        })
    };
    written.recv_timeout(Duration::from_secs(30)).unwrap();
    // Its work done, the writer let go inside the open transaction: a read goes to a
    // reader and sees the value committed before, and the member is not answered yet.
    let start = Instant::now();
    while db.inner.conn.try_lock().is_err() {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!crate::store::locked(&db.inner.conn).is_autocommit());
    assert_eq!(db.read(&key, None).unwrap().unwrap().document, "0");
    assert!(answered.recv_timeout(Duration::from_millis(50)).is_err());
    // A delete (another statement on the writer) waits for the group's COMMIT.
    let other = SessionKey::generate();
    let (deleting, deleted) = mpsc::channel();
    {
        let db = Arc::clone(&db);
        std::thread::spawn(move || {
            let _ = deleting.send(db.inner.run("delete", |c| {
                c.execute(
                    "DELETE FROM django_session WHERE session_key = ?1",
                    [other.to_string()],
                )
            }));
        });
    }
    assert!(deleted.recv_timeout(Duration::from_millis(50)).is_err());
    // The last member works: the group commits, every member is answered.
    let n = db
        .inner
        .group
        .member(late, &db.inner, "write", |c| {
            c.query_row(
                "SELECT session_data FROM django_session WHERE session_key = ?1",
                [key.to_string()],
                |r| r.get::<_, String>(0),
            )
        })
        .unwrap();
    assert_eq!(n, "1", "a member reads the earlier members' writes");
    assert!(answered.recv_timeout(Duration::from_secs(30)).unwrap());
    first.join().unwrap();
    assert!(
        deleted
            .recv_timeout(Duration::from_secs(30))
            .unwrap()
            .is_ok()
    );
    assert_eq!(db.read(&key, None).unwrap().unwrap().document, "1");
}

#[test]
fn a_member_that_fails_is_rolled_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(django_opened(&dir));
    let key = SessionKey::generate();
    assert!(db.insert(&key, &counter_row(0)).unwrap());
    let sql = "UPDATE django_session SET session_data = ?2 WHERE session_key = ?1";
    let late = db.inner.group.join();
    let first = {
        let db = Arc::clone(&db);
        std::thread::spawn(move || {
            db.inner.group.save(&db.inner, "write", |c| {
                c.execute(sql, params![key.to_string(), "1"])
            })
        })
    };
    // The late member writes, then fails: its write alone is undone.
    let start = Instant::now();
    while crate::store::locked(&db.inner.conn).is_autocommit() {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(1));
    }
    let failed = db.inner.group.member(late, &db.inner, "write", |c| {
        c.execute(sql, params![key.to_string(), "2"])?;
        c.execute("INSERT INTO no_such_table VALUES (1)", [])
    });
    assert!(failed.is_err());
    assert_eq!(first.join().unwrap().unwrap(), 1);
    assert_eq!(db.read(&key, None).unwrap().unwrap().document, "1");
}
