//! What the store remembers between calls: the file kept open for a session's next request
//! and the last document decoded, each used only while it still holds, and let go of when
//! the session ends.

use super::in_place::{created, ino};
use super::*;

#[test]
fn a_deleted_session_is_not_kept_in_memory_nor_open() {
    let (_tmp, store) = store();
    let key = created(&store, &[("secret", json!("s3cr3t"))]);
    store.load(&key).unwrap().unwrap();
    store.delete(&key, None).unwrap();
    assert!(
        store.recent.0.lock().unwrap().is_none(),
        "the file is not kept open"
    );
    assert!(
        store.last_decoded.0.lock().unwrap().is_none(),
        "its data is not kept"
    );
}

/// The next request of a session: preflight, load, save, as the server runs them.
fn next_request(store: &FileStore, key: &SessionKey, n: i64) -> Option<Record> {
    let acquired = store.acquire(key, Duration::from_millis(200)).unwrap()?;
    let loaded = store.load_acquired(key, acquired).unwrap()?;
    let record = loaded.record.clone();
    store
        .save(key, &changes(&[("n", json!(n))]), loaded.lock)
        .unwrap();
    Some(record)
}

#[test]
fn the_file_a_save_kept_open_is_unlocked_and_read_only_while_it_is_the_file_at_the_name() {
    let (_tmp, store) = store();
    // Another process on the same directory (its own open files and locks).
    let other = FileStore::open(store.dir()).unwrap();
    let key = created(&store, &[("n", json!(0))]);
    let path = store.path_of(&key);
    assert_eq!(next_request(&store, &key, 1).unwrap().data["n"], json!(0));
    assert!(
        store.recent.0.lock().unwrap().is_some(),
        "kept open after the save"
    );

    // Unlocked: the other process locks the session at once.
    let held = other
        .lock_current(&key, &key.file_name(), Duration::ZERO, None)
        .unwrap()
        .expect("the session is there");
    drop(held);

    // The other process replaces the file (a save too large to write in place): the next
    // request reads the new file, not the one kept open.
    let large = "x".repeat(IN_PLACE_MAX);
    other
        .save(&key, &changes(&[("big", json!(large))]), None)
        .unwrap();
    let seen = next_request(&store, &key, 2).expect("the session is there");
    assert_eq!(seen.data["big"], json!(large), "the replaced file was read");
    assert_eq!(seen.data["n"], json!(1));

    // Written in place by the other process: the same inode, new bytes, read.
    let small = FileStore::open(store.dir()).unwrap();
    small
        .save(&key, &changes(&[("big", json!("small"))]), None)
        .unwrap();
    let before = ino(&path);
    small
        .save(&key, &changes(&[("w", json!(true))]), None)
        .unwrap();
    assert_eq!(ino(&path), before, "written in place");
    let seen = next_request(&store, &key, 3).unwrap();
    assert_eq!(seen.data["w"], json!(true));

    // Deleted by the other process (a logout, clearsessions): no session, not the old
    // file kept open.
    other.delete(&key, None).unwrap();
    assert!(next_request(&store, &key, 4).is_none());
    assert!(store.load(&key).unwrap().is_none());
    assert!(!path.exists(), "not brought back");
}

#[test]
fn a_session_cleanup_removes_keeps_neither_its_file_open_nor_its_document() {
    let (_tmp, store) = store();
    let key = created(&store, &[("secret", json!("s3cr3t"))]);
    let loaded = store.load(&key).unwrap().unwrap();
    let mut ended = changes(&[("secret", json!("s3cr3t2"))]);
    ended.set_expiry(Expiry::Seconds(0)); // ends as it is saved
    store.save(&key, &ended, loaded.lock).unwrap();
    assert!(
        store.recent.0.lock().unwrap().is_some(),
        "kept open after the save"
    );
    let report = store.clear_expired().unwrap();
    assert_eq!(report.expired, 1, "{report:?}");
    assert!(!store.path_of(&key).exists());
    assert!(
        store.recent.0.lock().unwrap().is_none(),
        "the removed session's file is still open"
    );
    assert!(
        store.last_decoded.0.lock().unwrap().is_none(),
        "the removed session's data is still remembered"
    );
}

/// The mode (type and permissions) of the file kept open for `key`'s next request.
fn kept_mode(store: &FileStore) -> Option<u32> {
    store
        .recent
        .0
        .lock()
        .unwrap()
        .as_ref()
        .map(|(_, entry)| entry.mode & 0o7777)
}

#[test]
fn a_kept_file_whose_mode_or_owner_changed_is_opened_afresh_and_closed_when_idle() {
    let (_tmp, store) = store();
    let key = created(&store, &[("n", json!(0))]);
    let path = store.path_of(&key);
    next_request(&store, &key, 1).unwrap();
    assert_eq!(kept_mode(&store), Some(0o600), "kept open after the save");

    // An operator's chmod: the next request does not use the descriptor it kept (which
    // still grants what the file had when opened) but opens the name again, as it would
    // without one: under a mode that refused it, the open would fail (EACCES, as root
    // cannot show here).
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let acquired = store.acquire(&key, Duration::from_millis(200)).unwrap();
    let loaded = store
        .load_acquired(&key, acquired.unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(loaded.record.data["n"], json!(1));
    assert_eq!(kept_mode(&store), Some(0o640), "the name was opened afresh");

    // An owner changed likewise (root can chown: only then).
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let seen = store.load(&key).unwrap().unwrap();
        assert_eq!(seen.record.data["n"], json!(1));
        let uid = store.recent.0.lock().unwrap().as_ref().map(|(_, e)| e.uid);
        assert_eq!(uid, Some(65534), "the name was opened afresh");
    }

    // Idle: nothing is kept open (a file open for writing makes remount,ro fail).
    store.release_idle();
    assert!(store.recent.0.lock().unwrap().is_none());
}
