//! Every refusal falgate makes is one [`GateError`]: one `match` decides its status, one its code,
//! and [`render`] is the only place that writes the contract's JSON error body.
//!
//! `IntoResponse` is pure: it sets status and headers and stores the error in the response
//! extensions; the access log (`layers::access_log`) renders the body with the request id
//! and logs the refusal once. fal's own errors never become a `GateError` and pass through.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

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
    #[error("endpoint `{0}` is not allowed for this caller")]
    EndpointNotAllowed(String),
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
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
    Limited(#[from] crate::limits::LimitError),
    /// A fal webhook delivery refused by the receiver (`webhooks`).
    #[error(transparent)]
    Webhook(crate::webhooks::Refusal),
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

impl GateError {
    /// The HTTP status of this refusal (the contract's table, in one place).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Malformed(_) | Self::BadTarget(_) | Self::InvalidJson(_) => StatusCode::BAD_REQUEST,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthenticated(_) | Self::UnauthenticatedExplained(_) => StatusCode::UNAUTHORIZED,
            Self::EndpointNotAllowed(_) | Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::RouteNotFound | Self::RequestNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge(_) | Self::JsonTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            // Never relayed as 401/403: a browser would take it as its own session failing.
            Self::UpstreamCredentials(_) => StatusCode::BAD_GATEWAY,
            Self::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UpstreamUnreachable(_) | Self::UpstreamBadResponse(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            // 424, not 502/504: `@fal-ai/client` retries those on submit, and a retry of a submit
            // that fal may already have queued would make a second paid job (fal-protocol §4.5).
            Self::SubmitOutcomeUnknown(_) => StatusCode::FAILED_DEPENDENCY,
            Self::DependencyDown(_) | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Limited(limit) => limit.status(),
            Self::Webhook(refusal) => webhook_status(*refusal),
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable snake_case code; also the `code` metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed_request",
            Self::BadTarget(_) => "invalid_target",
            Self::RouteNotFound => "route_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unauthenticated(_) | Self::UnauthenticatedExplained(_) => "unauthenticated",
            Self::EndpointNotAllowed(_) => "endpoint_not_allowed",
            Self::Forbidden { code, .. } => code,
            Self::RequestNotFound => "request_not_found",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::HeadersTooLarge => "headers_too_large",
            Self::UpstreamCredentials(_) => "upstream_credentials_rejected",
            Self::NotJson => "unsupported_media_type",
            Self::InvalidJson(_) => "invalid_json",
            Self::JsonTooLarge(_) => "json_too_large",
            Self::Invalid(_) => "validation_failed",
            Self::UpstreamUnreachable(_) => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamBadResponse(_) => "upstream_bad_response",
            Self::SubmitOutcomeUnknown(_) => "submit_outcome_unknown",
            Self::DependencyDown(_) => "dependency_unavailable",
            Self::Overloaded => "overloaded",
            Self::Limited(limit) => limit.code(),
            Self::Webhook(refusal) => webhook_code(*refusal),
            Self::Internal(_) => "internal",
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
            Self::UpstreamUnreachable(err) => Some(cause_chain(err.as_ref())),
            Self::UpstreamBadResponse(why) | Self::SubmitOutcomeUnknown(why) | Self::Internal(why) => Some(why.clone()),
            // Why the token was refused (expired, wrong audience, …): never the token itself.
            Self::Unauthenticated(err) | Self::UnauthenticatedExplained(err) => Some(err.log_reason().to_owned()),
            _ => None,
        }
    }
}

impl From<crate::webhooks::Refusal> for GateError {
    fn from(refusal: crate::webhooks::Refusal) -> Self {
        use crate::webhooks::Refusal;
        match refusal {
            Refusal::Malformed(header) => Self::Malformed(format!("the {header} header is missing or invalid")),
            Refusal::KeysUnavailable => Self::DependencyDown("fal's webhook signing keys"),
            Refusal::StoreDown => Self::DependencyDown("the shared state store"),
            Refusal::Stale | Refusal::WrongUser | Refusal::BadSignature | Refusal::UnknownRequest => {
                Self::Webhook(refusal)
            }
        }
    }
}

/// The status of a webhook refusal (the ones `From` does not turn into another variant).
fn webhook_status(refusal: crate::webhooks::Refusal) -> StatusCode {
    use crate::webhooks::Refusal;
    match refusal {
        Refusal::Stale | Refusal::BadSignature => StatusCode::UNAUTHORIZED,
        Refusal::WrongUser => StatusCode::FORBIDDEN,
        Refusal::UnknownRequest => StatusCode::NOT_FOUND,
        Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
        Refusal::KeysUnavailable | Refusal::StoreDown => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The code of a webhook refusal.
fn webhook_code(refusal: crate::webhooks::Refusal) -> &'static str {
    use crate::webhooks::Refusal;
    match refusal {
        Refusal::Stale => "webhook_timestamp_out_of_range",
        Refusal::WrongUser => "webhook_user_mismatch",
        Refusal::BadSignature => "webhook_signature_invalid",
        Refusal::UnknownRequest => "webhook_request_unknown",
        Refusal::Malformed(_) => "malformed_request",
        Refusal::KeysUnavailable | Refusal::StoreDown => "dependency_unavailable",
    }
}

/// An error followed by its causes (`source()` after `source()`).
pub(crate) fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |current| current.source())
}

/// The error and its causes on one line (fal's URLs carry no secret; no URL is printed anyway).
fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    causes(err).map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

impl IntoResponse for GateError {
    fn into_response(self) -> Response {
        let mut response = self.status().into_response();
        let headers = response.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.code()));
        if let Self::Unauthenticated(_) | Self::UnauthenticatedExplained(_) = self {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="falgate", error="invalid_token""#),
            );
        }
        if let Self::Limited(limit) = &self {
            for (name, value) in limit.headers() {
                headers.insert(name, value);
            }
        }
        if let Self::Overloaded = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::MethodNotAllowed = self {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, POST, PUT"));
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

    #[test]
    fn internal_causes_never_reach_the_body() {
        let body = render(&GateError::Internal("secret cause".into()), "rid");
        assert!(!body.to_string().contains("secret cause"));
        assert_eq!(body["request_id"], "rid");
    }
}
