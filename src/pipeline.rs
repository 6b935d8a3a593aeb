//! The ordered steps every call goes through, whichever route family it came from. This is
//! the one description of them (`lib.rs` and ARCHITECTURE.md point here); each step returns a
//! proof value or a [`GateError`] (its status in brackets), and none writes a response.
//! Authentication happened before: [`handle`] takes a [`Caller`], so nothing reaches fal without
//! one. What fal's answer shows of a job (its submit, its end) also goes to the owner's events
//! and request index (`crate::events`): a status stream that shows the end included.
//!
//! | step | what | proof, refusal |
//! | --- | --- | --- |
//! | authorize | `Policy::authorize(&caller, &call)` | `Grant` (403) |
//! | headers | `upstream::forwarded_headers` and the tier's priority cap | the headers fal sees (400) |
//! | precheck | calls with a body: `Limiter::precheck_or_admit` at the endpoint's cheapest price, consuming nothing; with Redis, a call whose price its input cannot change (no endpoint-wide rate, no slot) is admitted here instead, in one round trip, and given back if refused before fal (`limits::early`) (a submit whose `Idempotency-Key` was answered goes on, to be replayed) | `EarlyAdmission` (429 / 403 / 503) |
//! | read | `input::read_body`: declared JSON, size- and time-bounded, charged to the body budget; a body that times out spends its caller's rate | bytes (413 / 415 / 408 / 429 / 503) |
//! | validate | `Schemas::validate` (a storage upload: a strict JSON object); a token request checked and re-serialised (`client_token`) | `ValidInput` (400 / 413 / 422 / 403) |
//! | options | `Grant::check_options` on the input as fal runs it | (403) |
//! | idempotency | claim the submit's `Idempotency-Key` (`idempotency`) | new, or a replay of the first answer (409 / 422) |
//! | slot | `Limiter::open_slot` for a stream, result or run answer | `Slot` (429) |
//! | admit | `Limiter::admit`: rates, quota, concurrency, atomically, at the real price (the early admission, when there is one) | `Admission` (429 / 403 / 503) |
//! | own-check | `Ownership::check` for calls naming a request id, alongside `admit` (it only reads; a refused admission is the answer) | (404 / 503) |
//! | forward | `Upstream::send` with the server-held key; with `[webhooks] receive`, a submit carries falgate's own `fal_webhook` (`Webhooks::hooked`) | fal's response (502 / 504 / 424) |
//! | relay | `relay::buffer` or `relay::stream`: fal's answer, verbatim; the `Slot` rides in the body | `Answer` |
//! | record | ownership of a submit, the job started or finished, the refund of a paid call fal did not take; with the webhook receiver on, the submitted job its delivery will name (`Webhooks::submitted`: caller tag, spend, the caller's own hook); the idempotency key settled | |
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

use bytes::Bytes;

use crate::auth::Caller;
use crate::config::Config;
use crate::error::GateError;
use crate::fal::{Call, Drain, Job, Op, OpFacts, Price, Unknown};
use crate::input;
use crate::lifecycle::Lifecycle;
use crate::limits::{Admission, EarlyAdmission, Limiter, Slot, Subject, Undo};
use crate::ownership::{Outcome, Ownership};
use crate::policy::Grant;
use crate::schema::{self, Schemas, ValidInput, ValidationLimits};
use crate::state::Gate;
use crate::upstream::{self, relay, Upstream};
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
    let subject = Subject {
        principal: &principal,
        tier: &caller.tier,
    };
    // The body's budget charge is held until the answer is made (the bytes are forwarded).
    let (input, _charge, early) = match call.has_body() {
        true => {
            let (input, charge, early) =
                precheck_and_read(gate, &subject, &caller, &grant, &call, headers, body).await?;
            (Some(input), Some(charge), early)
        }
        false => (None, None, None),
    };
    let idempotency = gate.limiter.idempotency();
    let claim = match claim_checked(idempotency, &principal, &call, headers, &grant, input.as_ref()).await {
        Ok(Claim::New(key)) => key,
        // A replay or a refusal before fal: an early admission is given back.
        Ok(Claim::Replay(response)) => {
            give_back(early, Undo::Everything).await;
            return Ok(response);
        }
        Err(refused) => {
            give_back(early, Undo::Everything).await;
            return Err(refused);
        }
    };
    let checked = Checked {
        subject,
        call: &call,
        grant: &grant,
        forwarded,
        input,
        early,
    };
    let outcome = admitted(gate, checked).await;
    if let Some(key) = claim {
        let settlement = Settle::of(&outcome);
        idempotency::settle(idempotency, &principal, &key, settlement).await;
    }
    outcome.map(Answer::into_response)
}

/// The precheck, then the body read and validated (`read_input`). With Redis, a call whose
/// price its input cannot change is admitted at the precheck (`limits::early`: one round trip),
/// and that admission is given back if the body or its input is refused.
async fn precheck_and_read(
    gate: &Gate,
    subject: &Subject<'_>,
    caller: &Caller,
    grant: &Grant<'_>,
    call: &Call,
    headers: &HeaderMap,
    body: Body,
) -> Result<(ValidInput, crate::budget::Charge, Option<EarlyAdmission>), GateError> {
    // Refuse before spending: a caller over a limit costs no body read or validation.
    let facts = call.facts();
    let limiter = &gate.limiter;
    let endpoint = grant.called.as_ref().map(|e| e.as_str());
    // The cheapest the call can cost before its input is read, by the table's price, and its
    // price when the input cannot change it.
    let (floor, fixed) = match facts.price {
        Price::Endpoint => (limiter.min_credits(endpoint), limiter.fixed_credits(endpoint)),
        Price::ClientToken => (limiter.client_token_terms().0, Some(limiter.client_token_terms().0)),
        Price::Free => (0, Some(0)),
    };
    let rated = endpoint.filter(|_| facts.endpoint_rates);
    // A call opening a slot opens it before admission (`admit`): never admitted early.
    let fixed = fixed.filter(|_| facts.slot.is_none());
    let early = match limiter
        .precheck_or_admit(subject, facts.class, rated, floor, fixed)
        .await
    {
        Ok(prechecked) => prechecked.admitted(),
        // Unless it is the retry of a submit already answered: that one is replayed.
        Err(refused) => match idempotency::answered(limiter.idempotency(), subject.principal, call, headers).await? {
            true => None,
            false => return Err(refused.into()),
        },
    };
    match read_input(gate, subject, caller, grant, call, headers, body).await {
        Ok((input, charge)) => Ok((input, charge, early)),
        // A body that did not arrive in time counts against its caller: it spends the call's
        // rate (input::read_body); an early admission spent it already and gives back the rest.
        Err(GateError::BodyTimeout) => {
            match early {
                Some(early) => early.undo(Undo::KeepRate).await,
                None => limiter.spend_rate(subject, facts.class).await,
            }
            Err(GateError::BodyTimeout)
        }
        Err(refused) => {
            // Refused before fal: an early admission is given back.
            give_back(early, Undo::Everything).await;
            Err(refused)
        }
    }
}

/// Reads and validates a call's body (`read`, `validate`, a token request's canonical form).
/// A body that did not arrive in time is `GateError::BodyTimeout` (its caller pays: see
/// [`precheck_and_read`]).
async fn read_input(
    gate: &Gate,
    subject: &Subject<'_>,
    caller: &Caller,
    grant: &Grant<'_>,
    call: &Call,
    headers: &HeaderMap,
    body: Body,
) -> Result<(ValidInput, crate::budget::Charge), GateError> {
    let bounds = BodyBounds::of(&gate.config, grant);
    let read = input::read_body(headers, body, bounds.read, &gate.body_budget, subject.principal).await;
    let (bytes, charge) = match read {
        Err(input::BodyError::Timeout) => return Err(GateError::BodyTimeout),
        read => read?,
    };
    let mut input = validate(&gate.schemas, &bounds.parse, caller, grant, bytes)?;
    if let Op::ClientToken { realtime } = call.op {
        input = client_token::canonical(&gate.policy, &gate.limiter, grant, &input, realtime)?;
    }
    Ok((input, charge))
}

/// The options step and the idempotency claim.
async fn claim_checked(
    idempotency: &crate::limits::Idempotency,
    principal: &str,
    call: &Call,
    headers: &HeaderMap,
    grant: &Grant<'_>,
    input: Option<&ValidInput>,
) -> Result<Claim, GateError> {
    if let Some(input) = input {
        grant.check_options(input.ruled())?;
    }
    idempotency::claim(idempotency, principal, call, headers, input).await
}

/// Gives back an early admission of a call refused (or replayed) before fal.
async fn give_back(early: Option<EarlyAdmission>, undo: Undo) {
    if let Some(early) = early {
        early.undo(undo).await;
    }
}

/// What fal answered, with the caller's `RateLimit` headers (and, for a result or sync run,
/// the relay slot its body holds until it is sent).
pub(crate) enum Answer {
    Buffered(relay::Buffered, RateLimits, Option<Slot>),
    Streamed(Response, RateLimits),
}

/// The caller's `RateLimit` and `RateLimit-Policy` headers, rendered from its admission.
type RateLimits = Vec<(axum::http::HeaderName, axum::http::HeaderValue)>;

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let (mut response, limits) = match self {
            Self::Buffered(answer, limits, None) => (answer.into_response(), limits),
            Self::Buffered(answer, limits, Some(slot)) => {
                let response = answer.into_response();
                (response.map(|body| crate::body::held(body, slot)), limits)
            }
            Self::Streamed(response, limits) => (response, limits),
        };
        response.headers_mut().extend(limits);
        response
    }
}

/// A call that passed every check before admission: who makes it, the grant, the headers fal
/// will see and the validated input.
struct Checked<'a> {
    subject: Subject<'a>,
    call: &'a Call,
    grant: &'a Grant<'a>,
    forwarded: HeaderMap,
    input: Option<ValidInput>,
    /// The admission made at the precheck step (`limits::early`), if any.
    early: Option<EarlyAdmission>,
}

/// Everything after input and idempotency: admission, ownership, forwarding, bookkeeping.
async fn admitted(gate: &Gate, checked: Checked<'_>) -> Result<Answer, GateError> {
    let Checked {
        subject,
        call,
        grant,
        forwarded,
        input,
        early,
    } = checked;
    let facts = call.facts();
    let owned = async {
        match (call.app(), call.request_id()) {
            (Some(app), Some(id)) => gate.ownership.check(subject.principal, &app, id).await,
            _ => Ok(()),
        }
    };
    // Admission and the ownership check are independent (the check only reads), so with Redis
    // their round trips overlap. A refused admission is the answer whatever the check found; a
    // request that is not the caller's still spends the call's rate (it blunts id probing).
    let (admitted, owned) = match early {
        // Admitted at the precheck step, at its fixed price, with no slot to open.
        Some(early) => (Ok((early.into_admission(), None)), owned.await),
        None => tokio::join!(admit(&gate.limiter, &subject, call, grant, input.as_ref()), owned),
    };
    let (admission, slot) = admitted?;
    // A run holds its in-flight reservation only while it runs: if the client goes away (this
    // future dropped before the bookkeeping below), the guard frees it at once.
    let guard = (facts.job == Job::Runs).then(|| gate.limiter.run_guard(&admission));
    owned?;
    let body = input.map(|input| input.bytes);
    // With the webhook receiver on, a submit carries falgate's own hook (`webhooks`).
    let hooked = gate.webhooks.hooked(call);
    let answer = forward(
        &gate.upstream,
        &gate.lifecycle,
        &hooked,
        forwarded,
        body,
        slot,
        &admission,
    )
    .await;
    let bookkeeping = Bookkeeping::of(call, &facts, &answer);
    account(
        &gate.limiter,
        &gate.ownership,
        &gate.webhooks,
        &gate.events,
        &subject,
        &admission,
        bookkeeping,
    )
    .await;
    if let Some(guard) = guard {
        guard.disarm();
    }
    // A status stream that shows the end tells the owner's events, as a poll does.
    match (answer, &call.op) {
        (Ok(Answer::Streamed(response, limits)), Op::StatusStream { id, .. }) if response.status().is_success() => {
            let tag = crate::redis::tag_of(subject.principal);
            let watched = stream_end::watch(response, gate.events.clone(), tag, id.clone());

            Ok(Answer::Streamed(watched, limits))
        }
        (answer, _) => answer,
    }
}

/// Prices the call, opens its stream / relay slot (before admission, so a call refused for want
/// of a slot consumes nothing; freed on drop), then admits it (rates, quota, concurrency).
async fn admit(
    limiter: &Limiter,
    subject: &Subject<'_>,
    call: &Call,
    grant: &Grant<'_>,
    input: Option<&ValidInput>,
) -> Result<(Admission, Option<Slot>), GateError> {
    let facts = call.facts();
    let called = grant.called.as_ref().map(|e| e.as_str());
    let credits = match (facts.price, called, input) {
        (Price::Endpoint, Some(endpoint), Some(input)) => limiter.credits_for(endpoint, input.ruled()),
        (Price::ClientToken, ..) => limiter.client_token_terms().0,
        (Price::Endpoint | Price::Free, ..) => 0,
    };
    let slot = match facts.slot {
        Some(kind) => Some(limiter.open_slot(subject, kind).await?),
        None => None,
    };
    let rated = called.filter(|_| facts.endpoint_rates);
    let admission = limiter.admit(subject, facts.class, rated, credits).await?;
    Ok((admission, slot))
}

/// Sends the call to fal and relays its answer (streamed or read whole); the slot rides in the
/// answer's body.
async fn forward(
    upstream: &Upstream,
    lifecycle: &Lifecycle,
    call: &Call,
    forwarded: HeaderMap,
    body: Option<Bytes>,
    slot: Option<Slot>,
    admission: &Admission,
) -> Result<Answer, GateError> {
    let forward = async {
        let sent = upstream.send(call, forwarded, body).await;
        match sent {
            Ok(response) if relay::is_streamed(call, response.status()) => {
                relay::refuse_credential_failure(response.status())
                    .map(|()| Answer::Streamed(relay::stream(upstream, call, response, slot), admission.headers()))
                    .map_err(GateError::from)
            }
            Ok(response) => relay::buffer(upstream, call, response)
                .await
                .map(|b| Answer::Buffered(b, admission.headers(), slot))
                .map_err(GateError::from),
            Err(err) => Err(err.into()),
        }
    };
    match call.facts().drain {
        // A paid call still waiting for fal when the drain timeout nears is answered 424 (its
        // outcome is unknown) before its connection is cut: a cut would be retried as a second call.
        Drain::AnswerUnknown => tokio::select! {
            answer = forward => answer,
            () = lifecycle.abandoned() => Err(GateError::SubmitOutcomeUnknown(
                "the drain timeout ended the wait for fal's answer".into(),
            )),
        },
        Drain::Served | Drain::Cut => forward.await,
    }
}

/// What fal's answer means for ownership and limits (decided before any await, since an answer
/// holding a streaming body cannot be shared across threads).
enum Bookkeeping {
    /// A job fal took, with the caller's own `fal_webhook` (forwarded to by `webhooks`).
    Submitted(
        crate::fal::EndpointId,
        crate::fal::FalRequestId,
        Option<crate::fal::Webhook>,
    ),
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
            (Job::Starts, Op::Submit { endpoint, webhook }, Answer::Buffered(buffered, ..)) => {
                buffered.submitted_id().map_or(Self::Nothing, |id| {
                    Self::Submitted(endpoint.clone(), id, webhook.clone())
                })
            }
            // A run holds its slot only while it runs; it keeps its spend. A streaming run's open
            // stream is then held by its stream slot.
            (Job::Runs, ..) => Self::RunDone,
            (Job::Starts | Job::MayEnd | Job::None, ..) => Self::Nothing,
        }
    }
}

/// Bookkeeping after fal answered: ownership and the concurrency slot of a submit, the end of a
/// job, or the refund of a paid call fal did not take.
async fn account(
    limiter: &Limiter,
    ownership: &Ownership,
    webhooks: &crate::webhooks::Webhooks,
    events: &crate::events::Events,
    subject: &Subject<'_>,
    admission: &Admission,
    bookkeeping: Bookkeeping,
) {
    match bookkeeping {
        Bookkeeping::Submitted(endpoint, id, hook) => {
            let app = endpoint.app();
            let job = crate::webhooks::Submitted {
                tag: admission.tag().to_owned(),
                app: app.as_str().to_owned(),
                spend: admission.spend(),
                hook: hook.map(|hook| hook.as_str().to_owned()),
            };
            // Independent records, written at once: with Redis their commands share one
            // connection's writes and reads instead of waiting for each other's round trip.
            let owned = async {
                let summary = ownership.record(subject.principal, &endpoint, &id).await;
                events
                    .submitted(&crate::redis::tag_of(subject.principal), &summary)
                    .await;
            };
            tokio::join!(
                owned,
                limiter.job_started(admission, &app, &id),
                webhooks.submitted(&id, job)
            );
        }
        Bookkeeping::Refund => limiter.refund_inflight(admission).await,
        Bookkeeping::Finished(app, id, outcome) => {
            limiter.job_finished(subject, &app, &id).await;
            events
                .finished(&crate::redis::tag_of(subject.principal), &id, outcome)
                .await;
        }
        Bookkeeping::RunDone => limiter.run_finished(admission).await,
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

/// How one call's body is read (the endpoint's cap, the time it may take, bodies per caller)
/// and parsed (the same cap, the JSON bounds of `[request]`).
struct BodyBounds {
    read: input::BodyLimits,
    parse: ValidationLimits,
}

impl BodyBounds {
    fn of(config: &Config, grant: &Grant<'_>) -> Self {
        let cap = grant
            .endpoint
            .as_ref()
            .and_then(|entry| config.endpoints.get(entry)?.max_body_bytes)
            .unwrap_or(config.max_body_bytes);
        Self {
            read: input::BodyLimits {
                max_bytes: cap,
                timeout: config.body_timeout,
                per_caller: config.body_reads_per_caller,
            },
            parse: ValidationLimits {
                max_body_bytes: cap,
                json: config.json,
                ..ValidationLimits::default()
            },
        }
    }
}

/// Validates the body read against the endpoint's schema (or, for storage uploads, as a strict
/// JSON object). The bytes that passed are the bytes forwarded.
fn validate(
    schemas: &Schemas,
    bounds: &ValidationLimits,
    caller: &Caller,
    grant: &Grant<'_>,
    bytes: Bytes,
) -> Result<ValidInput, GateError> {
    Ok(match &grant.endpoint {
        Some(entry) => schemas.validate(entry.as_str(), Some(&caller.tier), &bytes, bounds)?,
        None => {
            let value = schema::parse_object(&bytes, bounds)?;
            ValidInput::new(bytes, value)
        }
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_client_token;
#[cfg(test)]
mod tests_edges;
