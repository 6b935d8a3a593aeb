//! The request links in answers on the REST routes. fal's submit and status answers carry
//! `response_url`, `status_url` and `cancel_url` on `queue.fal.run`, where a caller has no
//! credentials. On `/api/fal/queue/...` each one present is replaced by falgate's own REST route
//! for the request, built from the typed call and the validated request id (never from fal's
//! strings), under the public base:
//!
//! - `public_url` when configured (set it in production: the one origin callers use);
//! - else the request's own origin: `X-Forwarded-Proto` and `X-Forwarded-Host` (last element,
//!   what the nearest proxy wrote) only from a peer in `limits.trusted_proxies`, else `http`
//!   (falgate itself serves plain HTTP) and the request's `Host`; a value that is not a plain
//!   `host[:port]` is never used, and without a usable host the links are origin-relative paths.
//!
//! The proxy route keeps fal's URLs: `@fal-ai/client` sends them back as `x-fal-target-url`.
//! Events of a status stream are relayed unchanged: a stream is never rewritten in flight, and
//! fal's JS client ignores these fields (it builds its URLs itself).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::error::GateError;
use crate::fal::{AppId, Call, FalRequestId, Op};
use crate::state::Gate;

/// The three link fields of fal's submit and status answers.
const LINKS: [&str; 3] = ["response_url", "status_url", "cancel_url"];

/// Where the REST routes are reached: `scheme://host[:port][/prefix]`, no trailing `/`; empty
/// when no origin is known (the links are then origin-relative paths).
pub(super) struct Base(String);

impl Base {
    /// The base for links in the answer to the request whose head is `parts`.
    pub(super) fn of(gate: &Gate, parts: &Parts) -> Self {
        if let Some(url) = &gate.config.public_url {
            return Self(url.as_str().trim_end_matches('/').to_owned());
        }
        let trusted = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|ConnectInfo(peer)| crate::limits::is_trusted_peer(*peer, gate.limiter.trusted_proxies()));
        let forwarded = |name: &str| trusted.then(|| last_element(&parts.headers, name)).flatten();
        let scheme = match forwarded("x-forwarded-proto").map(str::to_ascii_lowercase).as_deref() {
            Some("https") => "https",
            _ => "http",
        };
        let host = forwarded("x-forwarded-host")
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .or_else(|| parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()))
            .filter(|host| is_plain_authority(host));
        match host {
            Some(host) => Self(format!("{scheme}://{}", host.to_ascii_lowercase())),
            None => Self(String::new()),
        }
    }

    pub(super) fn request(&self, app: &AppId, id: &FalRequestId) -> String {
        format!("{}/api/fal/queue/{app}/requests/{id}", self.0)
    }
}

/// Rewrites the links of a successful submit or status answer to `call`; any other answer,
/// and a body that is not a JSON object, is returned as it was.
pub(super) async fn rewrite(response: Response, call: &Call, base: &Base) -> Response {
    let (app, known_id) = match &call.op {
        Op::Submit { endpoint, .. } => (endpoint.app(), None),
        Op::Status { app, id, .. } => (app.clone(), Some(id.clone())),
        // Their answers carry no links of fal's queue (or keep fal's: event streams).
        Op::StatusStream { .. }
        | Op::Result { .. }
        | Op::Cancel { .. }
        | Op::Run { .. }
        | Op::RunStream { .. }
        | Op::StorageInitiate { .. }
        | Op::ClientToken { .. } => return response,
    };
    if !response.status().is_success() || response.extensions().get::<std::sync::Arc<GateError>>().is_some() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // A control answer, already read whole (bounded by `upstream.max_response_bytes`).
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(err) => return GateError::UpstreamBadResponse(err.to_string()).into_response(),
    };
    let rewritten = serde_json::from_slice::<Map<String, Value>>(&bytes)
        .ok()
        .and_then(|mut answer| {
            let id = match known_id {
                Some(id) => id,
                None => FalRequestId::parse(answer.get("request_id")?.as_str()?).ok()?,
            };
            let request = base.request(&app, &id);
            for (field, link) in LINKS.iter().zip([
                request.clone(),
                format!("{request}/status"),
                format!("{request}/cancel"),
            ]) {
                if let Some(value) = answer.get_mut(*field) {
                    *value = Value::String(link);
                }
            }
            serde_json::to_vec(&answer).ok()
        });
    let body = match rewritten {
        Some(rewritten) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Body::from(rewritten)
        }
        None => Body::from(bytes),
    };
    Response::from_parts(parts, body)
}

/// The last comma-separated element of the last `name` header, trimmed.
fn last_element<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let value: &HeaderValue = headers.get_all(name).iter().next_back()?;
    value.to_str().ok()?.rsplit(',').next().map(str::trim)
}

/// `host` or `host:port` and nothing else: no userinfo, path, or odd bytes.
fn is_plain_authority(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= 255
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        && raw.parse::<Authority>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_host_and_port_is_an_authority() {
        for good in [
            "gate.example.com",
            "gate.example.com:8443",
            "127.0.0.1:8080",
            "[::1]:80",
        ] {
            assert!(is_plain_authority(good), "{good}");
        }
        for bad in [
            "",
            "user@gate.example",
            "gate.example/x",
            "evil.com\r\nx: y",
            "a b",
            "gate.example?x",
        ] {
            assert!(!is_plain_authority(bad), "{bad}");
        }
    }

    #[test]
    fn the_last_element_is_what_the_nearest_proxy_wrote() {
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-proto", HeaderValue::from_static("http, https"));
        assert_eq!(last_element(&headers, "x-forwarded-proto"), Some("https"));
        assert_eq!(last_element(&headers, "x-forwarded-host"), None);
    }
}
