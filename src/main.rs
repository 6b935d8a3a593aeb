//! The `falgate` binary: parse the command line, run it, map failures to exit codes
//! (64 = unusable configuration, 1 = anything else).

use std::process::ExitCode;

use clap::Parser;
use falgate::cli::{self, Cli, Failure};

/// mimalloc: 8–22 % less CPU per proxied request than glibc's allocator in `bench/run`
/// (BENCHMARKS.md), with the same memory per open stream.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The main runtime is single-threaded: it runs the acceptor, the admin listener and background
/// tasks; requests are served on `workers` threads of their own (`falgate::server`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    return_freed_memory_at_once();
    match cli::run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(message)) => {
            eprintln!("falgate: {message}");
            ExitCode::from(64)
        }
        Err(Failure::Other(err)) => {
            eprintln!("falgate: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Freed memory goes back to the system when it is freed, not 10 ms later: mimalloc runs a
/// delayed purge only when the thread that freed the memory allocates again, so after a spike
/// (a 10 MB body on a worker that then idles) the memory stayed resident for good (issue 10:
/// 156 MB after a key flood, 35 MB with this). `MIMALLOC_PURGE_DELAY` in the environment still
/// wins.
fn return_freed_memory_at_once() {
    // `mi_option_purge_delay` in mimalloc.h (16th of `mi_option_e`, in v2 and v3 alike); the
    // -sys crate exports no constant for it.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` only stores an integer option; mimalloc reads options with
        // relaxed atomics, so setting one while other threads allocate is sound (and none do yet).
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }
}
