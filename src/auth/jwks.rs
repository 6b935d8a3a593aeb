//! One issuer's JWKS: fetched at start, refreshed on an interval and on an unknown `kid` (at
//! most once per cooldown, single-flight), size- and time-capped, and kept when a refresh
//! fails. Never fetched from anything a token says (`jku`, `x5u` are ignored).
//!
//! A reload hands a [`Jwks`] whose URL and settings did not change to the new issuers, keys and
//! refresh task included ([`Jwks::serves`]); the refresh task of one no issuer uses any more is
//! aborted when it is dropped.

use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use jsonwebtoken::Algorithm;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use super::keys::{self, Key, KeyError};
use super::Auth;
use crate::telemetry::metrics;

/// The HTTP client for JWKS fetches (no redirects, capped time).
pub(super) fn client(config: &Auth) -> Result<reqwest::Client, KeyError> {
    reqwest::Client::builder()
        .timeout(config.jwks_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| KeyError::Client(err.to_string()))
}

/// The cached key set of one JWKS URL.
pub(super) struct Jwks {
    /// The configured issuer's name (the `issuer` label of `falgate_jwks_refresh_total`).
    issuer: Arc<str>,
    url: Url,
    client: reqwest::Client,
    algorithms: Vec<Algorithm>,
    max_bytes: usize,
    cooldown: Duration,
    refresh: Duration,
    /// The client's whole-fetch timeout (kept to tell whether a reload changed it).
    timeout: Duration,
    keys: RwLock<Option<Arc<Vec<Key>>>>,
    last_fetch: Mutex<Option<Instant>>,
    /// The background refresh, once started; aborted on drop.
    refresh_task: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Jwks {
    fn drop(&mut self) {
        if let Some(task) = self.refresh_task.get() {
            task.abort();
        }
    }
}

impl Jwks {
    pub(super) fn new(
        issuer: Arc<str>,
        url: Url,
        client: reqwest::Client,
        algorithms: Vec<Algorithm>,
        config: &Auth,
    ) -> Self {
        Self {
            issuer,
            url,
            client,
            algorithms,
            max_bytes: config.jwks_max_bytes,
            cooldown: config.jwks_cooldown,
            refresh: config.jwks_refresh,
            timeout: config.jwks_timeout,
            keys: RwLock::new(None),
            last_fetch: Mutex::new(None),
            refresh_task: OnceLock::new(),
        }
    }

    /// Whether this key set is the one an issuer configured with `url`, `algorithms` and
    /// `config` would fetch, so a reload may keep it (and its keys) instead of starting over.
    pub(super) fn serves(&self, issuer: &str, url: &Url, algorithms: &[Algorithm], config: &Auth) -> bool {
        *self.issuer == *issuer
            && self.url == *url
            && self.algorithms == algorithms
            && self.max_bytes == config.jwks_max_bytes
            && self.cooldown == config.jwks_cooldown
            && self.refresh == config.jwks_refresh
            && self.timeout == config.jwks_timeout
    }

    /// For a set no refresh task keeps yet (a new issuer's, on reload): fetches it once now and
    /// says why not when no keys could be loaded. A set already kept is the running config's
    /// business: `Ok`.
    pub(super) async fn load_once(&self) -> Result<(), String> {
        if self.refresh_task.get().is_some() || self.keys().is_some() {
            return Ok(());
        }
        *self.last_fetch.lock().await = Some(Instant::now());
        self.fetch().await
    }

    /// The current keys, if any were ever loaded.
    pub(super) fn keys(&self) -> Option<Arc<Vec<Key>>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Refetches unless a fetch happened within the cooldown; concurrent callers wait for one fetch.
    pub(super) async fn refresh_for_unknown_kid(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.cooldown) {
            return;
        }
        *last = Some(Instant::now());
        let _logged = self.fetch().await;
    }

    /// Keeps the keys fresh while the owner lives (once: a set handed to a reloaded issuer keeps
    /// its one task). Keys loaded already ([`Self::load_once`]) wait one interval first.
    pub(super) fn spawn_refresh(self: &Arc<Self>) {
        if self.refresh_task.get().is_some() {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval = self.refresh;
        let mut wait = if self.keys().is_some() {
            interval
        } else {
            Duration::ZERO
        };
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(wait).await;
                let Some(jwks) = weak.upgrade() else { return };
                *jwks.last_fetch.lock().await = Some(Instant::now());
                let _logged = jwks.fetch().await;
                wait = if jwks.keys().is_some() {
                    interval
                } else {
                    jwks.cooldown.max(Duration::from_secs(1))
                };
            }
        });
        if let Err(duplicate) = self.refresh_task.set(task.abort_handle()) {
            // Two callers raced to start it: keep the first task.
            duplicate.abort();
        }
    }

    /// The refresh task, for tests that check it ends.
    #[cfg(test)]
    pub(super) fn refresh_task(&self) -> Option<tokio::task::AbortHandle> {
        self.refresh_task.get().cloned()
    }

    /// Whether a fetch was started, for tests that need the refresh task past its first one.
    #[cfg(test)]
    pub(super) async fn fetch_started(&self) -> bool {
        self.last_fetch.lock().await.is_some()
    }

    async fn fetch(&self) -> Result<(), String> {
        match self
            .download()
            .await
            .and_then(|doc| keys::from_jwks(&doc, &self.algorithms))
        {
            Ok((keys, skipped)) => {
                metrics::jwks_refreshed(&self.issuer, true);
                if !skipped.is_empty() {
                    tracing::warn!(jwks = %self.url, ?skipped, "JWKS keys skipped");
                }
                *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(keys));
                Ok(())
            }
            Err(why) => {
                metrics::jwks_refreshed(&self.issuer, false);
                tracing::warn!(jwks = %self.url, error = %why, "JWKS fetch failed; keeping the last keys");
                Err(format!("{}: {why}", self.url))
            }
        }
    }

    async fn download(&self) -> Result<Vec<u8>, String> {
        let response = self
            .client
            .get(self.url.clone())
            .send()
            .await
            .map_err(|err| err.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|err| err.to_string())?;
            if body.len() + chunk.len() > self.max_bytes {
                return Err(format!("larger than {} bytes", self.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
