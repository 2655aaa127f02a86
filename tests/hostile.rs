//! Hostile and unusual input as raw bytes on a socket: refused without reaching Zuora and
//! without an extra token fetch, or served the one safe way; and floods of slow or silent
//! connections that must not stop the proxy from answering everyone else.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod raw;
}

use std::net::SocketAddr;
use std::time::Duration;
use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::raw::{read_response, RawResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use zuora_auth_proxy::mock::ApiMode;

// Tests here switch the mock's (global) mode once `wait_api_calls` reports a request. The
// mock counts a request just before it reads the mode, with no await in between: on the
// single-threaded test runtime its handler reaches its first await (having read the mode)
// before the test resumes, so the switch never races the request it waited for.

/// The usual routes plus one whose placeholder takes any segment (no UUID check to hide
/// behind).
fn hostile_routes() -> String {
    format!(
        "{ROUTES}
[[routes]]
name = \"any-abort\"
method = \"POST\"
path = \"/bulk-data/any-jobs/{{id}}/aborts\"
"
    )
}

async fn proxy() -> Harness {
    let h = Harness::builder().routes(&hostile_routes()).ready().await;
    h
}

#[tokio::test]
async fn encoded_slashes_dot_segments_and_odd_bytes_in_placeholders_are_400() {
    let h = proxy().await;
    let cases = [
        ("a%2Fb", "contains an encoded slash"),
        ("a%2fb", "contains an encoded slash"),
        ("a%5Cb", "contains an encoded slash"),
        ("%2F", "contains an encoded slash"),
        ("..", "is a dot segment"),
        (".", "is a dot segment"),
        ("%2e%2e", "is a dot segment"),
        ("%2E.", "is a dot segment"),
        (".%2E", "is a dot segment"),
        ("%2e", "is a dot segment"),
        ("a%00b", "contains a control character"),
        ("a%0d%0ab", "contains a control character"),
        ("%zz", "has a malformed percent-encoding"),
        ("", "is empty"),
    ];
    for (id, reason) in cases {
        let path = format!("/bulk-data/any-jobs/{id}/aborts");
        let answer = one(h.proxy.addr, &request("POST", &path, &[])).await;
        assert_eq!(answer.status, 400, "{path}: {answer:?}");
        assert_eq!(
            answer.header("x-zuora-proxy-error"),
            Some("invalid_path_parameter"),
            "{path}"
        );
        let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(json["message"], format!("path parameter 'id' {reason}"), "{path}");
    }
    // No normalisation: a dot segment or an encoded slash elsewhere matches no route.
    for path in [
        format!("/bulk-data/bulk-jobs/../bulk-jobs/{JOB}/aborts"),
        format!("/bulk-data/bulk-jobs/{JOB}/aborts/.."),
        format!("/bulk-data/bulk-jobs/{JOB}%2Faborts"),
        format!("/bulk-data//bulk-jobs/{JOB}/aborts"),
        format!("/bulk-data/bulk-jobs/{JOB}/./aborts"),
        format!("/bulk-data%2Fbulk-jobs/{JOB}/aborts"),
    ] {
        let answer = one(h.proxy.addr, &request("POST", &path, &[])).await;
        assert_eq!(
            (answer.status, answer.header("x-zuora-proxy-error")),
            (404, Some("route_not_found")),
            "{path}"
        );
    }
    assert!(h.mock.received().is_empty(), "{:?}", h.mock.received());
    // The same route with a plain id is forwarded, byte for byte.
    let answer = one(
        h.proxy.addr,
        &request("POST", "/bulk-data/any-jobs/plain-id_1~x/aborts", &[]),
    )
    .await;
    assert_eq!(answer.header("x-zuora-proxy-error"), None, "{answer:?}");
    let received = h.mock.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].target, "/bulk-data/any-jobs/plain-id_1~x/aborts");
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn connect_requests_are_refused_and_never_tunnel() {
    let h = proxy().await;
    let connections = h.mock.connections();
    for target in ["evil.example:443".to_string(), h.mock.addr().to_string()] {
        let raw = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
        let answers = exchange(h.proxy.addr, raw.as_bytes()).await;
        let answer = answers.first().unwrap_or_else(|| panic!("CONNECT {target}: no answer"));
        assert!(matches!(answer.status, 404 | 405), "CONNECT {target}: {answer:?}");
        assert!(answer.header("x-zuora-proxy-error").is_some(), "{answer:?}");
    }
    assert!(h.mock.received().is_empty());
    assert_eq!(
        h.mock.connections(),
        connections,
        "a CONNECT opened a connection to Zuora"
    );
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn duplicate_oversized_or_invalid_track_ids_are_400() {
    let h = proxy().await;
    let long = "t".repeat(65);
    let cases: [&[(&str, &str)]; 5] = [
        &[("Zuora-Track-Id", "one"), ("Zuora-Track-Id", "two")],
        &[("Zuora-Track-Id", "same"), ("zuora-track-id", "same")],
        &[("Zuora-Track-Id", &long)],
        &[("Zuora-Track-Id", "has:colon")],
        &[("Zuora-Track-Id", "has space")],
    ];
    for headers in cases {
        let answer = one(h.proxy.addr, &request("POST", &abort_path(), headers)).await;
        assert_eq!(
            (answer.status, answer.header("x-zuora-proxy-error")),
            (400, Some("invalid_track_id")),
            "{headers:?}"
        );
        let echoed = answer.header("zuora-track-id").unwrap_or_default();
        assert_eq!(echoed.len(), 32, "the refused id was echoed: {echoed}");
    }
    assert!(h.mock.received().is_empty());
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_ambiguous_framing() {
    let h = proxy().await;
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
    ] {
        let raw = format!(
            "POST {} HTTP/1.1\r\nHost: proxy\r\nZuora-Track-Id: ambiguous\r\n{framing}\r\n\r\n0\r\n\r\n",
            abort_path()
        );
        let answers = exchange(h.proxy.addr, raw.as_bytes()).await;
        assert_eq!(answers.len(), 1, "{framing}: {answers:?}");
        assert_eq!(answers[0].status, 400, "{framing}: {answers:?}");
        assert_eq!(
            answers[0].header("x-zuora-proxy-error"),
            Some("ambiguous_framing"),
            "{framing}"
        );
        assert_eq!(answers[0].header("connection"), Some("close"), "{framing}");
    }
    assert!(
        h.mock.received().is_empty(),
        "an ambiguously framed request reached Zuora"
    );
}

/// Pipelined behind a clean request (both in one write), an ambiguous request is refused too,
/// and so is any chunked request whose head arrived pipelined: its raw head was not scanned.
#[tokio::test]
async fn an_ambiguous_request_pipelined_behind_a_clean_one_is_refused() {
    let h = proxy().await;
    let clean = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nZuora-Track-Id: first\r\nContent-Length: 0\r\n\r\n",
        abort_path()
    );
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked",
    ] {
        let raw = format!(
            "{clean}POST {} HTTP/1.1\r\nHost: proxy\r\nZuora-Track-Id: second\r\n{framing}\r\n\r\n0\r\n\r\n",
            abort_path()
        );
        let answers = exchange(h.proxy.addr, raw.as_bytes()).await;
        assert_eq!(answers.len(), 2, "{framing}: {answers:?}");
        assert_eq!(answers[0].status, 200, "{framing}: {answers:?}");
        assert_eq!(answers[1].status, 400, "{framing}: {answers:?}");
        assert_eq!(
            answers[1].header("x-zuora-proxy-error"),
            Some("ambiguous_framing"),
            "{framing}"
        );
    }
    let tracks = h.mock.received_header("zuora-track-id");
    assert_eq!(tracks, vec!["first", "first"], "only the clean requests reached Zuora");
}

#[tokio::test]
async fn a_request_smuggled_behind_content_length_and_transfer_encoding_is_never_processed() {
    let h = proxy().await;
    let smuggled = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nZuora-Track-Id: smuggled\r\nContent-Length: 0\r\n\r\n",
        abort_path()
    );
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
    ] {
        // Read by Content-Length, the body is "0\r\n\r\n"; read as chunked, it ends at "0\r\n\r\n"
        // too, and the smuggled request follows either way.
        let raw = format!(
            "POST {} HTTP/1.1\r\nHost: proxy\r\nZuora-Track-Id: carrier\r\n{framing}\r\n\r\n0\r\n\r\n{smuggled}",
            abort_path()
        );
        let answers = exchange(h.proxy.addr, raw.as_bytes()).await;
        assert!(
            answers.len() <= 1,
            "{framing}: the connection went on after an ambiguous request: {answers:?}"
        );
        assert!(
            answers.iter().all(|a| a.header("zuora-track-id") != Some("smuggled")),
            "{framing}: {answers:?}"
        );
    }
    let tracks: Vec<String> = h.mock.received().iter().map(|r| track_of(&r.headers)).collect();
    assert!(
        !tracks.iter().any(|t| t == "smuggled"),
        "the smuggled request reached Zuora: {tracks:?}"
    );
}

#[tokio::test]
async fn malformed_heads_are_400_from_the_http_layer() {
    let h = proxy().await;
    let path = abort_path();
    let cases = [
        (
            "CR in a value",
            format!("POST {path} HTTP/1.1\r\nHost: proxy\r\nX-Bad: a\rb\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "NUL in a value",
            format!("POST {path} HTTP/1.1\r\nHost: proxy\r\nX-Bad: a\0b\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "obsolete line folding",
            format!("POST {path} HTTP/1.1\r\nHost: proxy\r\nX-Bad: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "space before the colon",
            format!("POST {path} HTTP/1.1\r\nHost: proxy\r\nX-Bad : a\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "conflicting Content-Lengths",
            format!("POST {path} HTTP/1.1\r\nHost: proxy\r\nContent-Length: 0\r\nContent-Length: 3\r\n\r\nabc"),
        ),
        (
            "signed Content-Length",
            format!("POST {path} HTTP/1.1\r\nHost: proxy\r\nContent-Length: +3\r\n\r\nabc"),
        ),
        (
            "unknown Transfer-Encoding",
            format!("POST {path} HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ),
        (
            "space in the target",
            format!("POST {path} x HTTP/1.1\r\nHost: proxy\r\nContent-Length: 0\r\n\r\n"),
        ),
    ];
    for (what, raw) in cases {
        let answers = exchange(h.proxy.addr, raw.as_bytes()).await;
        assert_eq!(answers.len(), 1, "{what}: {answers:?}");
        assert_eq!(answers[0].status, 400, "{what}: {answers:?}");
        assert_eq!(
            answers[0].header("x-zuora-proxy-error"),
            None,
            "{what}: the proxy saw it, the HTTP layer should have refused it"
        );
    }
    assert!(h.mock.received().is_empty(), "{:?}", h.mock.received());
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn an_absolute_form_target_is_routed_by_its_path_to_the_tenant() {
    let h = proxy().await;
    for (scheme, track) in [("http", "absolute-http"), ("https", "absolute-https")] {
        let raw = format!(
            "POST {scheme}://evil.example/bulk-data/bulk-jobs/{JOB}/aborts HTTP/1.1\r\nHost: evil.example\r\nZuora-Track-Id: {track}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let answer = one(h.proxy.addr, &raw).await;
        assert_eq!(
            (answer.status, answer.header("zuora-track-id")),
            (200, Some(track)),
            "{answer:?}"
        );
    }
    let raw = "POST http://evil.example:8443/v1/accounts HTTP/1.1\r\nHost: evil.example:8443\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let answer = one(h.proxy.addr, raw).await;
    assert_eq!(
        (answer.status, answer.header("x-zuora-proxy-error")),
        (404, Some("route_not_found"))
    );
    let received = h.mock.received();
    assert_eq!(received.len(), 2);
    for r in &received {
        assert_eq!(r.target, abort_path(), "the absolute-form target leaked upstream");
        assert_eq!(r.headers["host"], h.mock.addr().to_string().as_str());
        assert!(!format!("{:?}", r.headers).contains("evil.example"), "{:?}", r.headers);
    }
}

#[tokio::test]
async fn http_1_0_without_host_is_served() {
    let h = proxy().await;
    let raw = format!(
        "POST {} HTTP/1.0\r\nZuora-Track-Id: old-client\r\nContent-Length: 0\r\n\r\n",
        abort_path()
    );
    let started = Instant::now();
    let answers = exchange(h.proxy.addr, raw.as_bytes()).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(
        (answers[0].status, answers[0].header("zuora-track-id")),
        (200, Some("old-client"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "an HTTP/1.0 connection without keep-alive stayed open"
    );
    let received = h.mock.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].headers["host"], h.mock.addr().to_string().as_str());
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let h = proxy().await;
    let mut raw = request("POST", &abort_path(), &[("Zuora-Track-Id", "pipe-1")]).replace("Connection: close\r\n", "");
    raw += &request("POST", "/v1/accounts", &[("Zuora-Track-Id", "pipe-2")]).replace("Connection: close\r\n", "");
    raw += &request("GET", &job_path("summary"), &[("Zuora-Track-Id", "pipe-3")]);
    let answers = exchange(h.proxy.addr, raw.as_bytes()).await;
    let got: Vec<(u16, Option<&str>)> = answers.iter().map(|a| (a.status, a.header("zuora-track-id"))).collect();
    assert_eq!(
        got,
        [(200, Some("pipe-1")), (404, Some("pipe-2")), (200, Some("pipe-3"))]
    );
    let tracks: Vec<String> = h.mock.received().iter().map(|r| track_of(&r.headers)).collect();
    assert_eq!(tracks, ["pipe-1", "pipe-3"]);
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_honoured_nor_passed_on() {
    let h = proxy().await;
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    let raw = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nZuora-Track-Id: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 0\r\n\r\n",
        abort_path()
    );
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let answer = read_response(&mut stream, &mut buf, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (answer.status, answer.header("zuora-track-id")),
        (200, Some("h2c")),
        "{answer:?}"
    );
    assert_eq!(answer.header("upgrade"), None);
    // Still HTTP/1.1 on the same connection.
    stream
        .write_all(request("POST", &abort_path(), &[("Zuora-Track-Id", "after-h2c")]).as_bytes())
        .await
        .unwrap();
    let answer = read_response(&mut stream, &mut buf, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (answer.status, answer.header("zuora-track-id")),
        (200, Some("after-h2c"))
    );
    let received = h.mock.received();
    assert_eq!(received.len(), 2);
    for name in ["upgrade", "http2-settings", "connection"] {
        assert!(!received[0].headers.contains_key(name), "{name} reached Zuora");
    }
    // Prior-knowledge HTTP/2 is no request at all to an HTTP/1 listener.
    let answers = exchange(h.proxy.addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(answers.iter().all(|a| a.status >= 400), "{answers:?}");
    assert_eq!(h.mock.received().len(), 2);
}

#[tokio::test]
async fn slow_and_silent_floods_and_a_stalled_upstream_leave_the_proxy_serving() {
    let h = Harness::builder()
        .server("header_read_timeout", "\"1s\"")
        .server("request_timeout", "\"3s\"")
        .ready()
        .await;
    // One request stalls at Zuora; the ones after it are answered normally.
    h.mock.set_api_mode(ApiMode::Delay(Duration::from_secs(20)));
    let stalled_url = h.url(&abort_path());
    let stalled = tokio::spawn(async move { post(&stalled_url, &[("zuora-track-id", "stalled")]).await });
    assert!(h.mock.wait_api_calls(1, Duration::from_secs(5)).await);
    h.mock.set_api_mode(ApiMode::Normal);

    let trickling: Vec<_> = (0..50).map(|i| tokio::spawn(trickle(h.proxy.addr, i))).collect();
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(h.proxy.addr).await.unwrap());
    }
    for i in 0..5 {
        let track = format!("normal-{i}");
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            post(&h.url(&abort_path()), &[("zuora-track-id", &track)]),
        )
        .await
        .unwrap_or_else(|_| panic!("{track} got no answer in 3 s during the flood"));
        assert_eq!(
            (answer.status.as_u16(), answer.header("zuora-track-id")),
            (200, Some(track.as_str()))
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    for task in trickling {
        let outcome = task.await.unwrap();
        let closed_after = outcome.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            closed_after < Duration::from_secs(4),
            "a trickling connection lasted {closed_after:?}"
        );
    }
    for mut stream in silent {
        let mut byte = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection outlived the header deadline: {read:?}"
        );
    }
    let answer = stalled.await.unwrap();
    assert_refusal(&answer, 504, "upstream_timeout");
    let tracks: Vec<String> = h.mock.received().iter().map(|r| track_of(&r.headers)).collect();
    assert_eq!(tracks.len(), 6, "{tracks:?}");
    assert_eq!(h.mock.token_calls(), 1);
}

// ---- helpers ----

/// Sends a head one byte every 100 ms until the proxy hangs up; how long that took.
async fn trickle(addr: SocketAddr, i: usize) -> Result<Duration, String> {
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nX-Slow-{i}: {}\r\n\r\n",
        abort_path(),
        "s".repeat(100)
    );
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    for byte in head.as_bytes() {
        if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
            return Ok(started.elapsed());
        }
        let mut answer = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut answer)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(started.elapsed()),
            Ok(Ok(n)) => {
                return Err(format!(
                    "trickler {i} was answered: {:?}",
                    String::from_utf8_lossy(&answer[..n])
                ))
            }
        }
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    Err(format!("trickler {i} was never cut off"))
}

/// A request with `Connection: close` and an empty body.
fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: proxy\r\n");
    for (k, v) in headers {
        raw += &format!("{k}: {v}\r\n");
    }
    raw + "Content-Length: 0\r\nConnection: close\r\n\r\n"
}

/// Writes `raw`, then reads every response until the proxy closes the connection.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<RawResponse> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    loop {
        match read_response(&mut stream, &mut buf, Duration::from_secs(5)).await {
            Ok(answer) => answers.push(answer),
            Err(e) if e.starts_with("closed") && buf.is_empty() => return answers,
            Err(e) => panic!("after {answers:?}: {e}"),
        }
    }
}

/// Exactly one response to `raw` (which asks to close).
async fn one(addr: SocketAddr, raw: &str) -> RawResponse {
    let mut answers = exchange(addr, raw.as_bytes()).await;
    assert_eq!(answers.len(), 1, "{raw:?}: {answers:?}");
    answers.remove(0)
}
