//! Every public route in one table. Routes only parse: each turns its path, query and headers
//! into a [`crate::fal::Call`] and hands it to [`crate::pipeline::handle`], with the request's
//! [`crate::state::Snapshot`] of the gate and its [`Caller`] (extracted in `caller`).

mod caller;
mod events;
mod health;
mod links;
mod proxy;
mod queue;
mod requests;
mod usage;
mod webhook;

use std::sync::Arc;

use axum::routing::{any, get, MethodRouter};
use axum::Router;

use axum::response::{IntoResponse, Response};

use crate::auth::Caller;
use crate::error::GateError;
use crate::fal::{Call, GateRoute, Op};
use crate::playground;
use crate::state::Current;
use crate::telemetry::access_log::{CallFacts, PrincipalHash};

/// The public router (without the outer layers), on the snapshot in force.
pub fn router(current: Arc<Current>) -> Router {
    Router::new()
        .route("/api/fal/proxy", any(proxy::handle))
        .route("/api/fal/queue/{*path}", any(queue::queue))
        .route("/api/fal/run/{*path}", any(queue::run))
        .route(
            GateRoute::Usage.facts().path,
            gate_route(GateRoute::Usage, usage::handle),
        )
        .route(
            GateRoute::Requests.facts().path,
            gate_route(GateRoute::Requests, requests::handle),
        )
        .route(
            GateRoute::Events.facts().path,
            gate_route(GateRoute::Events, events::handle),
        )
        // fal's signed deliveries (no JWT: the signature is the credential; 404 unless
        // `[webhooks] receive`).
        .route(
            GateRoute::Webhook.facts().path,
            gate_route(GateRoute::Webhook, webhook::receive),
        )
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        // The playground (404 unless `falgate dev` or `[playground] enabled`).
        .route("/", get(playground::page).fallback(playground::other_method))
        .route("/playground/", get(playground::page).fallback(playground::other_method))
        .route(
            "/playground/api/endpoints",
            get(playground::endpoints).fallback(playground::other_method),
        )
        .route(
            "/playground/{asset}",
            get(playground::asset).fallback(playground::other_method),
        )
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(current)
}

/// A gate route's handler, served on the method its row of the table names.
fn gate_route<H, T>(route: GateRoute, handler: H) -> MethodRouter<Arc<Current>>
where
    H: axum::handler::Handler<T, Arc<Current>>,
    T: 'static,
{
    // The table's methods are plain ones (GET, POST): always a filter.
    let filter =
        axum::routing::MethodFilter::try_from(route.facts().method).unwrap_or(axum::routing::MethodFilter::GET);
    axum::routing::on(filter, handler)
}

/// A path no route serves: 404, and a log line naming the path (a typo'd client URL is found
/// from the log), at most [`SHOWN_PATH_BYTES`] of it; the text format escapes what a caller
/// sent like every other field. The query is never logged (it may carry anything).
async fn route_not_found(uri: axum::http::Uri) -> GateError {
    tracing::info!(path = %shown_path(uri.path()), "no route serves this path");
    GateError::RouteNotFound
}

/// How much of an unmatched path is logged.
const SHOWN_PATH_BYTES: usize = 200;

/// `path`, cut at a character boundary to at most [`SHOWN_PATH_BYTES`] bytes, `…` marking a cut.
fn shown_path(path: &str) -> std::borrow::Cow<'_, str> {
    if path.len() <= SHOWN_PATH_BYTES {
        return path.into();
    }
    let end = path
        .char_indices()
        .map(|(at, c)| at + c.len_utf8())
        .take_while(|&end| end <= SHOWN_PATH_BYTES)
        .last()
        .unwrap_or(0);
    format!("{}…", &path[..end]).into()
}

async fn method_not_allowed() -> GateError {
    GateError::MethodNotAllowed
}

/// What the access line reports about a call by `caller` (before anything is parsed).
fn facts(caller: &Caller) -> CallFacts {
    CallFacts {
        principal: Some(PrincipalHash::of(&caller.issuer, &caller.subject)),
        ..CallFacts::default()
    }
}

/// Adds the parsed call's operation and endpoint (or app) to `facts`.
fn learn(facts: &mut CallFacts, call: &Call) {
    facts.operation = Some(call.op_name());
    facts.endpoint = match &call.op {
        Op::Submit { endpoint, .. } | Op::Run { endpoint } | Op::RunStream { endpoint } => {
            Some(endpoint.as_str().to_owned())
        }
        Op::Status { app, .. } | Op::StatusStream { app, .. } | Op::Result { app, .. } | Op::Cancel { app, .. } => {
            Some(app.as_str().to_owned())
        }
        Op::StorageInitiate { .. } | Op::ClientToken { .. } => None,
    };
}

/// The route's answer, stamped with `facts` for the access line (`telemetry::access_log`).
fn answer(answer: Result<Response, GateError>, facts: CallFacts) -> Response {
    let mut response = answer.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(facts);
    response
}

/// Refuses a call made with another method than fal expects for it.
fn check_method(request: &axum::extract::Request, call: &crate::fal::Call) -> Result<(), GateError> {
    if request.method() == call.method() {
        Ok(())
    } else {
        Err(GateError::MethodNotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_row_of_the_table_is_the_receivers_path() {
        assert_eq!(GateRoute::Webhook.facts().path, crate::webhooks::RECEIVER_PATH);
    }

    #[test]
    fn a_long_unmatched_path_is_cut_at_a_character_boundary() {
        assert_eq!(shown_path("/nope"), "/nope");
        let long = format!("/{}", "é".repeat(300));
        let shown = shown_path(&long);
        assert!(shown.ends_with('…'), "{shown}");
        assert!(shown.len() <= SHOWN_PATH_BYTES + '…'.len_utf8(), "{}", shown.len());
        assert!(long.starts_with(shown.trim_end_matches('…')));
    }
}
