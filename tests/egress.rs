//! Egress through a corporate proxy: `proxy_url` tunnels every connection to Zuora (API and
//! token calls alike) through HTTP CONNECT with Basic credentials, TLS end to end inside the
//! tunnel, and the proxy's password never shows in output.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod exe;
    pub mod fixtures;
    pub mod harness;
    pub mod wait;
}

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::wait::assert_took;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zuora_auth_proxy::Config;

const USER: &str = "egress-user";
/// As written in the URL (`%40` is `@`), and as the proxy must receive it.
const PASSWORD_IN_URL: &str = "s3cr%40t-hunter2";
const PASSWORD: &str = "s3cr@t-hunter2";

#[tokio::test]
async fn api_and_token_calls_tunnel_through_connect_with_basic_credentials() {
    let egress = EgressProxy::start(|_| Verdict::Tunnel).await;
    let h = Harness::builder()
        .tenant(
            "proxy_url",
            &format!("\"http://{USER}:{PASSWORD_IN_URL}@{}\"", egress.addr),
        )
        .ready()
        .await;
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "tunnelled")]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("zuora-track-id"), Some("tunnelled"));

    let heads = egress.heads();
    assert!(!heads.is_empty(), "nothing went through the egress proxy");
    let want_auth = format!("Basic {}", base64(format!("{USER}:{PASSWORD}").as_bytes()));
    for head in &heads {
        let mut lines = head.split("\r\n");
        assert_eq!(
            lines.next(),
            Some(format!("CONNECT {} HTTP/1.1", h.mock.addr()).as_str()),
            "{head}"
        );
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let value = |name: &str| {
            headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(value("proxy-authorization"), [want_auth.as_str()], "{head}");
        assert_eq!(value("host"), [h.mock.addr().to_string().as_str()], "{head}");
    }
    // Every TLS connection the mock accepted came through a tunnel: nothing went direct.
    assert_eq!(h.mock.connections(), egress.tunnels(), "direct connections to Zuora");
    let received = h.mock.received();
    assert_eq!(received.len(), 1);
    assert!(
        !received[0].headers.contains_key("proxy-authorization"),
        "proxy credentials reached Zuora"
    );
    assert!(received[0].headers["authorization"]
        .to_str()
        .unwrap()
        .starts_with("Bearer mock-token-"));
}

#[tokio::test]
async fn the_egress_password_appears_neither_in_check_config_nor_in_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("egress.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = ""
[tenants.default]
base_url = "https://rest.test.zuora.com"
client_id = "id"
client_secret = "inline-client-secret"
proxy_url = "http://{USER}:{PASSWORD_IN_URL}@127.0.0.1:3128"
{ROUTES}
"#
    );
    std::fs::write(&path, &text).unwrap();
    let output = check_config(&path);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "check-config failed: {stderr}");
    for secret in ["hunter2", PASSWORD_IN_URL, PASSWORD, "inline-client-secret"] {
        assert!(!stdout.contains(secret), "check-config printed {secret:?}:\n{stdout}");
        assert!(!stderr.contains(secret), "check-config logged {secret:?}:\n{stderr}");
    }
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("check-config prints JSON");
    let shown = json["tenants"]["default"]["proxy_url"]
        .as_str()
        .expect("proxy_url shown")
        .to_string();
    assert!(shown.contains(USER) && shown.contains("127.0.0.1:3128"), "{shown}");
    assert!(shown.contains(":REDACTED@"), "{shown}");

    let config = Config::from_toml(&text).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"), "Config's Debug shows the egress password");
    let tenant = format!(
        "{:?} {}",
        config.live.tenants["default"].proxy_url,
        config.live.tenants["default"].proxy_url.as_ref().unwrap()
    );
    assert!(!tenant.contains("hunter2"), "{tenant}");

    // An invalid proxy_url is reported by key, still without its password.
    std::fs::write(&path, text.replace("proxy_url = \"http://", "proxy_url = \"socks5://")).unwrap();
    let output = check_config(&path);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("tenants.default.proxy_url"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn an_egress_proxy_refusing_the_tunnel_is_502_upstream_unreachable() {
    // Token calls go to `localhost`, API calls to `127.0.0.1`: the egress proxy lets only
    // the first through.
    let egress = EgressProxy::for_api_calls(Verdict::Refuse).await;
    let h = split_tenant(&egress, "5s").await;
    let answer = post(&h.url(&abort_path()), &[]).await;
    assert_refusal(&answer, 502, "upstream_unreachable");
    assert!(h.mock.received().is_empty());
    let heads = egress.heads();
    let api_connect = format!("CONNECT 127.0.0.1:{} ", h.mock.addr().port());
    assert!(heads.iter().any(|head| head.starts_with(&api_connect)), "{heads:?}");
}

#[tokio::test]
async fn a_silent_egress_proxy_is_bounded_by_connect_timeout() {
    let egress = EgressProxy::for_api_calls(Verdict::Silent).await;
    let h = split_tenant(&egress, "500ms").await;
    let elapsed = timed_refusal(&h.url(&abort_path()), "tunnel-silent", 502, "upstream_unreachable").await;
    assert_took(
        elapsed,
        Duration::from_millis(450)..Duration::from_secs(4),
        "the CONNECT answer under connect_timeout",
    );
    assert!(h.mock.received().is_empty());
}

#[tokio::test]
async fn an_unreachable_egress_proxy_never_means_going_direct() {
    let h = Harness::builder()
        .tenant("proxy_url", &format!("\"http://{}\"", closed_addr()))
        .tenant("token_wait", "\"1s\"")
        .start()
        .await;
    let answer = post(&h.url(&abort_path()), &[]).await;
    assert_refusal(&answer, 503, "token_unavailable");
    assert_eq!(h.mock.token_calls(), 0, "the token was fetched around the egress proxy");
    assert_eq!(h.mock.connections(), 0, "a connection went around the egress proxy");
}

// ---- helpers ----

/// A tenant whose token URL names `localhost` and whose API base URL names `127.0.0.1`,
/// both the mock, both through `egress`; its token is fetched before this returns.
async fn split_tenant(egress: &EgressProxy, connect_timeout: &str) -> Harness {
    let mock_addr = closed_addr();
    let h = Harness::builder()
        .mock(|m| m.addr(mock_addr))
        .tenant(
            "token_url",
            &format!("\"https://localhost:{}/oauth/token\"", mock_addr.port()),
        )
        .tenant("proxy_url", &format!("\"http://{}\"", egress.addr))
        .tenant("connect_timeout", &format!("\"{connect_timeout}\""))
        .ready()
        .await;
    let heads = egress.heads();
    assert!(
        heads
            .iter()
            .any(|head| head.starts_with(&format!("CONNECT localhost:{} ", mock_addr.port()))),
        "the token call did not use the tunnel: {heads:?}"
    );
    h
}

fn check_config(path: &std::path::Path) -> std::process::Output {
    support::exe::command()
        .arg("check-config")
        .arg("--config")
        .arg(path)
        .output()
        .expect("the binary runs")
}

/// What the test egress proxy does with one CONNECT, by its target (`host:port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// `200 Connection established`, then bytes both ways (to 127.0.0.1 only).
    Tunnel,
    /// `407 Proxy Authentication Required`.
    Refuse,
    /// Reads the request and never answers.
    Silent,
}

/// A minimal CONNECT proxy on loopback that records every request head it gets.
struct EgressProxy {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    tunnels: Arc<AtomicUsize>,
    /// The accept loop, aborted when the proxy is dropped.
    _task: tokio::task::JoinSet<()>,
}

impl EgressProxy {
    /// Tunnels token calls (to `localhost`) and answers API calls (to `127.0.0.1`, see
    /// `split_tenant`) with `verdict`.
    async fn for_api_calls(verdict: Verdict) -> EgressProxy {
        EgressProxy::start(move |target| {
            if target.starts_with("localhost:") {
                Verdict::Tunnel
            } else {
                verdict
            }
        })
        .await
    }

    async fn start(verdict: impl Fn(&str) -> Verdict + Send + Sync + 'static) -> EgressProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let tunnels = Arc::new(AtomicUsize::new(0));
        let verdict = Arc::new(verdict);
        let mut task = tokio::task::JoinSet::new();
        task.spawn({
            let (heads, tunnels) = (heads.clone(), tunnels.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve_connect(stream, verdict.clone(), heads.clone(), tunnels.clone()));
                }
            }
        });
        EgressProxy {
            addr,
            heads,
            tunnels,
            _task: task,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Tunnels established to the target.
    fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::SeqCst)
    }
}

async fn serve_connect(
    mut stream: TcpStream,
    verdict: Arc<impl Fn(&str) -> Verdict>,
    heads: Arc<Mutex<Vec<String>>>,
    tunnels: Arc<AtomicUsize>,
) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
            Ok(Ok(1)) if head.len() < 8192 => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head[..head.len() - 4]).into_owned();
    heads.lock().unwrap().push(head.clone());
    let first: Vec<&str> = head.lines().next().unwrap_or_default().split(' ').collect();
    let [method, target, _version] = first.as_slice() else {
        return;
    };
    if *method != "CONNECT" {
        let _ = stream
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    }
    match verdict(target) {
        Verdict::Silent => {
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut sink)).await;
        }
        Verdict::Refuse => {
            let _ = stream
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"egress\"\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
        Verdict::Tunnel => {
            // Only loopback targets are ever dialled, whatever the request names.
            let port = match target.rsplit_once(':') {
                Some(("127.0.0.1" | "localhost", port)) => port.parse::<u16>().ok(),
                _ => None,
            };
            let Some(port) = port else {
                let _ = stream
                    .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    .await;
                return;
            };
            let Ok(mut upstream) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await else {
                let _ = stream
                    .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    .await;
                return;
            };
            if stream
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            tunnels.fetch_add(1, Ordering::SeqCst);
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
        }
    }
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc_4648_vectors() {
    for (input, want) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), want);
    }
}
