//! The handler behind every fal host path: read the body, record the request, consult the
//! faults, check `Authorization: Key ...`, then run the operation against the queue or model.
//! A GET on `fal.run/{app}/realtime` is the realtime WebSocket instead ([`realtime`]).

use std::time::Duration;

use axum::body::{to_bytes, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::faults::{self, FaultAction, Op};
use super::model::{self, ModelResult};
use super::queue::{CancelResult, Phase};
use super::route::{self, Call, RouteError};
use super::status::{self, base_url, detail, json_response, with_request_id, Urls};
use super::{realtime, storage, stream, tokens, webhooks, Emulator, RecordedRequest};

/// Largest request body accepted on fal paths (data-URI inputs can be many MB).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The fal host a path prefix selects.
#[derive(Clone, Copy)]
enum Host {
    Queue,
    Run,
    Rest,
}

/// What the handlers need besides the call itself.
struct Ctx {
    emulator: Emulator,
    base: String,
    query: Option<String>,
}

/// Fallback handler: every path not owned by the control API or the fake CDN.
pub(crate) async fn handle(State(emulator): State<Emulator>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let Some((host, relative)) = split_host(&path) else {
        return detail(StatusCode::NOT_FOUND, "Not Found");
    };
    // fal's realtime WebSocket authenticates by its temporary token, not `Authorization: Key`.
    if let (Host::Run, Some(alias), true) = (host, realtime::alias(relative), parts.method == Method::GET) {
        emulator.record(record(&parts, &[]));
        return realtime::connect(emulator, parts, alias).await;
    }
    let bytes = to_bytes(body, MAX_BODY_BYTES).await;
    emulator.record(record(&parts, bytes.as_ref().map_or(&[][..], |bytes| &bytes[..])));
    let Ok(bytes) = bytes else {
        return detail(StatusCode::PAYLOAD_TOO_LARGE, "Request body is too large");
    };
    let call = match host {
        Host::Queue => route::queue(&parts.method, relative),
        Host::Run => route::run(&parts.method, relative),
        Host::Rest => route::rest(&parts.method, relative),
    };
    let mut pace = stream::Pace::default();
    let mut webhook = (None, None);
    match emulator
        .inner
        .faults
        .take(call.as_ref().ok().map(|call| call.op), &path)
    {
        Some(FaultAction::Status { status, body, headers }) => return faults::status_response(status, &body, &headers),
        Some(FaultAction::Stall { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Some(FaultAction::Garbage) => return faults::garbage_response(),
        Some(FaultAction::StreamDrop { after_events }) if is_stream(&call) => pace.drop_after = Some(after_events),
        Some(FaultAction::Drop | FaultAction::StreamDrop { .. }) => return faults::drop_response(),
        Some(FaultAction::Hold { after_events, key }) => pace.hold = Some((after_events, key)),
        Some(FaultAction::Webhook { tamper, fail }) => webhook = (tamper, fail),
        None => {}
    }
    let call = match call {
        Ok(call) => call,
        Err(RouteError::NotFound) => return detail(StatusCode::NOT_FOUND, "Not Found"),
        Err(RouteError::MethodNotAllowed) => return detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
    };
    if !has_key(&parts) {
        return detail(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let authority = parts.uri.authority().map(|authority| authority.as_str());
    let ctx = Ctx {
        base: base_url(&parts.headers, authority),
        query: parts.uri.query().map(str::to_owned),
        emulator,
    };
    run_call(&ctx, &call, &bytes, pace, webhook)
}

/// A `webhook` fault's tamper and failure, for a submit.
type WebhookFault = (Option<super::faults::Tamper>, Option<String>);

fn run_call(ctx: &Ctx, call: &Call, bytes: &Bytes, pace: stream::Pace, webhook: WebhookFault) -> Response {
    let id = call.request_id.as_deref().unwrap_or_default();
    match call.op {
        Op::Submit => submit(ctx, call, bytes, webhook),
        Op::Status => status(ctx, call, id),
        Op::StatusStream => match ctx.emulator.inner.queue.snapshot(&call.app, id) {
            Some(_) => {
                let urls = Urls::new(&ctx.base, &call.app, id);
                stream::respond(ctx.emulator.clone(), call.app.clone(), urls, wants_logs(ctx), pace)
            }
            None => not_found_request(),
        },
        Op::Result => result(ctx, call, id),
        Op::Cancel => cancel(ctx, call, id),
        Op::Run => run(call, bytes),
        Op::RunStream => run_stream(ctx, call, bytes, pace),
        Op::StorageInitiate => storage::initiate(&ctx.emulator.inner.storage, &ctx.base, bytes),
        Op::StorageInitiateMultipart => storage::initiate_multipart(&ctx.emulator.inner.storage, &ctx.base, bytes),
        Op::Token => tokens::issue(&ctx.emulator, bytes),
        Op::RealtimeToken => tokens::issue_realtime(&ctx.emulator, bytes),
    }
}

fn submit(ctx: &Ctx, call: &Call, bytes: &Bytes, (tamper, fail): WebhookFault) -> Response {
    let input = match parse_object(bytes) {
        Ok(input) => input,
        Err(invalid) => return detail(StatusCode::UNPROCESSABLE_ENTITY, invalid),
    };
    // fal accepts any JSON object on submit; schema errors only surface at result time.
    let outcome = match fail {
        Some(error_type) => ModelResult::Failed(error_type),
        None => model::run(&call.endpoint, &input),
    };
    let (id, position) = ctx.emulator.inner.queue.submit(&call.app, outcome);
    if let Some(hook) = fal_webhook(ctx) {
        let config = ctx.emulator.config();
        let after = Duration::from_millis(config.queue_ms + config.progress_ms);
        let spoil = webhooks::Spoil { tamper };
        webhooks::schedule(&ctx.emulator, call.app.clone(), id.clone(), hook, spoil, after);
    }
    let urls = Urls::new(&ctx.base, &call.app, &id);
    let body = json!({
        "request_id": id,
        "response_url": urls.response_url,
        "status_url": urls.status_url,
        "cancel_url": urls.cancel_url,
        "status": "IN_QUEUE",
        "queue_position": position,
        "gateway_request_id": id,
    });
    with_request_id(json_response(StatusCode::OK, &body), &id)
}

fn status(ctx: &Ctx, call: &Call, id: &str) -> Response {
    let Some(snapshot) = ctx.emulator.inner.queue.snapshot(&call.app, id) else {
        return not_found_request();
    };
    let urls = Urls::new(&ctx.base, &call.app, id);
    let logs = wants_logs(ctx).then_some(snapshot.logs.as_slice());
    let body = status::status_body(&snapshot, &urls, logs);
    with_request_id(json_response(StatusCode::OK, &body), id)
}

fn result(ctx: &Ctx, call: &Call, id: &str) -> Response {
    let Some(snapshot) = ctx.emulator.inner.queue.snapshot(&call.app, id) else {
        return not_found_request();
    };
    let response = match (snapshot.phase, snapshot.cancelled, &snapshot.outcome) {
        (Phase::InQueue | Phase::InProgress, _, _) => detail(StatusCode::BAD_REQUEST, "Request is still in progress"),
        (Phase::Completed, true, _) => detail(StatusCode::BAD_REQUEST, "Request was cancelled"),
        (Phase::Completed, false, ModelResult::Invalid(errors)) => {
            detail(StatusCode::UNPROCESSABLE_ENTITY, errors.clone())
        }
        (Phase::Completed, false, ModelResult::Output(output)) => json_response(StatusCode::OK, output),
        (Phase::Completed, false, ModelResult::Failed(error_type)) => {
            let mut response = detail(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
            if let Ok(value) = axum::http::HeaderValue::from_str(error_type) {
                response.headers_mut().insert("x-fal-error-type", value);
            }
            response
        }
    };
    with_request_id(response, id)
}

fn cancel(ctx: &Ctx, call: &Call, id: &str) -> Response {
    let (code, outcome) = match ctx.emulator.inner.queue.cancel(&call.app, id) {
        CancelResult::Requested => (StatusCode::ACCEPTED, "CANCELLATION_REQUESTED"),
        CancelResult::AlreadyCompleted => (StatusCode::BAD_REQUEST, "ALREADY_COMPLETED"),
        CancelResult::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
    };
    json_response(code, &json!({ "status": outcome }))
}

fn run(call: &Call, bytes: &Bytes) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    let response = match parse_object(bytes).map(|input| model::run(&call.endpoint, &input)) {
        Ok(ModelResult::Output(output)) => json_response(StatusCode::OK, &output),
        Ok(ModelResult::Invalid(errors)) | Err(errors) => detail(StatusCode::UNPROCESSABLE_ENTITY, errors),
        // `model::run` never fails a job: only a fault does, on a queued one.
        Ok(ModelResult::Failed(_)) => detail(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
    };
    with_request_id(response, &id)
}

/// A streaming run: fal's 422 for an invalid input (not a stream), else partial outputs.
fn run_stream(ctx: &Ctx, call: &Call, bytes: &Bytes, pace: stream::Pace) -> Response {
    match parse_object(bytes).map(|input| model::run(&call.endpoint, &input)) {
        Ok(ModelResult::Output(output)) => stream::run(ctx.emulator.clone(), &output, pace),
        Ok(ModelResult::Failed(_)) => detail(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        Ok(ModelResult::Invalid(errors)) | Err(errors) => {
            let id = uuid::Uuid::new_v4().to_string();
            with_request_id(detail(StatusCode::UNPROCESSABLE_ENTITY, errors), &id)
        }
    }
}

fn not_found_request() -> Response {
    detail(StatusCode::NOT_FOUND, "Request not found")
}

/// Splits `/fal.run/...` and `/rest.fal.ai/...` off; `/_emulator` and `/_storage` are not fal.
fn split_host(path: &str) -> Option<(Host, &str)> {
    let prefixed = |prefix: &str| {
        let rest = path.strip_prefix(prefix)?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    };
    if prefixed("/_emulator").is_some() || prefixed("/_storage").is_some() {
        return None;
    }
    prefixed("/fal.run")
        .map(|rest| (Host::Run, rest))
        .or_else(|| prefixed("/rest.fal.ai").map(|rest| (Host::Rest, rest)))
        .or(Some((Host::Queue, path)))
}

fn record(parts: &Parts, body: &[u8]) -> RecordedRequest {
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers,
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

/// `Authorization: Key <credentials>` with non-empty credentials (scheme case-insensitive).
fn has_key(parts: &Parts) -> bool {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    value
        .and_then(|value| value.split_once(' '))
        .is_some_and(|(scheme, credentials)| scheme.eq_ignore_ascii_case("key") && !credentials.trim().is_empty())
}

/// The submit's `?fal_webhook=` URL, decoded.
fn fal_webhook(ctx: &Ctx) -> Option<String> {
    let query = ctx.query.as_deref().unwrap_or_default();
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "fal_webhook")
        .map(|(_, value)| value.into_owned())
}

/// `?logs=1` (JS) or `?logs=true` (Python).
fn wants_logs(ctx: &Ctx) -> bool {
    let query = ctx.query.as_deref().unwrap_or_default();
    url::form_urlencoded::parse(query.as_bytes())
        .any(|(key, value)| key == "logs" && matches!(value.as_ref(), "1" | "true" | "True"))
}

/// Whether the call is answered with an event stream (status stream or streaming run).
fn is_stream(call: &Result<Call, RouteError>) -> bool {
    call.as_ref()
        .is_ok_and(|call| matches!(call.op, Op::StatusStream | Op::RunStream))
}

/// Parses a JSON object body, or returns the 422 `detail` array.
fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, Value> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(model::not_an_object("value is not a valid dict")),
        Err(error) => {
            Err(json!([{ "loc": ["body"], "msg": format!("invalid JSON: {error}"), "type": "value_error.jsondecode" }]))
        }
    }
}
