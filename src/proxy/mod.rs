//! The forwarding service, in phases read top to bottom: [`admit`] (framing, route, rule,
//! track id), [`prepare`] (body, URI, permit, token), [`attempt`] (send, 401 replay,
//! retries), [`respond`] (headers, echo, guards). Each phase returns its own error; the
//! request's deadline is applied in one place ([`Deadline::bound`]). [`Proxy::handle`] never
//! fails: every error becomes a response in [`crate::error`], and every request leaves one
//! [`record::Record`].

mod admit;
mod attempt;
mod govern;
mod prepare;
mod record;
mod respond;

use crate::body::ResponseBody;
use crate::caller_token;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use record::Record;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The proxy: the snapshot in force, swapped atomically on reload, and the metrics.
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
}

impl Proxy {
    pub fn new(snapshot: Snapshot, metrics: Arc<Metrics>) -> Proxy {
        Proxy {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            draining: AtomicBool::new(false),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn swap_snapshot(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Answers one caller request. Never fails: every refusal is a response.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let snapshot = self.snapshot.load_full();
        let mut record = Record::new(snapshot.clone(), self.metrics.clone(), &request);
        match forward(&snapshot, request, &mut record).await {
            Ok(response) => {
                let idle = Some(snapshot.config.live.requests.upstream_body_timeout);
                record.answer(response, idle)
            }
            Err(error) => {
                let response = record.refuse(error);
                record.answer(response.map(Either::Right), None)
            }
        }
    }
}

/// The request path; `?` turns any phase's error into the caller's answer.
async fn forward(
    snapshot: &Snapshot,
    request: Request<Incoming>,
    record: &mut Record,
) -> Result<Response<attempt::Answer>, ProxyError> {
    let limits = &snapshot.config.live.requests;
    // Counted from when the record started the request's clock: one clock read for both.
    let deadline = Deadline(record.started() + limits.request_timeout);
    let (parts, body) = request.into_parts();
    let admitted = admit::admit(snapshot, &parts, record)?;
    if snapshot.is_caller_token(admitted.route) {
        // Admitted like any route (so rules apply), then answered here: never sent to Zuora.
        let answer = caller_token::answer(body, &parts.headers, limits.max_body_bytes, &admitted.track_id);
        let answer = deadline.bound(None, answer, ProxyError::BodyRead).await?;
        return Ok(answer.map(Either::Right));
    }
    let prepared = prepare::prepare(&admitted, parts, body, limits.max_body_bytes, deadline, record).await?;
    let answer = attempt::attempt(&admitted, prepared, deadline, record).await?;
    Ok(respond::respond(answer, &admitted, record))
}

/// When the whole request must have its answer's head.
#[derive(Debug, Clone, Copy)]
struct Deadline(Instant);

impl Deadline {
    /// Runs one wait of the request path, bounded by the deadline and by the wait's own
    /// `limit`; running out of time is `on_timeout`, the error that names what was awaited.
    async fn bound<T>(
        self,
        limit: Option<Duration>,
        wait: impl Future<Output = Result<T, ProxyError>>,
        on_timeout: ProxyError,
    ) -> Result<T, ProxyError> {
        let at = limit.map_or(self.0, |limit| self.0.min(Instant::now() + limit));
        tokio::time::timeout_at(at, wait).await.unwrap_or(Err(on_timeout))
    }

    /// Whether a wait of `wait` would still end before the deadline.
    fn allows(self, wait: Duration) -> bool {
        wait < self.0.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::admit::Admitted;
    use super::prepare::Prepared;
    use super::*;
    use std::mem::size_of;

    // The size of what a function returns, without calling it.
    fn of3<A, B, C, F>(_: impl FnOnce(A, B, C) -> F) -> usize {
        size_of::<F>()
    }
    fn of4<A, B, C, D, F>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
        size_of::<F>()
    }
    fn of6<A, B, C, D, E, G, F>(_: impl FnOnce(A, B, C, D, E, G) -> F) -> usize {
        size_of::<F>()
    }

    type Adm = &'static Admitted<'static>;
    type Rec = &'static mut Record;

    /// Every request's future is moved whole at each of its awaits (and boxed once): a wait
    /// off the common path that grows it past these bounds belongs in a `Box::pin`.
    #[test]
    fn request_futures_stay_small() {
        let forward = of3::<&'static Snapshot, Request<Incoming>, Rec, _>(forward);
        let prepare = of6::<Adm, http::request::Parts, Incoming, u64, Deadline, Rec, _>(prepare::prepare);
        let attempt = of4::<Adm, Prepared, Deadline, Rec, _>(attempt::attempt);
        eprintln!("bytes: forward {forward}, prepare {prepare}, attempt {attempt}");
        assert!(forward <= 4096, "forward's future is {forward} bytes");
        assert!(prepare <= 2048, "prepare's future is {prepare} bytes");
        assert!(attempt <= 3072, "attempt's future is {attempt} bytes");
    }
}
