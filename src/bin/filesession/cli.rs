//! The command line: clap over the library's settings table, so that every setting is a
//! flag, an environment variable and a `--help` line without being listed here.

use std::net::{SocketAddr, ToSocketAddrs};

use clap::{Arg, ArgAction, ArgMatches};
use filesession::SETTINGS;

/// The command line: two subcommands, and every setting of [`SETTINGS`] as a global flag
/// with its environment variable and its Django name as an alias
/// (`--session-cookie-age 3600`, `SESSION_COOKIE_AGE=3600`, `--SESSION_COOKIE_AGE 3600`).
pub(crate) fn cli() -> clap::Command {
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
            // --help would print each variable's value: DATABASE_URL's password with it.
            .hide_env_values(true)
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
pub(crate) fn given(matches: &ArgMatches, name: &str) -> Option<String> {
    let sub = matches.subcommand().map(|(_, m)| m);
    sub.and_then(|m| m.get_one::<String>(name))
        .or_else(|| matches.get_one::<String>(name))
        .cloned()
}

/// The settings that hold secrets: never taken from the command line, where every user of
/// the machine reads them (`ps`, `/proc/<pid>/cmdline`).
const SECRETS: [&str; 2] = ["SECRET_KEY", "SECRET_KEY_FALLBACKS"];

/// The secret setting given as a flag, if any.
pub(crate) fn secret_on_command_line(matches: &ArgMatches) -> Option<&'static str> {
    let sub = matches.subcommand().map(|(_, m)| m);
    SECRETS.into_iter().find(|name| {
        [Some(matches), sub]
            .into_iter()
            .flatten()
            .any(|m| m.value_source(name) == Some(clap::parser::ValueSource::CommandLine))
    })
}

/// `8000`, `0.0.0.0:8000`, `[::1]:8000`, `localhost:8000`.
pub(crate) fn parse_addrport(text: &str) -> Result<SocketAddr, String> {
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
