//! A test OTLP collector: an HTTP/1 server on `127.0.0.1:0` that takes `POST /v1/traces`
//! (OTLP protobuf), decodes every span it gets and lets a test await the ones it wants.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Span kinds as OTLP numbers them.
#[allow(dead_code)]
pub mod kind {
    pub const INTERNAL: i32 = 1;
    pub const SERVER: i32 = 2;
    pub const CLIENT: i32 = 3;
}

/// One span as the collector received it; ids in lower-case hex, `""` when absent.
#[derive(Debug, Clone)]
pub struct Exported {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: i32,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// Attribute values as text (numbers written out).
    pub attributes: BTreeMap<String, String>,
    /// Whether the span's status is an error.
    pub failed: bool,
    /// The `service.name` of the resource it came with.
    pub service_name: String,
}

impl Exported {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// The collector: its address, and every span received so far.
pub struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Exported>>>,
    received: watch::Receiver<usize>,
    _task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (batches, received) = watch::channel(0);
        let batches = Arc::new(batches);
        let task = {
            let spans = spans.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (spans, batches) = (spans.clone(), batches.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            let (spans, batches) = (spans.clone(), batches.clone());
                            async move { Ok::<_, std::convert::Infallible>(take(request, &spans, &batches).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Collector {
            addr,
            spans,
            received,
            _task: task,
        }
    }

    /// The traces endpoint, for `[tracing] otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (at most the tests' patience) until the spans received satisfy `done`, which
    /// returns what the test wants of them.
    pub async fn wait_for<T>(&self, what: &str, mut done: impl FnMut(&[Exported]) -> Option<T>) -> T {
        let mut received = self.received.clone();
        let wait = async {
            loop {
                if let Some(found) = done(&self.spans()) {
                    return found;
                }
                received.changed().await.expect("the collector runs");
            }
        };
        tokio::time::timeout(super::wait::patience(), wait)
            .await
            .unwrap_or_else(|_| panic!("not exported in time: {what}; got {:#?}", self.spans()))
    }
}

async fn take(
    request: Request<Incoming>,
    spans: &Mutex<Vec<Exported>>,
    batches: &watch::Sender<usize>,
) -> Response<Full<Bytes>> {
    let answer = |status| {
        let mut response = Response::new(Full::new(Bytes::from(
            ExportTraceServiceResponse::default().encode_to_vec(),
        )));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert("content-type", "application/x-protobuf".parse().unwrap());
        response
    };
    let is_protobuf = request
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
    if request.method() != http::Method::POST || request.uri().path() != "/v1/traces" || !is_protobuf {
        return answer(StatusCode::NOT_FOUND);
    }
    let Ok(body) = request.into_body().collect().await else {
        return answer(StatusCode::BAD_REQUEST);
    };
    let Ok(export) = ExportTraceServiceRequest::decode(body.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST);
    };
    let mut got = Vec::new();
    for resource in export.resource_spans {
        let service_name = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            got.push(Exported {
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                name: span.name,
                kind: span.kind,
                start_unix_nano: span.start_time_unix_nano,
                end_unix_nano: span.end_time_unix_nano,
                attributes: attributes(&span.attributes),
                // OTLP's STATUS_CODE_ERROR.
                failed: span.status.is_some_and(|s| s.code == 2),
                service_name: service_name.clone(),
            });
        }
    }
    spans.lock().unwrap().extend(got);
    batches.send_modify(|n| *n += 1);
    answer(StatusCode::OK)
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), text(kv.value.as_ref()))).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(n)) => n.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
