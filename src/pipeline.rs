//! The ordered steps every call goes through, whichever route family it came from:
//! authorize → precheck limits (calls with a body) → read and validate input → claim the
//! idempotency key → open a stream / relay slot → admit (rates, quota, concurrency) → check
//! ownership → forward → record ownership and the job → relay. What fal's answer shows of a job
//! (its submit, its end) also goes to the owner's events and request index (`crate::events`).
//! Authentication happened before: `handle` takes a [`Caller`], so nothing reaches fal without one.
//! Each step returns a proof value or a [`GateError`]; none writes a response.
//!
//! Input is validated before admission because a call's credit cost depends on it (e.g. the
//! `model` field); a refused input consumes nothing. Reading and validating a body (up to
//! `max_body_bytes`) is the expensive part, so the precheck first refuses a caller already over
//! a rate, quota (at the endpoint's cheapest price) or concurrency limit, consuming nothing;
//! `admit` then charges the real price atomically.

mod client_token;
mod idempotency;
mod stream_end;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use crate::auth::Caller;
use crate::error::GateError;
use crate::fal::{Call, Drain, Job, Op, OpFacts, Price, Unknown};
use crate::input;
use crate::limits::{Admission, Slot, Subject};
use crate::ownership::Outcome;
use crate::policy::Grant;
use crate::schema::{self, Limits, ValidInput};
use crate::state::Gate;
use crate::upstream::budget::Charge;
use crate::upstream::{self, relay};
use idempotency::{Claim, Settle};

/// Runs one call for `caller` and returns the response to relay.
pub async fn handle(
    gate: &Gate,
    caller: Caller,
    call: Call,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, GateError> {
    let grant = gate.policy.authorize(&caller, &call)?;
    let mut forwarded = upstream::forwarded_headers(headers, &call, grant.fal_headers())?;
    grant.cap_priority(&mut forwarded);
    let principal = caller.principal();
    // The body's budget charge is held until the answer is made (the bytes are forwarded).
    let (input, _charge) = match call.has_body() {
        true => {
            // Refuse before spending: a caller over a limit costs no body read or validation.
            let subject = Subject {
                principal: &principal,
                tier: &caller.tier,
            };
            let facts = call.facts();
            let endpoint = grant.called.as_ref().map(|e| e.as_str());
            // The cheapest the call can cost before its input is read, by the table's price.
            let floor = match facts.price {
                Price::Endpoint => gate.limiter.min_credits(endpoint),
                Price::ClientToken => gate.limiter.client_token_terms().0,
                Price::Free => 0,
            };
            let rated = endpoint.filter(|_| facts.endpoint_rates);
            let prechecked = gate.limiter.precheck_priced(&subject, facts.class, rated, floor).await;
            if let Err(refused) = prechecked {
                // Unless it is the retry of a submit already answered: that one is replayed.
                if !idempotency::answered(gate, &principal, &call, headers).await? {
                    return Err(refused.into());
                }
            }
            let (mut input, charge) = match read_input(gate, &caller, &grant, headers, body).await {
                // A body that did not arrive in time counts against its caller: it spends the
                // call's rate (input::read_body).
                Err(GateError::BodyTimeout) => {
                    gate.limiter.spend_rate(&subject, facts.class).await;
                    return Err(GateError::BodyTimeout);
                }
                read => read?,
            };
            if let Op::ClientToken { realtime } = call.op {
                input = client_token::canonical(gate, &grant, &input, realtime)?;
            }
            (Some(input), Some(charge))
        }
        false => (None, None),
    };
    if let Some(input) = &input {
        grant.check_options(input.ruled())?;
    }
    let claim = match idempotency::claim(gate, &principal, &call, headers, input.as_ref()).await? {
        Claim::Replay(response) => return Ok(response),
        Claim::New(key) => key,
    };
    let outcome = admitted(gate, &caller, &principal, &call, &grant, forwarded, input).await;
    if let Some(key) = claim {
        let settlement = Settle::of(&outcome);
        idempotency::settle(gate, &principal, &key, settlement).await;
    }
    outcome.map(Answer::into_response)
}

/// What fal answered, with the caller's `RateLimit` headers (and, for a result or sync run,
/// the relay slot its body holds until it is sent).
pub(crate) enum Answer {
    Buffered(relay::Buffered, Admission, Option<Slot>),
    Streamed(Response, Admission),
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let (mut response, admission) = match self {
            Self::Buffered(answer, admission, None) => (answer.into_response(), admission),
            Self::Buffered(answer, admission, Some(slot)) => {
                let response = answer.into_response();
                (response.map(|body| crate::body::held(body, slot)), admission)
            }
            Self::Streamed(response, admission) => (response, admission),
        };
        response.headers_mut().extend(admission.headers());
        response
    }
}

/// Everything after input and idempotency: admission, ownership, forwarding, bookkeeping.
async fn admitted(
    gate: &Gate,
    caller: &Caller,
    principal: &str,
    call: &Call,
    grant: &Grant<'_>,
    forwarded: HeaderMap,
    input: Option<ValidInput>,
) -> Result<Answer, GateError> {
    let subject = Subject {
        principal,
        tier: &caller.tier,
    };
    let facts = call.facts();
    let called = grant.called.as_ref().map(|e| e.as_str());
    let credits = match (facts.price, called, &input) {
        (Price::Endpoint, Some(endpoint), Some(input)) => gate.limiter.credits_for(endpoint, input.ruled()),
        (Price::ClientToken, ..) => gate.limiter.client_token_terms().0,
        (Price::Endpoint | Price::Free, ..) => 0,
    };
    // Before admission, so a call refused for want of a slot consumes nothing; freed on drop.
    let slot = match facts.slot {
        Some(kind) => Some(gate.limiter.open_slot(&subject, kind).await?),
        None => None,
    };
    let rated = called.filter(|_| facts.endpoint_rates);
    let admission = gate.limiter.admit(&subject, facts.class, rated, credits).await?;
    // A run holds its in-flight reservation only while it runs: if the client goes away (this
    // future dropped before the bookkeeping below), the guard frees it at once.
    let guard = (facts.job == Job::Runs).then(|| gate.limiter.run_guard(&admission));
    if let (Some(app), Some(id)) = (call.app(), call.request_id()) {
        gate.ownership.check(principal, &app, id).await?;
    }
    let forward = async {
        let sent = gate
            .upstream
            .send(call, forwarded, input.map(|input| input.bytes))
            .await;
        match sent {
            Ok(response) if relay::is_streamed(call, response.status()) => {
                relay::refuse_credential_failure(response.status())
                    .map(|()| Answer::Streamed(relay::stream(&gate.upstream, call, response, slot), admission.clone()))
            }
            Ok(response) => relay::buffer(&gate.upstream, call, response)
                .await
                .map(|b| Answer::Buffered(b, admission.clone(), slot)),
            Err(err) => Err(err),
        }
    };
    let answer = match facts.drain {
        // A paid call still waiting for fal when the drain timeout nears is answered 424 (its
        // outcome is unknown) before its connection is cut: a cut would be retried as a second call.
        Drain::AnswerUnknown => tokio::select! {
            answer = forward => answer,
            () = gate.lifecycle.abandoned() => Err(GateError::SubmitOutcomeUnknown(
                "the drain timeout ended the wait for fal's answer".into(),
            )),
        },
        Drain::Served | Drain::Cut => forward.await,
    };
    let bookkeeping = Bookkeeping::of(call, &facts, &answer);
    account(gate, &subject, &admission, bookkeeping).await;
    if let Some(guard) = guard {
        guard.disarm();
    }
    // A status stream that shows the end tells the owner's events, as a poll does.
    match (answer, &call.op) {
        (Ok(Answer::Streamed(response, admission)), Op::StatusStream { id, .. }) if response.status().is_success() => {
            let tag = crate::redis::tag_of(principal);
            let watched = stream_end::watch(response, gate.events.clone(), tag, id.clone());

            Ok(Answer::Streamed(watched, admission))
        }
        (answer, _) => answer,
    }
}

/// What fal's answer means for ownership and limits (decided before any await, since an answer
/// holding a streaming body cannot be shared across threads).
enum Bookkeeping {
    Submitted(crate::fal::EndpointId, crate::fal::FalRequestId),
    Refund,
    Finished(crate::fal::AppId, crate::fal::FalRequestId, Outcome),
    RunDone,
    Nothing,
}

impl Bookkeeping {
    fn of(call: &Call, facts: &OpFacts, answer: &Result<Answer, GateError>) -> Self {
        let paid = facts.class.is_paid();
        let refund_if_paid = if paid { Self::Refund } else { Self::Nothing };
        let answer = match answer {
            Err(GateError::SubmitOutcomeUnknown(_)) => {
                return match facts.unknown {
                    // fal may have taken it: keep the slot and the spend rather than invite a second job.
                    Unknown::KeepSpend | Unknown::NotPaid => Self::Nothing,
                    Unknown::Refund => Self::Refund,
                };
            }
            // fal did not take it (refused, or never reached).
            Err(_) => return refund_if_paid,
            Ok(answer) => answer,
        };
        // A refused cancel may still show the end (`ALREADY_COMPLETED`): `finished` reads the status.
        if let (Job::MayEnd, Answer::Buffered(buffered, ..)) = (facts.job, answer) {
            return match (call.app(), call.request_id()) {
                (Some(app), Some(id)) if finished(call, buffered) => {
                    Self::Finished(app, id.clone(), outcome(call, buffered))
                }
                _ => Self::Nothing,
            };
        }
        let taken = match answer {
            Answer::Buffered(buffered, ..) => buffered.status.is_success(),
            Answer::Streamed(response, _) => response.status().is_success(),
        };
        if !taken {
            return refund_if_paid;
        }
        match (facts.job, &call.op, answer) {
            (Job::Starts, Op::Submit { endpoint, .. }, Answer::Buffered(buffered, ..)) => buffered
                .submitted_id()
                .map_or(Self::Nothing, |id| Self::Submitted(endpoint.clone(), id)),
            // A run holds its slot only while it runs; it keeps its spend. A streaming run's open
            // stream is then held by its stream slot.
            (Job::Runs, ..) => Self::RunDone,
            (Job::Starts | Job::MayEnd | Job::None, ..) => Self::Nothing,
        }
    }
}

/// Bookkeeping after fal answered: ownership and the concurrency slot of a submit, the end of a
/// job, or the refund of a paid call fal did not take.
async fn account(gate: &Gate, subject: &Subject<'_>, admission: &Admission, bookkeeping: Bookkeeping) {
    match bookkeeping {
        Bookkeeping::Submitted(endpoint, id) => {
            let summary = gate.ownership.record(subject.principal, &endpoint, &id).await;
            gate.limiter.job_started(admission, &endpoint.app(), &id).await;
            gate.events
                .submitted(&crate::redis::tag_of(subject.principal), &summary)
                .await;
        }
        Bookkeeping::Refund => gate.limiter.refund_inflight(admission).await,
        Bookkeeping::Finished(app, id, outcome) => {
            gate.limiter.job_finished(subject, &app, &id).await;
            gate.events
                .finished(&crate::redis::tag_of(subject.principal), &id, outcome)
                .await;
        }
        Bookkeeping::RunDone => gate.limiter.run_finished(admission).await,
        Bookkeeping::Nothing => {}
    }
}

/// Whether fal's answer shows the job is over: its status is `COMPLETED` (done, failed or
/// cancelled), its result was served, or a cancel found it `ALREADY_COMPLETED`. A cancel fal
/// accepted is not an end: a running job may go on for a while (`reconcile.rs` frees it later).
fn finished(call: &Call, answer: &relay::Buffered) -> bool {
    match call.op {
        Op::Result { .. } => answer.status.is_success(),
        Op::Cancel { .. } => answer.already_completed(),
        Op::Status { .. } => answer.status.is_success() && answer.completed(),
        Op::Submit { .. }
        | Op::StatusStream { .. }
        | Op::Run { .. }
        | Op::RunStream { .. }
        | Op::StorageInitiate { .. }
        | Op::ClientToken { .. } => false,
    }
}

/// How a job `finished` says is over ended: a served result is an output; a completed status
/// names its failure, if any; a cancel's `ALREADY_COMPLETED` does not say.
fn outcome(call: &Call, answer: &relay::Buffered) -> Outcome {
    match (&call.op, answer.failure()) {
        (Op::Status { .. }, Some(kind)) => Outcome::error(kind),
        (Op::Status { .. }, None) | (Op::Result { .. }, _) => Outcome::Ok,
        (
            Op::Cancel { .. }
            | Op::Submit { .. }
            | Op::StatusStream { .. }
            | Op::Run { .. }
            | Op::RunStream { .. }
            | Op::StorageInitiate { .. }
            | Op::ClientToken { .. },
            _,
        ) => Outcome::Unknown,
    }
}

/// Reads the body and validates it against the endpoint's schema (or, for storage uploads, as a
/// strict JSON object). The bytes that passed are the bytes forwarded.
async fn read_input(
    gate: &Gate,
    caller: &Caller,
    grant: &Grant<'_>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(ValidInput, Charge), GateError> {
    let cap = grant
        .endpoint
        .as_ref()
        .and_then(|entry| gate.config.endpoints.get(entry)?.max_body_bytes)
        .unwrap_or(gate.config.max_body_bytes);
    let limits = input::BodyLimits {
        max_bytes: cap,
        timeout: gate.config.body_timeout,
        per_caller: gate.config.body_reads_per_caller,
    };
    let read = input::read_body(headers, body, limits, &gate.body_budget, &caller.principal()).await;
    let (bytes, charge) = read?;
    let limits = Limits {
        max_body_bytes: cap,
        json: gate.config.json,
        ..Limits::default()
    };
    let input = match &grant.endpoint {
        Some(entry) => gate
            .schemas
            .validate(entry.as_str(), Some(&caller.tier), &bytes, &limits)?,
        None => ValidInput::new(bytes.clone(), schema::parse_object(&bytes, &limits)?),
    };
    Ok((input, charge))
}

#[cfg(test)]
mod tests;
