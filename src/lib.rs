//! falgate: the server-side proxy every frontend puts in front of fal.ai.
//!
//! A request on `/api/fal/*` is authenticated (`auth`), parsed into a typed call (`routes`,
//! `fal`), then runs the one pipeline: its ordered steps are described in one place, the module
//! doc of [`pipeline`]. `state` holds the gate's snapshot (what reloads on SIGHUP) over what
//! lives for the process; `app` builds and serves it. `server` runs the public listener thread
//! per core. `emulator` is an offline fal for `falgate dev` and tests. See ARCHITECTURE.md.

pub mod app;
pub mod auth;
pub mod body;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cors;
pub mod dev;
pub mod emulator;
pub mod error;
pub mod events;
pub mod fal;
pub mod input;
pub mod layers;
pub mod lifecycle;
pub mod limits;
pub mod ownership;
pub mod pipeline;
pub mod playground;
pub mod policy;
pub mod process;
pub mod redis;
pub mod routes;
pub mod schema;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod upstream;
pub mod webhooks;

#[cfg(test)]
mod tests_fuzz;
#[cfg(test)]
mod tests_layering;
