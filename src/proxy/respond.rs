//! The answer toward the caller: Zuora's status, headers (hop-by-hop removed) and streamed
//! body, with the track id echoed and the slot held until the body's last byte. The answer
//! is framed by this hop (RFC 9112 §6): in the proxy's own HTTP version, and chunked or by a
//! length only when Zuora's length still holds.

use super::admit::Admitted;
use super::record::Record;
use crate::headers::{self, ZUORA_TRACK_ID};
use http::{header, Response, Version};

pub(super) fn respond<B>(mut response: Response<B>, admitted: &Admitted<'_>, record: &mut Record) -> Response<B> {
    record.upstream_answered(response.status(), response.headers());
    // With both, Transfer-Encoding framed the body and the length is stale: an intermediary
    // that forwards such an answer must drop Content-Length (RFC 9112 §6.3).
    if response.headers().contains_key(header::TRANSFER_ENCODING) {
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    headers::strip_hop_by_hop(response.headers_mut());
    // The caller talks to this hop: its version, never Zuora's (hyper answers an HTTP/1.0
    // caller in 1.0 by itself).
    *response.version_mut() = Version::HTTP_11;
    if !response.headers().contains_key(&ZUORA_TRACK_ID) {
        response
            .headers_mut()
            .insert(ZUORA_TRACK_ID.clone(), admitted.track_id.clone());
    }
    response
}
