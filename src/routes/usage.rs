//! `GET /api/fal/usage`: the caller's tier and, for each limit that applies to them, the limit,
//! what is left and the seconds until it is full again, read by [`crate::limits::Limiter::usage`]
//! from the store the limiter admits with. The call spends one of the caller's poll rate (it runs
//! a store script per call, so it is rated like a status poll); nothing else is consumed and
//! nothing reaches fal. The answer is per caller and changes with every call, so it is never
//! cached (`no-store`).
//!
//! ```json
//! {"tier": "free", "limits": [
//!   {"name": "submit", "limit": 10, "window_seconds": 60, "remaining": 7, "reset_seconds": 18},
//!   {"name": "daily-credits", "limit": 100, "window_seconds": 86400, "remaining": 91, "reset_seconds": 40213},
//!   {"name": "inflight", "limit": 2, "window_seconds": null, "remaining": 2, "reset_seconds": 0}]}
//! ```

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::GateError;
use crate::fal::GateRoute;
use crate::limits::{OpClass, PolicyState, Subject};
use crate::state::Snapshot;

pub(super) async fn handle(Snapshot(gate): Snapshot, caller: Caller) -> Response {
    let route = GateRoute::Usage.facts();
    let mut facts = super::facts(&caller);
    facts.operation = Some(route.name);
    let principal = caller.principal();
    let subject = Subject {
        principal: &principal,
        tier: &caller.tier,
    };
    let class = route.class.unwrap_or(OpClass::Poll);
    let answer = match gate.limiter.admit(&subject, class, None, 0).await {
        Ok(_) => read(&gate, &subject).await,
        Err(refused) => Err(GateError::from(refused)),
    };
    super::answer(answer, facts)
}

/// What is left of each limit, read after the call was admitted (so it counts itself).
async fn read(gate: &crate::state::Gate, subject: &Subject<'_>) -> Result<Response, GateError> {
    match gate.limiter.usage(subject).await {
        Ok(states) => {
            let limits: Vec<Value> = states.iter().map(limit).collect();
            let mut response = Json(json!({ "tier": subject.tier, "limits": limits })).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        Err(refused) => Err(GateError::from(refused)),
    }
}

fn limit(state: &PolicyState) -> Value {
    json!({
        "name": state.name,
        "limit": state.quota,
        "window_seconds": state.window_seconds,
        "remaining": state.remaining,
        "reset_seconds": state.reset_seconds,
    })
}
