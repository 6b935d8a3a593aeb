//! What the public listener is told: the server's own settings, which `app` builds from the
//! config (`config` reads `[connections]` into [`Connections`]).

use std::time::Duration;

/// How the public listener treats connections.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub workers: usize,
    pub connections: Connections,
    /// Largest request head hyper buffers (all headers together, plus the request line).
    pub max_head_bytes: usize,
    /// How long connections may take to finish once shutdown began.
    pub drain_timeout: Duration,
}

/// Client connections on the public listener (`[connections]`, read by `config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// Open connections at most; at the cap new ones wait in the kernel's accept backlog.
    pub max_open: usize,
    /// Time a connection may take to send a complete request head once it has started one
    /// (and a new connection to start sending).
    pub header_read_timeout: Duration,
    /// Time a connection with no request in flight may stay open, silent.
    pub keep_alive_timeout: Duration,
    /// Time a write to a client may stay blocked (a client that stops reading), streams included.
    pub write_timeout: Duration,
    /// The kernel's send buffer per client connection (`SO_SNDBUF`); 0 leaves it to the
    /// kernel, which grows it to megabytes, so a client that stops reading is noticed only
    /// once that much is queued.
    pub send_buffer_bytes: usize,
    pub http2_max_concurrent_streams: u32,
    /// Interval of HTTP/2 pings to a client (a dead peer is dropped after one unanswered).
    pub http2_keep_alive_interval: Duration,
    /// Least a response's client must take, in bytes per second averaged over each
    /// `write_timeout` it waits (at least one frame per window); below it the stream is reset
    /// (HTTP/2) or the connection closed (HTTP/1). 0 keeps only the one-frame rule.
    pub min_send_bytes_per_second: u64,
    /// Connections open at once on the admin listener (`/metrics`), with the same timers.
    pub admin_max_open: usize,
    /// HTTP/2 streams with a response in progress, all connections together; past it a new
    /// stream is answered 429 `concurrency_limited` (headers only).
    pub http2_max_open_streams: usize,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            max_open: 10_000,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            send_buffer_bytes: 262_144,
            http2_max_concurrent_streams: 64,
            http2_keep_alive_interval: Duration::from_secs(30),
            min_send_bytes_per_second: 8 * 1024,
            admin_max_open: 64,
            http2_max_open_streams: 10_000,
        }
    }
}
