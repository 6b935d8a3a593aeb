//! placeholder until the emulator branch is merged
use std::future::Future;
#[derive(Default, Clone, Debug)]
pub struct EmulatorConfig;
#[derive(Clone)]
pub struct Emulator;
impl Emulator {
    pub fn new(_c: EmulatorConfig) -> Self {
        Self
    }
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }
}
pub async fn serve(
    l: tokio::net::TcpListener,
    e: Emulator,
    s: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(l, e.router()).with_graceful_shutdown(s).await
}
