//! Framing and protocol in both directions (RFC 9110 / 9112): what Zuora's answer may not carry
//! through to the caller (a stale `Content-Length`, a coding the proxy does not decode, a
//! stray `101`, its own HTTP version), an early answer that must be relayed, and the
//! caller's mistakes (a malformed or slow chunked body, a bad `Host`) that are the caller's
//! errors, not Zuora's. Answers are read off raw sockets where the wire itself is the point.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod metrics;
    pub mod raw;
}

use std::net::SocketAddr;
use std::time::Duration;
use support::fixtures::*;
use support::harness::*;
use support::metrics::Metrics;
use support::raw::{read_response, RawResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use zuora_auth_proxy::mock::ApiMode;

fn errors(h: &Harness, code: &str) -> f64 {
    Metrics::parse(&h.proxy.probe().metrics_text())
        .value_or_zero(&format!("zuora_proxy_proxy_errors_total{{code=\"{code}\"}}"))
}

/// Writes `raw`, then reads one response and everything else until the proxy closes:
/// the response, and the raw bytes as they came (status line included).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> (RawResponse, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut wire = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => panic!("still open after 10 s: {:?}", String::from_utf8_lossy(&wire)),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => wire.extend_from_slice(&chunk[..n]),
        }
    }
    let mut buf = wire.clone();
    let response = read_response(&mut &[][..], &mut buf, Duration::from_secs(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (response, wire)
}

/// A GET of the job summary that asks to close, as raw bytes.
fn summary_get() -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n",
        job_path("summary")
    )
}

fn assert_summary_body(response: &RawResponse) {
    let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_else(|e| {
        panic!(
            "not the whole summary ({e}): {:?}",
            String::from_utf8_lossy(&response.body)
        )
    });
    assert_eq!(json["id"], JOB, "{json}");
    assert_eq!(json["name"], "mock job", "{json}");
}

/// The refusal checks of [`assert_refusal`], on a raw response.
fn assert_raw_refusal(response: &RawResponse, status: u16, code: &str) {
    assert_eq!(
        (response.status, response.header("x-zuora-proxy-error")),
        (status, Some(code)),
        "{response:?}"
    );
    let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(json["error"], code);
}

// ---- Zuora's answers ----

#[tokio::test]
async fn an_answer_with_both_lengths_reaches_the_caller_without_the_stale_content_length() {
    let h = Harness::builder().ready().await;
    h.mock.set_api_mode(ApiMode::BothLengths);
    let (response, wire) = exchange(h.proxy.addr, summary_get().as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.header("content-length"),
        None,
        "{}",
        String::from_utf8_lossy(&wire)
    );
    assert_summary_body(&response);
    assert_eq!(errors(&h, "upstream_body_incomplete"), 0.0);
}

#[tokio::test]
async fn an_answer_in_a_transfer_coding_the_proxy_does_not_decode_is_502() {
    let h = Harness::builder().ready().await;
    for coding in ["gzip, chunked", "gzip", "chunked, chunked", "x-custom, chunked"] {
        h.mock.set_api_mode(ApiMode::TransferCoding(coding.into()));
        let answer = support::client::get(&h.url(&job_path("summary"))).await;
        support::client::assert_refusal(&answer, 502, "upstream_invalid_response");
        assert!(
            !answer.body.starts_with(&[0x1f, 0x8b]),
            "{coding}: coded bytes reached the caller"
        );
    }
    assert_eq!(errors(&h, "upstream_invalid_response"), 4.0);
    // Plain chunked is what the proxy decodes: the answer passes.
    h.mock.set_api_mode(ApiMode::TransferCoding("chunked".into()));
    let (response, _) = exchange(h.proxy.addr, summary_get().as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_summary_body(&response);
}

#[tokio::test]
async fn an_unsolicited_101_is_502_and_other_interim_answers_are_skipped() {
    let h = Harness::builder().ready().await;
    h.mock.set_api_mode(ApiMode::Informational(101));
    let (response, wire) = exchange(h.proxy.addr, summary_get().as_bytes()).await;
    assert_raw_refusal(&response, 502, "upstream_invalid_response");
    assert!(wire.starts_with(b"HTTP/1.1 502 "), "{}", String::from_utf8_lossy(&wire));
    assert!(!wire.windows(5).any(|w| w == b"hello"), "the upgraded stream leaked");
    for code in [102, 103] {
        h.mock.set_api_mode(ApiMode::Informational(code));
        assert_summary_answered(&h, b"HTTP/1.1 200 ", &format!("after a {code}")).await;
    }
}

/// A streamed request body of `total` bytes in 16 KiB frames that never ends on its own:
/// the caller is still sending when Zuora answers.
fn endless_body(total: usize) -> http_body_util::StreamBody<EndlessFrames> {
    use futures_util::StreamExt;
    use hyper::body::Frame;
    let frames =
        futures_util::stream::iter((0..total / 16384).map(|_| Ok(Frame::data(bytes::Bytes::from(vec![b'x'; 16384])))))
            .chain(futures_util::stream::pending());
    http_body_util::StreamBody::new(frames.boxed())
}

type EndlessFrames = futures_util::stream::BoxStream<'static, Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>;

#[tokio::test]
async fn an_early_answer_before_the_body_is_read_is_relayed() {
    let h = Harness::builder().server("max_body_bytes", "16777216").ready().await;
    for status in [413u16, 401] {
        h.mock.set_api_mode(ApiMode::EarlyAnswer { status });
        let request = http::Request::post(h.url(&job_path("echo")))
            .header("zuora-track-id", format!("early-{status}"))
            .body(endless_body(8 * 1024 * 1024))
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), support::client::send(request))
            .await
            .unwrap_or_else(|_| panic!("{status}: no answer"));
        assert_eq!(answer.status.as_u16(), status, "{answer:?}");
        assert_eq!(answer.header("x-zuora-proxy-error"), None, "{answer:?}");
        assert_eq!(
            answer.header("zuora-track-id"),
            Some(format!("early-{status}").as_str())
        );
        assert!(answer.header("zuora-request-id").is_some(), "{answer:?}");
        let json = answer.json();
        assert!(json["message"].is_string(), "{json}");
        if status == 401 {
            assert!(answer.header("www-authenticate").is_some(), "{answer:?}");
        }
    }
    assert_eq!(errors(&h, "upstream_failed"), 0.0);
    let in_flight = Metrics::parse(&h.proxy.probe().metrics_text()).value("zuora_proxy_in_flight{tenant=\"default\"}");
    assert_eq!(in_flight, 0.0, "the answers' slots came back");
}

#[tokio::test]
async fn an_http_1_0_status_line_from_zuora_is_not_echoed() {
    let h = Harness::builder().ready().await;
    h.mock.set_api_mode(ApiMode::Http10);
    assert_summary_answered(&h, b"HTTP/1.1 200 OK\r\n", "an HTTP/1.0 answer").await;
}

/// The summary, asked for on a raw connection, is answered with the full summary body and a
/// status line starting with `status_line`.
async fn assert_summary_answered(h: &Harness, status_line: &[u8], what: &str) {
    let (response, wire) = exchange(h.proxy.addr, summary_get().as_bytes()).await;
    assert!(
        wire.starts_with(status_line),
        "{what}: {}",
        String::from_utf8_lossy(&wire)
    );
    assert_summary_body(&response);
}

// ---- the caller's requests ----

fn chunked_post(body: &str) -> String {
    format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nZuora-Track-Id: bad-chunks\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}",
        job_path("echo")
    )
}

#[tokio::test]
async fn a_request_in_a_transfer_coding_the_proxy_does_not_decode_is_501() {
    let h = Harness::builder().ready().await;
    for coding in ["gzip, chunked", "chunked, chunked", "identity, chunked"] {
        let raw = format!(
            "POST {} HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: {coding}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            job_path("echo")
        );
        let (response, _) = exchange(h.proxy.addr, raw.as_bytes()).await;
        assert_raw_refusal(&response, 501, "unsupported_transfer_coding");
    }
    // A coding list that does not end in chunked cannot be framed: the HTTP layer's 400.
    let raw = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nhello",
        job_path("echo")
    );
    let (response, _) = exchange(h.proxy.addr, raw.as_bytes()).await;
    assert_eq!(response.status, 400, "{response:?}");
    assert!(h.mock.received().is_empty(), "{:?}", h.mock.received());
    assert_eq!(errors(&h, "unsupported_transfer_coding"), 3.0);
}

#[tokio::test]
async fn a_malformed_chunked_request_body_is_the_callers_400() {
    let h = Harness::builder().ready().await;
    let cases = [
        ("a bad chunk size", "zz\r\nhello\r\n0\r\n\r\n"),
        (
            "an overflowing chunk size",
            "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("data longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
    ];
    for (n, (what, body)) in cases.iter().enumerate() {
        let (response, _) = exchange(h.proxy.addr, chunked_post(body).as_bytes()).await;
        assert_raw_refusal(&response, 400, "invalid_body");
        assert_eq!(response.header("zuora-track-id"), Some("bad-chunks"), "{what}");
        assert_eq!(errors(&h, "invalid_body"), (n + 1) as f64, "{what}");
    }
    assert_eq!(errors(&h, "upstream_failed"), 0.0);
    // A well-formed chunked body goes through on the same proxy.
    let (response, _) = exchange(h.proxy.addr, chunked_post("5\r\nhello\r\n0\r\n\r\n").as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    let received = h.mock.received();
    assert_eq!(received.last().map(|r| &r.body[..]), Some(&b"hello"[..]));
}

#[tokio::test]
async fn a_chunked_request_body_slower_than_the_request_timeout_is_the_callers_408() {
    let h = Harness::builder().server("request_timeout", "\"1s\"").ready().await;
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    stream
        .write_all(chunked_post("5\r\nhello\r\n").as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let response = read_response(&mut stream, &mut buf, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_raw_refusal(&response, 408, "body_timeout");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(errors(&h, "upstream_timeout"), 0.0);
    assert_eq!(errors(&h, "body_timeout"), 1.0);
}

#[tokio::test]
async fn a_slow_zuora_behind_a_whole_chunked_body_is_still_504() {
    let h = Harness::builder().server("request_timeout", "\"1s\"").ready().await;
    h.mock.set_api_mode(ApiMode::Delay(Duration::from_secs(3)));
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    stream
        .write_all(chunked_post("5\r\nhello\r\n0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let response = read_response(&mut stream, &mut buf, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_raw_refusal(&response, 504, "upstream_timeout");
}

#[tokio::test]
async fn a_missing_duplicate_or_userinfo_host_is_400() {
    let h = Harness::builder().ready().await;
    let abort = abort_path();
    let cases = [
        ("no Host", format!("POST {abort} HTTP/1.1\r\n")),
        (
            "two Hosts",
            format!("POST {abort} HTTP/1.1\r\nHost: proxy\r\nHost: other\r\n"),
        ),
        (
            "userinfo in Host",
            format!("POST {abort} HTTP/1.1\r\nHost: user:pw@proxy\r\n"),
        ),
        (
            "userinfo in the target",
            format!("POST http://user:pw@proxy{abort} HTTP/1.1\r\nHost: proxy\r\n"),
        ),
    ];
    for (what, head) in &cases {
        let raw = format!("{head}Zuora-Track-Id: bad-host\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let (response, _) = exchange(h.proxy.addr, raw.as_bytes()).await;
        assert_raw_refusal(&response, 400, "invalid_host");
        assert_eq!(response.header("zuora-track-id"), Some("bad-host"), "{what}");
    }
    assert!(h.mock.received().is_empty(), "{:?}", h.mock.received());
    assert_eq!(errors(&h, "invalid_host"), 4.0);
    // HTTP/1.0 has no Host requirement; an absolute-form target without userinfo is fine.
    for head in [
        format!("POST {abort} HTTP/1.0\r\n"),
        format!("POST http://proxy{abort} HTTP/1.1\r\nHost: proxy\r\n"),
    ] {
        let raw = format!("{head}Content-Length: 0\r\nConnection: close\r\n\r\n");
        let (response, _) = exchange(h.proxy.addr, raw.as_bytes()).await;
        assert_eq!(response.status, 200, "{head}: {response:?}");
    }
    assert_eq!(h.mock.received().len(), 2);
}
