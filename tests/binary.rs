//! The `zuora-auth-proxy` binary itself: exit codes of `check-config`, `--version` and
//! `--help`, and a full `run` against the mock, stopped by SIGTERM, whose logs are JSON lines
//! that never show a token or the client secret.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod binary;
    pub mod client;
    pub mod exe;
    pub mod fixtures;
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use support::binary::{Binary, ConfigFile, Upstream};
use support::client::*;
use support::exe::EXE;
use support::fixtures::*;
use zuora_auth_proxy::mock::CLIENT_ID;

/// The binary with an environment that cannot change what it reads: no config path, no
/// `ZUORA_PROXY__*` overrides, no `RUST_LOG`, no egress proxy.
fn bin() -> Command {
    let mut command = Command::new(EXE);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        let upper = name.to_ascii_uppercase();
        if upper.starts_with("ZUORA_PROXY") || upper == "RUST_LOG" || upper.ends_with("_PROXY") {
            command.env_remove(&name);
        }
    }
    command
}

fn output(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().expect("binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn version_and_help_exit_zero() {
    let version = output(bin().arg("--version"));
    assert!(version.status.success(), "{version:?}");
    assert_eq!(
        text(&version.stdout).trim(),
        format!("zuora-auth-proxy {}", env!("CARGO_PKG_VERSION"))
    );
    let help = output(bin().arg("--help"));
    assert!(help.status.success(), "{help:?}");
    let help = text(&help.stdout);
    for word in ["run", "check-config", "demo"] {
        assert!(help.contains(word), "--help does not mention {word}: {help}");
    }
    let sub = output(bin().args(["check-config", "--help"]));
    assert!(sub.status.success());
    assert!(text(&sub.stdout).contains("--config"));
}

#[test]
fn check_config_names_every_bad_value_and_exits_78() {
    let broken = ConfigFile::new("rest.test.zuora.com", "do-not-print-me", ROUTES)
        .no_admin()
        .text()
        .replacen(SERVER_LISTEN, "listen = \"nowhere\"\nrequest_timeout = \"soon\"", 1)
        .replace("[tenants.default]", "[tenants.default]\nrefresh_margin = \"5 parsecs\"");
    let (stderr, stdout) = check_config_refuses(
        &broken,
        &[
            "server.listen",
            "server.request_timeout",
            "tenants.default.base_url",
            "tenants.default.refresh_margin",
        ],
    );
    assert!(!stderr.contains("do-not-print-me"), "{stderr}");
    assert!(stdout.is_empty(), "nothing on stdout for an invalid file");
}

#[test]
fn check_config_names_unknown_keys_and_exits_78() {
    let unknown = ConfigFile::new("https://rest.test.zuora.com", "s", ROUTES)
        .no_admin()
        .text()
        .replace("[admin]", "[admin]\nlisen = \"typo\"")
        .replace("[tenants.default]", "[tenants.default]\nbase_ur = \"x\"");
    check_config_refuses(&unknown, &["admin.lisen", "tenants.default.base_ur"]);
}

#[test]
fn check_config_names_unknown_keys_and_bad_values_together() {
    let broken = ConfigFile::new("rest.test.zuora.com", "s", ROUTES)
        .no_admin()
        .text()
        .replacen(SERVER_LISTEN, "listen = \"nowhere\"\nlisen = \"typo\"", 1);
    check_config_refuses(&broken, &["server.lisen", "server.listen", "tenants.default.base_url"]);
}

#[test]
fn check_config_prints_a_good_file_with_the_secret_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "inline-secret-7f3a9c";
    let path = write(
        dir.path(),
        "good.toml",
        &ConfigFile::new("https://rest.test.zuora.com", secret, ROUTES)
            .no_admin()
            .text(),
    );
    let out = output(bin().args(["check-config", "--config"]).arg(&path));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(!stdout.contains(secret), "the secret was printed: {stdout}");
    assert!(!text(&out.stderr).contains(secret));
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is the configuration as JSON");
    assert_eq!(json["tenants"]["default"]["client_id"], CLIENT_ID);
    assert_eq!(json["tenants"]["default"]["client_secret"], "<redacted>");
    assert_eq!(
        json["tenants"]["default"]["token_url"],
        "https://rest.test.zuora.com/oauth/token"
    );
    assert_eq!(json["routes"].as_array().map(Vec::len), Some(4));
    assert!(text(&out.stderr).contains("configuration is valid"));
}

#[test]
fn a_missing_or_invalid_file_exits_78_for_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = output(bin().args(["check-config", "--config"]).arg(&missing));
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(text(&out.stderr).contains("missing.toml"));
    // `run` refuses to serve an invalid file, with the same code and without starting.
    let broken = write(dir.path(), "broken.toml", "[server]\nlisten = \"nowhere\"\n");
    let out = output(bin().args(["run", "--config"]).arg(&broken));
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("server.listen") && stderr.contains("tenants"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_full_run_serves_logs_json_and_never_logs_a_token_or_the_secret() {
    let secret = "full-run-secret-4d2e8b";
    let upstream = Upstream::start(secret).await;
    let mock = &upstream.mock;
    // At debug level, so that a token or the secret in any library's debug output shows too.
    let config = upstream.write(&upstream.config(ROUTES).no_admin().level("debug"));
    let mut proxy = Binary::spawn_from(bin(), &config);
    let addr = proxy.listening().await.addr;
    let url = |path: &str| format!("http://{addr}{path}");

    let first = post(&url(&abort_path()), &[("zuora-track-id", "bin-first")]).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    mock.revoke_tokens();
    let replayed = post(&url(&abort_path()), &[("zuora-track-id", "bin-replayed")]).await;
    assert_eq!(replayed.status, 200, "{:?}", replayed.body);
    let refused = get(&url("/v1/accounts")).await;
    assert_refusal(&refused, 404, "route_not_found");
    let download = get(&url(&job_path("downloads"))).await;
    assert!(download.body == zuora_auth_proxy::mock::download_bytes());
    assert_eq!(mock.token_calls(), 2);
    let issued: Vec<String> = mock
        .received()
        .iter()
        .map(|r| {
            r.headers["authorization"]
                .to_str()
                .unwrap()
                .trim_start_matches("Bearer ")
                .to_string()
        })
        .collect();
    assert!(issued.iter().all(|t| t.starts_with("mock-token-")), "{issued:?}");

    let (code, lines) = proxy.terminate().await;
    assert_eq!(code, Some(0), "a SIGTERM drain exits 0; logs: {lines:#?}");
    assert!(!lines.is_empty());
    let mut access = Vec::new();
    for line in &lines {
        let json: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(!line.contains("mock-token-"), "a token was logged: {line}");
        for token in &issued {
            assert!(!line.contains(token.as_str()), "a token was logged: {line}");
        }
        assert!(!line.contains(secret), "the client secret was logged: {line}");
        if json["target"] == "access" {
            access.push(json);
        }
    }
    let by_track = |id: &str| {
        access
            .iter()
            .find(|a| a["track_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}: {access:#?}"))
    };
    let first = by_track("bin-first");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "abort-bulk-job");
    assert_eq!(first["tenant"], "default");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], abort_path());
    assert_eq!(first["token_retry"], false);
    assert!(first["zuora_request_id"].as_str().is_some_and(|s| !s.is_empty()));
    let replayed = by_track("bin-replayed");
    assert_eq!(replayed["status"], 200);
    assert_eq!(replayed["token_retry"], true, "the 401 replay is visible in the log");
    let refused = access
        .iter()
        .find(|a| a["status"] == 404)
        .unwrap_or_else(|| panic!("no access line for the refusal: {access:#?}"));
    assert_eq!(refused["error"], "route_not_found");
    assert_eq!(refused["path"], "/v1/accounts");
    assert_eq!(access.len(), 4, "one access line per request: {access:#?}");
}

/// `[server] listen` as [`ConfigFile::text`] writes it (the first `listen` of the file).
const SERVER_LISTEN: &str = "listen = \"127.0.0.1:0\"";

/// Runs `check-config` on a file holding `contents`: it exits 78 and names every one of
/// `keys` on stderr. Its stderr and stdout.
fn check_config_refuses(contents: &str, keys: &[&str]) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "broken.toml", contents);
    let out = output(bin().args(["check-config", "--config"]).arg(&path));
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = text(&out.stderr);
    for key in keys {
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
    (stderr, out.stdout)
}
