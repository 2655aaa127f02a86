//! Redis failing under the cluster room, against a real redis-server: stopped mid-way (calls
//! fail within `timeout` as `Unavailable`, local mode logged and counted once), restarted on
//! the same port (cluster mode again), hung with SIGSTOP (never more than `timeout` added),
//! a password from a file that is re-read when it changes and never shown, and TLS with a
//! `ca_file` added to the built-in roots.

mod support {
    pub mod redis;
    pub mod wait;
}

use std::time::{Duration, SystemTime};
use support::redis::{wait_up, Logs, RedisServer};
use support::wait::{eventually_within, timed};
use tokio::time::Instant;
use zuora_auth_proxy::cluster::{Cluster, ClusterError, Refusal, TenantKey};

fn key() -> TenantKey {
    TenantKey::new("https://rest.test.zuora.com", "client-id", None)
}

/// Asks for a permit that Redis cannot give: refused as `Unavailable`, after how long.
async fn refused_unavailable(cluster: &Cluster) -> Duration {
    let (refused, took) = timed(cluster.acquire(&key(), 5, Instant::now() + Duration::from_secs(5))).await;
    assert_eq!(refused.unwrap_err(), Refusal::Unavailable);
    took
}

/// What a call may take beyond `timeout` on a busy two-core machine.
const SLACK: Duration = Duration::from_millis(100);
/// The default `cluster.timeout`, which these tests measure against.
const TIMEOUT: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "current_thread")]
async fn redis_stopped_then_restarted_falls_back_once_and_rejoins() {
    let (logs, _guard) = Logs::capture();
    let mut server = RedisServer::start();
    let mut settings = server.settings();
    settings.timeout = TIMEOUT;
    let cluster = Cluster::start(settings).await.unwrap();
    wait_up(&cluster, true, Duration::from_secs(5)).await;
    assert!(cluster.stats().up);
    drop(
        cluster
            .acquire(&key(), 5, Instant::now() + Duration::from_secs(1))
            .await
            .unwrap(),
    );

    server.kill();
    let took = refused_unavailable(&cluster).await;
    assert!(took <= TIMEOUT + SLACK, "a dead Redis cost {took:?}");
    assert!(!cluster.is_up());
    assert!(!cluster.stats().up);

    // In local mode nothing is asked of Redis.
    let errors = cluster.stats().redis_errors;
    for _ in 0..50 {
        assert_eq!(
            cluster
                .acquire(&key(), 5, Instant::now() + Duration::from_secs(5))
                .await
                .unwrap_err(),
            Refusal::Unavailable
        );
    }
    assert_eq!(cluster.stats().redis_errors, errors, "no call went to Redis");
    assert!(matches!(
        cluster.load_token(&key(), "secret").await,
        Err(ClusterError::Unavailable)
    ));
    // A cool-down is still known locally while it cannot be published.
    let until = SystemTime::now() + Duration::from_secs(5);
    assert!(cluster.cool_down(&key(), until).await.is_err());
    assert!(cluster.cooling_until(&key()).is_some());

    // Let the prober fail a few more times: still one transition, one log line.
    let errors = cluster.stats().redis_errors;
    eventually_within("the prober tried again twice", Duration::from_secs(5), async || {
        (cluster.stats().redis_errors >= errors + 2).then_some(())
    })
    .await;
    let stats = cluster.stats();
    assert_eq!(stats.fallback_transitions, 1);
    assert!(stats.permits_refused_unavailable >= 51);

    server.restart();
    wait_up(&cluster, true, Duration::from_secs(5)).await;
    assert!(cluster.stats().up);
    let permit = cluster
        .acquire(&key(), 5, Instant::now() + Duration::from_secs(1))
        .await;
    assert!(permit.is_ok(), "cluster mode again after the restart");
    assert_eq!(cluster.stats().fallback_transitions, 1);

    let text = logs.text();
    assert_eq!(text.matches("falling back to local mode").count(), 1, "{text}");
    assert_eq!(text.matches("rejoined cluster mode").count(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_adds_at_most_the_timeout() {
    let server = RedisServer::start();
    let mut settings = server.settings();
    settings.timeout = TIMEOUT;
    let cluster = Cluster::start(settings).await.unwrap();
    wait_up(&cluster, true, Duration::from_secs(5)).await;
    let secret = "client-secret";
    let lock = cluster.try_refresh_lock(&key()).await.unwrap().unwrap();
    let expires = SystemTime::now() + Duration::from_secs(60);
    cluster.store_token(&lock, "tok", expires, secret).await.unwrap();

    server.pause();
    let took = refused_unavailable(&cluster).await;
    assert!(took >= TIMEOUT && took <= TIMEOUT + SLACK, "a hung Redis cost {took:?}");
    assert!(!cluster.is_up());

    server.resume();
    wait_up(&cluster, true, Duration::from_secs(5)).await;
    let token = cluster.load_token(&key(), secret).await.unwrap();
    assert_eq!(token.expect("the token survived the pause").access_token(), "tok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_means_local_mode_until_it_answers() {
    let mut server = RedisServer::start();
    let settings = server.settings();
    server.kill();
    let started = Instant::now();
    let cluster = Cluster::start(settings).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!cluster.is_up());
    assert_eq!(cluster.stats().fallback_transitions, 1);
    server.restart();
    wait_up(&cluster, true, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn password_from_a_file_is_reread_when_it_changes_and_never_shown() {
    const RIGHT: &str = "Right-Redis-Pass-1";
    const WRONG: &str = "Wrong-Redis-Pass-2";
    let (logs, _guard) = Logs::capture();
    let server = RedisServer::start_with_password(RIGHT);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, format!("{WRONG}\n")).unwrap();
    let mut settings = server.settings();
    settings.password_file = Some(file.clone());

    let cluster = Cluster::start(settings.clone()).await.unwrap();
    assert!(!cluster.is_up(), "a wrong password keeps the replica in local mode");

    std::fs::write(&file, format!("{RIGHT}\n")).unwrap();
    wait_up(&cluster, true, Duration::from_secs(5)).await;
    drop(
        cluster
            .acquire(&key(), 1, Instant::now() + Duration::from_secs(1))
            .await
            .unwrap(),
    );

    // Back to a wrong one: new connections fail, and the replica says so.
    std::fs::write(&file, format!("{WRONG}-again\n")).unwrap();
    wait_up(&cluster, false, Duration::from_secs(5)).await;

    for shown in [
        format!("{settings:?}"),
        settings.to_json().to_string(),
        format!("{:?}", cluster.stats()),
        logs.text(),
    ] {
        assert!(!shown.contains(RIGHT) && !shown.contains(WRONG), "{shown}");
    }
    assert!(logs.text().contains("falling back to local mode"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_ca_file_added_to_the_built_in_roots() {
    let server = RedisServer::start_tls();
    let tls = server.tls.as_ref().unwrap();
    let mut settings = server.settings();
    settings.redis_url = server.tls_url();

    // Without the CA the certificate is unknown: local mode.
    let untrusted = Cluster::start(settings.clone()).await.unwrap();
    assert!(!untrusted.is_up());

    settings.ca_file = Some(tls.ca_file.clone());
    let cluster = Cluster::start(settings).await.unwrap();
    wait_up(&cluster, true, Duration::from_secs(5)).await;
    let held = cluster
        .acquire(&key(), 1, Instant::now() + Duration::from_secs(1))
        .await
        .unwrap();
    // The permit really went through the TLS port to this server.
    let set = format!("zuora-auth-proxy:{{{}}}:permits", key().id());
    let count: usize = redis::cmd("ZCARD").arg(set).query(&mut server.inspect()).unwrap();
    assert_eq!(count, 1);
    drop(held);
}
