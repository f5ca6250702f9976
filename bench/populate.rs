//! Fills a sessions directory with N session files for the scale runs of `bench/scale`:
//! `cargo bench --bench populate -- DIR N EXPIRED_PERCENT`.
//! Files are written in the store's format (the check first, spaces after the document as
//! room to grow); EXPIRED_PERCENT of them expired an hour ago.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use filesession::SessionKey;
use sha2::{Digest, Sha256};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (Some(dir), Some(n)) = (args.first(), args.get(1)) else {
        eprintln!("usage: cargo bench --bench populate -- DIR N [EXPIRED_PERCENT]");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let n: u64 = n.parse().expect("N is a number");
    let expired_percent: u64 = args.get(2).map_or(0, |p| p.parse().expect("a percentage"));
    fs::create_dir_all(&dir).expect("create the directory");
    let now = SystemTime::now();
    let live = humantime::format_rfc3339_seconds(now + Duration::from_secs(1_209_600));
    let dead = humantime::format_rfc3339_seconds(now - Duration::from_secs(3600));
    let started = Instant::now();
    for i in 0..n {
        let expired = i % 100 < expired_percent;
        let expires = if expired { &dead } else { &live };
        let body = format!(
            "  \"format\": 1,\n  \"expires_at\": \"{expires}\",\n  \"expiry\": \"default\",\n  \"data\": {{\n    \"semail\": \"abc@gmail.com\",\n    \"sname\": \"abc\",\n    \"user\": {i}\n  }}\n}}"
        );
        let check: String = Sha256::digest(body.as_bytes())[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut text = format!("{{\n  \"check\": \"{check}\",\n{body}\n");
        let room = (text.len() + 64).div_ceil(256) * 256;
        text.push_str(&" ".repeat(room - text.len()));
        let path = dir.join(SessionKey::generate().file_name());
        let mut file = fs::File::create(&path).expect("create a session file");
        file.write_all(text.as_bytes())
            .expect("write a session file");
        // As the store does: a session file's mtime is the session's expiry.
        let mtime = if expired {
            now - Duration::from_secs(3600)
        } else {
            now + Duration::from_secs(1_209_600)
        };
        file.set_modified(mtime).expect("set the mtime");
    }
    println!(
        "populated {} with {n} sessions ({expired_percent}% expired) in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
}
