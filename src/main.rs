//! `filesession`: the command line. Parses arguments and settings, then calls the library.

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use filesession::{
    App, Engine, Locking, SameSite, Server, SessionMiddleware, Settings, Supervisor, Sweep,
    WORKER_READY, demo_router, file_store, open_file_store, raise_open_files_limit,
};

/// Django's session framework in Rust: every session a JSON file under SESSION_FILE_PATH.
///
/// Every setting is a flag and an environment variable of the Django name
/// (e.g. --session-cookie-age 3600 or SESSION_COOKIE_AGE=3600).
#[derive(Parser)]
#[command(name = "filesession", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: SettingsArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the demo app, as Django's runserver (the default command).
    Runserver {
        /// Where to listen: PORT, ADDR:PORT or [IPv6]:PORT.
        #[arg(value_name = "ADDR:PORT", default_value = "127.0.0.1:8000")]
        addrport: String,
    },
    /// Remove expired sessions, corrupt session files and leftovers of crashed writes.
    Clearsessions,
}

#[derive(Args)]
struct SettingsArgs {
    /// The session cookie's name.
    #[arg(
        long,
        global = true,
        env = "SESSION_COOKIE_NAME",
        alias = "SESSION_COOKIE_NAME",
        value_name = "SESSION_COOKIE_NAME",
        default_value = "sessionid"
    )]
    session_cookie_name: String,

    /// Session lifetime in seconds (cookie Max-Age and server-side expiry).
    #[arg(
        long,
        global = true,
        env = "SESSION_COOKIE_AGE",
        alias = "SESSION_COOKIE_AGE",
        value_name = "SESSION_COOKIE_AGE",
        default_value_t = 1_209_600
    )]
    session_cookie_age: u64,

    /// The cookie's Domain attribute; none means a host-only cookie.
    #[arg(
        long,
        global = true,
        env = "SESSION_COOKIE_DOMAIN",
        alias = "SESSION_COOKIE_DOMAIN",
        value_name = "SESSION_COOKIE_DOMAIN"
    )]
    session_cookie_domain: Option<String>,

    /// Mark the cookie Secure (HTTPS only).
    #[arg(long, global = true, env = "SESSION_COOKIE_SECURE", alias = "SESSION_COOKIE_SECURE",
          value_name = "SESSION_COOKIE_SECURE", default_value = "false", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    session_cookie_secure: bool,

    /// The cookie's Path attribute.
    #[arg(
        long,
        global = true,
        env = "SESSION_COOKIE_PATH",
        alias = "SESSION_COOKIE_PATH",
        value_name = "SESSION_COOKIE_PATH",
        default_value = "/"
    )]
    session_cookie_path: String,

    /// Mark the cookie HttpOnly (hidden from JavaScript).
    #[arg(long, global = true, env = "SESSION_COOKIE_HTTPONLY", alias = "SESSION_COOKIE_HTTPONLY",
          value_name = "SESSION_COOKIE_HTTPONLY", default_value = "true", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    session_cookie_httponly: bool,

    /// The cookie's SameSite attribute: Strict, Lax, None, or false to omit it.
    #[arg(long, global = true, env = "SESSION_COOKIE_SAMESITE", alias = "SESSION_COOKIE_SAMESITE",
          value_name = "SESSION_COOKIE_SAMESITE", default_value = "Lax",
          value_parser = parse_samesite)]
    session_cookie_samesite: SameSiteSetting,

    /// Save the session on every request, refreshing its expiry.
    #[arg(long, global = true, env = "SESSION_SAVE_EVERY_REQUEST", alias = "SESSION_SAVE_EVERY_REQUEST",
          value_name = "SESSION_SAVE_EVERY_REQUEST", default_value = "false", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    session_save_every_request: bool,

    /// Give sessions with the default expiry a browser-session cookie.
    #[arg(long, global = true, env = "SESSION_EXPIRE_AT_BROWSER_CLOSE",
          alias = "SESSION_EXPIRE_AT_BROWSER_CLOSE", value_name = "SESSION_EXPIRE_AT_BROWSER_CLOSE",
          default_value = "false", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    session_expire_at_browser_close: bool,

    /// The sessions directory (created 0700 if missing).
    #[arg(
        long,
        global = true,
        env = "SESSION_FILE_PATH",
        alias = "SESSION_FILE_PATH",
        value_name = "SESSION_FILE_PATH",
        default_value = "sessions"
    )]
    session_file_path: PathBuf,

    /// merge: concurrent requests keep each other's changes; request: one request of a
    /// session at a time (exact counters).
    #[arg(long, global = true, env = "SESSION_LOCKING", alias = "SESSION_LOCKING",
          value_name = "SESSION_LOCKING", default_value = "merge",
          value_parser = parse_locking)]
    session_locking: Locking,

    /// fsync every write (survives power loss; slower).
    #[arg(long, global = true, env = "SESSION_FILE_FSYNC", alias = "SESSION_FILE_FSYNC",
          value_name = "SESSION_FILE_FSYNC", default_value = "false", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    session_file_fsync: bool,

    /// Seconds a request waits for a session's lock before answering 503.
    #[arg(long, global = true, env = "SESSION_LOCK_TIMEOUT", alias = "SESSION_LOCK_TIMEOUT",
          value_name = "SESSION_LOCK_TIMEOUT", default_value = "3", value_parser = parse_seconds)]
    session_lock_timeout: Duration,

    /// The largest request body in bytes.
    #[arg(long, global = true, env = "DATA_UPLOAD_MAX_MEMORY_SIZE",
          alias = "DATA_UPLOAD_MAX_MEMORY_SIZE", value_name = "DATA_UPLOAD_MAX_MEMORY_SIZE",
          default_value_t = filesession::DEFAULT_MAX_BODY)]
    data_upload_max_memory_size: usize,

    /// Seconds between the server's own cleanup passes (expired sessions, leftovers of
    /// crashed writes), done a few milliseconds at a time between requests; 0 = off.
    #[arg(
        long,
        global = true,
        env = "SESSION_GC_INTERVAL",
        alias = "SESSION_GC_INTERVAL",
        value_name = "SESSION_GC_INTERVAL",
        default_value_t = 0
    )]
    session_gc_interval: u64,

    /// Where sessions live: file (one JSON file each) or redis (needs --features redis).
    #[arg(long, global = true, env = "SESSION_ENGINE", alias = "SESSION_ENGINE",
          value_name = "SESSION_ENGINE", default_value = "file",
          value_parser = Engine::parse_setting)]
    session_engine: Engine,

    /// The Redis of SESSION_ENGINE=redis.
    #[arg(long, global = true, env = "SESSION_REDIS_URL", alias = "SESSION_REDIS_URL",
          value_name = "SESSION_REDIS_URL", default_value = filesession::DEFAULT_REDIS_URL)]
    session_redis_url: String,

    /// Host names served, comma-separated (Django's ALLOWED_HOSTS): a leading dot matches
    /// subdomains too, * matches all; another Host gets 400.
    #[arg(long, global = true, env = "ALLOWED_HOSTS", alias = "ALLOWED_HOSTS",
          value_name = "ALLOWED_HOSTS", default_value = ".localhost,127.0.0.1,[::1]",
          value_parser = parse_list)]
    allowed_hosts: HostList,

    /// Origins allowed to send unsafe requests to the JSON API besides the request's own,
    /// comma-separated (Django's CSRF_TRUSTED_ORIGINS): https://example.com,
    /// https://*.example.com.
    #[arg(long, global = true, env = "CSRF_TRUSTED_ORIGINS", alias = "CSRF_TRUSTED_ORIGINS",
          value_name = "CSRF_TRUSTED_ORIGINS", default_value = "", value_parser = parse_origins)]
    csrf_trusted_origins: HostList,

    /// Worker processes serving the port, each a single-threaded loop; a dead one is
    /// replaced at once. 1 = this process serves alone.
    #[arg(long, global = true, env = "SESSION_WORKERS", alias = "SESSION_WORKERS",
          value_name = "SESSION_WORKERS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
}

/// A comma-separated list setting (`ALLOWED_HOSTS`, `CSRF_TRUSTED_ORIGINS`).
#[derive(Clone, Debug)]
struct HostList(Vec<String>);

fn parse_list(text: &str) -> Result<HostList, String> {
    Ok(HostList(
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    ))
}

fn parse_origins(text: &str) -> Result<HostList, String> {
    let list = parse_list(text)?;
    match list.0.iter().find(|o| !o.contains("://")) {
        Some(bad) => Err(format!(
            "CSRF_TRUSTED_ORIGINS entries need a scheme (https://{bad}), not {bad:?}"
        )),
        None => Ok(list),
    }
}

/// `SESSION_COOKIE_SAMESITE`: `None` omits the attribute (Django's `False`).
#[derive(Clone, Copy)]
struct SameSiteSetting(Option<SameSite>);

fn parse_samesite(text: &str) -> Result<SameSiteSetting, String> {
    SameSite::parse_setting(text).map(SameSiteSetting)
}

fn parse_locking(text: &str) -> Result<Locking, String> {
    Locking::parse(text)
        .ok_or_else(|| format!("SESSION_LOCKING must be merge or request, not {text:?}"))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| *d <= Duration::from_secs(3600))
        .ok_or_else(|| format!("SESSION_LOCK_TIMEOUT must be seconds from 0 to 3600, not {text:?}"))
}

impl SettingsArgs {
    fn into_settings(self) -> Settings {
        Settings {
            cookie_name: self.session_cookie_name,
            cookie_age: Duration::from_secs(self.session_cookie_age),
            cookie_domain: self.session_cookie_domain.filter(|d| !d.is_empty()),
            cookie_secure: self.session_cookie_secure,
            cookie_path: self.session_cookie_path,
            cookie_httponly: self.session_cookie_httponly,
            cookie_samesite: self.session_cookie_samesite.0,
            save_every_request: self.session_save_every_request,
            expire_at_browser_close: self.session_expire_at_browser_close,
            file_path: self.session_file_path,
            locking: self.session_locking,
            file_fsync: self.session_file_fsync,
            lock_timeout: self.session_lock_timeout,
            max_body: self.data_upload_max_memory_size,
            gc_interval: (self.session_gc_interval > 0)
                .then(|| Duration::from_secs(self.session_gc_interval)),
            engine: self.session_engine,
            redis_url: self.session_redis_url,
            allowed_hosts: self.allowed_hosts.0,
            csrf_trusted_origins: self.csrf_trusted_origins.0,
        }
    }
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
    let cli = Cli::parse();
    let workers = cli.settings.workers;
    let settings = cli.settings.into_settings();
    if let Err(e) = settings.validate() {
        return fail(e);
    }
    match cli.command.unwrap_or(Command::Runserver {
        addrport: "127.0.0.1:8000".into(),
    }) {
        Command::Runserver { addrport } => {
            if let Err(e) = raise_open_files_limit() {
                log::warn!("cannot raise the limit of open files to its hard limit: {e}");
            }
            if std::env::var_os(WORKER_ENV).is_some() {
                worker(&addrport, settings)
            } else if workers > 1 {
                supervise(&addrport, settings, workers)
            } else {
                runserver(&addrport, settings)
            }
        }
        Command::Clearsessions => clearsessions(&settings),
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

/// The settings as the environment variables a worker reads them from.
fn settings_env(s: &Settings) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("SESSION_COOKIE_NAME", s.cookie_name.clone()),
        ("SESSION_COOKIE_AGE", s.cookie_age.as_secs().to_string()),
        ("SESSION_COOKIE_SECURE", s.cookie_secure.to_string()),
        ("SESSION_COOKIE_PATH", s.cookie_path.clone()),
        ("SESSION_COOKIE_HTTPONLY", s.cookie_httponly.to_string()),
        (
            "SESSION_COOKIE_SAMESITE",
            match s.cookie_samesite {
                Some(SameSite::Strict) => "Strict",
                Some(SameSite::Lax) => "Lax",
                Some(SameSite::None) => "None",
                None => "false",
            }
            .to_string(),
        ),
        (
            "SESSION_SAVE_EVERY_REQUEST",
            s.save_every_request.to_string(),
        ),
        (
            "SESSION_EXPIRE_AT_BROWSER_CLOSE",
            s.expire_at_browser_close.to_string(),
        ),
        ("SESSION_FILE_PATH", s.file_path.display().to_string()),
        (
            "SESSION_LOCKING",
            match s.locking {
                Locking::Merge => "merge",
                Locking::Request => "request",
            }
            .to_string(),
        ),
        ("SESSION_FILE_FSYNC", s.file_fsync.to_string()),
        (
            "SESSION_LOCK_TIMEOUT",
            s.lock_timeout.as_secs_f64().to_string(),
        ),
        ("DATA_UPLOAD_MAX_MEMORY_SIZE", s.max_body.to_string()),
        (
            "SESSION_GC_INTERVAL",
            s.gc_interval.map_or(0, |d| d.as_secs()).to_string(),
        ),
        (
            "SESSION_ENGINE",
            match s.engine {
                Engine::File => "file",
                Engine::Redis => "redis",
            }
            .to_string(),
        ),
        ("SESSION_REDIS_URL", s.redis_url.clone()),
        ("ALLOWED_HOSTS", s.allowed_hosts.join(",")),
        ("CSRF_TRUSTED_ORIGINS", s.csrf_trusted_origins.join(",")),
        ("SESSION_WORKERS", "1".to_string()),
        (WORKER_ENV, std::process::id().to_string()),
    ];
    if let Some(domain) = &s.cookie_domain {
        env.push(("SESSION_COOKIE_DOMAIN", domain.clone()));
    }
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
fn supervise(addrport: &str, settings: Settings, workers: u16) -> ExitCode {
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
