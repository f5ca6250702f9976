//! FileStore's own tests: the directory, the protocol, hostile entries, cleanup.

use super::*;

mod in_place;
mod kept;
mod sweep;
use crate::config::DEFAULT_LOCK_TIMEOUT;
use crate::expiry::Expiry;
use crate::store::format;
use serde_json::json;
use std::fs;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

fn store() -> (tempfile::TempDir, FileStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("sessions")).unwrap();
    (dir, store)
}

fn changes(pairs: &[(&str, serde_json::Value)]) -> ChangeSet {
    let mut c = ChangeSet::new(Duration::from_secs(3600));
    for (k, v) in pairs {
        c.set(k, v.clone());
    }
    c
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn open_creates_a_private_directory() {
    let (_tmp, store) = store();
    let mode = fs::metadata(store.dir()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(
        files_in(store.dir()).is_empty(),
        "the write probe is removed"
    );
}

#[test]
fn open_tightens_an_existing_open_directory() {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let store = FileStore::open(tmp.path()).unwrap();
    let mode = fs::metadata(store.dir()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn open_refuses_a_path_that_is_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    fs::write(&file, "x").unwrap();
    let err = FileStore::open(&file).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[test]
fn create_writes_a_private_file_named_by_the_key() {
    let (_tmp, store) = store();
    let key = store
        .create(&changes(&[("sname", json!("abc"))]).to_new_record(SystemTime::now()))
        .unwrap();
    assert_eq!(files_in(store.dir()), vec![key.file_name()]);
    let path = store.path_of(&key);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"sname\": \"abc\""), "{text}");
    assert!(text.contains("\"format\": 1"), "{text}");
}

#[test]
fn save_merges_changes_into_the_newest_copy() {
    let (_tmp, store) = store();
    let key = store
        .create(&changes(&[("base", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    store
        .save(&key, &changes(&[("a", json!("A"))]), None)
        .unwrap();
    let record = store
        .save(&key, &changes(&[("b", json!("B"))]), None)
        .unwrap();
    assert_eq!(
        serde_json::Value::Object(std::sync::Arc::unwrap_or_clone(record.data)),
        json!({"base": 1, "a": "A", "b": "B"})
    );
    let loaded = store.load(&key).unwrap().unwrap().record;
    assert_eq!(loaded.data.len(), 3);
    assert_eq!(
        files_in(store.dir()),
        vec![key.file_name()],
        "no temp files left"
    );
}

#[test]
fn save_of_a_deleted_session_fails_and_does_not_resurrect_it() {
    let (_tmp, store) = store();
    let key = store
        .create(&changes(&[]).to_new_record(SystemTime::now()))
        .unwrap();
    store.delete(&key, None).unwrap();
    let err = store
        .save(&key, &changes(&[("a", json!(1))]), None)
        .unwrap_err();
    assert!(matches!(err, StoreError::Deleted(k) if k == key), "{err}");
    assert!(!store.exists(&key).unwrap());
    assert!(files_in(store.dir()).is_empty());
}

#[test]
fn open_refuses_a_directory_given_as_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    fs::create_dir(&real).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = FileStore::open(&link).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
}

#[test]
fn a_removed_directory_is_an_error_never_no_session_and_never_recreated() {
    let (_tmp, store) = store();
    let key = store
        .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    let path = store.dir().to_path_buf();
    fs::remove_dir_all(&path).unwrap();
    let gone = |e: &StoreError| matches!(e, StoreError::DirectoryGone(p) if *p == path);
    let err = store.load(&key).unwrap_err();
    assert!(gone(&err), "{err}");
    assert!(err.to_string().contains("restart"), "{err}");
    let err = store
        .save(&key, &changes(&[("b", json!(2))]), None)
        .unwrap_err();
    assert!(gone(&err), "{err}");
    let err = store
        .create(&changes(&[("c", json!(3))]).to_new_record(SystemTime::now()))
        .unwrap_err();
    assert!(gone(&err), "{err}");
    assert!(gone(&store.exists(&key).unwrap_err()));
    assert!(gone(&store.clear_expired().unwrap_err()));
    // A directory made again at the path is somebody else's: never adopted.
    fs::create_dir(&path).unwrap();
    let err = store
        .create(&changes(&[("c", json!(3))]).to_new_record(SystemTime::now()))
        .unwrap_err();
    assert!(gone(&err), "{err}");
    assert!(files_in(&path).is_empty());
}

#[test]
fn a_directory_swapped_for_a_symlink_is_never_followed() {
    let (tmp, store) = store();
    let key = store
        .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    let path = store.dir().to_path_buf();
    let moved = tmp.path().join("moved");
    fs::rename(&path, &moved).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    // The attacker's copy of the session, with other data, under the same name.
    let planted = changes(&[("a", json!("planted"))]).to_new_record(SystemTime::now());
    fs::write(elsewhere.join(key.file_name()), format::encode(&planted)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();

    let loaded = store.load(&key).unwrap().unwrap().record;
    assert_eq!(
        loaded.data.get("a"),
        Some(&json!(1)),
        "read from the directory opened"
    );
    store
        .save(&key, &changes(&[("b", json!(2))]), None)
        .unwrap();
    let new = store
        .create(&changes(&[("n", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    let mut expected = vec![key.file_name(), new.file_name()];
    expected.sort();
    assert_eq!(
        files_in(&moved),
        expected,
        "writes go where the store opened"
    );
    assert_eq!(files_in(&elsewhere), vec![key.file_name()]);
    assert_eq!(
        fs::read(elsewhere.join(key.file_name())).unwrap(),
        format::encode(&planted),
        "the symlink's target is never written"
    );
    store.delete(&key, None).unwrap();
    assert_eq!(files_in(&moved), vec![new.file_name()]);
    assert_eq!(files_in(&elsewhere), vec![key.file_name()]);
}

#[test]
fn a_merge_mode_load_sees_every_change_made_after_the_lock_preflight() {
    let (_tmp, store) = store();
    let key = store
        .create(&changes(&[("n", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    // Nothing changed between acquire and load: the candidate is used.
    let lock = store
        .acquire(&key, DEFAULT_LOCK_TIMEOUT)
        .unwrap()
        .expect("a candidate");
    let loaded = store.load_acquired(&key, lock).unwrap().unwrap().record;
    assert_eq!(loaded.data.get("n"), Some(&json!(1)));
    // A save in between: the load sees it.
    let lock = store
        .acquire(&key, DEFAULT_LOCK_TIMEOUT)
        .unwrap()
        .expect("a candidate");
    store
        .save(&key, &changes(&[("n", json!(2))]), None)
        .unwrap();
    let loaded = store.load_acquired(&key, lock).unwrap().unwrap().record;
    assert_eq!(loaded.data.get("n"), Some(&json!(2)));
    // A cycle in between: the old key is dead.
    let lock = store
        .acquire(&key, DEFAULT_LOCK_TIMEOUT)
        .unwrap()
        .expect("a candidate");
    let (new, _) = store.cycle(&key, &changes(&[]), None).unwrap();
    assert!(store.load_acquired(&key, lock).unwrap().is_none());
    // A delete (a logout) in between: nothing.
    let lock = store
        .acquire(&new, DEFAULT_LOCK_TIMEOUT)
        .unwrap()
        .expect("a candidate");
    store.delete(&new, None).unwrap();
    assert!(store.load_acquired(&new, lock).unwrap().is_none());
}

#[test]
fn load_never_creates_a_file() {
    let (_tmp, store) = store();
    let key = SessionKey::generate();
    assert!(store.load(&key).unwrap().is_none());
    assert!(files_in(store.dir()).is_empty());
}

#[test]
fn corrupt_and_hostile_entries_are_no_session() {
    let (_tmp, store) = store();
    let outside = store.dir().parent().unwrap().join("outside.json");
    let good = changes(&[("secret", json!(1))]).to_new_record(SystemTime::now());
    fs::write(&outside, format::encode(&good)).unwrap();
    type Make = Box<dyn Fn(&Path)>;
    let cases: Vec<(SessionKey, Make)> = vec![
        (
            SessionKey::generate(),
            Box::new(|p| fs::write(p, b"").unwrap()),
        ),
        (
            SessionKey::generate(),
            Box::new(|p| fs::write(p, b"{\"format\":1,").unwrap()),
        ),
        (
            SessionKey::generate(),
            Box::new(|p| fs::write(p, b"\xff\xfe\x00\x01").unwrap()),
        ),
        (
            SessionKey::generate(),
            Box::new(|p| fs::create_dir(p).unwrap()),
        ),
        (
            SessionKey::generate(),
            Box::new(move |p| std::os::unix::fs::symlink(&outside, p).unwrap()),
        ),
        (
            SessionKey::generate(),
            Box::new(|p| {
                let status = std::process::Command::new("mkfifo")
                    .arg(p)
                    .status()
                    .unwrap();
                assert!(status.success());
            }),
        ),
    ];
    for (key, make) in &cases {
        make(&store.path_of(key));
        assert!(store.load(key).unwrap().is_none(), "{key}");
    }
    let huge = SessionKey::generate();
    let store = store.with_max_file_size(64);
    let big = changes(&[("x", json!("y".repeat(100)))]).to_new_record(SystemTime::now());
    fs::write(store.path_of(&huge), format::encode(&big)).unwrap();
    assert!(store.load(&huge).unwrap().is_none());
    // The symlink's target is never written through either.
    let symlinked = &cases[4].0;
    let err = store
        .save(symlinked, &changes(&[("a", json!(1))]), None)
        .unwrap_err();
    assert!(matches!(err, StoreError::NotARegularFile(_)), "{err}");
    let outside = store.dir().parent().unwrap().join("outside.json");
    assert_eq!(fs::read(&outside).unwrap(), format::encode(&good));
}

#[test]
fn save_over_the_size_limit_is_refused_and_keeps_the_old_copy() {
    let (_tmp, store) = store();
    let store = store.with_max_file_size(200);
    let key = store
        .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    let before = fs::read(store.path_of(&key)).unwrap();
    let err = store
        .save(&key, &changes(&[("b", json!("z".repeat(500)))]), None)
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { limit: 200, .. }),
        "{err}"
    );
    assert_eq!(fs::read(store.path_of(&key)).unwrap(), before);
    assert_eq!(files_in(store.dir()), vec![key.file_name()]);
}

#[test]
fn cycle_moves_the_data_to_a_new_key_and_removes_the_old_file() {
    let (_tmp, store) = store();
    let old = store
        .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    let (new, record) = store
        .cycle(&old, &changes(&[("b", json!(2))]), None)
        .unwrap();
    assert_ne!(old, new);
    assert_eq!(
        serde_json::Value::Object(std::sync::Arc::unwrap_or_clone(record.data)),
        json!({"a": 1, "b": 2})
    );
    assert_eq!(files_in(store.dir()), vec![new.file_name()]);
}

#[test]
fn acquire_within_zero_tries_the_lock_once_in_both_modes() {
    let (_tmp, store) = store();
    let key = store
        .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    let holder = File::open(store.path_of(&key)).unwrap();
    fs2::FileExt::lock_exclusive(&holder).unwrap();
    let store = store.with_lock_timeout(Duration::from_secs(60));
    for locking in [Locking::Merge, Locking::Request] {
        let store = FileStore::open(store.dir())
            .unwrap()
            .with_locking(locking)
            .with_lock_timeout(Duration::from_secs(60));
        let err = store.acquire(&key, Duration::ZERO).unwrap_err();
        assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");
    }
    drop(holder);
    let request = FileStore::open(store.dir())
        .unwrap()
        .with_locking(Locking::Request);
    let lock = request.acquire(&key, Duration::ZERO).unwrap();
    assert!(lock.is_some(), "free: taken at once and handed on");
    drop(lock);
    assert!(store.acquire(&key, Duration::ZERO).unwrap().is_some());
}

#[test]
fn a_save_that_only_refreshes_the_expiry_is_skipped_but_a_change_is_written() {
    let (_tmp, store) = store();
    let key = store
        .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    // What is on disk: the bytes and the mtime (the expiry stamp); a write changes either.
    let disk = || {
        let path = store.path_of(&key);
        (
            fs::read(&path).unwrap(),
            fs::metadata(&path).unwrap().modified().unwrap(),
        )
    };
    let before = disk();
    store
        .save(&key, &changes(&[("a", json!(1))]), None)
        .unwrap();
    assert_eq!(
        disk(),
        before,
        "same data, expiry moved by less than a minute: no write"
    );
    store
        .save(&key, &changes(&[("a", json!(2))]), None)
        .unwrap();
    assert_ne!(disk().0, before.0, "a change is written");
    let mut longer = changes(&[]);
    longer.set_expiry(Expiry::Seconds(7200));
    let after_change = disk();
    store.save(&key, &longer, None).unwrap();
    assert_ne!(disk().0, after_change.0, "a new expiry rule is written");
}

#[test]
fn fsync_mode_writes_the_same_files() {
    let (_tmp, store) = store();
    let store = store.with_fsync(true);
    let key = store
        .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    store
        .save(&key, &changes(&[("b", json!(2))]), None)
        .unwrap();
    assert_eq!(store.load(&key).unwrap().unwrap().record.data.len(), 2);
}

#[test]
fn request_mode_holds_the_lock_until_the_session_is_saved() {
    let (_tmp, store) = store();
    let store = store
        .with_locking(Locking::Request)
        .with_lock_timeout(Duration::from_millis(100));
    let key = store
        .create(&changes(&[("n", json!(0))]).to_new_record(SystemTime::now()))
        .unwrap();
    let first = store.load(&key).unwrap().unwrap();
    let err = store.load(&key).unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");
    store
        .save(&key, &changes(&[("n", json!(1))]), first.lock)
        .unwrap();
    let second = store.load(&key).unwrap().unwrap();
    assert_eq!(second.record.data["n"], json!(1));
}

/// Whether reading a file updates its access time here (a `relatime` mount does when the
/// access time is not after the modification time; a `noatime` one never does). Set
/// `FILESESSION_ATIME_TEST=require` (CI does) to fail rather than skip where it does not.
fn reads_update_atime(dir: &Path) -> bool {
    let probe = dir.join("atime-probe");
    fs::write(&probe, b"x").unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let file = fs::File::options().write(true).open(&probe).unwrap();
    file.set_times(fs::FileTimes::new().set_accessed(old))
        .unwrap();
    drop(file);
    fs::read(&probe).unwrap();
    let updated = fs::metadata(&probe).unwrap().accessed().unwrap() != old;
    fs::remove_file(&probe).unwrap();
    if !updated && std::env::var("FILESESSION_ATIME_TEST").as_deref() == Ok("require") {
        panic!(
            "reads do not update access times on this file system (FILESESSION_ATIME_TEST=require)"
        );
    }
    updated
}

#[test]
fn loads_and_saves_leave_the_access_time_alone() {
    let (tmp, store) = store();
    if !reads_update_atime(tmp.path()) {
        // On the process's stderr: libtest captures eprintln! of a passing test.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: loads_and_saves_leave_the_access_time_alone: reads do not update access \
             times on this file system (noatime?) (FILESESSION_ATIME_TEST=require makes this \
             a failure)"
        );
        return;
    }
    let key = store
        .create(&changes(&[("n", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    let path = store.path_of(&key);
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let set_old_atime = || {
        let file = fs::File::options().write(true).open(&path).unwrap();
        file.set_times(fs::FileTimes::new().set_accessed(old))
            .unwrap();
    };
    let atime = || fs::metadata(&path).unwrap().accessed().unwrap();
    set_old_atime();
    let loaded = store.load(&key).unwrap().unwrap().record;
    assert_eq!(loaded.data.get("n"), Some(&json!(1)));
    assert_eq!(atime(), old, "a load updated the access time");
    store
        .save(&key, &changes(&[("n", json!(2))]), None)
        .unwrap();
    assert_eq!(atime(), old, "a save updated the access time");
}
