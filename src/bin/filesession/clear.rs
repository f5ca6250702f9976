//! `clearsessions`: Django's command, with a progress line on a terminal.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use filesession::{Engine, Settings, Sweep, store};

use crate::fail;

pub(crate) fn clearsessions(settings: &Settings) -> ExitCode {
    const NOTHING: &str = "expires sessions by itself (each session's TTL): nothing to clear.";
    if settings.engine == Engine::Redis {
        // Said without connecting: there is nothing to ask Redis.
        say(format_args!("Redis {NOTHING}"));
        return ExitCode::SUCCESS;
    }
    if settings.engine == Engine::SignedCookies {
        // Django: "Session engine '...signed_cookies' doesn't support clearing expired
        // sessions."
        say(format_args!(
            "SESSION_ENGINE=signed_cookies keeps each session in its cookie, checked for age \
             when read: nothing on the server to clear."
        ));
        return ExitCode::SUCCESS;
    }
    // cached_db: the database's expired rows (the cache's entries expire by themselves),
    // whether or not the cache answers.
    let mut settings = settings.clone();
    if settings.engine == Engine::CachedDb {
        settings.engine = Engine::Db;
    }
    // Nothing is created: a mistyped path or URL fails (exit 1) instead of cleaning an
    // empty new store forever.
    let store = match store::open_existing(&settings) {
        Ok(store) => store,
        Err(e) => return fail(e),
    };
    let Some(deletion) = store.expired_deletion() else {
        say(format_args!("This store {NOTHING}"));
        return ExitCode::SUCCESS;
    };
    let started = Instant::now();
    let terminal = std::io::stdout().is_terminal();
    let mut shown = false;
    let mut progress = |sweep: &Sweep| {
        // A progress line only where someone watches, and only for a large directory.
        if terminal && sweep.in_progress() && sweep.scanned() >= 10_000 {
            let r = sweep.report();
            let _ = write!(
                std::io::stdout(),
                "\r{} entries scanned: {} expired, {} corrupt, {} leftovers removed, {} kept ",
                sweep.scanned(),
                r.expired,
                r.corrupt,
                r.leftovers,
                r.kept
            );
            let _ = std::io::stdout().flush();
            shown = true;
        }
    };
    let result = deletion.clear_expired_with_progress(Duration::from_millis(250), &mut progress);
    if shown {
        say(format_args!(""));
    }
    match result {
        Ok(report) => {
            say(format_args!(
                "Removed {} expired sessions, {} corrupt session files and {} leftovers of crashed writes; \
                 kept {} sessions; skipped {} other entries; in {} ms.",
                report.expired,
                report.corrupt,
                report.leftovers,
                report.kept,
                report.skipped,
                started.elapsed().as_millis()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Prints a line: a closed stdout (`clearsessions | head -0`) is no reason to panic.
fn say(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout(), "{args}");
}
