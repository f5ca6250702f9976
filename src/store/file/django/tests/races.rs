//! Django renames and removals during a save of ours: no change of ours lost, no session
//! brought back, a save that stands.

use std::sync::Arc;

use super::*;

/// A Django rename between a save's lock and its write: the writer of ours that locked the
/// old file, and the one that locked Django's, both keep their change (and Django's is
/// merged too, having renamed in before either write).
#[test]
fn a_django_rename_during_our_saves_loses_no_change_of_ours() {
    let codec = DjangoCodec::new(signer());
    let djangos = |data: Value| {
        codec
            .encode(
                None,
                &record(data, Expiry::Default),
                SystemTime::now(),
                1 << 20,
            )
            .expect("encode")
    };
    for w2_first in [true, false] {
        let tmp = tempfile::tempdir().expect("temp dir");
        let store = store_in(tmp.path());
        let key = store
            .create(&record(json!({"base": 0}), Expiry::Default))
            .expect("create");
        // W1 locks the file and reads it.
        let c1 = changes(&[("w1", json!(1))]);
        let w1 = store.lock_for_write(&key, None).expect("W1's lock");
        let w1_read = store.stored_under(&key, &w1).expect("W1 reads");
        // Django renames its copy in: a new inode, unlocked.
        django_writes(tmp.path(), &key, &djangos(json!({"base": 0, "django": 1})));
        // W2 locks Django's file (free), reads it.
        let c2 = changes(&[("w2", json!(2))]);
        let w2 = store
            .lock_for_write(&key, None)
            .expect("W2's lock on Django's copy");
        let w2_read = store.stored_under(&key, &w2).expect("W2 reads");
        let merged = |c: &ChangeSet, read: &Record| {
            c.merge_into(Some(read.clone()), SystemTime::now())
                .into_record()
        };
        if w2_first {
            store
                .publish(&key, &w2, &c2, merged(&c2, &w2_read))
                .expect("W2 writes");
            store
                .publish(&key, &w1, &c1, merged(&c1, &w1_read))
                .expect("W1 writes");
        } else {
            store
                .publish(&key, &w1, &c1, merged(&c1, &w1_read))
                .expect("W1 writes");
            store
                .publish(&key, &w2, &c2, merged(&c2, &w2_read))
                .expect("W2 writes");
        }
        drop((w1, w2));
        let loaded = store.load(&key).expect("load").expect("live");
        let data = data_of(&loaded);
        assert_eq!(data["w1"], json!(1), "{w2_first}: {data}");
        assert_eq!(data["w2"], json!(2), "{w2_first}: {data}");
        assert_eq!(data["base"], json!(0), "{w2_first}: {data}");
        assert_eq!(
            names_in(tmp.path()),
            [key.django_file_name("sessionid")],
            "no copy left behind"
        );
    }
}

/// A Django copy renamed in during a save that cannot be merged (the two together are over
/// the size limit): seen before anything of ours is written, so the save fails and
/// Django's copy stays, whole.
#[test]
fn a_copy_renamed_in_that_cannot_be_merged_fails_the_save_and_stays() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = store_in(tmp.path()).with_max_file_size(500);
    // Text zlib cannot shrink much: the sizes stay near their JSON's.
    let noise = |n: usize| -> String {
        (0..n.div_ceil(32))
            .map(|_| SessionKey::generate_django().to_string())
            .collect::<String>()[..n]
            .to_owned()
    };
    let key = store
        .create(&record(json!({"base": 0}), Expiry::Default))
        .expect("create");
    let held = store.lock_for_write(&key, None).expect("lock");
    let read = store.stored_under(&key, &held).expect("read");
    let theirs = noise(300);
    let djangos = DjangoCodec::new(signer())
        .encode(
            None,
            &record(json!({"django": theirs}), Expiry::Default),
            SystemTime::now(),
            500,
        )
        .expect("encode");
    django_writes(tmp.path(), &key, &djangos);
    let ours = noise(300);
    let both = json!({"base": 0, "django": theirs, "ours": ours});
    assert!(
        matches!(
            DjangoCodec::new(signer()).encode(
                None,
                &record(both, Expiry::Default),
                SystemTime::now(),
                500
            ),
            Err(StoreError::TooLarge { .. })
        ),
        "the two merged are over the limit"
    );
    let c = changes(&[("ours", json!(ours))]);
    let failed = store.publish(
        &key,
        &held,
        &c,
        c.merge_into(Some(read), SystemTime::now()).into_record(),
    );
    assert!(
        matches!(failed, Err(StoreError::TooLarge { .. })),
        "the save fails: {failed:?}"
    );
    drop(held);
    let loaded = store.load(&key).expect("load").expect("live");
    assert_eq!(data_of(&loaded), json!({"django": theirs}));
    assert_eq!(names_in(tmp.path()), [key.django_file_name("sessionid")]);
}

/// Django removes the session between our lock and our write: the write fails, creating
/// nothing.
#[test]
fn a_save_after_django_removed_the_file_is_deleted_not_resurrected() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = store_in(tmp.path());
    let key = store
        .create(&record(json!({"a": 1}), Expiry::Default))
        .expect("create");
    let held = store.lock_for_write(&key, None).expect("lock");
    let read = store.stored_under(&key, &held).expect("read");
    fs::remove_file(store.path_of(&key)).expect("Django's delete");
    let c = changes(&[("b", json!(2))]);
    let written = store.publish(
        &key,
        &held,
        &c,
        c.merge_into(Some(read), SystemTime::now()).into_record(),
    );
    assert!(
        matches!(written, Err(StoreError::Deleted(k)) if k == key),
        "{written:?}"
    );
    assert!(
        names_in(tmp.path()).is_empty(),
        "{:?}",
        names_in(tmp.path())
    );
}

/// Writers of ours, a Django-like writer (read, then a blind rename of a temp file) and a
/// reader at once: every read finds the session whole, and nothing is left behind.
#[test]
fn saves_of_ours_racing_blind_django_renames_never_tear_a_file() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(store_in(tmp.path()));
    let key = store
        .create(&record(json!({"base": 0}), Expiry::Default))
        .expect("create");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ours: Vec<_> = (0..3)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let c = changes(&[(&format!("t{t}"), json!(i))]);
                    store.save(&key, &c, None).expect("save");
                }
            })
        })
        .collect();
    let django = {
        let (store, dir) = (store.clone(), tmp.path().to_owned());
        std::thread::spawn(move || {
            let codec = DjangoCodec::new(signer());
            for i in 0..40 {
                let read = store.load(&key).expect("load").expect("live").record;
                let mut data = (*read.data).clone();
                data.insert("django".into(), json!(i));
                let text = codec
                    .encode(
                        None,
                        &record(Value::Object(data), Expiry::Default),
                        SystemTime::now(),
                        1 << 20,
                    )
                    .expect("encode");
                django_writes(&dir, &key, &text);
            }
        })
    };
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let loaded = store.load(&key).expect("load");
                assert!(loaded.is_some(), "a whole session at every read");
                reads += 1;
            }
            reads
        })
    };
    for t in ours {
        t.join().expect("ours");
    }
    django.join().expect("django");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().expect("reader") > 0);
    let loaded = store.load(&key).expect("load").expect("live");
    assert_eq!(loaded.record.data.get("base"), Some(&json!(0)));
    assert_eq!(names_in(tmp.path()), [key.django_file_name("sessionid")]);
}
