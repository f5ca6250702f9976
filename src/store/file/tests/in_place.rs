//! Writes in place: which saves are written over their file, which go to a new file, and
//! what a reader without a lock does with a copy that is not whole.

use super::*;
use std::os::unix::fs::MetadataExt;

fn created(store: &FileStore, pairs: &[(&str, serde_json::Value)]) -> SessionKey {
    store
        .create(&changes(pairs).to_new_record(SystemTime::now()))
        .unwrap()
}

fn ino(path: &Path) -> u64 {
    fs::metadata(path).unwrap().ino()
}

#[test]
fn the_size_limit_counts_the_document_not_its_room_to_grow() {
    let (_tmp, store) = store();
    let key = store
        .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    let path = store.path_of(&key);
    let len = fs::metadata(&path).unwrap().len() as usize;
    let document = fs::read(&path).unwrap().trim_ascii_end().len() + 1;
    assert!(len > document, "padded: {len} > {document}");
    // The limit lowered below the file's size but not below its document: still read,
    // and saved; below the document: over the limit, as before.
    let lowered = FileStore::open(store.dir())
        .unwrap()
        .with_max_file_size(document + 1);
    let loaded = lowered
        .load(&key)
        .unwrap()
        .expect("the document is within the limit");
    assert_eq!(loaded.record.data.get("a"), Some(&json!(1)));
    lowered
        .save(&key, &changes(&[("a", json!(2))]), None)
        .unwrap();
    let tight = FileStore::open(store.dir())
        .unwrap()
        .with_max_file_size(document - 10);
    assert!(
        tight.load(&key).unwrap().is_none(),
        "over the limit: no session"
    );
    assert_eq!(
        store.load(&key).unwrap().unwrap().record.data.get("a"),
        Some(&json!(2)),
        "and left as it was"
    );
}

#[test]
fn a_small_save_is_written_in_place_and_a_large_one_by_a_new_file() {
    let (_tmp, store) = store();
    let key = store
        .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    let path = store.path_of(&key);
    let ino = || fs::metadata(&path).unwrap().ino();
    let first = ino();
    let size = fs::metadata(&path).unwrap().len();
    assert_eq!(size % 256, 0, "written with room to grow: {size} bytes");
    store
        .save(&key, &changes(&[("a", json!(2)), ("b", json!("x"))]), None)
        .unwrap();
    assert_eq!(ino(), first, "fits: the same file, written in place");
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        size,
        "never shrinks or grows"
    );
    let text = fs::read_to_string(&path).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["data"], json!({"a": 2, "b": "x"}));
    assert!(
        text.trim_end().ends_with('}'),
        "padded with spaces only: {text:?}"
    );
    // Past the room left: a new file takes the name, with room of its own.
    store
        .save(&key, &changes(&[("big", json!("y".repeat(2000)))]), None)
        .unwrap();
    assert_ne!(ino(), first, "grown past its room: replaced");
    // Past one page: never in place (fsync mode neither), always a new file.
    let moved = ino();
    store
        .save(&key, &changes(&[("big", json!("z".repeat(5000)))]), None)
        .unwrap();
    assert_ne!(ino(), moved);
    let again = ino();
    store
        .save(&key, &changes(&[("big", json!("w".repeat(5000)))]), None)
        .unwrap();
    assert_ne!(ino(), again, "over a page: replaced every time");
    let fsync = FileStore::open(store.dir()).unwrap().with_fsync(true);
    let small = fsync
        .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
        .unwrap();
    let small_ino = fs::metadata(fsync.path_of(&small)).unwrap().ino();
    fsync
        .save(&small, &changes(&[("a", json!(2))]), None)
        .unwrap();
    assert_ne!(
        fs::metadata(fsync.path_of(&small)).unwrap().ino(),
        small_ino,
        "fsync mode: always a new file and a rename"
    );
}

#[test]
fn a_file_of_format_1_is_replaced_once_then_written_in_place() {
    let (_tmp, store) = store();
    let key = created(&store, &[("a", json!(1))]);
    let path = store.path_of(&key);
    // As a build before format 2 wrote it: no check, no room.
    let v1 = fs::read_to_string(&path)
        .unwrap()
        .trim_end()
        .replace("\"format\": 2", "\"format\": 1");
    let v1 = v1[..v1.rfind(",\n  \"check\"").unwrap()].to_owned() + "\n}\n";
    fs::write(&path, &v1).unwrap();
    assert_eq!(
        store.load(&key).unwrap().unwrap().record.data["a"],
        json!(1)
    );
    let before = ino(&path);
    store
        .save(&key, &changes(&[("a", json!(2))]), None)
        .unwrap();
    assert_ne!(ino(&path), before, "format 1: replaced by a new file");
    assert!(fs::read_to_string(&path).unwrap().contains("\"format\": 2"));
    let now = ino(&path);
    store
        .save(&key, &changes(&[("a", json!(3))]), None)
        .unwrap();
    assert_eq!(ino(&path), now, "format 2: written in place");
    assert_eq!(
        store.load(&key).unwrap().unwrap().record.data["a"],
        json!(3)
    );
}

#[test]
fn a_file_with_another_link_or_another_mode_is_never_written_through() {
    let (tmp, store) = store();
    let key = created(&store, &[("a", json!(1))]);
    let path = store.path_of(&key);
    // A backup made with `cp -al`: a second link to the same inode.
    let backup = tmp.path().join("backup.json");
    fs::hard_link(&path, &backup).unwrap();
    let kept = fs::read(&backup).unwrap();
    store
        .save(&key, &changes(&[("a", json!(2))]), None)
        .unwrap();
    assert_eq!(fs::read(&backup).unwrap(), kept, "the backup is untouched");
    assert_eq!(
        store.load(&key).unwrap().unwrap().record.data["a"],
        json!(2)
    );
    // A file made readable to others: replaced by a fresh 0600 one.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let before = ino(&path);
    store
        .save(&key, &changes(&[("a", json!(3))]), None)
        .unwrap();
    assert_ne!(ino(&path), before);
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn a_copy_that_is_not_whole_with_no_writer_is_decided_at_once() {
    let (_tmp, store) = store();
    let key = created(&store, &[("a", json!(1))]);
    let path = store.path_of(&key);
    // A check that does not match (as a page caught half written would have), and nobody
    // holding the file: the read under the shared lock decides, "no session", at once.
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("\"a\": 1", "\"a\": 7");
    fs::write(&path, text).unwrap();
    let start = Instant::now();
    assert!(store.load(&key).unwrap().is_none());
    assert!(start.elapsed() < Duration::from_secs(1));
    // The shared lock was let go: a writer can lock the file, and replaces it.
    store
        .save(&key, &changes(&[("b", json!(2))]), None)
        .unwrap();
    assert_eq!(
        store.load(&key).unwrap().unwrap().record.data["b"],
        json!(2)
    );
}

#[test]
fn a_copy_that_is_not_whole_while_a_writer_holds_the_file_is_an_error_not_no_session() {
    let (_tmp, store) = store();
    let key = created(&store, &[("a", json!(1))]);
    let path = store.path_of(&key);
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("\"a\": 1", "\"a\": 7");
    fs::write(&path, text).unwrap();
    // Another process's save, in the middle of its write: it holds the file exclusively.
    let writer = fs::File::open(&path).unwrap();
    fs2::FileExt::try_lock_exclusive(&writer).unwrap();
    let err = store.load(&key).unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");
    drop(writer);
    assert!(store.load(&key).unwrap().is_none(), "then decided: corrupt");
}

#[test]
fn a_reader_racing_writes_in_place_reads_every_copy_whole() {
    // Two stores on one directory, as two workers: one saves a session over and over (in
    // place: the documents differ in length and content, all within the file's room), the
    // other loads it without a lock all along. Every load is a whole copy: a session, its
    // counter never going back, its filler as long as its counter says; never "no session".
    let (_tmp, writer) = store();
    let reader = FileStore::open(writer.dir()).unwrap();
    let key = created(
        &writer,
        &[("n", json!(0)), ("fill", json!("x".repeat(1000)))],
    );
    let path = writer.path_of(&key);
    let first = ino(&path);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let saving = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let fill = "xy".repeat((n % 500) as usize);
                writer
                    .save(
                        &key,
                        &changes(&[("n", json!(n)), ("fill", json!(fill))]),
                        None,
                    )
                    .unwrap();
            }
            (n, writer)
        })
    };
    let (mut loads, mut busy, mut last) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        match reader.load(&key) {
            Ok(Some(loaded)) => {
                let n = loaded.record.data["n"].as_u64().unwrap();
                let fill = loaded.record.data["fill"].as_str().unwrap().len() as u64;
                assert!(n >= last, "went back from {last} to {n}");
                assert!(n == 0 || fill == 2 * (n % 500), "a mix: n {n}, fill {fill}");
                last = n;
                loads += 1;
            }
            Ok(None) => panic!("no session after {loads} loads"),
            Err(StoreError::LockTimeout { .. }) => busy += 1,
            Err(e) => panic!("{e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (saves, writer) = saving.join().unwrap();
    assert_eq!(ino(&path), first, "every save was written in place");
    let rereads = reader.torn_rereads.load(Ordering::Relaxed);
    eprintln!(
        "in place: {saves} saves, {loads} whole loads, {rereads} copies read again, \
         {busy} busy"
    );
    assert!(saves > 100 && loads > 100, "{saves} saves, {loads} loads");
    assert!(
        busy * 100 <= loads,
        "{busy} of {loads} loads found the writer busy"
    );
    drop(writer);
}
