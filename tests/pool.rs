//! The pool of connections to Zuora: a connection is reused, closed once idle for
//! `pool_idle_timeout`, kept at most `pool_max_idle` at a time, never reused with an answer
//! left unread, and a kept-alive connection that Zuora closed costs the next request nothing.
//! Against the harness's mock Zuora, or a TLS server of this file's own that counts the
//! connections it has open.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod metrics;
    pub mod wait;
}

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::metrics::Metrics;
use support::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use zuora_auth_proxy::mock::pki::TestCa;
use zuora_auth_proxy::mock::ApiMode;

#[tokio::test]
async fn a_connection_is_reused_for_the_next_requests() {
    let h = Harness::builder().ready().await;
    // The token was fetched over a connection of the same pool (same host).
    assert_eq!(h.mock.connections(), 1);
    for _ in 0..3 {
        assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);
    }
    assert_eq!(h.mock.api_calls(), 3);
    assert_eq!(h.mock.connections(), 1, "every request went over the first connection");
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_pool_idle_timeout() {
    let (h, up) = with_upstream(&[("pool_idle_timeout", "\"300ms\"")]).await;
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);
    assert_eq!(up.accepted(), 1);
    // No request follows: the pool itself closes the connection.
    eventually("the idle connection closed", async || (up.open() == 0).then_some(())).await;
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);
    assert_eq!(up.accepted(), 2, "the next request opened a new connection");
}

#[tokio::test]
async fn a_connection_is_kept_while_idle_for_less_than_pool_idle_timeout() {
    let (h, up) = with_upstream(&[("pool_idle_timeout", "\"60s\"")]).await;
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);
    // A pause that an idle timeout of 300 ms would not survive (the control of the test above).
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(up.open(), 1);
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);
    assert_eq!(up.accepted(), 1, "reused");
}

#[tokio::test]
async fn pool_max_idle_keeps_at_most_that_many_after_a_burst() {
    let (h, up) = with_upstream(&[("pool_max_idle", "2")]).await;
    up.hold();
    let url = h.url(&abort_path());
    let burst: Vec<_> = (0..5)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, &[]).await.status })
        })
        .collect();
    // Five requests in flight at once need five connections.
    eventually("five requests wait at the upstream", async || {
        (up.waiting() == 5).then_some(())
    })
    .await;
    assert_eq!(up.open(), 5);
    up.release();
    for request in burst {
        assert_eq!(request.await.unwrap(), 200);
    }
    eventually("only two connections stay open", async || {
        (up.open() == 2).then_some(())
    })
    .await;
    assert_eq!(up.accepted(), 5);
}

#[tokio::test]
async fn a_connection_whose_answer_was_not_read_to_its_end_is_not_reused() {
    let h = Harness::builder().ready().await;
    assert_eq!(h.mock.connections(), 1);
    h.mock.set_api_mode(ApiMode::StallBody {
        after_bytes: 100,
        declared: 5_000,
    });
    leave_after_the_first_bytes(&h, &job_path("summary")).await;
    eventually("the abandoned request ended", async || {
        (in_flight(&h) == 0.0).then_some(())
    })
    .await;
    h.mock.set_api_mode(ApiMode::Normal);
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);
    assert_eq!(
        h.mock.connections(),
        2,
        "the connection with half an answer on it was closed, a new one made"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_closed_by_zuora_costs_the_next_request_nothing() {
    let (h, up) = with_upstream(&[]).await;
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);
    assert_eq!(up.open(), 1);
    // Zuora's edge closes the idle connection, as it does sooner or later.
    up.close_all();
    eventually("the upstream closed its connection", async || {
        (up.open() == 0).then_some(())
    })
    .await;
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "after-close")]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(up.accepted(), 2, "sent on a new connection");
    assert_eq!(up.answered(), 2, "each request reached the upstream once");
}

/// A proxy whose tenant (with these keys) has its REST calls answered by an [`Upstream`] and
/// its tokens by the harness's mock.
async fn with_upstream(keys: &[(&str, &str)]) -> (Harness, Upstream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut builder = Harness::builder().rest_at(listener.local_addr().unwrap());
    for (key, value) in keys {
        builder = builder.tenant(key, value);
    }
    let h = builder.ready().await;
    let up = Upstream::serve(listener, h.mock.ca());
    (h, up)
}

fn in_flight(h: &Harness) -> f64 {
    Metrics::parse(&h.proxy.probe().metrics_text()).value_or_zero("zuora_proxy_in_flight{tenant=\"default\"}")
}

/// GETs `path` on a raw socket and goes away once the head and some of the body have come.
async fn leave_after_the_first_bytes(h: &Harness, path: &str) {
    let url = h.url(path);
    let authority = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let mut caller = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    caller.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let body_started = |seen: &[u8]| {
        seen.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .is_some_and(|at| seen.len() > at + 4)
    };
    while !body_started(&seen) {
        let mut chunk = [0u8; 4096];
        let n = caller.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
}

/// A Zuora REST host of the test's own over TLS (a certificate of the mock's CA), answering
/// every request with a small JSON 200, that counts its connections and can hold its answers
/// or close every connection it has.
struct Upstream {
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

struct State {
    accepted: AtomicUsize,
    open: AtomicUsize,
    waiting: AtomicUsize,
    answered: AtomicUsize,
    /// Answers go out while this is true.
    gate: watch::Sender<bool>,
    /// Each change closes every open connection.
    close: watch::Sender<u64>,
}

impl Upstream {
    fn serve(listener: TcpListener, ca: &TestCa) -> Upstream {
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["127.0.0.1"]));
        let state = Arc::new(State {
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            gate: watch::Sender::new(true),
            close: watch::Sender::new(0),
        });
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    state.accepted.fetch_add(1, Ordering::SeqCst);
                    state.open.fetch_add(1, Ordering::SeqCst);
                    let mut close = state.close.subscribe();
                    let service = {
                        let state = state.clone();
                        service_fn(move |_request| answer(state.clone()))
                    };
                    let connection = http1::Builder::new().serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = close.changed() => {}
                    }
                    state.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream { state, accept }
    }

    fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
    fn open(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }
    fn waiting(&self) -> usize {
        self.state.waiting.load(Ordering::SeqCst)
    }
    fn answered(&self) -> usize {
        self.state.answered.load(Ordering::SeqCst)
    }
    fn hold(&self) {
        self.state.gate.send_replace(false);
    }
    fn release(&self) {
        self.state.gate.send_replace(true);
    }
    fn close_all(&self) {
        self.state.close.send_modify(|n| *n += 1);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn answer(state: Arc<State>) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    state.waiting.fetch_add(1, Ordering::SeqCst);
    let mut gate = state.gate.subscribe();
    let _ = gate.wait_for(|open| *open).await;
    state.waiting.fetch_sub(1, Ordering::SeqCst);
    state.answered.fetch_add(1, Ordering::SeqCst);
    let body = Bytes::from_static(br#"{"id":"3a3e85c4-96e7-486b-ae02-827120104301","status":"Aborted"}"#);
    Ok(hyper::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap())
}
