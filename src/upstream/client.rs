//! The pooled client for fal: rustls, the egress proxy's CONNECT tunnel, one timeout over the
//! whole connect, and one retry of a request an HTTP/2 server refused unprocessed.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Request, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{causes, FalResponse, Settings};

/// [`Upstream::send_once_or_twice`] on any client (tests give it an HTTP/2-only one).
pub(super) async fn send_retrying_refused<C>(
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

pub(super) fn clone_request(request: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Whether an HTTP/2 server said it did not process the request (what reqwest retried too).
pub(super) fn refused_unprocessed(err: &(dyn std::error::Error + 'static)) -> bool {
    causes(err)
        .find_map(|cause| cause.downcast_ref::<h2::Error>())
        .is_some_and(|h2| {
            h2.is_remote()
                && ((h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)))
        })
}

/// The pooled client type.
pub(super) type FalClient = Client<ConnectTimeout<hyper_rustls::HttpsConnector<Egress>>, Full<Bytes>>;

/// The TCP leg of a connection to fal: through the egress proxy's CONNECT tunnel when one is
/// configured and the destination is https and not in `NO_PROXY`, else direct. TLS to fal runs
/// inside the tunnel, so the proxy sees the host name and nothing else.
#[derive(Clone)]
pub(super) struct Egress {
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
pub(super) struct ConnectTimeout<C> {
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

/// rustls with the ring provider and the Mozilla roots compiled in (the container has no CA
/// bundle to trust or to go stale).
pub(super) fn tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

pub(super) fn client(config: &Settings, tls: Arc<rustls::ClientConfig>) -> FalClient {
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
