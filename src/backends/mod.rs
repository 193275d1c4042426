//! Backends: one upstream call, OpenAI-shaped in and out.
//!
//! Owns: the per-backend runtime (pooled HTTP client, `max_inflight` permits, upstream URLs)
//! and one file per kind behind the [`Backend`] enum. A backend turns an OpenAI-shaped request
//! into an upstream call and hands back the answer's status, content type and body stream.
//! Must not: choose targets, retry, or look at keys and limits (that is `router`, `auth` and
//! `limits`), nor buffer a stream: bodies go back as they arrive.

pub mod anthropic;
mod azure;
mod client;
pub mod mock;
mod openai;
mod params;
mod pool;
mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{BackendConfig, BackendKind};
use crate::wire::Endpoint;

pub use self::client::{BodyError, HttpClient, UpstreamBody, build_client, build_h2_client};
pub(crate) use self::transport::error_chain;

/// A backend ready to take calls, built once per config snapshot and shared by its requests.
#[derive(Debug)]
pub struct BackendRuntime {
    pub config: BackendConfig,
    kind: Backend,
    inflight: Option<Arc<Semaphore>>,
    /// Upstream requests in flight (bodies included), for `weir_backend_inflight`.
    active: Arc<AtomicU64>,
}

/// Dispatch by `kind`, as an enum so the hot path has no dynamic dispatch.
#[derive(Debug)]
enum Backend {
    OpenAi(Box<openai::OpenAiBackend>),
    Azure(Box<azure::AzureBackend>),
    Anthropic(Box<anthropic::AnthropicBackend>),
    Mock(mock::MockBackend),
}

impl Backend {
    /// The connection pool of a kind that calls out over HTTP.
    fn transport(&self) -> Option<transport::Transport> {
        match self {
            Backend::OpenAi(b) => Some(b.transport()),
            Backend::Azure(b) => Some(b.transport()),
            Backend::Anthropic(b) => Some(b.transport()),
            Backend::Mock(_) => None,
        }
    }
}

/// What the proxy hands a backend for one attempt.
#[derive(Debug)]
pub struct BackendCall<'a> {
    pub endpoint: Endpoint,
    /// The request body, already carrying the upstream model name.
    pub body: Bytes,
    /// The upstream model name (Azure's deployment).
    pub model: &'a str,
    /// The target's `params`: fields to fill in where the client did not set them.
    pub params: &'a serde_json::Map<String, serde_json::Value>,
    pub stream: bool,
    pub auth: UpstreamAuth<'a>,
    pub request_id: &'a str,
    /// W3C `traceparent` for this attempt, when the request is traced or the client sent one.
    pub traceparent: Option<HeaderValue>,
    /// Headers of the client's API (`anthropic-version`, `anthropic-beta`) for a kind that
    /// speaks it natively; empty otherwise.
    pub native_headers: &'a [(http::HeaderName, HeaderValue)],
}

/// Which credential goes upstream.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamAuth<'a> {
    /// The backend's own `api_key` (modes `keys` and `none`).
    Backend,
    /// `auth: passthrough`: the client's `Authorization` as sent, or none at all — never
    /// the backend's key, which would let keyless clients spend it.
    Client(Option<&'a HeaderValue>),
}

/// An upstream answer whose headers have arrived; the body is still streaming.
pub struct BackendResponse {
    pub status: StatusCode,
    /// Headers worth passing on (content type, retry hints).
    pub headers: HeaderMap,
    pub body: UpstreamBody,
    /// Holds one of the backend's `max_inflight` places, and counts in flight, until the
    /// body is done.
    pub permit: Option<InflightPermit>,
}

/// One request in flight to a backend: its `max_inflight` place (if limited) and its count
/// in `weir_backend_inflight`, both given back on drop.
#[derive(Debug)]
pub struct InflightPermit {
    _place: Option<OwnedSemaphorePermit>,
    active: Arc<AtomicU64>,
}

impl InflightPermit {
    fn new(place: Option<OwnedSemaphorePermit>, active: &Arc<AtomicU64>) -> InflightPermit {
        active.fetch_add(1, Ordering::Relaxed);
        InflightPermit { _place: place, active: Arc::clone(active) }
    }
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why an attempt produced no usable answer. `Rejected` carries the upstream's own error.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to backend `{backend}`: {detail}")]
    Connect { backend: String, detail: String },
    #[error("backend `{backend}` did not answer within {after:?} ({phase})")]
    Timeout { backend: String, phase: TimeoutPhase, after: Duration },
    #[error("backend `{backend}` has {limit} requests in flight (max_inflight)")]
    Saturated { backend: String, limit: usize },
    #[error("backend `{backend}` answered {status}: {message}")]
    Rejected { backend: String, status: StatusCode, message: String, body: Bytes, retry_after: Option<HeaderValue> },
    #[error("backend `{backend}` failed: {detail}")]
    Protocol { backend: String, detail: String },
    /// The request asks for something this backend's kind cannot do (checked before sending).
    #[error("{message}")]
    Unsupported { backend: String, param: Option<String>, message: String },
}

impl BackendError {
    /// The `reason` label of `weir_backend_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            BackendError::Connect { .. } => "connect",
            BackendError::Timeout { .. } => "timeout",
            BackendError::Saturated { .. } => "saturated",
            BackendError::Rejected { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => "status_429",
            BackendError::Rejected { status, .. } if status.is_server_error() => "status_5xx",
            BackendError::Rejected { .. } => "status_4xx",
            BackendError::Protocol { .. } => "protocol",
            BackendError::Unsupported { .. } => "unsupported",
        }
    }
}

/// The `message` of an OpenAI-shaped error body, or the body itself as text.
pub fn upstream_message(body: &[u8]) -> String {
    let parsed = serde_json::from_slice::<serde_json::Value>(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message").or_else(|| v.get("message")).or_else(|| v.get("error")));
    match message {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::from_utf8_lossy(body).trim().chars().take(1000).collect(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    FirstByte,
    Idle,
    Total,
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutPhase::FirstByte => "first_byte",
            TimeoutPhase::Idle => "idle",
            TimeoutPhase::Total => "total",
        })
    }
}

// === impl BackendRuntime ===

impl BackendRuntime {
    /// Builds the runtime for `config`, reusing `previous`'s connection pool when the
    /// connection-relevant settings did not change (so a reload keeps warm connections).
    pub fn build(
        config: BackendConfig,
        previous: Option<&BackendRuntime>,
    ) -> Result<BackendRuntime, BackendBuildError> {
        // A reload keeps the connection pool when nothing about the connection changed.
        let reuse = previous
            .filter(|p| {
                p.config.timeouts.connect == config.timeouts.connect
                    && p.config.base_url == config.base_url
                    && p.config.ca_file == config.ca_file
            })
            .and_then(|p| p.kind.transport());
        let kind = match config.kind {
            BackendKind::OpenAi => Backend::OpenAi(Box::new(openai::OpenAiBackend::new(&config, reuse)?)),
            BackendKind::Azure => Backend::Azure(Box::new(azure::AzureBackend::new(&config, reuse)?)),
            BackendKind::Anthropic => Backend::Anthropic(Box::new(anthropic::AnthropicBackend::new(&config, reuse)?)),
            BackendKind::Mock => Backend::Mock(mock::MockBackend::new(config.mock)),
        };
        let inflight = match (config.max_inflight, previous) {
            (Some(limit), Some(p)) if p.config.max_inflight == Some(limit) => p.inflight.clone(),
            (Some(limit), _) => Some(Arc::new(Semaphore::new(limit))),
            (None, _) => None,
        };
        let active = previous.map_or_else(|| Arc::new(AtomicU64::new(0)), |p| Arc::clone(&p.active));
        Ok(BackendRuntime { config, kind, inflight, active })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether this backend takes `endpoint`'s requests in their own API (`kind: anthropic`
    /// for the Messages API); the others get the inbound APIs as chat completions.
    pub fn speaks_natively(&self, endpoint: Endpoint) -> bool {
        match endpoint {
            Endpoint::Messages => matches!(self.kind, Backend::Anthropic(_)),
            Endpoint::Responses => matches!(self.kind, Backend::OpenAi(_)) && self.config.responses_native,
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => false,
        }
    }

    /// The in-flight count behind `weir_backend_inflight{backend}`.
    pub fn active(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.active)
    }

    /// One attempt: waits for an in-flight place, sends, and returns once headers arrive
    /// (bounded by the `first_byte` timeout).
    pub async fn send(&self, call: BackendCall<'_>) -> Result<BackendResponse, BackendError> {
        let permit = InflightPermit::new(self.acquire_permit().await?, &self.active);
        let first_byte = self.config.timeouts.first_byte;
        let attempt = async {
            match &self.kind {
                Backend::OpenAi(b) => b.send(&self.config, call).await,
                Backend::Azure(b) => b.send(&self.config, call).await,
                Backend::Anthropic(b) => b.send(&self.config, call).await,
                Backend::Mock(b) => b.send(call).await,
            }
        };
        let mut response = tokio::time::timeout(first_byte, attempt).await.map_err(|_| BackendError::Timeout {
            backend: self.config.name.clone(),
            phase: TimeoutPhase::FirstByte,
            after: first_byte,
        })??;
        response.permit = Some(permit);
        Ok(response)
    }

    /// Waits up to the connect timeout for a place: a short queue absorbs bursts, a long
    /// one would only hide an overloaded backend.
    async fn acquire_permit(&self) -> Result<Option<OwnedSemaphorePermit>, BackendError> {
        let Some(sem) = &self.inflight else { return Ok(None) };
        if let Ok(permit) = sem.clone().try_acquire_owned() {
            return Ok(Some(permit));
        }
        let wait = self.config.timeouts.connect;
        match tokio::time::timeout(wait, sem.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => Err(BackendError::Saturated {
                backend: self.config.name.clone(),
                limit: self.config.max_inflight.unwrap_or_default(),
            }),
        }
    }
}

/// A backend that cannot be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum BackendBuildError {
    #[error("model `{model}` names backend `{backend}`, which does not exist")]
    UnknownBackend { model: String, backend: String },
    #[error("backend `{backend}`: invalid base_url: {detail}")]
    BadUrl { backend: String, detail: String },
    #[error("backend `{backend}`: ca_file {path}: {detail}")]
    BadCa { backend: String, path: String, detail: String },
}
