//! Telemetry: logs (the access log: [`access`]), Prometheus metrics ([`metrics`]) and OpenTelemetry traces ([`trace`]).
//!
//! Owns: the process's log pipeline — structured lines on stderr, filtered like `RUST_LOG`,
//! written by a background thread behind a bounded queue so a slow terminal or pipe never
//! stalls a request (lines are dropped, not waited for, when the queue is full).
//! Must not: block the request path or put raw client input into metric labels.

pub(crate) mod access;
pub(crate) mod metrics;
pub(crate) mod trace;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Starts logging; keep the guard alive until exit so queued lines are flushed.
pub fn init_logging(format: LogFormat) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(err) = result {
        eprintln!("weir: logging already initialised: {err}");
    }
    guard
}
