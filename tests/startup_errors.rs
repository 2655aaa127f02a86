//! `run` failing to start: once the configuration has loaded, the failure is a log line in the
//! configured format (JSON here), so a log pipeline that parses every line keeps working; a
//! configuration that does not load is plain text, since its log format is unknown.

use serde_json::Value;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A JSON-logging configuration; `listen` and `admin` are the two listener addresses.
fn config(listen: &str, admin: &str, extra_server: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
{extra_server}

[admin]
listen = "{admin}"

[log]
format = "json"
level = "info"

[tenants.default]
# Nothing listens here, and the proxy fails before any fetch.
base_url = "https://127.0.0.1:9"
client_id = "startup-test"
client_secret = "startup-test-secret"

[[routes]]
name = "abort-bulk-job"
method = "POST"
path = "/bulk-data/bulk-jobs/{{id:uuid}}/aborts"
"#
    )
}

fn run(dir: &Path, config: &str) -> Output {
    run_with(dir, config, &[])
}

fn run_with(dir: &Path, config: &str, env: &[(&str, &str)]) -> Output {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_zuora-auth-proxy"))
        .arg("run")
        .arg("--config")
        .arg(&path)
        // No RUST_LOG, ZUORA_PROXY__* or *_PROXY of the test's may change the run.
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

/// Every stderr line is a JSON object; returns them.
fn json_lines(output: &Output) -> Vec<Value> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.trim().is_empty(), "nothing on stderr");
    stderr
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

fn assert_logged_error(output: &Output, needle: &str) {
    assert!(!output.status.success(), "{:?}", output.status);
    assert_eq!(output.status.code(), Some(1), "{:?}", output.status);
    let lines = json_lines(output);
    let error = lines
        .iter()
        .find(|line| line["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR line: {lines:?}"));
    let text = error["error"].as_str().unwrap_or_default();
    assert!(text.contains(needle), "{error}");
}

#[test]
fn a_taken_listen_address_is_a_json_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run(dir.path(), &config(&addr, "", ""));
    assert_logged_error(&output, &format!("cannot listen on {addr}"));
}

#[test]
fn a_taken_admin_address_is_a_json_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run(dir.path(), &config("127.0.0.1:0", &addr, ""));
    assert_logged_error(&output, &format!("cannot listen on {addr}"));
}

#[test]
fn an_unreadable_listener_certificate_is_a_json_error_line() {
    // The files exist, so the configuration loads; their content fails at start.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, "not a certificate\n").unwrap();
    std::fs::write(&key, "not a key\n").unwrap();
    let tls = format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let output = run(dir.path(), &config("127.0.0.1:0", "", &tls));
    assert!(!output.status.success(), "{:?}", output.status);
    let lines = json_lines(&output);
    assert!(
        lines
            .iter()
            .any(|line| line["level"] == "ERROR" && line["error"].is_string()),
        "{lines:?}"
    );
}

#[test]
fn a_configuration_that_does_not_load_is_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), &config("not an address", "", ""));
    assert_eq!(output.status.code(), Some(78), "{:?}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.listen"), "{stderr}");
    assert!(
        serde_json::from_str::<Value>(stderr.lines().next().unwrap_or_default()).is_err(),
        "{stderr}"
    );
}

#[test]
fn a_panic_at_start_is_a_json_error_line() {
    // Tokio refuses this when it builds the runtime, after the configuration loaded.
    let dir = tempfile::tempdir().unwrap();
    let output = run_with(
        dir.path(),
        &config("127.0.0.1:0", "", ""),
        &[("TOKIO_WORKER_THREADS", "0")],
    );
    assert!(!output.status.success(), "{:?}", output.status);
    let lines = json_lines(&output);
    let panic = lines
        .iter()
        .find(|line| line["level"] == "ERROR" && line["message"] == "panicked")
        .unwrap_or_else(|| panic!("no panic line: {lines:?}"));
    assert!(
        panic["panic"]
            .as_str()
            .unwrap_or_default()
            .contains("TOKIO_WORKER_THREADS"),
        "{panic}"
    );
    assert!(panic["location"].is_string(), "{panic}");
}
