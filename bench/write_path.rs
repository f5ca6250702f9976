//! Measures the write paths a session store can take on this machine's disk, and the
//! FileStore operations built on the chosen one. Run: `cargo bench --bench write_path`
//! (optionally with a directory: `cargo bench --bench write_path -- /path/on/the/disk`).
//!
//! Each line: median and 99th percentile of N operations, in microseconds.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use filesession::{ChangeSet, FileStore, Session, SessionConfig, SessionKey, SessionStore};
use rustix::fs::{CWD, RenameFlags, renameat_with};
use serde_json::json;

const N: usize = 2000;

fn measure(name: &str, mut op: impl FnMut(usize)) {
    for i in 0..50 {
        op(i); // warm up
    }
    let mut times: Vec<Duration> = (0..N)
        .map(|i| {
            let t = Instant::now();
            op(i);
            t.elapsed()
        })
        .collect();
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name:<48} p50 {:>8.1} us   p99 {:>8.1} us",
        us(times[N / 2]),
        us(times[N * 99 / 100])
    );
}

fn session_bytes(i: usize) -> Vec<u8> {
    format!(
        "{{\n  \"format\": 1,\n  \"expires_at\": \"2026-12-10T11:37:46Z\",\n  \"expiry\": \"default\",\n  \"data\": {{\n    \"n\": {i},\n    \"semail\": \"abc@gmail.com\",\n    \"sname\": \"abc\"\n  }}\n}}\n"
    )
    .into_bytes()
}

fn raw_paths(dir: &Path) {
    let target = dir.join("raw-target.json");
    fs::write(&target, session_bytes(0)).unwrap();

    measure("raw: open + read + close", |_| {
        let _ = fs::read(&target).unwrap();
    });
    measure("raw: overwrite in place (pwrite + ftruncate)", |i| {
        let f = OpenOptions::new().write(true).open(&target).unwrap();
        let b = session_bytes(i);
        f.write_all_at(&b, 0).unwrap();
        f.set_len(b.len() as u64).unwrap();
    });
    measure("raw: new file (create_new + write)", |i| {
        let p = dir.join(format!("raw-new-{i}.json"));
        let _ = fs::remove_file(&p);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        f.write_all(&session_bytes(i)).unwrap();
    });
    measure("raw: temp + rename over the old file", |i| {
        let tmp = dir.join("raw.tmp");
        fs::write(&tmp, session_bytes(i)).unwrap();
        fs::rename(&tmp, &target).unwrap();
    });
    measure("raw: temp + renameat2(EXCHANGE) + unlink", |i| {
        let tmp = dir.join("raw.tmp");
        fs::write(&tmp, session_bytes(i)).unwrap();
        renameat_with(CWD, &tmp, CWD, &target, RenameFlags::EXCHANGE).unwrap();
        fs::remove_file(&tmp).unwrap();
    });
    measure("raw: temp + fsync + EXCHANGE + unlink + fsync dir", |i| {
        let tmp = dir.join("raw.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .unwrap();
        f.write_all(&session_bytes(i)).unwrap();
        f.sync_data().unwrap();
        renameat_with(CWD, &tmp, CWD, &target, RenameFlags::EXCHANGE).unwrap();
        fs::remove_file(&tmp).unwrap();
        fs::File::open(dir).unwrap().sync_all().unwrap();
    });
}

fn store_ops(dir: &Path, fsync: bool) {
    let label = if fsync {
        "FileStore (fsync on)"
    } else {
        "FileStore"
    };
    let store = FileStore::open(dir).unwrap().with_fsync(fsync);
    let store: Arc<dyn SessionStore> = Arc::new(store);
    let config = SessionConfig::default();
    let mut first = Session::new(store.clone(), None, config);
    first.insert("sname", "abc");
    first.insert("semail", "abc@gmail.com");
    first.save().unwrap();
    let key: SessionKey = *first.session_key().unwrap();

    measure(&format!("{label}: load"), |_| {
        store.load(&key).unwrap().unwrap();
    });
    measure(
        &format!("{label}: save (lock, re-read, merge, write: in place; fsync on: swap)"),
        |i| {
            let mut c = ChangeSet::new(config.cookie_age);
            c.set("n", json!(i));
            store.save(&key, &c, None).unwrap();
        },
    );
    measure(&format!("{label}: create"), |i| {
        let mut c = ChangeSet::new(config.cookie_age);
        c.set("n", json!(i));
        store.create(&c.to_new_record(SystemTime::now())).unwrap();
    });
    measure(&format!("{label}: Session load + insert + save"), |i| {
        let mut s = Session::new(store.clone(), Some(key), config);
        s.insert("n", i);
        s.save().unwrap();
    });
}

fn main() {
    let base = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(std::path::PathBuf::from);
    let tmp = match &base {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir_in(".").unwrap(),
    };
    println!(
        "write paths in {} ({} operations each)",
        tmp.path().display(),
        N
    );
    let raw = tmp.path().join("raw");
    fs::create_dir(&raw).unwrap();
    raw_paths(&raw);
    store_ops(&tmp.path().join("store"), false);
    store_ops(&tmp.path().join("store-fsync"), true);
}
