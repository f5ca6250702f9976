//! Django's `SessionTestsMixin`, one behaviour per test, over the memory and file stores.

use super::*;
use crate::config::Locking;
use crate::{FileStore, MemoryStore};
use serde_json::json;
use std::time::Duration;
use std::time::UNIX_EPOCH;

fn memory() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new())
}

fn fresh(store: &Arc<MemoryStore>) -> Session {
    Session::new(store.clone(), None, SessionConfig::default())
}

fn reopen(store: Arc<dyn SessionStore>, key: Option<SessionKey>) -> Session {
    Session::new(store, key, SessionConfig::default())
}

/// A saved session holding `pairs`, and its key.
fn saved(store: &Arc<MemoryStore>, pairs: Value) -> SessionKey {
    let mut s = fresh(store);
    for (k, v) in pairs.as_object().cloned().unwrap_or_default() {
        s.insert(k, v);
    }
    s.save().unwrap();
    *s.session_key().unwrap()
}

#[test]
fn new_session_is_neither_accessed_nor_modified() {
    let s = fresh(&memory());
    assert!(!s.accessed());
    assert!(!s.modified());
    assert!(s.session_key().is_none());
}

#[test]
fn get_of_a_missing_key_is_none_and_only_marks_accessed() {
    let s = fresh(&memory());
    assert_eq!(s.get("cat"), None);
    assert_eq!(s.get_or("cat", json!("dog")), json!("dog"));
    assert!(s.accessed());
    assert!(!s.modified());
}

#[test]
fn insert_marks_modified_even_for_an_equal_value() {
    let store = memory();
    let key = saved(&store, json!({"a": 1}));
    let mut s = reopen(store, Some(key));
    s.insert("a", 1);
    assert!(s.modified());
    assert_eq!(s.get("a"), Some(&json!(1)));
}

#[test]
fn pop_returns_the_value_and_marks_modified() {
    let mut s = fresh(&memory());
    s.insert("some key", "exists");
    let mut s = {
        s.save().unwrap();
        reopen(s.store.clone(), s.session_key().copied())
    };
    assert_eq!(s.pop("some key"), Some(json!("exists")));
    assert!(s.accessed() && s.modified());
    assert_eq!(s.get("some key"), None);
}

#[test]
fn pop_of_a_missing_key_does_not_modify() {
    let mut s = fresh(&memory());
    assert_eq!(s.pop("some key"), None);
    assert_eq!(
        s.pop_or("some key", json!("does not exist")),
        json!("does not exist")
    );
    assert!(s.accessed());
    assert!(!s.modified());
}

#[test]
fn remove_reports_absence_and_only_modifies_when_present() {
    let mut s = fresh(&memory());
    assert!(!s.remove("x"));
    assert!(!s.modified());
    s.insert("x", 1);
    assert!(s.remove("x"));
    assert!(!s.contains("x"));
}

#[test]
fn setdefault_keeps_an_existing_value() {
    let mut s = fresh(&memory());
    assert_eq!(s.setdefault("foo", json!("bar")), &json!("bar"));
    assert!(s.modified());
    let store = memory();
    let key = saved(&store, json!({"foo": "bar"}));
    let mut s = reopen(store, Some(key));
    assert_eq!(s.setdefault("foo", json!("baz")), &json!("bar"));
    assert!(s.accessed());
    assert!(!s.modified());
}

#[test]
fn update_marks_modified_even_with_no_pairs() {
    let mut s = fresh(&memory());
    s.update([("update key".to_string(), json!(1))]);
    assert!(s.accessed() && s.modified());
    assert_eq!(s.get("update key"), Some(&json!(1)));
    let mut s = fresh(&memory());
    s.update([]);
    assert!(s.modified());
}

#[test]
fn contains_only_marks_accessed() {
    let mut s = fresh(&memory());
    s.insert("some key", 1);
    s.modified = false;
    s.accessed.set(false);
    assert!(s.contains("some key"));
    assert!(!s.contains("other"));
    assert!(s.accessed());
    assert!(!s.modified());
}

#[test]
fn keys_values_and_items_read_without_modifying() {
    let store = memory();
    let key = saved(&store, json!({"x": 1, "y": 2}));
    let s = reopen(store, Some(key));
    assert_eq!(s.keys().cloned().collect::<Vec<_>>(), ["x", "y"]);
    assert_eq!(
        s.values().cloned().collect::<Vec<_>>(),
        [json!(1), json!(2)]
    );
    assert_eq!(s.items().count(), 2);
    assert_eq!(s.len(), 2);
    assert!(s.accessed());
    assert!(!s.modified());
}

#[test]
fn values_of_a_new_session_are_empty() {
    let s = fresh(&memory());
    assert_eq!(s.values().count(), 0);
    assert!(s.accessed() && !s.modified());
}

#[test]
fn clear_keeps_the_key_and_saves_an_empty_session() {
    let store = memory();
    let key = saved(&store, json!({"x": 1}));
    let mut s = reopen(store.clone(), Some(key));
    s.clear();
    assert_eq!(s.len(), 0);
    assert!(s.accessed() && s.modified());
    assert!(!s.is_empty(), "a session with a key is not empty");
    s.save().unwrap();
    assert_eq!(s.session_key(), Some(&key));
    let again = reopen(store, Some(key));
    assert_eq!(again.len(), 0);
    assert_eq!(again.session_key(), Some(&key));
}

#[test]
fn flush_deletes_the_stored_session_and_drops_the_key() {
    let store = memory();
    let key = saved(&store, json!({"x": 1}));
    let mut s = reopen(store.clone(), Some(key));
    s.flush();
    assert!(s.session_key().is_none());
    assert!(s.accessed() && s.modified());
    assert!(s.is_empty());
    s.save().unwrap();
    assert!(!store.exists(&key).unwrap());
    assert!(store.is_empty(), "flush creates no new session");
}

#[test]
fn flush_then_insert_starts_a_new_session_under_a_new_key() {
    let store = memory();
    let key = saved(&store, json!({"user": 7}));
    let mut s = reopen(store.clone(), Some(key));
    s.flush();
    s.insert("message", "bye");
    s.save().unwrap();
    let new = *s.session_key().unwrap();
    assert_ne!(new, key);
    assert!(!store.exists(&key).unwrap());
    let again = reopen(store, Some(new));
    assert_eq!(
        Value::Object(again.data().clone()),
        json!({"message": "bye"})
    );
}

#[test]
fn cycle_key_keeps_the_data_under_a_new_key() {
    let store = memory();
    let key = saved(&store, json!({"a": "c"}));
    let mut s = reopen(store.clone(), Some(key));
    s.cycle_key();
    assert!(s.modified());
    s.save().unwrap();
    let new = *s.session_key().unwrap();
    assert_ne!(new, key);
    assert!(!store.exists(&key).unwrap());
    assert_eq!(reopen(store, Some(new)).get("a"), Some(&json!("c")));
}

#[test]
fn cycle_key_without_a_save_loses_nothing() {
    // Django #28066 and defect (f): a 5xx response never saves, so the old session stays.
    let store = memory();
    let key = saved(&store, json!({"a": 1}));
    let mut s = reopen(store.clone(), Some(key));
    s.cycle_key();
    drop(s);
    assert_eq!(store.len(), 1);
    assert_eq!(reopen(store, Some(key)).get("a"), Some(&json!(1)));
}

#[test]
fn cycle_key_of_a_new_session_just_creates_it() {
    let store = memory();
    let mut s = fresh(&store);
    s.insert("a", 1);
    s.cycle_key();
    s.save().unwrap();
    assert_eq!(store.len(), 1);
}

#[test]
fn save_keeps_the_data_readable() {
    let mut s = fresh(&memory());
    s.insert("x", 1);
    s.save().unwrap();
    assert_eq!(s.get("x"), Some(&json!(1)));
    assert!(s.session_key().is_some());
}

#[test]
fn unknown_key_is_never_adopted() {
    let store = memory();
    let stranger = SessionKey::generate();
    let mut s = reopen(store.clone(), Some(stranger));
    s.insert("x", 1);
    s.save().unwrap();
    let key = *s.session_key().unwrap();
    assert_ne!(key, stranger);
    assert!(!store.exists(&stranger).unwrap());
}

#[test]
fn loading_an_unknown_key_creates_nothing() {
    let store = memory();
    let s = reopen(store.clone(), Some(SessionKey::generate()));
    assert_eq!(s.len(), 0);
    assert!(s.session_key().is_none());
    assert!(s.is_empty());
    let mut s = s;
    s.save().unwrap();
    assert!(store.is_empty());
}

#[test]
fn a_key_is_not_empty_until_a_load_proves_it_unknown() {
    let s = reopen(memory(), Some(SessionKey::generate()));
    assert!(!s.is_empty(), "is_empty does not load");
    assert!(!s.accessed());
    let _ = s.len();
    assert!(s.is_empty());
}

#[test]
fn save_does_not_resurrect_a_session_logged_out_elsewhere() {
    let store = memory();
    let key = saved(&store, json!({"a": 1}));
    let mut s1 = reopen(store.clone(), Some(key));
    assert_eq!(s1.get("a"), Some(&json!(1)));
    let mut s2 = reopen(store.clone(), Some(key));
    s2.flush();
    s2.save().unwrap();
    s1.insert("b", 2);
    let err = s1.save().unwrap_err();
    assert!(matches!(err, StoreError::Deleted(k) if k == key), "{err}");
    assert!(
        err.to_string()
            .starts_with("The request's session was deleted")
    );
    assert!(store.is_empty());
}

#[test]
fn concurrent_sessions_changing_different_keys_both_keep_their_change() {
    let store = memory();
    let key = saved(&store, json!({"base": 0}));
    let mut a = reopen(store.clone(), Some(key));
    let mut b = reopen(store.clone(), Some(key));
    assert_eq!(a.len(), 1);
    assert_eq!(b.len(), 1);
    a.insert("a", 1);
    b.insert("b", 2);
    b.remove("base");
    a.save().unwrap();
    b.save().unwrap();
    let both = reopen(store, Some(key));
    assert_eq!(Value::Object(both.data().clone()), json!({"a": 1, "b": 2}));
}

#[test]
fn default_expiry_is_the_cookie_age() {
    let mut s = fresh(&memory());
    assert_eq!(s.expiry_age(), 1_209_600);
    s.set_expiry(Expiry::BrowserClose);
    assert_eq!(s.expiry_age(), 1_209_600);
}

#[test]
fn custom_expiry_in_seconds() {
    let mut s = fresh(&memory());
    s.set_expiry(Expiry::Seconds(10));
    assert_eq!(s.expiry_age(), 10);
    let date = s.expiry_date().duration_since(SystemTime::now()).unwrap();
    // Ten seconds after now, to the millisecond, rounded up (never less).
    assert!(date <= Duration::from_millis(10_001) && date >= Duration::from_secs(8));
    assert!(s.modified());
}

#[test]
fn custom_expiry_at_a_time() {
    let mut s = fresh(&memory());
    let at = UNIX_EPOCH + Duration::from_secs(4_102_444_800); // 2100-01-01
    s.set_expiry(Expiry::At(at));
    assert_eq!(s.expiry_date(), at);
    assert!(s.expiry_age() > 0);
}

#[test]
fn custom_expiry_reset_to_default() {
    let mut s = fresh(&memory());
    s.set_expiry(Expiry::Seconds(10));
    s.set_expiry(Expiry::Default);
    assert_eq!(s.expiry_age(), 1_209_600);
}

#[test]
fn setting_the_default_expiry_again_changes_nothing() {
    let mut s = fresh(&memory());
    s.set_expiry(Expiry::Default);
    assert!(s.accessed());
    assert!(!s.modified());
}

#[test]
fn expire_at_browser_close_follows_the_setting_and_overrides() {
    let store = memory();
    for (global, expiry, expected) in [
        (false, Expiry::Seconds(10), false),
        (false, Expiry::BrowserClose, true),
        (false, Expiry::Default, false),
        (true, Expiry::Seconds(10), false),
        (true, Expiry::BrowserClose, true),
        (true, Expiry::Default, true),
    ] {
        let config = SessionConfig {
            expire_at_browser_close: global,
            ..SessionConfig::default()
        };
        let mut s = Session::new(store.clone(), None, config);
        s.set_expiry(expiry);
        assert_eq!(s.expire_at_browser_close(), expected, "{global} {expiry:?}");
    }
}

#[test]
fn expiry_survives_a_save_and_load() {
    let store = memory();
    let mut s = fresh(&store);
    s.insert("x", 1);
    s.set_expiry(Expiry::Seconds(300));
    s.save().unwrap();
    let again = reopen(store, s.session_key().copied());
    assert_eq!(again.expiry(), Expiry::Seconds(300));
    let left = again
        .expires_at()
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left <= Duration::from_millis(300_001) && left >= Duration::from_secs(298));
}

#[test]
fn an_expiry_in_seconds_is_enforced_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let mut s = reopen(store.clone(), None);
    s.insert("x", 1);
    s.set_expiry(Expiry::Seconds(1));
    s.save().unwrap();
    let key = s.session_key().copied();
    assert_eq!(reopen(store.clone(), key).get("x"), Some(&json!(1)));
    std::thread::sleep(Duration::from_millis(2100));
    let late = reopen(store, key);
    assert_eq!(late.get("x"), None);
    assert!(late.session_key().is_none());
}

#[test]
fn an_expiry_in_the_past_means_no_session() {
    let store = memory();
    let mut s = fresh(&store);
    s.insert("x", 1);
    s.set_expiry(Expiry::At(SystemTime::now() - Duration::from_secs(10)));
    assert!((-11..=-10).contains(&s.expiry_age()), "{}", s.expiry_age());
    s.save().unwrap();
    let again = reopen(store, s.session_key().copied());
    assert_eq!(again.get("x"), None);
}

#[test]
fn test_cookie_round_trip() {
    let store = memory();
    let mut s = fresh(&store);
    assert!(!s.test_cookie_worked());
    s.set_test_cookie();
    s.save().unwrap();
    let mut next = reopen(store, s.session_key().copied());
    assert!(next.test_cookie_worked());
    assert!(next.delete_test_cookie());
    assert!(!next.contains(TEST_COOKIE_NAME));
    assert!(!next.delete_test_cookie());
}

#[test]
fn typed_helpers_round_trip_and_report_mismatches() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Cart {
        items: Vec<u32>,
    }
    let mut s = fresh(&memory());
    s.insert_as("cart", &Cart { items: vec![1, 2] }).unwrap();
    assert_eq!(
        s.get_as::<Cart>("cart").unwrap(),
        Some(Cart { items: vec![1, 2] })
    );
    assert_eq!(s.get_as::<Cart>("missing").unwrap(), None);
    assert!(s.get_as::<u32>("cart").is_err());
    let bad: std::collections::HashMap<Vec<u8>, u8> = [(vec![1], 1)].into();
    assert!(s.insert_as("bad", &bad).is_err());
    assert!(!s.contains("bad"));
}

#[test]
fn request_mode_lock_timeout_surfaces_and_blocks_the_save() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionStore> = Arc::new(
        FileStore::open(dir.path())
            .unwrap()
            .with_locking(Locking::Request)
            .with_lock_timeout(Duration::from_millis(50)),
    );
    let mut first = reopen(store.clone(), None);
    first.insert("n", 0);
    first.save().unwrap();
    let key = first.session_key().copied();
    let holder = reopen(store.clone(), key);
    assert_eq!(holder.get("n"), Some(&json!(0)));
    let mut blocked = reopen(store.clone(), key);
    assert_eq!(blocked.get("n"), None);
    assert!(matches!(
        blocked.load_error(),
        Some(StoreError::LockTimeout { .. })
    ));
    blocked.insert("n", 99);
    assert!(matches!(
        blocked.save(),
        Err(StoreError::LockTimeout { .. })
    ));
    drop(holder);
    assert_eq!(
        reopen(store, key).get("n"),
        Some(&json!(0)),
        "nothing was written"
    );
}

#[test]
fn request_mode_counter_is_exact_across_threads() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionStore> = Arc::new(
        FileStore::open(dir.path())
            .unwrap()
            .with_locking(Locking::Request),
    );
    let mut first = reopen(store.clone(), None);
    first.insert("n", 0);
    first.save().unwrap();
    let key = first.session_key().copied();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let mut s = reopen(store.clone(), key);
                    let n = s.get_as::<u64>("n").unwrap().unwrap();
                    s.insert("n", n + 1);
                    s.save().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(reopen(store, key).get("n"), Some(&json!(200)));
}
