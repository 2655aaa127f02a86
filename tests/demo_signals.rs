//! `demo` as the binary: it serves until SIGTERM or SIGINT, drains and exits 0; `--once` prints
//! the answer and exits 0; and its temporary directory is gone afterwards, a failed start
//! included. Each run gets a `TMPDIR` of its own, so "gone" is checked without guessing names.
#![cfg(feature = "demo")] // runs the `demo` command

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use zuora_auth_proxy::{DEMO_DIR_PREFIX as DIR_PREFIX, DEMO_JOB_ID as SAMPLE_JOB_ID};

const PATIENCE: Duration = Duration::from_secs(20);

/// The demo binary as a child: its stdout and stderr lines as they come, its exit status once
/// it has one; killed if the test ends first.
struct Demo {
    pid: u32,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    exit: mpsc::Receiver<ExitStatus>,
    exited: Arc<AtomicBool>,
    seen: Vec<String>,
}

impl Demo {
    fn spawn(tmp: &Path, args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_zuora-auth-proxy"))
            .arg("demo")
            .args(args)
            // Nothing of the test's environment (RUST_LOG, *_PROXY) may change the run.
            .env_clear()
            .env("TMPDIR", tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let lines = |pipe: Box<dyn Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().unwrap()));
        let stderr = lines(Box::new(child.stderr.take().unwrap()));
        let pid = child.id();
        let (exit_tx, exit) = mpsc::channel();
        let exited = Arc::new(AtomicBool::new(false));
        {
            let exited = exited.clone();
            std::thread::spawn(move || {
                let status = child.wait().expect("wait");
                exited.store(true, Ordering::SeqCst);
                let _ = exit_tx.send(status);
            });
        }
        Demo {
            pid,
            stdout,
            stderr,
            exit,
            exited,
            seen: Vec::new(),
        }
    }

    /// Reads stdout up to the first line starting with `prefix` (trimmed); returns it.
    fn line_starting(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.trim_start().starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!("no {prefix:?} line on stdout:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {}", self.pid);
    }

    /// The exit status and all of stderr (read to the end of the pipe, which closes at exit).
    fn wait_exit(&self) -> (ExitStatus, String) {
        let status = self.exit.recv_timeout(PATIENCE).expect("the demo exits");
        let mut stderr = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => stderr.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("stderr still open after exit"),
            }
        }
        (status, stderr.join("\n"))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if !self.exited.load(Ordering::SeqCst) {
            let _ = Command::new("kill").arg("-KILL").arg(self.pid.to_string()).status();
        }
    }
}

/// What the demo left in its `TMPDIR`.
fn entries(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect()
}

/// The sample abort over a plain socket: the demo proxy must be serving.
fn abort_through(proxy: SocketAddr) -> String {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "POST /bulk-data/bulk-jobs/{SAMPLE_JOB_ID}/aborts HTTP/1.1\r\nHost: demo\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn serves_until(signal: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Demo::spawn(tmp.path(), &["--listen", "127.0.0.1:0", "--admin", ""]);
    let first = demo.line_starting("mock Zuora");
    let proxy: SocketAddr = first
        .rsplit_once("proxy at http://")
        .expect("the proxy's address")
        .1
        .trim()
        .parse()
        .unwrap();
    demo.line_starting("try:");

    // While it serves, its one directory holds the CA file it printed.
    let dirs = entries(tmp.path());
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let dir = &dirs[0];
    assert!(
        dir.file_name().unwrap().to_str().unwrap().starts_with(DIR_PREFIX),
        "{dir:?}"
    );
    assert!(first.contains(&dir.display().to_string()), "{first}");
    let answer = abort_through(proxy);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""status":"Aborted""#), "{answer}");

    demo.signal(signal);
    let (status, stderr) = demo.wait_exit();
    assert_eq!(status.code(), Some(0), "{status}: {stderr}");
    assert!(stderr.contains("shutdown requested; draining"), "{stderr}");
    assert_eq!(entries(tmp.path()), Vec::<PathBuf>::new(), "the demo's files are gone");
}

#[test]
fn sigterm_drains_exits_0_and_removes_the_demo_files() {
    serves_until("TERM");
}

#[test]
fn sigint_drains_exits_0_and_removes_the_demo_files() {
    serves_until("INT");
}

#[test]
fn once_prints_the_answer_exits_0_and_removes_the_demo_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Demo::spawn(tmp.path(), &["--once"]);
    let body = demo.line_starting("{");
    assert_eq!(body, format!(r#"{{"id":"{SAMPLE_JOB_ID}","status":"Aborted"}}"#));
    let (status, stderr) = demo.wait_exit();
    assert_eq!(status.code(), Some(0), "{status}: {stderr}");
    assert_eq!(entries(tmp.path()), Vec::<PathBuf>::new());
}

#[test]
fn a_failed_start_removes_the_demo_files_too() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let demo = Demo::spawn(tmp.path(), &["--listen", &addr, "--admin", ""]);
    let (status, stderr) = demo.wait_exit();
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    assert_eq!(
        entries(tmp.path()),
        Vec::<PathBuf>::new(),
        "left behind after a failed start"
    );
}
