//! Many replicas, one Zuora tenant: proxies started in-process with `[cluster]` against one
//! real redis-server and one mock Zuora. Zuora's recorded peak stays under the cluster cap,
//! the token is fetched about once per lifetime for the whole fleet, Redis failing leaves the
//! replicas serving under their fallback cap (and they rejoin), and a 429 at one replica
//! holds the others.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod fleet;
    pub mod metrics;
    pub mod redis;
    pub mod wait;
}

use std::time::Duration;
use support::client::post;
use support::fleet::{assert_ok_or_overloaded, burst, Fleet, Replica};
use support::wait::{assert_took, eventually};
use tokio::time::Instant;
use zuora_auth_proxy::mock::{ApiMode, ExpiresIn, MockZuora};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_replicas_never_exceed_the_cluster_cap_together() {
    let mut fleet = Fleet::on(
        MockZuora::builder()
            .concurrency_limit(10)
            .concurrency_retry_after(1)
            .latency(Duration::from_millis(20)),
    )
    .await;
    fleet.start(&Replica::new(10, 6), 6).await;

    let answers = burst(&fleet, 300).await;
    let ok = assert_ok_or_overloaded(&answers);
    assert!(ok >= 250, "most callers are served within queue_timeout: {ok} of 300");
    assert_eq!(fleet.mock.rejected_429(), 0, "no request went over Zuora's limit");
    let peak = fleet.mock.peak_concurrency();
    assert!((2..=10).contains(&peak), "Zuora's peak {peak}");
    let granted: f64 = (0..6)
        .map(|i| fleet.metrics(i).value("zuora_proxy_cluster_permits_granted_total"))
        .sum();
    assert_eq!(granted as usize, ok, "every request served held a cluster permit");
    let waited: f64 = (0..6)
        .map(|i| fleet.metrics(i).value("zuora_proxy_cluster_permit_waits_total"))
        .sum();
    assert!(waited > 0.0, "300 callers over a cap of 10 had to wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_fetches_about_one_token_per_lifetime() {
    let mut fleet = Fleet::on(MockZuora::builder().expires_in(ExpiresIn::Int(2))).await;
    let replica = Replica::new(40, 6).tenant("refresh_margin = \"500ms\"");
    fleet.start(&replica, 6).await;
    let at_start = fleet.mock.token_calls();
    assert!(at_start <= 2, "six replicas starting fetched {at_start} tokens");

    // Eight seconds of light traffic on every replica: each request needs a usable token.
    let until = Instant::now() + Duration::from_secs(8);
    let mut served = 0;
    while Instant::now() < until {
        let answers = burst(&fleet, 6).await;
        assert!(answers.iter().all(|a| a.0 == 200), "{answers:?}");
        served += answers.len();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fetched = fleet.mock.token_calls();
    // A 2 s token refreshed 0.5 s early: about one fetch per 1.5 s for the whole fleet,
    // where six replicas on their own would make about 32.
    assert!((4..=10).contains(&fetched), "{fetched} token fetches in 8 s");
    let reads: f64 = (0..6)
        .map(|i| fleet.metrics(i).value("zuora_proxy_cluster_shared_token_reads_total"))
        .sum();
    assert!(reads >= 5.0 * 4.0, "replicas took the shared token ({reads} reads)");
    assert!(served > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_shared_token_is_replaced_once_for_the_whole_fleet() {
    let mut fleet = Fleet::on(MockZuora::builder()).await;
    fleet.start(&Replica::new(40, 6), 6).await;
    assert!(fleet.all_cluster_up(true));
    assert!(burst(&fleet, 12).await.iter().all(|a| a.0 == 200));
    let before = fleet.mock.token_calls();

    // Zuora forgets the token: every replica's next request gets a 401 for it.
    fleet.mock.revoke_tokens();
    let answers = burst(&fleet, 30).await;
    assert!(
        answers.iter().all(|a| a.0 == 200),
        "each 401 was replayed with the new token: {answers:?}"
    );
    assert_eq!(
        fleet.mock.token_calls() - before,
        1,
        "one new token for six replicas, not one each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failing_leaves_the_fallback_cap_and_the_fleet_rejoins() {
    let mut fleet = Fleet::on(MockZuora::builder().latency(Duration::from_millis(20))).await;
    // Fallback share: ceil(12 / 3) = 4 per replica.
    fleet.start(&Replica::new(12, 3), 3).await;
    assert!(fleet.all_cluster_up(true));
    assert_ok_or_overloaded(&burst(&fleet, 30).await);
    let fetches = fleet.mock.token_calls();

    fleet.redis.kill();
    let answers = burst(&fleet, 60).await;
    let ok = assert_ok_or_overloaded(&answers);
    assert!(ok >= 50, "requests keep being served without Redis: {ok} of 60");
    eventually("every replica in local mode", async || {
        fleet.all_cluster_up(false).then_some(())
    })
    .await;
    let fallbacks: f64 = (0..3)
        .map(|i| {
            fleet
                .metrics(i)
                .value("zuora_proxy_cluster_permits_refused_total{reason=\"unavailable\"}")
        })
        .sum();
    assert!(fallbacks >= 50.0, "served under the fallback cap: {fallbacks}");
    assert!(
        fleet.mock.peak_concurrency() <= 12,
        "three fallback shares of 4: peak {}",
        fleet.mock.peak_concurrency()
    );
    let ready = support::client::get(&format!("http://{}/readyz", fleet.proxies[0].admin_addr.unwrap())).await;
    assert_eq!(ready.status, 200, "Redis down does not make a replica unready");
    assert_eq!(ready.json()["cluster"]["mode"], "local");

    fleet.redis.restart();
    eventually("every replica back in cluster mode", async || {
        fleet.all_cluster_up(true).then_some(())
    })
    .await;
    let granted_before: f64 = (0..3)
        .map(|i| fleet.metrics(i).value("zuora_proxy_cluster_permits_granted_total"))
        .sum();
    assert_eq!(assert_ok_or_overloaded(&burst(&fleet, 30).await), 30);
    let granted_after: f64 = (0..3)
        .map(|i| fleet.metrics(i).value("zuora_proxy_cluster_permits_granted_total"))
        .sum();
    assert_eq!(granted_after - granted_before, 30.0, "permits come from Redis again");
    assert!(fleet.metrics(0).value("zuora_proxy_cluster_fallback_transitions_total") >= 1.0);
    // Leaving and rejoining cost Zuora no token: each replica kept its still-valid one, and
    // the first back shared it again (a restarted Redis holds none).
    assert_eq!(
        fleet.mock.token_calls(),
        fetches,
        "no token fetched across the outage and rejoin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_at_one_replica_holds_the_others() {
    let mut fleet = Fleet::on(MockZuora::builder()).await;
    fleet.start(&Replica::new(40, 2), 2).await;
    // A third replica that may not queue as long as the cool-down lasts.
    fleet
        .start(&Replica::new(40, 2).tenant("queue_timeout = \"200ms\""), 1)
        .await;
    fleet.redis.wait_subscribers(3).await;

    fleet.mock.set_api_script(vec![ApiMode::Status {
        status: 429,
        retry_after_secs: Some(2),
    }]);
    let first = post(&fleet.url(0), &[]).await;
    assert_eq!(first.status, 429, "Zuora's 429 reaches its caller");
    eventually("the cool-down reached the other replicas", async || {
        (1..3)
            .all(|i| fleet.metrics(i).value("zuora_proxy_cluster_cooldowns_received_total") >= 1.0)
            .then_some(())
    })
    .await;
    let calls = fleet.mock.api_calls();

    let short = post(&fleet.url(2), &[]).await;
    assert_eq!(short.status, 503);
    assert_eq!(short.header("x-zuora-proxy-error"), Some("overloaded"));
    // Zuora said 2 s: the caller is told how long to stay away, rounded up.
    let retry_after: u64 = short.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");

    let started = Instant::now();
    let held = post(&fleet.url(1), &[]).await;
    assert_eq!(held.status, 200);
    assert_took(
        started.elapsed(),
        Duration::from_millis(1000)..,
        "held until the cool-down ended, not sent into the limit",
    );
    assert_eq!(fleet.mock.api_calls(), calls + 1, "nothing was sent while cooling");
}
