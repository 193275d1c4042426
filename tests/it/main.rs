//! weir's integration tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly by design")]

mod support;

mod chat;
mod cli;
mod config;
mod datasets;
mod errors;
mod pool;
mod streaming;
mod telemetry;
mod transport;
