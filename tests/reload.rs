//! Changing a running proxy: configuration reloads (in-process and on SIGHUP) swap routes,
//! rules and tenants for new requests and keep unchanged tenants' tokens; a bad file changes
//! nothing; a rotated client secret file is used by the next token fetch.
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

use std::path::Path;
use std::time::Duration;
use support::binary::Binary;
use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::metrics::scrape;
use support::wait::{eventually, eventually_within};
use zuora_auth_proxy::mock::{ApiMode, CLIENT_SECRET};

/// The entity the harness's rule starts with, and two others to reload to.
const ENTITY_A: &str = ENTITY;
const ENTITY_B: &str = "0f3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d";
const ENTITY_C: &str = "5d2e9a41-7c3b-4f60-8e1d-a2b3c4d5e6f7";

fn rule(entity: &str) -> String {
    rule_to(DEFAULT_TENANT, entity)
}

/// The harness's one rule, sending every request to `tenant` with `entity`.
fn rule_to(tenant: &str, entity: &str) -> String {
    format!("\n[[rules]]\nname = \"main\"\ntenant = \"{tenant}\"\nentity_ids = [\"{entity}\"]\n")
}

async fn harness() -> Harness {
    let h = Harness::builder().rules(&rule(ENTITY_A)).ready().await;
    h
}

#[tokio::test]
async fn reload_swaps_rules_and_keeps_the_token() {
    let h = harness().await;
    assert_eq!(abort_entity(&h).await, ENTITY_A);

    h.proxy
        .reload(h.config_with(|s| s.rules(&rule(ENTITY_B))))
        .expect("reloads");
    assert_eq!(abort_entity(&h).await, ENTITY_B);
    assert_eq!(abort_entity(&h).await, ENTITY_B);

    assert_eq!(h.mock.token_calls(), 1, "the unchanged tenant kept its token");
    let tokens = h.mock.received_header("authorization");
    assert!(
        tokens.windows(2).all(|w| w[0] == w[1]),
        "one token before and after the reload"
    );
}

#[tokio::test]
async fn a_changed_tenant_gets_a_new_token() {
    let h = harness().await;
    h.proxy
        .reload(h.config_with(|s| s.tenant("token_wait", "\"4s\"")))
        .expect("reloads");
    assert!(
        h.mock.wait_token_calls(2, Duration::from_secs(5)).await,
        "the changed tenant fetches anew"
    );
    assert_eq!(abort_entity(&h).await, ENTITY_A);
}

#[tokio::test]
async fn reload_swaps_routes() {
    let h = harness().await;
    let summary = job_path("summary");
    assert_eq!(get(&h.url(&summary)).await.status, 200);
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);

    let only_summary =
        "\n[[routes]]\nname = \"job-summary\"\nmethod = \"GET\"\npath = \"/bulk-data/bulk-jobs/{id:uuid}/summary\"\n";
    h.proxy
        .reload(h.config_with(|s| s.routes(only_summary)))
        .expect("reloads");

    assert_eq!(get(&h.url(&summary)).await.status, 200);
    let refused = post(&h.url(&abort_path()), &[]).await;
    assert_refusal(&refused, 404, "route_not_found");
    assert_eq!(h.mock.api_calls(), 3, "the refused abort never reached Zuora");
}

#[tokio::test]
async fn reload_adds_a_tenant_and_keeps_the_others_token() {
    let h = harness().await;
    h.proxy.reload(h.config_with(with_eu_tenant)).expect("reloads");

    let eu = post(&h.url(&abort_path()), &[("x-region", "eu")]).await;
    assert_eq!(eu.status, 200, "{:?}", eu.body);
    assert_eq!(last_entity(&h), ENTITY_C);
    assert_eq!(abort_entity(&h).await, ENTITY_A);

    let metrics = scrape(&h.admin_url("/metrics")).await;
    metrics.assert_value(r#"zuora_proxy_token_fetches_total{tenant="default",result="ok"}"#, 1.0);
    metrics.assert_value(r#"zuora_proxy_token_fetches_total{tenant="eu",result="ok"}"#, 1.0);
    assert_eq!(h.mock.token_calls(), 2);
    let ready = get(&h.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    let tenants = ready.json()["tenants"].clone();
    assert_eq!(tenants["eu"]["state"], "ok", "{tenants}");
    assert_eq!(tenants["default"]["state"], "ok", "{tenants}");
}

/// A tenant removed by a reload no longer reports a token: its frozen gauge would keep
/// feeding expiry alerts for a tenant that does not exist any more.
#[tokio::test]
async fn a_removed_tenant_leaves_no_token_gauge() {
    let h = harness().await;
    h.proxy.reload(h.config_with(with_eu_tenant)).expect("reloads");
    assert_eq!(post(&h.url(&abort_path()), &[("x-region", "eu")]).await.status, 200);
    let series = r#"zuora_proxy_token_expires_in_seconds{tenant="eu"}"#;
    assert!(scrape(&h.admin_url("/metrics")).await.value_or_zero(series) > 0.0);

    h.proxy.reload(h.config_with(|s| s)).expect("reloads");
    let text = scrape(&h.admin_url("/metrics")).await.text;
    assert!(!text.contains(series), "{text}");
}

#[tokio::test]
async fn invalid_files_keep_the_running_configuration() {
    let h = harness().await;
    let dir = h.dir();
    let bad: [(&str, String, &str); 6] = [
        ("syntax", "[server\nlisten = ".to_string(), ""),
        (
            "unknown key",
            h.config_text_with(|s| s.server("bogus_key", "1")),
            "server.bogus_key",
        ),
        (
            "bad entity",
            h.config_text_with(|s| s.rules(&rule("not-a-uuid"))),
            "rules.0.entity_ids.0",
        ),
        (
            "unknown tenant",
            h.config_text_with(|s| s.rules(&rule_to("nope", ENTITY_A))),
            "rules.0.tenant",
        ),
        ("missing file", String::new(), "configuration file not found"),
        // Valid as a file, but the tenant's client cannot be built from it.
        (
            "unusable ca_file",
            with_empty_ca_file(&h),
            "holds no usable certificate",
        ),
    ];
    for (i, (what, text, named)) in bad.iter().enumerate() {
        let path = dir.join(format!("bad-{i}.toml"));
        if *what != "missing file" {
            std::fs::write(&path, text).unwrap();
        }
        let error = h.proxy.reload_from(&path).expect_err(what);
        assert!(error.contains(named), "{what}: the error names {named:?}: {error}");

        assert_eq!(abort_entity(&h).await, ENTITY_A, "{what}: the old rule still applies");
        let metrics = scrape(&h.admin_url("/metrics")).await;
        let errors = metrics.value_or_zero(r#"zuora_proxy_config_reloads_total{result="error"}"#);
        assert_eq!(errors, (i + 1) as f64, "{what}\n{}", metrics.text);
        assert_eq!(
            metrics.value_or_zero(r#"zuora_proxy_config_reloads_total{result="ok"}"#),
            0.0,
            "{what}"
        );
    }
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn valid_file_reload_is_counted() {
    let h = harness().await;
    let path = h.dir().join("next.toml");
    std::fs::write(&path, h.config_text_with(|s| s.rules(&rule(ENTITY_C)))).unwrap();
    h.proxy.reload_from(&path).expect("reloads");
    assert_eq!(abort_entity(&h).await, ENTITY_C);
    let metrics = scrape(&h.admin_url("/metrics")).await;
    metrics.assert_value(r#"zuora_proxy_config_reloads_total{result="ok"}"#, 1.0);
    metrics.assert_value(r#"zuora_proxy_config_reloads_total{result="error"}"#, 0.0);
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn in_flight_request_finishes_under_its_configuration() {
    let h = harness().await;
    h.mock.set_api_mode(ApiMode::Delay(Duration::from_millis(1000)));
    let url = h.url(&abort_path());
    let slow = tokio::spawn(async move { post(&url, &[]).await });
    assert!(h.mock.wait_api_calls(1, Duration::from_secs(5)).await);

    // New rule and a changed tenant: the in-flight request keeps its tenant, client and token.
    let config = h.config_with(|s| s.rules(&rule(ENTITY_B)).tenant("token_wait", "\"4s\""));
    h.proxy.reload(config).expect("reloads");
    h.mock.set_api_mode(ApiMode::Normal);
    assert_eq!(abort_entity(&h).await, ENTITY_B);

    let answer = slow.await.expect("caller task");
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let received = h.mock.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].headers["zuora-entity-ids"], ENTITY_A);
    assert_ne!(
        received[0].headers["authorization"], received[1].headers["authorization"],
        "the new tenant has its own token"
    );
}

#[tokio::test]
async fn rotated_secret_file_is_used_by_the_next_fetch() {
    let h = harness().await;
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);

    std::fs::write(h.secret_file(), "rotated-secret-2\n").unwrap();
    assert_refetched_with_the_new_secret(&h, "rotated-secret-2").await;
}

/// The control for the rotation tests: the mock does refuse a stale secret.
#[tokio::test]
async fn stale_secret_is_refused_until_the_file_is_rotated() {
    let h = Harness::builder()
        .rules(&rule(ENTITY_A))
        .tenant("token_wait", "\"1s\"")
        .ready()
        .await;
    h.mock.set_client_secret("rotated-secret-3");
    h.mock.revoke_tokens();
    let refused = post(&h.url(&abort_path()), &[]).await;
    assert_refusal(&refused, 503, "token_unavailable");
    let metrics = scrape(&h.admin_url("/metrics")).await;
    assert!(
        metrics.value_or_zero(r#"zuora_proxy_token_fetches_total{tenant="default",result="rejected"}"#) >= 1.0,
        "{}",
        metrics.text
    );

    std::fs::write(h.secret_file(), "rotated-secret-3\n").unwrap();
    // The fetcher is backing off (at most 2 s after two failures): every answer until it
    // recovers is the same refusal.
    eventually_within("recovered with the rotated file", Duration::from_secs(6), async || {
        let answer = post(&h.url(&abort_path()), &[]).await;
        if answer.status == 200 {
            return Some(());
        }
        assert_refusal(&answer, 503, "token_unavailable");
        None
    })
    .await;
}

/// Kubernetes mounts a secret as `<file> -> ..data/<file>`, `..data -> ..<timestamp>/`, and
/// rotates by swapping `..data` atomically to a new directory.
#[tokio::test]
async fn secret_rotated_by_a_kubernetes_symlink_swap_is_used() {
    let h = harness().await;
    let dir = h.dir();
    write_secret_dir(dir, "..2024_01_01_00_00_00.1", CLIENT_SECRET);
    symlink_atomically("..2024_01_01_00_00_00.1", &dir.join("..data"));
    symlink_atomically("..data/client-secret", h.secret_file());
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);

    write_secret_dir(dir, "..2024_01_02_00_00_00.2", "k8s-rotated-secret");
    symlink_atomically("..2024_01_02_00_00_00.2", &dir.join("..data"));
    std::fs::remove_dir_all(dir.join("..2024_01_01_00_00_00.1")).unwrap();
    assert_refetched_with_the_new_secret(&h, "k8s-rotated-secret").await;
}

#[tokio::test]
async fn binary_reloads_on_sighup() {
    let h = harness().await;
    let first = h.config_text();
    let second = h.config_text_with(|s| s.rules(&rule(ENTITY_B)));
    // Only the binary serves; the harness's own proxy steps aside.
    let (mock, dir) = h.stop_proxy().await;
    let config = dir.path().join("binary.toml");
    std::fs::write(&config, first).unwrap();
    let mut bin = Binary::spawn(&config);
    let listening = bin.listening().await;
    let metrics_url = format!("http://{}/metrics", listening.admin.expect("an admin listener"));
    let url = format!("http://{}{}", listening.addr, abort_path());
    assert_eq!(post(&url, &[]).await.status, 200, "{}", bin.log());
    assert_eq!(mock.received().last().unwrap().headers["zuora-entity-ids"], ENTITY_A);

    std::fs::write(&config, second).unwrap();
    bin.signal("HUP");
    reloads_reach(&metrics_url, "ok").await;
    assert_eq!(post(&url, &[]).await.status, 200, "{}", bin.log());
    assert_eq!(mock.received().last().unwrap().headers["zuora-entity-ids"], ENTITY_B);

    // A broken file on the next SIGHUP changes nothing and keeps the process up.
    std::fs::write(&config, "[server\n").unwrap();
    bin.signal("HUP");
    reloads_reach(&metrics_url, "error").await;
    assert_eq!(post(&url, &[]).await.status, 200, "{}", bin.log());
    assert_eq!(mock.received().last().unwrap().headers["zuora-entity-ids"], ENTITY_B);
    assert_eq!(
        mock.token_calls(),
        2,
        "one token for the harness, one for the binary, none on reload"
    );
    assert!(bin.exited().is_none(), "still running");
}

// ---- helpers ----

/// The harness's settings plus a tenant `eu` on the same mock, chosen by `x-region: eu`
/// and sending entity C.
fn with_eu_tenant(settings: Settings) -> Settings {
    let eu_rule = format!(
        "\n[[rules]]\nname = \"eu\"\ntenant = \"eu\"\nwhen_headers = {{ x-region = \"eu\" }}\nentity_ids = [\"{ENTITY_C}\"]\n"
    );
    settings
        .tenant_with("eu", |t| t)
        .rules(&format!("{eu_rule}{}", rule(ENTITY_A)))
}

/// The harness's configuration with the tenant's `ca_file` swapped for one without a certificate.
fn with_empty_ca_file(h: &Harness) -> String {
    let empty = h.dir().join("empty-ca.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    h.config_text_with(|s| s.tenant("ca_file", &format!("{:?}", empty.display().to_string())))
}

/// Sends an abort, expects 200, returns the `Zuora-Entity-Ids` Zuora received.
async fn abort_entity(h: &Harness) -> String {
    let answer = post(&h.url(&abort_path()), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    last_entity(h)
}

fn last_entity(h: &Harness) -> String {
    let received = h.mock.received();
    let last = received.last().expect("Zuora received a request");
    last.headers["zuora-entity-ids"].to_str().unwrap().to_string()
}

/// Zuora takes only `secret` from now on and revokes its tokens: the next request is answered,
/// with exactly one more token call, none refused, and a new token at Zuora.
async fn assert_refetched_with_the_new_secret(h: &Harness, secret: &str) {
    h.mock.set_client_secret(secret);
    h.mock.revoke_tokens();
    let answer = post(&h.url(&abort_path()), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(h.mock.token_calls(), 2, "one refetch, accepted at once");
    let metrics = scrape(&h.admin_url("/metrics")).await;
    metrics.assert_value(r#"zuora_proxy_token_fetches_total{tenant="default",result="ok"}"#, 2.0);
    metrics.assert_value(
        r#"zuora_proxy_token_fetches_total{tenant="default",result="rejected"}"#,
        0.0,
    );
    let received = h.mock.received();
    let (first, last) = (
        &received[0].headers["authorization"],
        &received[received.len() - 1].headers["authorization"],
    );
    assert_ne!(first, last, "the replay carried the new token");
}

fn write_secret_dir(dir: &Path, name: &str, secret: &str) {
    std::fs::create_dir(dir.join(name)).unwrap();
    std::fs::write(dir.join(name).join("client-secret"), format!("{secret}\n")).unwrap();
}

/// Points `link` at `target` by renaming a fresh symlink over it, as the kubelet does.
fn symlink_atomically(target: &str, link: &Path) {
    let name = link.file_name().expect("a file name").to_string_lossy();
    let tmp = link.with_file_name(format!("{name}.tmp-link"));
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// Waits until the binary has counted one reload with `result`: a signal is handled without
/// an event to await.
async fn reloads_reach(metrics_url: &str, result: &str) {
    let series = format!("zuora_proxy_config_reloads_total{{result=\"{result}\"}}");
    eventually(&format!("{series} reaches 1"), async || {
        (scrape(metrics_url).await.value_or_zero(&series) >= 1.0).then_some(())
    })
    .await;
}
