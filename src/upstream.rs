//! The only code that talks to fal: pooled HTTP clients (one per server worker), the
//! server-held credentials, the host → base URL map and the connect / first-byte timeouts.
//!
//! The client is hyper-util's pooled client with rustls (HTTP/1.1 keep-alive, HTTP/2 where fal
//! offers it by ALPN), used directly rather than through reqwest: the request URI is formatted
//! from the call's typed parts into an `http::Uri` (no `Url` parse per request) and no redirect,
//! cookie, proxy or decompression layer sits on a path that needs none of them. What reqwest did
//! that this path needs is here: one timeout over the whole connect (DNS, TCP, TLS), TCP
//! keep-alive, the egress proxy from `HTTPS_PROXY` / `NO_PROXY` (a CONNECT tunnel, so the proxy
//! never sees the key), and one retry of a request an HTTP/2 server refused unprocessed.
//!
//! Only this module sets an outbound `Authorization` header. What is forwarded from the caller
//! is decided in [`forwarded_headers`]: an allowlist, never the caller's credentials or cookies.
//! Every call to fal carries a W3C `traceparent` (the caller's or falgate's span when valid,
//! else a fresh one) and the falgate request id as `x-request-id` (fal documents no meaning for
//! that header and ignores headers it does not know: `@fal-ai/client` sends a caller's own
//! `headers` to it, `libs/client/src/queue.ts` in `fal-ai/fal-js`).

mod client;
mod credentials;
mod error;
mod forwarded;
mod job_status;
pub mod relay;
mod settings;

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Request, Uri};
use bytes::Bytes;
use http_body_util::Full;

use crate::fal::{Answer, Call, Host, Unknown};
use crate::telemetry::metrics::{self, UpstreamOutcome};

pub(crate) use self::credentials::keyed_digest;
pub use self::credentials::FalCredentials;
pub use self::error::UpstreamError;
pub(crate) use self::error::{cause_chain, causes};
pub use self::settings::{EgressProxy, Settings};

use self::client::{client, send_retrying_refused, tls_config, FalClient};
pub use self::forwarded::forwarded_headers;

/// Why the client for fal could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("cannot set up TLS for fal: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the fal key cannot be sent as a header value")]
    Key,
}

/// The client for fal, built once at startup.
pub struct Upstream {
    /// One pooled client per server worker ([`crate::server`]): a connection to fal is driven
    /// by the thread that uses it, so relaying never wakes another thread.
    clients: Vec<FalClient>,
    /// `falgate/<version>`.
    user_agent: HeaderValue,
    /// `Key …`, built once and marked sensitive so no debug or trace output prints it.
    authorization: HeaderValue,
    config: Settings,
    /// Bytes of answers read whole at once, all workers together.
    budget: crate::budget::Budget,
}

impl Upstream {
    /// Builds one pooled client per worker.
    pub fn new(config: Settings, credentials: &FalCredentials, workers: usize) -> Result<Self, UpstreamBuildError> {
        let tls = tls_config()?;
        let clients = (0..workers.max(1)).map(|_| client(&config, tls.clone())).collect();
        let mut authorization =
            HeaderValue::from_str(&credentials.authorization()).map_err(|_| UpstreamBuildError::Key)?;
        authorization.set_sensitive(true);
        Ok(Self {
            clients,
            user_agent: HeaderValue::from_static(concat!("falgate/", env!("CARGO_PKG_VERSION"))),
            authorization,
            budget: crate::budget::Budget::new(config.buffer_budget_bytes),
            config,
        })
    }

    /// The longest silence allowed between two body chunks.
    pub fn idle_timeout(&self) -> Duration {
        self.config.idle_timeout
    }

    /// The budget of answers read whole.
    pub fn budget(&self) -> &crate::budget::Budget {
        &self.budget
    }

    /// The longest a relayed stream stays open.
    pub fn max_stream_lifetime(&self) -> Duration {
        self.config.max_stream_lifetime
    }

    /// The largest answer read whole for this call: model output may be larger than control answers.
    pub fn max_answer_bytes(&self, call: &Call) -> usize {
        match call.facts().answer {
            Answer::Output => self.config.max_result_bytes,
            Answer::Control | Answer::Json | Answer::Stream | Answer::StreamWhenTaken => self.config.max_response_bytes,
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

    /// The worker's pooled client (worker 0's off the worker threads).
    fn client(&self) -> &FalClient {
        &self.clients[crate::server::worker_index() % self.clients.len()]
    }

    /// Sends a call to fal and waits for its response headers (bounded by the first-byte timeout).
    pub async fn send(
        &self,
        call: &Call,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<FalResponse, UpstreamError> {
        // Formatted from validated, canonical parts and the configured base URL: it parses
        // (in place: the formatted text becomes the URI's buffer).
        let uri = Uri::from_maybe_shared(Bytes::from(self.url(call)))
            .map_err(|err| UpstreamError::Internal(format!("upstream URL: {err}")))?;
        let has_body = body.is_some();
        let mut request = Request::new(Full::new(body.unwrap_or_default()));
        *request.method_mut() = call.method();
        *request.uri_mut() = uri;
        let mut headers = headers;
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        headers.insert(header::USER_AGENT, self.user_agent.clone());
        if has_body {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        *request.headers_mut() = headers;
        let started = std::time::Instant::now();
        let (answer, outcome) =
            match tokio::time::timeout(self.config.first_byte_timeout, self.send_once_or_twice(request)).await {
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    (Ok(response), UpstreamOutcome::Status(status))
                }
                Ok(Err(err)) => {
                    let outcome = match err.is_connect() && is_timeout(&err) {
                        true => UpstreamOutcome::Timeout,
                        false => UpstreamOutcome::Error,
                    };
                    (Err(send_error(call, err)), outcome)
                }
                Err(_elapsed) => (Err(after_sent(call, UpstreamError::Timeout)), UpstreamOutcome::Timeout),
            };
        metrics::upstream_answered(call.op_name(), outcome, started.elapsed());
        answer
    }

    /// Sends the request, and once more when an HTTP/2 server refused it without processing it
    /// (REFUSED_STREAM, or a graceful GOAWAY before it was read): safe even for a paid submit, by
    /// the protocol's guarantee (RFC 9113 §8.1.4), and what reqwest did before this client.
    async fn send_once_or_twice(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<FalResponse, hyper_util::client::legacy::Error> {
        // Only an HTTP/2 connection can refuse a request unprocessed, and this client gets one
        // only over TLS (ALPN): a plain `http://` fal (a sidecar, the bench) needs no copy of
        // the request kept for a retry.
        if request.uri().scheme() != Some(&axum::http::uri::Scheme::HTTPS) {
            return self.client().request(request).await;
        }
        send_retrying_refused(self.client(), request).await
    }
}

/// fal's answer: status, headers and a body still arriving.
pub type FalResponse = axum::http::Response<hyper::body::Incoming>;

/// Maps a transport failure: before the request left (connect) it is safe to retry; after,
/// a paid call's outcome is unknown.
fn send_error(call: &Call, err: hyper_util::client::legacy::Error) -> UpstreamError {
    if err.is_connect() && is_timeout(&err) {
        UpstreamError::Timeout
    } else if err.is_connect() {
        UpstreamError::Unreachable(Box::new(err))
    } else {
        after_sent(call, UpstreamError::Unreachable(Box::new(err)))
    }
}

/// Whether a connect error was the connect timeout (an `io::Error` of kind `TimedOut` in its chain).
fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    causes(err).any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

/// The error for a failure after the request was sent: paid calls (submit, sync run) whose
/// outcome is unknown get a status the fal client does not retry; other calls keep `err`.
pub(crate) fn after_sent(call: &Call, err: UpstreamError) -> UpstreamError {
    match call.facts().unknown {
        Unknown::KeepSpend => UpstreamError::OutcomeUnknown(err.detail()),
        // A token or upload URL that never arrived reaches no one: the error stands (refunded).
        Unknown::Refund | Unknown::NotPaid => err,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_edges;
