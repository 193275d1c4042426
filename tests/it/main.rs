//! weir's integration tests: one binary, one module per area.

mod support;

mod chat;
mod cli;
mod config;
mod errors;
mod streaming;
mod transport;
