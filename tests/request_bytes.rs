//! The access line's `request_bytes` for bodies streamed to Zuora (larger than the replay
//! buffer, or chunked): counted as they go through, so the line says how much the caller sent.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod chunked;
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod logs;
    pub mod wait;
}

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::chunked::Chunked;
use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::wait::eventually;

async fn line_of(track: &str) -> serde_json::Value {
    eventually(&format!("the access line of {track}"), async || {
        support::logs::access_lines(track).into_iter().next()
    })
    .await
}

#[tokio::test]
async fn streamed_bodies_are_counted_in_the_access_line() {
    support::logs::capture(tracing::Level::INFO);
    let h = Harness::builder().start().await;
    let url = h.url(&job_path("echo"));

    // Declared, but over the 64 KiB that are buffered: streamed.
    let big = Bytes::from(vec![b'x'; 200_000]);
    let request = Request::post(&url)
        .header("zuora-track-id", "bytes-declared")
        .body(Full::new(big.clone()))
        .unwrap();
    assert_eq!(send(request).await.status, 200);
    assert_eq!(h.mock.received().last().unwrap().body.len(), big.len());
    assert_eq!(line_of("bytes-declared").await["request_bytes"], 200_000);

    // Chunked, with no declared length at all.
    let request = Request::post(&url)
        .header("zuora-track-id", "bytes-chunked")
        .body(Chunked::new(5, 1000))
        .unwrap();
    assert_eq!(send(request).await.status, 200);
    assert_eq!(line_of("bytes-chunked").await["request_bytes"], 5000);
}
