//! The cluster benchmark (run by `bench/cluster.sh`): 8 replicas in one process against one
//! mock Zuora with a 40-request concurrency limit and 50 ms latency, under a closed-loop load
//! that wants more than 40 at once, in three modes: `[cluster]` (one cap of 40 shared through
//! Redis), local (each replica capped at 40) and a static share (each capped at 5). Prints
//! one line per mode, then the latency a permit adds on its own. Loopback only.
//!
//!   REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example cluster_bench

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tokio::time::Instant;
use zuora_auth_proxy::cluster::{Cluster, ClusterSettings, TenantKey};
use zuora_auth_proxy::mock::{MockZuora, CLIENT_ID, CLIENT_SECRET};
use zuora_auth_proxy::{Config, Running};

const REPLICAS: usize = 8;
const LIMIT: usize = 40;
const LATENCY: Duration = Duration::from_millis(50);
const PATH: &str = "/bulk-data/bulk-jobs/3a3e85c4-96e7-486b-ae02-827120104301/aborts";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let redis = std::env::var("REDIS_URL").expect("REDIS_URL");
    let callers = env("CALLERS", 96) as usize;
    let seconds = env("SECONDS", 10);
    println!(
        "{REPLICAS} replicas, Zuora limit {LIMIT}, latency {LATENCY:?}, {callers} callers, {seconds} s per mode; ideal {:.0} req/s",
        LIMIT as f64 / LATENCY.as_secs_f64()
    );
    println!("mode      req/s  share  429s  503s  p50_ms  p99_ms  token_fetches");
    for (mode, cluster, cap) in [("cluster", true, LIMIT), ("local", false, LIMIT), ("static", false, 5)] {
        run(mode, &redis, cluster, cap, callers, Duration::from_secs(seconds)).await;
    }
    permit_latency(&redis).await;
}

async fn run(mode: &str, redis: &str, cluster: bool, cap: usize, callers: usize, length: Duration) {
    let mock = MockZuora::builder()
        .concurrency_limit(LIMIT)
        .concurrency_retry_after(1)
        .latency(LATENCY)
        .start()
        .await
        .expect("mock starts");
    let dir = tempfile::tempdir().unwrap();
    let ca = mock.write_ca(dir.path()).unwrap();
    let mut replicas: Vec<Running> = Vec::new();
    for _ in 0..REPLICAS {
        let cluster_section = if cluster {
            format!(
                "[cluster]\nredis_url = \"{redis}\"\nkey_prefix = \"bench-{}\"\nexpected_replicas = {REPLICAS}\n",
                std::process::id()
            )
        } else {
            String::new()
        };
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"\"\n[log]\nformat = \"json\"\nlevel = \"warn\"\n\
             [tenants.default]\nbase_url = \"{}\"\nca_file = {:?}\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n\
             max_concurrency = {cap}\ncluster_max_concurrency = {LIMIT}\nqueue_timeout = \"10s\"\n\
             {cluster_section}\
             [[routes]]\nname = \"abort\"\nmethod = \"POST\"\npath = \"/bulk-data/bulk-jobs/{{id:uuid}}/aborts\"\n",
            mock.base_url(),
            ca.display().to_string(),
        );
        let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
        let running = zuora_auth_proxy::start(config).await.expect("replica starts");
        running
            .probe()
            .wait_for_token("default", Duration::from_secs(10))
            .await
            .expect("token");
        replicas.push(running);
    }
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(callers)
        .build_http::<Empty<Bytes>>();
    let until = Instant::now() + length;
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let url: http::Uri = format!("http://{}{PATH}", replicas[i % REPLICAS].addr).parse().unwrap();
            let client = client.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while Instant::now() < until {
                    let started = Instant::now();
                    let request = http::Request::post(url.clone()).body(Empty::new()).unwrap();
                    let status = match client.request(request).await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let _ = response.into_body().collect().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    seen.push((status, started.elapsed()));
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let ok: Vec<Duration> = all.iter().filter(|(s, _)| *s == 200).map(|(_, d)| *d).collect();
    let mut sorted = ok.clone();
    sorted.sort();
    let pct = |p: f64| sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let rate = ok.len() as f64 / length.as_secs_f64();
    let ideal = LIMIT as f64 / LATENCY.as_secs_f64();
    println!(
        "{mode:<8} {rate:>6.0}  {:>5.2}  {:>4}  {:>4}  {:>6.1}  {:>6.1}  {}",
        rate / ideal,
        mock.rejected_429(),
        all.iter().filter(|(s, _)| *s == 503).count(),
        ms(pct(0.50)),
        ms(pct(0.99)),
        mock.token_calls(),
    );
    for running in replicas {
        running.begin_shutdown();
        running.wait().await;
    }
}

/// What one permit costs on its own: acquire and release on an idle key, one at a time.
async fn permit_latency(redis: &str) {
    let mut settings = ClusterSettings::new(redis.parse().unwrap());
    settings.key_prefix = format!("bench-permit-{}", std::process::id());
    let cluster = Cluster::start(settings).await.expect("cluster");
    let key = TenantKey::new("https://bench", "bench", None);
    let mut took = Vec::new();
    for _ in 0..1000 {
        let started = Instant::now();
        let permit = cluster
            .acquire(&key, LIMIT, Instant::now() + Duration::from_secs(1))
            .await
            .expect("permit");
        took.push(started.elapsed());
        drop(permit);
    }
    took.sort();
    println!(
        "permit acquire (idle key, 1000 in a row): p50 {:.3} ms, p99 {:.3} ms",
        took[500].as_secs_f64() * 1000.0,
        took[990].as_secs_f64() * 1000.0
    );
}
