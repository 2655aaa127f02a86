//! The lifecycle a platform drives: a changed configuration file (a Kubernetes ConfigMap's
//! symlink swap) takes effect without a signal, `wait` gates an application's start on
//! `/readyz`, systemd hears READY=1 and STOPPING=1, and the exit codes tell a bad
//! configuration (78) from a bad command line (2).
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod binary;
    pub mod client;
    pub mod exe;
    pub mod fixtures;
    pub mod harness;
    pub mod wait;
}

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use support::binary::{Binary, Upstream};
use support::client::*;
use support::exe::command;
use support::fixtures::*;
use support::harness::Harness;
use support::wait::{assert_took, eventually, patience};

const SECRET: &str = "ops-lifecycle-secret";

/// The abort route alone: the first of [`ROUTES`].
fn abort_route_only() -> &'static str {
    let first = ROUTES.find("[[routes]]").expect("a route");
    let second = first + 1 + ROUTES[first + 1..].find("[[routes]]").expect("several routes");
    &ROUTES[..second]
}

/// Publishes `contents` as Kubernetes does a ConfigMap: written into a new directory, then
/// the `..data` symlink swapped to it in one rename. `link` (the configuration path the
/// proxy reads) points through `..data`.
fn publish(dir: &Path, version: &str, contents: &str) {
    let data = dir.join(version);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("proxy.toml"), contents).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

fn config_link(dir: &Path) -> PathBuf {
    let link = dir.join("proxy.toml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/proxy.toml", &link).unwrap();
    }
    link
}

#[tokio::test]
async fn a_configmap_update_is_served_without_a_signal() {
    let upstream = Upstream::start(SECRET).await;
    let mounted = upstream.dir.path().join("mount");
    std::fs::create_dir(&mounted).unwrap();
    publish(&mounted, "..v1", &upstream.config(abort_route_only()).text());
    let path = config_link(&mounted);
    let mut proxy = Binary::spawn(&path);
    let addr = proxy.listening().await.addr;
    let summary = format!("http://{addr}{}", job_path("summary"));
    assert_refusal(&get(&summary).await, 404, "route_not_found");

    publish(&mounted, "..v2", &upstream.config(ROUTES).text());
    eventually("the new route served", async || {
        (get(&summary).await.status == 200).then_some(())
    })
    .await;

    // A broken version is refused and the running routes stay.
    publish(&mounted, "..v3", "[server]\nlisten = \"nowhere\"\n");
    eventually("the broken version refused", async || {
        proxy.log().contains("configuration reload refused").then_some(())
    })
    .await;
    assert_eq!(get(&summary).await.status, 200, "the previous configuration stays");

    let (code, lines) = proxy.terminate().await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("\"configuration reloaded\""))
            .count(),
        1,
        "one reload for one change: {lines:#?}"
    );
}

/// Runs `zuora-auth-proxy wait <args>` off the runtime, bounded by the tests' patience.
async fn wait_command<const N: usize>(args: [&str; N]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let run =
        tokio::task::spawn_blocking(move || command().arg("wait").args(&args).stdin(Stdio::null()).output().unwrap());
    tokio::time::timeout(patience(), run)
        .await
        .expect("wait returns")
        .unwrap()
}

#[tokio::test]
async fn wait_exits_0_once_ready_and_1_when_nothing_gets_ready() {
    let h = Harness::builder().ready().await;
    let admin = h.proxy.admin_addr.expect("the harness has an admin listener");
    let ready = wait_command(["--admin", &admin.to_string(), "--timeout", "10s"]).await;
    assert_eq!(ready.status.code(), Some(0), "{ready:?}");

    let started = tokio::time::Instant::now();
    let nobody = wait_command(["--admin", &closed_addr().to_string(), "--timeout", "700ms"]).await;
    assert_eq!(nobody.status.code(), Some(1), "{nobody:?}");
    assert_took(
        started.elapsed(),
        Duration::from_millis(500)..,
        "wait gave up at its --timeout",
    );
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains("not ready within"),
        "{nobody:?}"
    );
}

#[tokio::test]
async fn wait_keeps_asking_while_readyz_is_503() {
    // A tenant whose token endpoint refuses the client: /readyz stays 503.
    let h = Harness::builder().tenant("client_secret", "\"wrong\"").start().await;
    let admin = h.proxy.admin_addr.expect("admin listener");
    assert_eq!(get(&h.admin_url("/readyz")).await.status, 503);
    let out = wait_command(["--admin", &admin.to_string(), "--timeout", "600ms"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("status 503"), "{out:?}");
}

#[tokio::test]
async fn systemd_hears_ready_once_listening_and_stopping_at_the_drain() {
    let upstream = Upstream::start(SECRET).await;
    let path = upstream.write(&upstream.config(ROUTES));
    let socket_path = upstream.dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut cmd = command();
    cmd.env("NOTIFY_SOCKET", &socket_path);
    let mut proxy = Binary::spawn_from(cmd, &path);
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(patience(), socket.recv(&mut buf))
        .await
        .expect("READY=1 within patience")
        .unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    // READY=1 comes after the listeners are bound: the proxy answers now.
    let addr = proxy.listening().await.addr;
    assert_refusal(&get(&format!("http://{addr}/nope")).await, 404, "route_not_found");
    proxy.signal("TERM");
    let n = tokio::time::timeout(patience(), socket.recv(&mut buf))
        .await
        .expect("STOPPING=1 within patience")
        .unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
}

#[test]
fn help_names_the_environment_signals_and_exit_codes_and_usage_errors_exit_2() {
    let help = command().arg("--help").stdin(Stdio::null()).output().unwrap();
    assert!(help.status.success(), "{help:?}");
    let text = String::from_utf8_lossy(&help.stdout);
    for word in ["ZUORA_PROXY__", "ZUORA_PROXY_CONFIG", "SIGHUP", "SIGTERM", "78", "wait"] {
        assert!(text.contains(word), "--help does not mention {word}: {text}");
    }
    let usage = command().arg("--no-such-flag").stdin(Stdio::null()).output().unwrap();
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let config = command()
        .args(["check-config", "--config"])
        .arg(&missing)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(config.status.code(), Some(78), "{config:?}");
}
