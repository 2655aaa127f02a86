//! What replicas share through a real redis-server: one sealed token per tenant (the value in
//! Redis is not the bearer token and opens only with the tenant's secret), an exclusive
//! refresh lock whose stale fence is refused, compare-and-delete after a 401 that deletes
//! once, a notice to other replicas when the token changes, and cool-downs seen by every
//! replica, late joiners included.

mod support {
    pub mod redis;
    pub mod wait;
}

use std::time::{Duration, SystemTime};
use support::redis::{replicas, RedisServer};
use support::wait::eventually_within;
use zuora_auth_proxy::cluster::{Cluster, ClusterError, TenantKey, COOLDOWN_MAX_SECS};

const SECRET: &str = "the-client-secret";
const BEARER: &str = "bearer-token-value-0123456789";

fn key() -> TenantKey {
    TenantKey::new("https://rest.test.zuora.com", "client-id", None)
}

fn in_an_hour() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_stored_by_one_replica_is_read_sealed_by_another() {
    let server = RedisServer::start();
    let clusters = replicas(&server, 2).await;
    let (a, b) = (&clusters[0], &clusters[1]);
    assert!(b.load_token(&key(), SECRET).await.unwrap().is_none());
    let mut updates = b.token_updates(&key());
    updates.mark_unchanged();

    let expires = in_an_hour();
    let lock = a.try_refresh_lock(&key()).await.unwrap().expect("the lock is free");
    let stored = a.store_token(&lock, BEARER, expires, SECRET).await.unwrap();
    assert!(!format!("{stored:?}").contains(BEARER));
    tokio::time::timeout(Duration::from_secs(2), updates.changed())
        .await
        .expect("B is told of the new token")
        .unwrap();

    let read = b.load_token(&key(), SECRET).await.unwrap().expect("a shared token");
    assert_eq!(read.access_token(), BEARER);
    assert_eq!(read.fingerprint, stored.fingerprint);
    let skew = read.expires_at.duration_since(expires).unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_millis(1), "expiry travels with the token");
    assert_eq!(b.stats().shared_token_reads, 1);
    assert_eq!(a.stats().shared_token_stores, 1);

    // Redis holds ciphertext, not the token, and expires it with the token.
    let name = format!("zuora-auth-proxy:{{{}}}:token", key().id());
    let raw: Vec<u8> = redis::cmd("GET").arg(&name).query(&mut server.inspect()).unwrap();
    assert!(!raw.is_empty());
    assert!(!raw.windows(BEARER.len()).any(|w| w == BEARER.as_bytes()));
    assert!(!raw.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
    let ttl: i64 = redis::cmd("PTTL").arg(&name).query(&mut server.inspect()).unwrap();
    assert!(ttl > 3_590_000 && ttl <= 3_600_000, "ttl {ttl}");

    // Another secret cannot open it; neither can another tenant with the same secret.
    assert!(b.load_token(&key(), "another-secret").await.unwrap().is_none());
    assert_eq!(b.stats().shared_token_unreadable, 1);
    let elsewhere = TenantKey::new("https://rest.eu.zuora.com", "client-id", None);
    let _: () = redis::cmd("SET")
        .arg(format!("zuora-auth-proxy:{{{}}}:token", elsewhere.id()))
        .arg(&raw)
        .query(&mut server.inspect())
        .unwrap();
    assert!(b.load_token(&elsewhere, SECRET).await.unwrap().is_none());

    // A token that has expired is not stored.
    let lock = a.try_refresh_lock(&key()).await.unwrap().unwrap();
    let past = SystemTime::now() - Duration::from_secs(1);
    assert!(matches!(
        a.store_token(&lock, BEARER, past, SECRET).await,
        Err(ClusterError::Expired)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_401s_delete_the_shared_token_once() {
    let server = RedisServer::start();
    let clusters = replicas(&server, 3).await;
    let lock = clusters[0].try_refresh_lock(&key()).await.unwrap().unwrap();
    let stored = clusters[0]
        .store_token(&lock, BEARER, in_an_hour(), SECRET)
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..100 {
        let cluster = clusters[i % 3].clone();
        let fingerprint = stored.fingerprint.clone();
        tasks.push(tokio::spawn(async move {
            cluster.invalidate_if_current(&key(), &fingerprint).await.unwrap()
        }));
    }
    let mut deleted = 0;
    for task in tasks {
        deleted += task.await.unwrap() as usize;
    }
    assert_eq!(deleted, 1);
    assert!(clusters[1].load_token(&key(), SECRET).await.unwrap().is_none());

    // A newer token is not deleted by a late 401 for the old one.
    let lock = clusters[1].try_refresh_lock(&key()).await.unwrap().unwrap();
    let newer = clusters[1]
        .store_token(&lock, "newer-token", in_an_hour(), SECRET)
        .await
        .unwrap();
    assert!(!clusters[2]
        .invalidate_if_current(&key(), &stored.fingerprint)
        .await
        .unwrap());
    let current = clusters[2].load_token(&key(), SECRET).await.unwrap().unwrap();
    assert_eq!(current.access_token(), "newer-token");
    assert_eq!(current.fingerprint, newer.fingerprint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_lock_is_exclusive_and_a_stale_fence_is_refused() {
    let server = RedisServer::start();
    let clusters = replicas(&server, 3).await;
    let (a, b, c) = (&clusters[0], &clusters[1], &clusters[2]);

    // Many replicas at once: exactly one gets it.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let cluster = clusters[i % 3].clone();
        tasks.push(tokio::spawn(
            async move { cluster.try_refresh_lock(&key()).await.unwrap() },
        ));
    }
    let mut locks = Vec::new();
    for task in tasks {
        locks.extend(task.await.unwrap());
    }
    assert_eq!(locks.len(), 1);
    let first = locks.pop().unwrap();
    assert!(b.try_refresh_lock(&key()).await.unwrap().is_none());

    // Its holder stalls past the lease (1 s); another replica takes over with a higher fence.
    let started = std::time::Instant::now();
    let second = eventually_within("the lock expired", Duration::from_secs(3), async || {
        b.try_refresh_lock(&key()).await.unwrap()
    })
    .await;
    assert!(second.fence() > first.fence());
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "the lease was honoured"
    );

    let refused = a.store_token(&first, "stale-token", in_an_hour(), SECRET).await;
    assert!(matches!(refused, Err(ClusterError::StaleFence { .. })), "{refused:?}");
    // Dropping the stale lock does not release the newer holder's.
    drop(first);
    let lock_key = format!("zuora-auth-proxy:{{{}}}:refresh-lock", key().id());
    eventually_within("the stale unlock ran", Duration::from_secs(2), async || {
        let fence: Option<u64> = redis::cmd("GET").arg(&lock_key).query(&mut server.inspect()).unwrap();
        (fence == Some(second.fence())).then_some(())
    })
    .await;
    assert!(c.try_refresh_lock(&key()).await.unwrap().is_none());

    b.store_token(&second, "fresh-token", in_an_hour(), SECRET)
        .await
        .unwrap();
    assert_eq!(
        c.load_token(&key(), SECRET).await.unwrap().unwrap().access_token(),
        "fresh-token"
    );
    // Storing released the lock.
    let third = c.try_refresh_lock(&key()).await.unwrap().expect("free after the store");
    assert!(third.fence() > second.fence());
    // A dropped lock is released for the next replica.
    drop(third);
    eventually_within("the dropped lock is free", Duration::from_secs(2), async || {
        let held: bool = redis::cmd("EXISTS")
            .arg(&lock_key)
            .query(&mut server.inspect())
            .unwrap();
        (!held).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cool_down_reaches_every_replica_and_late_joiners() {
    let server = RedisServer::start();
    let clusters = replicas(&server, 2).await;
    let (a, b) = (&clusters[0], &clusters[1]);
    let other = TenantKey::new("https://rest.test.zuora.com", "client-id", Some("entity-2"));
    assert_eq!(b.cooling_until(&key()), None);

    let until = SystemTime::now() + Duration::from_secs(3);
    a.cool_down(&key(), until).await.unwrap();
    assert!(a.cooling_until(&key()).is_some(), "the publisher knows at once");
    eventually_within("B hears of the cool-down", Duration::from_secs(2), async || {
        (b.cooling_until(&key()).is_some()).then_some(())
    })
    .await;
    let seen = b.cooling_until(&key()).unwrap();
    let diff = seen.duration_since(until).unwrap_or_else(|e| e.duration());
    assert!(diff < Duration::from_millis(1), "same end, to the millisecond");
    assert_eq!(b.cooling_until(&other), None, "another key is not cooled");
    assert_eq!(b.stats().cooldowns_received, 1);

    // An earlier end does not shorten it.
    a.cool_down(&key(), SystemTime::now() + Duration::from_millis(10))
        .await
        .unwrap();
    let late = Cluster::start(server.settings()).await.unwrap();
    eventually_within(
        "a replica started later reads it back",
        Duration::from_secs(5),
        async || (late.cooling_until(&key()).is_some()).then_some(()),
    )
    .await;
    let known = late.cooling_until(&key()).unwrap();
    assert!(known.duration_since(until).unwrap_or_else(|e| e.duration()) < Duration::from_millis(1));

    // A bogus far future is capped.
    a.cool_down(&other, SystemTime::now() + Duration::from_secs(86_400))
        .await
        .unwrap();
    let capped = a.cooling_until(&other).unwrap();
    assert!(capped <= SystemTime::now() + Duration::from_secs(COOLDOWN_MAX_SECS));

    // A short one ends by itself everywhere.
    let short = TenantKey::new("https://rest.test.zuora.com", "client-id", Some("entity-3"));
    a.cool_down(&short, SystemTime::now() + Duration::from_millis(300))
        .await
        .unwrap();
    eventually_within("B sees the short cool-down", Duration::from_secs(2), async || {
        (b.cooling_until(&short).is_some()).then_some(())
    })
    .await;
    eventually_within("and sees it end", Duration::from_secs(2), async || {
        (b.cooling_until(&short).is_none()).then_some(())
    })
    .await;
}
