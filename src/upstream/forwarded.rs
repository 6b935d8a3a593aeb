//! What fal sees of the caller's headers: an allowlist, each value parsed and written in its
//! canonical form, the tier's rules over them, and the trace context and request id.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::fal::headers::{self, ObjectLifecycle, RequestTimeout};
use crate::fal::{Call, Priority, Retention};
use crate::policy::{FalHeaderRules, Forward, StoreIo};
use crate::telemetry::access_log;

use super::UpstreamError;
use crate::telemetry::trace_context::{self, TraceParent};

/// Caller headers passed on to fal; everything else (cookies, authorization, hop-by-hop,
/// `x-fal-target-url`, unknown `x-fal-*`) stays behind.
/// (`HeaderName`s, not strings: a string key is parsed into a name on every lookup.)
pub(super) const FORWARDED: [HeaderName; 9] = [
    header::ACCEPT,
    HeaderName::from_static("x-fal-queue-priority"),
    RUNNER_HINT,
    REQUEST_TIMEOUT,
    LIFECYCLE_PREFERENCE,
    LIFECYCLE,
    NO_RETRY,
    STORE_IO,
    DISABLE_FALLBACKS,
];
pub(super) const RUNNER_HINT: HeaderName = HeaderName::from_static("x-fal-runner-hint");
pub(super) const REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-fal-request-timeout");
pub(super) const LIFECYCLE_PREFERENCE: HeaderName = HeaderName::from_static("x-fal-object-lifecycle-preference");
pub(super) const LIFECYCLE: HeaderName = HeaderName::from_static("x-fal-object-lifecycle");
pub(super) const NO_RETRY: HeaderName = HeaderName::from_static("x-fal-no-retry");
/// fal's switch for not routing a call to a fallback app or machine.
pub(super) const DISABLE_FALLBACKS: HeaderName = HeaderName::from_static("x-fal-disable-fallbacks");
/// fal's switch for not keeping a call's input and output (`0`).
pub(super) const STORE_IO: HeaderName = HeaderName::from_static("x-fal-store-io");

/// W3C Trace Context: checked and passed on, or replaced (see [`trace_headers`]).
pub(super) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(super) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest forwarded header value.
pub(super) const MAX_HEADER_VALUE: usize = 2048;

/// Picks the caller headers that fal may see, refusing malformed values and writing each one in
/// its canonical form (`fal::headers`), applies the tier's rules over them (`rules`), and adds
/// the trace context and request id every call to fal carries.
pub fn forwarded_headers(inbound: &HeaderMap, call: &Call, rules: &FalHeaderRules) -> Result<HeaderMap, UpstreamError> {
    let mut out = HeaderMap::new();
    for name in &FORWARDED {
        let mut values = inbound.get_all(name).iter();
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            return Err(UpstreamError::MalformedHeader(format!(
                "header {name} may be sent only once"
            )));
        }
        if let Some(canonical) = canonical_value(name, value)? {
            out.insert(name.clone(), canonical);
        }
    }
    apply_rules(call, rules, &mut out);
    trace_headers(inbound, &mut out);
    Ok(out)
}

/// `traceparent` exactly as W3C writes it (else a fresh one: a malformed or repeated trace
/// header is not worth refusing a call over), its `tracestate` when bounded and printable, and
/// the request id `layers::access_log` put in `x-request-id` when it is a plain id.
pub(super) fn trace_headers(inbound: &HeaderMap, out: &mut HeaderMap) {
    let single = |name: &HeaderName| {
        let mut values = inbound.get_all(name).iter();
        values.next().filter(|_| values.next().is_none())
    };
    match single(&TRACEPARENT).filter(|v| TraceParent::parse(v.as_bytes()).is_some()) {
        Some(parent) => {
            out.insert(TRACEPARENT, parent.clone());
            if let Some(state) = single(&TRACESTATE).filter(|v| trace_context::valid_tracestate(v)) {
                out.insert(TRACESTATE, state.clone());
            }
        }
        None => {
            out.insert(TRACEPARENT, TraceParent::fresh().to_header());
        }
    }
    if let Some(id) = single(&access_log::X_REQUEST_ID).filter(|v| trace_context::valid_request_id(v.as_bytes())) {
        out.insert(access_log::X_REQUEST_ID, id.clone());
    }
}

/// The value fal receives for a caller's header: parsed, bounded and rewritten canonically
/// (None: nothing to send, e.g. `x-fal-no-retry: 0`); a value that does not parse is a 400.
pub(super) fn canonical_value(name: &HeaderName, value: &HeaderValue) -> Result<Option<HeaderValue>, UpstreamError> {
    let invalid = || UpstreamError::MalformedHeader(format!("header {name} has an invalid value"));
    let text = value
        .to_str()
        .ok()
        .filter(|t| t.len() <= MAX_HEADER_VALUE && !t.is_empty())
        .ok_or_else(invalid)?;
    let canonical = match name.as_str() {
        "x-fal-queue-priority" => Priority::parse(text)
            .map(|p| p.as_str().to_owned())
            .ok_or_else(invalid)?,
        "x-fal-request-timeout" => RequestTimeout::parse(text).map_err(|_| invalid())?.to_header(),
        "x-fal-runner-hint" => headers::check_runner_hint(text).map_err(|_| invalid())?.to_owned(),
        "x-fal-object-lifecycle-preference" | "x-fal-object-lifecycle" => {
            ObjectLifecycle::parse(text).map_err(|_| invalid())?.to_header()
        }
        "x-fal-no-retry" => match headers::parse_no_retry(text).map_err(|_| invalid())? {
            true => "1".to_owned(),
            false => return Ok(None),
        },
        "x-fal-disable-fallbacks" => match headers::parse_disable_fallbacks(text).map_err(|_| invalid())? {
            true => "true".to_owned(),
            false => return Ok(None),
        },
        "x-fal-store-io" => match headers::parse_store_io(text).map_err(|_| invalid())? {
            true => "1".to_owned(),
            false => "0".to_owned(),
        },
        // `accept`: any printable value (it only chooses between JSON and an event stream).
        _ => return Ok(Some(value.clone())),
    };
    HeaderValue::from_str(&canonical).map(Some).map_err(|_| invalid())
}

/// The tier's rules: drop what it may not send, lower what is over its caps, force what the
/// operator fixed. Run after the caller's values were made canonical, so a cap compares values.
pub(super) fn apply_rules(call: &Call, rules: &FalHeaderRules, out: &mut HeaderMap) {
    if rules.runner_hint == Forward::Drop {
        out.remove(RUNNER_HINT);
    }
    if rules.no_retry == Forward::Drop {
        out.remove(NO_RETRY);
    }
    if rules.disable_fallbacks == Forward::Drop {
        out.remove(DISABLE_FALLBACKS);
    }
    if let Some(max) = rules.max_request_timeout {
        let asked = out
            .get(REQUEST_TIMEOUT)
            .and_then(|v| RequestTimeout::parse(v.to_str().ok()?).ok());
        if asked.is_some_and(|asked| asked > max) {
            insert_text(out, REQUEST_TIMEOUT, &max.to_header());
        }
    }
    // The lifecycle header fal reads on this operation (the operations table's `retention`).
    let retention = match call.facts().retention {
        Retention::Preference => Some(LIFECYCLE_PREFERENCE),
        Retention::Object => Some(LIFECYCLE),
        Retention::None => None,
    };
    if let Some(max) = rules.max_object_expiration_seconds {
        for name in [LIFECYCLE_PREFERENCE, LIFECYCLE] {
            let asked = out
                .get(&name)
                .and_then(|v| ObjectLifecycle::parse(v.to_str().ok()?).ok());
            if let Some(mut lifecycle) = asked {
                lifecycle.cap_expiration(max);
                insert_text(out, name, &lifecycle.to_header());
            }
        }
        // No lifecycle sent on the header fal reads for this operation: fal would keep the
        // objects forever, so the cap is set there. The other lifecycle header (capped above, and
        // ignored by fal on this operation) does not count as sent.
        let sent = retention.as_ref().is_some_and(|name| out.contains_key(name));
        if let (false, Some(name)) = (sent, &retention) {
            let lifecycle = ObjectLifecycle {
                expiration_duration_seconds: Some(max),
                initial_acl: None,
            };
            insert_text(out, name.clone(), &lifecycle.to_header());
        }
    }
    if let (Some(forced), Some(name)) = (&rules.object_lifecycle, retention) {
        out.remove(LIFECYCLE_PREFERENCE);
        out.remove(LIFECYCLE);
        insert_text(out, name, &forced.to_header());
    }
    match rules.store_io {
        StoreIo::Caller => {}
        StoreIo::Off => {
            out.insert(STORE_IO, HeaderValue::from_static("0"));
        }
        StoreIo::On => {
            out.insert(STORE_IO, HeaderValue::from_static("1"));
        }
    }
}

/// Inserts a value built from checked parts (ASCII JSON or a number): it is a valid header value.
pub(super) fn insert_text(out: &mut HeaderMap, name: HeaderName, text: &str) {
    if let Ok(value) = HeaderValue::from_str(text) {
        out.insert(name, value);
    }
}
