//! The only code that talks to fal: one pooled `reqwest` client, the server-held credentials,
//! the host → base URL map and the connect / first-byte timeouts.
//!
//! Only this module sets an outbound `Authorization` header. What is forwarded from the caller
//! is decided in [`forwarded_headers`]: an allowlist, never the caller's credentials or cookies.

pub mod relay;

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use crate::config::{self, FalCredentials};
use crate::error::GateError;
use crate::fal::{Call, Host, Op};

/// Caller headers passed on to fal; everything else (cookies, authorization, hop-by-hop,
/// `x-fal-target-url`, unknown `x-fal-*`) stays behind.
const FORWARDED: [&str; 7] = [
    "accept",
    "x-fal-queue-priority",
    "x-fal-runner-hint",
    "x-fal-request-timeout",
    "x-fal-object-lifecycle-preference",
    "x-fal-object-lifecycle",
    "x-fal-no-retry",
];

/// Longest forwarded header value.
const MAX_HEADER_VALUE: usize = 2048;

/// Why the client for fal could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("cannot build the HTTP client for fal: {0}")]
    Client(#[from] reqwest::Error),
    #[error("the fal key cannot be sent as a header value")]
    Key,
}

/// The client for fal, built once at startup.
pub struct Upstream {
    /// One pooled client per server worker ([`crate::server`]): a connection to fal is driven
    /// by the thread that uses it, so relaying never wakes another thread.
    clients: Vec<reqwest::Client>,
    /// `Key …`, built once and marked sensitive so no debug or trace output prints it.
    authorization: HeaderValue,
    config: config::Upstream,
}

impl Upstream {
    /// Builds one pooled client per worker.
    pub fn new(
        config: config::Upstream,
        credentials: &FalCredentials,
        workers: usize,
    ) -> Result<Self, UpstreamBuildError> {
        let clients = (0..workers.max(1))
            .map(|_| {
                reqwest::Client::builder()
                    .connect_timeout(config.connect_timeout)
                    .pool_idle_timeout(config.pool_idle_timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("falgate/", env!("CARGO_PKG_VERSION")))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut authorization =
            HeaderValue::from_str(&credentials.authorization()).map_err(|_| UpstreamBuildError::Key)?;
        authorization.set_sensitive(true);
        Ok(Self {
            clients,
            authorization,
            config,
        })
    }

    /// The longest silence allowed between two body chunks.
    pub fn idle_timeout(&self) -> Duration {
        self.config.idle_timeout
    }

    /// The largest answer read whole for this call: model output may be larger than control answers.
    pub fn max_answer_bytes(&self, call: &Call) -> usize {
        match call.op {
            Op::Result { .. } | Op::Run { .. } => self.config.max_result_bytes,
            _ => self.config.max_response_bytes,
        }
    }

    /// The absolute upstream URL for a call: configured base + canonical path and query.
    pub fn url(&self, call: &Call) -> String {
        let base = match call.host() {
            Host::Queue => &self.config.queue_url,
            Host::Run => &self.config.run_url,
            Host::Storage => &self.config.storage_url,
        };
        format!("{}{}", base.as_str().trim_end_matches('/'), call.path_and_query())
    }

    /// Sends a call to fal and waits for its response headers (bounded by the first-byte timeout).
    pub async fn send(
        &self,
        call: &Call,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, GateError> {
        let client = &self.clients[crate::server::worker_index() % self.clients.len()];
        let mut request = client
            .request(call.method(), self.url(call))
            .headers(headers)
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone());
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        match tokio::time::timeout(self.config.first_byte_timeout, request.send()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(send_error(call, err)),
            Err(_elapsed) => Err(after_sent(call, GateError::UpstreamTimeout)),
        }
    }
}

/// Maps a transport failure: before the request left (connect) it is safe to retry; after,
/// a paid call's outcome is unknown.
fn send_error(call: &Call, err: reqwest::Error) -> GateError {
    if err.is_connect() && err.is_timeout() {
        GateError::UpstreamTimeout
    } else if err.is_connect() {
        GateError::UpstreamUnreachable(err)
    } else {
        after_sent(call, GateError::UpstreamUnreachable(err))
    }
}

/// The error for a failure after the request was sent: paid calls (submit, sync run) whose
/// outcome is unknown get a status the fal client does not retry; other calls keep `err`.
pub(crate) fn after_sent(call: &Call, err: GateError) -> GateError {
    match call.op {
        Op::Submit { .. } | Op::Run { .. } => {
            GateError::SubmitOutcomeUnknown(err.log_detail().unwrap_or_else(|| err.to_string()))
        }
        _ => err,
    }
}

/// Picks the caller headers that fal may see, refusing malformed values.
pub fn forwarded_headers(inbound: &HeaderMap) -> Result<HeaderMap, GateError> {
    let mut out = HeaderMap::new();
    for name in FORWARDED {
        let mut values = inbound.get_all(name).iter();
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            return Err(GateError::Malformed(format!("header {name} may be sent only once")));
        }
        check_value(name, value)?;
        out.insert(HeaderName::from_static(name), value.clone());
    }
    Ok(out)
}

fn check_value(name: &str, value: &HeaderValue) -> Result<(), GateError> {
    let text = value
        .to_str()
        .ok()
        .filter(|t| t.len() <= MAX_HEADER_VALUE && !t.is_empty());
    let valid = match (name, text) {
        (_, None) => false,
        ("x-fal-queue-priority", Some(t)) => matches!(t, "normal" | "low"),
        ("x-fal-request-timeout", Some(t)) => t.parse::<f64>().is_ok_and(|secs| secs.is_finite() && secs > 1.0),
        (_, Some(_)) => true,
    };
    if valid {
        Ok(())
    } else {
        Err(GateError::Malformed(format!("header {name} has an invalid value")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowlisted_headers_are_forwarded() {
        let mut inbound = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer t"),
            ("cookie", "a=b"),
            ("x-fal-target-url", "https://fal.run/a/b"),
            ("x-fal-queue-priority", "low"),
            ("connection", "keep-alive"),
            ("x-fal-client-proxy", "x"),
            ("accept", "text/event-stream"),
        ] {
            inbound.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = forwarded_headers(&inbound).unwrap();
        let mut names: Vec<_> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "x-fal-queue-priority"]);
    }

    #[test]
    fn invalid_fal_header_values_are_refused() {
        for (k, v) in [
            ("x-fal-queue-priority", "urgent"),
            ("x-fal-request-timeout", "1"),
            ("x-fal-request-timeout", "NaN"),
        ] {
            let mut inbound = HeaderMap::new();
            inbound.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
            assert!(forwarded_headers(&inbound).is_err(), "{k}: {v}");
        }
    }
}
