//! Changing a running proxy: configuration reloads (in-process and on SIGHUP) swap routes,
//! rules and tenants for new requests and keep unchanged tenants' tokens; a bad file changes
//! nothing; a rotated client secret file is used by the next token fetch.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use support::binary::{free_port, Binary, LISTEN_ANY};
use support::*;
use tokio::time::Instant;
use zuora_auth_proxy::mock::{ApiMode, CLIENT_ID, CLIENT_SECRET};
use zuora_auth_proxy::Config;

/// The entity the harness's rule starts with, and two others to reload to.
const ENTITY_A: &str = ENTITY;
const ENTITY_B: &str = "0f3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d";
const ENTITY_C: &str = "5d2e9a41-7c3b-4f60-8e1d-a2b3c4d5e6f7";

fn rule(entity: &str) -> String {
    format!("\n[[rules]]\nname = \"main\"\ntenant = \"default\"\nentity_ids = [\"{entity}\"]\n")
}

async fn harness() -> Harness {
    let h = Harness::builder().rules(&rule(ENTITY_A)).start().await;
    h.wait_for_token().await;
    h
}

#[tokio::test]
async fn reload_swaps_rules_and_keeps_the_token() {
    let h = harness().await;
    assert_eq!(abort_entity(&h).await, ENTITY_A);

    let config = Config::from_toml(&h.config_text.replace(ENTITY_A, ENTITY_B)).expect("valid");
    h.proxy.reload(config).expect("reloads");
    assert_eq!(abort_entity(&h).await, ENTITY_B);
    assert_eq!(abort_entity(&h).await, ENTITY_B);

    assert_eq!(h.mock.token_calls(), 1, "the unchanged tenant kept its token");
    let tokens: Vec<String> = h
        .mock
        .received()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_string())
        .collect();
    assert!(
        tokens.windows(2).all(|w| w[0] == w[1]),
        "one token before and after the reload"
    );
}

#[tokio::test]
async fn a_changed_tenant_gets_a_new_token() {
    let h = harness().await;
    let changed = h.config_text.replace("token_wait = \"3s\"", "token_wait = \"4s\"");
    assert_ne!(changed, h.config_text, "the harness sets token_wait");
    h.proxy
        .reload(Config::from_toml(&changed).expect("valid"))
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
    let summary = format!("/bulk-data/bulk-jobs/{JOB}/summary");
    assert_eq!(get(&h.url(&summary)).await.status, 200);
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);

    let only_summary =
        "\n[[routes]]\nname = \"job-summary\"\nmethod = \"GET\"\npath = \"/bulk-data/bulk-jobs/{id:uuid}/summary\"\n";
    assert!(h.config_text.contains(ROUTES));
    let config = Config::from_toml(&h.config_text.replace(ROUTES, only_summary)).expect("valid");
    h.proxy.reload(config).expect("reloads");

    assert_eq!(get(&h.url(&summary)).await.status, 200);
    let refused = post(&h.url(&abort_path()), &[]).await;
    assert_refusal(&refused, 404, "route_not_found");
    assert_eq!(h.mock.api_calls(), 3, "the refused abort never reached Zuora");
}

#[tokio::test]
async fn reload_adds_a_tenant_and_keeps_the_others_token() {
    let h = harness().await;
    h.proxy
        .reload(Config::from_toml(&with_eu_tenant(&h)).expect("valid"))
        .expect("reloads");

    let eu = post(&h.url(&abort_path()), &[("x-region", "eu")]).await;
    assert_eq!(eu.status, 200, "{:?}", eu.body);
    assert_eq!(last_entity(&h), ENTITY_C);
    assert_eq!(abort_entity(&h).await, ENTITY_A);

    let text = metrics_text(&h).await;
    assert_eq!(
        sample_or_zero(
            &text,
            r#"zuora_proxy_token_fetches_total{tenant="default",result="ok"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample_or_zero(&text, r#"zuora_proxy_token_fetches_total{tenant="eu",result="ok"}"#),
        1.0,
        "{text}"
    );
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
    h.proxy
        .reload(Config::from_toml(&with_eu_tenant(&h)).expect("valid"))
        .expect("reloads");
    assert_eq!(post(&h.url(&abort_path()), &[("x-region", "eu")]).await.status, 200);
    let series = r#"zuora_proxy_token_expires_in_seconds{tenant="eu"}"#;
    assert!(sample_or_zero(&metrics_text(&h).await, series) > 0.0);

    h.proxy
        .reload(Config::from_toml(&h.config_text).expect("valid"))
        .expect("reloads");
    let text = metrics_text(&h).await;
    assert!(!text.contains(series), "{text}");
}

#[tokio::test]
async fn invalid_files_keep_the_running_configuration() {
    let h = harness().await;
    let dir = h.dir.path();
    let bad: [(&str, String, &str); 6] = [
        ("syntax", "[server\nlisten = ".to_string(), ""),
        (
            "unknown key",
            h.config_text.replace("[server]\n", "[server]\nbogus_key = 1\n"),
            "server.bogus_key",
        ),
        (
            "bad entity",
            h.config_text.replace(ENTITY_A, "not-a-uuid"),
            "rules.0.entity_ids.0",
        ),
        (
            "unknown tenant",
            h.config_text.replace("tenant = \"default\"", "tenant = \"nope\""),
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
        let text = metrics_text(&h).await;
        let errors = sample_or_zero(&text, r#"zuora_proxy_config_reloads_total{result="error"}"#);
        assert_eq!(errors, (i + 1) as f64, "{what}\n{text}");
        assert_eq!(
            sample_or_zero(&text, r#"zuora_proxy_config_reloads_total{result="ok"}"#),
            0.0,
            "{what}"
        );
    }
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn valid_file_reload_is_counted() {
    let h = harness().await;
    let path = h.dir.path().join("next.toml");
    std::fs::write(&path, h.config_text.replace(ENTITY_A, ENTITY_C)).unwrap();
    h.proxy.reload_from(&path).expect("reloads");
    assert_eq!(abort_entity(&h).await, ENTITY_C);
    let text = metrics_text(&h).await;
    assert_eq!(
        sample_or_zero(&text, r#"zuora_proxy_config_reloads_total{result="ok"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample_or_zero(&text, r#"zuora_proxy_config_reloads_total{result="error"}"#),
        0.0,
        "{text}"
    );
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
    let text = h
        .config_text
        .replace(ENTITY_A, ENTITY_B)
        .replace("token_wait = \"3s\"", "token_wait = \"4s\"");
    h.proxy
        .reload(Config::from_toml(&text).expect("valid"))
        .expect("reloads");
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

    std::fs::write(&h.secret_path, "rotated-secret-2\n").unwrap();
    h.mock.set_client_secret("rotated-secret-2");
    h.mock.revoke_tokens();
    let answer = post(&h.url(&abort_path()), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_refetched_with_the_new_secret(&h).await;
}

/// The control for the rotation tests: the mock does refuse a stale secret.
#[tokio::test]
async fn stale_secret_is_refused_until_the_file_is_rotated() {
    let h = Harness::builder()
        .rules(&rule(ENTITY_A))
        .tenant("token_wait", "\"1s\"")
        .start()
        .await;
    h.wait_for_token().await;
    h.mock.set_client_secret("rotated-secret-3");
    h.mock.revoke_tokens();
    let refused = post(&h.url(&abort_path()), &[]).await;
    assert_refusal(&refused, 503, "token_unavailable");
    let text = metrics_text(&h).await;
    assert!(
        sample_or_zero(
            &text,
            r#"zuora_proxy_token_fetches_total{tenant="default",result="rejected"}"#
        ) >= 1.0,
        "{text}"
    );

    std::fs::write(&h.secret_path, "rotated-secret-3\n").unwrap();
    // The fetcher is backing off (at most 2 s after two failures); poll until it recovers.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let answer = post(&h.url(&abort_path()), &[]).await;
        if answer.status == 200 {
            break;
        }
        assert_refusal(&answer, 503, "token_unavailable");
        assert!(Instant::now() < deadline, "never recovered with the rotated file");
    }
}

/// Kubernetes mounts a secret as `<file> -> ..data/<file>`, `..data -> ..<timestamp>/`, and
/// rotates by swapping `..data` atomically to a new directory.
#[tokio::test]
async fn secret_rotated_by_a_kubernetes_symlink_swap_is_used() {
    let h = harness().await;
    let dir = h.dir.path();
    write_secret_dir(dir, "..2024_01_01_00_00_00.1", CLIENT_SECRET);
    symlink_atomically("..2024_01_01_00_00_00.1", &dir.join("..data"));
    symlink_atomically("..data/client-secret", &h.secret_path);
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);

    write_secret_dir(dir, "..2024_01_02_00_00_00.2", "k8s-rotated-secret");
    symlink_atomically("..2024_01_02_00_00_00.2", &dir.join("..data"));
    std::fs::remove_dir_all(dir.join("..2024_01_01_00_00_00.1")).unwrap();
    h.mock.set_client_secret("k8s-rotated-secret");
    h.mock.revoke_tokens();

    let answer = post(&h.url(&abort_path()), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_refetched_with_the_new_secret(&h).await;
}

#[tokio::test]
async fn binary_reloads_on_sighup() {
    let h = harness().await;
    let (mock, dir, config_text) = h.stop_proxy().await;

    let (port, admin_port) = (free_port(), free_port());
    let with_ports = |text: &str| {
        text.replacen(LISTEN_ANY, &format!("listen = \"127.0.0.1:{port}\""), 1)
            .replacen(LISTEN_ANY, &format!("listen = \"127.0.0.1:{admin_port}\""), 1)
    };
    let config = dir.path().join("binary.toml");
    std::fs::write(&config, with_ports(&config_text)).unwrap();
    let mut bin = Binary::spawn(&config);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let metrics_url = format!("http://127.0.0.1:{admin_port}/metrics");
    bin.wait_listening(addr).await;
    let url = format!("http://{addr}{}", abort_path());
    assert_eq!(post(&url, &[]).await.status, 200, "{}", bin.log());
    assert_eq!(mock.received().last().unwrap().headers["zuora-entity-ids"], ENTITY_A);

    std::fs::write(&config, with_ports(&config_text.replace(ENTITY_A, ENTITY_B))).unwrap();
    bin.signal("HUP");
    let reloads = r#"zuora_proxy_config_reloads_total{result="ok"}"#;
    poll_metric(&metrics_url, reloads, 1.0, &bin).await;
    assert_eq!(post(&url, &[]).await.status, 200, "{}", bin.log());
    assert_eq!(mock.received().last().unwrap().headers["zuora-entity-ids"], ENTITY_B);

    // A broken file on the next SIGHUP changes nothing and keeps the process up.
    std::fs::write(&config, "[server\n").unwrap();
    bin.signal("HUP");
    poll_metric(
        &metrics_url,
        r#"zuora_proxy_config_reloads_total{result="error"}"#,
        1.0,
        &bin,
    )
    .await;
    assert_eq!(post(&url, &[]).await.status, 200, "{}", bin.log());
    assert_eq!(mock.received().last().unwrap().headers["zuora-entity-ids"], ENTITY_B);
    assert_eq!(
        mock.token_calls(),
        2,
        "one token for the harness, one for the binary, none on reload"
    );
    assert!(bin.child.try_wait().unwrap().is_none(), "still running");
}

// ---- helpers ----

/// The harness's configuration plus a tenant `eu` on the same mock, chosen by `x-region: eu`
/// and sending entity C.
fn with_eu_tenant(h: &Harness) -> String {
    let ca_file = h.mock.write_ca(h.dir.path()).unwrap();
    let eu_rule = format!(
        "\n[[rules]]\nname = \"eu\"\ntenant = \"eu\"\nwhen_headers = {{ x-region = \"eu\" }}\nentity_ids = [\"{ENTITY_C}\"]\n"
    );
    let eu_tenant = format!(
        "\n[tenants.eu]\nbase_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = {:?}\nca_file = {:?}\n",
        h.mock.base_url(),
        h.secret_path.display().to_string(),
        ca_file.display().to_string(),
    );
    h.config_text
        .replace(&rule(ENTITY_A), &format!("{eu_rule}{}", rule(ENTITY_A)))
        + &eu_tenant
}

/// The harness's configuration with the tenant's `ca_file` swapped for one without a certificate.
fn with_empty_ca_file(h: &Harness) -> String {
    let ca = h.mock.write_ca(h.dir.path()).unwrap();
    let empty = h.dir.path().join("empty-ca.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let (ca, empty) = (
        format!("{:?}", ca.display().to_string()),
        format!("{:?}", empty.display().to_string()),
    );
    assert!(h.config_text.contains(&ca), "the harness sets ca_file");
    h.config_text.replace(&ca, &empty)
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

/// After a revoke: exactly one more token call, none refused, and a new token at Zuora.
async fn assert_refetched_with_the_new_secret(h: &Harness) {
    assert_eq!(h.mock.token_calls(), 2, "one refetch, accepted at once");
    let text = metrics_text(h).await;
    assert_eq!(
        sample_or_zero(
            &text,
            r#"zuora_proxy_token_fetches_total{tenant="default",result="ok"}"#
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample_or_zero(
            &text,
            r#"zuora_proxy_token_fetches_total{tenant="default",result="rejected"}"#
        ),
        0.0,
        "{text}"
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

/// Polls `/metrics` until `series` reaches `value`: a signal is handled without an event to await.
async fn poll_metric(url: &str, series: &str, value: f64, bin: &Binary) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8(get(url).await.body.to_vec()).unwrap();
        if sample_or_zero(&text, series) >= value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {value}\n{text}\n{}",
            bin.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
