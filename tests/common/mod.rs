//! Shared by the end-to-end tests: start the real binary on a free port with a temp
//! sessions directory, and kill it from a Drop guard so a failing test leaves no orphan.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running `filesession runserver` on 127.0.0.1:<free port>.
pub struct TestServer {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    /// Everything the server printed on stderr so far (the access log).
    pub stderr: Arc<Mutex<String>>,
    /// What it printed on stdout before its address: the banner.
    pub banner: String,
}

impl TestServer {
    /// Starts the server with these extra environment variables.
    pub fn start(env: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, env)
    }

    /// Starts the server with its sessions in `dir/sessions`.
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> TestServer {
        Self::start_wrapped(dir, env, &[])
    }

    /// Starts the server through a wrapper command (`prlimit --nofile=64:64 --`,
    /// `setpriv --reuid=...`), with its sessions in `dir/sessions`.
    pub fn start_wrapped(
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> TestServer {
        let binary = env!("CARGO_BIN_EXE_filesession");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.arg("runserver")
            .arg("127.0.0.1:0")
            .current_dir(dir.path())
            .env_remove("SESSION_COOKIE_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start filesession");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        let mut banner = String::new();
        for line in lines.by_ref() {
            let line = line.expect("read stdout");
            if let Some(rest) = line.strip_prefix("Starting development server at http://") {
                addr = Some(rest.trim_end_matches('/').parse().expect("address"));
                break;
            }
            banner.push_str(&line);
            banner.push('\n');
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let sink = stderr_text.clone();
        let mut stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not start: {}", stderr_text.lock().unwrap());
        };
        TestServer {
            child,
            addr,
            dir,
            stderr: stderr_text,
            banner,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn sessions(&self) -> PathBuf {
        self.dir.path().join("sessions")
    }

    /// The names of the session files (`<key>.json`), sorted.
    pub fn session_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.sessions())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".json"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The parsed JSON of a session file.
    pub fn session_file(&self, key: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.sessions().join(format!("{key}.json")))
            .unwrap_or_else(|e| panic!("session file of {key}: {e}"));
        serde_json::from_str(&text).expect("session file is JSON")
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A ureq agent with a cookie jar that reads 4xx/5xx as values and does not follow
/// redirects.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// The values of every `Set-Cookie` header.
pub fn set_cookies(response: &ureq::http::Response<ureq::Body>) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .collect()
}

pub fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_owned())
}

/// The session key in a `sessionid=<key>; ...` Set-Cookie value.
pub fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}
