//! The answer toward the caller: Zuora's status, headers (hop-by-hop removed) and streamed
//! body, with the track id echoed and the slot held until the body's last byte.

use super::admit::Admitted;
use super::record::Record;
use crate::headers::{self, ZUORA_TRACK_ID};
use http::Response;

pub(super) fn respond<B>(mut response: Response<B>, admitted: &Admitted<'_>, record: &mut Record) -> Response<B> {
    record.upstream_answered(response.status(), response.headers());
    headers::strip_hop_by_hop(response.headers_mut());
    if !response.headers().contains_key(&ZUORA_TRACK_ID) {
        response
            .headers_mut()
            .insert(ZUORA_TRACK_ID.clone(), admitted.track_id.clone());
    }
    response
}
