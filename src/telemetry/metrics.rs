//! Prometheus metrics with the names and labels of SPEC §4.
//!
//! Owns: the process-wide registry (it outlives config snapshots, so counters survive a
//! reload) and its text rendering for `/metrics` on the admin port.
//! Must not: take a label value from raw client input (names come from config), or lock
//! on the hot path: series are atomics found through lock-free [`family::Family`] tables.
//!
//! Label values: `model` is the public model name when it is configured, else empty (an
//! unknown model is the client's text); `backend` and `variant` are empty for requests that
//! ended before a target was picked; `key` is the virtual key's name, `anonymous` with
//! `auth: none` or `passthrough`; `status` is the HTTP status sent to the client, `499`
//! when the client went away before any.

mod family;
mod render;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwap;

use self::family::{Counter, Family, Histogram};
use crate::config::Config;
use crate::experiments::Experiment;
use crate::wire::{Outcome, Record};

/// Outcome label of `weir_cache_requests_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Bypass,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Bypass => "bypass",
        }
    }
}

/// Request latency and time to first token: 5 ms to 10 min.
static LATENCY_BOUNDS: [f64; 17] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// Time spent in weir itself: 10 µs to 250 ms.
static OVERHEAD_BOUNDS: [f64; 14] =
    [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];
/// Feedback scores, 0 to 1.
static SCORE_BOUNDS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// Sums of seconds and USD are kept in nano-units.
const NANO: f64 = 1e9;

fn latency() -> Histogram {
    Histogram::new(&LATENCY_BOUNDS, NANO)
}

/// What one (model, backend, variant) records besides its request count, found with one lookup.
#[derive(Debug)]
struct RouteSeries {
    duration: Histogram,
    ttft: Histogram,
    /// `input`, `output`, `cached`.
    tokens: [Counter; 4],
}

const TOKEN_KINDS: [&str; 4] = ["input", "output", "cached", "cache_write"];

impl RouteSeries {
    fn new() -> RouteSeries {
        RouteSeries { duration: latency(), ttft: latency(), tokens: Default::default() }
    }
}

/// The registry. One per process, shared by every snapshot.
#[derive(Debug)]
pub struct Metrics {
    /// `model, backend, variant, status, cache`.
    requests: Family<Counter, 6>,
    /// `model, backend, variant`: durations, TTFT, tokens.
    routes: Family<RouteSeries, 3>,
    backend_duration: Family<Histogram, 1>,
    overhead: Histogram,
    /// `model, backend, variant, key`, in nano-USD.
    cost: Family<Counter, 4>,
    /// `model, result`.
    cache_requests: Family<Counter, 2>,
    /// `key, limit`.
    ratelimit_rejections: Family<Counter, 2>,
    /// Each live backend's in-flight count, owned by its runtime.
    inflight: ArcSwap<Vec<(String, Arc<AtomicU64>)>>,
    /// `backend, reason`.
    backend_errors: Family<Counter, 2>,
    /// `dataset, outcome`.
    dataset_records: Family<Counter, 2>,
    /// `outcome`.
    config_reloads: Family<Counter, 1>,
    state_store_errors: Family<Counter, 1>,
    /// `model, variant`: feedback scores (0-1), for the experiments dashboard.
    feedback: Family<Histogram, 2>,
    /// The live experiments, read when rendering (shares, samples, decisions, promotions).
    experiments: ArcSwap<Vec<Arc<Experiment>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let metrics = Metrics {
            requests: Family::new(Counter::default),
            routes: Family::new(RouteSeries::new),
            backend_duration: Family::new(latency),
            overhead: Histogram::new(&OVERHEAD_BOUNDS, NANO),
            cost: Family::new(Counter::default),
            cache_requests: Family::new(Counter::default),
            ratelimit_rejections: Family::new(Counter::default),
            inflight: ArcSwap::from_pointee(Vec::new()),
            experiments: ArcSwap::from_pointee(Vec::new()),
            backend_errors: Family::new(Counter::default),
            dataset_records: Family::new(Counter::default),
            config_reloads: Family::new(Counter::default),
            state_store_errors: Family::new(Counter::default),
            feedback: Family::new(|| Histogram::new(&SCORE_BOUNDS, NANO)),
        };
        metrics.config_reloads.register(["success"]);
        metrics.config_reloads.register(["failure"]);
        metrics.state_store_errors.register(["fallback"]);
        metrics.state_store_errors.register(["rejected"]);
        metrics
    }

    /// One finished request: `weir_requests_total`, durations, TTFT, overhead, tokens, cost.
    pub fn record_request(&self, record: &Record) {
        // The model is the client's text until routing accepted it: only configured names
        // become labels.
        let model = if record.model_configured { record.model.as_str() } else { "" };
        let (backend, variant) = (record.backend.as_str(), record.variant.as_str());
        let status = if record.status == 0 { 499 } else { record.status.clamp(100, 599) };
        let mut digits = [0u8; 3];
        let labels =
            [model, backend, variant, status_label(status, &mut digits), record.cache.as_str(), record.endpoint_str()];
        self.requests.with(labels, Counter::inc);
        self.routes.with([model, backend, variant], |route| {
            route.duration.observe(record.duration.as_secs_f64());
            if record.stream && (200..300).contains(&status) {
                if let Some(first_byte) = record.first_byte {
                    route.ttft.observe(first_byte.as_secs_f64());
                }
            }
            if let Some(usage) = record.usage {
                route.tokens[0].add(usage.prompt_tokens);
                route.tokens[1].add(usage.completion_tokens);
                route.tokens[2].add(usage.cached_tokens);
                route.tokens[3].add(usage.cache_write_tokens);
            }
        });
        if let Some(cost) = record.cost_usd.filter(|c| c.is_finite() && *c > 0.0) {
            self.cost.with([model, backend, variant, record.key.as_str()], |c| c.add((cost * NANO) as u64));
        }
        for (index, attempt) in record.attempts.iter().enumerate() {
            let time = record.backend_time(index);
            self.backend_duration.with([attempt.backend.as_str()], |h| h.observe(time.as_secs_f64()));
        }
        self.overhead.observe(record.weir_time().as_secs_f64());
        if record.outcome == Outcome::Failed && !backend.is_empty() {
            self.backend_error(backend, "midstream");
        }
    }

    /// `weir_backend_errors_total{backend,reason}`: one failed attempt (before retries).
    pub fn backend_error(&self, backend: &str, reason: &'static str) {
        self.backend_errors.with([backend, reason], Counter::inc);
    }

    /// `weir_cache_requests_total{model,result}`.
    pub fn cache_request(&self, model: &str, result: CacheResult) {
        self.cache_requests.with([model, result.as_str()], Counter::inc);
    }

    /// `weir_ratelimit_rejections_total{key,limit}`.
    pub fn ratelimit_rejection(&self, key: &str, limit: &'static str) {
        self.ratelimit_rejections.with([key, limit], Counter::inc);
    }

    /// `weir_state_store_errors_total{outcome=fallback|rejected}`: a limits admission the
    /// shared state store (Redis) could not answer, decided by local counters (`fallback`,
    /// `state.on_error: open`) or refused (`rejected`, `closed`).
    pub fn state_store_error(&self, outcome: &'static str) {
        self.state_store_errors.with([outcome], Counter::inc);
    }

    /// `weir_dataset_records_total{dataset,outcome}`.
    pub fn dataset_record(&self, dataset: &str, written: bool) {
        self.dataset_records(dataset, written, 1);
    }

    /// `weir_dataset_records_total{dataset,result}` by `n` at once (a batch reached the file,
    /// or was lost with it).
    pub fn dataset_records(&self, dataset: &str, written: bool, n: u64) {
        self.dataset_records.with([dataset, if written { "written" } else { "dropped" }], |c| c.add(n));
    }

    /// `weir_config_reloads_total{outcome}`.
    pub fn config_reload(&self, success: bool) {
        self.config_reloads.with([if success { "success" } else { "failure" }], Counter::inc);
    }

    /// `weir_feedback_score{model,variant}` (histogram, 0-1): a client's score of an answer,
    /// by the model and variant that served it.
    pub fn feedback(&self, model: &str, variant: &str, score: f64) {
        self.feedback.with([model, variant], |h| h.observe(score.clamp(0.0, 1.0)));
    }

    /// Pre-registers, at zero, the series a config can produce, so dashboards have series
    /// before traffic; and points `weir_backend_inflight` at the live backends' counters.
    pub fn register_config(&self, config: &Config, inflight: Vec<(String, Arc<AtomicU64>)>) {
        for (name, model) in &config.models {
            let keys: Vec<&str> = match config.auth {
                crate::config::AuthMode::Keys => config
                    .keys
                    .iter()
                    .filter(|k| k.models.as_ref().is_none_or(|m| m.contains(name)))
                    .map(|k| k.name.as_str())
                    .collect(),
                // The name `auth` gives every request without a virtual key.
                _ => vec!["anonymous"],
            };
            let cache = if model.cache_ttl.is_some() { "miss" } else { "bypass" };
            for target in model.targets.iter().chain(&model.fallbacks) {
                let labels = [name.as_str(), target.backend.as_str(), target.variant.as_str()];
                self.routes.register(labels);
                self.requests.register([labels[0], labels[1], labels[2], "200", cache, "chat"]);
                if model.price.is_some() {
                    for key in &keys {
                        self.cost.register([labels[0], labels[1], labels[2], key]);
                    }
                }
                self.feedback.register([name.as_str(), target.variant.as_str()]);
            }
            if model.cache_ttl.is_some() {
                for result in [CacheResult::Hit, CacheResult::Miss, CacheResult::Bypass] {
                    self.cache_requests.register([name.as_str(), result.as_str()]);
                }
            }
        }
        for key in &config.keys {
            let rate = key.rate;
            let limits = [
                ("rpm", rate.rpm.is_some()),
                ("tpm", rate.tpm.is_some()),
                ("concurrent", rate.concurrent.is_some()),
                ("budget", key.budget.is_some()),
            ];
            for (limit, _) in limits.iter().filter(|(_, set)| *set) {
                self.ratelimit_rejections.register([key.name.as_str(), limit]);
            }
        }
        for name in config.backends.keys() {
            self.backend_duration.register([name.as_str()]);
        }
        self.inflight.store(Arc::new(inflight));
    }

    /// Points the `weir_experiment_*` gauges at the live experiments.
    pub fn watch_experiments(&self, experiments: Vec<Arc<Experiment>>) {
        self.experiments.store(Arc::new(experiments));
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        render::render(self)
    }
}

/// The status as decimal text, without allocating.
fn status_label(status: u16, digits: &mut [u8; 3]) -> &str {
    digits[0] = b'0' + (status / 100 % 10) as u8;
    digits[1] = b'0' + (status / 10 % 10) as u8;
    digits[2] = b'0' + (status % 10) as u8;
    std::str::from_utf8(digits).unwrap_or("000")
}

#[cfg(test)]
mod tests;
