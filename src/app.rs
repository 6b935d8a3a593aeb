//! Building and serving: [`build`] makes the first snapshot of the gate ([`crate::state`]) and
//! the two routers over it; [`serve`] runs the public listener (on the worker threads of
//! [`crate::server`]) and the admin listener (on the calling runtime), both already bound by the
//! caller, until shutdown.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::config::{Config, FalCredentials};
use crate::layers::access_log;
use crate::lifecycle::Lifecycle;
pub use crate::state::BuildError;
use crate::state::{Current, Gate};
use crate::telemetry::metrics;
use crate::{layers, routes};

/// The two routers falgate serves, and the state they serve from.
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
    /// The snapshot in force; [`Current::reload`] replaces it.
    pub state: Arc<Current>,
}

/// The public listener's settings, from the config.
fn server_settings(config: &Config) -> crate::server::Settings {
    crate::server::Settings {
        workers: config.workers,
        connections: config.connections,
        // The request line and a little slack on top of the headers' own cap (431 beyond).
        max_head_bytes: config.max_headers_total_bytes.saturating_add(8 * 1024),
        drain_timeout: config.drain.timeout,
    }
}

/// How long before the drain timeout calls still waiting for fal are answered.
const ABANDON_BEFORE_CUT: Duration = Duration::from_secs(2);

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Builds the gate and its routers from a validated config. Must run inside a Tokio runtime
/// (JWKS refresh tasks start here).
pub fn build(config: Config, credentials: &FalCredentials) -> Result<App, BuildError> {
    build_with_clock(config, credentials, crate::clock::Clock::system())
}

/// [`build`] with the expiring stores reading `clock` (tests: a `ManualClock`'s).
pub fn build_with_clock(
    config: Config,
    credentials: &FalCredentials,
    clock: crate::clock::Clock,
) -> Result<App, BuildError> {
    let gate = Gate::with_clock(config, credentials, clock)?;
    gate.start();
    let server = server_settings(&gate.config);
    let drain_delay = gate.config.drain.delay;
    let lifecycle = gate.lifecycle.clone();
    let gate_config_trusted = gate.config.limits.trusted_proxies.clone();
    let state = Arc::new(Current::new(gate));
    // Frees the slots of jobs that ended unobserved; lives as long as the gate, until the drain.
    spawn_reconciler(Arc::downgrade(&state), lifecycle.clone());
    // Request ids are accepted from the proxies trusted at start.
    let observer = access_log::Observer {
        trusted_proxies: Arc::from(gate_config_trusted.as_slice()),
    };
    let public = layers::wrap(routes::router(state.clone()), state.clone(), observer);
    let handle = metrics::handle();
    let admin = Router::new().route("/metrics", get(move || std::future::ready(metrics::render(&handle))));
    Ok(App {
        public,
        admin,
        server,
        drain_delay,
        lifecycle,
        state,
    })
}

/// Starts the reconciler of the process (`limits::reconcile`): one tick per
/// `reconcile_interval_ms` of the snapshot in force, each handed that snapshot's limiter and fal
/// pool, until the drain begins (then the lease is given up) or the gate is gone.
fn spawn_reconciler(state: Weak<Current>, lifecycle: Arc<Lifecycle>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Some(gate) = state.upgrade().map(|current| current.load()) else {
                return;
            };
            let fal = Reconciled {
                upstream: &gate.upstream,
                events: &gate.events,
            };
            let Some(wait) = crate::limits::reconcile::tick(&gate.limiter, &fal, lifecycle.is_draining()).await else {
                return;
            };
            drop(gate);
            tokio::time::sleep(wait).await;
        }
    })
}

/// The reconciler's view of fal (the status of a job), and where the ends it learns go: the
/// owner's request index and event stream.
struct Reconciled<'a> {
    upstream: &'a crate::upstream::Upstream,
    events: &'a crate::events::Events,
}

impl crate::limits::reconcile::JobStatus for Reconciled<'_> {
    fn status(
        &self,
        app: &crate::fal::AppId,
        id: &crate::fal::FalRequestId,
    ) -> impl std::future::Future<Output = crate::limits::reconcile::JobState> + Send {
        self.upstream.status(app, id)
    }

    async fn ended(&self, tag: &str, id: &crate::fal::FalRequestId) {
        self.events.finished(tag, id, crate::ownership::Outcome::Unknown).await;
    }
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
    let mut admin_stopped = stopped.clone();
    let lifecycle = app.lifecycle;
    // The admin listener has the public one's connection timers and watchdog, and its own cap.
    let admin_task = tokio::spawn(crate::server::serve_admin(
        admin,
        app.admin,
        app.server,
        lifecycle.clone(),
        async move {
            admin_stopped.changed().await.ok();
        },
    ));
    let mut public_stopped = stopped;
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
