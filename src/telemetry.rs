//! Logging setup (text or JSON on stderr, `RUST_LOG` filter), the access log and metrics.
//! Log lines never carry tokens, cookies, `FAL_KEY` or request bodies.

pub mod access_log;
pub mod metrics;
pub mod writer;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
pub use writer::LogGuard;

/// Installs the global subscriber once; later calls are no-ops (tests build many gates).
/// Lines go to stderr in batches from a writer thread ([`writer`]), so no request waits on a
/// write syscall or wakes another thread per line; keep the returned guard alive until exit,
/// it flushes what is buffered when dropped.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = writer::batch_writer(std::io::stderr());
    // Colour codes only for a person at a terminal; log files and pipelines get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _already_set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    guard
}
