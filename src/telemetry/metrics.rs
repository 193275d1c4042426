//! Prometheus metrics with the names and labels of SPEC §4.
//!
//! Owns: the process-wide registry (it outlives config snapshots, so counters survive a
//! reload) and its text rendering for `/metrics` on the admin port.
//! Must not: take a label value from raw client input (names come from config), or lock
//! on the hot path.
//!
//! The API below is the seam every module reports through; issue 6 fills in the storage.

use crate::proxy::{Exchange, Outcome};

/// Outcome label of `weir_cache_requests_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Bypass,
}

#[derive(Debug, Default)]
pub struct Metrics {}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {}
    }

    /// One finished request: `weir_requests_total`, durations, TTFT, overhead, tokens, cost.
    pub fn record_exchange(&self, _exchange: &Exchange, _outcome: Outcome) {}

    /// `weir_backend_errors_total{backend,reason}`: one failed attempt (before retries).
    pub fn backend_error(&self, _backend: &str, _reason: &'static str) {}

    /// `weir_cache_requests_total{model,result}`.
    pub fn cache_request(&self, _model: &str, _result: CacheResult) {}

    /// `weir_ratelimit_rejections_total{key,limit}`.
    pub fn ratelimit_rejection(&self, _key: &str, _limit: &'static str) {}

    /// `weir_dataset_records_total{dataset,outcome}`.
    pub fn dataset_record(&self, _dataset: &str, _written: bool) {}

    /// `weir_config_reloads_total{outcome}`.
    pub fn config_reload(&self, _success: bool) {}

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        String::new()
    }
}
