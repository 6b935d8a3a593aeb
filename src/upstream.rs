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
//! that header and ignores headers it does not know; see `shared/fal-protocol.md` §2.3).

pub mod budget;
pub mod relay;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{self, FalCredentials};
use crate::error::{causes, GateError};
use crate::fal::{Call, Host, Op};
use crate::telemetry::access_log;
use crate::telemetry::metrics::{self, UpstreamOutcome};
use crate::telemetry::trace_context::{self, TraceParent};

/// Caller headers passed on to fal; everything else (cookies, authorization, hop-by-hop,
/// `x-fal-target-url`, unknown `x-fal-*`) stays behind.
/// (`HeaderName`s, not strings: a string key is parsed into a name on every lookup.)
const FORWARDED: [HeaderName; 7] = [
    header::ACCEPT,
    HeaderName::from_static("x-fal-queue-priority"),
    HeaderName::from_static("x-fal-runner-hint"),
    HeaderName::from_static("x-fal-request-timeout"),
    HeaderName::from_static("x-fal-object-lifecycle-preference"),
    HeaderName::from_static("x-fal-object-lifecycle"),
    HeaderName::from_static("x-fal-no-retry"),
];

/// W3C Trace Context: checked and passed on, or replaced (see [`trace_headers`]).
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest forwarded header value.
const MAX_HEADER_VALUE: usize = 2048;

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
    config: config::Upstream,
    /// Bytes of answers read whole at once, all workers together.
    budget: budget::Budget,
}

impl Upstream {
    /// Builds one pooled client per worker.
    pub fn new(
        config: config::Upstream,
        credentials: &FalCredentials,
        workers: usize,
    ) -> Result<Self, UpstreamBuildError> {
        let tls = tls_config()?;
        let clients = (0..workers.max(1)).map(|_| client(&config, tls.clone())).collect();
        let mut authorization =
            HeaderValue::from_str(&credentials.authorization()).map_err(|_| UpstreamBuildError::Key)?;
        authorization.set_sensitive(true);
        Ok(Self {
            clients,
            user_agent: HeaderValue::from_static(concat!("falgate/", env!("CARGO_PKG_VERSION"))),
            authorization,
            budget: budget::Budget::new(config.buffer_budget_bytes),
            config,
        })
    }

    /// The longest silence allowed between two body chunks.
    pub fn idle_timeout(&self) -> Duration {
        self.config.idle_timeout
    }

    /// The budget of answers read whole.
    pub fn budget(&self) -> &budget::Budget {
        &self.budget
    }

    /// The longest a relayed stream stays open.
    pub fn max_stream_lifetime(&self) -> Duration {
        self.config.max_stream_lifetime
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

    /// The worker's pooled client (worker 0's off the worker threads).
    fn client(&self) -> &FalClient {
        &self.clients[crate::server::worker_index() % self.clients.len()]
    }

    /// Sends a call to fal and waits for its response headers (bounded by the first-byte timeout).
    pub async fn send(&self, call: &Call, headers: HeaderMap, body: Option<Bytes>) -> Result<FalResponse, GateError> {
        // Formatted from validated, canonical parts and the configured base URL: it parses.
        let uri: Uri = self
            .url(call)
            .parse()
            .map_err(|err| GateError::Internal(format!("upstream URL: {err}")))?;
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
                Err(_elapsed) => (
                    Err(after_sent(call, GateError::UpstreamTimeout)),
                    UpstreamOutcome::Timeout,
                ),
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
        let again = clone_request(&request);
        match self.client().request(request).await {
            Err(err) if refused_unprocessed(&err) => self.client().request(again).await,
            answered => answered,
        }
    }
}

fn clone_request(request: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Whether an HTTP/2 server said it did not process the request (what reqwest retried too).
fn refused_unprocessed(err: &(dyn std::error::Error + 'static)) -> bool {
    causes(err)
        .find_map(|cause| cause.downcast_ref::<h2::Error>())
        .is_some_and(|h2| {
            h2.is_remote()
                && ((h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)))
        })
}

/// The pooled client type.
type FalClient = Client<ConnectTimeout<hyper_rustls::HttpsConnector<Egress>>, Full<Bytes>>;

/// The TCP leg of a connection to fal: through the egress proxy's CONNECT tunnel when one is
/// configured and the destination is https and not in `NO_PROXY`, else direct. TLS to fal runs
/// inside the tunnel, so the proxy sees the host name and nothing else.
#[derive(Clone)]
struct Egress {
    direct: HttpConnector,
    proxy: Option<Arc<hyper_util::client::proxy::matcher::Matcher>>,
}

impl tower::Service<Uri> for Egress {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        // Each call clones a connector that is always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let intercept = self
            .proxy
            .as_ref()
            .filter(|_| uri.scheme() == Some(&http::uri::Scheme::HTTPS))
            .and_then(|matcher| matcher.intercept(&uri));
        let mut direct = self.direct.clone();
        match intercept {
            Some(intercept) => {
                let mut tunnel =
                    hyper_util::client::legacy::connect::proxy::Tunnel::new(intercept.uri().clone(), direct);
                if let Some(auth) = intercept.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move { tunnel.call(uri).await.map_err(Into::into) })
            }
            None => Box::pin(async move { direct.call(uri).await.map_err(Into::into) }),
        }
    }
}

/// Bounds the whole connect — DNS, TCP and the TLS handshake — by `upstream.connect_timeout_ms`:
/// hyper-util's own connect timeout covers the TCP connect alone, and a stalled handshake would
/// otherwise run into the first-byte timeout and make a submit that never left look sent (424).
/// Written by hand: a dozen lines, and the crate that offers it wraps reads and writes too.
#[derive(Clone)]
struct ConnectTimeout<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower::Service<Uri> for ConnectTimeout<C>
where
    C: tower::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = C::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<C::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting to fal timed out").into()),
            }
        })
    }
}

/// fal's answer: status, headers and a body still arriving.
pub type FalResponse = axum::http::Response<hyper::body::Incoming>;

/// rustls with the ring provider and the Mozilla roots compiled in (the container has no CA
/// bundle to trust or to go stale).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn client(config: &config::Upstream, tls: Arc<rustls::ClientConfig>) -> FalClient {
    let mut http = HttpConnector::new();
    // https for fal, plain http for the emulator and tests (the URLs are the operator's).
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    // Notice a silently dead connection to fal (NAT timeouts) on long event streams.
    http.set_keepalive(Some(Duration::from_secs(15)));
    let egress = Egress {
        direct: http,
        proxy: config.egress_proxy.as_ref().map(|proxy| {
            Arc::new(
                hyper_util::client::proxy::matcher::Matcher::builder()
                    .https(proxy.url.clone())
                    .no(proxy.no_proxy.clone())
                    .build(),
            )
        }),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(tls))
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(egress);
    let connector = ConnectTimeout {
        inner: https,
        timeout: config.connect_timeout,
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

/// Maps a transport failure: before the request left (connect) it is safe to retry; after,
/// a paid call's outcome is unknown.
fn send_error(call: &Call, err: hyper_util::client::legacy::Error) -> GateError {
    if err.is_connect() && is_timeout(&err) {
        GateError::UpstreamTimeout
    } else if err.is_connect() {
        GateError::UpstreamUnreachable(Box::new(err))
    } else {
        after_sent(call, GateError::UpstreamUnreachable(Box::new(err)))
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
pub(crate) fn after_sent(call: &Call, err: GateError) -> GateError {
    match call.op {
        Op::Submit { .. } | Op::Run { .. } => {
            GateError::SubmitOutcomeUnknown(err.log_detail().unwrap_or_else(|| err.to_string()))
        }
        _ => err,
    }
}

/// Picks the caller headers that fal may see, refusing malformed values, and adds the trace
/// context and request id every call to fal carries.
pub fn forwarded_headers(inbound: &HeaderMap) -> Result<HeaderMap, GateError> {
    let mut out = HeaderMap::new();
    for name in &FORWARDED {
        let mut values = inbound.get_all(name).iter();
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            return Err(GateError::Malformed(format!("header {name} may be sent only once")));
        }
        check_value(name.as_str(), value)?;
        out.insert(name.clone(), value.clone());
    }
    trace_headers(inbound, &mut out);
    Ok(out)
}

/// `traceparent` exactly as W3C writes it (else a fresh one: a malformed or repeated trace
/// header is not worth refusing a call over), its `tracestate` when bounded and printable, and
/// the request id `telemetry::access_log` put in `x-request-id` when it is a plain id.
fn trace_headers(inbound: &HeaderMap, out: &mut HeaderMap) {
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
        assert_eq!(names, ["accept", "traceparent", "x-fal-queue-priority"]);
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

    #[test]
    fn a_valid_traceparent_and_its_state_pass_and_anything_else_gets_a_fresh_one() {
        const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut inbound = HeaderMap::new();
            for (k, v) in pairs {
                inbound.append(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            forwarded_headers(&inbound).unwrap()
        };
        let kept = with(&[("traceparent", CALLER), ("tracestate", "vendor=abc")]);
        assert_eq!(kept["traceparent"], CALLER);
        assert_eq!(kept["tracestate"], "vendor=abc");
        for bad in [
            &[][..],
            &[("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")],
            &[("traceparent", CALLER), ("traceparent", CALLER)],
            &[("traceparent", "garbage"), ("tracestate", "vendor=abc")],
        ] {
            let out = with(bad);
            let sent = out["traceparent"].to_str().unwrap();
            assert!(TraceParent::parse(sent.as_bytes()).is_some(), "{sent}");
            assert_ne!(sent, CALLER);
            assert!(!out.contains_key("tracestate"), "{bad:?}");
        }
    }

    #[test]
    fn the_request_id_is_forwarded_only_when_plain() {
        let mut inbound = HeaderMap::new();
        inbound.insert("x-request-id", HeaderValue::from_static("3f2c9a1e-0b7d"));
        assert_eq!(forwarded_headers(&inbound).unwrap()["x-request-id"], "3f2c9a1e-0b7d");
        inbound.insert("x-request-id", HeaderValue::from_static("a b"));
        assert!(!forwarded_headers(&inbound).unwrap().contains_key("x-request-id"));
    }
}

#[cfg(test)]
mod tests_edges;
