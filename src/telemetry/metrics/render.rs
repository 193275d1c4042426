//! The Prometheus text exposition format (0.0.4) of the registry.
//!
//! Owns: names, help lines, label escaping and number formatting of `/metrics`.
//! Must not: change any value (it only reads atomics).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::family::{Counter, Family, Histogram};
use super::{Metrics, NANO, TOKEN_KINDS};

pub fn render(m: &Metrics) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let routes = m.routes.snapshot();

    header(&mut out, "weir_requests_total", "counter", "Requests answered, by the HTTP status sent to the client.");
    let labels = ["model", "backend", "variant", "status", "cache", "endpoint"];
    counters(&mut out, "weir_requests_total", &labels, &m.requests, 1.0);

    header(&mut out, "weir_request_duration_seconds", "histogram", "Time from request arrival to the last byte sent.");
    for series in &routes {
        histogram(&mut out, "weir_request_duration_seconds", &ROUTE_LABELS, &series.labels, &series.metric.duration);
    }
    header(
        &mut out,
        "weir_time_to_first_token_seconds",
        "histogram",
        "Time to the first streamed chunk (streams only).",
    );
    for series in &routes {
        histogram(&mut out, "weir_time_to_first_token_seconds", &ROUTE_LABELS, &series.labels, &series.metric.ttft);
    }
    header(&mut out, "weir_backend_duration_seconds", "histogram", "Time the backend took, per upstream attempt.");
    for series in m.backend_duration.snapshot() {
        histogram(&mut out, "weir_backend_duration_seconds", &["backend"], &series.labels, &series.metric);
    }
    header(&mut out, "weir_overhead_seconds", "histogram", "Time spent in weir itself: total minus backend time.");
    histogram(&mut out, "weir_overhead_seconds", &[], &[], &m.overhead);

    header(&mut out, "weir_tokens_total", "counter", "Tokens as the backend reported them (cached is part of input).");
    for series in &routes {
        for (kind, counter) in TOKEN_KINDS.iter().zip(&series.metric.tokens) {
            let mut labels = labels_text(&ROUTE_LABELS, &series.labels);
            push_label(&mut labels, "kind", kind);
            sample(&mut out, "weir_tokens_total", &labels, counter.get() as f64);
        }
    }
    header(&mut out, "weir_cost_usd_total", "counter", "Spend in USD at the model's configured price.");
    counters(&mut out, "weir_cost_usd_total", &["model", "backend", "variant", "key"], &m.cost, NANO);
    header(&mut out, "weir_cache_requests_total", "counter", "Response cache lookups by result.");
    counters(&mut out, "weir_cache_requests_total", &["model", "result"], &m.cache_requests, 1.0);
    header(&mut out, "weir_ratelimit_rejections_total", "counter", "Requests refused by a key's rate or budget limit.");
    counters(&mut out, "weir_ratelimit_rejections_total", &["key", "limit"], &m.ratelimit_rejections, 1.0);

    header(&mut out, "weir_backend_inflight", "gauge", "Upstream requests in flight, bodies included.");
    for (backend, count) in m.inflight.load().iter() {
        let labels = labels_text(&["backend"], std::slice::from_ref(backend));
        sample(&mut out, "weir_backend_inflight", &labels, count.load(Ordering::Relaxed) as f64);
    }
    header(&mut out, "weir_backend_errors_total", "counter", "Failed upstream attempts (before retries), by reason.");
    counters(&mut out, "weir_backend_errors_total", &["backend", "reason"], &m.backend_errors, 1.0);
    header(&mut out, "weir_dataset_records_total", "counter", "Dataset records written or dropped (queue full).");
    counters(&mut out, "weir_dataset_records_total", &["dataset", "outcome"], &m.dataset_records, 1.0);
    header(&mut out, "weir_config_reloads_total", "counter", "Config reloads by outcome.");
    counters(&mut out, "weir_config_reloads_total", &["outcome"], &m.config_reloads, 1.0);
    header(
        &mut out,
        "weir_state_store_errors_total",
        "counter",
        "Limit admissions the shared state store could not answer, by what weir did instead.",
    );
    counters(&mut out, "weir_state_store_errors_total", &["outcome"], &m.state_store_errors, 1.0);
    header(
        &mut out,
        "weir_feedback_score",
        "histogram",
        "Feedback scores (0-1) by the model and variant that answered.",
    );
    for series in m.feedback.snapshot() {
        histogram(&mut out, "weir_feedback_score", &["model", "variant"], &series.labels, &series.metric);
    }
    experiments(&mut out, m);
    out
}

/// `weir_experiment_*`: each live experiment's arms as its last refresh saw them.
fn experiments(out: &mut String, m: &Metrics) {
    let experiments = m.experiments.load();
    let arms = || {
        experiments.iter().filter_map(|e| e.view().map(|v| (Arc::clone(e), v))).flat_map(|(e, view)| {
            (0..view.arms.len()).map(move |i| {
                let labels =
                    labels_text(&["experiment", "variant"], &[e.config.name.clone(), view.arms[i].variant.clone()]);
                (labels, view.arms[i].clone())
            })
        })
    };
    header(
        out,
        "weir_experiment_share",
        "gauge",
        "Share of an experiment's traffic each arm gets now (thompson or promoted).",
    );
    for (labels, arm) in arms() {
        if let Some(share) = arm.share {
            sample(out, "weir_experiment_share", &labels, share);
        }
    }
    header(out, "weir_experiment_samples", "gauge", "Observations of the experiment's metric per arm.");
    for (labels, arm) in arms() {
        sample(out, "weir_experiment_samples", &labels, arm.samples as f64);
    }
    header(out, "weir_experiment_mean", "gauge", "Mean of the experiment's metric per arm.");
    for (labels, arm) in arms() {
        if let Some(mean) = arm.mean {
            sample(out, "weir_experiment_mean", &labels, mean);
        }
    }
    header(out, "weir_experiment_decision", "gauge", "1 for each arm's current decision against the control.");
    for (mut labels, arm) in arms() {
        if let Some(decision) = arm.decision {
            push_label(&mut labels, "decision", decision.as_str());
            sample(out, "weir_experiment_decision", &labels, 1.0);
        }
    }
    header(out, "weir_experiment_promotions_total", "counter", "Arms promoted to all traffic by a decided experiment.");
    for e in experiments.iter() {
        let labels = labels_text(&["experiment"], std::slice::from_ref(&e.config.name));
        sample(out, "weir_experiment_promotions_total", &labels, e.promotions() as f64);
    }
}

const ROUTE_LABELS: [&str; 3] = ["model", "backend", "variant"];

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Counters of a family; `divisor` turns nano-units back into units.
fn counters<const N: usize>(out: &mut String, name: &str, names: &[&str], family: &Family<Counter, N>, divisor: f64) {
    for series in family.snapshot() {
        let labels = labels_text(names, &series.labels);
        sample(out, name, &labels, series.metric.get() as f64 / divisor);
    }
}

fn histogram(out: &mut String, name: &str, names: &[&str], values: &[String], h: &Histogram) {
    let labels = labels_text(names, values);
    let counts = h.cumulative();
    for (bound, count) in h.bounds().iter().zip(&counts) {
        let mut with_le = labels.clone();
        push_label(&mut with_le, "le", &number(*bound));
        sample(out, &format!("{name}_bucket"), &with_le, *count as f64);
    }
    let total = counts.last().copied().unwrap_or(0);
    let mut with_le = labels.clone();
    push_label(&mut with_le, "le", "+Inf");
    sample(out, &format!("{name}_bucket"), &with_le, total as f64);
    sample(out, &format!("{name}_sum"), &labels, h.sum());
    sample(out, &format!("{name}_count"), &labels, total as f64);
}

/// `a="x",b="y"` (without braces), values escaped.
fn labels_text(names: &[&str], values: &[String]) -> String {
    let mut text = String::new();
    for (name, value) in names.iter().zip(values) {
        push_label(&mut text, name, value);
    }
    text
}

fn push_label(text: &mut String, name: &str, value: &str) {
    if !text.is_empty() {
        text.push(',');
    }
    text.push_str(name);
    text.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => text.push_str("\\\\"),
            '"' => text.push_str("\\\""),
            '\n' => text.push_str("\\n"),
            c => text.push(c),
        }
    }
    text.push('"');
}

fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {}", number(value));
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {}", number(value));
    }
}

/// Integers without a fraction, other values in Rust's shortest round-trip form (never an
/// exponent, which Prometheus would accept but humans read badly).
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 { format!("{}", value as i64) } else { format!("{value}") }
}
