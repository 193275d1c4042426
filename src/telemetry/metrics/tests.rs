//! The text exposition: names, labels, cumulative buckets, pre-registered series.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use super::{CacheResult, Metrics};
use crate::wire::{Attempt, AttemptKind, CacheStatus, Outcome, Record, Usage};

const CONFIG: &str = r#"
backends:
  mock: { kind: mock }
models:
  chat:
    targets: [ { backend: mock, model: m1, variant: control } ]
    cache: { ttl: 1m }
    price: { input_per_mtok: 1.0, output_per_mtok: 2.0 }
keys:
  - name: team
    key: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    rate: { rpm: 10 }
auth: { mode: keys }
"#;

/// Metrics with the series of `CONFIG` registered, as a snapshot build does.
fn configured() -> Metrics {
    let config = crate::config::load_str(CONFIG, "t.yaml", &|_| None).expect("valid config");
    let metrics = Metrics::new();
    metrics.register_config(&config, vec![("mock".into(), Arc::new(AtomicU64::new(0)))]);
    metrics
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

fn has(text: &str, line: &str) {
    assert!(lines(text).contains(&line), "missing `{line}` in:\n{text}");
}

#[test]
fn a_finished_stream_is_counted_timed_and_priced() {
    let metrics = Metrics::new();
    let mut exchange = Record::new("req_1".into(), Instant::now());
    exchange.model = "chat".into();
    exchange.model_configured = true;
    exchange.backend = "mock".into();
    exchange.variant = "control".into();
    exchange.key = "team".into();
    exchange.stream = true;
    exchange.status = 200;
    exchange.cache = CacheStatus::Miss;
    exchange.duration = Duration::from_millis(300);
    exchange.first_byte = Some(Duration::from_millis(40));
    exchange.weir_time = Some(Duration::from_micros(30));
    exchange.usage = Some(Usage { prompt_tokens: 10, completion_tokens: 5, cached_tokens: 4, cache_write_tokens: 0 });
    exchange.cost_usd = Some(0.00002);
    exchange.attempts.push(Attempt {
        kind: AttemptKind::Primary,
        backend: "mock".into(),
        provider: "weir.mock",
        model: "m1".into(),
        variant: "control".into(),
        offset: Duration::from_millis(1),
        duration: Duration::from_millis(35),
        status: Some(200),
        error: None,
    });
    exchange.outcome = Outcome::Completed;
    metrics.record_request(&exchange);
    let text = metrics.render();

    has(
        &text,
        r#"weir_requests_total{model="chat",backend="mock",variant="control",status="200",cache="miss",endpoint=""} 1"#,
    );
    let route = r#"model="chat",backend="mock",variant="control""#;
    has(&text, &format!(r#"weir_request_duration_seconds_bucket{{{route},le="0.25"}} 0"#));
    has(&text, &format!(r#"weir_request_duration_seconds_bucket{{{route},le="0.5"}} 1"#));
    has(&text, &format!(r#"weir_request_duration_seconds_bucket{{{route},le="+Inf"}} 1"#));
    has(&text, &format!(r#"weir_request_duration_seconds_sum{{{route}}} 0.3"#));
    has(&text, &format!(r#"weir_request_duration_seconds_count{{{route}}} 1"#));
    has(&text, &format!(r#"weir_time_to_first_token_seconds_bucket{{{route},le="0.05"}} 1"#));
    has(&text, &format!(r#"weir_tokens_total{{{route},kind="input"}} 10"#));
    has(&text, &format!(r#"weir_tokens_total{{{route},kind="output"}} 5"#));
    has(&text, &format!(r#"weir_tokens_total{{{route},kind="cached"}} 4"#));
    has(&text, &format!(r#"weir_cost_usd_total{{{route},key="team"}} 0.00002"#));
    // The answering attempt's backend time runs to the end of the body.
    has(&text, r#"weir_backend_duration_seconds_bucket{backend="mock",le="0.25"} 0"#);
    has(&text, r#"weir_backend_duration_seconds_bucket{backend="mock",le="0.5"} 1"#);
    has(&text, r#"weir_overhead_seconds_bucket{le="0.000025"} 0"#);
    has(&text, r#"weir_overhead_seconds_bucket{le="0.00005"} 1"#);
    has(&text, r#"weir_overhead_seconds_count 1"#);
    assert!(text.contains("# TYPE weir_request_duration_seconds histogram\n"));
    assert!(text.contains("# TYPE weir_backend_inflight gauge\n"));
}

#[test]
fn config_series_exist_at_zero_before_traffic() {
    let text = configured().render();
    has(
        &text,
        r#"weir_requests_total{model="chat",backend="mock",variant="control",status="200",cache="miss",endpoint="chat"} 0"#,
    );
    has(&text, r#"weir_cost_usd_total{model="chat",backend="mock",variant="control",key="team"} 0"#);
    has(&text, r#"weir_cache_requests_total{model="chat",result="hit"} 0"#);
    has(&text, r#"weir_ratelimit_rejections_total{key="team",limit="rpm"} 0"#);
    has(&text, r#"weir_backend_inflight{backend="mock"} 0"#);
    has(&text, r#"weir_config_reloads_total{outcome="success"} 0"#);
    has(&text, r#"weir_state_store_errors_total{outcome="fallback"} 0"#);
    has(&text, r#"weir_feedback_score_count{model="chat",variant="control"} 0"#);
}

#[test]
fn unknown_models_and_early_errors_take_no_client_text() {
    let metrics = Metrics::new();
    let mut exchange = Record::new("req_2".into(), Instant::now());
    exchange.model = "made-up\"model".into();
    exchange.status = 404;
    metrics.record_request(&exchange);
    let mut gone = Record::new("req_3".into(), Instant::now());
    gone.model = "chat".into();
    gone.model_configured = true;
    gone.outcome = Outcome::ClientGone;
    metrics.record_request(&gone);
    let text = metrics.render();
    has(&text, r#"weir_requests_total{model="",backend="",variant="",status="404",cache="bypass",endpoint=""} 1"#);
    has(&text, r#"weir_requests_total{model="chat",backend="",variant="",status="499",cache="bypass",endpoint=""} 1"#);
    assert!(!text.contains("made-up"), "{text}");
}

#[test]
fn counters_of_the_other_taps() {
    let metrics = Metrics::new();
    metrics.backend_error("up", "connect");
    metrics.backend_error("up", "connect");
    metrics.cache_request("chat", CacheResult::Hit);
    metrics.ratelimit_rejection("team", "rpm");
    metrics.dataset_record("all", true);
    metrics.dataset_record("all", false);
    metrics.config_reload(false);
    metrics.feedback("chat", "control", 0.75);
    let text = metrics.render();
    has(&text, r#"weir_backend_errors_total{backend="up",reason="connect"} 2"#);
    has(&text, r#"weir_cache_requests_total{model="chat",result="hit"} 1"#);
    has(&text, r#"weir_ratelimit_rejections_total{key="team",limit="rpm"} 1"#);
    has(&text, r#"weir_dataset_records_total{dataset="all",outcome="written"} 1"#);
    has(&text, r#"weir_dataset_records_total{dataset="all",outcome="dropped"} 1"#);
    has(&text, r#"weir_config_reloads_total{outcome="failure"} 1"#);
    has(&text, r#"weir_config_reloads_total{outcome="success"} 0"#);
    has(&text, r#"weir_feedback_score_sum{model="chat",variant="control"} 0.75"#);
}

#[test]
fn label_values_are_escaped() {
    let metrics = Metrics::new();
    metrics.backend_error("a\"b\\c\nd", "connect");
    has(&metrics.render(), r#"weir_backend_errors_total{backend="a\"b\\c\nd",reason="connect"} 1"#);
}
