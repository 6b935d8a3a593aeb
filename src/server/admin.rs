//! The admin listener: the public listener's connection code on the main runtime, with its own
//! connection cap.

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::Router;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::acceptor::next_connection;
use super::worker::{Builders, Serving};
use super::Settings;
use crate::lifecycle::Lifecycle;

/// Serves the admin listener (`/metrics`) on the calling runtime until `shutdown` resolves, with
/// the public listener's timers and watchdog and at most `connections.admin_max_open`
/// connections (at the cap new ones wait in the backlog); then drains like a worker.
pub async fn serve_admin(
    listener: TcpListener,
    router: Router,
    settings: Settings,
    lifecycle: Arc<Lifecycle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let serving = Serving {
        builders: Arc::new(Builders::new(&settings)),
        router,
        lifecycle,
        graceful: GracefulShutdown::new(),
        closing: tokio::sync::watch::channel(false).0,
        connections: settings.connections,
        streams: Arc::new(Semaphore::new(
            (settings.connections.admin_max_open)
                .saturating_mul(settings.connections.http2_max_concurrent_streams as usize)
                .min(Semaphore::MAX_PERMITS),
        )),
    };
    let permits = Arc::new(Semaphore::new(
        settings.connections.admin_max_open.min(Semaphore::MAX_PERMITS),
    ));
    let accept = async {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = next_connection(&listener, "admin").await;
            stream.set_nodelay(true).ok();
            serving.spawn(stream, permit, None, peer);
        }
    };
    tokio::select! {
        () = accept => {}
        () = shutdown => {}
    }
    drop(listener);
    serving.drain(settings.drain_timeout).await;
    Ok(())
}
