//! Every refusal falgate makes is one [`GateError`], and this is the edge where refusals become
//! HTTP: one table (`GateError::refusal`, one `match` without a wildcard arm, an arm per
//! refusal of every domain) gives each its status, code and headers, and [`render`] is the only
//! place that writes the contract's JSON error body. The domains' errors ([`PolicyError`],
//! [`LimitError`], `auth::AuthError`, `schema::Rejection`, `input::BodyError`,
//! `ownership::OwnershipError`, `events::EventsError`, `upstream::UpstreamError`,
//! `webhooks::Refusal`) know nothing of HTTP, and none of them uses this module: it sits above
//! the domains (ARCHITECTURE.md, "Dependency direction"; `tests_layering::no_domain_uses_error`).
//!
//! `IntoResponse` is pure: it sets status and headers and stores the error in the response
//! extensions; the access log (`layers::access_log`) renders the body with the request id
//! and logs the refusal once. fal's own errors never become a `GateError` and pass through.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::limits::{ratelimit_headers, retry_after, LimitError, PolicyState};
use crate::policy::PolicyError;
use crate::webhooks::Refusal as WebhookRefusal;

/// The response header that marks a refusal as falgate's own, not fal's.
pub const ERROR_HEADER: &str = "x-falgate-error";

/// A refusal or failure made by falgate itself.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{0}")]
    Malformed(String),
    #[error("the target URL is not an allowed fal URL: {0}")]
    BadTarget(#[from] crate::fal::TargetError),
    #[error("no route matches this path")]
    RouteNotFound,
    #[error("this method is not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    Unauthenticated(crate::auth::AuthError),
    /// The same refusal, its message saying why the token was refused (`falgate dev` only).
    #[error("{}", .0.explained())]
    UnauthenticatedExplained(crate::auth::AuthError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("no request with this id exists for this caller")]
    RequestNotFound,
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("the request headers are too large")]
    HeadersTooLarge,
    #[error("fal refused the gateway's credentials; the operator has been alerted")]
    UpstreamCredentials(u16),
    #[error("the request body must be JSON (content-type application/json)")]
    NotJson,
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the request body is too complex: {0}")]
    JsonTooLarge(String),
    #[error("the input does not match the endpoint's schema")]
    Invalid(Vec<crate::schema::FieldError>),
    #[error("fal could not be reached")]
    UpstreamUnreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("fal did not answer in time")]
    UpstreamTimeout,
    #[error("fal answered with something that is not a valid response")]
    UpstreamBadResponse(String),
    #[error("fal did not confirm the submission; it may have been queued, so check before submitting again")]
    SubmitOutcomeUnknown(String),
    #[error("{0} is unavailable; try again shortly")]
    DependencyDown(&'static str),
    #[error("falgate is holding as many request bodies as its memory allows; try again shortly")]
    Overloaded,
    #[error(transparent)]
    Limited(#[from] LimitError),
    /// A fal webhook delivery refused by the receiver (`webhooks`).
    #[error(transparent)]
    Webhook(WebhookRefusal),
    #[error("an internal error occurred")]
    Internal(String),
}

impl From<crate::auth::AuthError> for GateError {
    fn from(err: crate::auth::AuthError) -> Self {
        match err {
            crate::auth::AuthError::KeysUnavailable => Self::DependencyDown("the identity provider's signing keys"),
            other => Self::Unauthenticated(other),
        }
    }
}

/// What a refusal is on the wire: its status, its code (also the `x-falgate-error` header and
/// the `code` metric label) and the headers it carries besides that one.
struct Refusal<'a> {
    status: StatusCode,
    code: &'static str,
    headers: Extra<'a>,
}

/// The headers a refusal carries besides `x-falgate-error`.
enum Extra<'a> {
    None,
    /// `WWW-Authenticate: Bearer realm="falgate", error="invalid_token"`.
    Challenge,
    /// `Allow`: the methods falgate's routes take.
    Allow,
    /// `Retry-After` in whole seconds, at least one.
    RetryAfter(Duration),
    /// `Retry-After`, and the `RateLimit-Policy` / `RateLimit` of the limit that refused.
    Limit {
        wait: Duration,
        policy: &'a [PolicyState],
    },
}

const fn refusal<'a>(status: StatusCode, code: &'static str, headers: Extra<'a>) -> Refusal<'a> {
    Refusal { status, code, headers }
}

impl GateError {
    /// The refusal table (CONTRACT.md, "Errors made by falgate itself"; ARCHITECTURE.md, "Errors
    /// made by falgate"): every refusal of every domain, its status, code and headers. No
    /// wildcard arm: a new refusal does not compile until it is given its answer here.
    fn refusal(&self) -> Refusal<'_> {
        use Extra::{Allow, Challenge, Limit, RetryAfter};
        use StatusCode as S;
        let none = Extra::None;
        let second = Duration::from_secs(1);
        match self {
            Self::Malformed(_) => refusal(S::BAD_REQUEST, "malformed_request", none),
            Self::BadTarget(_) => refusal(S::BAD_REQUEST, "invalid_target", none),
            Self::InvalidJson(_) => refusal(S::BAD_REQUEST, "invalid_json", none),
            Self::Unauthenticated(_) | Self::UnauthenticatedExplained(_) => {
                refusal(S::UNAUTHORIZED, "unauthenticated", Challenge)
            }
            Self::Policy(
                PolicyError::EndpointNotAllowed(_)
                | PolicyError::OperationNotAllowed(_)
                | PolicyError::TokenAppNotAllowed(_),
            ) => refusal(S::FORBIDDEN, "endpoint_not_allowed", none),
            Self::Policy(PolicyError::TierNotAllowed) => refusal(S::FORBIDDEN, "tier_not_allowed", none),
            Self::Policy(PolicyError::SyncRunNotAllowed) => refusal(S::FORBIDDEN, "sync_run_not_allowed", none),
            Self::Policy(PolicyError::UploadsNotAllowed) => refusal(S::FORBIDDEN, "uploads_not_allowed", none),
            Self::Policy(PolicyError::WebhookNotAllowed) => refusal(S::FORBIDDEN, "webhook_not_allowed", none),
            Self::Policy(PolicyError::OptionNotAllowed { .. }) => refusal(S::FORBIDDEN, "option_not_allowed", none),
            Self::RouteNotFound => refusal(S::NOT_FOUND, "route_not_found", none),
            Self::RequestNotFound => refusal(S::NOT_FOUND, "request_not_found", none),
            Self::MethodNotAllowed => refusal(S::METHOD_NOT_ALLOWED, "method_not_allowed", Allow),
            Self::BodyTimeout => refusal(S::REQUEST_TIMEOUT, "body_timeout", none),
            Self::BodyTooLarge(_) => refusal(S::PAYLOAD_TOO_LARGE, "body_too_large", none),
            Self::JsonTooLarge(_) => refusal(S::PAYLOAD_TOO_LARGE, "json_too_large", none),
            Self::NotJson => refusal(S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", none),
            Self::Invalid(_) => refusal(S::UNPROCESSABLE_ENTITY, "validation_failed", none),
            Self::HeadersTooLarge => refusal(S::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", none),
            // Never relayed as 401/403: a browser would take it as its own session failing.
            Self::UpstreamCredentials(_) => refusal(S::BAD_GATEWAY, "upstream_credentials_rejected", none),
            Self::UpstreamUnreachable(_) => refusal(S::BAD_GATEWAY, "upstream_unreachable", none),
            Self::UpstreamBadResponse(_) => refusal(S::BAD_GATEWAY, "upstream_bad_response", none),
            Self::UpstreamTimeout => refusal(S::GATEWAY_TIMEOUT, "upstream_timeout", none),
            // 424, not 502/504: `@fal-ai/client` retries those on submit (`libs/client/src/retry.ts`
            // in `fal-ai/fal-js`), and a retry of a submit that fal may already have queued would
            // make a second paid job.
            Self::SubmitOutcomeUnknown(_) => refusal(S::FAILED_DEPENDENCY, "submit_outcome_unknown", none),
            Self::DependencyDown(_) => refusal(S::SERVICE_UNAVAILABLE, "dependency_unavailable", none),
            Self::Overloaded => refusal(S::SERVICE_UNAVAILABLE, "overloaded", RetryAfter(second)),
            // The limits step: 429 for rates and concurrency, 403 for a used-up quota (not
            // retried by the fal clients), 503 for a down store, 422 / 409 for idempotency.
            // `Retry-After` is advisory (`@fal-ai/client` retries 429 up to three times and never
            // reads it, `libs/client/src/retry.ts`), so a refusal must be cheap and consume nothing.
            Self::Limited(LimitError::RateLimited { retry_after, policy }) => refusal(
                S::TOO_MANY_REQUESTS,
                "rate_limited",
                Limit {
                    wait: *retry_after,
                    policy: std::slice::from_ref(policy),
                },
            ),
            Self::Limited(LimitError::ConcurrencyLimited { retry_after, policy }) => refusal(
                S::TOO_MANY_REQUESTS,
                "concurrency_limited",
                Limit {
                    wait: *retry_after,
                    policy: std::slice::from_ref(policy),
                },
            ),
            Self::Limited(LimitError::SlotsTaken {
                retry_after, policy, ..
            }) => refusal(
                S::TOO_MANY_REQUESTS,
                "concurrency_limited",
                Limit {
                    wait: *retry_after,
                    policy: policy.as_slice(),
                },
            ),
            Self::Limited(LimitError::QuotaExceeded { reset_after, policy }) => refusal(
                S::FORBIDDEN,
                "quota_exceeded",
                Limit {
                    wait: *reset_after,
                    policy: std::slice::from_ref(policy),
                },
            ),
            Self::Limited(LimitError::StoreDown) => {
                refusal(S::SERVICE_UNAVAILABLE, "dependency_unavailable", RetryAfter(second))
            }
            Self::Limited(LimitError::IdempotencyKeyReused) => {
                refusal(S::UNPROCESSABLE_ENTITY, "idempotency_key_reused", none)
            }
            Self::Limited(LimitError::IdempotencyInFlight) => {
                refusal(S::CONFLICT, "idempotency_in_flight", RetryAfter(second))
            }
            Self::Webhook(WebhookRefusal::Stale) => refusal(S::UNAUTHORIZED, "webhook_timestamp_out_of_range", none),
            Self::Webhook(WebhookRefusal::BadSignature) => refusal(S::UNAUTHORIZED, "webhook_signature_invalid", none),
            Self::Webhook(WebhookRefusal::WrongUser) => refusal(S::FORBIDDEN, "webhook_user_mismatch", none),
            Self::Webhook(WebhookRefusal::UnknownRequest) => refusal(S::NOT_FOUND, "webhook_request_unknown", none),
            // `From` makes these the generic refusals; answered alike if ever built directly.
            Self::Webhook(WebhookRefusal::Malformed(_)) => refusal(S::BAD_REQUEST, "malformed_request", none),
            Self::Webhook(WebhookRefusal::KeysUnavailable | WebhookRefusal::StoreDown) => {
                refusal(S::SERVICE_UNAVAILABLE, "dependency_unavailable", none)
            }
            Self::Internal(_) => refusal(S::INTERNAL_SERVER_ERROR, "internal", none),
        }
    }

    /// The HTTP status of this refusal (from `Self::refusal`).
    pub fn status(&self) -> StatusCode {
        self.refusal().status
    }

    /// The stable snake_case code; also the `code` metric label (from `Self::refusal`).
    pub fn code(&self) -> &'static str {
        self.refusal().code
    }

    /// The headers this refusal carries besides `x-falgate-error` (from `Self::refusal`).
    pub fn headers(&self) -> Vec<(header::HeaderName, HeaderValue)> {
        match self.refusal().headers {
            Extra::None => Vec::new(),
            Extra::Challenge => vec![(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="falgate", error="invalid_token""#),
            )],
            Extra::Allow => vec![(header::ALLOW, HeaderValue::from_static("GET, POST, PUT"))],
            Extra::RetryAfter(wait) => vec![retry_after(wait)],
            Extra::Limit { wait, policy } => {
                let mut headers = vec![retry_after(wait)];
                headers.extend(ratelimit_headers(policy));
                headers
            }
        }
    }

    /// The one sentence a client sees. Internal causes stay in the log, never in the body.
    pub fn message(&self) -> String {
        match self {
            Self::Internal(_) => "an internal error occurred".to_owned(),
            Self::UpstreamBadResponse(_) => "fal answered with something that is not a valid response".to_owned(),
            Self::SubmitOutcomeUnknown(_) => {
                "fal did not confirm the submission; it may have been queued, so check before submitting again"
                    .to_owned()
            }
            other => other.to_string(),
        }
    }

    /// The detail kept for the log line (never sent to the client).
    pub fn log_detail(&self) -> Option<String> {
        match self {
            Self::UpstreamCredentials(status) => Some(format!(
                "fal answered {status}: FAL_KEY is missing, revoked or lacks access"
            )),
            Self::UpstreamUnreachable(err) => Some(crate::upstream::cause_chain(err.as_ref())),
            Self::UpstreamBadResponse(why) | Self::SubmitOutcomeUnknown(why) | Self::Internal(why) => Some(why.clone()),
            // Why the token was refused (expired, wrong audience, …): never the token itself.
            Self::Unauthenticated(err) | Self::UnauthenticatedExplained(err) => Some(err.log_reason().to_owned()),
            _ => None,
        }
    }
}

impl IntoResponse for GateError {
    fn into_response(self) -> Response {
        let refusal = self.refusal();
        let mut response = refusal.status.into_response();
        let headers = response.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(refusal.code));
        for (name, value) in self.headers() {
            headers.insert(name, value);
        }
        response.extensions_mut().insert(Arc::new(self));
        response
    }
}

/// Writes the contract's JSON error body for `error`, stamped with falgate's request id.
pub fn render(error: &GateError, request_id: &str) -> serde_json::Value {
    let mut body = json!({ "code": error.code(), "message": error.message(), "request_id": request_id });
    // fal's own 422 shape, so `@fal-ai/client` raises a ValidationError with field errors.
    if let GateError::Invalid(detail) = error {
        body["detail"] = json!(detail);
    }
    body
}

impl From<crate::input::BodyError> for GateError {
    fn from(err: crate::input::BodyError) -> Self {
        use crate::input::BodyError;
        match err {
            BodyError::NotJson => Self::NotJson,
            BodyError::TooLarge(limit) => Self::BodyTooLarge(limit),
            BodyError::Busy { message, retry_after } => crate::limits::LimitError::SlotsTaken {
                message,
                retry_after,
                policy: None,
            }
            .into(),
            BodyError::Timeout => Self::BodyTimeout,
            BodyError::Unreadable => Self::Malformed("the request body could not be read".into()),
            BodyError::Overloaded => Self::Overloaded,
        }
    }
}

impl From<crate::ownership::OwnershipError> for GateError {
    fn from(err: crate::ownership::OwnershipError) -> Self {
        use crate::ownership::OwnershipError;
        match err {
            OwnershipError::NotFound => Self::RequestNotFound,
            OwnershipError::StoreDown => Self::DependencyDown("the shared state store"),
        }
    }
}

impl From<crate::events::EventsError> for GateError {
    fn from(err: crate::events::EventsError) -> Self {
        match err {
            crate::events::EventsError::StoreDown => Self::DependencyDown("the shared state store"),
        }
    }
}

impl From<crate::upstream::UpstreamError> for GateError {
    fn from(err: crate::upstream::UpstreamError) -> Self {
        use crate::upstream::UpstreamError;
        match err {
            UpstreamError::Timeout => Self::UpstreamTimeout,
            UpstreamError::Unreachable(source) => Self::UpstreamUnreachable(source),
            UpstreamError::BadResponse(detail) => Self::UpstreamBadResponse(detail),
            UpstreamError::Credentials(status) => Self::UpstreamCredentials(status),
            UpstreamError::OutcomeUnknown(detail) => Self::SubmitOutcomeUnknown(detail),
            UpstreamError::MalformedHeader(message) => Self::Malformed(message),
            UpstreamError::Internal(detail) => Self::Internal(detail),
        }
    }
}

impl From<WebhookRefusal> for GateError {
    fn from(refusal: WebhookRefusal) -> Self {
        match refusal {
            WebhookRefusal::Malformed(header) => Self::Malformed(format!("the {header} header is missing or invalid")),
            WebhookRefusal::KeysUnavailable => Self::DependencyDown("fal's webhook signing keys"),
            WebhookRefusal::StoreDown => Self::DependencyDown("the shared state store"),
            WebhookRefusal::Stale
            | WebhookRefusal::WrongUser
            | WebhookRefusal::BadSignature
            | WebhookRefusal::UnknownRequest => Self::Webhook(refusal),
        }
    }
}

impl From<crate::schema::Rejection> for GateError {
    fn from(rejection: crate::schema::Rejection) -> Self {
        use crate::schema::Rejection;
        match rejection {
            Rejection::Malformed(why) => Self::InvalidJson(why),
            Rejection::TooLarge(limit) => Self::BodyTooLarge(limit),
            Rejection::TooComplex(why) => Self::JsonTooLarge(why),
            Rejection::NoSchema(endpoint) => Self::Internal(format!("endpoint {endpoint} has no compiled schema")),
            Rejection::Invalid(detail) => Self::Invalid(detail),
        }
    }
}

/// A domain's refusal as the edge answers it, for the domains' own tests (`refused.code()`):
/// through the one table, never a second mapping.
#[cfg(test)]
pub(crate) trait OnTheWire {
    fn status(&self) -> StatusCode;
    fn code(&self) -> &'static str;
    fn headers(&self) -> Vec<(header::HeaderName, HeaderValue)>;
    fn message(&self) -> String;
}

#[cfg(test)]
impl<T: Clone + Into<GateError>> OnTheWire for T {
    fn status(&self) -> StatusCode {
        self.clone().into().status()
    }

    fn code(&self) -> &'static str {
        self.clone().into().code()
    }

    fn headers(&self) -> Vec<(header::HeaderName, HeaderValue)> {
        self.clone().into().headers()
    }

    fn message(&self) -> String {
        self.clone().into().message()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_with_unknown_outcome_is_not_a_status_the_fal_client_retries() {
        let status = GateError::SubmitOutcomeUnknown("reset".into()).status();
        assert!(![429, 502, 503, 504].contains(&status.as_u16()), "{status}");
    }

    #[test]
    fn unauthenticated_carries_www_authenticate_and_error_header() {
        let response = GateError::Unauthenticated(crate::auth::AuthError::Missing).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        assert_eq!(response.headers()[ERROR_HEADER], "unauthenticated");
    }

    /// The refusal table, row by row, as ARCHITECTURE.md ("Errors made by falgate") states it.
    #[test]
    fn every_refusal_answers_the_status_code_and_headers_of_the_contract() {
        use crate::limits::{LimitError, PolicyState};
        let state = PolicyState {
            name: "submit",
            quota: 10,
            window_seconds: Some(60),
            remaining: 0,
            reset_seconds: 3,
        };
        let wait = Duration::from_millis(2500);
        /// A refusal, its status, its code, and its other headers (name, value) in order.
        type Row = (GateError, u16, &'static str, &'static [(&'static str, &'static str)]);
        let rows: Vec<Row> = vec![
            (GateError::Malformed("m".into()), 400, "malformed_request", &[]),
            (
                GateError::BadTarget(crate::fal::parse_target("nope").unwrap_err()),
                400,
                "invalid_target",
                &[],
            ),
            (GateError::InvalidJson("j".into()), 400, "invalid_json", &[]),
            (
                GateError::Unauthenticated(crate::auth::AuthError::Missing),
                401,
                "unauthenticated",
                &[("www-authenticate", r#"Bearer realm="falgate", error="invalid_token""#)],
            ),
            (
                GateError::UnauthenticatedExplained(crate::auth::AuthError::Missing),
                401,
                "unauthenticated",
                &[("www-authenticate", r#"Bearer realm="falgate", error="invalid_token""#)],
            ),
            (
                PolicyError::EndpointNotAllowed("a/b".into()).into(),
                403,
                "endpoint_not_allowed",
                &[],
            ),
            (
                PolicyError::OperationNotAllowed("submit").into(),
                403,
                "endpoint_not_allowed",
                &[],
            ),
            (
                PolicyError::TokenAppNotAllowed("b".into()).into(),
                403,
                "endpoint_not_allowed",
                &[],
            ),
            (PolicyError::TierNotAllowed.into(), 403, "tier_not_allowed", &[]),
            (PolicyError::SyncRunNotAllowed.into(), 403, "sync_run_not_allowed", &[]),
            (PolicyError::UploadsNotAllowed.into(), 403, "uploads_not_allowed", &[]),
            (PolicyError::WebhookNotAllowed.into(), 403, "webhook_not_allowed", &[]),
            (
                PolicyError::OptionNotAllowed {
                    field: "f".into(),
                    allowed: "1".into(),
                }
                .into(),
                403,
                "option_not_allowed",
                &[],
            ),
            (GateError::RouteNotFound, 404, "route_not_found", &[]),
            (
                WebhookRefusal::BadSignature.into(),
                401,
                "webhook_signature_invalid",
                &[],
            ),
            (WebhookRefusal::Stale.into(), 401, "webhook_timestamp_out_of_range", &[]),
            (WebhookRefusal::WrongUser.into(), 403, "webhook_user_mismatch", &[]),
            (
                WebhookRefusal::UnknownRequest.into(),
                404,
                "webhook_request_unknown",
                &[],
            ),
            (
                WebhookRefusal::Malformed("x-fal-webhook-user-id").into(),
                400,
                "malformed_request",
                &[],
            ),
            (
                WebhookRefusal::KeysUnavailable.into(),
                503,
                "dependency_unavailable",
                &[],
            ),
            (WebhookRefusal::StoreDown.into(), 503, "dependency_unavailable", &[]),
            (GateError::RequestNotFound, 404, "request_not_found", &[]),
            (
                GateError::MethodNotAllowed,
                405,
                "method_not_allowed",
                &[("allow", "GET, POST, PUT")],
            ),
            (GateError::BodyTimeout, 408, "body_timeout", &[]),
            (GateError::BodyTooLarge(1), 413, "body_too_large", &[]),
            (GateError::JsonTooLarge("j".into()), 413, "json_too_large", &[]),
            (GateError::NotJson, 415, "unsupported_media_type", &[]),
            (GateError::Invalid(Vec::new()), 422, "validation_failed", &[]),
            (GateError::HeadersTooLarge, 431, "headers_too_large", &[]),
            (
                GateError::UpstreamCredentials(401),
                502,
                "upstream_credentials_rejected",
                &[],
            ),
            (
                GateError::UpstreamUnreachable(Box::new(std::io::Error::other("x"))),
                502,
                "upstream_unreachable",
                &[],
            ),
            (
                GateError::UpstreamBadResponse("b".into()),
                502,
                "upstream_bad_response",
                &[],
            ),
            (GateError::UpstreamTimeout, 504, "upstream_timeout", &[]),
            (
                GateError::SubmitOutcomeUnknown("s".into()),
                424,
                "submit_outcome_unknown",
                &[],
            ),
            (GateError::DependencyDown("Redis"), 503, "dependency_unavailable", &[]),
            (GateError::Overloaded, 503, "overloaded", &[("retry-after", "1")]),
            (
                LimitError::RateLimited {
                    retry_after: wait,
                    policy: state.clone(),
                }
                .into(),
                429,
                "rate_limited",
                &[
                    ("retry-after", "3"),
                    ("ratelimit-policy", r#""submit";q=10;w=60"#),
                    ("ratelimit", r#""submit";r=0;t=3"#),
                ],
            ),
            (
                LimitError::ConcurrencyLimited {
                    retry_after: wait,
                    policy: state.clone(),
                }
                .into(),
                429,
                "concurrency_limited",
                &[
                    ("retry-after", "3"),
                    ("ratelimit-policy", r#""submit";q=10;w=60"#),
                    ("ratelimit", r#""submit";r=0;t=3"#),
                ],
            ),
            (
                LimitError::SlotsTaken {
                    message: "full".into(),
                    retry_after: Duration::from_secs(1),
                    policy: None,
                }
                .into(),
                429,
                "concurrency_limited",
                &[("retry-after", "1")],
            ),
            (
                LimitError::QuotaExceeded {
                    reset_after: Duration::from_secs(40),
                    policy: state.clone(),
                }
                .into(),
                403,
                "quota_exceeded",
                &[
                    ("retry-after", "40"),
                    ("ratelimit-policy", r#""submit";q=10;w=60"#),
                    ("ratelimit", r#""submit";r=0;t=3"#),
                ],
            ),
            (
                LimitError::StoreDown.into(),
                503,
                "dependency_unavailable",
                &[("retry-after", "1")],
            ),
            (
                LimitError::IdempotencyKeyReused.into(),
                422,
                "idempotency_key_reused",
                &[],
            ),
            (
                LimitError::IdempotencyInFlight.into(),
                409,
                "idempotency_in_flight",
                &[("retry-after", "1")],
            ),
            (GateError::Internal("i".into()), 500, "internal", &[]),
        ];
        for (error, status, code, headers) in rows {
            let seen = format!("{error:?}");
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status, "{seen}");
            let mut expected = vec![(ERROR_HEADER, code)];
            expected.extend(headers.iter().copied());
            let answered: Vec<(&str, &str)> = response
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
                .collect();
            assert_eq!(answered, expected, "{seen}");
        }
    }

    #[test]
    fn internal_causes_never_reach_the_body() {
        let body = render(&GateError::Internal("secret cause".into()), "rid");
        assert!(!body.to_string().contains("secret cause"));
        assert_eq!(body["request_id"], "rid");
    }
}
