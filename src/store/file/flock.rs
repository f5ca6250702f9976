//! Advisory whole-file locks (`flock(2)`) through fs2, with a bounded wait.
//!
//! Since Rust 1.89 `std::fs::File` has inherent `lock_shared`/`try_lock_shared`/`unlock`
//! methods that shadow fs2's trait methods of the same names, so fs2 is only ever called
//! fully qualified, and only from this module.

use std::fs::File;
use std::io;
use std::thread;
use std::time::{Duration, Instant};

/// Tries to lock `file` exclusively until `deadline`. `Ok(true)` when locked, `Ok(false)` when
/// the deadline passed first.
pub(crate) fn lock_exclusive_until(file: &File, deadline: Instant) -> io::Result<bool> {
    lock_until(file, deadline, fs2::FileExt::try_lock_exclusive)
}

/// Tries once, without waiting, to lock `file` shared: `Ok(false)` when someone holds it
/// exclusively (a save writing it in place holds it so).
pub(crate) fn try_lock_shared(file: &File) -> io::Result<bool> {
    match fs2::FileExt::try_lock_shared(file) {
        Ok(()) => Ok(true),
        Err(e) if is_contended(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// flock has no timed wait, so this polls with a short backoff (50 us doubling up to 2 ms):
/// a stuck process costs a waiter at most its deadline, never a frozen server.
fn lock_until(
    file: &File,
    deadline: Instant,
    try_lock: fn(&File) -> io::Result<()>,
) -> io::Result<bool> {
    let mut pause = Duration::from_micros(50);
    loop {
        match try_lock(file) {
            Ok(()) => return Ok(true),
            Err(e) if is_contended(&e) => {}
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

fn is_contended(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
        || e.raw_os_error() == fs2::lock_contended_error().raw_os_error()
}

/// Releases a lock taken on `file` (closing the file releases it too).
pub(crate) fn unlock(file: &File) -> io::Result<()> {
    fs2::FileExt::unlock(file)
}
