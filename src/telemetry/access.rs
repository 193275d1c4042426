//! The access log: one line per finished request, read from its [`Record`].
//!
//! Owns: the `weir::access` line (a warning for failures and 5xx, debug otherwise) and which
//! fields it carries. Every field that can hold client or upstream text (model, client request
//! id, error messages that quote a request) goes through [`LogSafe`], so a CR/LF in a model
//! name cannot split the line or forge another.
//! Must not: block (the log pipeline's queue drops rather than waits).

use crate::wire::{LogSafe, Outcome, Record};

/// Logs a finished request.
pub fn log(record: &Record) {
    let duration_ms = record.duration.as_secs_f64() * 1000.0;
    let endpoint = record.endpoint_str();
    let outcome = record.outcome;
    let client_request_id = LogSafe(record.client_request_id.as_deref().unwrap_or(""));
    let model = LogSafe(&record.model);
    if record.status >= 500 || outcome == Outcome::Failed {
        tracing::warn!(
            target: "weir::access",
            request_id = %record.request_id, %client_request_id, endpoint, key = %LogSafe(&record.key), %model,
            backend = %record.backend, status = record.status, outcome = outcome.as_str(), duration_ms,
            error = %LogSafe(record.error.as_deref().unwrap_or("")),
            "request failed"
        );
    } else {
        tracing::debug!(
            target: "weir::access",
            request_id = %record.request_id, %client_request_id, endpoint, key = %LogSafe(&record.key), %model,
            backend = %record.backend, variant = %record.variant, stream = record.stream, status = record.status,
            outcome = outcome.as_str(), duration_ms, bytes_out = record.bytes_out,
            error = %LogSafe(record.error.as_deref().unwrap_or("")),
            "request"
        );
    }
}
