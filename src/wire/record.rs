//! One request's account, as plain data: who, what, where it went and how it ended.
//!
//! Owns: [`Record`], filled in by the request path as the request goes and finished exactly
//! once when the answer ends (completed, failed, or the client gone); then every tap
//! (metrics, traces, datasets, limits' reconciliation, cache fill) reads the same finished
//! record. Also the words it is made of: [`Outcome`], [`CacheStatus`], [`Attempt`].
//! Must not: hold a guard, a snapshot or any other runtime handle: a tap reading a record
//! can neither release nor reach anything.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{AnswerSummary, Assembled, Endpoint, TraceContext, Usage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    #[default]
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
    /// The backend's provider as the GenAI conventions name it (`openai`, `anthropic`, ...).
    pub provider: &'static str,
    /// The model name sent upstream.
    pub model: String,
    pub variant: String,
    /// When the attempt started, from the request's start.
    pub offset: Duration,
    /// Until response headers (or failure).
    pub duration: Duration,
    /// The upstream's status when it answered.
    pub status: Option<u16>,
    /// Why it failed, when it did (`connect`, `timeout`, `status`, ...).
    pub error: Option<String>,
}

/// The prompt a request rendered (`prompt: {id, version, variables}`), as datasets and traces
/// name it. `variables` are the ones the request sent, not the defaults, so the request can be
/// replayed against another version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptUse {
    pub id: String,
    pub version: String,
    pub variables: serde_json::Map<String, serde_json::Value>,
}

/// One request, from arrival to its last byte. Fields are filled in along the request
/// path; `duration`, `usage`, `assembled`, `cost_usd` and `outcome` when it finishes.
#[derive(Debug)]
pub struct Record {
    pub request_id: String,
    pub started: Instant,
    pub endpoint: Option<Endpoint>,
    pub key: String,
    /// The model the client asked for (its text until routing accepted it).
    pub model: String,
    /// Whether `model` is one of the config's public models (only those become labels).
    pub model_configured: bool,
    pub backend: String,
    /// The backend's provider as the GenAI conventions name it, once a backend is known.
    pub provider: Option<&'static str>,
    pub variant: String,
    /// The model's `experiment`, when it has one.
    pub experiment: Option<String>,
    pub stream: bool,
    /// The client's request body as received (a reference-counted handle, not a copy); with
    /// a prompt, the body as rendered for the target that answered.
    pub request_body: Bytes,
    /// The prompt rendered into the request, when it named one or its target fixes one.
    pub prompt: Option<PromptUse>,
    pub cache: CacheStatus,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Time spent waiting on the backend for response headers.
    pub backend_wait: Duration,
    /// From arrival to the first body chunk handed to the client (TTFT for streams).
    pub first_byte: Option<Duration>,
    pub bytes_out: u64,
    pub error: Option<String>,
    /// Whether the answer is SSE.
    pub sse: bool,
    /// Upstream calls in order; empty when none was made (cache hit, early error).
    pub attempts: Vec<Attempt>,
    /// The whole answer read back, when a tap asked for it.
    pub assembled: Option<Assembled>,
    pub usage: Option<Usage>,
    pub cost_usd: Option<f64>,
    /// Total time, fixed when the request finishes.
    pub duration: Duration,
    /// Time spent in weir itself, as reported in `x-weir-overhead-ms`.
    pub weir_time: Option<Duration>,
    /// This request's place in a trace (ids, sampling), fixed when it arrives.
    pub trace: TraceContext,
    /// Response model and finish reasons for a sampled trace, read without assembling.
    pub answer_summary: Option<AnswerSummary>,
    /// How the answer ended, fixed when the request finishes.
    pub outcome: Outcome,
}

impl Record {
    pub fn new(request_id: String, started: Instant) -> Record {
        Record {
            request_id,
            started,
            endpoint: None,
            key: String::new(),
            model: String::new(),
            model_configured: false,
            backend: String::new(),
            provider: None,
            variant: String::new(),
            experiment: None,
            stream: false,
            request_body: Bytes::new(),
            prompt: None,
            cache: CacheStatus::Bypass,
            status: 0,
            backend_wait: Duration::ZERO,
            first_byte: None,
            bytes_out: 0,
            error: None,
            sse: false,
            attempts: Vec::new(),
            assembled: None,
            usage: None,
            cost_usd: None,
            duration: Duration::ZERO,
            weir_time: None,
            trace: TraceContext::None,
            answer_summary: None,
            outcome: Outcome::Completed,
        }
    }

    /// Time spent in weir itself so far: everything but the wait for the backend.
    pub fn overhead(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.backend_wait)
    }

    /// Time spent in weir itself: what `x-weir-overhead-ms` said when the response headers
    /// went out, or (for a request that never got that far) everything but the backend wait.
    pub fn weir_time(&self) -> Duration {
        self.weir_time.unwrap_or_else(|| self.duration.saturating_sub(self.backend_wait))
    }

    /// Time the backend took on attempt `index`: until its response headers, or, for the
    /// attempt whose answer went to the client, until the answer's last byte.
    pub fn backend_time(&self, index: usize) -> Duration {
        let Some(attempt) = self.attempts.get(index) else { return Duration::ZERO };
        let answered = index + 1 == self.attempts.len() && attempt.status == Some(self.status);
        if answered { self.duration.saturating_sub(attempt.offset).max(attempt.duration) } else { attempt.duration }
    }

    /// The `endpoint` label: empty before the path told which.
    pub fn endpoint_str(&self) -> &'static str {
        self.endpoint.map_or("", Endpoint::as_str)
    }
}
