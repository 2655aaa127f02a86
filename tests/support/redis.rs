//! A real `redis-server` for the cluster tests: started on a free loopback port in a temporary
//! directory, ready once it logs that it accepts connections and answers PING, killed by its
//! PID when dropped. Plus a log capture, a wait for the cluster's mode and a set of started
//! replicas. Needs `support::wait`.
#![allow(dead_code)]

use super::wait::eventually_within;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use url::Url;
use zuora_auth_proxy::cluster::ClusterSettings;

/// How long a starting server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS material for [`RedisServer::start_tls`]: a CA and a server certificate for
/// `localhost` / `127.0.0.1`, as PEM files in the server's directory.
pub struct TlsFiles {
    pub ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    dir: TempDir,
    args: Vec<String>,
    password: Option<String>,
    pub tls: Option<TlsFiles>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a probe socket")
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::build(Vec::new(), None, false)
    }

    /// With `--requirepass`.
    pub fn start_with_password(password: &str) -> RedisServer {
        RedisServer::build(
            vec!["--requirepass".into(), password.into()],
            Some(password.into()),
            false,
        )
    }

    /// A plain port (for inspection) plus a TLS port with a certificate from a fresh CA.
    pub fn start_tls() -> RedisServer {
        RedisServer::build(Vec::new(), None, true)
    }

    fn build(args: Vec<String>, password: Option<String>, tls: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let tls = tls.then(|| write_tls_files(dir.path()));
        let mut server = RedisServer {
            child: None,
            port: 0,
            tls_port: None,
            dir,
            args,
            password,
            tls,
        };
        // A free port can be taken by someone else before redis-server binds it: try again.
        for _ in 0..5 {
            server.port = free_port();
            if server.tls.is_some() {
                server.tls_port = Some(free_port());
            }
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on a free port after 5 tries");
    }

    /// Starts the process on the configured ports; false if it exited before being ready.
    fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let (Some(tls), Some(port)) = (&self.tls, self.tls_port) {
            command
                .args(["--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&tls.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.key_file)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_file)
                .args(["--tls-auth-clients", "no"]);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot run redis-server ({e}): the cluster tests need it \
                 (Debian: apt-get install -y redis-server)"
            ),
        };
        // Redis logs to stdout; keep draining it so it never blocks on a full pipe.
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Ready to accept connections") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let ready = ready_rx.recv_timeout(READY_TIMEOUT).is_ok();
        if !ready || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        self.child = Some(child);
        if self.ping().is_ok() {
            return true;
        }
        self.kill();
        false
    }

    fn ping(&self) -> redis::RedisResult<String> {
        let client = redis::Client::open(self.inspect_info())?;
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(2))?;
        redis::cmd("PING").query(&mut connection)
    }

    fn inspect_info(&self) -> redis::ConnectionInfo {
        use redis::IntoConnectionInfo;
        let mut info = format!("redis://127.0.0.1:{}", self.port)
            .into_connection_info()
            .unwrap();
        if let Some(password) = &self.password {
            info = info
                .clone()
                .set_redis_settings(info.redis_settings().clone().set_password(password));
        }
        info
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `redis://127.0.0.1:<port>` (no password: tests pass it through a file).
    pub fn url(&self) -> Url {
        Url::parse(&format!("redis://127.0.0.1:{}", self.port)).unwrap()
    }

    /// `rediss://localhost:<tls port>`.
    pub fn tls_url(&self) -> Url {
        Url::parse(&format!("rediss://localhost:{}", self.tls_port.expect("a TLS server"))).unwrap()
    }

    /// Cluster settings for this server, with a short lease so that expiry tests stay short,
    /// and a timeout with room for a loaded two-core machine (tests of the timeout itself set
    /// their own).
    pub fn settings(&self) -> ClusterSettings {
        let mut settings = ClusterSettings::new(self.url());
        settings.lease = Duration::from_secs(1);
        settings.timeout = Duration::from_millis(250);
        settings
    }

    /// A synchronous connection of the test's own, to look inside Redis.
    pub fn inspect(&self) -> redis::Connection {
        redis::Client::open(self.inspect_info())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("inspection connection")
    }

    /// Waits until `n` connections subscribe to the cluster's event channel (each `Cluster`
    /// subscribes in the background after `start`).
    pub async fn wait_subscribers(&self, n: usize) {
        let channel = "zuora-auth-proxy:events";
        eventually_within("cluster instances subscribed", Duration::from_secs(5), async || {
            let counts: (String, usize) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query(&mut self.inspect())
                .unwrap();
            (counts.1 == n).then_some(())
        })
        .await;
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port(s), empty.
    pub fn restart(&mut self) {
        self.kill();
        // The port was just released by the killed server: retry briefly if it lingers.
        for _ in 0..20 {
            if self.spawn() {
                return;
            }
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// SIGSTOP: the server keeps its sockets open but answers nothing.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server would not die of SIGTERM; SIGKILL works in any state.
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
        }
        self.kill();
    }
}

fn write_tls_files(dir: &Path) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, "cluster test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let files = TlsFiles {
        ca_file: dir.join("ca.pem"),
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server.key"),
    };
    std::fs::write(&files.ca_file, ca.pem()).unwrap();
    std::fs::write(&files.cert_file, cert.pem()).unwrap();
    std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
    files
}

/// Waits for the cluster's mode to become `up`, for at most `patience`.
pub async fn wait_up(cluster: &zuora_auth_proxy::cluster::Cluster, up: bool, patience: Duration) {
    let mut rx = cluster.watch_up();
    let waited = tokio::time::timeout(patience, rx.wait_for(|now| *now == up)).await;
    assert!(
        waited.is_ok() && cluster.is_up() == up,
        "cluster did not turn up={up} within {patience:?}"
    );
}

/// `n` clusters on `server`, each up and subscribed to the others' events.
pub async fn replicas(server: &RedisServer, n: usize) -> Vec<zuora_auth_proxy::cluster::Cluster> {
    let mut out = Vec::new();
    for _ in 0..n {
        let cluster = zuora_auth_proxy::cluster::Cluster::start(server.settings())
            .await
            .unwrap();
        wait_up(&cluster, true, Duration::from_secs(5)).await;
        out.push(cluster);
    }
    server.wait_subscribers(n).await;
    out
}

/// Every line logged (DEBUG and up) on the current thread while the guard lives. Tests using
/// it run on a current-thread runtime, so tasks they spawn log here too.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
