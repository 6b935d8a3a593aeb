//! fal's webhook signing keys: the JWKS at `<storage_url>/.well-known/jwks.json` (fal's REST
//! host), its OKP/Ed25519 keys only. Fetched on the first delivery, kept, and fetched again
//! when a delivery verifies under none of them (fal rotated its key), at most once per
//! `jwks_cooldown` and one fetch at a time (single-flight), like the auth JWKS
//! (`auth/jwks.rs`). Time- and size-capped, no redirects; a failed fetch keeps the last keys.
//! Never fetched from anything a delivery says.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use futures_util::StreamExt;
use tokio::sync::Mutex;
use url::Url;

use crate::clock::Clock;

/// The `issuer` label of fal's JWKS fetches in `falgate_jwks_refresh_total`.
const ISSUER_LABEL: &str = "fal-webhooks";

/// The cached key set.
pub(crate) struct FalKeys {
    url: Url,
    client: reqwest::Client,
    max_bytes: usize,
    cooldown: Duration,
    keys: RwLock<Arc<Vec<VerifyingKey>>>,
    /// When the last fetch started (`Clock::instant`); held while one runs.
    last_fetch: Mutex<Option<Instant>>,
    clock: Clock,
}

/// What a look at the keys found.
pub(crate) enum Keys {
    /// The keys in hand (possibly just refetched).
    Known(Arc<Vec<VerifyingKey>>),
    /// None was ever loaded and fetching failed: fal's keys are unavailable.
    Unavailable,
}

impl FalKeys {
    /// The key set of fal's REST host `storage_url`.
    pub(crate) fn new(
        storage_url: &Url,
        timeout: Duration,
        max_bytes: usize,
        cooldown: Duration,
        clock: Clock,
    ) -> Result<Self, String> {
        let url = jwks_url(storage_url)?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| err.to_string())?;
        Ok(Self {
            url,
            client,
            max_bytes,
            cooldown,
            keys: RwLock::default(),
            last_fetch: Mutex::new(None),
            clock,
        })
    }

    /// The keys now, fetched first if none were ever loaded.
    pub(crate) async fn current(&self) -> Keys {
        let keys = self.cached();
        if !keys.is_empty() {
            return Keys::Known(keys);
        }
        self.refresh().await
    }

    /// Fetches again unless a fetch started within the cooldown (then the keys in hand); callers
    /// arriving during a fetch wait for it rather than start their own.
    pub(crate) async fn refresh(&self) -> Keys {
        let mut last = self.last_fetch.lock().await;
        let now = self.clock.instant();
        let fresh = last.is_some_and(|at| now.saturating_duration_since(at) < self.cooldown);
        if !fresh {
            *last = Some(now);
            let fetched = self.fetch().await;
            crate::telemetry::metrics::jwks_refreshed(ISSUER_LABEL, fetched.is_ok());
            match fetched {
                Ok(keys) => *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys),
                Err(why) => {
                    tracing::warn!(jwks = %self.url, error = %why, "fal's webhook keys could not be fetched; keeping the last ones")
                }
            }
        }
        drop(last);
        match self.cached() {
            keys if keys.is_empty() => Keys::Unavailable,
            keys => Keys::Known(keys),
        }
    }

    fn cached(&self) -> Arc<Vec<VerifyingKey>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn fetch(&self) -> Result<Vec<VerifyingKey>, String> {
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
        let keys = crate::fal::signature::jwks_keys(&body)?;
        if keys.is_empty() {
            return Err("no OKP/Ed25519 key in the document".into());
        }
        Ok(keys)
    }
}

/// `<storage_url>/.well-known/jwks.json`, any path of `storage_url` kept (the emulator serves
/// fal's REST host under `/rest.fal.ai`).
fn jwks_url(storage_url: &Url) -> Result<Url, String> {
    let joined = format!("{}/.well-known/jwks.json", storage_url.as_str().trim_end_matches('/'));
    Url::parse(&joined).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwks_is_under_the_rest_host_path() {
        let rest = Url::parse("http://127.0.0.1:9/rest.fal.ai").unwrap();
        assert_eq!(
            jwks_url(&rest).unwrap().as_str(),
            "http://127.0.0.1:9/rest.fal.ai/.well-known/jwks.json"
        );
        let fal = Url::parse("https://rest.fal.ai/").unwrap();
        assert_eq!(
            jwks_url(&fal).unwrap().as_str(),
            "https://rest.fal.ai/.well-known/jwks.json"
        );
    }
}
