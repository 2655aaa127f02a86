//! `server.workers`: several workers share the caller-facing port (one `SO_REUSEPORT` socket
//! each), and every one of them serves, drains on SIGTERM and follows a reload. Which worker
//! accepted a connection is read from `zuora_proxy_connections_accepted_total{worker}`.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod binary;
    pub mod client;
    pub mod exe;
    pub mod fixtures;
    pub mod harness;
    pub mod metrics;
    pub mod wait;
}

use std::time::Duration;
use support::binary::{Binary, Upstream};
use support::client::post;
use support::fixtures::*;
use support::harness::*;
use support::metrics::{scrape, Metrics};
use support::wait::eventually;
use zuora_auth_proxy::mock::ApiMode;

const ACCEPTED: &str = "zuora_proxy_connections_accepted_total";

/// Connections each worker has accepted, worker 0 first.
fn accepted(metrics: &Metrics, workers: usize) -> Vec<f64> {
    (0..workers)
        .map(|w| metrics.value(&format!("{ACCEPTED}{{worker=\"{w}\"}}")))
        .collect()
}

fn accepted_in_process(h: &Harness, workers: usize) -> Vec<f64> {
    accepted(&Metrics::parse(&h.proxy.probe().metrics_text()), workers)
}

/// The one worker whose count rose between `before` and `after`.
fn the_one_that_served(before: &[f64], after: &[f64]) -> usize {
    let rose: Vec<usize> = (0..before.len()).filter(|&w| after[w] > before[w]).collect();
    assert_eq!(rose.len(), 1, "one new connection, one worker: {before:?} -> {after:?}");
    assert_eq!(after[rose[0]] - before[rose[0]], 1.0, "{before:?} -> {after:?}");
    rose[0]
}

/// Sends the abort call on new connections, one at a time, until every worker has served one;
/// each answer must be a 200 whose request reached Zuora with `entity`.
async fn until_every_worker_served(h: &Harness, workers: usize, entity: &str) {
    let mut served = vec![false; workers];
    let mut before = accepted_in_process(h, workers);
    eventually("every worker accepts a connection", async || {
        // support::client opens a new connection for every request.
        let answer = post(&h.url(&abort_path()), &[]).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        let received = h.mock.received();
        let sent = received.last().expect("Zuora received the request").headers["zuora-entity-ids"]
            .to_str()
            .unwrap()
            .to_string();
        let after = accepted_in_process(h, workers);
        let worker = the_one_that_served(&before, &after);
        assert_eq!(sent, entity, "worker {worker} served with the configuration in force");
        served[worker] = true;
        before = after;
        served.iter().all(|s| *s).then_some(())
    })
    .await;
}

fn rule(entity: &str) -> String {
    format!("\n[[rules]]\nname = \"main\"\ntenant = \"{DEFAULT_TENANT}\"\nentity_ids = [\"{entity}\"]\n")
}

const OTHER_ENTITY: &str = "0f3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d";

#[tokio::test]
async fn every_worker_serves_and_follows_a_reload() {
    let h = Harness::builder()
        .server("workers", "3")
        .rules(&rule(ENTITY))
        .start()
        .await;
    h.wait_for_token().await;
    assert_eq!(accepted_in_process(&h, 3), vec![0.0, 0.0, 0.0], "nothing accepted yet");
    until_every_worker_served(&h, 3, ENTITY).await;

    h.proxy
        .reload(h.config_with(|s| s.rules(&rule(OTHER_ENTITY))))
        .expect("reloads");
    until_every_worker_served(&h, 3, OTHER_ENTITY).await;
    assert_eq!(h.mock.token_calls(), 1, "one token for every worker");
}

#[tokio::test]
async fn one_worker_is_the_default() {
    let h = Harness::builder().start().await;
    h.wait_for_token().await;
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);
    let metrics = Metrics::parse(&h.proxy.probe().metrics_text());
    assert_eq!(metrics.value(&format!("{ACCEPTED}{{worker=\"0\"}}")), 1.0);
    assert_eq!(
        metrics.get(&format!("{ACCEPTED}{{worker=\"1\"}}")),
        None,
        "no second worker"
    );
}

/// SIGTERM with requests in flight on both workers: every one is answered, then exit 0.
#[tokio::test]
async fn the_binary_drains_every_worker() {
    const WORKERS: usize = 2;
    const IN_FLIGHT: usize = 16;
    let upstream = Upstream::start("drain-secret").await;
    let text = upstream.config(ROUTES).text().replace(
        "shutdown_grace = \"5s\"",
        &format!("shutdown_grace = \"5s\"\nworkers = {WORKERS}"),
    );
    assert!(text.contains("workers = 2"), "{text}");
    let path = upstream.dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let mut proxy = Binary::spawn(&path);
    let at = proxy.listening().await;
    let metrics_url = format!("http://{}/metrics", at.admin.expect("admin listener"));
    let url = format!("http://{}{}", at.addr, abort_path());
    // The first request waits for the token; then Zuora takes its time.
    assert_eq!(post(&url, &[]).await.status, 200);
    upstream.mock.set_api_mode(ApiMode::Delay(Duration::from_millis(1500)));
    let calls = upstream.mock.api_calls();

    let slow: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, &[]).await.status.as_u16() })
        })
        .collect();
    assert!(
        upstream
            .mock
            .wait_api_calls(calls + IN_FLIGHT, Duration::from_secs(10))
            .await,
        "every slow request reached Zuora"
    );
    // 17 connections over two sockets: each worker has at least one request in flight
    // (the chance that the kernel's hash put all 16 on one is 2^-15).
    let per_worker = accepted(&scrape(&metrics_url).await, WORKERS);
    assert_eq!(per_worker.iter().sum::<f64>(), (IN_FLIGHT + 1) as f64, "{per_worker:?}");
    assert!(per_worker.iter().all(|n| *n >= 1.0), "{per_worker:?}");

    proxy.signal("TERM");
    for request in slow {
        assert_eq!(
            request.await.unwrap(),
            200,
            "an in-flight request finished in the drain"
        );
    }
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", proxy.log());
    let log = proxy.log();
    let listener = at.addr.to_string();
    let drained = log
        .lines()
        .filter(|line| line.contains("\"drained\"") && line.contains(&listener))
        .count();
    assert_eq!(drained, WORKERS, "each worker reports its drain:\n{log}");
}

#[tokio::test]
async fn a_unix_socket_takes_one_worker() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let text = format!(
        "[server]\nlisten = \"unix:{}\"\nworkers = 2\n[tenants.default]\nbase_url = \"https://rest.zuora.com\"\nclient_id = \"id\"\nclient_secret = \"secret\"\n{ROUTES}",
        socket.display()
    );
    let error = zuora_auth_proxy::Config::from_toml(&text).expect_err("refused");
    let text = error.to_string();
    assert!(text.contains("server.workers"), "{text}");
    assert!(text.contains("Unix socket"), "{text}");
}

#[test]
fn workers_are_counted_from_1_to_64() {
    let config = |workers: &str| {
        zuora_auth_proxy::Config::from_toml(&format!(
            "[server]\nworkers = {workers}\n[tenants.default]\nbase_url = \"https://rest.zuora.com\"\nclient_id = \"id\"\nclient_secret = \"secret\"\n{ROUTES}"
        ))
    };
    for refused in ["0", "65"] {
        let error = config(refused).expect_err(refused).to_string();
        assert!(
            error.contains("server.workers") && error.contains("from 1 to 64"),
            "{error}"
        );
    }
    for taken in ["1", "64"] {
        assert!(config(taken).is_ok(), "workers = {taken}");
    }
}
