//! W3C trace context through the proxy: a caller's valid `traceparent` is continued (same
//! trace id, the proxy's own span id toward Zuora), a malformed one is replaced, `tracestate`
//! follows only a valid one; the access line names the ids Zuora saw; `track_id_from_trace`
//! makes the track id out of the trace id; and with `[tracing] otlp_endpoint` the spans reach
//! an OTLP collector, parented as the trace says.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod logs;
    pub mod otlp;
    pub mod wait;
}

use http::HeaderMap;
use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::otlp::{kind, Collector, Exported};
use support::wait::eventually;

const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

fn caller_traceparent() -> String {
    format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
}

/// The `traceparent` Zuora received, split: (version, trace id, parent id, flags).
fn received_traceparent(headers: &HeaderMap) -> (String, String, String, String) {
    let values: Vec<_> = headers.get_all("traceparent").iter().collect();
    assert_eq!(values.len(), 1, "exactly one traceparent reaches Zuora: {headers:?}");
    let text = values[0].to_str().unwrap();
    let parts: Vec<&str> = text.split('-').collect();
    assert_eq!(parts.len(), 4, "{text}");
    assert_eq!(text.len(), 55, "{text}");
    (parts[0].into(), parts[1].into(), parts[2].into(), parts[3].into())
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && s.bytes().any(|b| b != b'0')
}

/// What Zuora received for the request with this track id.
/// Sends an abort under `track` with `traceparent`; the traceparent Zuora received for it.
async fn sent_with(h: &Harness, track: &str, traceparent: &str) -> (String, String, String, String) {
    let headers = [("zuora-track-id", track), ("traceparent", traceparent)];
    post(&h.url(&abort_path()), &headers).await;
    received_traceparent(&at_zuora(h, track))
}

fn at_zuora(h: &Harness, track: &str) -> HeaderMap {
    let received = h.mock.received();
    let found = received.iter().rev().find(|r| track_of(&r.headers) == track);
    found
        .unwrap_or_else(|| panic!("Zuora never saw {track}"))
        .headers
        .clone()
}

/// The request's access line, once written.
async fn access_line(track: &str) -> serde_json::Value {
    eventually(&format!("the access line of {track}"), async || {
        support::logs::access_lines(track).into_iter().next()
    })
    .await
}

async fn proxy() -> Harness {
    support::logs::capture(tracing::Level::INFO);
    Harness::builder().start().await
}

#[tokio::test]
async fn a_valid_traceparent_is_continued_with_the_proxys_own_span_id() {
    let h = proxy().await;
    let track = "trace-valid-1";
    let parent = caller_traceparent();
    let headers = [
        ("zuora-track-id", track),
        ("traceparent", parent.as_str()),
        ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
    ];
    let answer = post(&h.url(&abort_path()), &headers).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let zuora = at_zuora(&h, track);
    let (version, trace, span, flags) = received_traceparent(&zuora);
    assert_eq!(
        (version.as_str(), trace.as_str(), flags.as_str()),
        ("00", CALLER_TRACE, "01")
    );
    assert!(is_hex(&span, 16), "{span}");
    assert_ne!(span, CALLER_SPAN, "the proxy's span, not the caller's");
    assert_eq!(zuora["tracestate"], "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");

    let line = access_line(track).await;
    assert_eq!(line["trace_id"], CALLER_TRACE);
    assert_eq!(
        line["span_id"],
        span.as_str(),
        "the access line names the span Zuora saw"
    );

    // An unsampled caller's decision is kept.
    let track = "trace-valid-2";
    let unsampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00");
    let (_, trace, _, flags) = sent_with(&h, track, &unsampled).await;
    assert_eq!((trace.as_str(), flags.as_str()), (CALLER_TRACE, "00"));

    // A later version is read by its first four fields and sent on as version 00.
    let track = "trace-valid-3";
    let future = format!("01-{CALLER_TRACE}-{CALLER_SPAN}-01-what-comes-next");
    let (version, trace, _, _) = sent_with(&h, track, &future).await;
    assert_eq!((version.as_str(), trace.as_str()), ("00", CALLER_TRACE));
}

#[tokio::test]
async fn a_malformed_traceparent_is_replaced_by_a_new_trace_and_its_tracestate_dropped() {
    let h = proxy().await;
    let bad = [
        (
            "uppercase",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01".to_string(),
        ),
        ("zero-trace", format!("00-{}-{CALLER_SPAN}-01", "0".repeat(32))),
        ("zero-span", format!("00-{CALLER_TRACE}-{}-01", "0".repeat(16))),
        ("short-trace", format!("00-{}-{CALLER_SPAN}-01", &CALLER_TRACE[..30])),
        ("long-span", format!("00-{CALLER_TRACE}-{CALLER_SPAN}0-01")),
        ("short-flags", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-1")),
        ("v00-extra", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01-extra")),
        ("version-ff", format!("ff-{CALLER_TRACE}-{CALLER_SPAN}-01")),
        ("not-hex", format!("00-{}x-{CALLER_SPAN}-01", &CALLER_TRACE[..31])),
        ("separators", format!("00_{CALLER_TRACE}_{CALLER_SPAN}_01")),
        ("empty", String::new()),
    ];
    for (name, value) in &bad {
        let track = format!("trace-bad-{name}");
        let headers = [
            ("zuora-track-id", track.as_str()),
            ("traceparent", value.as_str()),
            ("tracestate", "congo=t61rcWkgMzE"),
        ];
        let answer = post(&h.url(&abort_path()), &headers).await;
        assert_eq!(answer.status, 200, "{name}: {:?}", answer.body);
        let zuora = at_zuora(&h, &track);
        let (version, trace, span, flags) = received_traceparent(&zuora);
        assert_eq!(version, "00", "{name}");
        assert!(is_hex(&trace, 32) && is_hex(&span, 16), "{name}: {trace} {span}");
        assert!(
            !value.to_lowercase().contains(&trace),
            "{name}: the bad trace id went on"
        );
        assert_eq!(flags, "01", "{name}: a new trace is sampled by default");
        assert!(
            zuora.get("tracestate").is_none(),
            "{name}: tracestate without a valid traceparent"
        );
        let line = access_line(&track).await;
        assert_eq!(line["trace_id"], trace.as_str(), "{name}");
        assert_eq!(line["span_id"], span.as_str(), "{name}");
    }
    // Two traceparent headers are no valid one either.
    let track = "trace-bad-twice";
    let parent = caller_traceparent();
    let headers = [
        ("zuora-track-id", track),
        ("traceparent", &parent),
        ("traceparent", &parent),
    ];
    post(&h.url(&abort_path()), &headers).await;
    let (_, trace, _, _) = received_traceparent(&at_zuora(&h, track));
    assert_ne!(trace, CALLER_TRACE);
}

#[tokio::test]
async fn tracestate_goes_on_only_when_well_formed_and_within_bounds() {
    let h = proxy().await;
    let parent = caller_traceparent();
    let members_33 = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
    let members_32 = (0..32).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
    let bytes_513 = format!("k={}", "v".repeat(511));
    let cases = [
        ("ok", "vendor=value", true),
        ("32-members", members_32.as_str(), true),
        ("33-members", members_33.as_str(), false),
        ("513-bytes", bytes_513.as_str(), false),
        ("uppercase-key", "Vendor=value", false),
        ("no-equals", "vendor", false),
        ("duplicate-key", "a=1,a=2", false),
    ];
    for (name, state, kept) in cases {
        let track = format!("state-{name}");
        let headers = [
            ("zuora-track-id", track.as_str()),
            ("traceparent", &parent),
            ("tracestate", state),
        ];
        assert_eq!(post(&h.url(&abort_path()), &headers).await.status, 200, "{name}");
        let zuora = at_zuora(&h, &track);
        match kept {
            true => assert_eq!(zuora["tracestate"], state, "{name}"),
            false => assert!(zuora.get("tracestate").is_none(), "{name}"),
        }
        // The traceparent itself stays valid and continued.
        assert_eq!(received_traceparent(&zuora).1, CALLER_TRACE, "{name}");
    }
}

#[tokio::test]
async fn without_a_traceparent_a_new_trace_is_started_and_every_line_has_ids() {
    let h = proxy().await;
    let track = "trace-new-1";
    assert_eq!(
        post(&h.url(&abort_path()), &[("zuora-track-id", track)]).await.status,
        200
    );
    let (version, trace, span, flags) = received_traceparent(&at_zuora(&h, track));
    assert_eq!((version.as_str(), flags.as_str()), ("00", "01"));
    let line = access_line(track).await;
    assert_eq!(line["trace_id"], trace.as_str());
    assert_eq!(line["span_id"], span.as_str());

    let again = "trace-new-2";
    post(&h.url(&abort_path()), &[("zuora-track-id", again)]).await;
    assert_ne!(
        received_traceparent(&at_zuora(&h, again)).1,
        trace,
        "each request starts its own"
    );

    // A refusal, never sent to Zuora, has ids too: the caller's trace and the request's span.
    let refused = "trace-refused-1";
    let parent = caller_traceparent();
    let answer = post(
        &h.url("/not/allowed"),
        &[("zuora-track-id", refused), ("traceparent", &parent)],
    )
    .await;
    assert_eq!(answer.status, 404);
    let line = access_line(refused).await;
    assert_eq!(line["trace_id"], CALLER_TRACE);
    let span = line["span_id"].as_str().unwrap();
    assert!(is_hex(span, 16) && span != CALLER_SPAN, "{span}");
}

#[tokio::test]
async fn track_id_from_trace_makes_the_track_id_of_the_trace_id() {
    support::logs::capture(tracing::Level::INFO);
    let routes = ROUTES.replace(
        "path = \"/bulk-data/bulk-jobs/{id:uuid}/aborts\"",
        "path = \"/bulk-data/bulk-jobs/{id:uuid}/aborts\"\ntrack_id_from_trace = true",
    );
    let rules = "[[rules]]\nname = \"prefixed\"\ntenant = \"default\"\ntrack_id_prefix = \"billing\"\n";
    let h = Harness::builder().routes(&routes).rules(rules).start().await;
    let parent = caller_traceparent();

    let answer = post(&h.url(&abort_path()), &[("traceparent", &parent)]).await;
    assert_eq!(answer.status, 200);
    let want = format!("billing-{CALLER_TRACE}");
    assert_eq!(answer.header("zuora-track-id"), Some(want.as_str()));
    assert_eq!(received_traceparent(&at_zuora(&h, &want)).1, CALLER_TRACE);
    assert_eq!(access_line(&want).await["trace_id"], CALLER_TRACE);

    // A new trace: the prefix and the trace id Zuora saw in its traceparent.
    let answer = post(&h.url(&abort_path()), &[]).await;
    let track = answer.header("zuora-track-id").unwrap().to_string();
    let hex = track.strip_prefix("billing-").unwrap_or_else(|| panic!("{track}"));
    assert!(is_hex(hex, 32), "{track}");
    assert_eq!(received_traceparent(&at_zuora(&h, &track)).1, hex);

    // A caller's own track id always wins.
    let answer = post(
        &h.url(&abort_path()),
        &[("zuora-track-id", "mine-1"), ("traceparent", &parent)],
    )
    .await;
    assert_eq!(answer.header("zuora-track-id"), Some("mine-1"));

    // Routes without the option keep random track ids.
    let answer = post(&h.url(&job_path("echo")), &[("traceparent", &parent)]).await;
    assert_ne!(answer.header("zuora-track-id"), Some(CALLER_TRACE));
}

/// The proxy exporting to `collector` every 20 ms.
async fn exporting(collector: &Collector) -> Harness {
    support::logs::capture(tracing::Level::INFO);
    // The harness writes its rules text last, verbatim: the `[tracing]` table rides with it.
    let tracing = format!(
        "[tracing]\notlp_endpoint = \"{}\"\nservice_name = \"proxy-under-test\"\nexport_interval = \"20ms\"\n",
        collector.endpoint()
    );
    Harness::builder().rules(&tracing).start().await
}

fn one<'s>(spans: &'s [Exported], what: &str, pick: impl Fn(&Exported) -> bool) -> Option<&'s Exported> {
    let found: Vec<&Exported> = spans.iter().filter(|s| pick(s)).collect();
    assert!(found.len() <= 1, "more than one {what}: {found:#?}");
    found.into_iter().next()
}

#[tokio::test]
async fn spans_reach_the_collector_parented_as_the_trace_says() {
    let collector = Collector::start().await;
    let h = exporting(&collector).await;
    h.wait_for_token().await;
    let track = "otlp-1";
    let parent = caller_traceparent();
    let answer = post(
        &h.url(&abort_path()),
        &[("zuora-track-id", track), ("traceparent", &parent)],
    )
    .await;
    assert_eq!(answer.status, 200);
    let (_, _, zuora_span, _) = received_traceparent(&at_zuora(&h, track));
    let line = access_line(track).await;

    let (server, children) = collector
        .wait_for("the request's server span and its three children", |spans| {
            let mine: Vec<Exported> = spans.iter().filter(|s| s.trace_id == CALLER_TRACE).cloned().collect();
            let server = one(&mine, "server span", |s| s.kind == kind::SERVER)?.clone();
            let children: Vec<Exported> = mine
                .iter()
                .filter(|s| s.parent_span_id == server.span_id)
                .cloned()
                .collect();
            (children.len() == 3).then_some((server, children))
        })
        .await;
    assert_eq!(server.trace_id, line["trace_id"].as_str().unwrap());
    assert_eq!(
        server.parent_span_id, CALLER_SPAN,
        "the caller's span is the server span's parent"
    );
    assert_eq!(server.name, "POST /bulk-data/bulk-jobs/{id}/aborts");
    assert_eq!(server.service_name, "proxy-under-test");
    for (key, want) in [
        ("http.request.method", "POST"),
        ("http.route", "/bulk-data/bulk-jobs/{id}/aborts"),
        ("url.path", abort_path().as_str()),
        ("http.response.status_code", "200"),
        ("network.protocol.version", "1.1"),
        ("zuora.track_id", track),
        ("zuora.tenant", "default"),
        ("zuora.route", "abort-bulk-job"),
    ] {
        assert_eq!(server.attr(key), Some(want), "{key}: {server:#?}");
    }
    assert_eq!(
        server.attr("zuora.request_id"),
        answer.header("zuora-request-id"),
        "Zuora's request id: {server:#?}"
    );
    assert!(!server.failed && server.attr("error.type").is_none());
    assert!(server.start_unix_nano <= server.end_unix_nano);

    let names: Vec<&str> = {
        let mut names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        names
    };
    assert_eq!(
        names,
        ["POST /bulk-data/bulk-jobs/{id}/aborts", "permit wait", "token wait"]
    );
    let call = children
        .iter()
        .find(|s| s.kind == kind::CLIENT)
        .expect("the Zuora call");
    assert_eq!(call.span_id, zuora_span, "Zuora's traceparent names the call's span");
    assert_eq!(line["span_id"], zuora_span.as_str());
    assert_eq!(call.attr("http.response.status_code"), Some("200"));
    assert_eq!(call.attr("server.address"), Some("127.0.0.1"));
    assert!(call.attr("server.port").is_some());
    for child in &children {
        assert!(server.start_unix_nano <= child.start_unix_nano, "{child:#?}");
        assert!(child.end_unix_nano <= server.end_unix_nano, "{child:#?}");
    }
    assert!(children.iter().filter(|s| s.kind == kind::INTERNAL).count() == 2);

    // The token fetch is a trace of its own, named in the token event.
    let fetch = collector
        .wait_for("the token fetch span", |spans| {
            one(spans, "token fetch", |s| s.name == "POST /oauth/token").cloned()
        })
        .await;
    assert_eq!(fetch.kind, kind::CLIENT);
    assert_eq!(fetch.parent_span_id, "");
    assert_eq!(fetch.attr("zuora.tenant"), Some("default"));
    assert_eq!(fetch.attr("zuora.token.result"), Some("ok"));
    let event = support::logs::text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "token fetched" && v["trace_id"] == fetch.trace_id.as_str());
    let event = event.unwrap_or_else(|| panic!("no token event names trace {}", fetch.trace_id));
    assert_eq!(event["span_id"], fetch.span_id.as_str());
}

#[tokio::test]
async fn a_refused_request_is_a_failed_server_span_and_an_unsampled_trace_is_not_exported() {
    let collector = Collector::start().await;
    let h = exporting(&collector).await;
    let parent = format!("00-{}-{CALLER_SPAN}-01", "1".repeat(32));
    let answer = post(
        &h.url("/not/allowed"),
        &[("zuora-track-id", "otlp-refused"), ("traceparent", &parent)],
    )
    .await;
    assert_eq!(answer.status, 404);
    let server = collector
        .wait_for("the refusal's span", |spans| {
            one(spans, "refusal", |s| s.trace_id == "1".repeat(32)).cloned()
        })
        .await;
    assert_eq!(server.kind, kind::SERVER);
    assert_eq!(server.name, "POST");
    assert!(server.failed);
    assert_eq!(server.attr("error.type"), Some("route_not_found"));
    assert_eq!(server.attr("http.response.status_code"), Some("404"));
    assert_eq!(server.attr("http.route"), None);

    // The caller decided not to sample: nothing of its trace is exported, though Zuora still
    // gets the trace context. The sampled request after it shows that export went on.
    let unsampled = format!("00-{}-{CALLER_SPAN}-00", "2".repeat(32));
    let headers = [
        ("zuora-track-id", "otlp-unsampled"),
        ("traceparent", unsampled.as_str()),
    ];
    assert_eq!(post(&h.url(&abort_path()), &headers).await.status, 200);
    assert_eq!(received_traceparent(&at_zuora(&h, "otlp-unsampled")).1, "2".repeat(32));
    let sampled = format!("00-{}-{CALLER_SPAN}-01", "3".repeat(32));
    let headers = [("zuora-track-id", "otlp-sampled"), ("traceparent", sampled.as_str())];
    assert_eq!(post(&h.url(&abort_path()), &headers).await.status, 200);
    collector
        .wait_for("the sampled request's server span", |spans| {
            spans
                .iter()
                .any(|s| s.trace_id == "3".repeat(32) && s.kind == kind::SERVER)
                .then_some(())
        })
        .await;
    assert!(collector.spans().iter().all(|s| s.trace_id != "2".repeat(32)));
}

#[tokio::test]
async fn sample_ratio_decides_new_traces_only() {
    support::logs::capture(tracing::Level::INFO);
    let h = Harness::builder()
        .rules("[tracing]\nsample_ratio = 0.0\n")
        .start()
        .await;
    post(&h.url(&abort_path()), &[("zuora-track-id", "ratio-new")]).await;
    let (_, _, _, flags) = received_traceparent(&at_zuora(&h, "ratio-new"));
    assert_eq!(flags, "00", "a new trace is not sampled at ratio 0");
    let parent = caller_traceparent();
    let (_, trace, _, flags) = sent_with(&h, "ratio-caller", &parent).await;
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        (CALLER_TRACE, "01"),
        "the caller's decision stands"
    );
}
