//! The real `zuora-auth-proxy` binary as a child process: spawned on a configuration file, its
//! JSON log read line by line as it comes, signalled with `kill`, and its exit awaited; and
//! the configuration file it runs on. Needs `support::exe`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use zuora_auth_proxy::mock::{MockZuora, CLIENT_ID};

use super::exe::command;

/// A mock Zuora that accepts `secret`, and a directory holding its CA file and the binary's
/// configuration.
#[allow(dead_code)] // for the tests that write their own configuration for the binary
pub struct Upstream {
    pub mock: MockZuora,
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    secret: String,
}

#[allow(dead_code)] // for the tests that write their own configuration for the binary
impl Upstream {
    pub async fn start(secret: &str) -> Upstream {
        let mock = MockZuora::builder()
            .credentials(CLIENT_ID, secret)
            .start()
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = mock.write_ca(dir.path()).unwrap();
        Upstream {
            mock,
            dir,
            ca,
            secret: secret.to_owned(),
        }
    }

    /// A configuration for one tenant at this mock, trusting its CA, with these `[[routes]]`.
    pub fn config(&self, routes: &str) -> ConfigFile {
        ConfigFile::new(&self.mock.base_url(), &self.secret, routes).ca_file(&self.ca)
    }

    /// Writes `config` as `proxy.toml` in this directory and returns its path.
    pub fn write(&self, config: &ConfigFile) -> PathBuf {
        let path = self.dir.path().join("proxy.toml");
        std::fs::write(&path, config.text()).unwrap();
        path
    }
}

/// A configuration file for the binary: one tenant with an inline secret, a free port, JSON
/// logs at `info`, a 5 s drain and an admin listener on a free port unless told otherwise.
#[allow(dead_code)] // for the tests that write their own configuration for the binary
pub struct ConfigFile {
    base_url: String,
    secret: String,
    routes: String,
    ca_file: Option<PathBuf>,
    admin: &'static str,
    level: String,
}

#[allow(dead_code)] // for the tests that write their own configuration for the binary
impl ConfigFile {
    pub fn new(base_url: &str, secret: &str, routes: &str) -> ConfigFile {
        ConfigFile {
            base_url: base_url.to_owned(),
            secret: secret.to_owned(),
            routes: routes.to_owned(),
            ca_file: None,
            admin: "127.0.0.1:0",
            level: "info".to_owned(),
        }
    }

    pub fn ca_file(mut self, path: &Path) -> ConfigFile {
        self.ca_file = Some(path.to_owned());
        self
    }

    /// `[admin] listen = ""`: no admin listener.
    pub fn no_admin(mut self) -> ConfigFile {
        self.admin = "";
        self
    }

    pub fn level(mut self, level: &str) -> ConfigFile {
        self.level = level.to_owned();
        self
    }

    pub fn text(&self) -> String {
        let ConfigFile {
            base_url,
            secret,
            routes,
            ca_file,
            admin,
            level,
        } = self;
        let ca = ca_file
            .as_ref()
            .map_or(String::new(), |p| format!("ca_file = {:?}\n", p.display().to_string()));
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"

[admin]
listen = "{admin}"

[log]
format = "json"
level = "{level}"

[tenants.default]
base_url = "{base_url}"
client_id = "{CLIENT_ID}"
client_secret = "{secret}"
{ca}
{routes}
"#
        )
    }
}

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
