//! A test that cannot run here must say so where a plain `cargo test` shows it (issue 22:
//! the differential test's `skipped:` line went into libtest's capture, and a newcomer read
//! "350 passed" believing Django had been compared). The skip helper every suite uses,
//! tried in a child run of this binary, as `cargo test` runs it.

mod common;

use std::process::Command;

/// The child: a skip, as any suite's.
#[test]
#[ignore = "run as a child process by the tests below"]
fn child_skips() {
    common::skip(
        "the skip probe",
        "nothing to run against",
        "FILESESSION_SKIP_PROBE_TEST",
    );
}

fn run_child(require: bool) -> (bool, String, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "child_skips", "--test-threads=1"]);
    cmd.env_remove("FILESESSION_SKIP_PROBE_TEST");
    if require {
        cmd.env("FILESESSION_SKIP_PROBE_TEST", "require");
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_skip_is_printed_past_the_capture_and_passes() {
    let (passed, stdout, stderr) = run_child(false);
    assert!(passed, "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "SKIPPED: the skip probe: nothing to run against \
             (FILESESSION_SKIP_PROBE_TEST=require makes this a failure)"
        ),
        "not shown by a plain run (no --nocapture): stdout {stdout:?}, stderr {stderr:?}"
    );
    assert!(stdout.contains("test child_skips ... ok"), "{stdout}");
}

#[test]
fn a_skip_whose_switch_says_require_fails() {
    let (passed, stdout, stderr) = run_child(true);
    assert!(!passed, "{stdout}{stderr}");
    assert!(
        stdout.contains("FILESESSION_SKIP_PROBE_TEST=require but the skip probe cannot run"),
        "{stdout}{stderr}"
    );
}
