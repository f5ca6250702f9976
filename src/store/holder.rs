//! Who holds a lease: this process's identity on this machine, written into a lease's token
//! so that a waiter on the same machine can tell a holder that died (kill -9, a crash) from
//! one still at work, and take the lock at once instead of waiting out the lease.
//!
//! The identity is `<boot id>/<pid namespace>/<pid>/<start time>`: the kernel's random boot
//! id (`/proc/sys/kernel/random/boot_id`, new at every boot, different on every machine), the
//! PID namespace's inode (`/proc/self/ns/pid`: a PID means something only inside its
//! namespace), the PID, and the process's start time in clock ticks since boot
//! (`/proc/<pid>/stat`, field 22: a PID reused by a new process has another). A holder is
//! judged dead only when all of that says so: same boot, same namespace, and no process of
//! that PID with that start time. Anything unreadable, another machine, another container's
//! namespace: alive, and the lease runs out by itself as before.

use std::sync::OnceLock;

/// This process's identity, read once; `None` where `/proc` does not tell it.
pub(crate) fn this_process() -> Option<&'static str> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(|| {
        let pid = std::process::id();
        Some(format!(
            "{}/{}/{pid}/{}",
            boot_id()?,
            pid_namespace()?,
            start_time(pid)?
        ))
    })
    .as_deref()
}

/// A lease token for a holder: `random` followed by this process's identity, if known
/// (`<random>@<identity>`).
pub(crate) fn token(random: &str) -> String {
    match this_process() {
        Some(id) => format!("{random}@{id}"),
        None => random.to_owned(),
    }
}

/// Whether the holder named in `token` surely died: it ran on this machine since this boot,
/// in this PID namespace, and no process of its PID with its start time exists now. `false`
/// whenever that cannot be known (a token without an identity, another machine or namespace,
/// `/proc` unreadable).
pub(crate) fn holder_died(token: &str) -> bool {
    let Some((_, holder)) = token.rsplit_once('@') else {
        return false;
    };
    let Some(ours) = this_process() else {
        return false;
    };
    let mut theirs = holder.split('/');
    let mut mine = ours.split('/');
    let same_place = theirs.next() == mine.next() && theirs.next() == mine.next();
    let (Some(pid), Some(start), None) = (theirs.next(), theirs.next(), theirs.next()) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    if !same_place || pid == std::process::id() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => start_of(&stat) != Some(start),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty() && !id.contains(['/', '@'])).then(|| id.to_owned())
}

fn pid_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

fn start_time(pid: u32) -> Option<u64> {
    start_of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of a `/proc/<pid>/stat` line, the start time: counted after the command name,
/// which is in parentheses and may itself hold spaces and parentheses (proc(5)).
fn start_of(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000000 100 18446744073709551615";
        assert_eq!(start_of(stat), Some(987_654));
        assert_eq!(start_of("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_process_that_exited_is_dead() {
        let Some(ours) = this_process() else {
            panic!("/proc tells no identity here");
        };
        assert!(!holder_died(&token("t")), "ourselves");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let place: Vec<&str> = ours.split('/').take(2).collect();
        let start = start_time(pid);
        child.wait().unwrap();
        // Reaped: no process of that PID (or another one, started later).
        let theirs = format!("t@{}/{}/{pid}/{}", place[0], place[1], start.unwrap_or(1));
        assert!(holder_died(&theirs), "{theirs}");
        // A live process of another start time is not the holder either.
        let parent = std::os::unix::process::parent_id();
        let reused = format!("t@{}/{}/{parent}/1", place[0], place[1]);
        assert!(holder_died(&reused));
        let live = format!(
            "t@{}/{}/{parent}/{}",
            place[0],
            place[1],
            start_time(parent).unwrap()
        );
        assert!(!holder_died(&live));
    }

    #[test]
    fn a_holder_elsewhere_or_unknown_is_never_judged_dead() {
        assert!(!holder_died("plain-token"));
        assert!(!holder_died("t@another-boot/1/999999/1"));
        assert!(!holder_died("t@x/y"));
    }
}
