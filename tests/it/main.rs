//! The one integration test binary: real falgate and a real emulator on ephemeral ports.

mod support;

mod admission;
mod attack;
mod auth;
mod cli;
mod drain;
mod errors;
mod identity;
mod jwks;
mod limits;
mod observability;
mod relay;
mod reload;
mod replicas;
mod schema;
mod target;
mod tokens;
mod usage;
