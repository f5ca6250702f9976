//! `filesession`: the command line. Reads the settings, then runs `runserver` (one process,
//! or N workers) or `clearsessions` from the library.

mod app;
mod clear;
mod cli;
mod serve;
mod stderr_log;

use std::process::ExitCode;

use filesession::{Settings, raise_open_files_limit};

/// mimalloc, not glibc's malloc: a W-update request spent a fifth of its time in glibc's
/// allocator (`perf record`: `_int_malloc`, `_int_free`, `malloc_consolidate`,
/// `unlink_chunk`), on the JSON of the session parsed and written.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub(crate) fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("filesession: error: {message}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let _ = log::set_logger(&stderr_log::StderrLog)
        .map(|()| log::set_max_level(log::LevelFilter::Info));
    let matches = cli::cli().get_matches();
    if let Some(name) = cli::secret_on_command_line(&matches) {
        return fail(format!(
            "{name} was given on the command line, where every user of this machine can read \
             it (ps); give it in the environment: {name}=... filesession runserver"
        ));
    }
    let settings = match Settings::from_values(|name| cli::given(&matches, name)) {
        Ok(settings) => settings,
        Err(e) => return fail(e),
    };
    match matches.subcommand() {
        Some(("clearsessions", _)) => clear::clearsessions(&settings),
        other => {
            let addrport = other
                .and_then(|(_, m)| m.get_one::<String>("addrport").cloned())
                .unwrap_or_else(|| "127.0.0.1:8000".into());
            if let Err(e) = raise_open_files_limit() {
                log::warn!("cannot raise the limit of open files to its hard limit: {e}");
            }
            if std::env::var_os(serve::WORKER_ENV).is_some() {
                serve::worker(&addrport, settings)
            } else if settings.workers > 1 {
                serve::supervise(&addrport, settings)
            } else {
                serve::runserver(&addrport, settings)
            }
        }
    }
}
