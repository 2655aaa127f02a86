//! The caller-side token endpoint: `POST /oauth/token` answered by the proxy with a placeholder
//! whatever the body, never forwarded, the caller's secret never logged; subject to rules; off
//! when `server.caller_token_endpoint = false`. And Zuora's Python SDK, pointed at the proxy,
//! working unchanged against the mock Zuora.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod logs;
    pub mod metrics;
    pub mod wait;
}

use http::Method;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::logs;
use support::metrics::Metrics;
use support::wait::eventually;

/// The placeholder the proxy hands out (documented in the README).
const PLACEHOLDER: &str = "zuora-auth-proxy-managed";
/// What a caller sends as its OAuth secret: it must appear nowhere.
const CALLER_SECRET: &str = "caller-secret-3b9d71e2";
/// The Python SDK script's own caller credentials (tests/sdk/get_account.py).
const SDK_CALLER_ID: &str = "00000000-0000-4000-8000-00000000c1e7";
const SDK_CALLER_SECRET: &str = "sdk-caller-secret-5c1f0e";
/// A Python with `zuora-sdk==3.21.0` installed, to use instead of the one the test makes.
const SDK_PYTHON_ENV: &str = "ZUORA_SDK_PYTHON";

const FORM: &str = "application/x-www-form-urlencoded";

fn form_body() -> String {
    format!("client_id=caller-id&client_secret={CALLER_SECRET}&grant_type=client_credentials")
}

fn metrics(h: &Harness) -> Metrics {
    Metrics::parse(&h.proxy.probe().metrics_text())
}

/// Asks for a token as an SDK does, with this track id so that its access line can be found.
async fn ask(h: &Harness, track: &str, content_type: Option<&str>, body: String) -> Answer {
    let mut headers = vec![("zuora-track-id", track)];
    if let Some(content_type) = content_type {
        headers.push(("content-type", content_type));
    }
    call(Method::POST, &h.url("/oauth/token"), &headers, body).await
}

fn assert_placeholder(answer: &Answer) {
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let json = answer.json();
    assert_eq!(json["access_token"], PLACEHOLDER, "{json}");
    assert_eq!(json["token_type"], "bearer", "{json}");
    assert!(json["expires_in"].as_u64().is_some_and(|s| s >= 3600), "{json}");
    assert!(json["scope"].is_string() && json["jti"].is_string(), "{json}");
}

#[tokio::test]
async fn form_json_and_empty_bodies_get_the_placeholder_and_nothing_reaches_zuora() {
    capture_logs();
    let h = Harness::builder().ready().await;
    let token_calls = h.mock.token_calls();
    let json_body = format!(r#"{{"client_id":"caller-id","client_secret":"{CALLER_SECRET}"}}"#);
    let cases = [
        ("ct-form", Some(FORM), form_body()),
        ("ct-json", Some("application/json"), json_body),
        ("ct-empty", None, String::new()),
    ];
    for (track, content_type, body) in cases {
        let answer = ask(&h, track, content_type, body).await;
        assert_placeholder(&answer);
        assert_eq!(answer.header("zuora-track-id"), Some(track), "the track id is echoed");
        let line = access_line(track).await;
        assert_eq!(line["route"], "caller-token", "{line}");
        assert_eq!(line["rule"], "default", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["method"], "POST", "{line}");
        assert!(line.get("upstream_status").is_none(), "nothing was forwarded: {line}");
        assert!(line.get("error").is_none(), "{line}");
    }
    assert_eq!(
        h.mock.token_calls(),
        token_calls,
        "Zuora's token endpoint was not called"
    );
    assert!(
        h.mock.received().is_empty(),
        "nothing was forwarded: {:?}",
        h.mock.received()
    );
    assert_eq!(
        metrics(&h).value(r#"zuora_proxy_requests_total{route="caller-token",status="200"}"#),
        3.0
    );
    let logs = logs::text();
    assert!(logs.contains("ct-form"), "the capture holds this test's lines");
    assert!(!logs.contains(CALLER_SECRET), "the caller's secret was logged");
    assert!(!logs.contains("caller-id"), "the caller's client id was logged");
}

#[tokio::test]
async fn the_placeholder_sent_back_is_replaced_by_the_real_token() {
    let h = Harness::builder().ready().await;
    let answer = post(
        &h.url(&abort_path()),
        &[("authorization", &format!("Bearer {PLACEHOLDER}"))],
    )
    .await;
    // The mock answers 200 only to a token it issued.
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let received = h.mock.received();
    assert_eq!(received.len(), 1);
    let sent: Vec<&str> = received[0]
        .headers
        .get_all("authorization")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].starts_with("Bearer ") && !sent[0].contains(PLACEHOLDER),
        "{sent:?}"
    );
}

#[tokio::test]
async fn other_methods_get_405_with_allow_post() {
    let h = Harness::builder().start().await;
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let answer = call(method.clone(), &h.url("/oauth/token"), &[], "").await;
        assert_refusal(&answer, 405, "method_not_allowed");
        assert_eq!(answer.header("allow"), Some("POST"), "{method}");
    }
    assert!(h.mock.received().is_empty());
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_refused() {
    let h = Harness::builder().server("max_body_bytes", "64").start().await;
    let answer = call(
        Method::POST,
        &h.url("/oauth/token"),
        &[("content-type", FORM)],
        "a".repeat(65),
    )
    .await;
    assert_refusal(&answer, 413, "body_too_large");
}

#[tokio::test]
async fn turned_off_the_path_is_refused_like_any_unlisted_route() {
    let h = Harness::builder()
        .server("caller_token_endpoint", "false")
        .ready()
        .await;
    let token_calls = h.mock.token_calls();
    let answer = call(
        Method::POST,
        &h.url("/oauth/token"),
        &[("content-type", FORM)],
        form_body(),
    )
    .await;
    assert_refusal(&answer, 404, "route_not_found");
    assert_eq!(h.mock.token_calls(), token_calls);
    assert!(h.mock.received().is_empty());
    assert!(
        metrics(&h)
            .get(r#"zuora_proxy_requests_total{route="caller-token",status="200"}"#)
            .is_none(),
        "no caller-token series while it is off"
    );
}

#[tokio::test]
async fn a_reload_turns_it_off_and_on() {
    let h = Harness::builder().start().await;
    assert_placeholder(&ask(&h, "reload-1", Some(FORM), form_body()).await);
    h.proxy
        .reload(h.config_with(|s| s.server("caller_token_endpoint", "false")))
        .unwrap();
    assert_refusal(
        &ask(&h, "reload-2", Some(FORM), form_body()).await,
        404,
        "route_not_found",
    );
    h.proxy.reload(h.config_with(|s| s)).unwrap();
    assert_placeholder(&ask(&h, "reload-3", Some(FORM), form_body()).await);
}

#[tokio::test]
async fn no_matching_rule_is_403() {
    let h = Harness::builder()
        .rules("[[rules]]\nname = \"abort-only\"\ntenant = \"default\"\nroutes = [\"abort-bulk-job\"]\n")
        .start()
        .await;
    let answer = ask(&h, "ct-refused", Some(FORM), form_body()).await;
    assert_refusal(&answer, 403, "no_matching_rule");
    assert!(h.mock.received().is_empty());
    let rule = "[[rules]]\nname = \"sdk\"\ntenant = \"default\"\nroutes = [\"caller-token\"]\n\
                when_headers = { \"x-team\" = \"billing\" }\n";
    let h = Harness::builder().rules(rule).start().await;
    let refused = ask(&h, "ct-no-header", Some(FORM), form_body()).await;
    assert_refusal(&refused, 403, "no_matching_rule");
    let allowed = call(
        Method::POST,
        &h.url("/oauth/token"),
        &[("x-team", "billing"), ("content-type", FORM)],
        form_body(),
    )
    .await;
    assert_placeholder(&allowed);
}

/// The routes and rules of the real-client test: the SDK's token call and one account read.
const SDK_ROUTES: &str = r#"
[[routes]]
name = "get-account"
method = "GET"
path = "/v1/accounts/{key}"
"#;

#[tokio::test]
async fn zuoras_python_sdk_works_through_the_proxy_unchanged() {
    let Some(python) = sdk_python() else {
        return;
    };
    capture_logs();
    let rules = format!(
        "[[rules]]\nname = \"sdk\"\ntenant = \"default\"\nroutes = [\"caller-token\", \"get-account\"]\n\
         entity_ids = [\"{ENTITY}\"]\ntrack_id_prefix = \"sdk\"\n"
    );
    let h = Harness::builder().routes(SDK_ROUTES).rules(&rules).ready().await;
    let token_calls = h.mock.token_calls();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/get_account.py");
    let url = h.url("");
    let out = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(&python);
        command.arg(&script).arg(&url).arg("A00000042");
        // The SDK speaks to loopback only: no proxy from the environment may take the call.
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            command.env_remove(var);
        }
        command.output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot run {SDK_PYTHON_ENV}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK script failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    let got: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(got["access_token"], PLACEHOLDER, "{got}");
    assert!(got["expires_in_s"].as_f64().is_some_and(|s| s > 3600.0), "{got}");
    assert_eq!(got["type"], "AccountDetailResponse", "{got}");
    assert_eq!(got["success"], true, "{got}");
    assert_eq!(got["account_number"], "A00000042", "{got}");
    assert_eq!(got["account_name"], "Mock Customer Inc.", "{got}");
    assert_eq!(got["balance"], 125.5, "{got}");
    assert_eq!(got["bill_to_city"], "San Francisco", "{got}");

    // Zuora saw one call, the account read, with the real token and the rule's headers.
    assert_eq!(
        h.mock.token_calls(),
        token_calls,
        "the SDK's token call stayed in the proxy"
    );
    let received = h.mock.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let account = &received[0];
    assert_eq!(account.method, Method::GET);
    assert_eq!(account.target, "/v1/accounts/A00000042");
    let header = |name: &str| -> Vec<&str> {
        account
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    let authorization = header("authorization");
    assert_eq!(authorization.len(), 1, "{authorization:?}");
    assert!(
        authorization[0].starts_with("Bearer ") && !authorization[0].contains(PLACEHOLDER),
        "{authorization:?}"
    );
    assert_eq!(header("zuora-entity-ids"), [ENTITY], "the rule's entity, not the SDK's");
    let track = track_of(&account.headers);
    assert!(track.starts_with("sdk-"), "{track}");

    let m = metrics(&h);
    assert_eq!(
        m.value(r#"zuora_proxy_requests_total{route="caller-token",status="200"}"#),
        1.0
    );
    assert_eq!(
        m.value(r#"zuora_proxy_requests_total{route="get-account",status="200"}"#),
        1.0
    );
    let line = access_line(&track).await;
    assert_eq!(line["route"], "get-account", "{line}");
    assert_eq!(line["upstream_status"], 200, "{line}");
    let logs = logs::text();
    assert!(!logs.contains(SDK_CALLER_SECRET), "the SDK's secret was logged");
    assert!(!logs.contains(SDK_CALLER_ID), "the SDK's client id was logged");
}

/// Zuora's Python SDK, pinned.
const SDK_VERSION: &str = "3.21.0";

/// The Python that has Zuora's SDK: [`SDK_PYTHON_ENV`] when set, else a virtual environment
/// this test makes (once) under Cargo's test scratch directory with `zuora-sdk` from PyPI.
/// Only where there is no Python at all does the test say why it did not run.
fn sdk_python() -> Option<String> {
    if let Some(python) = std::env::var_os(SDK_PYTHON_ENV) {
        return Some(python.to_string_lossy().into_owned());
    }
    let has_python = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_python {
        eprintln!(
            "SKIPPED zuoras_python_sdk_works_through_the_proxy_unchanged: no python3 on this machine, \
             so Zuora's Python SDK cannot run"
        );
        return None;
    }
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("zuora-sdk-{SDK_VERSION}"));
    let python = venv.join("bin/python");
    let ready = |python: &std::path::Path| {
        Command::new(python)
            .args([
                "-c",
                &format!("import importlib.metadata as m, sys; sys.exit(m.version('zuora-sdk') != '{SDK_VERSION}')"),
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready(&python) {
        let _ = std::fs::remove_dir_all(&venv);
        let run = |program: &std::path::Path, args: &[&str]| {
            let out = Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{program:?}: {e}"));
            assert!(
                out.status.success(),
                "{program:?} {args:?} failed (set {SDK_PYTHON_ENV} to a Python with zuora-sdk=={SDK_VERSION} \
                 to use another one):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run("python3".as_ref(), &["-m", "venv", &venv.to_string_lossy()]);
        let pin = format!("zuora-sdk=={SDK_VERSION}");
        run(
            &python,
            &["-m", "pip", "install", "--quiet", "--disable-pip-version-check", &pin],
        );
        assert!(ready(&python), "zuora-sdk {SDK_VERSION} did not install into {venv:?}");
    }
    Some(python.to_string_lossy().into_owned())
}

/// At trace level, so that a secret in any library's debug output would show too.
fn capture_logs() {
    logs::capture(tracing::Level::TRACE);
}

/// The access line of the request with this track id, once written.
async fn access_line(track: &str) -> Value {
    eventually(&format!("the access line of {track}"), async || {
        let lines = logs::access_lines(track);
        match lines.len() {
            0 => None,
            1 => lines.into_iter().next(),
            n => panic!("{n} access lines for {track}: {lines:?}"),
        }
    })
    .await
}
