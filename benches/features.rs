//! Feature-cost benchmark: what a feature costs in throughput, as a ratio measured in one run.
//!
//! For each scenario, two targets run side by side on the same machine: a **baseline** (a weir
//! with the plain single-target config, or the upstream itself) and a weir with the feature
//! configured. Rounds alternate between them (starting target rotated) so both see the same
//! machine conditions; the figure is `feature req/s ÷ baseline req/s`, per round and merged.
//!
//! ```sh
//! cargo bench --bench features               # every scenario
//! cargo bench --bench features -- split3     # only the named ones
//! ```
//! Knobs: `WEIR_BENCH_DURATION` (s per round, default 3), `WEIR_BENCH_ROUNDS` (3),
//! `WEIR_BENCH_CONNECTIONS` (64), `WEIR_BENCH_WARMUP` (1), `WEIR_BENCH_BASELINE_BIN` (another
//! weir build for the baseline, e.g. one without a feature compiled in). Results also go to
//! `target/bench-results/features.json`.
//!
//! Adding a scenario: one entry in [`scenarios`] — a config body (everything but `server`),
//! the request headers, and the request shape. The upstream and the request are the ones of
//! `benches/load.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark stops at the first broken setup step; it serves no requests"
)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use common::loadgen::{Expect, Load, Samples, cpu_time, round, run_round};
use common::{PUBLIC_MODEL, UPSTREAM_MODEL};

/// What the feature is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Baseline {
    /// weir with the plain single-target config (`common::plain_config`).
    Weir,
    /// The mock upstream itself, no proxy.
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Json,
    Stream,
}

/// What a scenario's config may refer to.
struct Ctx {
    upstream: SocketAddr,
    /// An OTLP/HTTP collector stand-in that accepts every export.
    otlp_sink: SocketAddr,
}

struct Scenario {
    name: &'static str,
    about: &'static str,
    baseline: Baseline,
    shape: Shape,
    /// The feature weir's config body (no `server` section).
    config: fn(&Ctx) -> String,
    /// Headers the load sends to the feature weir (the baseline gets none).
    headers: fn() -> HeaderMap,
    /// Whether the feature's answers are byte-identical to the upstream's (pass-through).
    byte_exact: bool,
}

/// `Authorization: Bearer sk-bench`; configure it with `key_hash("sk-bench")`.
fn bench_key_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer sk-bench"));
    headers
}

fn no_headers() -> HeaderMap {
    HeaderMap::new()
}

/// The plain config with `extra` appended (top-level sections such as `telemetry:`).
fn plain_with(ctx: &Ctx, extra: &str) -> String {
    format!("{}{extra}", common::plain_config(ctx.upstream))
}

/// The scenario table. Each feature adds its own entry.
fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "same",
            about: "noise floor: two identical plain weirs (ratio should be ~1.00)",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| plain_with(ctx, ""),
            headers: no_headers,
            byte_exact: true,
        },
        Scenario {
            name: "proxy",
            about: "plain weir vs the upstream itself (what proxying costs at all)",
            baseline: Baseline::Direct,
            shape: Shape::Json,
            config: |ctx| plain_with(ctx, ""),
            headers: no_headers,
            byte_exact: true,
        },
        Scenario {
            name: "proxy-stream",
            about: "plain weir vs the upstream itself, 20-event streams",
            baseline: Baseline::Direct,
            shape: Shape::Stream,
            config: |ctx| plain_with(ctx, ""),
            headers: no_headers,
            byte_exact: true,
        },
        Scenario {
            name: "keys",
            about: "auth: keys (one virtual key, no limits) vs auth: none",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| {
                format!(
                    "backends:\n  upstream: {{ kind: openai, base_url: http://{}/v1 }}\n\
                     models:\n  {PUBLIC_MODEL}: {{ targets: [ {{ backend: upstream, model: {UPSTREAM_MODEL} }} ] }}\n\
                     keys:\n  - {{ name: bench, key: \"{}\" }}\nauth: {{ mode: keys }}\n",
                    ctx.upstream,
                    key_hash("sk-bench"),
                )
            },
            headers: bench_key_headers,
            byte_exact: true,
        },
        Scenario {
            name: "observability",
            about: "every request traced (OTLP/HTTP to a local sink) + metrics, vs a plain weir \
                    (WEIR_BENCH_BASELINE_BIN: a build without metrics, for both off)",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| {
                let telemetry = format!(
                    "telemetry:\n  otlp: {{ endpoint: http://{}, protocol: http }}\n  sample_ratio: 1.0\n",
                    ctx.otlp_sink
                );
                plain_with(ctx, &telemetry)
            },
            headers: no_headers,
            byte_exact: true,
        },
        Scenario {
            name: "observability-sampled",
            about: "as `observability` with sample_ratio 0.1 (a production setting)",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| {
                let telemetry = format!(
                    "telemetry:\n  otlp: {{ endpoint: http://{}, protocol: http }}\n  sample_ratio: 0.1\n",
                    ctx.otlp_sink
                );
                plain_with(ctx, &telemetry)
            },
            headers: no_headers,
            byte_exact: true,
        },
        Scenario {
            name: "observability-stream",
            about: "as `observability`, 20-event streams",
            baseline: Baseline::Weir,
            shape: Shape::Stream,
            config: |ctx| {
                let telemetry = format!(
                    "telemetry:\n  otlp: {{ endpoint: http://{}, protocol: http }}\n  sample_ratio: 1.0\n",
                    ctx.otlp_sink
                );
                plain_with(ctx, &telemetry)
            },
            headers: no_headers,
            byte_exact: true,
        },
        Scenario {
            name: "dataset",
            about: "a dataset sink recording every request (JSON answers) vs none",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            // Relative: the dataset lands in the bench weir's temporary working directory.
            config: |ctx| plain_with(ctx, "datasets:\n  - { name: all, dir: datasets/all }\n"),
            headers: no_headers,
            byte_exact: true,
        },
        Scenario {
            name: "dataset-stream",
            about: "a dataset sink recording every request (20-event streams, stored assembled) vs none",
            baseline: Baseline::Weir,
            shape: Shape::Stream,
            config: |ctx| plain_with(ctx, "datasets:\n  - { name: all, dir: datasets/all }\n"),
            headers: no_headers,
            byte_exact: true,
        },
    ]
}

/// `sha256:` + hex of `key`, as `weir key hash` prints it.
fn key_hash(key: &str) -> String {
    weir::auth::hash_key(key)
}

#[derive(Debug, Clone)]
struct Params {
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    connections: usize,
    only: Vec<String>,
}

impl Params {
    fn from_env() -> Params {
        // `cargo bench` passes `--bench`; anything else not starting with `-` names a scenario.
        let only = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
        Params {
            duration: common::env_secs("WEIR_BENCH_DURATION", 3.0),
            warmup: common::env_secs("WEIR_BENCH_WARMUP", 1.0),
            rounds: common::env_or("WEIR_BENCH_ROUNDS", 3usize).max(1),
            connections: common::env_or("WEIR_BENCH_CONNECTIONS", 64usize).max(1),
            only,
        }
    }
}

fn main() {
    let params = Params::from_env();
    common::raise_fd_limit();
    weir::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let report = runtime.block_on(async {
        common::install_cleanup();
        run(params).await
    });
    common::write_results("features", &report);
}

async fn run(params: Params) -> Value {
    let bodies = common::plan_bodies(20);
    let upstream = common::start_upstream(common::UpstreamConfig {
        response_json: bodies.response_json.clone(),
        sse_chunks: bodies.sse_chunks.clone(),
        first_gap: Duration::ZERO,
        gap: Duration::ZERO,
    })
    .await;
    let ctx = Ctx { upstream, otlp_sink: common::start_otlp_sink().await };
    let mut results = Vec::new();
    let selected: Vec<Scenario> =
        scenarios().into_iter().filter(|s| params.only.is_empty() || params.only.iter().any(|o| o == s.name)).collect();
    if selected.is_empty() {
        let names: Vec<_> = scenarios().iter().map(|s| s.name).collect();
        panic!("no scenario named {:?}; known: {names:?}", params.only);
    }
    for scenario in &selected {
        results.push(run_scenario(scenario, &ctx, &bodies, &params).await);
    }
    eprintln!();
    eprintln!("{:<16} {:>12} {:>12} {:>8}  about", "scenario", "baseline/s", "feature/s", "ratio");
    for r in &results {
        eprintln!(
            "{:<16} {:>12.0} {:>12.0} {:>8.3}  {}",
            r["scenario"].as_str().unwrap_or(""),
            r["baseline_rps"].as_f64().unwrap_or(0.0),
            r["feature_rps"].as_f64().unwrap_or(0.0),
            r["ratio"].as_f64().unwrap_or(0.0),
            r["about"].as_str().unwrap_or(""),
        );
    }
    json!({
        "connections": params.connections,
        "duration_s": params.duration.as_secs_f64(),
        "rounds": params.rounds,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "scenarios": results,
    })
}

async fn run_scenario(scenario: &Scenario, ctx: &Ctx, bodies: &common::Bodies, params: &Params) -> Value {
    eprintln!("== {}: {}", scenario.name, scenario.about);
    let feature = common::start_weir_with(&(scenario.config)(ctx)).await;
    let baseline_weir = match scenario.baseline {
        Baseline::Weir => Some(common::start_baseline_weir(ctx.upstream).await),
        Baseline::Direct => None,
    };
    let baseline_addr = baseline_weir.as_ref().map_or(ctx.upstream, |w| w.addr);
    let (body, exact_len) = match scenario.shape {
        Shape::Json => (bodies.request_json.clone(), bodies.response_json.len()),
        Shape::Stream => (bodies.request_stream.clone(), bodies.sse_len()),
    };
    let baseline_load = Load::chat(body.clone(), exact_len);
    let feature_load = Load {
        path: common::CHAT_PATH,
        body,
        expect: if scenario.byte_exact { Expect::Bytes(exact_len) } else { Expect::Ok },
        headers: (scenario.headers)(),
    };

    run_round(baseline_addr, &baseline_load, params.connections, params.warmup).await;
    run_round(feature.addr, &feature_load, params.connections, params.warmup).await;

    let mut base = Samples::default();
    let mut feat = Samples::default();
    let mut per_round = Vec::new();
    let feature_pid = feature.process.pid();
    let mut feature_cpu = Duration::ZERO;
    for r in 0..params.rounds {
        let mut round_rps = [0.0f64; 2];
        for i in 0..2 {
            let which = (i + r) % 2;
            if which == 0 {
                let s = run_round(baseline_addr, &baseline_load, params.connections, params.duration).await;
                round_rps[0] = s.rps();
                report_round(scenario.name, r, "baseline", &s);
                base.merge(s);
            } else {
                let before = cpu_time(feature_pid);
                let s = run_round(feature.addr, &feature_load, params.connections, params.duration).await;
                if let (Some(b), Some(a)) = (before, cpu_time(feature_pid)) {
                    feature_cpu += a.saturating_sub(b);
                }
                round_rps[1] = s.rps();
                report_round(scenario.name, r, "feature", &s);
                feat.merge(s);
            }
        }
        per_round.push(round(round_rps[1] / round_rps[0].max(1e-9), 3));
    }
    let ratio = feat.rps() / base.rps().max(1e-9);
    let cpu_us = feature_cpu.as_secs_f64() * 1e6 / (feat.requests.max(1) as f64);
    eprintln!(
        "   ratio {ratio:.3} (rounds {per_round:?}); feature weir CPU {cpu_us:.1} µs/request; errors baseline {} feature {}",
        base.errors, feat.errors
    );
    json!({
        "scenario": scenario.name,
        "about": scenario.about,
        "baseline": match scenario.baseline { Baseline::Weir => "weir", Baseline::Direct => "direct" },
        "baseline_rps": round(base.rps(), 1),
        "feature_rps": round(feat.rps(), 1),
        "ratio": round(ratio, 4),
        "ratio_per_round": per_round,
        "feature_cpu_us_per_request": round(cpu_us, 1),
        "errors": {"baseline": base.errors, "feature": feat.errors},
        "first_error": feat.first_error.or(base.first_error),
    })
}

fn report_round(scenario: &str, r: usize, target: &str, s: &Samples) {
    eprintln!("   {scenario:<14} round {} {target:<9} {:>9.0} req/s  errors {}", r + 1, s.rps(), s.errors);
}
