//! What a weir recorded of the requests sent to it, checked against what was sent: dataset
//! records (its `weir_dataset_records_total` on `/metrics`) and traces (server spans received
//! by the bench's OTLP sink). "No request is silently dropped from metrics or datasets", and
//! every sampled request becomes a trace: a feature that is fast because it loses records
//! must not pass for fast.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::loadgen::round;
use super::{OtlpSink, SpanTally, Weir, metric_sum};

/// Dataset records written for `sent` requests.
#[derive(Debug, Clone)]
pub struct DatasetCount {
    pub dataset: String,
    /// Requests the load generator sent to the weir (warm-up and errors included).
    pub sent: u64,
    pub written: u64,
    pub dropped: u64,
    /// Requests the weir itself counted (`weir_requests_total`, all labels).
    pub weir_requests: u64,
    /// Its cache lookups that hit and missed (`weir_cache_requests_total`): with unique
    /// bodies, every lookup must miss.
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub error: Option<String>,
}

impl DatasetCount {
    pub fn matches(&self) -> bool {
        self.error.is_none() && self.written == self.sent && self.dropped == 0
    }

    pub fn line(&self) -> String {
        format!(
            "dataset `{}`: {} records written, {} dropped, for {} requests sent (weir counted {}; cache {} hits, {} misses): {}",
            self.dataset,
            self.written,
            self.dropped,
            self.sent,
            self.weir_requests,
            self.cache_hits,
            self.cache_misses,
            match (&self.error, self.matches()) {
                (Some(err), _) => format!("NOT COUNTED ({err})"),
                (None, true) => "ok".into(),
                (None, false) => "MISMATCH".into(),
            }
        )
    }

    pub fn to_json(&self) -> Value {
        json!({"dataset": self.dataset, "requests_sent": self.sent, "written": self.written,
               "dropped": self.dropped, "weir_requests_total": self.weir_requests,
               "cache_hits": self.cache_hits, "cache_misses": self.cache_misses,
               "match": self.matches(), "error": self.error})
    }
}

/// Reads `dataset`'s record counts from `weir`'s `/metrics` once its writer has caught up: a
/// batch reaches the file (and the metric) within 100 ms, so the count is final when every
/// request is accounted for or it has not moved for a second.
pub async fn count_dataset(weir: &Weir, dataset: &str, sent: u64) -> DatasetCount {
    let started = Instant::now();
    let mut count = DatasetCount {
        dataset: dataset.into(),
        sent,
        written: 0,
        dropped: 0,
        weir_requests: 0,
        cache_hits: 0,
        cache_misses: 0,
        error: None,
    };
    let mut since = Instant::now();
    loop {
        match weir.metrics().await {
            Ok(text) => {
                let outcome =
                    |o| metric_sum(&text, "weir_dataset_records_total", &[("dataset", dataset), ("outcome", o)]);
                let (written, dropped) = (outcome("written") as u64, outcome("dropped") as u64);
                if (written, dropped) != (count.written, count.dropped) {
                    since = Instant::now();
                }
                (count.written, count.dropped) = (written, dropped);
                count.weir_requests = metric_sum(&text, "weir_requests_total", &[]) as u64;
                let cache = |r| metric_sum(&text, "weir_cache_requests_total", &[("result", r)]) as u64;
                (count.cache_hits, count.cache_misses) = (cache("hit"), cache("miss"));
                count.error = None;
            }
            Err(err) => count.error = Some(err.to_string()),
        }
        let settled = count.written + count.dropped >= sent || since.elapsed() >= Duration::from_secs(1);
        if (settled && count.error.is_none()) || started.elapsed() >= Duration::from_secs(15) {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Traces received for `sent` requests sampled at `sample_ratio`.
#[derive(Debug, Clone, Copy)]
pub struct TraceCount {
    pub sent: u64,
    pub sample_ratio: f64,
    pub received: SpanTally,
}

impl TraceCount {
    /// Server spans per request sent: the share of requests traced.
    pub fn ratio(&self) -> f64 {
        self.received.server_spans as f64 / self.sent.max(1) as f64
    }

    /// How far [`TraceCount::ratio`] may be from the sample ratio: 0 when every request is
    /// traced, else four standard deviations of the binomial share plus a little slack.
    pub fn tolerance(&self) -> f64 {
        let p = self.sample_ratio;
        if p >= 1.0 { 0.0 } else { 4.0 * (p * (1.0 - p) / self.sent.max(1) as f64).sqrt() + 0.002 }
    }

    pub fn matches(&self) -> bool {
        let exact = self.sample_ratio >= 1.0;
        let counted = if exact {
            self.received.server_spans == self.sent
        } else {
            (self.ratio() - self.sample_ratio).abs() <= self.tolerance()
        };
        counted && self.received.undecodable == 0
    }

    pub fn line(&self) -> String {
        format!(
            "traces: {} server spans ({} spans in {} exports{}) for {} requests sent = {:.4} (sample_ratio {}{}): {}",
            self.received.server_spans,
            self.received.spans,
            self.received.exports,
            if self.received.undecodable > 0 {
                format!(", {} UNDECODABLE", self.received.undecodable)
            } else {
                String::new()
            },
            self.sent,
            self.ratio(),
            self.sample_ratio,
            if self.sample_ratio >= 1.0 { ", exact".to_owned() } else { format!(" ± {:.4}", self.tolerance()) },
            if self.matches() { "ok" } else { "MISMATCH" }
        )
    }

    pub fn to_json(self) -> Value {
        json!({"requests_sent": self.sent, "sample_ratio": self.sample_ratio,
               "server_spans": self.received.server_spans, "spans": self.received.spans,
               "exports": self.received.exports, "undecodable_exports": self.received.undecodable,
               "traced_ratio": round(self.ratio(), 5), "tolerance": round(self.tolerance(), 5),
               "match": self.matches()})
    }
}

/// The traces `sink` received since `before`, once exports have stopped (weir sends a
/// partial batch at most a second after its last span).
pub async fn count_traces(sink: &OtlpSink, before: SpanTally, sent: u64, sample_ratio: f64) -> TraceCount {
    let enough = (sample_ratio >= 1.0).then_some(before.server_spans + sent);
    let now = sink.settled(enough, Duration::from_secs(2), Duration::from_secs(20)).await;
    TraceCount { sent, sample_ratio, received: now - before }
}
