//! The real `zuora-auth-proxy` binary as a child process: spawned on a configuration file, its
//! JSON log read line by line as it comes, signalled with `kill`, and its exit awaited.
//! Needs `support::exe`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use super::exe::command;

/// Where the binary listens, from its start-up log line.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub addr: SocketAddr,
    #[allow(dead_code)] // read by the tests that scrape the binary's metrics
    pub admin: Option<SocketAddr>,
}

/// The proxy binary, its log lines read as they come; killed if the test ends first.
pub struct Binary {
    pid: u32,
    log: Mutex<Log>,
    exit: watch::Receiver<Option<ExitStatus>>,
}

/// The binary's stderr: lines still in the channel, and those taken out of it.
struct Log {
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Log {
    fn catch_up(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }
}

impl Binary {
    /// `run --config <config>` with an empty environment (see [`command`]).
    #[allow(dead_code)] // tests/binary.rs sets an environment of its own
    pub fn spawn(config: &Path) -> Binary {
        Binary::spawn_from(command(), config)
    }

    /// `run --config <config>` by `command`, which names the binary and sets its environment.
    pub fn spawn_from(mut command: Command, config: &Path) -> Binary {
        let mut child = command
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let pid = child.id();
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        let (exited, exit) = watch::channel(None);
        // Drains the pipe for the process's whole life, so logging never blocks it; the end of
        // its output is the process's end, so the same thread reaps it and reports the exit.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
            let status = child.wait().expect("wait for the binary");
            let _ = exited.send(Some(status));
        });
        Binary {
            pid,
            log: Mutex::new(Log {
                lines,
                seen: Vec::new(),
            }),
            exit,
        }
    }

    #[allow(dead_code)] // for the tests that read the process's memory
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads log lines until the start-up line and returns the addresses it names.
    pub async fn listening(&mut self) -> Listening {
        let log = self.log.get_mut().unwrap_or_else(PoisonError::into_inner);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while let Ok(Some(line)) = tokio::time::timeout_at(deadline, log.lines.recv()).await {
            log.seen.push(line.clone());
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(listen) = json["listen"].as_str() {
                // `admin` is logged as an optional address: `Some(127.0.0.1:9090)` or `None`.
                let admin = json["admin"].as_str().and_then(|a| {
                    let a = a.strip_prefix("Some(").and_then(|a| a.strip_suffix(')')).unwrap_or(a);
                    a.parse().ok()
                });
                return Listening {
                    addr: listen.parse().expect("a socket address"),
                    admin,
                };
            }
        }
        panic!("no listening line within 15 s:\n{}", log.seen.join("\n"))
    }

    /// The log lines received so far.
    pub fn log(&self) -> String {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.catch_up();
        log.seen.join("\n")
    }

    pub fn signal(&self, name: &str) {
        assert!(self.exited().is_none(), "kill -{name}: the binary has exited");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// How the process ended, if it has.
    #[allow(dead_code)] // for the tests that check the binary is still up
    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits for the process to exit, for at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let exited = tokio::time::timeout(within, self.exit.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|status| *status.ok()?);
        exited.unwrap_or_else(|| panic!("the binary did not exit within {within:?}\n{}", self.log()))
    }

    /// Sends SIGTERM, waits (10 s at most) for the exit, and returns its code and every log line.
    #[allow(dead_code)] // for the tests that do not check the drain itself
    pub async fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(10)).await;
        // The process is reaped only after its output ended: every line is in the channel.
        let log = self.log.get_mut().unwrap_or_else(PoisonError::into_inner);
        log.catch_up();
        (status.code(), std::mem::take(&mut log.seen))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = Command::new("kill").arg("-KILL").arg(self.pid.to_string()).status();
        }
    }
}
