//! Test support: a TCP proxy in front of Redis that a test can cut and restore, to drive the
//! store-down paths (crates.io `chaosproxy.rs`). Cutting drops every open connection and
//! refuses new ones until restored.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; dropping it stops accepting.
pub(crate) struct ChaosProxy {
    pub(crate) addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    accept: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(watch::channel(false).0);
        let accept = tokio::spawn(accept_loop(listener, upstream, cut.clone()));
        Ok(Self { addr, cut, accept })
    }

    /// Drops every connection and refuses new ones.
    pub(crate) fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets connections through again.
    pub(crate) fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, cut: Arc<watch::Sender<bool>>) {
    while let Ok((inbound, _)) = listener.accept().await {
        if *cut.borrow() {
            continue; // dropping `inbound` closes it: the client sees a refused connection
        }
        let mut cut_seen = cut.subscribe();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut inbound, mut outbound) = (inbound, outbound);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cut_seen.wait_for(|cut| *cut) => {}
            }
        });
    }
}
