//! Bodies both ways: a small request body is held so it can be replayed after a 401, a larger
//! or chunked one streams under the size cap, and Zuora's answer streams back byte for byte.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod chunked;
    pub mod client;
    pub mod fixtures;
    pub mod harness;
}

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use support::chunked::Chunked;
use support::client::*;
use support::fixtures::*;
use support::harness::*;

fn echo_url(h: &Harness) -> String {
    h.url(&job_path("echo"))
}

/// Bytes that differ from position to position, so a reordered or truncated copy shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_small_body_is_replayed_after_a_401() {
    let h = Harness::builder().ready().await;
    // Up to 64 KiB inclusive is held for a replay.
    for (round, len) in [10 * 1024, 64 * 1024].into_iter().enumerate() {
        h.mock.revoke_tokens();
        let body = pattern(len);
        let answer = call(
            Method::POST,
            &echo_url(&h),
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
        assert_eq!(answer.status, 200, "{len} bytes: {:?}", answer.body);
        let received = h.mock.received();
        assert_eq!(received.len(), 2 * (round + 1), "{len} bytes: sent and replayed once");
        for r in &received[2 * round..] {
            assert_eq!(r.body.len(), len);
            assert!(r.body == body, "{len} bytes: Zuora got another body");
            assert_eq!(r.headers["content-type"], "application/json");
        }
        assert_eq!(h.mock.token_calls(), round + 2, "one refetch per revocation");
    }
}

#[tokio::test]
async fn a_body_too_large_to_hold_is_not_replayed_and_zuoras_401_is_passed_on() {
    let h = Harness::builder().ready().await;
    h.mock.revoke_tokens();
    let body = pattern(64 * 1024 + 1);
    let answer = call(Method::POST, &echo_url(&h), &[], body.clone()).await;
    assert_eq!(answer.status, 401, "{:?}", answer.body);
    assert!(answer.header("www-authenticate").is_some(), "Zuora's own 401");
    assert!(answer.header("x-zuora-proxy-error").is_none());
    let received = h.mock.received();
    assert_eq!(received.len(), 1, "a streamed body cannot be sent twice");
    assert!(received[0].body == body, "the streamed body arrived whole");
}

#[tokio::test]
async fn a_body_between_the_replay_buffer_and_the_cap_streams_through_whole() {
    let h = Harness::builder().start().await;
    let body = pattern(300 * 1024);
    let answer = call(Method::POST, &echo_url(&h), &[], body.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let received = h.mock.received();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].body == body,
        "Zuora got {} of {} bytes, or other bytes",
        received[0].body.len(),
        body.len()
    );
}

#[tokio::test]
async fn a_chunked_body_under_the_cap_streams_through_whole() {
    let h = Harness::builder().server("max_body_bytes", "1024").start().await;
    let request = Request::post(echo_url(&h)).body(Chunked::new(4, 250)).unwrap();
    let answer = send(request).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let received = h.mock.received();
    assert_eq!(received.len(), 1);
    let expected: Vec<u8> = (0..4).flat_map(|i| vec![b'a' + i as u8; 250]).collect();
    assert!(received[0].body == expected, "Zuora got {:?}", received[0].body);
    assert!(
        !received[0].headers.contains_key("transfer-encoding") || received[0].headers["transfer-encoding"] == "chunked"
    );
}

#[tokio::test]
async fn a_chunked_body_over_the_cap_is_413() {
    let h = Harness::builder().server("max_body_bytes", "1024").ready().await;
    let request = Request::post(echo_url(&h))
        .header("zuora-track-id", "chunked-1")
        .body(Chunked::new(8, 512))
        .unwrap();
    let answer = send(request).await;
    assert_eq!(assert_refusal(&answer, 413, "body_too_large"), "chunked-1");
    // Whatever part reached Zuora, Zuora never got the whole body.
    for r in h.mock.received() {
        assert!(r.body.len() <= 1024, "Zuora got {} bytes past the cap", r.body.len());
    }
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn a_401_to_a_streamed_body_still_drops_the_refused_token() {
    let h = Harness::builder().ready().await;
    h.mock.revoke_tokens();
    // The first streamed upload cannot be replayed: the caller sees Zuora's 401 (by design)...
    let first = send(Request::post(echo_url(&h)).body(Chunked::new(2, 100)).unwrap()).await;
    assert_eq!(first.status, 401);
    // ...but the proxy now knows its token is refused and must not send it again.
    let second = send(Request::post(echo_url(&h)).body(Chunked::new(2, 100)).unwrap()).await;
    assert_eq!(
        second.status, 200,
        "the refused token was used again: {:?}",
        second.body
    );
    assert_eq!(h.mock.token_calls(), 2);
}

#[tokio::test]
async fn a_download_streams_back_byte_for_byte() {
    let h = Harness::builder().start().await;
    let url = h.url(&job_path("downloads"));
    let answer = call(Method::GET, &url, &[("accept-encoding", "gzip")], Bytes::new()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-encoding"),
        Some("gzip"),
        "the encoding is passed on, not undone"
    );
    assert_eq!(answer.header("content-type"), Some("application/octet-stream"));
    if let Some(length) = answer.header("content-length") {
        assert_eq!(length, "200000");
    }
    let expected = zuora_auth_proxy::mock::download_bytes();
    assert_eq!(answer.body.len(), expected.len());
    assert!(answer.body == expected, "the body changed on the way");
    assert_eq!(h.mock.received()[0].headers["accept-encoding"], "gzip");
}

#[tokio::test]
async fn a_request_body_with_content_encoding_is_passed_on_untouched() {
    let h = Harness::builder().start().await;
    // Opaque bytes standing for a gzipped body: the proxy neither inflates nor checks them.
    let body = Bytes::from(pattern(5000));
    let request = Request::post(echo_url(&h))
        .header("content-encoding", "gzip")
        .body(Full::new(body.clone()))
        .unwrap();
    let answer = send(request).await;
    assert_eq!(answer.status, 200);
    let received = h.mock.received();
    assert_eq!(received[0].headers["content-encoding"], "gzip");
    assert_eq!(received[0].headers["content-length"], "5000");
    assert!(received[0].body == body);
}
