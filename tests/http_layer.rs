//! Requests the HTTP layer refuses itself, before any handler sees them: a malformed head
//! (400) and a head over `server.max_header_bytes` (431). hyper writes those answers; each
//! still leaves one access line and a `requests_total{route="(none)"}` count.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod binary;
    pub mod client;
    pub mod exe;
    pub mod fixtures;
    pub mod harness;
    pub mod metrics;
    pub mod raw;
    pub mod wait;
}

use std::net::SocketAddr;
use std::time::Duration;
use support::binary::Binary;
use support::harness::*;
use support::metrics::Metrics;
use support::raw::{read_response, RawResponse};
use support::wait::eventually;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A header line with no colon: hyper's parser refuses the head.
const MALFORMED: &[u8] = b"GET /bulk-data/bulk-jobs HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n";

/// A head of `bytes` bytes or more, in one header.
fn oversized_head(bytes: usize) -> Vec<u8> {
    format!(
        "GET /bulk-data/bulk-jobs HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(bytes)
    )
    .into_bytes()
}

/// Writes `raw` on a fresh connection and reads the one answer.
async fn answer(addr: SocketAddr, raw: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    stream.write_all(raw).await.expect("request written");
    let mut buf = Vec::new();
    read_response(&mut stream, &mut buf, Duration::from_secs(5))
        .await
        .expect("an answer")
}

fn no_route(h: &Harness, status: u16) -> f64 {
    Metrics::parse(&h.proxy.probe().metrics_text()).value_or_zero(&format!(
        "zuora_proxy_requests_total{{route=\"(none)\",status=\"{status}\"}}"
    ))
}

#[tokio::test]
async fn a_malformed_head_is_answered_400_and_counted() {
    let h = Harness::builder().start().await;
    let refused = answer(h.proxy.addr, MALFORMED).await;
    assert_eq!(refused.status, 400);
    assert!(refused.body.is_empty(), "{:?}", refused.body);
    assert_eq!(refused.header("x-zuora-proxy-error"), None, "hyper's own answer");
    eventually("the 400 counted under route (none)", async || {
        (no_route(&h, 400) == 1.0).then_some(())
    })
    .await;
    assert_eq!(h.mock.api_calls(), 0);
}

#[tokio::test]
async fn a_head_over_max_header_bytes_is_answered_431_and_counted() {
    let h = Harness::builder().server("max_header_bytes", "8192").start().await;
    let refused = answer(h.proxy.addr, &oversized_head(10_000)).await;
    assert_eq!(refused.status, 431);
    eventually("the 431 counted under route (none)", async || {
        (no_route(&h, 431) == 1.0).then_some(())
    })
    .await;
    // A head within the limit is an ordinary request (here, one on no route).
    let fits = answer(h.proxy.addr, &oversized_head(4_000)).await;
    assert_eq!(fits.status, 404);
    eventually("the 404 counted", async || (no_route(&h, 404) == 1.0).then_some(())).await;
    assert_eq!(no_route(&h, 431), 1.0, "one refusal, counted once");
    let errors = Metrics::parse(&h.proxy.probe().metrics_text())
        .value_or_zero("zuora_proxy_proxy_errors_total{code=\"request_head_too_large\"}");
    assert_eq!(errors, 1.0, "counted by its code too");
}

#[tokio::test]
async fn each_refusal_leaves_one_access_line_naming_the_caller() {
    let h = Harness::builder().start().await;
    let (_mock, _dir, config) = h.config_for_binary().await;
    let mut bin = Binary::spawn(&config);
    let addr = bin.listening().await.addr;

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let caller = stream.local_addr().unwrap().to_string();
    stream.write_all(MALFORMED).await.unwrap();
    let mut buf = Vec::new();
    let refused = read_response(&mut stream, &mut buf, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(refused.status, 400);
    assert_eq!(answer(addr, &oversized_head(20_000)).await.status, 431);

    let access = |log: &str| -> Vec<serde_json::Value> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["target"] == "access")
            .collect()
    };
    let lines = eventually("two access lines", async || {
        let lines = access(&bin.log());
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    let malformed = lines.iter().find(|l| l["status"] == 400).expect("a 400 line");
    assert_eq!(malformed["error"], "malformed_request", "{malformed}");
    assert_eq!(malformed["client_addr"], caller.as_str(), "{malformed}");
    assert!(malformed.get("route").is_none(), "{malformed}");
    let too_large = lines.iter().find(|l| l["status"] == 431).expect("a 431 line");
    assert_eq!(too_large["error"], "request_head_too_large", "{too_large}");
    assert!(too_large["client_addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    let (code, log) = bin.terminate().await;
    assert_eq!(code, Some(0));
    let all = access(&log.join("\n"));
    assert_eq!(all.len(), 2, "one line per refusal: {all:?}");
}
