//! Raw config: the YAML as written, before validation.
//!
//! Every struct here mirrors a section of SPEC §2 one to one. Fields stay as the user wrote
//! them (durations and sizes as strings, references as names) so that the validation pass in
//! `validate/` can report *every* problem with its place in the file, instead of serde
//! stopping at the first one. Unknown keys are collected by the loader (`serde_ignored`) and
//! reported as errors, so these structs do not use `deny_unknown_fields`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    pub server: RawServer,
    pub backends: BTreeMap<String, RawBackend>,
    pub models: BTreeMap<String, RawModel>,
    pub keys: Vec<RawKey>,
    pub auth: RawAuth,
    pub cache: Option<RawCache>,
    pub state: Option<RawState>,
    pub telemetry: Option<RawTelemetry>,
    pub datasets: Vec<RawDataset>,
    /// Experiment settings by the name models give in `experiment:`.
    pub experiments: BTreeMap<String, RawExperiment>,
}

/// One entry of `experiments:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawExperiment {
    /// `fixed | thompson`. Default `fixed` (the targets' weights).
    pub strategy: Option<String>,
    /// `feedback | success | latency | cost`. Default `feedback`.
    pub metric: Option<String>,
    /// Least share of traffic each arm keeps while the experiment runs. Default 0.05.
    pub min_share: Option<f64>,
    /// The variant the others are compared with. Default: `control` if a variant has that
    /// name, else the first variant.
    pub control: Option<String>,
    pub stop: Option<RawStop>,
}

/// `stop:` of an experiment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawStop {
    /// Default 0.95.
    pub confidence: Option<f64>,
    /// Default 200.
    pub min_samples: Option<u64>,
    /// Default false.
    pub promote: Option<bool>,
    /// Default: 0.05 for feedback, 0.02 for success, none (0) for latency and cost.
    pub margin: Option<f64>,
}

/// `server:`, the listeners and request limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawServer {
    /// OpenAI-compatible API address. Default `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// Admin address (`/metrics`, `/healthz`, `/readyz`, `/admin/*`). Default `127.0.0.1:9090`.
    pub admin_listen: Option<String>,
    /// Optional TLS for the client port (rustls, ALPN h2 + http/1.1).
    pub tls: Option<RawTls>,
    /// Largest request body accepted. Default `8MiB`.
    pub max_body: Option<String>,
    /// Bearer token for `/admin/*`; empty or absent disables those routes.
    pub admin_token: Option<String>,
    /// How long a graceful shutdown waits for in-flight requests. Default `30s`.
    pub shutdown_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

/// One entry of `backends:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawBackend {
    /// `openai | azure | anthropic | mock`. Required.
    pub kind: Option<String>,
    /// Upstream base URL, e.g. `https://api.openai.com/v1`. Required except for `mock`.
    pub base_url: Option<String>,
    /// Credential sent upstream in place of the client's key. Empty means none.
    pub api_key: Option<String>,
    /// Azure `api-version` query parameter.
    pub api_version: Option<String>,
    /// `kind: openai` only: `native` sends Responses API requests to `{base_url}/responses`
    /// as they came; `translate` (default) sends them as chat completions.
    pub responses: Option<String>,
    /// Most requests in flight to this backend at once. Default: unlimited.
    pub max_inflight: Option<u64>,
    pub timeouts: Option<RawTimeouts>,
    /// Extra headers sent on every upstream request.
    pub headers: BTreeMap<String, String>,
    /// `https://` only: a PEM file of CA certificates the upstream's certificate may chain to
    /// besides the platform's roots (a private CA). Default: the platform's roots only.
    pub ca_file: Option<String>,
    /// `mock` only: delay before the first byte. Default `0ms`.
    pub latency: Option<String>,
    /// `mock` only: streaming speed. Default unlimited (all tokens at once).
    pub tokens_per_second: Option<f64>,
}

/// `timeouts:` of a backend. Defaults: connect `2s`, first_byte `60s`, total `600s`, idle `60s`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub first_byte: Option<String>,
    pub total: Option<String>,
    pub idle: Option<String>,
}

/// One entry of `models:`: a public model name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawModel {
    pub targets: Vec<RawTarget>,
    pub experiment: Option<String>,
    /// `key | user | header:NAME | none`. Default `none`.
    pub sticky: Option<String>,
    pub fallbacks: Vec<RawFallback>,
    pub retry: Option<RawRetry>,
    pub cache: Option<RawModelCache>,
    pub price: Option<RawPrice>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawTarget {
    pub backend: String,
    pub model: String,
    /// Relative weight in the split. Default 1.
    pub weight: Option<u64>,
    /// Variant name for experiments. Default: the backend's name.
    pub variant: Option<String>,
    /// Request fields sent where the client did not set them (weir extension).
    pub params: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawFallback {
    pub backend: String,
    pub model: String,
    /// As a target's `params`.
    pub params: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawRetry {
    /// Tries per target, the first included. Default 1.
    pub attempts: Option<u64>,
    /// Statuses (`429`, `503`, ...) and the words `connect`, `timeout`.
    pub on: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawModelCache {
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawPrice {
    pub input_per_mtok: Option<f64>,
    pub output_per_mtok: Option<f64>,
    pub cached_input_per_mtok: Option<f64>,
    /// USD per million prompt tokens written to the provider's cache. Default: the input price.
    pub cache_write_per_mtok: Option<f64>,
}

/// One entry of `keys:`, a virtual API key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawKey {
    pub name: String,
    /// `sha256:` + 64 lowercase hex digits.
    pub key: String,
    /// Allow-list of public model names; absent means all.
    pub models: Option<Vec<String>>,
    pub rate: Option<RawRate>,
    pub budget: Option<RawBudget>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawRate {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrent: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawBudget {
    pub usd: Option<f64>,
    /// `day | month`.
    pub per: Option<String>,
}

/// `auth:`. Default mode `keys`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawAuth {
    /// `keys | none | passthrough`.
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawCache {
    pub max_size: Option<String>,
    pub store: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawState {
    /// `memory | redis://... | rediss://...`.
    pub store: Option<String>,
    /// `open | closed`: what limits do while a Redis store is unreachable.
    pub on_error: Option<String>,
    /// Deadline of one Redis round trip, such as `100ms`.
    pub timeout: Option<String>,
    /// Completion tokens assumed at admission when a request sets no `max_tokens`.
    pub default_max_tokens: Option<u64>,
    /// How long a stored Responses API response lives, such as `30d`. Default 30 days.
    pub responses_ttl: Option<String>,
    /// Most bytes of stored responses kept in memory (`store: memory`). Default `256MiB`.
    pub responses_max_size: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawTelemetry {
    pub otlp: Option<RawOtlp>,
    pub capture_content: Option<bool>,
    pub sample_ratio: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawOtlp {
    pub endpoint: String,
    /// `grpc | http`.
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawDataset {
    pub name: String,
    pub dir: String,
    pub sample: Option<f64>,
    pub filter: Option<RawDatasetFilter>,
    pub redact: Vec<String>,
    pub max_file_size: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawDatasetFilter {
    pub model: Option<String>,
    pub variant: Option<String>,
    pub key: Option<String>,
    pub status: Option<serde_json::Value>,
}
