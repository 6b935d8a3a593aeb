//! `GET /api/fal/requests`: the caller's own recent requests, newest first, from the ownership
//! index ([`crate::ownership::Ownership::recent`]): only ever the caller's, since the index is
//! read by the caller's own tag. Spends one of the caller's poll rate, like `usage`; nothing
//! reaches fal. Query (each at most once, nothing else):
//!
//! - `limit`: 1 to `ownership.list_max` (at most 100), default `ownership.list_limit`;
//! - `endpoint`: only requests to this endpoint or one under it (`fal-ai/flux` covers
//!   `fal-ai/flux/dev`);
//! - `cursor`: the `next_cursor` of the page before (opaque).
//!
//! ```json
//! {"requests": [{"request_id": "…", "endpoint": "fal-ai/flux/dev",
//!   "submitted_at": "2026-12-07T14:00:00.000Z", "status": "COMPLETED", "outcome": "ok",
//!   "error_type": null, "completed_at": "2026-12-07T14:00:09.120Z",
//!   "status_url": "https://gate.example/api/fal/queue/fal-ai/flux/requests/…/status",
//!   "response_url": "https://gate.example/api/fal/queue/fal-ai/flux/requests/…"}],
//!  "next_cursor": "…"}
//! ```

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::RawQuery;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use super::links::Base;
use crate::auth::Caller;
use crate::error::GateError;
use crate::fal::{EndpointId, FalRequestId, GateRoute};
use crate::limits::Subject;
use crate::ownership::Summary;
use crate::state::{Gate, Snapshot};

/// The longest query accepted.
const MAX_QUERY_BYTES: usize = 2_048;

/// What the query asks for.
#[derive(Debug, PartialEq, Eq)]
struct Page {
    limit: usize,
    endpoint: Option<EndpointId>,
    /// Only requests before this one (in the newest-first order).
    before: Option<(u64, String)>,
}

pub(super) async fn handle(
    Snapshot(gate): Snapshot,
    caller: Caller,
    RawQuery(query): RawQuery,
    parts: Parts,
) -> Response {
    let route = GateRoute::Requests.facts();
    let mut facts = super::facts(&caller);
    facts.operation = Some(route.name);
    let answer = list(&gate, &caller, query.as_deref(), &parts).await;
    super::answer(answer, facts)
}

async fn list(gate: &Gate, caller: &Caller, query: Option<&str>, parts: &Parts) -> Result<Response, GateError> {
    let config = gate.config.ownership;
    // Refused before it spends anything.
    let page = parse(query.unwrap_or_default(), config.list_limit, config.list_max)?;
    let principal = caller.principal();
    let subject = Subject {
        principal: &principal,
        tier: &caller.tier,
    };
    if let Some(class) = GateRoute::Requests.facts().class {
        gate.limiter.admit(&subject, class, None, 0).await?;
    }
    let recent = gate.ownership.recent(&crate::redis::tag_of(&principal)).await?;
    let base = Base::of(gate, parts);
    let mut matching = recent
        .iter()
        .filter(|s| page.endpoint.as_ref().is_none_or(|e| covers(e, &s.endpoint)))
        .filter(|s| {
            page.before
                .as_ref()
                .is_none_or(|(ms, id)| (s.submitted_ms, &s.id) < (*ms, id))
        });
    let shown: Vec<&Summary> = matching.by_ref().take(page.limit).collect();
    let next_cursor = match (matching.next(), shown.last()) {
        (Some(_), Some(last)) => Value::String(cursor(last)),
        _ => Value::Null,
    };
    let requests: Vec<Value> = shown.iter().map(|s| entry(s, &base)).collect();
    let mut response = Json(json!({ "requests": requests, "next_cursor": next_cursor })).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn covers(filter: &EndpointId, endpoint: &str) -> bool {
    EndpointId::parse(endpoint).is_ok_and(|endpoint| filter.covers(&endpoint))
}

/// One request as listed.
fn entry(summary: &Summary, base: &Base) -> Value {
    let links = summary
        .app()
        .zip(FalRequestId::parse(&summary.id).ok())
        .map(|(app, id)| base.request(&app, &id));
    json!({
        "request_id": summary.id,
        "endpoint": summary.endpoint,
        "submitted_at": rfc3339(summary.submitted_ms),
        "status": summary.status,
        "outcome": summary.outcome,
        "error_type": summary.error_type,
        "completed_at": summary.completed_ms.map(rfc3339),
        "status_url": links.as_ref().map(|request| format!("{request}/status")),
        "response_url": links,
    })
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn cursor(last: &Summary) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{}", last.submitted_ms, last.id))
}

fn bad(message: &str) -> GateError {
    GateError::Malformed(message.into())
}

/// Reads the query: `limit`, `endpoint`, `cursor`, each at most once; anything else is refused.
fn parse(query: &str, default_limit: usize, max_limit: usize) -> Result<Page, GateError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(bad("the query is too long"));
    }
    let mut page = Page {
        limit: default_limit,
        endpoint: None,
        before: None,
    };
    let mut seen = [false; 3];
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let index = match &*key {
            "limit" => 0,
            "endpoint" => 1,
            "cursor" => 2,
            _ => return Err(bad("the query may only hold limit, endpoint and cursor")),
        };
        if std::mem::replace(&mut seen[index], true) {
            return Err(bad("a query parameter is given twice"));
        }
        match index {
            0 => {
                page.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|limit| (1..=max_limit).contains(limit))
                    .ok_or_else(|| {
                        GateError::Malformed(format!("limit must be a whole number from 1 to {max_limit}"))
                    })?;
            }
            1 => {
                page.endpoint = Some(
                    EndpointId::parse(&value).map_err(|_| bad("endpoint must be an endpoint id like owner/alias"))?,
                );
            }
            _ => page.before = Some(parse_cursor(&value).ok_or_else(|| bad("cursor is not one this route gave"))?),
        }
    }
    Ok(page)
}

fn parse_cursor(raw: &str) -> Option<(u64, String)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (ms, id) = text.split_once(':')?;
    let id = FalRequestId::parse(id).ok()?;
    Some((ms.parse().ok()?, id.as_str().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_takes_limit_endpoint_and_a_cursor_it_gave() {
        assert_eq!(
            parse("", 20, 100).unwrap(),
            Page {
                limit: 20,
                endpoint: None,
                before: None
            }
        );
        let summary = Summary::submitted("764cabcf-b745-4b3e-ae38-1200304cf45b".into(), "fal-ai/flux".into(), 42);
        let page = parse(
            &format!("limit=5&endpoint=fal-ai%2Fflux&cursor={}", cursor(&summary)),
            20,
            100,
        )
        .unwrap();
        assert_eq!(page.limit, 5);
        assert_eq!(page.endpoint.unwrap().as_str(), "fal-ai/flux");
        assert_eq!(page.before, Some((42, summary.id)));
        for bad in [
            "limit=0",
            "limit=101",
            "limit=-1",
            "limit=abc",
            "limit=5&limit=6",
            "endpoint=..%2Fx",
            "endpoint=",
            "cursor=nope",
            "cursor=",
            "other=1",
        ] {
            let refused = parse(bad, 20, 100).unwrap_err();
            assert_eq!(refused.code(), "malformed_request", "{bad}");
        }
    }
}
