//! weir's integration tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly by design")]

mod support;

mod adapters;
mod apis;
mod cache;
mod chat;
mod cli;
mod config;
mod datasets;
mod errors;
mod experiments;
mod fuzz_corpus;
mod hostile;
mod ledger;
mod limits;
mod pool;
mod prompts;
mod reload;
mod replicas;
mod reservations;
mod routing;
mod streaming;
mod telemetry;
mod transport;
