//! What the listeners are told: addresses, worker threads, `[connections]` and the drain.

use std::net::SocketAddr;
use std::time::Duration;

use super::{file, millis, positive, ConfigError};
use crate::server::Connections;

/// Graceful shutdown: `/readyz` answers 503 at once and new calls are still served for `delay`
/// (so the balancer notices), then the listener closes and calls in flight get up to `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub delay: Duration,
    pub timeout: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(5),
            timeout: Duration::from_secs(25),
        }
    }
}

pub(super) fn socket(key: &str, raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.parse()
        .map_err(|_| ConfigError(format!("`{key}` must be an address like 0.0.0.0:8080, got {raw:?}")))
}

/// `workers = 0` means one per core (what the machine or its cgroup lets this process use).
pub(super) fn workers(raw: usize) -> Result<usize, ConfigError> {
    const MAX: usize = crate::server::MAX_WORKERS;
    match raw {
        0 => Ok(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)),
        n if n > MAX => Err(ConfigError(format!("`workers` must be at most {MAX}, got {n}"))),
        n => Ok(n),
    }
}

pub(super) fn connections(raw: &file::RawConnections) -> Result<Connections, ConfigError> {
    let streams = raw.http2_max_concurrent_streams;
    if streams == 0 {
        return Err(ConfigError(
            "`connections.http2_max_concurrent_streams` must be greater than zero".into(),
        ));
    }
    Ok(Connections {
        max_open: positive("connections.max_open", raw.max_open)?,
        header_read_timeout: millis("connections.header_read_timeout_ms", raw.header_read_timeout_ms)?,
        keep_alive_timeout: millis("connections.keep_alive_timeout_ms", raw.keep_alive_timeout_ms)?,
        write_timeout: millis("connections.write_timeout_ms", raw.write_timeout_ms)?,
        send_buffer_bytes: raw.send_buffer_bytes,
        http2_max_concurrent_streams: streams,
        http2_keep_alive_interval: millis(
            "connections.http2_keep_alive_interval_ms",
            raw.http2_keep_alive_interval_ms,
        )?,
        min_send_bytes_per_second: raw.min_send_bytes_per_second,
        admin_max_open: positive("connections.admin_max_open", raw.admin_max_open)?,
        http2_max_open_streams: positive("connections.http2_max_open_streams", raw.http2_max_open_streams)?,
    })
}
