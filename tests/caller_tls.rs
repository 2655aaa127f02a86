//! TLS toward callers: HTTPS with a certificate re-read when its files change, mutual TLS
//! with a client CA, rules chosen by the caller's certificate, and the handshake deadline.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod hangup;
    pub mod harness;
    pub mod wait;
}

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use support::client::*;
use support::fixtures::*;
use support::hangup::read_until_closed;
use support::harness::*;
use support::wait::{assert_took, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use zuora_auth_proxy::mock::pki::{Issued, TestCa};

#[tokio::test]
async fn https_is_served_with_the_configured_certificate() {
    let pki = Pki::new();
    let h = pki.harness(false, None).start().await;
    let trusting = client_config(&pki.ca, None);
    let tls = connect_tls(h.proxy.addr, &trusting).await.expect("handshake");
    assert_eq!(
        peer_cert(&tls),
        pki.server.cert_der,
        "the served certificate is the configured one"
    );
    let answer = request_over(tls, Method::POST, &abort_path(), &[("zuora-track-id", "over-https")])
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("zuora-track-id"), Some("over-https"));
    assert_eq!(h.mock.received().len(), 1);

    // A client that does not trust the CA refuses the certificate.
    let stranger = client_config(&TestCa::new("some other CA"), None);
    assert!(
        connect_tls(h.proxy.addr, &stranger).await.is_err(),
        "a certificate from an untrusted CA was accepted"
    );

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(h.proxy.addr).await.unwrap();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nContent-Length: 0\r\n\r\n",
        abort_path()
    );
    plain.write_all(request.as_bytes()).await.unwrap();
    let got = read_until_closed(&mut plain, Duration::from_secs(5))
        .await
        .expect("plain HTTP connection closed");
    assert!(
        !got.starts_with("HTTP/"),
        "plain HTTP was answered on the TLS port: {got:?}"
    );
    assert_eq!(h.mock.received().len(), 1);
}

#[tokio::test]
async fn mutual_tls_requires_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let h = pki.harness(true, None).ready().await;

    let anonymous = client_config(&pki.ca, None);
    let outcome = call_https(h.proxy.addr, &anonymous, &abort_path(), &[]).await;
    assert!(
        outcome.is_err(),
        "a caller without a certificate was served: {outcome:?}"
    );

    let foreign_ca = TestCa::new("foreign CA");
    let foreign = foreign_ca.issue_client("billing");
    let impostor = client_config(&pki.ca, Some(&foreign));
    let outcome = call_https(h.proxy.addr, &impostor, &abort_path(), &[]).await;
    assert!(
        outcome.is_err(),
        "a certificate from another CA was accepted: {outcome:?}"
    );
    assert!(h.mock.received().is_empty());

    let billing = pki.ca.issue_client("billing");
    let member = client_config(&pki.ca, Some(&billing));
    let answer = call_https(h.proxy.addr, &member, &abort_path(), &[])
        .await
        .expect("a CA-issued client is served");
    assert_eq!(answer.status, 200);
    assert_eq!(h.mock.received().len(), 1);
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn the_client_certificate_subject_chooses_the_rule() {
    let pki = Pki::new();
    let rules = format!(
        r#"
[[rules]]
name = "billing-by-cn"
tenant = "default"
when_client_cert_subject = "billing"
track_id_prefix = "billing"
entity_ids = ["{ENTITY}"]

[[rules]]
name = "reporting-by-subject"
tenant = "default"
when_client_cert_subject = "CN=reporting"
track_id_prefix = "reporting"
"#
    );
    let h = pki.harness(true, None).rules(&rules).ready().await;

    // Each certificate's rule names the track id's prefix.
    for subject in ["billing", "reporting"] {
        let caller = client_config(&pki.ca, Some(&pki.ca.issue_client(subject)));
        let answer = call_https(h.proxy.addr, &caller, &abort_path(), &[]).await.unwrap();
        assert_eq!(answer.status, 200, "{subject}");
        assert!(
            answer
                .header("zuora-track-id")
                .unwrap()
                .starts_with(&format!("{subject}-")),
            "{subject}: {:?}",
            answer.headers
        );
    }

    // A valid certificate that no rule names.
    let audit = client_config(&pki.ca, Some(&pki.ca.issue_client("audit")));
    let answer = call_https(h.proxy.addr, &audit, &abort_path(), &[("x-client-subject", "billing")])
        .await
        .unwrap();
    assert_refusal(&answer, 403, "no_matching_rule");

    let received = h.mock.received();
    assert_eq!(received.len(), 2, "the unmatched caller reached Zuora");
    assert_eq!(
        received[0].headers["zuora-entity-ids"], ENTITY,
        "billing's rule applied"
    );
    assert!(
        !received[1].headers.contains_key("zuora-entity-ids"),
        "reporting's rule applied"
    );
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_handshakes() {
    let pki = Pki::new();
    let h = pki.harness(false, None).start().await;
    let config = client_config(&pki.ca, None);
    let before = connect_tls(h.proxy.addr, &config).await.unwrap();
    assert_eq!(peer_cert(&before), pki.server.cert_der);
    // A connection made before the rotation keeps working after it.
    let (mut early, early_conn) = hyper::client::conn::http1::handshake(TokioIo::new(before))
        .await
        .unwrap();
    tokio::spawn(early_conn);

    let rotated = pki.ca.issue_server(&["127.0.0.1", "localhost"]);
    assert_ne!(rotated.cert_der, pki.server.cert_der);
    pki.install(&rotated);
    wait_for_cert(
        "the rotated certificate is served (the check runs every second)",
        h.proxy.addr,
        &config,
        &rotated.cert_der,
    )
    .await;
    let answer = call_https(h.proxy.addr, &config, &abort_path(), &[]).await.unwrap();
    assert_eq!(answer.status, 200);

    let request = Request::post(abort_path())
        .header("host", "proxy")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = early
        .send_request(request)
        .await
        .expect("the pre-rotation connection still works");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_unreadable_certificate_file_keeps_the_current_certificate() {
    let pki = Pki::new();
    let h = pki.harness(false, None).start().await;
    let config = client_config(&pki.ca, None);
    std::fs::write(&pki.cert_file, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").unwrap();
    // Handshakes across more than one reload check still get the old certificate.
    let until = Instant::now() + Duration::from_millis(1600);
    let mut handshakes = 0;
    while Instant::now() < until {
        let tls = connect_tls(h.proxy.addr, &config)
            .await
            .expect("a half-written file broke the listener");
        assert_eq!(peer_cert(&tls), pki.server.cert_der);
        handshakes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(handshakes >= 5, "{handshakes}");
    let rotated = pki.ca.issue_server(&["127.0.0.1"]);
    pki.install(&rotated);
    wait_for_cert(
        "a readable certificate file is served again",
        h.proxy.addr,
        &config,
        &rotated.cert_der,
    )
    .await;
}

#[tokio::test]
async fn a_caller_that_never_finishes_the_handshake_is_cut_at_handshake_timeout() {
    let pki = Pki::new();
    let h = pki.with_deadlines("300ms", "10s").start().await;
    // One says nothing; one sends the first bytes of a TLS record and stalls.
    for opening in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00][..]] {
        let started = Instant::now();
        let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
        stream.write_all(opening).await.unwrap();
        read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("opening {opening:?}: {e}"));
        let elapsed = started.elapsed();
        assert_took(
            elapsed,
            Duration::from_millis(250)..Duration::from_secs(4),
            "cut at the handshake timeout",
        );
    }
}

#[tokio::test]
async fn after_the_handshake_the_header_deadline_applies() {
    let pki = Pki::new();
    let h = pki.with_deadlines("10s", "500ms").start().await;
    let started = Instant::now();
    let mut tls = connect_tls(h.proxy.addr, &client_config(&pki.ca, None)).await.unwrap();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("a TLS caller that sends no request is cut by the header deadline");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_took(
        started.elapsed(),
        Duration::from_millis(400)..,
        "the header deadline after the handshake",
    );
}

// ---- helpers ----

/// A caller-facing CA, the listener's certificate and key in files, and the CA in a file
/// (for `client_ca_file`).
struct Pki {
    ca: TestCa,
    server: Issued,
    dir: tempfile::TempDir,
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_file: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let ca = TestCa::new("callers CA");
        let server = ca.issue_server(&["127.0.0.1", "localhost"]);
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki {
            cert_file: dir.path().join("listener.pem"),
            key_file: dir.path().join("listener-key.pem"),
            ca_file: dir.path().join("callers-ca.pem"),
            ca,
            server,
            dir,
        };
        std::fs::write(&pki.ca_file, pki.ca.cert_pem()).unwrap();
        pki.install(&pki.server);
        pki
    }

    /// Overwrites the listener's certificate and key files in place.
    fn install(&self, issued: &Issued) {
        std::fs::write(&self.key_file, &issued.key_pem).unwrap();
        std::fs::write(&self.cert_file, &issued.cert_pem).unwrap();
    }

    /// `[server] tls = { ... }` as a TOML inline table.
    /// A proxy serving HTTPS with this certificate (see [`Pki::tls_table`]).
    fn harness(&self, mutual: bool, handshake_timeout: Option<&str>) -> HarnessBuilder {
        Harness::builder().server("tls", &self.tls_table(mutual, handshake_timeout))
    }

    /// HTTPS with a `handshake_timeout` and the server's `header_read_timeout`.
    fn with_deadlines(&self, handshake_timeout: &str, header_read_timeout: &str) -> HarnessBuilder {
        self.harness(false, Some(handshake_timeout))
            .server("header_read_timeout", &format!("\"{header_read_timeout}\""))
    }

    fn tls_table(&self, mutual: bool, handshake_timeout: Option<&str>) -> String {
        let mut fields = vec![
            format!("cert_file = {:?}", self.cert_file.display().to_string()),
            format!("key_file = {:?}", self.key_file.display().to_string()),
        ];
        if mutual {
            fields.push(format!("client_ca_file = {:?}", self.ca_file.display().to_string()));
        }
        if let Some(t) = handshake_timeout {
            fields.push(format!("handshake_timeout = \"{t}\""));
        }
        assert!(self.dir.path().is_dir());
        format!("{{ {} }}", fields.join(", "))
    }
}

/// A client trusting `ca`, presenting `identity` when given.
fn client_config(ca: &TestCa, identity: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(issued) => builder
            .with_client_auth_cert(vec![issued.cert_der.clone()], issued.key_der())
            .unwrap(),
    };
    Arc::new(config)
}

async fn connect_tls(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::from(addr.ip());
    tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake hung"))?
}

fn peer_cert(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().expect("a server certificate")[0]
        .clone()
        .into_owned()
}

/// Sends one request on an established TLS connection; Err when the server refused it
/// (an alert after the handshake, a closed connection).
async fn request_over(
    tls: TlsStream<TcpStream>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(path).header("host", "proxy");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let exchange = async {
        let response = sender.send_request(request).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| format!("{e:?}"))?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer in 10 s".to_string())?
}

/// Handshake, then one POST; Err if either fails.
async fn call_https(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let tls = connect_tls(addr, config).await.map_err(|e| format!("handshake: {e}"))?;
    request_over(tls, Method::POST, path, headers).await
}

/// New handshakes until one presents `want`; a certificate file is re-read without an event
/// a caller could await.
async fn wait_for_cert(what: &str, addr: SocketAddr, config: &Arc<rustls::ClientConfig>, want: &CertificateDer<'_>) {
    eventually(what, async || {
        let tls = connect_tls(addr, config).await.ok()?;
        (peer_cert(&tls) == *want).then_some(())
    })
    .await;
}
