//! The cluster-wide concurrency governor against a real redis-server: several `Cluster`
//! instances (separate connections, standing for replicas) never exceed the limit together,
//! waiters are served in arrival order, a release wakes another replica promptly, renewal
//! keeps a long holder's permit, and a holder killed with SIGKILL frees its permits within
//! one lease.

mod support {
    pub mod redis;
    pub mod wait;
}

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::redis::{replicas, wait_up, RedisServer};
use support::wait::eventually_within;
use tokio::time::Instant;
use zuora_auth_proxy::cluster::{Cluster, Refusal, TenantKey};

fn key() -> TenantKey {
    TenantKey::new("https://rest.test.zuora.com", "client-id", None)
}

/// Every one of the `CHILD_HOLDS` permits of `key()`, each granted within `patience`.
async fn take_all_permits(cluster: &Cluster, patience: Duration) -> Vec<zuora_auth_proxy::cluster::Permit> {
    let mut held = Vec::new();
    for n in 0..CHILD_HOLDS {
        let permit = cluster.acquire(&key(), CHILD_HOLDS, Instant::now() + patience).await;
        held.push(permit.unwrap_or_else(|e| panic!("permit {n} of {CHILD_HOLDS} not granted: {e:?}")));
    }
    held
}

fn permit_count(server: &RedisServer, key: &TenantKey) -> usize {
    let set = format!("zuora-auth-proxy:{{{}}}:permits", key.id());
    redis::cmd("ZCARD").arg(set).query(&mut server.inspect()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_never_exceed_the_limit_across_replicas() {
    const LIMIT: usize = 10;
    const CALLERS: usize = 300;
    let server = RedisServer::start();
    let clusters = replicas(&server, 4).await;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut tasks = Vec::new();
    for i in 0..CALLERS {
        let cluster = clusters[i % clusters.len()].clone();
        let (in_flight, peak) = (in_flight.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            let permit = cluster.acquire(&key(), LIMIT, deadline).await?;
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            // The request's work, while the permit is held.
            tokio::time::sleep(Duration::from_millis(5)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            Ok::<(), Refusal>(())
        }));
    }
    for task in tasks {
        task.await
            .unwrap()
            .expect("every caller gets a permit before the deadline");
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= LIMIT, "peak {peak} over the limit {LIMIT}");
    assert!(peak >= LIMIT / 2, "the callers did run concurrently (peak {peak})");
    let granted: u64 = clusters.iter().map(|c| c.stats().permits_granted).sum();
    assert_eq!(granted, CALLERS as u64);
    assert!(clusters.iter().map(|c| c.stats().permit_waits).sum::<u64>() > 0);
    // Every release reached Redis.
    eventually_within("all leases released", Duration::from_secs(5), async || {
        (permit_count(&server, &key()) == 0 && clusters.iter().all(|c| c.stats().permits_held == 0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_in_one_replica_are_served_in_arrival_order() {
    let server = RedisServer::start();
    let cluster = replicas(&server, 1).await.remove(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let holder = cluster.acquire(&key(), 1, deadline).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (replica, order) = (cluster.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let permit = replica.acquire(&key(), 1, deadline).await.unwrap();
            order.lock().unwrap().push(i);
            drop(permit);
        }));
        // The next one arrives only once this one is queued.
        eventually_within("waiter queued", Duration::from_secs(5), async || {
            (cluster.stats().permits_waiting == i + 1).then_some(())
        })
        .await;
    }
    drop(holder);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..6).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cluster_refuses_at_the_deadline_and_a_release_wakes_another_replica_promptly() {
    let server = RedisServer::start();
    let clusters = replicas(&server, 2).await;
    let (a, b) = (&clusters[0], &clusters[1]);
    let far = || Instant::now() + Duration::from_secs(10);

    let held = a.acquire(&key(), 1, far()).await.unwrap();
    let started = Instant::now();
    let refused = b.acquire(&key(), 1, Instant::now() + Duration::from_millis(300)).await;
    assert_eq!(refused.unwrap_err(), Refusal::Overloaded);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(600),
        "{waited:?}"
    );
    // Another tenant key is counted apart.
    let other = TenantKey::new("https://rest.test.zuora.com", "client-id", Some("entity-2"));
    drop(b.acquire(&other, 1, far()).await.unwrap());
    drop(held);

    // Wake-up latency from a release in A to a grant in B. The 100 ms polling backstop alone
    // would give a median near 50 ms; the pub/sub wake-up gives a few milliseconds.
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let held = a.acquire(&key(), 1, far()).await.unwrap();
        let b = b.clone();
        let waiter = tokio::spawn(async move {
            let permit = b
                .acquire(&key(), 1, Instant::now() + Duration::from_secs(10))
                .await
                .unwrap();
            (Instant::now(), permit)
        });
        eventually_within("B is waiting", Duration::from_secs(5), async || {
            (clusters[1].stats().permits_waiting == 1).then_some(())
        })
        .await;
        let released = Instant::now();
        drop(held);
        let (granted, permit) = waiter.await.unwrap();
        latencies.push(granted - released);
        drop(permit);
        eventually_within("released", Duration::from_secs(5), async || {
            (permit_count(&server, &key()) == 0).then_some(())
        })
        .await;
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    assert!(median < Duration::from_millis(20), "wake-up latencies {latencies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_long_holders_permit() {
    let server = RedisServer::start();
    let clusters = replicas(&server, 2).await;
    let (a, b) = (&clusters[0], &clusters[1]);
    // The lease is 1 s; the holder keeps its permit for three leases.
    let held = a
        .acquire(&key(), 1, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    let refused = b.acquire(&key(), 1, Instant::now() + Duration::from_secs(3)).await;
    assert_eq!(refused.unwrap_err(), Refusal::Overloaded);
    assert!(a.stats().lease_renewals >= 5, "renewals: {}", a.stats().lease_renewals);
    assert_eq!(permit_count(&server, &key()), 1);
    drop(held);
    let granted = b.acquire(&key(), 1, Instant::now() + Duration::from_secs(2)).await;
    assert!(granted.is_ok());
}

/// Set in the child process that holds permits until it is killed.
const CHILD_ENV: &str = "ZAP_CLUSTER_TEST_CHILD_REDIS_PORT";
const CHILD_HOLDS: usize = 3;
const CHILD_READY: &str = "CLUSTER-TEST-CHILD-HOLDS-PERMITS";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_with_sigkill_frees_its_permits_within_one_lease() {
    if let Ok(port) = std::env::var(CHILD_ENV) {
        // Child: take the permits, say so, and wait to be killed (never release).
        let url = url::Url::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
        let mut settings = zuora_auth_proxy::cluster::ClusterSettings::new(url);
        settings.lease = Duration::from_secs(1);
        let cluster = Cluster::start(settings).await.unwrap();
        wait_up(&cluster, true, Duration::from_secs(5)).await;
        let _held = take_all_permits(&cluster, Duration::from_secs(5)).await;
        println!("{CHILD_READY}");
        tokio::time::sleep(Duration::from_secs(30)).await;
        panic!("the child was not killed");
    }

    let server = RedisServer::start();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_holder_killed_with_sigkill_frees_its_permits_within_one_lease",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, server.port().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(CHILD_READY) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the child took its permits");

    // Not `replicas`: the child is subscribed too.
    let cluster = Cluster::start(server.settings()).await.unwrap();
    wait_up(&cluster, true, Duration::from_secs(5)).await;
    let refused = cluster
        .acquire(&key(), CHILD_HOLDS, Instant::now() + Duration::from_millis(1200))
        .await;
    assert_eq!(
        refused.unwrap_err(),
        Refusal::Overloaded,
        "the child's renewed permits count"
    );
    assert_eq!(permit_count(&server, &key()), CHILD_HOLDS);

    child.kill().unwrap(); // SIGKILL: no release, no more renewals.
    let killed = Instant::now();
    child.wait().unwrap();
    let _mine = take_all_permits(&cluster, Duration::from_secs(3)).await;
    let back = killed.elapsed();
    // One lease (1 s) after the last renewal, plus the polling backstop and scheduling.
    assert!(back <= Duration::from_millis(1500), "permits back after {back:?}");
}
