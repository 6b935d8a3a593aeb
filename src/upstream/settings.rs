//! What the client for fal is told (`[upstream]`, and the egress proxy from the environment):
//! `config` reads it, `upstream` owns it.

use std::time::Duration;

use url::Url;

/// Where fal is and how long to wait for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub queue_url: Url,
    pub run_url: Url,
    pub storage_url: Url,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub max_response_bytes: usize,
    pub max_result_bytes: usize,
    /// Bytes of answers read whole at once (all calls together); past it model output streams.
    pub buffer_budget_bytes: usize,
    /// A relayed event stream is ended cleanly once it has been open this long (the client
    /// re-polls), so no stream holds its slot forever.
    pub max_stream_lifetime: Duration,
    /// The egress proxy for https connections to fal, from `HTTPS_PROXY` / `ALL_PROXY`, with the
    /// hosts in `NO_PROXY` going direct (the conventions curl and reqwest follow).
    pub egress_proxy: Option<EgressProxy>,
}

/// An egress proxy (`http://[user:pass@]host:port`); its URL may hold a password, so it is
/// never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct EgressProxy {
    pub url: String,
    pub no_proxy: String,
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("url", &"<redacted>")
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}
