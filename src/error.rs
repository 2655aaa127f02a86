//! Every answer the proxy makes itself: one enum of refusals and failures, mapped to a status,
//! a stable code and a JSON body in exactly one place.

use crate::headers::{PROXY_ERROR, ZUORA_TRACK_ID};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

/// Why the proxy answered instead of Zuora.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("the request has both Content-Length and Transfer-Encoding; its framing is ambiguous")]
    AmbiguousFraming,
    #[error("an HTTP/1.1 request needs exactly one Host header, and neither it nor the target may carry userinfo")]
    InvalidHost,
    #[error("no allowed route matches this path")]
    RouteNotFound,
    #[error("this path is allowed only with another method")]
    MethodNotAllowed { allow: Vec<Method> },
    #[error("path parameter '{name}' {reason}")]
    InvalidPathParameter { name: String, reason: &'static str },
    #[error("Zuora-Track-Id must be sent once, at most 64 visible US-ASCII characters, none of : ; \" '")]
    InvalidTrackId,
    #[error("no routing rule matches this request")]
    NoMatchingRule,
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the request body could not be read")]
    BodyRead,
    #[error("the request body did not arrive within the request timeout")]
    BodyTimeout,
    #[error("the request uses a transfer coding other than chunked, which the proxy does not decode")]
    UnsupportedTransferCoding,
    #[error("no valid Zuora access token could be obtained in time")]
    TokenUnavailable,
    #[error("too many requests are in flight to this Zuora tenant; retry later")]
    Overloaded,
    #[error("Zuora asked this tenant's callers to wait; retry after {retry_after_secs} s")]
    CoolingDown { retry_after_secs: u64 },
    #[error("Zuora could not be reached")]
    UpstreamUnreachable,
    #[error("the connection to Zuora failed before it answered")]
    UpstreamFailed,
    #[error("Zuora did not answer in time")]
    UpstreamTimeout,
    #[error("Zuora's answer cannot be passed on: an unsolicited interim answer or a transfer coding the proxy does not decode")]
    UpstreamInvalidResponse,
    #[error("the proxy could not forward this request; see its log")]
    Internal,
}

/// Every code [`ProxyError::code`] can return, for metrics that start at zero.
pub const CODES: [&str; 18] = [
    "ambiguous_framing",
    "invalid_host",
    "route_not_found",
    "method_not_allowed",
    "invalid_path_parameter",
    "invalid_track_id",
    "no_matching_rule",
    "body_too_large",
    "invalid_body",
    "body_timeout",
    "unsupported_transfer_coding",
    "token_unavailable",
    "overloaded",
    "upstream_unreachable",
    "upstream_failed",
    "upstream_timeout",
    "upstream_invalid_response",
    "internal_error",
];

/// Codes of what went wrong after the answer's head was sent (or when nobody was left to
/// answer): they appear in the access line and `proxy_errors_total`, never in a body.
pub const AFTER_HEAD_CODES: [&str; 3] = ["caller_gone", "upstream_body_incomplete", "upstream_body_timeout"];

/// Codes of the requests the HTTP layer refused itself (its own empty 400, 431 or 414), in
/// the access line and `proxy_errors_total`.
pub const HTTP_LAYER_CODES: [&str; 3] = ["malformed_request", "request_head_too_large", "uri_too_long"];

impl ProxyError {
    /// The stable code, also the value of `x-zuora-proxy-error` and a metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::AmbiguousFraming => "ambiguous_framing",
            ProxyError::InvalidHost => "invalid_host",
            ProxyError::RouteNotFound => "route_not_found",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::InvalidPathParameter { .. } => "invalid_path_parameter",
            ProxyError::InvalidTrackId => "invalid_track_id",
            ProxyError::NoMatchingRule => "no_matching_rule",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BodyRead => "invalid_body",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::UnsupportedTransferCoding => "unsupported_transfer_coding",
            ProxyError::TokenUnavailable => "token_unavailable",
            ProxyError::Overloaded | ProxyError::CoolingDown { .. } => "overloaded",
            ProxyError::UpstreamUnreachable => "upstream_unreachable",
            ProxyError::UpstreamFailed => "upstream_failed",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamInvalidResponse => "upstream_invalid_response",
            ProxyError::Internal => "internal_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::RouteNotFound => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::InvalidPathParameter { .. }
            | ProxyError::InvalidTrackId
            | ProxyError::BodyRead
            | ProxyError::AmbiguousFraming
            | ProxyError::InvalidHost => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::NoMatchingRule => StatusCode::FORBIDDEN,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::TokenUnavailable | ProxyError::Overloaded | ProxyError::CoolingDown { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamUnreachable | ProxyError::UpstreamFailed | ProxyError::UpstreamInvalidResponse => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response the caller gets, echoing the request's track id.
    pub fn into_response(self, track_id: &HeaderValue) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "track_id": track_id.to_str().unwrap_or_default(),
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(PROXY_ERROR.clone(), HeaderValue::from_static(self.code()));
        headers.insert(ZUORA_TRACK_ID.clone(), track_id.clone());
        if self == ProxyError::AmbiguousFraming {
            // What follows on this connection cannot be trusted to start a new request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ProxyError::CoolingDown { retry_after_secs } = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if let ProxyError::MethodNotAllowed { allow } = &self {
            let list = allow.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
            headers.insert(header::ALLOW, HeaderValue::try_from(list).expect("methods are tokens"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn every_error_maps_to_its_row() {
        let rows = [
            (ProxyError::AmbiguousFraming, 400, "ambiguous_framing"),
            (ProxyError::InvalidHost, 400, "invalid_host"),
            (ProxyError::RouteNotFound, 404, "route_not_found"),
            (
                ProxyError::MethodNotAllowed {
                    allow: vec![Method::POST],
                },
                405,
                "method_not_allowed",
            ),
            (
                ProxyError::InvalidPathParameter {
                    name: "id".into(),
                    reason: "is not a UUID",
                },
                400,
                "invalid_path_parameter",
            ),
            (ProxyError::InvalidTrackId, 400, "invalid_track_id"),
            (ProxyError::NoMatchingRule, 403, "no_matching_rule"),
            (ProxyError::BodyTooLarge { limit: 10 }, 413, "body_too_large"),
            (ProxyError::BodyRead, 400, "invalid_body"),
            (ProxyError::BodyTimeout, 408, "body_timeout"),
            (
                ProxyError::UnsupportedTransferCoding,
                501,
                "unsupported_transfer_coding",
            ),
            (ProxyError::TokenUnavailable, 503, "token_unavailable"),
            (ProxyError::Overloaded, 503, "overloaded"),
            (ProxyError::CoolingDown { retry_after_secs: 7 }, 503, "overloaded"),
            (ProxyError::UpstreamUnreachable, 502, "upstream_unreachable"),
            (ProxyError::UpstreamFailed, 502, "upstream_failed"),
            (ProxyError::UpstreamTimeout, 504, "upstream_timeout"),
            (ProxyError::UpstreamInvalidResponse, 502, "upstream_invalid_response"),
            (ProxyError::Internal, 500, "internal_error"),
        ];
        let track = HeaderValue::from_static("t-1");
        let mut codes: Vec<&str> = rows.iter().map(|(_, _, code)| *code).collect();
        codes.dedup();
        assert_eq!(codes.len(), CODES.len(), "one row per code (and per variant)");
        for (err, status, code) in rows {
            let cooling = matches!(err, ProxyError::CoolingDown { .. });
            assert!(CODES.contains(&code), "{code} missing from CODES");
            let message = err.to_string();
            let resp = err.into_response(&track);
            assert_eq!(resp.status().as_u16(), status, "{code}");
            assert_eq!(resp.headers()["x-zuora-proxy-error"], code);
            assert_eq!(resp.headers()["zuora-track-id"], "t-1");
            assert_eq!(resp.headers()["content-type"], "application/json");
            assert_eq!(resp.headers().contains_key("allow"), status == 405);
            assert_eq!(resp.headers().get("retry-after").is_some(), cooling, "{code}");
            if cooling {
                assert_eq!(resp.headers()["retry-after"], "7");
            }
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"], code);
            assert_eq!(json["track_id"], "t-1");
            assert_eq!(json["message"], message.as_str());
        }
    }
}
