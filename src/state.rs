//! The gate's state, split by how long it lives.
//!
//! A [`Gate`] is one snapshot of everything built from config: policy, schemas, limit settings,
//! issuers and keys, CORS, header caps, endpoint settings. A reload builds a whole new one
//! ([`Gate::next`]) and [`Current`] swaps it in atomically. What lives for the process — fal
//! connection pools, Redis connections, ownership records, limits state (rate buckets, quotas,
//! jobs in flight, idempotency records), JWKS caches by URL — sits behind `Arc`s that each new
//! snapshot takes over from the one before, so a reload wipes none of it.
//!
//! Each request loads the snapshot once ([`Snapshot`], attached by `layers` before anything
//! reads config) and holds it until its response is produced: a call in flight during a reload
//! finishes on the config it started with, the next call gets the new one.

pub mod reload;

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::Extensions;

use crate::auth::{Authenticator, KeyError};
use crate::clock::Clock;
use crate::config::{Config, FalCredentials};
use crate::events::redis::RedisEvents;
use crate::events::Events;
use crate::lifecycle::Lifecycle;
use crate::limits::{Limiter, LimitsConfigError};
use crate::ownership::redis::RedisOwnership;
use crate::ownership::Ownership;
use crate::policy::Policy;
use crate::redis::{RedisStore, StoreError};
use crate::schema::{CompileError, Schemas};
use crate::upstream::Upstream;

/// One snapshot: everything a request needs, shared read-only.
pub struct Gate {
    /// The config this snapshot was built from (restart-only settings at their running value).
    pub config: Config,
    pub auth: Authenticator,
    pub policy: Policy,
    pub schemas: Schemas,
    /// Settings built from this config over the process's limits stores.
    pub limiter: Limiter,
    /// Lives for the process: per-worker pools of connections to fal.
    pub upstream: Arc<Upstream>,
    /// Lives for the process: who submitted which request.
    pub ownership: Arc<Ownership>,
    /// Lives for the process: each caller's request events.
    pub events: Arc<Events>,
    /// Lives for the process: serving or draining.
    pub lifecycle: Arc<Lifecycle>,
    /// Lives for the process: bytes of request bodies held at once, and bodies in flight per caller.
    pub body_budget: crate::input::Bodies,
    /// Lives for the process: fal's webhook receiver (keys, delivered and submitted jobs, the
    /// forward queue).
    pub webhooks: Arc<crate::webhooks::Webhooks>,
}

/// Why a gate could not be built from a config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamBuildError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("schema {0}")]
    Schema(#[from] CompileError),
    #[error("[redis]: {0}")]
    Redis(#[from] StoreError),
    #[error("[limits]: {0}")]
    Limits(#[from] LimitsConfigError),
    #[error("[webhooks]: {0}")]
    Webhooks(String),
}

impl Gate {
    /// The first snapshot: builds the process-lived parts too (fal pools, Redis, stores). Must
    /// run inside a Tokio runtime; call [`Gate::start`] once it is in place.
    pub fn new(config: Config, credentials: &FalCredentials) -> Result<Self, BuildError> {
        Self::with_clock(config, credentials, Clock::system())
    }

    /// [`Self::new`] with the expiring stores (token cache, ownership records, in-process limits
    /// and idempotency records) reading `clock`; tests pass a `ManualClock`'s.
    pub fn with_clock(config: Config, credentials: &FalCredentials, clock: Clock) -> Result<Self, BuildError> {
        let auth = Authenticator::with_clock(&config.auth, clock.clone())?;
        // The log's principal hash: the configured key, else one derived from the fal key, so
        // every replica hashes a caller alike (restart-only: the first gate of the process sets it).
        let principal_key = match &config.principal_hash_key {
            Some(key) => crate::upstream::keyed_digest(
                secrecy::ExposeSecret::expose_secret(key).as_bytes(),
                b"falgate principal hash",
            ),
            None => credentials.derived_key("falgate principal hash"),
        };
        crate::telemetry::access_log::set_principal_key(principal_key);
        let redis = config.redis.as_ref().map(RedisStore::connect).transpose()?;
        let on_store_error = config.limits.on_store_error;
        let ownership = Arc::new(Ownership::with_clock(
            config.ownership,
            redis.clone().map(RedisOwnership::new),
            on_store_error,
            clock.clone(),
        ));
        let events = Arc::new(Events::new(
            config.events.clone(),
            ownership.clone(),
            redis.clone().map(RedisEvents::new),
            on_store_error,
        ));
        let webhooks = crate::webhooks::Webhooks::new(
            config.webhooks.clone(),
            crate::webhooks::Parts {
                storage_url: &config.upstream.storage_url,
                redis: redis.clone(),
                on_store_error,
                job_ttl: config.ownership.ttl,
                clock: clock.clone(),
                ended: events.clone(),
            },
        )
        .map_err(BuildError::Webhooks)?;
        Ok(Self {
            webhooks: Arc::new(webhooks),
            auth,
            policy: Policy::new(&config.policy()),
            upstream: Arc::new(Upstream::new(config.upstream.clone(), credentials, config.workers)?),
            events,
            ownership,
            schemas: Schemas::compile(config.schema_sources.clone())?,
            limiter: Limiter::with_clock(config.limits.clone(), redis, clock)?,
            lifecycle: Arc::default(),
            body_budget: crate::input::Bodies::new(config.body_budget_bytes),
            config,
        })
    }

    /// The snapshot of a new `config`, over this one's process-lived parts. `config` must already
    /// hold the running value of every restart-only setting ([`reload::keep_running`]). Reads
    /// schema and key files (blocking); fetches nothing.
    pub fn next(&self, config: Config) -> Result<Self, BuildError> {
        Ok(Self {
            auth: self.auth.next(&config.auth)?,
            policy: Policy::new(&config.policy()),
            schemas: Schemas::compile(config.schema_sources.clone())?,
            limiter: self.limiter.reconfigured(config.limits.clone())?,
            upstream: self.upstream.clone(),
            ownership: self.ownership.clone(),
            events: self.events.clone(),
            lifecycle: self.lifecycle.clone(),
            // A clone shares the one budget (its count is behind an `Arc`).
            body_budget: self.body_budget.clone(),
            webhooks: self.webhooks.clone(),
            config,
        })
    }

    /// Starts the background tasks (JWKS refresh); each runs while its part is in use.
    pub fn start(&self) {
        self.auth.start();
        self.events.start();
    }
}

/// The snapshot in force. Cheap to read on every request; replaced whole by a reload.
pub struct Current {
    gate: ArcSwap<Gate>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Current {
    /// Holds `gate` (already started) as the snapshot in force.
    pub fn new(gate: Gate) -> Self {
        Self {
            gate: ArcSwap::from_pointee(gate),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The snapshot in force now.
    pub fn load(&self) -> Arc<Gate> {
        self.gate.load_full()
    }

    /// The request's snapshot: the one attached to it, else the one in force (then attached, so
    /// every later reader of this request sees the same).
    pub fn of(&self, extensions: &mut Extensions) -> Arc<Gate> {
        if let Some(Snapshot(gate)) = extensions.get::<Snapshot>() {
            return gate.clone();
        }
        let gate = self.load();
        extensions.insert(Snapshot(gate.clone()));
        gate
    }

    fn swap(&self, gate: Gate) {
        // The old snapshot is dropped when its last call in flight ends.
        self.gate.store(Arc::new(gate));
    }
}

/// The snapshot a request runs on, loaded once (see [`Current::of`]).
#[derive(Clone)]
pub struct Snapshot(pub Arc<Gate>);

impl FromRequestParts<Arc<Current>> for Snapshot {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, current: &Arc<Current>) -> Result<Self, Self::Rejection> {
        Ok(Self(current.of(&mut parts.extensions)))
    }
}
