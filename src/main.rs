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
