//! Secrets in a fleet with `[cluster]`: the token in Redis is sealed, and no log line holds
//! the token, the client secret or the Redis password. Alone in its binary: log capture is
//! per thread, and tests running beside it would leave its log callsites disabled.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod fleet;
    pub mod metrics;
    pub mod redis;
    pub mod wait;
}

use support::fleet::{assert_ok_or_overloaded, burst, Fleet, Replica};
use support::redis::{Logs, RedisServer};
use zuora_auth_proxy::mock::{MockZuora, CLIENT_SECRET};

#[tokio::test(flavor = "current_thread")]
async fn neither_logs_nor_redis_hold_a_usable_secret() {
    let (logs, _guard) = Logs::capture();
    let password = "redis-pa55word";
    let mock = MockZuora::builder().start().await.unwrap();
    let mut fleet = Fleet::new(mock, RedisServer::start_with_password(password)).await;
    let password_file = fleet.dir.path().join("redis-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let replica = Replica::new(40, 2).cluster(&format!("password_file = {:?}", password_file.display().to_string()));
    fleet.start(&replica, 2).await;
    assert!(fleet.all_cluster_up(true), "the password from the file was accepted");
    assert_eq!(assert_ok_or_overloaded(&burst(&fleet, 4).await), 4);
    assert_eq!(fleet.mock.token_calls(), 1, "the second replica took the shared token");

    let bearer = fleet.mock.received()[0].headers["authorization"]
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_string();
    let mut redis = fleet.redis.inspect();
    let _: () = redis::cmd("AUTH").arg(password).query(&mut redis).unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*:token").query(&mut redis).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let stored: Vec<u8> = redis::cmd("GET").arg(&keys[0]).query(&mut redis).unwrap();
    assert!(!stored.is_empty());
    assert!(
        !String::from_utf8_lossy(&stored).contains(&bearer),
        "the token in Redis is sealed"
    );

    let text = logs.text();
    assert!(text.contains("shared token taken from the cluster"), "{text}");
    for secret in [bearer.as_str(), CLIENT_SECRET, password] {
        assert!(!text.contains(secret), "a log line holds a secret: {text}");
    }
}
