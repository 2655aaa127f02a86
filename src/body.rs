//! Body types on both sides of the proxy. Small request bodies are buffered so that they can
//! be replayed after a 401; anything larger streams through with its size capped.

use bytes::Bytes;
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;

/// What the caller receives: Zuora's streamed body, or a body the proxy wrote.
pub type ResponseBody = Either<Incoming, Full<Bytes>>;

/// What Zuora receives: a buffered (replayable) body, or the caller's stream under a cap.
pub type UpstreamBody = Either<Full<Bytes>, Limited<Incoming>>;

/// Bodies at most this large are buffered, so a request can be replayed once after a 401.
pub const REPLAY_BUFFER_BYTES: u64 = 64 * 1024;

pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Either::Right(Full::new(bytes.into()))
}
