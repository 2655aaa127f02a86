//! OTLP/HTTP protobuf export of finished spans (`[tracing] otlp_endpoint`). The proxy knows
//! each span's ids and times itself (they are in its access line and in the `traceparent`
//! Zuora received), so spans are handed whole to the SDK's batch processor: one thread, a
//! bounded queue, batches every `export_interval`. Nothing of it exists while export is off.
//!
//! Handing a span over never waits: when `queue_size` spans are already waiting, the span is
//! dropped and counted (`zuora_proxy_trace_spans_dropped_total`). The collector is reached by a
//! small hyper client on a runtime of the export thread's own, so that a slow or absent
//! collector costs the request path nothing and a flush at exit needs no request runtime.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanExporter, SpanLinks, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// One export call (connect, send, answer) must finish within this.
const EXPORT_TIMEOUT_SECS: u64 = 10;
/// Spans per export request, at most.
const MAX_BATCH_SPANS: usize = 512;
/// A collector's answer larger than this is not read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// At exit, how long the last batch may take.
const SHUTDOWN_TIMEOUT_SECS: u64 = 2;

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// The collector's traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: url::Url,
    pub service_name: String,
    /// Spans waiting for export, at most; more are dropped.
    pub queue_size: usize,
    /// How long a finished span may wait before its batch is sent.
    pub export_interval: Duration,
}

/// What a span is to its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
    Internal,
}

/// A finished span, as the proxy saw it.
#[derive(Debug)]
pub struct Span {
    pub trace_id: u128,
    pub span_id: u64,
    /// The parent's id, and whether it lives in another process (the caller's span).
    pub parent: Option<(u64, bool)>,
    pub kind: Kind,
    pub name: Cow<'static, str>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// Set when the span failed (its `error.type`).
    pub error: Option<Cow<'static, str>>,
}

/// Cheap to clone; every clone feeds the same export thread.
#[derive(Clone)]
pub struct Exporter(Arc<Inner>);

struct Inner {
    processor: BatchSpanProcessor,
    /// Spans handed over and not yet taken into an export batch.
    pending: Arc<AtomicUsize>,
    queue_size: usize,
    dropped: Counter,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("queue_size", &self.0.queue_size)
            .finish()
    }
}

impl Exporter {
    /// Starts the export thread. `dropped` counts spans that found the queue full.
    pub fn start(settings: &ExportSettings, dropped: Counter) -> Result<Exporter, String> {
        let otlp = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Collector::default())
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.as_str())
            .with_timeout(Duration::from_secs(EXPORT_TIMEOUT_SECS))
            .build()
            .map_err(|e| e.to_string())?;
        let pending = Arc::new(AtomicUsize::new(0));
        let counting = Counting {
            inner: otlp,
            pending: pending.clone(),
            failing: AtomicBool::new(false),
        };
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(settings.queue_size)
            .with_max_export_batch_size(settings.queue_size.min(MAX_BATCH_SPANS))
            .with_scheduled_delay(settings.export_interval)
            .build();
        let mut processor = BatchSpanProcessor::builder(counting).with_batch_config(config).build();
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        processor.set_resource(&resource);
        Ok(Exporter(Arc::new(Inner {
            processor,
            pending,
            queue_size: settings.queue_size,
            dropped,
            scope: InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })))
    }

    /// Queues a finished span for export, or drops (and counts) it when the queue is full.
    /// Never waits.
    pub fn export(&self, span: Span) {
        let inner = &self.0;
        // Spans in the processor's queue are never more than those pending here, so its own
        // queue never overflows: a drop happens here, where it is counted.
        if inner
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < inner.queue_size).then_some(n + 1)
            })
            .is_err()
        {
            inner.dropped.inc();
            return;
        }
        let (parent_span_id, parent_span_is_remote) = match span.parent {
            Some((id, remote)) => (SpanId::from_bytes(id.to_be_bytes()), remote),
            None => (SpanId::INVALID, false),
        };
        let span_context = SpanContext::new(
            TraceId::from_bytes(span.trace_id.to_be_bytes()),
            SpanId::from_bytes(span.span_id.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let status = match span.error {
            Some(description) => Status::error(description),
            None => Status::Unset,
        };
        inner.processor.on_end(SpanData {
            span_context,
            parent_span_id,
            parent_span_is_remote,
            span_kind: match span.kind {
                Kind::Server => SpanKind::Server,
                Kind::Client => SpanKind::Client,
                Kind::Internal => SpanKind::Internal,
            },
            name: span.name,
            start_time: span.start,
            end_time: span.end.max(span.start),
            attributes: span.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: inner.scope.clone(),
        });
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self
            .processor
            .shutdown_with_timeout(Duration::from_secs(SHUTDOWN_TIMEOUT_SECS));
    }
}

/// The OTLP exporter, counting the spans it takes out of the queue and saying once when the
/// collector stops taking them (and once when it is back).
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.pending.fetch_sub(batch.len(), Ordering::AcqRel);
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(error) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(%error, spans, "span export failed; spans are dropped until the collector answers");
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!("span export works again");
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The collector's HTTP client: plain HTTP/1 (the endpoint is `http://`), driven by a
/// current-thread runtime that lives on the export thread (made there at the first export).
#[derive(Debug, Default)]
struct Collector {
    driver: OnceLock<Option<Driver>>,
}

/// The export thread's runtime and the client it drives.
type Driver = (tokio::runtime::Runtime, Client<HttpConnector, Full<Bytes>>);

impl HttpClient for Collector {
    // The trait is written with `async_trait`; this is its expansion, to spare the crate.
    fn send_bytes<'s, 'f>(
        &'s self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'f>>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(async move { self.send(request) })
    }
}

impl Collector {
    fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let driver = self.driver.get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let client = Client::builder(TokioExecutor::new()).build_http();
            Some((runtime, client))
        });
        let Some((runtime, client)) = driver else {
            return Err("no runtime for the span exporter".into());
        };
        // The export thread is no runtime's thread: blocking it here is what it is for.
        runtime.block_on(async {
            let call = client.request(request.map(Full::new));
            let response = tokio::time::timeout(Duration::from_secs(EXPORT_TIMEOUT_SECS), call)
                .await
                .map_err(|_| "the collector did not answer in time")??;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES).collect().await?.to_bytes();
            Ok(Response::from_parts(parts, body))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(n: u64) -> Span {
        let now = SystemTime::now();
        Span {
            trace_id: 1,
            span_id: n,
            parent: None,
            kind: Kind::Internal,
            name: "test".into(),
            start: now,
            end: now,
            attributes: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn spans_beyond_the_queue_are_dropped_and_counted_without_waiting() {
        // A collector that takes the connection and never answers: the first batch's export
        // hangs, so whatever comes after the queue is full has nowhere to go.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let settings = ExportSettings {
            endpoint: format!("http://{}/v1/traces", silent.local_addr().unwrap())
                .parse()
                .unwrap(),
            service_name: "test".into(),
            queue_size: 2,
            export_interval: Duration::from_secs(3600),
        };
        let dropped = Counter::default();
        let exporter = Exporter::start(&settings, dropped.clone()).unwrap();
        for n in 1..=10 {
            exporter.export(span(n));
        }
        // Two wait in the queue, and two more if the export thread took the first two out of
        // it before the rest came; every other one is dropped.
        assert!((6..=8).contains(&dropped.get()), "{}", dropped.get());
    }
}
