//! `filesession`: the command line. Parses arguments and settings, then calls the library.

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Arg, ArgAction, ArgMatches};
use filesession::{
    App, Engine, Locking, SETTINGS, Server, SessionMiddleware, Settings, Supervisor, Sweep,
    WORKER_READY, demo_router, file_store, open_file_store, raise_open_files_limit,
};

/// The command line: two subcommands, and every setting of [`SETTINGS`] as a global flag
/// with its environment variable and its Django name as an alias
/// (`--session-cookie-age 3600`, `SESSION_COOKIE_AGE=3600`, `--SESSION_COOKIE_AGE 3600`).
fn cli() -> clap::Command {
    let mut command = clap::Command::new("filesession")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Django's session framework in Rust: every session a JSON file under SESSION_FILE_PATH.")
        .long_about(
            "Django's session framework in Rust: every session a JSON file under \
             SESSION_FILE_PATH.\n\nEvery setting is a flag and an environment variable of the \
             Django name (e.g. --session-cookie-age 3600 or SESSION_COOKIE_AGE=3600).",
        )
        .subcommand(
            clap::Command::new("runserver")
                .about("Serve the demo app, as Django's runserver (the default command).")
                .arg(
                    Arg::new("addrport")
                        .value_name("ADDR:PORT")
                        .default_value("127.0.0.1:8000")
                        .help("Where to listen: PORT, ADDR:PORT or [IPv6]:PORT."),
                ),
        )
        .subcommand(clap::Command::new("clearsessions").about(
            "Remove expired sessions, corrupt session files and leftovers of crashed writes.",
        ));
    for setting in SETTINGS {
        let mut arg = Arg::new(setting.name)
            .long(setting.flag)
            .alias(setting.name)
            .env(setting.name)
            .value_name(setting.name)
            .help(setting.help)
            .global(true)
            .action(ArgAction::Set);
        if !setting.default.is_empty() {
            arg = arg.default_value(setting.default);
        }
        if setting.boolean {
            arg = arg.num_args(0..=1).default_missing_value("true");
        }
        command = command.arg(arg);
    }
    command
}

/// A setting's text as given: after the subcommand, before it, from the environment, or its
/// default.
fn given(matches: &ArgMatches, name: &str) -> Option<String> {
    let sub = matches.subcommand().map(|(_, m)| m);
    sub.and_then(|m| m.get_one::<String>(name))
        .or_else(|| matches.get_one::<String>(name))
        .cloned()
}

/// Log records (store warnings, corrupt files) to stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("{}: {}", record.level(), record.args());
        }
    }
    fn flush(&self) {}
}

/// `8000`, `0.0.0.0:8000`, `[::1]:8000`, `localhost:8000`.
fn parse_addrport(text: &str) -> Result<SocketAddr, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = text
            .parse()
            .map_err(|_| format!("{text:?} is not a port number"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("{text:?} is not a valid port number or address:port pair"))
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("filesession: error: {message}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let _ = log::set_logger(&StderrLog).map(|()| log::set_max_level(log::LevelFilter::Info));
    let matches = cli().get_matches();
    let settings = match Settings::from_values(|name| given(&matches, name)) {
        Ok(settings) => settings,
        Err(e) => return fail(e),
    };
    match matches.subcommand() {
        Some(("clearsessions", _)) => clearsessions(&settings),
        other => {
            let addrport = other
                .and_then(|(_, m)| m.get_one::<String>("addrport").cloned())
                .unwrap_or_else(|| "127.0.0.1:8000".into());
            if let Err(e) = raise_open_files_limit() {
                log::warn!("cannot raise the limit of open files to its hard limit: {e}");
            }
            if std::env::var_os(WORKER_ENV).is_some() {
                worker(&addrport, settings)
            } else if settings.workers > 1 {
                supervise(&addrport, settings)
            } else {
                runserver(&addrport, settings)
            }
        }
    }
}

/// "up to N open files", the soft `RLIMIT_NOFILE` in force, for the banner.
fn open_files_text() -> String {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        Some(n) => format!("up to {n} open files"),
        None => "no limit on open files".to_string(),
    }
}

fn runserver(addrport: &str, settings: Settings) -> ExitCode {
    let addr = match parse_addrport(addrport) {
        Ok(addr) => addr,
        Err(e) => return fail(e),
    };
    let store = match file_store(&settings) {
        Ok(store) => store,
        Err(e) => return fail(e),
    };
    let sessions = store_text(&settings);
    let locking = match settings.locking {
        Locking::Merge => "merge",
        Locking::Request => "request",
    };
    let app = App::new(demo_router(), SessionMiddleware::new(store, settings));
    let server = match Server::bind(addr, app) {
        Ok(server) => server,
        Err(e) => return fail(format!("cannot listen on {addr}: {e}")),
    };
    let bound = server.local_addr().unwrap_or(addr);
    if let Err(e) = server.stop_handle().stop_on_signals() {
        return fail(format!("cannot install the signal handlers: {e}"));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "filesession {}: sessions in {sessions} ({locking} locking); {}\n\
         Starting development server at http://{bound}/\n\
         Quit the server with CONTROL-C.",
        env!("CARGO_PKG_VERSION"),
        open_files_text()
    );
    let _ = out.flush();
    drop(out);
    match server.run() {
        Ok(()) => {
            println!("Server stopped.");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Set by the supervisor in its workers' environment.
const WORKER_ENV: &str = "FILESESSION_WORKER";

/// The settings as the environment variables a worker reads them from (every setting of
/// [`SETTINGS`]; a worker serves alone), and the supervisor's pid.
fn settings_env(s: &Settings) -> Vec<(&'static str, String)> {
    let mut env = s.to_values();
    env.retain(|(name, _)| *name != "SESSION_WORKERS");
    env.push(("SESSION_WORKERS", "1".to_string()));
    env.push((WORKER_ENV, std::process::id().to_string()));
    env
}

/// Where sessions live, for the banner: `sessions/` or `Redis at redis://:***@host/0` (a
/// password is never printed).
fn store_text(settings: &Settings) -> String {
    match settings.engine {
        Engine::File => format!("{}/", settings.file_path.display()),
        Engine::Redis => format!("Redis at {}", filesession::redacted(&settings.redis_url)),
    }
}

/// `runserver --workers N`: hold the port, keep N workers on it.
fn supervise(addrport: &str, settings: Settings) -> ExitCode {
    let workers = settings.workers;
    let addr = match parse_addrport(addrport) {
        Ok(addr) => addr,
        Err(e) => return fail(e),
    };
    // Check the store once here, so a bad SESSION_FILE_PATH is refused before any worker.
    if let Err(e) = file_store(&settings) {
        return fail(e);
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(format!("cannot find this program to start workers: {e}")),
    };
    let env = settings_env(&settings);
    let spawn = Box::new(move |addr: std::net::SocketAddr| {
        let mut command = std::process::Command::new(&exe);
        command.arg("runserver").arg(addr.to_string());
        command.env_remove("SESSION_COOKIE_DOMAIN");
        command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        command
    });
    let supervisor = match Supervisor::start(addr, usize::from(workers), spawn) {
        Ok(supervisor) => supervisor,
        Err(e) => return fail(format!("cannot start the workers on {addr}: {e}")),
    };
    println!(
        "filesession {}: sessions in {} ({} workers: {:?}); {}\n\
         Starting development server at http://{}/\n\
         Quit the server with CONTROL-C.",
        env!("CARGO_PKG_VERSION"),
        store_text(&settings),
        workers,
        supervisor.worker_pids(),
        open_files_text(),
        supervisor.addr()
    );
    let _ = std::io::stdout().flush();
    match supervisor.run() {
        Ok(()) => {
            println!("Server stopped.");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// One worker of `runserver --workers N`: the same loop, on the shared port.
fn worker(addrport: &str, settings: Settings) -> ExitCode {
    // A worker outlives no supervisor, however the supervisor ends (even SIGKILL).
    let parent = std::env::var(WORKER_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    if parent
        .is_some_and(|p| rustix::process::getppid().map(|pp| pp.as_raw_nonzero().get()) != Some(p))
    {
        return fail("the supervisor is gone");
    }
    let addr = match parse_addrport(addrport) {
        Ok(addr) => addr,
        Err(e) => return fail(e),
    };
    let store = match file_store(&settings) {
        Ok(store) => store,
        Err(e) => return fail(e),
    };
    let app = App::new(demo_router(), SessionMiddleware::new(store, settings));
    let server = match Server::bind_shared(addr, app) {
        Ok(server) => server,
        Err(e) => return fail(format!("worker cannot listen on {addr}: {e}")),
    };
    if let Err(e) = server.stop_handle().stop_on_signals() {
        return fail(format!("cannot install the signal handlers: {e}"));
    }
    println!("{WORKER_READY} {}", std::process::id());
    let _ = std::io::stdout().flush();
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn clearsessions(settings: &Settings) -> ExitCode {
    if settings.engine == Engine::Redis {
        println!("Redis expires sessions by itself (each session's TTL): nothing to clear.");
        return ExitCode::SUCCESS;
    }
    let store = match open_file_store(settings) {
        Ok(store) => store,
        Err(e) => return fail(e),
    };
    let started = Instant::now();
    let terminal = std::io::stdout().is_terminal();
    let mut shown = false;
    let mut progress = |sweep: &Sweep| {
        // A progress line only where someone watches, and only for a large directory.
        if terminal && sweep.in_progress() && sweep.scanned() >= 10_000 {
            let r = sweep.report();
            print!(
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
    let result = store.clear_expired_with_progress(Duration::from_millis(250), &mut progress);
    if shown {
        println!();
    }
    match result {
        Ok(report) => {
            println!(
                "Removed {} expired sessions, {} corrupt session files and {} leftovers of crashed writes; \
                 kept {} sessions; skipped {} other entries; in {} ms.",
                report.expired,
                report.corrupt,
                report.leftovers,
                report.kept,
                report.skipped,
                started.elapsed().as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_names_the_store_in_use_without_its_password() {
        let mut settings = Settings {
            engine: Engine::Redis,
            redis_url: "redis://:hunter2@cache.internal:6380/3".into(),
            ..Settings::default()
        };
        let text = store_text(&settings);
        assert_eq!(text, "Redis at redis://:***@cache.internal:6380/3");
        assert!(!text.contains("hunter2"));
        settings.engine = Engine::File;
        settings.file_path = "/var/lib/app/sessions".into();
        assert_eq!(store_text(&settings), "/var/lib/app/sessions/");
        settings.redis_url = "not a url with a secret".into();
        settings.engine = Engine::Redis;
        assert_eq!(store_text(&settings), "Redis at <unparsable URL>");
    }
}
