//! `runserver`: one process, or a supervisor and its workers on one port.

use std::io::Write;
use std::process::ExitCode;

use filesession::{App, Engine, Locking, Server, SessionMiddleware, Settings, Supervisor, store};

use crate::app::demo_router;

use crate::cli::parse_addrport;
use crate::fail;

/// "up to N open files", the soft `RLIMIT_NOFILE` in force, for the banner.
fn open_files_text() -> String {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        Some(n) => format!("up to {n} open files"),
        None => "no limit on open files".to_string(),
    }
}

/// The address to listen on and the demo app over the store the settings name; `Err` is
/// the exit after the message saying why not.
fn demo_app(addrport: &str, settings: Settings) -> Result<(std::net::SocketAddr, App), ExitCode> {
    let addr = parse_addrport(addrport).map_err(fail)?;
    let store = store::open(&settings).map_err(fail)?;
    Ok((
        addr,
        App::new(demo_router(), SessionMiddleware::new(store, settings)),
    ))
}

pub(crate) fn runserver(addrport: &str, settings: Settings) -> ExitCode {
    let sessions = store_text(&settings);
    let locking = match (settings.engine, settings.locking) {
        // Nothing on the server to lock or merge.
        (Engine::SignedCookies, _) => "no",
        (_, Locking::Merge) => "merge",
        (_, Locking::Request) => "request",
    };
    let (addr, app) = match demo_app(addrport, settings) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
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
            // stdout may be gone (a closed pipe): nothing to tell then, and no panic.
            let _ = writeln!(std::io::stdout(), "Server stopped.");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Set by the supervisor in its workers' environment.
pub(crate) const WORKER_ENV: &str = "FILESESSION_WORKER";

/// The settings as the environment variables a worker reads them from (every setting of
/// [`SETTINGS`](filesession::SETTINGS); a worker serves alone), and the supervisor's pid.
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
        Engine::Db => format!(
            "table {} of {}",
            settings.session_table(),
            filesession::redacted(&settings.database_url)
        ),
        Engine::SignedCookies => "signed cookies (nothing on the server)".to_owned(),
        Engine::CachedDb => format!(
            "table {} of {}, cached in Redis at {}",
            settings.db_table,
            filesession::redacted(&settings.database_url),
            filesession::redacted(&settings.redis_url)
        ),
    }
}

/// `runserver --workers N`: hold the port, keep N workers on it.
pub(crate) fn supervise(addrport: &str, settings: Settings) -> ExitCode {
    let workers = settings.workers;
    let addr = match parse_addrport(addrport) {
        Ok(addr) => addr,
        Err(e) => return fail(e),
    };
    // Check the store once here, so a bad SESSION_FILE_PATH is refused before any worker.
    if let Err(e) = store::open(&settings) {
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
    let _ = writeln!(
        std::io::stdout(),
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
            // stdout may be gone (a closed pipe): nothing to tell then, and no panic.
            let _ = writeln!(std::io::stdout(), "Server stopped.");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// One worker of `runserver --workers N`: the same loop, on the shared port.
pub(crate) fn worker(addrport: &str, settings: Settings) -> ExitCode {
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
    let (addr, app) = match demo_app(addrport, settings) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let server = match Server::bind_shared(addr, app) {
        Ok(server) => server,
        Err(e) => return fail(format!("worker cannot listen on {addr}: {e}")),
    };
    if let Err(e) = server.stop_handle().stop_on_signals() {
        return fail(format!("cannot install the signal handlers: {e}"));
    }
    if let Err(e) = Supervisor::announce_ready() {
        return fail(format!(
            "cannot tell the supervisor this worker listens: {e}"
        ));
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
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
        settings.engine = Engine::Db;
        settings.database_url = "postgres://app:s3cret@db.internal:5432/app".into();
        let text = store_text(&settings);
        assert_eq!(
            text,
            "table filesession_session of postgres://app:***@db.internal:5432/app"
        );
    }
}
