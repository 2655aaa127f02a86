//! A fleet of replicas for the cluster tests: one mock Zuora, one real redis-server, and
//! proxies started in-process with `[cluster]`, each with the same tenant.
//! Needs `support::{client, fixtures, metrics, redis}`.
#![allow(dead_code)]

use super::client::post;
use super::fixtures::{abort_path, ROUTES};
use super::metrics::Metrics;
use super::redis::RedisServer;
use std::path::PathBuf;
use std::time::Duration;
use zuora_auth_proxy::mock::{MockBuilder, MockZuora, CLIENT_ID, CLIENT_SECRET};
use zuora_auth_proxy::{Config, Running};

/// One replica's tenant and cluster keys, as TOML lines.
#[derive(Clone)]
pub struct Replica {
    tenant: Vec<String>,
    cluster: Vec<String>,
}

impl Replica {
    pub fn new(cap: usize, replicas: usize) -> Replica {
        Replica {
            tenant: vec![
                format!("cluster_max_concurrency = {cap}"),
                "queue_timeout = \"8s\"".into(),
            ],
            cluster: vec![
                format!("expected_replicas = {replicas}"),
                // Room for a loaded two-core machine running several tests at once (a Redis
                // call slower than this would switch a replica to its fallback cap); the
                // lease must be ten times longer.
                "timeout = \"1s\"".into(),
                "lease = \"10s\"".into(),
            ],
        }
    }

    /// Sets a tenant key, replacing the default given to it.
    pub fn tenant(mut self, line: &str) -> Replica {
        let key = line.split('=').next().unwrap_or_default().trim().to_string();
        self.tenant.retain(|l| !l.starts_with(&format!("{key} ")));
        self.tenant.push(line.into());
        self
    }

    pub fn cluster(mut self, line: &str) -> Replica {
        self.cluster.push(line.into());
        self
    }
}

/// The mock, the Redis and the replicas' files.
pub struct Fleet {
    pub mock: MockZuora,
    pub redis: RedisServer,
    pub dir: tempfile::TempDir,
    ca_file: PathBuf,
    secret_file: PathBuf,
    pub proxies: Vec<Running>,
}

impl Fleet {
    /// A fleet on the mock Zuora `mock` builds and a fresh redis-server.
    pub async fn on(mock: MockBuilder) -> Fleet {
        Fleet::new(mock.start().await.expect("mock starts"), RedisServer::start()).await
    }

    pub async fn new(mock: MockZuora, redis: RedisServer) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = mock.write_ca(dir.path()).unwrap();
        let secret_file = dir.path().join("client-secret");
        std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
        Fleet {
            mock,
            redis,
            dir,
            ca_file,
            secret_file,
            proxies: Vec::new(),
        }
    }

    pub fn config(&self, replica: &Replica) -> String {
        let path = |p: &PathBuf| format!("{:?}", p.display().to_string());
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"10s\"\nshutdown_grace = \"1s\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\nready_min_ttl = \"0s\"\n[log]\nformat = \"json\"\n\
             [tenants.default]\nbase_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = {}\n\
             ca_file = {}\ntoken_wait = \"3s\"\n{}\n\
             [cluster]\nredis_url = \"{}\"\n{}\n{ROUTES}",
            self.mock.base_url(),
            path(&self.secret_file),
            path(&self.ca_file),
            replica.tenant.join("\n"),
            self.redis.url(),
            replica.cluster.join("\n"),
        )
    }

    pub async fn start(&mut self, replica: &Replica, n: usize) {
        for _ in 0..n {
            let text = self.config(replica);
            let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            self.proxies
                .push(zuora_auth_proxy::start(config).await.expect("replica starts"));
        }
        for proxy in &self.proxies {
            proxy
                .probe()
                .wait_for_token("default", Duration::from_secs(10))
                .await
                .expect("every replica holds a token");
        }
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://{}{}", self.proxies[i % self.proxies.len()].addr, abort_path())
    }

    pub fn metrics(&self, i: usize) -> Metrics {
        Metrics::parse(&self.proxies[i].probe().metrics_text())
    }

    pub fn all_cluster_up(&self, up: bool) -> bool {
        let want = if up { 1.0 } else { 0.0 };
        (0..self.proxies.len()).all(|i| self.metrics(i).value("zuora_proxy_cluster_up") == want)
    }
}

/// Sends `n` concurrent POSTs spread over the fleet; the statuses and error codes.
pub async fn burst(fleet: &Fleet, n: usize) -> Vec<(u16, Option<String>)> {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let url = fleet.url(i);
            tokio::spawn(async move {
                let answer = post(&url, &[]).await;
                (
                    answer.status.as_u16(),
                    answer.header("x-zuora-proxy-error").map(String::from),
                )
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    answers
}

pub fn assert_ok_or_overloaded(answers: &[(u16, Option<String>)]) -> usize {
    for answer in answers {
        assert!(
            answer.0 == 200 || (answer.0 == 503 && answer.1.as_deref() == Some("overloaded")),
            "{answer:?}"
        );
    }
    answers.iter().filter(|a| a.0 == 200).count()
}
