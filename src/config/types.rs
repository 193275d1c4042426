//! The validated config: typed, defaults filled in, every reference checked.
//!
//! This is plain data. Building live objects from it (HTTP clients, semaphores, the key
//! table) is `Snapshot`'s job, so a `Config` can be checked by `weir check` without starting
//! anything.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// A whole validated config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    /// Backends by their name in the file.
    pub backends: BTreeMap<String, BackendConfig>,
    /// Public models by the name clients send.
    pub models: BTreeMap<String, ModelConfig>,
    /// Virtual keys in file order.
    pub keys: Vec<KeyConfig>,
    pub auth: AuthMode,
    pub telemetry: TelemetryConfig,
    /// The response cache shared by models with `cache.ttl`.
    pub cache: CacheConfig,
    /// Where limit counters and budgets live (`state:`).
    pub state: StateConfig,
    /// Evaluation dataset sinks in file order.
    pub datasets: Vec<DatasetConfig>,
    /// Experiment settings by experiment name (each names the `experiment` of one model).
    pub experiments: BTreeMap<String, ExperimentConfig>,
}

/// `experiments.NAME`: how an A/B experiment allocates traffic and when it is decided.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentConfig {
    pub name: String,
    /// The public model whose `experiment` this is.
    pub model: String,
    pub strategy: Strategy,
    pub metric: Metric,
    /// Least share of each arm under `thompson`. Default 0.05.
    pub min_share: f64,
    /// The variant compared against.
    pub control: String,
    pub stop: StopConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The targets' weights.
    Fixed,
    /// Thompson sampling on the metric.
    Thompson,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Fixed => "fixed",
            Strategy::Thompson => "thompson",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Mean feedback score (0 to 1) of answered requests.
    Feedback,
    /// Share of requests answered without an error.
    Success,
    /// Milliseconds from arrival to the last byte, successful requests (lower is better).
    Latency,
    /// USD per successful request at the model's `price` (lower is better).
    Cost,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Feedback => "feedback",
            Metric::Success => "success",
            Metric::Latency => "latency",
            Metric::Cost => "cost",
        }
    }

    /// Whether a smaller value is the better one.
    pub fn lower_is_better(self) -> bool {
        matches!(self, Metric::Latency | Metric::Cost)
    }

    /// Whether every observation lies in [0, 1].
    pub fn bounded(self) -> bool {
        matches!(self, Metric::Feedback | Metric::Success)
    }

    /// `stop.margin` when not given.
    pub fn default_margin(self) -> f64 {
        match self {
            Metric::Feedback => 0.05,
            Metric::Success => 0.02,
            Metric::Latency | Metric::Cost => 0.0,
        }
    }
}

/// `experiments.NAME.stop`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopConfig {
    /// Default 0.95: the chance that no wrong decision is ever declared.
    pub confidence: f64,
    /// Samples each arm and the control need before a decision. Default 200.
    pub min_samples: u64,
    /// A decided winner takes all traffic. Default false.
    pub promote: bool,
    /// Differences within ±margin are `equivalent`.
    pub margin: f64,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub max_body: u64,
    /// `None` when absent or empty: `/admin/*` then answers 401 to everyone.
    pub admin_token: Option<String>,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    OpenAi,
    Azure,
    Anthropic,
    Mock,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::OpenAi => "openai",
            BackendKind::Azure => "azure",
            BackendKind::Anthropic => "anthropic",
            BackendKind::Mock => "mock",
        }
    }

    /// The provider as the OpenTelemetry GenAI conventions name it (`gen_ai.provider.name`).
    pub fn genai_provider(self) -> &'static str {
        match self {
            BackendKind::OpenAi => "openai",
            BackendKind::Azure => "azure.ai.openai",
            BackendKind::Anthropic => "anthropic",
            BackendKind::Mock => "weir.mock",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub name: String,
    pub kind: BackendKind,
    /// Without a trailing slash. Empty for `mock`.
    pub base_url: String,
    /// `None` when absent or empty.
    pub api_key: Option<String>,
    pub api_version: Option<String>,
    /// `responses: native`: the upstream speaks the Responses API (OpenAI itself); default
    /// false (Responses requests go as chat completions).
    pub responses_native: bool,
    pub max_inflight: Option<usize>,
    pub timeouts: Timeouts,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Extra CA certificates (PEM) trusted for this backend's TLS, besides the platform's.
    pub ca_file: Option<PathBuf>,
    pub mock: MockSettings,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// TCP + TLS connect. Default 2s.
    pub connect: Duration,
    /// From sending the request to the upstream's response headers. Default 60s.
    pub first_byte: Duration,
    /// Whole exchange, body included. Default 600s.
    pub total: Duration,
    /// Longest gap between two body chunks. Default 60s.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(60),
            total: Duration::from_secs(600),
            idle: Duration::from_secs(60),
        }
    }
}

/// Behaviour of the built-in `mock` backend.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MockSettings {
    /// Delay before the response (and before a stream's first chunk).
    pub latency: Duration,
    /// Streaming pace; `None` sends every token at once.
    pub tokens_per_second: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub targets: Vec<TargetConfig>,
    pub experiment: Option<String>,
    pub sticky: Sticky,
    pub fallbacks: Vec<TargetConfig>,
    pub retry: RetryConfig,
    pub cache_ttl: Option<Duration>,
    pub price: Option<Price>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetConfig {
    /// Name of an entry of `backends`.
    pub backend: String,
    /// Model name sent upstream.
    pub model: String,
    pub weight: u32,
    /// Defaults to the backend's name.
    pub variant: String,
    /// Request fields filled in where the client did not set them (`params:`, a weir
    /// extension). Empty by default.
    pub params: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    None,
    Key,
    User,
    Header(HeaderName),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Tries per target, the first included; at least 1.
    pub attempts: u32,
    pub on_status: Vec<u16>,
    pub on_connect: bool,
    pub on_timeout: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { attempts: 1, on_status: Vec::new(), on_connect: false, on_timeout: false }
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Defaults to `input_per_mtok`.
    pub cached_input_per_mtok: f64,
    /// Prompt-cache writes (Anthropic's `cache_creation_input_tokens`). Defaults to
    /// `input_per_mtok`.
    pub cache_write_per_mtok: f64,
}

impl Price {
    /// USD for `usage`: cached prompt tokens at the cached rate, the rest at the input rate.
    pub fn cost(&self, usage: &crate::wire::Usage) -> f64 {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let written = usage.cache_write_tokens.min(usage.prompt_tokens - cached);
        let fresh = usage.prompt_tokens - cached - written;
        (fresh as f64 * self.input_per_mtok
            + cached as f64 * self.cached_input_per_mtok
            + written as f64 * self.cache_write_per_mtok
            + usage.completion_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub name: String,
    /// SHA-256 of the key's bytes.
    pub hash: [u8; 32],
    /// `None` allows every model.
    pub models: Option<Vec<String>>,
    pub rate: RateConfig,
    pub budget: Option<BudgetConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateConfig {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrent: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    pub usd: f64,
    pub per: BudgetPeriod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    Day,
    Month,
}

/// `state:`: the store shared by limits and budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// Default `memory` (per process).
    pub store: StateStore,
    /// Default `open`: while Redis is unreachable, each replica limits on its own.
    pub on_error: FailMode,
    /// Deadline of one Redis round trip. Default 100ms.
    pub timeout: Duration,
    /// Completion tokens reserved at admission when a request sets neither `max_tokens` nor
    /// `max_completion_tokens`. Default 256.
    pub default_max_tokens: u64,
    /// How long a stored Responses API response lives. Default 30 days.
    pub responses_ttl: Duration,
    /// Most bytes of stored responses held in memory (memory store). Default 256 MiB.
    pub responses_max_size: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            store: StateStore::Memory,
            on_error: FailMode::Open,
            timeout: Duration::from_millis(100),
            default_max_tokens: 256,
            responses_ttl: Duration::from_secs(30 * 24 * 3600),
            responses_max_size: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateStore {
    Memory,
    /// A `redis://` or `rediss://` URL.
    Redis(String),
}

/// What a limit does when its shared store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Admit on local (per-replica) counters.
    Open,
    /// Refuse the request (503).
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Clients must present one of `keys`.
    Keys,
    /// No client key; the backend's own `api_key` is used.
    None,
    /// The client's `Authorization` header is sent upstream unchanged.
    Passthrough,
}

/// `telemetry:`: where traces go. Metrics are always on (`/metrics` on the admin port).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Span export; `None` (the default) turns tracing off, and a client's `traceparent`
    /// is then passed upstream unchanged.
    pub otlp: Option<OtlpConfig>,
    /// Prompts and completions as span events. Default false.
    pub capture_content: bool,
    /// Share of new traces recorded, 0 to 1; a client's `traceparent` decides for the
    /// traces it continues. Default 1.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { otlp: None, capture_content: false, sample_ratio: 1.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// Collector URL without a trailing slash: `http://host:4317` for gRPC; for HTTP the
    /// base (`http://host:4318`, `/v1/traces` is added) or the full traces URL.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
}

/// OTLP transport. Default `grpc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    /// HTTP with protobuf bodies (`http/protobuf`).
    Http,
}

/// The top-level `cache` section. Caching itself is switched on per model (`cache.ttl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Upper bound of the local store, in bytes of cached answers. Default 512 MiB.
    pub max_size: u64,
    /// Default `memory`.
    pub store: CacheStore,
    /// Default `key`.
    pub scope: CacheScope,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { max_size: 512 * 1024 * 1024, store: CacheStore::Memory, scope: CacheScope::Key }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStore {
    /// This process only.
    Memory,
    /// Shared with other replicas through Redis at this URL (`redis://` or `rediss://`),
    /// with the in-memory store in front.
    Redis(String),
}

/// Who may receive an entry someone else's request filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheScope {
    /// Only requests made with the same virtual key: one tenant never sees another's answers.
    Key,
    /// Every key that may use the model.
    Global,
}

/// One entry of `datasets:`: a sink that records matching requests as JSONL.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetConfig {
    pub name: String,
    pub dir: PathBuf,
    /// Share of matching requests recorded, 0..=1. Default 1.
    pub sample: f64,
    pub filter: DatasetFilter,
    /// Applied to every string of a record before it is written.
    pub redact: Vec<Redaction>,
    /// A file is rotated to the next `YYYY-MM-DD.N.jsonl` past this size. Default 100MiB.
    pub max_file_size: u64,
}

/// Which requests a dataset records; every given field must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatasetFilter {
    /// Public model name.
    pub model: Option<String>,
    pub variant: Option<String>,
    /// Virtual key name.
    pub key: Option<String>,
    /// Statuses sent to the client; empty matches all.
    pub status: Vec<StatusMatch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Code(u16),
    /// `4xx` is `Class(4)`.
    Class(u16),
}

impl StatusMatch {
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Code(code) => code == status,
            StatusMatch::Class(class) => status / 100 == class,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redaction {
    Email,
    Phone,
    /// Strings shaped like API keys (`sk-...`, `sk-ant-...`, bearer tokens, ...).
    Key,
    /// A regular expression (the `regex` crate's syntax); matches are replaced.
    Regex(String),
}
