//! `POST /api/fal/webhook`: fal's signed delivery of a job's end (`webhooks`). No JWT: fal's
//! signature is the credential. The body is read up to `[webhooks] max_body_bytes` within
//! `request.body_timeout_ms`, then checked and applied by [`crate::webhooks::Webhooks::receive`].
//! A delivery refused as unauthenticated (a body too large, too slow or cut, garbled headers,
//! stale, another fal user, a signature no key of fal verifies) spends its IP's failed-authentication rate, like a bad token
//! (`limits.unauthenticated_ip_rate`); past it the answer is 429. A well-formed delivery is
//! always verified, never refused by the IP's bucket first: behind a proxy falgate does not
//! trust, fal and strangers share one address (issue 20). 404 while `[webhooks] receive` is off.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::GateError;
use crate::state::{Gate, Snapshot};
use crate::telemetry::access_log::CallFacts;
use crate::webhooks::{self, Received};

pub(super) async fn receive(Snapshot(gate): Snapshot, request: axum::extract::Request) -> Response {
    let facts = CallFacts {
        operation: Some(crate::fal::GateRoute::Webhook.facts().name),
        ..CallFacts::default()
    };
    let (parts, body) = request.into_parts();
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned();
    super::answer(handle(&gate, peer, &parts.headers, body).await, facts)
}

async fn handle(
    gate: &Gate,
    peer: Option<ConnectInfo<SocketAddr>>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, GateError> {
    if !gate.webhooks.receiving() {
        return Err(GateError::RouteNotFound);
    }
    // A body too large, too slow or cut is no more authenticated than a bad signature.
    let body = match read(gate, headers, body).await {
        Ok(body) => body,
        Err(refused) => {
            failed_authentication(gate, peer, headers).await?;
            return Err(refused);
        }
    };
    let allowed = |hook: &str| gate.policy.allows_webhook(hook);
    match gate.webhooks.receive(&gate.limiter, &allowed, headers, &body).await {
        Ok(received) => {
            let status = match received {
                Received::Applied => "applied",
                Received::Duplicate => "duplicate",
            };
            Ok(Json(json!({ "status": status })).into_response())
        }
        Err(refusal) => {
            if webhooks::is_failed_authentication(refusal) {
                failed_authentication(gate, peer, headers).await?;
            }
            Err(refusal.into())
        }
    }
}

/// Spends the sender IP's failed-authentication rate; past it, the 429 to answer instead.
async fn failed_authentication(
    gate: &Gate,
    peer: Option<ConnectInfo<SocketAddr>>,
    headers: &HeaderMap,
) -> Result<(), GateError> {
    if let Some(ConnectInfo(peer)) = peer {
        let ip = crate::limits::client_ip(peer, headers, gate.limiter.trusted_proxies());
        gate.limiter.admit_unauthenticated(ip).await?;
    }
    Ok(())
}

/// The delivery's body, at most `max_body_bytes` (a larger declared length is refused unread).
async fn read(gate: &Gate, headers: &HeaderMap, body: Body) -> Result<Bytes, GateError> {
    let max = gate.webhooks.max_body_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max as u64) {
        return Err(GateError::BodyTooLarge(max));
    }
    match tokio::time::timeout(gate.config.body_timeout, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) if crate::upstream::causes(&err).any(|cause| cause.is::<http_body_util::LengthLimitError>()) => {
            Err(GateError::BodyTooLarge(max))
        }
        Ok(Err(_)) => Err(GateError::Malformed("the webhook's body did not arrive whole".into())),
        Err(_) => Err(GateError::BodyTimeout),
    }
}
