//! Callers on a Unix socket (`server.listen = "unix:/path"`): the proxy answers over it, the
//! socket file has the configured mode, replaces a stale file and goes away on shutdown,
//! rules match the caller's uid from `SO_PEERCRED`, and the access line names the caller.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    // Its start-up line parser reads TCP addresses: the socket tests wait for the line instead.
    #[allow(dead_code)]
    pub mod binary;
    pub mod client;
    pub mod exe;
    pub mod fixtures;
    pub mod harness;
    pub mod wait;
}

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use support::binary::Binary;
use support::fixtures::*;
use support::harness::*;
use support::wait::eventually;
use tokio::net::UnixStream;

/// A request over the Unix socket at `path` (one connection per request), its status and body.
async fn call(path: &Path, method: Method, uri: &str) -> (StatusCode, Bytes) {
    let stream = UnixStream::connect(path).await.expect("the socket accepts");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("an answer");
    let status = response.status();
    (status, response.into_body().collect().await.expect("body").to_bytes())
}

/// The uid and gid this test process runs as: the owner of a file it just made.
fn my_ids(dir: &Path) -> (u32, u32) {
    let probe = dir.join("owner-probe");
    std::fs::write(&probe, "").unwrap();
    let meta = std::fs::metadata(&probe).unwrap();
    (meta.uid(), meta.gid())
}

fn listen_at(path: &Path) -> String {
    format!("\"unix:{}\"", path.display())
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

struct Socket {
    dir: tempfile::TempDir,
    path: PathBuf,
}

fn socket() -> Socket {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.sock");
    Socket { dir, path }
}

#[tokio::test]
async fn the_proxy_answers_on_its_unix_socket_with_the_configured_mode() {
    let s = socket();
    // A socket file left behind by a run that was killed: replaced at start.
    drop(std::os::unix::net::UnixListener::bind(&s.path).unwrap());
    let h = Harness::builder()
        .server("listen", &listen_at(&s.path))
        .server("socket_mode", "\"0600\"")
        .start()
        .await;
    assert_eq!(h.proxy.socket_path.as_deref(), Some(s.path.as_path()));
    assert!(std::fs::symlink_metadata(&s.path).unwrap().file_type().is_socket());
    assert_eq!(mode_of(&s.path), 0o600);
    h.wait_for_token().await;

    let (status, body) = call(&s.path, Method::POST, &abort_path()).await;
    assert_eq!(status, 200, "{body:?}");
    assert!(String::from_utf8_lossy(&body).contains("Aborted"), "{body:?}");
    let (status, _) = call(&s.path, Method::GET, "/v1/accounts").await;
    assert_eq!(status, 404, "the allowlist applies on the socket too");

    let _ = h.stop_proxy().await;
    assert!(!s.path.exists(), "the socket file is removed on exit");
}

#[tokio::test]
async fn the_default_mode_lets_owner_and_group_in() {
    let s = socket();
    let h = Harness::builder().server("listen", &listen_at(&s.path)).start().await;
    assert_eq!(mode_of(&s.path), 0o660);
    // A group the process is in (its own) may be given to the socket.
    let (_, gid) = my_ids(s.dir.path());
    drop(h);
    let path = s.dir.path().join("grouped.sock");
    let h = Harness::builder()
        .server("listen", &listen_at(&path))
        .server("socket_group", &gid.to_string())
        .start()
        .await;
    assert_eq!(std::fs::metadata(&path).unwrap().gid(), gid);
    drop(h);
}

#[tokio::test]
async fn rules_match_the_callers_uid() {
    let s = socket();
    let (uid, gid) = my_ids(s.dir.path());
    let rules = format!(
        r#"
[[rules]]
name = "this-process"
routes = ["abort-bulk-job"]
when_peer_uid = [{uid}]
when_peer_gid = [{gid}]
tenant = "default"

[[rules]]
name = "someone-else"
routes = ["job-summary"]
when_peer_uid = [{other}]
tenant = "default"
"#,
        other = uid.wrapping_add(1)
    );
    let h = Harness::builder()
        .server("listen", &listen_at(&s.path))
        .rules(&rules)
        .ready()
        .await;
    let (status, body) = call(&s.path, Method::POST, &abort_path()).await;
    assert_eq!(status, 200, "uid {uid} matches its rule: {body:?}");

    let (status, body) = call(&s.path, Method::GET, &job_path("summary")).await;
    assert_eq!(status, 403, "{body:?}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "no_matching_rule", "{json}");
    assert_eq!(h.mock.api_calls(), 1, "the refused request never reached Zuora");
}

#[tokio::test]
async fn the_access_line_names_the_unix_caller() {
    let s = socket();
    let (uid, gid) = my_ids(s.dir.path());
    let h = Harness::builder().server("listen", &listen_at(&s.path)).ready().await;
    let text = h.config_text_with(|c| c.admin("listen", "\"\""));
    // Only the binary serves: the in-process proxy steps aside (and removes its socket).
    let (_mock, dir) = h.stop_proxy().await;
    let config = dir.path().join("binary.toml");
    std::fs::write(&config, text).unwrap();
    let bin = Binary::spawn(&config);
    eventually("the binary listens on its socket", async || {
        bin.log().contains("zuora-auth-proxy listening").then_some(())
    })
    .await;

    let (status, _) = call(&s.path, Method::POST, &abort_path()).await;
    assert_eq!(status, 200, "{}", bin.log());
    let line = eventually("the access line", async || {
        bin.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["target"] == "access")
    })
    .await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["peer_uid"], uid, "{line}");
    assert_eq!(line["peer_gid"], gid, "{line}");
    assert_eq!(line["peer_pid"], std::process::id(), "{line}");
    assert!(line.get("client_addr").is_none(), "{line}");
    let (code, _) = bin.terminate().await;
    assert_eq!(code, Some(0));
    assert!(!s.path.exists(), "the binary removes its socket on exit");
}
