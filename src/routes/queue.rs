//! The REST routes: `/api/fal/queue/{endpoint | app/requests/id[/status[/stream]|/cancel]}` and
//! `POST /api/fal/run/{endpoint}`. The raw, still-encoded path is parsed, so an encoded `/` or
//! `..` is refused rather than decoded.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;

use crate::app::Gate;
use crate::auth::Caller;
use crate::error::GateError;
use crate::fal::{parse_queue_path, Call, Op};
use crate::pipeline;

pub(super) async fn queue(
    State(gate): State<Arc<Gate>>,
    caller: Caller,
    request: Request,
) -> Result<Response, GateError> {
    let op = parse("/api/fal/queue", &request)?;
    forward(&gate, caller, Call { op }, request).await
}

pub(super) async fn run(
    State(gate): State<Arc<Gate>>,
    caller: Caller,
    request: Request,
) -> Result<Response, GateError> {
    let op = match parse("/api/fal/run", &request)? {
        Op::Submit {
            endpoint,
            webhook: None,
        } => Op::Run { endpoint },
        _ => {
            return Err(GateError::Malformed(
                "a run path names an endpoint and takes no query".into(),
            ))
        }
    };
    forward(&gate, caller, Call { op }, request).await
}

fn parse(prefix: &str, request: &Request) -> Result<Op, GateError> {
    let path = request.uri().path().strip_prefix(prefix).unwrap_or_default();
    parse_queue_path(path, request.uri().query())
        .map_err(|err| GateError::Malformed(format!("invalid queue path: {err}")))
}

async fn forward(gate: &Gate, caller: Caller, call: Call, request: Request) -> Result<Response, GateError> {
    super::check_method(&request, &call)?;
    let (parts, body) = request.into_parts();
    pipeline::handle(gate, caller, call, &parts.headers, body).await
}
