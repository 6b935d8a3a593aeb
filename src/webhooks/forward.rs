//! Forwarding a verified delivery to the caller's own hook (the allowlisted `fal_webhook` the
//! caller submitted with, which falgate replaced by its own): the body and fal's four signature
//! headers unchanged, so the caller's backend verifies fal's signature as it would without
//! falgate. In the background, off the receiver's answer: a bounded queue (`forward_queue`
//! deliveries and `forward_queue_bytes` of bodies, held until each forward ends; a delivery
//! that finds either full is dropped and logged), at most [`CONCURRENCY`] sends at once,
//! each attempt bounded by `forward_timeout`, at most `forward_attempts` attempts with a
//! doubling backoff from `forward_backoff`; no redirects followed. A hook's host must resolve to
//! a public address ([`PublicOnly`]): fal posted to the caller's hook from the internet before
//! falgate took the delivery, and falgate must not post from inside its own network instead.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::StreamExt;
use http::{HeaderName, HeaderValue};
use tokio::sync::mpsc;
use url::Url;

/// Forwards sent at once.
const CONCURRENCY: usize = 8;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One delivery to forward.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    pub(crate) url: Url,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Bytes,
}

/// A queued forward with its share of the byte budget (given back when it ends).
struct Queued {
    forward: Forward,
    _bytes: tokio::sync::OwnedSemaphorePermit,
}

/// How forwards are sent.
#[derive(Debug, Clone)]
pub(crate) struct Terms {
    pub(crate) attempts: u32,
    pub(crate) timeout: Duration,
    pub(crate) backoff: Duration,
    pub(crate) queue: usize,
    /// Body bytes queued or being sent at once.
    pub(crate) queue_bytes: usize,
}

/// The queue's sending end; the worker ends when it is dropped.
pub(crate) struct Forwarder {
    queue: mpsc::Sender<Queued>,
    bytes: Arc<tokio::sync::Semaphore>,
}

impl Forwarder {
    /// Starts the worker (inside a Tokio runtime).
    pub(crate) fn start(terms: Terms) -> Result<Self, String> {
        let client = client(&terms)?;
        let (queue, waiting) = mpsc::channel(terms.queue.max(1));
        let bytes = Arc::new(tokio::sync::Semaphore::new(
            terms.queue_bytes.min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        tokio::spawn(async move {
            tokio_stream::wrappers::ReceiverStream::new(waiting)
                .for_each_concurrent(CONCURRENCY, |queued: Queued| deliver(&client, &terms, queued.forward))
                .await;
        });
        Ok(Self { queue, bytes })
    }

    /// Queues `forward`; false (and logged) when the queue or its byte budget is full.
    pub(crate) fn enqueue(&self, forward: Forward) -> bool {
        let permit = u32::try_from(forward.body.len())
            .ok()
            .and_then(|len| self.bytes.clone().try_acquire_many_owned(len).ok());
        let queued = permit.map(|bytes| Queued { forward, _bytes: bytes });
        let sent = queued.is_some_and(|queued| self.queue.try_send(queued).is_ok());
        if !sent {
            tracing::warn!("webhook forward queue full: a caller's hook misses one delivery");
            crate::telemetry::metrics::webhook_forwarded("dropped");
        }
        sent
    }
}

/// The forwards' client: per-attempt timeout, no redirects, public addresses only.
fn client(terms: &Terms) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(terms.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(PublicOnly))
        .build()
        .map_err(|err| err.to_string())
}

/// Resolves a hook's host to its public addresses only: one that resolves to loopback, private,
/// shared (CGNAT), link-local (cloud metadata) or other non-public addresses would make the
/// forward a request into falgate's own network (SSRF). None left: the attempt fails. (An IP
/// literal never gets here: the policy allows hooks on host names only.)
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let public: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| is_public(addr.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `ip` is a public unicast address.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (b & 0xc0) == 64))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80)
            }
        },
    }
}

/// Sends `forward` until its hook answers 2xx or the attempts are spent.
async fn deliver(client: &reqwest::Client, terms: &Terms, forward: Forward) {
    let mut backoff = terms.backoff;
    for attempt in 1..=terms.attempts {
        let mut request = client.post(forward.url.clone()).body(forward.body.clone());
        for (name, value) in &forward.headers {
            request = request.header(name, value);
        }
        let outcome = match request.send().await {
            Ok(response) if response.status().is_success() => {
                crate::telemetry::metrics::webhook_forwarded("ok");
                return;
            }
            Ok(response) => format!("status {}", response.status()),
            Err(err) => format!("not sent: {err}"),
        };
        // The hook's host only: its path and query are the caller's.
        let host = forward.url.host_str().unwrap_or_default();
        tracing::info!(host, attempt, outcome, "webhook forward to the caller's hook failed");
        if attempt < terms.attempts {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    crate::telemetry::metrics::webhook_forwarded("failed");
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::routing::post;

    use super::*;

    /// A hook that fails its first `failures` calls, counting calls and keeping the last body.
    async fn hook(failures: usize) -> (Url, Arc<AtomicUsize>, Arc<std::sync::Mutex<Option<(String, Bytes)>>>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(std::sync::Mutex::new(None));
        let (seen, kept) = (calls.clone(), last.clone());
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: http::HeaderMap, body: Bytes| {
                let (seen, kept) = (seen.clone(), kept.clone());
                async move {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    let signature = headers
                        .get("x-fal-webhook-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    *kept.lock().unwrap() = Some((signature, body));
                    if n < failures {
                        http::StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        http::StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/hook", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, calls, last)
    }

    fn terms(attempts: u32) -> Terms {
        Terms {
            attempts,
            timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(1),
            queue: 4,
            queue_bytes: 1024,
        }
    }

    async fn until(calls: &AtomicUsize, n: usize) {
        for _ in 0..500 {
            if calls.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the hook got {} calls, not {n}", calls.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_forward_is_retried_until_the_hook_takes_it_and_arrives_unchanged() {
        let (url, calls, last) = hook(2).await;
        let forwarder = Forwarder::start(terms(5)).unwrap();
        let forward = Forward {
            url,
            headers: vec![(
                HeaderName::from_static("x-fal-webhook-signature"),
                HeaderValue::from_static("abc"),
            )],
            body: Bytes::from_static(b"{\"status\":\"OK\"}"),
        };
        assert!(forwarder.enqueue(forward));
        until(&calls, 3).await;
        let (signature, body) = last.lock().unwrap().clone().unwrap();
        assert_eq!((signature.as_str(), &body[..]), ("abc", &b"{\"status\":\"OK\"}"[..]));
        // Taken at the third attempt: no fourth.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_hook_whose_host_resolves_to_a_private_address_is_never_reached() {
        let (url, calls, _) = hook(0).await;
        let port = url.port().unwrap();
        let forward = |host: &str| Forward {
            url: Url::parse(&format!("http://{host}:{port}/hook")).unwrap(),
            headers: Vec::new(),
            body: Bytes::new(),
        };
        let client = client(&terms(1)).unwrap();
        // `localhost` resolves to loopback only: refused before any connection.
        deliver(&client, &terms(1), forward("localhost")).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        // The hook itself answers (an IP literal is not resolved: only tests forward to one).
        deliver(&client, &terms(1), forward("127.0.0.1")).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "34.120.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn queued_bodies_are_bounded_in_bytes_and_given_back_when_sent() {
        let (url, calls, _) = hook(0).await;
        let forwarder = Forwarder::start(terms(1)).unwrap();
        let forward = |len: usize| Forward {
            url: url.clone(),
            headers: Vec::new(),
            body: Bytes::from(vec![b' '; len]),
        };
        assert!(!forwarder.enqueue(forward(1025)), "over the byte budget: dropped");
        assert!(forwarder.enqueue(forward(1024)));
        until(&calls, 1).await;
        // Its bytes come back once sent: the budget takes a whole one again.
        for _ in 0..500 {
            if forwarder.bytes.available_permits() == 1024 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(forwarder.enqueue(forward(1024)));
        until(&calls, 2).await;
    }

    #[tokio::test]
    async fn attempts_are_bounded() {
        let (url, calls, _) = hook(usize::MAX).await;
        let forwarder = Forwarder::start(terms(3)).unwrap();
        let forward = Forward {
            url,
            headers: Vec::new(),
            body: Bytes::new(),
        };
        assert!(forwarder.enqueue(forward));
        until(&calls, 3).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
