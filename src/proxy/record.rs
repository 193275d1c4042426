//! One request's account: who, what, where it went and how it ended.
//!
//! An [`Exchange`] is created when a request arrives and finished exactly once: when the
//! response body ends, when it fails, or — through `Drop` — when the client goes away. That
//! single completion point is where per-request taps (metrics, datasets, traces, limit
//! reconciliation) attach, so no request escapes them however it ends.
//!
//! Order in [`Exchange::finish`]: read the captured answer back (usage, assembly), price
//! it, then hand the finished exchange to each tap. Taps must not block: anything slow is
//! queued to a task of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Endpoint;
use crate::snapshot::Snapshot;
use crate::telemetry::trace::{AnswerSummary, TraceContext};
use crate::wire::{Assembled, Capture, Usage};

/// Largest answer kept for reading back (usage, cache fill, datasets). Past this the
/// capture lets go and the request is recorded without usage or body.
pub const CAPTURE_LIMIT: usize = 4 * 1024 * 1024;

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
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::ClientGone => "client_gone",
        }
    }
}

/// `x-weir-cache` and the `cache` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheStatus {
    Hit,
    Miss,
    #[default]
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// Why an attempt was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    /// The target the split chose.
    Primary,
    /// The same target again after a retryable failure.
    Retry,
    /// A target from `fallbacks` (or the next healthy one) after the previous gave up.
    Fallback,
}

/// One upstream call made for this request (several with retries and fallbacks). Traces turn
/// each into a child span; logs show the history.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub kind: AttemptKind,
    pub backend: String,
    /// The model name sent upstream.
    pub model: String,
    pub variant: String,
    /// When the attempt started, from the exchange's start.
    pub offset: Duration,
    /// Until response headers (or failure).
    pub duration: Duration,
    /// The upstream's status when it answered.
    pub status: Option<u16>,
    /// Why it failed, when it did (`connect`, `timeout`, `status`, ...).
    pub error: Option<String>,
}

#[derive(Debug)]
pub struct Exchange {
    /// The config this request runs on, from arrival to the last tap.
    pub snapshot: Arc<Snapshot>,
    pub request_id: String,
    pub started: Instant,
    pub endpoint: Option<Endpoint>,
    pub key: String,
    pub model: String,
    pub backend: String,
    pub variant: String,
    /// The model's `experiment`, when it has one.
    pub experiment: Option<String>,
    pub stream: bool,
    /// The client's request body as received (a reference-counted handle, not a copy).
    pub request_body: Bytes,
    pub cache: CacheStatus,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Time spent waiting on the backend for response headers.
    pub backend_wait: Duration,
    /// From arrival to the first body chunk handed to the client (TTFT for streams).
    pub first_byte: Option<Duration>,
    pub bytes_out: u64,
    pub error: Option<String>,
    /// Whether the answer is SSE (decides how the capture is read back).
    pub sse: bool,
    /// The answer as it streamed by, bounded by [`CAPTURE_LIMIT`].
    pub capture: Option<Capture>,
    /// Set by a tap that needs the whole answer (cache fill, datasets, content on spans);
    /// otherwise only the usage is read back, which is cheaper.
    pub wants_assembly: bool,
    /// The cache's fill of this request's answer (and the flight it leads), when the
    /// cache step sent it upstream; completed in [`Exchange::finish`].
    pub cache_fill: Option<crate::cache::Fill>,
    /// Upstream calls in order; empty when none was made (cache hit, early error).
    pub attempts: Vec<Attempt>,
    /// The answering target's in-flight place (least-loaded choice, health), released when
    /// the exchange finishes; a stream that broke counts against the target.
    pub target_hold: Option<crate::router::InFlight>,
    /// Filled in by [`Exchange::finish`] from the capture.
    pub assembled: Option<Assembled>,
    pub usage: Option<Usage>,
    pub cost_usd: Option<f64>,
    /// The key's limits reservation, settled when the exchange finishes.
    pub admission: Option<crate::limits::Admission>,
    /// Total time, fixed when the exchange finishes.
    pub duration: Duration,
    /// Time spent in weir itself, as reported in `x-weir-overhead-ms`.
    pub weir_time: Option<Duration>,
    /// This request's place in a trace (ids, sampling), fixed when it arrives.
    pub trace: TraceContext,
    /// Response model and finish reasons for a sampled trace, read without assembling.
    pub answer_summary: Option<AnswerSummary>,
    finished: bool,
}

impl Exchange {
    pub fn new(snapshot: Arc<Snapshot>, request_id: String, started: Instant) -> Exchange {
        Exchange {
            snapshot,
            request_id,
            started,
            endpoint: None,
            key: String::new(),
            model: String::new(),
            backend: String::new(),
            variant: String::new(),
            experiment: None,
            stream: false,
            request_body: Bytes::new(),
            cache: CacheStatus::Bypass,
            status: 0,
            backend_wait: Duration::ZERO,
            first_byte: None,
            bytes_out: 0,
            error: None,
            sse: false,
            capture: None,
            wants_assembly: false,
            cache_fill: None,
            attempts: Vec::new(),
            target_hold: None,
            assembled: None,
            usage: None,
            cost_usd: None,
            admission: None,
            duration: Duration::ZERO,
            weir_time: None,
            trace: TraceContext::None,
            answer_summary: None,
            finished: false,
        }
    }

    /// The tap on every body chunk sent to the client: TTFT, byte count, capture.
    pub fn observe_chunk(&mut self, chunk: &Bytes) {
        if self.first_byte.is_none() {
            self.first_byte = Some(self.started.elapsed());
        }
        self.bytes_out += chunk.len() as u64;
        if let Some(capture) = &mut self.capture {
            capture.push(chunk);
        }
        if let Some(fill) = &self.cache_fill {
            fill.observe(chunk, self);
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
        self.duration = self.started.elapsed();
        if let Some(hold) = self.target_hold.take() {
            hold.finish(outcome == Outcome::Failed);
        }
        let cache_answer = crate::cache::raw_answer(self, outcome);
        let snapshot = Arc::clone(&self.snapshot);
        // Decided before reading back, so only recorded requests pay for assembly.
        let datasets = snapshot.datasets.select(self);
        self.wants_assembly |= !datasets.is_empty();
        self.read_back(outcome);
        snapshot.metrics.record_exchange(self, outcome);
        crate::cache::complete(self, outcome, cache_answer);
        if let Some(tracer) = &snapshot.tracer {
            tracer.record(self, outcome);
        }
        snapshot.limits.finish(self);
        snapshot.datasets.record(self, outcome, datasets);
        self.log(outcome);
    }

    /// Reads usage (and the whole answer, when a tap asked) out of the capture, and prices
    /// it with the model's `price`.
    fn read_back(&mut self, outcome: Outcome) {
        let Some(capture) = self.capture.take() else { return };
        if self.wants_assembly && outcome == Outcome::Completed && (200..300).contains(&self.status) {
            self.assembled = capture.assemble(self.sse);
            self.usage = self.assembled.as_ref().and_then(|a| a.usage);
        } else if let Some(bytes) = capture.bytes() {
            self.usage = crate::wire::usage_only(&bytes, self.sse);
            if self.trace.sampled() {
                self.answer_summary = Some(AnswerSummary::read(&bytes, self.sse));
            }
        }
        if self.cache == CacheStatus::Hit {
            // A hit spent no tokens: the stored answer's usage is what its first request paid.
            self.usage = None;
            return;
        }
        let price = self.snapshot.models.get(&self.model).and_then(|route| route.config.price);
        if let (Some(usage), Some(price)) = (self.usage, price) {
            self.cost_usd = Some(price.cost(&usage));
        }
    }

    fn log(&self, outcome: Outcome) {
        let duration_ms = self.duration.as_secs_f64() * 1000.0;
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
