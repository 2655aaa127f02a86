//! `demo`: the mock Zuora and the proxy wired together on loopback, so the whole path can be
//! tried without Zuora credentials.

use crate::config::Config;
use crate::mock::{MockZuora, CLIENT_ID, CLIENT_SECRET};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The job id of the sample abort.
pub const SAMPLE_JOB_ID: &str = "3a3e85c4-96e7-486b-ae02-827120104301";

/// The demo's temporary directory (under `$TMPDIR`) is named this, then random characters.
pub const DIR_PREFIX: &str = "zuora-auth-proxy-demo-";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("mock Zuora: {0}")]
    Mock(std::io::Error),
    #[error("demo files in {dir}: {source}")]
    Files { dir: PathBuf, source: std::io::Error },
    #[error("demo configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Start(#[from] crate::StartError),
    #[error("sample request failed: {0}")]
    Request(String),
}

/// The demo configuration: the shipped abort route, one rule that sets an entity and a
/// track-id prefix, and a tenant pointing at the mock.
pub fn config_text(base_url: &str, ca_file: &Path, listen: SocketAddr, admin: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
request_timeout = "30s"

[admin]
listen = "{admin}"
ready_min_ttl = "60s"

[log]
format = "text"
level = "info"

[tenants.demo]
base_url = "{base_url}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
ca_file = "{ca}"

[[routes]]
name = "abort-bulk-job"
method = "POST"
path = "/bulk-data/bulk-jobs/{{id:uuid}}/aborts"

[[rules]]
name = "demo"
tenant = "demo"
entity_ids = ["8a8aa0ad-5ab8-4a9b-9f2e-2f1c5b0c1d3e"]
track_id_prefix = "demo"
"#,
        ca = ca_file.display().to_string().replace('\\', "\\\\"),
    )
}

/// Runs the demo. With `once`, sends one sample abort, prints the answer and returns whether
/// it was a 200 (`stop` cuts it short: `false`); otherwise prints a curl line and serves until
/// `stop` resolves, then drains. The demo's files live in a temporary directory that is
/// removed however this ends: return, error, or the future dropped.
pub async fn run(
    once: bool,
    listen: SocketAddr,
    admin: &str,
    stop: impl std::future::Future<Output = ()>,
) -> Result<bool, DemoError> {
    let mock = MockZuora::builder().start().await.map_err(DemoError::Mock)?;
    let dir = tempfile::Builder::new()
        .prefix(DIR_PREFIX)
        .tempdir()
        .map_err(|source| DemoError::Files {
            dir: std::env::temp_dir(),
            source,
        })?;
    let ca_file = mock.write_ca(dir.path()).map_err(|source| DemoError::Files {
        dir: dir.path().to_owned(),
        source,
    })?;
    let listen = if once {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        listen
    };
    let admin = if once { "" } else { admin };
    let config = Config::from_toml(&config_text(&mock.base_url(), &ca_file, listen, admin))?;
    let _log_guard = crate::telemetry::init(&config.fixed.log);
    let running = crate::start(config).await?;
    let url = format!("http://{}/bulk-data/bulk-jobs/{SAMPLE_JOB_ID}/aborts", running.addr);
    let outcome = if once {
        let result = tokio::select! {
            result = sample_request(&url) => result,
            () = stop => Ok(false),
        };
        running.begin_shutdown();
        running.wait().await;
        result
    } else {
        println!(
            "mock Zuora (TLS) at {} (CA: {}) ; proxy at http://{}",
            mock.base_url(),
            ca_file.display(),
            running.addr
        );
        if let Some(admin) = running.admin_addr {
            println!("admin: http://{admin}/healthz  http://{admin}/readyz  http://{admin}/metrics");
        }
        println!("try:\n  curl -i -X POST {url}\nCtrl-C (or SIGTERM) stops.");
        stop.await;
        running.begin_shutdown();
        running.wait().await;
        Ok(true)
    };
    // Removing the files is best effort; a failure here is no reason to fail the demo.
    let _ = dir.close();
    outcome
}

async fn sample_request(url: &str) -> Result<bool, DemoError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .body(Empty::new())
        .map_err(|e| DemoError::Request(e.to_string()))?;
    println!("> POST {url}");
    let response = client
        .request(request)
        .await
        .map_err(|e| DemoError::Request(e.to_string()))?;
    let status = response.status();
    println!("< {:?} {}", response.version(), status);
    for (name, value) in response.headers() {
        println!("< {name}: {}", value.to_str().unwrap_or("<binary>"));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| DemoError::Request(e.to_string()))?
        .to_bytes();
    println!("{}", String::from_utf8_lossy(&body));
    Ok(status.is_success())
}
