//! One OAuth 2.0 client-credentials exchange with Zuora, driven by the `oauth2` crate over
//! the tenant's shared hyper client. Credentials go in the form body, never in a header.

use crate::body::UpstreamBody;
use crate::config::TenantSettings;
use crate::metrics::FetchResult;
use crate::secret::{Secret, SecretError};
use crate::upstream::UpstreamClient;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Either, Full, Limited};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{AccessToken, AuthType, ClientId, ClientSecret, StandardRevocableToken, TokenUrl};
use serde::{Deserialize, Deserializer, Serialize};
use std::time::Duration;

/// Lifetime assumed when Zuora's answer has no `expires_in`.
pub const DEFAULT_LIFETIME_SECS: u64 = 3600;
/// The whole token call (connect, TLS, answer) must finish within this.
pub const FETCH_TIMEOUT_SECS: u64 = 15;
/// Shortest lifetime accepted: anything shorter cannot be refreshed before it expires.
pub const MIN_LIFETIME_SECS: u64 = 1;
/// Longest lifetime accepted (Zuora's are one hour); a larger value is a broken answer.
pub const MAX_LIFETIME_SECS: u64 = 30 * 24 * 3600;
/// A token response larger than this is not a token response.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// A token as Zuora issued it.
#[derive(Debug)]
pub struct Fetched {
    pub access_token: Secret,
    pub lifetime: Duration,
}

/// Why a fetch failed. Messages never include a response body, which could hold a token.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("token endpoint answered {status}")]
    Status {
        status: StatusCode,
        /// From `Retry-After` or `RateLimit-Reset`, when Zuora sent one.
        retry_after: Option<Duration>,
    },
    #[error("token endpoint unreachable: {0}")]
    Transport(String),
    #[error("token endpoint did not answer within {FETCH_TIMEOUT_SECS}s")]
    Timeout,
    #[error("token endpoint answer is not a usable token: {0}")]
    Invalid(String),
}

impl FetchError {
    /// The `result` label of the failed fetch.
    pub fn kind(&self) -> FetchResult {
        match self {
            FetchError::Secret(_) => FetchResult::Secret,
            FetchError::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => FetchResult::RateLimited,
            FetchError::Status { status, .. } if status.is_client_error() => FetchResult::Rejected,
            FetchError::Status { .. } => FetchResult::ServerError,
            FetchError::Transport(_) => FetchResult::Unreachable,
            FetchError::Timeout => FetchResult::Timeout,
            FetchError::Invalid(_) => FetchResult::Invalid,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Zuora's token answer. `expires_in` may be an integer, a float or missing.
#[derive(Debug, Deserialize, Serialize)]
struct ZuoraTokenResponse {
    access_token: AccessToken,
    #[serde(default = "bearer", deserialize_with = "token_type")]
    token_type: BasicTokenType,
    #[serde(default, deserialize_with = "lifetime")]
    expires_in: Option<f64>,
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

fn token_type<'de, D: Deserializer<'de>>(d: D) -> Result<BasicTokenType, D::Error> {
    let s = String::deserialize(d)?;
    Ok(if s.eq_ignore_ascii_case("bearer") {
        BasicTokenType::Bearer
    } else {
        BasicTokenType::Extension(s)
    })
}

fn lifetime<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Float(f64),
        Text(String),
    }
    Ok(match Option::<Number>::deserialize(d)? {
        None => None,
        Some(Number::Float(f)) => Some(f),
        Some(Number::Text(s)) => Some(s.trim().parse().map_err(serde::de::Error::custom)?),
    })
}

impl oauth2::TokenResponse for ZuoraTokenResponse {
    type TokenType = BasicTokenType;
    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.and_then(|s| Duration::try_from_secs_f64(s).ok())
    }
    fn refresh_token(&self) -> Option<&oauth2::RefreshToken> {
        None
    }
    fn scopes(&self) -> Option<&Vec<oauth2::Scope>> {
        None
    }
}

type ZuoraOAuthClient = oauth2::Client<
    BasicErrorResponse,
    ZuoraTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

/// Transport-level failure of the token call, as the `oauth2` crate sees it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HttpFailure(FetchError);

/// Asks Zuora for a new token. The secret is read now, so a rotated secret file is used at once.
pub async fn fetch(client: &UpstreamClient, tenant: &TenantSettings) -> Result<Fetched, FetchError> {
    let secret = tenant.client_secret.read().await?;
    let token_url = TokenUrl::from_url(tenant.token_url.clone());
    let oauth: ZuoraOAuthClient = oauth2::Client::new(ClientId::new(tenant.client_id.clone()))
        .set_client_secret(ClientSecret::new(secret.expose().to_string()))
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(token_url);
    // The closure owns a client handle so its futures borrow nothing (the fetch runs in a task).
    let client = client.clone();
    let http = move |request: oauth2::HttpRequest| {
        let client = client.clone();
        async move { send(&client, request).await }
    };
    let call = oauth.exchange_client_credentials().request_async(&http);
    let response = match tokio::time::timeout(Duration::from_secs(FETCH_TIMEOUT_SECS), call).await {
        Err(_) => return Err(FetchError::Timeout),
        Ok(Err(oauth2::RequestTokenError::Request(HttpFailure(e)))) => return Err(e),
        Ok(Err(oauth2::RequestTokenError::Parse(e, _body))) => return Err(FetchError::Invalid(e.to_string())),
        Ok(Err(e)) => return Err(FetchError::Invalid(e.to_string())),
        Ok(Ok(response)) => response,
    };
    if response.token_type != BasicTokenType::Bearer {
        return Err(FetchError::Invalid(format!(
            "token_type {:?} is not bearer",
            response.token_type.as_ref()
        )));
    }
    let lifetime = match response.expires_in {
        None => Duration::from_secs(DEFAULT_LIFETIME_SECS),
        Some(_) => oauth2::TokenResponse::expires_in(&response)
            .filter(|d| (MIN_LIFETIME_SECS..=MAX_LIFETIME_SECS).contains(&d.as_secs()))
            .ok_or_else(|| {
                FetchError::Invalid(format!(
                    "expires_in is not between {MIN_LIFETIME_SECS} and {MAX_LIFETIME_SECS} seconds"
                ))
            })?,
    };
    if !fits_a_header(response.access_token.secret()) {
        return Err(FetchError::Invalid("access_token is empty or not visible ASCII".into()));
    }
    Ok(Fetched {
        access_token: Secret::new(response.access_token.into_secret()),
        lifetime,
    })
}

/// The token goes into `Authorization`: anything but visible ASCII is a broken token.
fn fits_a_header(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())
}

/// The HTTP leg under `oauth2`: any answer but 200 is a failure carrying Zuora's retry hint.
async fn send(client: &UpstreamClient, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpFailure> {
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(parts, Either::Left(Full::new(Bytes::from(body))) as UpstreamBody);
    let response = client
        .request(request)
        .await
        .map_err(|e| HttpFailure(FetchError::Transport(crate::upstream::describe_client_error(&e))))?;
    let (parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        return Err(HttpFailure(FetchError::Status {
            status: parts.status,
            retry_after: crate::backoff::server_hint(parts.status, &parts.headers, std::time::SystemTime::now()),
        }));
    }
    let body = Limited::new(body, MAX_TOKEN_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| HttpFailure(FetchError::Transport(format!("reading the answer failed: {e}"))))?
        .to_bytes();
    Ok(http::Response::from_parts(parts, body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> ZuoraTokenResponse {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn expires_in_as_integer_float_text_or_missing() {
        use oauth2::TokenResponse;
        assert_eq!(
            parse(r#"{"access_token":"a","token_type":"bearer","expires_in":3599}"#).expires_in(),
            Some(Duration::from_secs(3599))
        );
        assert_eq!(
            parse(r#"{"access_token":"a","token_type":"bearer","expires_in":3599.5}"#).expires_in(),
            Some(Duration::from_millis(3_599_500))
        );
        assert_eq!(
            parse(r#"{"access_token":"a","token_type":"bearer","expires_in":"60"}"#).expires_in(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse(r#"{"access_token":"a","token_type":"bearer"}"#).expires_in(),
            None
        );
        assert_eq!(
            parse(r#"{"access_token":"a","token_type":"Bearer","scope":"user.1 tenant.2","jti":"x"}"#).token_type,
            BasicTokenType::Bearer
        );
        assert!(serde_json::from_str::<ZuoraTokenResponse>(r#"{"token_type":"bearer"}"#).is_err());
    }

    #[test]
    fn tokens_must_fit_a_header() {
        assert!(fits_a_header("eyJhbGciOi.abc_DEF-123~+/="));
        for bad in ["", "a b", "a\u{1}b", "caf\u{e9}", "a\nb"] {
            assert!(!fits_a_header(bad), "{bad:?}");
        }
    }

    #[test]
    fn response_debug_hides_the_token() {
        let r = parse(r#"{"access_token":"very-secret-token","token_type":"bearer"}"#);
        assert!(!format!("{r:?}").contains("very-secret-token"));
    }
}
