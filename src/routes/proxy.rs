//! `ANY /api/fal/proxy`: the `@fal-ai/client` proxy protocol. The real fal URL arrives in
//! `x-fal-target-url`; it is parsed strictly (see `fal::target`) and only the parsed call is used.

use axum::extract::Request;
use axum::response::Response;

use crate::auth::Caller;
use crate::error::GateError;
use crate::fal::{parse_target, TargetError};
use crate::pipeline;
use crate::state::Snapshot;

/// The header that carries the real fal URL.
const TARGET_HEADER: &str = "x-fal-target-url";

pub(super) async fn handle(Snapshot(gate): Snapshot, caller: Caller, request: Request) -> Response {
    let mut facts = super::facts(&caller);
    let answer = async {
        let mut targets = request.headers().get_all(TARGET_HEADER).iter();
        let target = targets.next().ok_or(TargetError::Missing)?;
        if targets.next().is_some() {
            return Err(GateError::Malformed(format!(
                "header {TARGET_HEADER} may be sent only once"
            )));
        }
        let target = target.to_str().map_err(|_| TargetError::NotCanonical)?;
        let call = parse_target(target)?;
        super::learn(&mut facts, &call);
        super::check_method(&request, &call)?;
        let (parts, body) = request.into_parts();
        pipeline::handle(&gate, caller, call, &parts.headers, body).await
    }
    .await;
    super::answer(answer, facts)
}
