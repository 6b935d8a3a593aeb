//! The one integration test binary: real falgate and a real emulator on ephemeral ports.

mod support;

mod admission;
mod attack;
mod auth;
mod claims;
mod cli;
mod dev;
mod drain;
mod errors;
mod events;
mod forwarding;
mod identity;
mod inflight;
mod jwks;
mod limits;
mod links;
mod observability;
mod operations;
mod playground;
mod policy;
mod relay;
mod reload;
mod replicas;
mod run_stream;
mod schema;
mod target;
mod tokens;
mod usage;
mod webhooks;
