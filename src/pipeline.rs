//! The ordered steps every call goes through, whichever route family it came from:
//! authorize → read and validate input → check ownership → forward → record ownership → relay.
//! Authentication happened before: `handle` takes a [`Caller`], so nothing reaches fal without one.
//! Each step returns a proof value or a [`GateError`]; none writes a response.

use std::time::Instant;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;

use crate::app::Gate;
use crate::auth::Caller;
use crate::error::GateError;
use crate::fal::{Call, Op};
use crate::input;
use crate::policy::Grant;
use crate::schema::{self, Limits, ValidInput};
use crate::telemetry::metrics;
use crate::upstream::{self, relay};

/// Runs one call for `caller` and returns the response to relay.
pub async fn handle(
    gate: &Gate,
    caller: Caller,
    call: Call,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, GateError> {
    let grant = gate.policy.authorize(&caller, &call)?;
    let mut forwarded = upstream::forwarded_headers(headers)?;
    grant.cap_priority(&mut forwarded);
    let input = match call.has_body() {
        true => Some(read_input(gate, &caller, &grant, headers, body).await?),
        false => None,
    };
    if let Some(input) = &input {
        grant.check_options(&input.value)?;
    }
    if let (Some(app), Some(id)) = (call.app(), call.request_id()) {
        gate.ownership.check(&caller, &app, id)?;
    }
    let started = Instant::now();
    let sent = gate
        .upstream
        .send(&call, forwarded, input.map(|input| input.bytes))
        .await;
    metrics::upstream_answered(call.op_name(), started.elapsed());
    let response = sent?;
    if !relay::is_buffered(&call) {
        relay::refuse_credential_failure(response.status())?;
        return Ok(relay::stream(&gate.upstream, response));
    }
    let answer = relay::buffer(&gate.upstream, &call, response).await?;
    if let (Op::Submit { endpoint, .. }, true) = (&call.op, answer.status.is_success()) {
        if let Some(id) = answer.submitted_id() {
            gate.ownership.record(&caller, endpoint.app(), id);
        }
    }
    Ok(answer.into_response())
}

/// Reads the body and validates it against the endpoint's schema (or, for storage uploads, as a
/// strict JSON object). The bytes that passed are the bytes forwarded.
async fn read_input(
    gate: &Gate,
    caller: &Caller,
    grant: &Grant<'_>,
    headers: &HeaderMap,
    body: Body,
) -> Result<ValidInput, GateError> {
    let cap = grant
        .endpoint
        .as_ref()
        .and_then(|entry| gate.config.endpoints.get(entry)?.max_body_bytes)
        .unwrap_or(gate.config.max_body_bytes);
    let bytes = input::read_body(headers, body, cap, gate.config.body_timeout).await?;
    let limits = Limits {
        max_body_bytes: cap,
        ..Limits::default()
    };
    match &grant.endpoint {
        Some(entry) => Ok(gate
            .schemas
            .validate(entry.as_str(), Some(&caller.tier), &bytes, &limits)?),
        None => Ok(ValidInput {
            value: schema::parse_object(&bytes, &limits)?,
            bytes,
        }),
    }
}
