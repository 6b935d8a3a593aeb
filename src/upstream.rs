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
mod job_status;
pub mod relay;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{self, FalCredentials, FalHeaderRules, Pass, Priority, StoreIo};
use crate::error::{causes, GateError};
use crate::fal::headers::{self, Lifecycle, RequestTimeout};
use crate::fal::{Answer, Call, Host, Retention, Unknown};
use crate::telemetry::access_log;
use crate::telemetry::metrics::{self, UpstreamOutcome};
use crate::telemetry::trace_context::{self, TraceParent};

/// Caller headers passed on to fal; everything else (cookies, authorization, hop-by-hop,
/// `x-fal-target-url`, unknown `x-fal-*`) stays behind.
/// (`HeaderName`s, not strings: a string key is parsed into a name on every lookup.)
const FORWARDED: [HeaderName; 8] = [
    header::ACCEPT,
    HeaderName::from_static("x-fal-queue-priority"),
    RUNNER_HINT,
    REQUEST_TIMEOUT,
    LIFECYCLE_PREFERENCE,
    LIFECYCLE,
    NO_RETRY,
    STORE_IO,
];
const RUNNER_HINT: HeaderName = HeaderName::from_static("x-fal-runner-hint");
const REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-fal-request-timeout");
const LIFECYCLE_PREFERENCE: HeaderName = HeaderName::from_static("x-fal-object-lifecycle-preference");
const LIFECYCLE: HeaderName = HeaderName::from_static("x-fal-object-lifecycle");
const NO_RETRY: HeaderName = HeaderName::from_static("x-fal-no-retry");
/// fal's switch for not keeping a call's input and output (`0`).
const STORE_IO: HeaderName = HeaderName::from_static("x-fal-store-io");

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
        send_retrying_refused(self.client(), request).await
    }
}

/// [`Upstream::send_once_or_twice`] on any client (tests give it an HTTP/2-only one).
async fn send_retrying_refused<C>(
    client: &Client<C, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<FalResponse, hyper_util::client::legacy::Error>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let again = clone_request(&request);
    match client.request(request).await {
        Err(err) if refused_unprocessed(&err) => client.request(again).await,
        answered => answered,
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
    match call.facts().unknown {
        Unknown::KeepSpend => GateError::SubmitOutcomeUnknown(err.log_detail().unwrap_or_else(|| err.to_string())),
        // A token or upload URL that never arrived reaches no one: the error stands (refunded).
        Unknown::Refund | Unknown::NotPaid => err,
    }
}

/// Picks the caller headers that fal may see, refusing malformed values and writing each one in
/// its canonical form (`fal::headers`), applies the tier's rules over them (`rules`), and adds
/// the trace context and request id every call to fal carries.
pub fn forwarded_headers(inbound: &HeaderMap, call: &Call, rules: &FalHeaderRules) -> Result<HeaderMap, GateError> {
    let mut out = HeaderMap::new();
    for name in &FORWARDED {
        let mut values = inbound.get_all(name).iter();
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            return Err(GateError::Malformed(format!("header {name} may be sent only once")));
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

/// The value fal receives for a caller's header: parsed, bounded and rewritten canonically
/// (None: nothing to send, e.g. `x-fal-no-retry: 0`); a value that does not parse is a 400.
fn canonical_value(name: &HeaderName, value: &HeaderValue) -> Result<Option<HeaderValue>, GateError> {
    let invalid = || GateError::Malformed(format!("header {name} has an invalid value"));
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
            Lifecycle::parse(text).map_err(|_| invalid())?.to_header()
        }
        "x-fal-no-retry" => match headers::parse_no_retry(text).map_err(|_| invalid())? {
            true => "1".to_owned(),
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
fn apply_rules(call: &Call, rules: &FalHeaderRules, out: &mut HeaderMap) {
    if rules.runner_hint == Pass::Drop {
        out.remove(RUNNER_HINT);
    }
    if rules.no_retry == Pass::Drop {
        out.remove(NO_RETRY);
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
            let asked = out.get(&name).and_then(|v| Lifecycle::parse(v.to_str().ok()?).ok());
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
            let lifecycle = Lifecycle {
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
fn insert_text(out: &mut HeaderMap, name: HeaderName, text: &str) {
    if let Ok(value) = HeaderValue::from_str(text) {
        out.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/2 (cleartext) server that answers stream `n` (from 0) with `reset(n)`'s reason,
    /// or 200 when that is `None`; returns its address and the count of streams it saw.
    async fn h2_server(
        reset: fn(usize) -> Option<h2::Reason>,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut connection = h2::server::handshake(socket).await.unwrap();
                    while let Some(Ok((_request, mut respond))) = connection.accept().await {
                        match reset(counter.fetch_add(1, Ordering::SeqCst)) {
                            Some(reason) => respond.send_reset(reason),
                            None => {
                                let answer = http::Response::builder().status(200).body(()).unwrap();
                                respond.send_response(answer, true).unwrap();
                            }
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new()).http2_only(true).build_http()
    }

    fn post(addr: std::net::SocketAddr) -> Request<Full<Bytes>> {
        Request::post(format!("http://{addr}/fal-ai/flux/dev"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    /// A request an HTTP/2 server refused unprocessed (REFUSED_STREAM) is sent once more, and
    /// only once; any other reset is not retried (fal may have acted on it).
    #[tokio::test]
    async fn a_request_refused_unprocessed_over_http2_is_retried_exactly_once() {
        use std::sync::atomic::Ordering;
        let (addr, seen) = h2_server(|n| (n == 0).then_some(h2::Reason::REFUSED_STREAM)).await;
        let answer = send_retrying_refused(&h2_client(), post(addr)).await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(seen.load(Ordering::SeqCst), 2, "one retry");

        let (addr, seen) = h2_server(|_| Some(h2::Reason::REFUSED_STREAM)).await;
        let err = send_retrying_refused(&h2_client(), post(addr)).await.unwrap_err();
        assert!(refused_unprocessed(&err));
        assert_eq!(seen.load(Ordering::SeqCst), 2, "refused twice: no third try");

        let (addr, seen) = h2_server(|n| (n == 0).then_some(h2::Reason::INTERNAL_ERROR)).await;
        let err = send_retrying_refused(&h2_client(), post(addr)).await.unwrap_err();
        assert!(!refused_unprocessed(&err));
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "a reset after processing is never retried"
        );
    }

    fn submit() -> Call {
        crate::fal::parse_target("https://queue.fal.run/fal-ai/flux/dev").unwrap()
    }

    fn forwarded(inbound: &HeaderMap) -> Result<HeaderMap, GateError> {
        forwarded_headers(inbound, &submit(), &FalHeaderRules::default())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn fal_header_values_are_forwarded_in_canonical_form() {
        let out = forwarded(&headers(&[
            ("x-fal-request-timeout", "30.0"),
            ("x-fal-no-retry", "yes"),
            ("x-fal-store-io", "0"),
            ("x-fal-runner-hint", "session-42"),
            (
                "x-fal-object-lifecycle-preference",
                r#"{ "initial_acl": {"default": "forbid"}, "expiration_duration_seconds": 60 }"#,
            ),
        ]))
        .unwrap();
        assert_eq!(out["x-fal-request-timeout"], "30");
        assert_eq!(out["x-fal-no-retry"], "1");
        assert_eq!(out["x-fal-store-io"], "0");
        assert_eq!(out["x-fal-runner-hint"], "session-42");
        assert_eq!(
            out["x-fal-object-lifecycle-preference"],
            r#"{"expiration_duration_seconds":60,"initial_acl":{"default":"forbid"}}"#
        );
        assert!(!forwarded(&headers(&[("x-fal-no-retry", "0")]))
            .unwrap()
            .contains_key("x-fal-no-retry"));
    }

    #[test]
    fn tier_rules_drop_cap_and_force_fal_headers() {
        let rules = FalHeaderRules {
            runner_hint: Pass::Drop,
            no_retry: Pass::Drop,
            max_request_timeout: Some(RequestTimeout::new(60.0).unwrap()),
            max_object_expiration_seconds: Some(3600),
            object_lifecycle: None,
            store_io: StoreIo::Off,
        };
        let inbound = headers(&[
            ("x-fal-runner-hint", "a"),
            ("x-fal-no-retry", "1"),
            ("x-fal-request-timeout", "600"),
            ("x-fal-object-lifecycle", r#"{"expiration_duration_seconds":86400}"#),
            ("x-fal-store-io", "1"),
        ]);
        let out = forwarded_headers(&inbound, &submit(), &rules).unwrap();
        assert!(!out.contains_key("x-fal-runner-hint") && !out.contains_key("x-fal-no-retry"));
        assert_eq!(out["x-fal-request-timeout"], "60");
        assert_eq!(out["x-fal-object-lifecycle"], r#"{"expiration_duration_seconds":3600}"#);
        assert_eq!(out["x-fal-store-io"], "0");
        let short = headers(&[("x-fal-request-timeout", "5")]);
        assert_eq!(
            forwarded_headers(&short, &submit(), &rules).unwrap()["x-fal-request-timeout"],
            "5"
        );
        let forced = FalHeaderRules {
            object_lifecycle: Some(Lifecycle::parse(r#"{"expiration_duration_seconds":60}"#).unwrap()),
            ..FalHeaderRules::default()
        };
        let out = forwarded_headers(&inbound, &submit(), &forced).unwrap();
        assert_eq!(
            out["x-fal-object-lifecycle-preference"],
            r#"{"expiration_duration_seconds":60}"#
        );
        assert!(!out.contains_key("x-fal-object-lifecycle"));
    }

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
        let out = forwarded(&inbound).unwrap();
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
            ("x-fal-runner-hint", "has space"),
            ("x-fal-no-retry", "please"),
            ("x-fal-store-io", "false"),
            (
                "x-fal-object-lifecycle-preference",
                r#"{"expiration_duration_seconds":1,"expiration_duration_seconds":2}"#,
            ),
        ] {
            let mut inbound = HeaderMap::new();
            inbound.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
            assert!(forwarded(&inbound).is_err(), "{k}: {v}");
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
            forwarded(&inbound).unwrap()
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
        assert_eq!(forwarded(&inbound).unwrap()["x-request-id"], "3f2c9a1e-0b7d");
        inbound.insert("x-request-id", HeaderValue::from_static("a b"));
        assert!(!forwarded(&inbound).unwrap().contains_key("x-request-id"));
    }
}

#[cfg(test)]
mod tests_edges;
