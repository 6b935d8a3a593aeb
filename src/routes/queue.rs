//! The REST routes: `/api/fal/queue/{endpoint | app/requests/id[/status[/stream]|/cancel]}`,
//! `POST /api/fal/run/{endpoint}` and its event stream `POST /api/fal/run/{endpoint}/stream`. The raw, still-encoded path is parsed, so an encoded `/` or
//! `..` is refused rather than decoded.

use axum::extract::Request;
use axum::response::Response;

use super::links;
use crate::auth::Caller;
use crate::error::GateError;
use crate::fal::{parse_queue_path, Call, Op};
use crate::pipeline;
use crate::state::{Gate, Snapshot};
use crate::telemetry::access_log::CallFacts;

pub(super) async fn queue(Snapshot(gate): Snapshot, caller: Caller, request: Request) -> Response {
    let mut facts = super::facts(&caller);
    let answer = match parse("/api/fal/queue", &request) {
        Ok(op) => forward(&gate, caller, Call { op }, request, &mut facts).await,
        Err(err) => Err(err),
    };
    super::answer(answer, facts)
}

pub(super) async fn run(Snapshot(gate): Snapshot, caller: Caller, request: Request) -> Response {
    let mut facts = super::facts(&caller);
    let answer = match parse("/api/fal/run", &request) {
        Ok(Op::Submit {
            endpoint,
            webhook: None,
        }) => {
            forward(
                &gate,
                caller,
                Call {
                    op: Op::run_of(endpoint),
                },
                request,
                &mut facts,
            )
            .await
        }
        Ok(_) => Err(GateError::Malformed(
            "a run path names an endpoint and takes no query".into(),
        )),
        Err(err) => Err(err),
    };
    super::answer(answer, facts)
}

fn parse(prefix: &str, request: &Request) -> Result<Op, GateError> {
    let path = request.uri().path().strip_prefix(prefix).unwrap_or_default();
    parse_queue_path(path, request.uri().query())
        .map_err(|err| GateError::Malformed(format!("invalid queue path: {err}")))
}

async fn forward(
    gate: &Gate,
    caller: Caller,
    call: Call,
    request: Request,
    facts: &mut CallFacts,
) -> Result<Response, GateError> {
    super::learn(facts, &call);
    super::check_method(&request, &call)?;
    let (parts, body) = request.into_parts();
    let base = links::Base::of(gate, &parts);
    let answer = pipeline::handle(gate, caller, call.clone(), &parts.headers, body).await?;
    Ok(links::rewrite(answer, &call, &base).await)
}
