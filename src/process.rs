//! What `serve` and `dev` share as a running process: binding the listeners, announcing them on
//! stdout, reloading the config on SIGHUP, and the final line of a clean exit.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::reload::reload_and_report;
use crate::state::Current;

/// Binds a listener, naming the address on failure and, when another program holds it, how to
/// choose another (`elsewhere`, e.g. "--listen ADDR"; empty for an address no one chooses).
pub async fn bind(addr: std::net::SocketAddr, elsewhere: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && !elsewhere.is_empty() => Err(anyhow::anyhow!(
            "cannot listen on {addr}: the address is in use (is another falgate running?); choose another with {elsewhere}"
        )),
        Err(err) => Err(anyhow::Error::new(err).context(format!("cannot listen on {addr}"))),
    }
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

/// When the drain began, for the line a clean exit ends with.
#[derive(Clone, Debug, Default)]
pub struct DrainClock(Arc<OnceLock<Instant>>);

impl DrainClock {
    /// `shutdown`, noting when it resolved (the drain begins then).
    pub fn start_on(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let began = self.0.clone();
        async move {
            shutdown.await;
            began.set(Instant::now()).ok();
        }
    }

    /// The last line of a process that drained and stopped by itself (a process killed, or ended
    /// by a second signal, has none): an operator reading the log can tell the two apart.
    pub fn stopped_cleanly(&self, name: &str) {
        let drain_ms = self
            .0
            .get()
            .map(|began| u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX));
        tracing::info!(
            drain_ms,
            "{name} stopped cleanly: the drain ended and every listener is closed"
        );
    }
}
