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
    return_freed_memory();
    // This runtime's own thread (the acceptor, the admin listener, JWKS refreshes).
    tokio::spawn(falgate::server::every(falgate::server::UPKEEP_EVERY, collect));
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

/// Freed memory goes back to the system within about half a second, not at once and not never.
/// mimalloc purges freed memory after `purge_delay`, but only when the thread that freed it
/// allocates or collects again: after a spike (a 10 MB body on a worker that then idles) the
/// memory stayed resident for good (issue 10: 156 MB after a key flood). A delay of 0 purged
/// every freed page at once, and cost 4–12 % of the CPU per proxied call under load (issue 23:
/// page faults and TLB shootdowns as pages emptied by one call were handed back and touched
/// again by the next; BENCHMARKS.md, round 5). So: a 100 ms delay, and every thread that serves
/// calls collects every 250 ms on its own runtime (`mi_collect(false)`: its retired pages back
/// to the arenas, then what is due purged): the workers ([`falgate::server::set_worker_upkeep`])
/// and this main runtime (`main`). A thread of its own would reach only the shared
/// arenas, not the pages a worker's heap still holds. The attack tests hold the result: memory
/// back near idle within 5 s of each attack. `MIMALLOC_PURGE_DELAY` still wins.
fn return_freed_memory() {
    // `mi_option_purge_delay` in mimalloc.h (16th of `mi_option_e`, in v2 and v3 alike); the
    // -sys crate exports no constant for it.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` only stores an integer option; mimalloc reads options with
        // relaxed atomics, so setting one while other threads allocate is sound (and none do yet).
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
    falgate::server::set_worker_upkeep(collect);
}

/// How long mimalloc keeps freed memory before it may go back to the system (ms).
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// The calling thread's mimalloc collection: what it freed back to the arenas, and what is due
/// purged (`false`: nothing forced).
fn collect() {
    // SAFETY: `mi_collect` may be called from any thread at any time.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(false);
    }
}
