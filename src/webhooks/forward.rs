//! Forwarding a verified delivery to the caller's own hook (the allowlisted `fal_webhook` the
//! caller submitted with, which falgate replaced by its own): the body and fal's four signature
//! headers unchanged, so the caller's backend verifies fal's signature as it would without
//! falgate. In the background, off the receiver's answer: a bounded queue (`forward_queue`;
//! a delivery that finds it full is dropped and logged), at most [`CONCURRENCY`] sends at once,
//! each attempt bounded by `forward_timeout`, at most `forward_attempts` attempts with a
//! doubling backoff from `forward_backoff`; no redirects followed.

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

/// How forwards are sent.
#[derive(Debug, Clone)]
pub(crate) struct Terms {
    pub(crate) attempts: u32,
    pub(crate) timeout: Duration,
    pub(crate) backoff: Duration,
    pub(crate) queue: usize,
}

/// The queue's sending end; the worker ends when it is dropped.
pub(crate) struct Forwarder {
    queue: mpsc::Sender<Forward>,
}

impl Forwarder {
    /// Starts the worker (inside a Tokio runtime).
    pub(crate) fn start(terms: Terms) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(terms.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| err.to_string())?;
        let (queue, waiting) = mpsc::channel(terms.queue.max(1));
        tokio::spawn(async move {
            tokio_stream::wrappers::ReceiverStream::new(waiting)
                .for_each_concurrent(CONCURRENCY, |forward| deliver(&client, &terms, forward))
                .await;
        });
        Ok(Self { queue })
    }

    /// Queues `forward`; false (and logged) when the queue is full.
    pub(crate) fn enqueue(&self, forward: Forward) -> bool {
        match self.queue.try_send(forward) {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!("webhook forward queue full: a caller's hook misses one delivery");
                crate::telemetry::metrics::webhook_forwarded("dropped");
                false
            }
        }
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
