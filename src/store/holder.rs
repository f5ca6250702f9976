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

use std::sync::Mutex;

/// This process's identity, read once per process (again after a `fork`: a child has a PID
/// of its own); `None` where `/proc` does not tell it (no `/proc`, or a `/proc` of another
/// PID namespace, whose PIDs are not ours).
pub(crate) fn this_process() -> Option<String> {
    static ID: Mutex<Option<(u32, Option<String>)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut known = crate::store::locked(&ID);
    match known.as_ref() {
        Some((of, id)) if *of == pid => id.clone(),
        _ => {
            let id = identity(pid);
            *known = Some((pid, id.clone()));
            id
        }
    }
}

fn identity(pid: u32) -> Option<String> {
    // /proc/self names this process in the PID namespace /proc belongs to: if that is not
    // our PID, /proc is another namespace's and tells nothing of ours.
    let own = std::fs::read_link("/proc/self").ok()?;
    if own.to_str()? != pid.to_string() {
        return None;
    }
    Some(format!(
        "{}/{}/{pid}/{}",
        boot_id()?,
        pid_namespace()?,
        stat_of(pid)?.start
    ))
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
/// in this PID namespace, and now there is no process of its PID (`kill(pid, 0)`: `ESRCH`),
/// or the process of that PID started at another time (a PID reused) or has ended and not
/// been reaped (a zombie, state `Z` or `X`). `false` whenever that cannot be known: a token
/// without an identity, another machine or namespace, `/proc` unreadable. A process `/proc`
/// hides (`hidepid`, systemd's `ProtectProc=invisible`) but `kill(pid, 0)` finds (`EPERM`)
/// is alive.
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
    let Some(process) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    let signal = rustix::process::test_kill_process(process);
    let gone = signal == Err(rustix::io::Errno::SRCH);
    judged_dead(gone, || stat_of(pid), start)
}

/// The decision, apart from the system calls: `gone`, `kill(pid, 0)` said `ESRCH`; else
/// `/proc/<pid>/stat` decides, and a process it does not show (`hidepid`) is alive.
fn judged_dead(gone: bool, stat: impl FnOnce() -> Option<Stat>, start: u64) -> bool {
    if gone {
        return true;
    }
    match stat() {
        Some(now) => now.start != start || matches!(now.state, 'Z' | 'X'),
        None => false,
    }
}

/// What `/proc/<pid>/stat` says of a process: its state and start time.
struct Stat {
    state: char,
    start: u64,
}

fn stat_of(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
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

/// Fields 3 (the state) and 22 (the start time) of a `/proc/<pid>/stat` line, counted after
/// the command name, which is in parentheses and may itself hold spaces and parentheses
/// (proc(5)).
fn parse_stat(stat: &str) -> Option<Stat> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000000 100 18446744073709551615";
        let parsed = parse_stat(stat).unwrap();
        assert_eq!((parsed.state, parsed.start), ('S', 987_654));
        assert!(parse_stat("garbage").is_none());
    }

    fn place() -> (String, String) {
        let ours = this_process().expect("/proc tells this process's identity here");
        let mut parts = ours.split('/');
        (parts.next().unwrap().into(), parts.next().unwrap().into())
    }

    #[test]
    fn this_process_is_alive_and_a_process_that_exited_is_dead() {
        let (boot, ns) = place();
        assert!(!holder_died(&token("t")), "ourselves");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = stat_of(pid).map_or(1, |s| s.start);
        child.wait().unwrap();
        // Reaped: no process of that PID.
        assert!(holder_died(&format!("t@{boot}/{ns}/{pid}/{start}")));
        // A live process of another start time is not the holder either.
        let parent = std::os::unix::process::parent_id();
        assert!(holder_died(&format!("t@{boot}/{ns}/{parent}/1")));
        let live = stat_of(parent).unwrap().start;
        assert!(!holder_died(&format!("t@{boot}/{ns}/{parent}/{live}")));
    }

    #[test]
    fn a_holder_killed_but_not_reaped_is_dead() {
        let (boot, ns) = place();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = stat_of(pid).unwrap().start;
        let holder = format!("t@{boot}/{ns}/{pid}/{start}");
        assert!(!holder_died(&holder), "alive");
        child.kill().unwrap();
        // A zombie until waited for: dead already.
        let killed = std::time::Instant::now();
        while stat_of(pid).is_some_and(|s| s.state != 'Z')
            && killed.elapsed() < std::time::Duration::from_secs(5)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(holder_died(&holder), "a zombie holds nothing");
        child.wait().unwrap();
        assert!(holder_died(&holder));
    }

    #[test]
    fn a_holder_proc_hides_is_alive_and_only_a_sure_death_counts() {
        let stat = |state, start| move || Some(Stat { state, start });
        assert!(judged_dead(true, || None, 5), "no such process");
        assert!(
            !judged_dead(false, || None, 5),
            "there, hidden (hidepid): alive"
        );
        assert!(
            !judged_dead(false, stat('S', 5), 5),
            "there, same start: alive"
        );
        assert!(judged_dead(false, stat('S', 6), 5), "its PID reused");
        assert!(judged_dead(false, stat('Z', 5), 5), "a zombie");
        assert!(judged_dead(false, stat('X', 5), 5), "dead, being reaped");
    }

    #[test]
    fn a_holder_elsewhere_or_unknown_is_never_judged_dead() {
        assert!(!holder_died("plain-token"));
        assert!(!holder_died("t@another-boot/1/999999/1"));
        assert!(!holder_died("t@x/y"));
        let (boot, _) = place();
        assert!(
            !holder_died(&format!("t@{boot}/1/999999/1")),
            "another namespace"
        );
    }
}
