//! One request's account: who, what, where it went and how it ended.
//!
//! An [`Exchange`] is created when a request arrives and finished exactly once: when the
//! response body ends, when it fails, or — through `Drop` — when the client goes away. That
//! single completion point is where per-request taps (metrics, datasets, traces) attach, so
//! no request escapes them however it ends.

use std::time::{Duration, Instant};

use super::Endpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole response reached the client.
    Completed,
    /// The response was cut by an upstream failure or timeout.
    Failed,
    /// The client went away before the response ended.
    ClientGone,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::ClientGone => "client_gone",
        }
    }
}

#[derive(Debug)]
pub struct Exchange {
    pub request_id: String,
    pub started: Instant,
    pub endpoint: Option<Endpoint>,
    pub key: String,
    pub model: String,
    pub backend: String,
    pub variant: String,
    pub stream: bool,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Time spent waiting on the backend for response headers.
    pub backend_wait: Duration,
    pub bytes_out: u64,
    pub error: Option<String>,
    finished: bool,
}

impl Exchange {
    pub fn new(request_id: String, started: Instant) -> Exchange {
        Exchange {
            request_id,
            started,
            endpoint: None,
            key: String::new(),
            model: String::new(),
            backend: String::new(),
            variant: String::new(),
            stream: false,
            status: 0,
            backend_wait: Duration::ZERO,
            bytes_out: 0,
            error: None,
            finished: false,
        }
    }

    /// Time spent in weir itself so far: everything but the wait for the backend.
    pub fn overhead(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.backend_wait)
    }

    pub fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let endpoint = self.endpoint.map_or("", Endpoint::as_str);
        if self.status >= 500 || outcome == Outcome::Failed {
            tracing::warn!(
                target: "weir::access",
                request_id = %self.request_id, endpoint, key = %self.key, model = %self.model, backend = %self.backend,
                status = self.status, outcome = outcome.as_str(), duration_ms, error = self.error.as_deref().unwrap_or(""),
                "request failed"
            );
        } else {
            tracing::debug!(
                target: "weir::access",
                request_id = %self.request_id, endpoint, key = %self.key, model = %self.model, backend = %self.backend,
                variant = %self.variant, stream = self.stream, status = self.status, outcome = outcome.as_str(),
                duration_ms, bytes_out = self.bytes_out,
                "request"
            );
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish(Outcome::ClientGone);
    }
}
