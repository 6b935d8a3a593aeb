//! The gate's shared state ([`Gate`]), built once from config, and [`serve`], which runs the
//! public listener (on the worker threads of [`crate::server`]) and the admin listener (on the
//! calling runtime), both already bound by the caller, until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::auth::{Authenticator, KeyError};
use crate::config::{Config, FalCredentials};
use crate::lifecycle::Lifecycle;
use crate::limits::{Limiter, LimitsConfigError};
use crate::ownership::redis::RedisOwnership;
use crate::ownership::Ownership;
use crate::policy::Policy;
use crate::redis::{RedisStore, StoreError};
use crate::schema::{CompileError, Schemas};
use crate::telemetry::{access_log, metrics};
use crate::upstream::budget::Budget;
use crate::upstream::Upstream;
use crate::{layers, routes};

/// Everything a request needs, built at startup and shared read-only.
pub struct Gate {
    pub config: Config,
    pub auth: Arc<Authenticator>,
    pub policy: Policy,
    pub upstream: Upstream,
    pub ownership: Ownership,
    pub schemas: Schemas,
    pub limiter: Limiter,
    /// Serving or draining (process-lived: carried over to every new gate).
    pub lifecycle: Arc<Lifecycle>,
    /// Bytes of request bodies held at once (process-lived).
    pub body_budget: Budget,
}

/// The two routers falgate serves.
pub struct App {
    /// `/api/fal/*`, `/healthz`, `/readyz`.
    pub public: Router,
    /// `/metrics`.
    pub admin: Router,
    /// How the public listener serves connections (see [`crate::server`]).
    pub server: crate::server::Settings,
    /// How long calls are still served after shutdown began (with `/readyz` at 503).
    pub drain_delay: Duration,
    /// The gate's drain state, driven by [`serve`].
    pub lifecycle: Arc<Lifecycle>,
}

/// How long before the drain timeout calls still waiting for fal are answered.
const ABANDON_BEFORE_CUT: Duration = Duration::from_secs(2);

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A startup failure.
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
}

/// Builds the gate and its routers from a validated config. Must run inside a Tokio runtime
/// (JWKS refresh tasks start here).
pub fn build(config: Config, credentials: &FalCredentials) -> Result<App, BuildError> {
    let auth = Arc::new(Authenticator::new(&config.auth)?);
    let redis = config.redis.as_ref().map(RedisStore::connect).transpose()?;
    let on_store_error = config.limits.on_store_error;
    auth.start();
    let lifecycle = Arc::new(Lifecycle::default());
    let gate = Gate {
        lifecycle: lifecycle.clone(),
        body_budget: Budget::new(config.body_budget_bytes),
        auth,
        policy: Policy::new(&config),
        upstream: Upstream::new(config.upstream.clone(), credentials, config.workers)?,
        ownership: Ownership::new(config.ownership, redis.clone().map(RedisOwnership::new), on_store_error),
        schemas: Schemas::compile(config.schema_sources.clone())?,
        limiter: Limiter::new(config.limits.clone(), redis)?,
        config,
    };
    let server = crate::server::Settings::of(&gate.config);
    let drain_delay = gate.config.drain.delay;
    let cors = gate.config.cors.clone();
    let caps = layers::HeaderCaps {
        per_header: gate.config.max_header_bytes,
        total: gate.config.max_headers_total_bytes,
    };
    let observer = access_log::Observer {
        trusted_proxies: Arc::from(gate.config.limits.trusted_proxies.as_slice()),
    };
    let public = layers::wrap(routes::router(Arc::new(gate)), cors, caps, observer);
    let handle = metrics::handle();
    let admin = Router::new().route("/metrics", get(move || std::future::ready(metrics::render(&handle))));
    Ok(App {
        public,
        admin,
        server,
        drain_delay,
        lifecycle,
    })
}

/// Serves both routers until `shutdown` resolves, then drains: `/readyz` answers 503 at once,
/// calls are still served for `drain_delay` (the balancer notices the 503 meanwhile), then the
/// listeners close and calls in flight get up to the drain timeout to finish.
pub async fn serve(
    public: TcpListener,
    admin: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(());
    let admin_stopped = stopped.clone();
    let admin_task = tokio::spawn(async move {
        let mut stopped = admin_stopped;
        axum::serve(admin, app.admin)
            .with_graceful_shutdown(async move {
                stopped.changed().await.ok();
            })
            .await
    });
    let mut public_stopped = stopped;
    let lifecycle = app.lifecycle;
    let public_task = crate::server::serve(public, app.public, app.server, lifecycle.clone(), async move {
        public_stopped.changed().await.ok();
    });
    let (delay, timeout) = (app.drain_delay, app.server.drain_timeout);
    tokio::spawn(async move {
        shutdown.await;
        lifecycle.begin_drain();
        tracing::info!(
            delay_ms = millis(delay),
            "draining: /readyz answers 503; new calls are served until the delay ends"
        );
        tokio::time::sleep(delay).await;
        stop.send(()).ok();
        // Calls still waiting for fal when the timeout nears answer before their connection is
        // cut: a submit cut silently would be retried by the client (or the balancer) as a
        // second paid job; answered 424 it is not.
        tokio::time::sleep(timeout.saturating_sub(ABANDON_BEFORE_CUT.min(timeout / 4))).await;
        lifecycle.abandon();
    });
    public_task.await?;
    admin_task.await.map_err(std::io::Error::other)?
}
