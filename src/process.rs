//! What `serve` and `dev` share as a running process: binding the listeners, announcing them on
//! stdout, and reloading the config on SIGHUP.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::reload::reload_and_report;
use crate::state::Current;

/// Binds a listener, naming the address on failure.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Prints the bound addresses on stdout (tests and scripts read them when binding port 0).
pub fn announce(name: &str, public: &TcpListener, admin: &TcpListener) -> anyhow::Result<()> {
    say(&format!("{name} listening on http://{}", public.local_addr()?));
    say(&format!("{name} admin listening on http://{}", admin.local_addr()?));
    Ok(())
}

/// Writes one line to stdout, ignoring a closed stdout: a supervisor that stopped reading must not
/// take the server down (`println!` panics on a broken pipe).
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// From now on, SIGHUP reloads: `load` reads the config again (the same file and environment as
/// at start) and [`reload_and_report`] swaps it in or keeps the running one. The handler is in
/// place when this returns (before the listeners are announced), so a SIGHUP never takes the
/// default action of ending the process. Signals arriving during a reload are merged into one
/// more reload. Elsewhere than on Unix there is no SIGHUP and this does nothing.
pub fn reload_on_hangup(
    current: Arc<Current>,
    load: impl Fn() -> Result<Config, String> + Send + 'static,
) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                let loaded = load();
                reload_and_report(&current, loaded).await;
            }
        });
    }
    #[cfg(not(unix))]
    drop((current, load));
    Ok(())
}
