//! The core path: a caller's abort reaches Zuora with the injected token and the rule's headers.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
}

use support::client::*;
use support::fixtures::*;
use support::harness::*;

#[tokio::test]
async fn abort_is_forwarded_with_token_and_echoed_track_id() {
    let h = Harness::builder()
        .rules(&format!(
            r#"
[[rules]]
name = "acme"
tenant = "default"
entity_ids = ["{ENTITY}"]
org_ids = ["org-1", "org-2"]
track_id_prefix = "acme"
"#
        ))
        .start()
        .await;
    let answer = post(
        &h.url(&abort_path()),
        &[
            ("authorization", "Bearer caller-must-not-pass"),
            ("zuora-entity-ids", "caller-entity"),
            // Every hop-by-hop header of RFC 9110 §7.6.1 a caller can send on a plain request,
            // and one that `Connection` names.
            ("connection", "upgrade, x-hop-one, keep-alive"),
            ("upgrade", "websocket"),
            ("x-hop-one", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic abc"),
            ("x-forwarded-for", "10.1.2.3"),
            ("zuora-version", "2024-05-20"),
            ("idempotency-key", "idem-1"),
            ("accept-encoding", "gzip"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json(), serde_json::json!({"id": JOB, "status": "Aborted"}));
    let track = answer.header("zuora-track-id").expect("track id echoed").to_string();
    assert!(track.starts_with("acme-") && track.len() == 37, "{track}");
    assert!(answer.header("zuora-request-id").is_some());
    assert!(
        answer.header("x-mock-hop").is_none(),
        "response hop-by-hop header leaked"
    );
    assert!(answer.header("keep-alive").is_none());

    let received = h.mock.received();
    assert_eq!(received.len(), 1);
    let got = &received[0].headers;
    let auth = got["authorization"].to_str().unwrap();
    assert!(auth.starts_with("Bearer mock-token-"), "{auth}");
    assert_eq!(got.get_all("authorization").iter().count(), 1);
    assert_eq!(got["zuora-entity-ids"], ENTITY);
    assert_eq!(got["zuora-org-ids"], "org-1,org-2");
    assert_eq!(got["zuora-track-id"], track.as_str());
    assert_eq!(got["host"], h.mock.addr().to_string().as_str());
    assert_eq!(got["zuora-version"], "2024-05-20");
    assert_eq!(got["idempotency-key"], "idem-1");
    assert_eq!(got["accept-encoding"], "gzip");
    for hop in [
        "connection",
        "upgrade",
        "x-hop-one",
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
        "proxy-authorization",
        "x-forwarded-for",
    ] {
        assert!(!got.contains_key(hop), "{hop} reached Zuora");
    }
    assert_eq!(received[0].target, abort_path());
}
