//! `Zuora-Track-Id`: a caller's valid id reaches Zuora unchanged and comes back; without one,
//! the proxy makes one (with the rule's prefix when it has one) and echoes it.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
}

use support::client::*;
use support::fixtures::*;
use support::harness::*;

/// Two rules: callers saying `x-team: billing` get ids prefixed `billing`, the rest none.
async fn proxy() -> Harness {
    let billing = rule_for_header("billing", ("x-team", "billing"), r#"track_id_prefix = "billing""#);
    let everyone = "\n[[rules]]\nname = \"everyone\"\ntenant = \"default\"\n";
    Harness::builder().rules(&format!("{billing}{everyone}")).start().await
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[tokio::test]
async fn a_valid_caller_track_id_is_kept_end_to_end() {
    let h = proxy().await;
    let longest = "k".repeat(64);
    for id in ["caller-track-1", "A_b.c/d~e!f", longest.as_str()] {
        // The rule's prefix applies only to generated ids, never to the caller's.
        let answer = post(&h.url(&abort_path()), &[("zuora-track-id", id), ("x-team", "billing")]).await;
        assert_eq!(answer.status, 200, "{id}: {:?}", answer.body);
        assert_eq!(answer.header("zuora-track-id"), Some(id));
        let received = h.mock.received();
        let upstream = &received.last().unwrap().headers;
        assert_eq!(upstream.get_all("zuora-track-id").iter().count(), 1);
        assert_eq!(upstream["zuora-track-id"], id, "Zuora got another track id");
    }
    assert_eq!(h.mock.received().len(), 3);
}

#[tokio::test]
async fn without_a_track_id_one_is_generated_with_the_rules_prefix() {
    let h = proxy().await;
    let prefixed = post(&h.url(&abort_path()), &[("x-team", "billing")]).await;
    assert_eq!(prefixed.status, 200);
    let prefixed = prefixed.header("zuora-track-id").expect("echoed").to_string();
    let hex = prefixed
        .strip_prefix("billing-")
        .unwrap_or_else(|| panic!("no prefix: {prefixed}"));
    assert!(is_hex32(hex), "{prefixed}");

    let bare = post(&h.url(&abort_path()), &[]).await;
    assert_eq!(bare.status, 200);
    let bare = bare.header("zuora-track-id").expect("echoed").to_string();
    assert!(is_hex32(&bare), "{bare}");

    let again = post(&h.url(&abort_path()), &[]).await;
    assert_ne!(
        again.header("zuora-track-id"),
        Some(bare.as_str()),
        "generated ids repeat"
    );

    let received = h.mock.received();
    assert_eq!(received.len(), 3);
    assert_eq!(
        received[0].headers["zuora-track-id"],
        prefixed.as_str(),
        "Zuora got another id than the caller"
    );
    assert_eq!(received[1].headers["zuora-track-id"], bare.as_str());
}

#[tokio::test]
async fn a_valid_caller_track_id_is_echoed_on_every_refusal() {
    let h = Harness::builder()
        .server("max_body_bytes", "16")
        .rules(&rule_for_header("billing-only", ("x-team", "billing"), ""))
        .start()
        .await;
    let id = ("zuora-track-id", "caller-correlation-1");
    let team = ("x-team", "billing");
    let echo = job_path("echo");
    let cases = [
        (
            http::Method::POST,
            "/v1/accounts".to_string(),
            vec![id, team],
            404,
            "route_not_found",
        ),
        (
            http::Method::GET,
            abort_path(),
            vec![id, team],
            405,
            "method_not_allowed",
        ),
        (
            http::Method::POST,
            "/bulk-data/bulk-jobs/nope/aborts".to_string(),
            vec![id, team],
            400,
            "invalid_path_parameter",
        ),
        (http::Method::POST, abort_path(), vec![id], 403, "no_matching_rule"),
        (http::Method::POST, echo, vec![id, team], 413, "body_too_large"),
    ];
    let mut wrong = Vec::new();
    for (method, path, headers, status, code) in cases {
        let answer = call(method, &h.url(&path), &headers, vec![b'x'; 32]).await;
        let track = assert_refusal(&answer, status, code);
        if track != id.1 {
            wrong.push(format!("{code} echoed {track}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the caller's valid track id was not echoed: {wrong:?}"
    );
    assert!(h.mock.received().is_empty());
}
