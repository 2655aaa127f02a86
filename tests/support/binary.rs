//! The real `zuora-auth-proxy` binary as a child process: spawned on a configuration file, its
//! JSON log read line by line as it comes, signalled with `kill`, and waited for.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

/// The harness's listen lines, `[server]` first, then `[admin]`: replace them to give the
/// binary a harness configuration on ports of its own.
pub const LISTEN_ANY: &str = "listen = \"127.0.0.1:0\"";

/// The path of the binary Cargo built for these tests.
pub const EXE: &str = env!("CARGO_BIN_EXE_zuora-auth-proxy");

/// The binary with an empty environment: it reads `ZUORA_PROXY_*`, `RUST_LOG` and `*_PROXY`;
/// none of the test's may leak in.
pub fn command() -> Command {
    let mut command = Command::new(EXE);
    command.env_clear();
    command
}

/// A port that was free a moment ago (the binary binds it itself).
pub fn free_port() -> u16 {
    super::closed_addr().port()
}

/// The proxy binary, its log lines read as they come; killed if the test ends first.
pub struct Binary {
    pub child: Child,
    log: Mutex<Log>,
}

/// The binary's stderr: lines still in the channel, and those taken out of it.
struct Log {
    lines: UnboundedReceiver<String>,
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
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        // Drains the pipe for the process's whole life, so logging never blocks it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Binary {
            child,
            log: Mutex::new(Log {
                lines,
                seen: Vec::new(),
            }),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads log lines until the start-up line and returns the address it names.
    pub async fn listen_addr(&mut self) -> SocketAddr {
        let log = self.log.get_mut().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now() + Duration::from_secs(15);
        for _ in 0..1_000 {
            let Ok(Some(line)) = tokio::time::timeout_at(deadline, log.lines.recv()).await else {
                break;
            };
            log.seen.push(line.clone());
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(listen) = json["listen"].as_str() {
                return listen.parse().expect("a socket address");
            }
        }
        panic!("no listening line within 15 s:\n{}", log.seen.join("\n"))
    }

    /// Polls until the listener on `addr` accepts, for a binary given its port: the binary offers
    /// no other start-up signal but its log.
    pub async fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the binary exited with {status}\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the binary never listened on {addr}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The log lines received so far.
    pub fn log(&self) -> String {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.catch_up();
        log.seen.join("\n")
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, polling (a child's exit has no async notification here).
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        for _ in 0..=within.as_millis() / 20 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the binary did not exit within {within:?}\n{}", self.log())
    }

    /// Sends SIGTERM, waits (10 s at most) for the exit, and returns its code and every log line.
    pub async fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(10)).await;
        let log = self.log.get_mut().unwrap_or_else(PoisonError::into_inner);
        // The reader ends at end of output, once the process is gone.
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), log.lines.recv()).await {
            log.seen.push(line);
        }
        (status.code(), std::mem::take(&mut log.seen))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
