//! Cleanup's tests: expired sessions, leftovers, corrupt files, slices, locks, mtimes.

use super::*;
use crate::config::DEFAULT_LOCK_TIMEOUT;

#[test]
fn expired_sessions_load_as_none_and_are_cleared() {
    let (_tmp, store) = store();
    let mut c = changes(&[("a", json!(1))]);
    c.set_expiry(Expiry::Seconds(0));
    let expired = store.create(&c.to_new_record(SystemTime::now())).unwrap();
    let live = store
        .create(&changes(&[("b", json!(2))]).to_new_record(SystemTime::now()))
        .unwrap();
    assert!(store.load(&expired).unwrap().is_none());
    assert!(store.load(&live).unwrap().is_some());
    let report = store.clear_expired().unwrap();
    assert_eq!((report.expired, report.kept), (1, 1), "{report:?}");
    assert_eq!(files_in(store.dir()), vec![live.file_name()]);
}

#[test]
fn clear_expired_removes_old_leftovers_and_corrupt_files_only() {
    let (_tmp, store) = store();
    let store = store.with_leftover_age(Duration::ZERO);
    let leftover = format!(".{}.tmp", SessionKey::generate());
    fs::write(store.dir().join(&leftover), b"half a sess").unwrap();
    let corrupt = SessionKey::generate();
    fs::write(store.path_of(&corrupt), b"{").unwrap();
    fs::write(store.dir().join("README.md"), b"hello").unwrap();
    let live = store
        .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    let report = store.clear_expired().unwrap();
    assert_eq!(
        report,
        ClearReport {
            expired: 0,
            corrupt: 1,
            leftovers: 1,
            kept: 1,
            skipped: 1
        }
    );
    let mut expected = vec!["README.md".to_string(), live.file_name()];
    expected.sort();
    assert_eq!(files_in(store.dir()), expected);
}

#[test]
fn a_sweep_in_small_steps_does_what_clear_expired_does() {
    let (_tmp, store) = store();
    let mut expire_now = changes(&[("a", json!(1))]);
    expire_now.set_expiry(Expiry::Seconds(0));
    for i in 0..60 {
        let c = if i % 3 == 0 {
            expire_now.clone()
        } else {
            changes(&[("b", json!(i))])
        };
        store.create(&c.to_new_record(SystemTime::now())).unwrap();
    }
    let mut sweep = Sweep::new();
    let mut steps = 0;
    while !store.sweep_step(&mut sweep, Duration::ZERO).unwrap() {
        steps += 1;
        assert!(sweep.in_progress());
    }
    assert!(
        steps >= 59,
        "one entry per zero-budget step, got {steps} steps"
    );
    assert_eq!((sweep.report().expired, sweep.report().kept), (20, 40));
    assert_eq!(sweep.scanned(), 60);
    assert_eq!(files_in(store.dir()).len(), 40);
    assert!(!sweep.in_progress());
}

#[test]
fn a_sweep_begun_on_one_store_is_not_continued_by_another() {
    let (_a_dir, a) = store();
    let (_b_dir, b) = store();
    for _ in 0..10 {
        a.create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
            .unwrap();
    }
    let mut sweep = Sweep::new();
    assert!(!a.sweep_step(&mut sweep, Duration::ZERO).unwrap());
    assert_eq!(sweep.scanned(), 1, "one of a's 10 entries");
    // b is given a's position: it ends that pass without reading on in a's listing.
    assert!(b.sweep_step(&mut sweep, Duration::from_secs(10)).unwrap());
    assert_eq!(sweep.scanned(), 1, "none of a's entries read by b");
    assert!(!sweep.in_progress());
}

#[test]
fn a_sweep_leaves_a_locked_expired_session_for_later_instead_of_waiting() {
    let (_tmp, store) = store();
    let mut expire_now = changes(&[("a", json!(1))]);
    expire_now.set_expiry(Expiry::Seconds(0));
    let key = store
        .create(&expire_now.to_new_record(SystemTime::now()))
        .unwrap();
    let holder = File::open(store.path_of(&key)).unwrap();
    fs2::FileExt::lock_exclusive(&holder).unwrap();
    let started = Instant::now();
    let mut sweep = Sweep::new();
    while !store
        .sweep_step(&mut sweep, Duration::from_millis(2))
        .unwrap()
    {}
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(sweep.report().skipped, 1);
    assert!(store.exists(&key).unwrap());
    drop(holder);
    assert_eq!(store.clear_expired().unwrap().expired, 1);
}

#[test]
fn clear_expired_never_removes_a_session_refreshed_while_it_waited() {
    let (_tmp, store) = store();
    let store = std::sync::Arc::new(store.with_locking(Locking::Request));
    let mut expire_now = changes(&[("a", json!(1))]);
    expire_now.set_expiry(Expiry::Seconds(0));
    let key = store
        .create(&expire_now.to_new_record(SystemTime::now()))
        .unwrap();
    // A request holds the session (it is writing it)...
    let Some(Acquired::Locked(lock)) = store.acquire(&key, DEFAULT_LOCK_TIMEOUT).unwrap() else {
        panic!("request mode: the preflight holds the lock");
    };
    let cleaner = {
        let store = store.clone();
        std::thread::spawn(move || store.clear_expired().unwrap())
    };
    std::thread::sleep(Duration::from_millis(150));
    // ...and refreshes it while clearsessions waits for the lock.
    let mut refresh = changes(&[]);
    refresh.set_expiry(Expiry::Default);
    store.save(&key, &refresh, Some(lock)).unwrap();
    let report = cleaner.join().unwrap();
    assert_eq!((report.expired, report.kept), (0, 1), "{report:?}");
    assert!(store.load(&key).unwrap().is_some());
}

#[test]
fn a_session_files_mtime_is_its_expiry_and_cleanup_trusts_it() {
    let (_tmp, store) = store();
    let mut c = changes(&[("a", json!(1))]);
    c.set_expiry(Expiry::Seconds(3600));
    let record = c.to_new_record(SystemTime::now());
    let key = store.create(&record).unwrap();
    let mtime = fs::metadata(store.path_of(&key))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(mtime, record.expires_at);
    store
        .save(&key, &changes(&[("b", json!(2))]), None)
        .unwrap();
    let saved = store.load(&key).unwrap().unwrap().record;
    let mtime = fs::metadata(store.path_of(&key))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(mtime, saved.expires_at);
    // A live-stamped file is kept without being read.
    let stamped = SessionKey::generate();
    fs::write(store.path_of(&stamped), b"not read").unwrap();
    File::options()
        .write(true)
        .open(store.path_of(&stamped))
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    let report = store.clear_expired().unwrap();
    assert_eq!((report.kept, report.corrupt), (2, 0), "{report:?}");
}

#[test]
fn young_leftovers_are_kept() {
    let (_tmp, store) = store();
    let leftover = format!(".{}.tmp", SessionKey::generate());
    fs::write(store.dir().join(&leftover), b"in flight").unwrap();
    let report = store.clear_expired().unwrap();
    assert_eq!((report.leftovers, report.skipped), (0, 1));
}
