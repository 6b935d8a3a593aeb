//! `GET /api/fal/events`: the caller's own request events as server-sent events (`events.rs`
//! says where they come from). Each event:
//!
//! ```text
//! id: 1733580000123-0
//! event: finished
//! data: {"type":"finished","request_id":"…","endpoint":"fal-ai/flux/dev","status":"COMPLETED",
//!        "outcome":"ok","status_url":"…/requests/…/status","response_url":"…/requests/…"}
//! ```
//!
//! `type` is `submitted` or `finished`; `outcome` (`ok`, `error`, with `error_type`) once
//! known; the URLs are falgate's REST routes (`links.rs`). `Last-Event-ID` resumes after that
//! event from the caller's bounded history; without it the stream starts with the next event.
//! A comment line `: ok` opens the stream (the caller is subscribed from then on) and `: keepalive`
//! follows every `events.keepalive_seconds` of quiet.
//!
//! Bounded like a relayed status stream: one of the caller's stream slots (refused with 429 when
//! none is left, before anything is spent), one poll of the caller's rate, ended cleanly at
//! `upstream.max_stream_lifetime_seconds` (the client reconnects with `Last-Event-ID`), and the
//! listener's watchdog deadlines (`crate::body::Bounds`: the lifetime, and twice the keepalive
//! without a frame moving).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use super::links::Base;
use crate::auth::Caller;
use crate::error::GateError;
use crate::events::{Event, EventId, Events};
use crate::fal::{EndpointId, FalRequestId, GateRoute};
use crate::limits::{Slot, Subject};
use crate::state::{Gate, Snapshot};
use crate::telemetry::metrics;

pub(super) async fn handle(Snapshot(gate): Snapshot, caller: Caller, parts: Parts) -> Response {
    let mut facts = super::facts(&caller);
    facts.operation = Some(GateRoute::Events.facts().name);
    let answer = open(&gate, &caller, &parts).await;
    super::answer(answer, facts)
}

async fn open(gate: &Gate, caller: &Caller, parts: &Parts) -> Result<Response, GateError> {
    let route = GateRoute::Events.facts();
    let resume = match parts.headers.get("last-event-id") {
        None => None,
        Some(raw) => Some(
            raw.to_str()
                .ok()
                .and_then(|raw| raw.trim().parse::<EventId>().ok())
                .ok_or_else(|| GateError::Malformed("Last-Event-ID is not an event id this route gave".into()))?,
        ),
    };
    let principal = caller.principal();
    let subject = Subject {
        principal: &principal,
        tier: &caller.tier,
    };
    // A slot first, so a caller refused for want of one spends nothing; freed with the body.
    let slot = match route.slot {
        Some(kind) => Some(gate.limiter.open_slot(&subject, kind).await?),
        None => None,
    };
    if let Some(class) = route.class {
        gate.limiter.admit(&subject, class, None, 0).await?;
    }
    let tag = crate::redis::tag_of(&principal);
    // Subscribed before the history is read, so nothing falls between the two.
    let wake = gate.events.subscribe();
    let after = match resume {
        Some(id) => id,
        None => gate.events.latest(&tag).await?,
    };
    let keepalive = Duration::from_secs(gate.events.config().keepalive_seconds)
        .min(gate.upstream.idle_timeout() / 2)
        .max(Duration::from_millis(100));
    let lifetime = gate.upstream.max_stream_lifetime();
    let stream = Stream {
        events: gate.events.clone(),
        tag,
        after,
        wake,
        base: Base::of(gate, parts),
        pending: VecDeque::from([Bytes::from_static(b": ok\n\n")]),
        keepalive: tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive),
        deadline: Box::pin(tokio::time::sleep(lifetime)),
        catch_up: resume.is_some(),
        _held: (slot, metrics::StreamGuard::open()),
    };
    let body = futures_util::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next().await?;
        Some((Ok::<_, std::io::Error>(chunk), stream))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response.extensions_mut().insert(crate::body::Bounds {
        lifetime: Some(lifetime),
        idle: Some(keepalive * 2),
    });
    Ok(response)
}

/// One open event stream.
struct Stream {
    events: Arc<Events>,
    tag: String,
    /// The last event sent (or the one to resume after).
    after: EventId,
    wake: tokio::sync::broadcast::Receiver<Arc<str>>,
    base: Base,
    pending: VecDeque<Bytes>,
    keepalive: tokio::time::Interval,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Read the history before waiting (a resume).
    catch_up: bool,
    _held: (Option<Slot>, metrics::StreamGuard),
}

impl Stream {
    /// The next chunk, `None` at the lifetime.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if std::mem::take(&mut self.catch_up) {
                self.read_history().await;
                continue;
            }
            tokio::select! {
                () = &mut self.deadline => return None,
                _ = self.keepalive.tick() => {
                    // Also the backstop for a missed wake-up.
                    if !self.read_history().await {
                        self.pending.push_back(Bytes::from_static(b": keepalive\n\n"));
                    }
                }
                woken = self.wake.recv() => match woken {
                    Ok(tag) if *tag == *self.tag => {
                        self.read_history().await;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        self.read_history().await;
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    /// Queues the caller's events after the last sent; true when there were any.
    async fn read_history(&mut self) -> bool {
        let Ok(events) = self.events.since(&self.tag, self.after).await else {
            return false;
        };
        for event in &events {
            self.after = self.after.max(event.id);
            self.pending.push_back(frame(event, &self.base));
        }
        !events.is_empty()
    }
}

/// One event as an SSE frame.
fn frame(event: &Event, base: &Base) -> Bytes {
    let mut data = serde_json::to_value(&event.body).unwrap_or(Value::Null);
    let request = EndpointId::parse(&event.body.endpoint)
        .ok()
        .zip(FalRequestId::parse(&event.body.request_id).ok())
        .map(|(endpoint, id)| base.request(&endpoint.app(), &id));
    if let (Some(object), Some(request)) = (data.as_object_mut(), request) {
        object.insert("status_url".into(), Value::String(format!("{request}/status")));
        object.insert("response_url".into(), Value::String(request));
    }
    // A fixed word, and JSON holds no raw newline: a frame cannot be split.
    let kind = match event.body.kind.as_str() {
        "submitted" => "submitted",
        "finished" => "finished",
        _ => "message",
    };
    Bytes::from(format!("id: {}\nevent: {kind}\ndata: {data}\n\n", event.id))
}
