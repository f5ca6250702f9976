//! `runserver --workers N`: one supervisor holds the port and keeps N single-threaded worker
//! processes serving it (`SO_REUSEPORT`), replacing any that dies.

use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::server::shared_socket;

/// The line a worker prints on stdout once it listens ([`Supervisor::announce_ready`]).
const WORKER_READY: &str = "filesession worker ready";
/// How long a worker may take to start listening.
const WORKER_START: Duration = Duration::from_secs(10);
/// How long workers get to finish their requests after SIGTERM before SIGKILL.
const WORKER_STOP: Duration = Duration::from_secs(10);
/// How often the supervisor looks for dead workers.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// Keeps N worker processes on one port.
pub struct Supervisor {
    addr: SocketAddr,
    spawn: Box<dyn Fn(SocketAddr) -> Command + Send>,
    workers: Vec<Child>,
    _port: TcpListener,
    stop: Arc<AtomicBool>,
}

impl Supervisor {
    /// Called by a worker once it listens: tells the supervisor that started it (the
    /// worker protocol: one line on the worker's stdout, with its process id).
    ///
    /// # Errors
    /// Stdout cannot be written (the supervisor is gone).
    pub fn announce_ready() -> io::Result<()> {
        use std::io::Write;
        let mut out = io::stdout().lock();
        writeln!(out, "{WORKER_READY} {}", std::process::id())?;
        out.flush()
    }

    /// Holds `addr` (resolving port 0 to a real port) and starts `count` workers, each a
    /// command from `spawn(addr)`, which must bind `addr` with `SO_REUSEPORT`
    /// ([`Server::bind_shared`](crate::Server::bind_shared)) and then call
    /// [`Supervisor::announce_ready`]. Returns once every worker listens. SIGINT and SIGTERM are caught from here on.
    ///
    /// # Errors
    /// The port cannot be held, or a worker does not start.
    pub fn start(
        addr: SocketAddr,
        count: usize,
        spawn: Box<dyn Fn(SocketAddr) -> Command + Send>,
    ) -> io::Result<Supervisor> {
        let port = shared_socket(addr, false)?;
        let addr = port.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
        let mut supervisor = Supervisor {
            addr,
            spawn,
            workers: Vec::with_capacity(count),
            _port: port,
            stop,
        };
        for _ in 0..count.max(1) {
            let worker = supervisor.start_worker()?;
            supervisor.workers.push(worker);
        }
        Ok(supervisor)
    }

    /// The address the workers serve.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The workers' process ids.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(Child::id).collect()
    }

    fn start_worker(&self) -> io::Result<Child> {
        let mut child = (self.spawn)(self.addr)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout from the worker"))?;
        let (ready, is_ready) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                match line {
                    Ok(line) if line.starts_with(WORKER_READY) => {
                        let _ = ready.send(());
                        break;
                    }
                    Ok(line) => println!("{line}"),
                    Err(_) => return,
                }
            }
            // Pass on whatever else the worker prints.
            for line in lines.map_while(Result::ok) {
                println!("{line}");
            }
        });
        match is_ready.recv_timeout(WORKER_START) {
            Ok(()) => Ok(child),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::other(format!(
                    "a worker did not start listening on {} within {} s",
                    self.addr,
                    WORKER_START.as_secs()
                )))
            }
        }
    }

    /// Watches the workers until SIGINT or SIGTERM: a worker that dies is logged and
    /// replaced at once. Then every worker gets SIGTERM, finishes the request in hand and
    /// exits (SIGKILL after 10 s).
    ///
    /// # Errors
    /// A replacement worker cannot be started.
    pub fn run(mut self) -> io::Result<()> {
        while !self.stop.load(Ordering::SeqCst) {
            for i in 0..self.workers.len() {
                if let Ok(Some(status)) = self.workers[i].try_wait() {
                    log::warn!(
                        "worker {} exited ({status}); starting another",
                        self.workers[i].id()
                    );
                    if self.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let worker = self.start_worker()?;
                    log::info!("worker {} started", worker.id());
                    self.workers[i] = worker;
                }
            }
            thread::sleep(WATCH_EVERY);
        }
        self.stop_workers();
        Ok(())
    }

    fn stop_workers(&mut self) {
        for worker in &self.workers {
            if let Some(pid) = Pid::from_raw(worker.id() as i32) {
                let _ = kill_process(pid, Signal::TERM);
            }
        }
        let deadline = Instant::now() + WORKER_STOP;
        for worker in &mut self.workers {
            loop {
                match worker.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = worker.kill();
                        let _ = worker.wait();
                        break;
                    }
                    Ok(None) => thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}
