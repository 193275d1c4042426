//! Load benchmark: requests/s and latency of chat completions sent straight to an upstream
//! versus through weir (and nginx, when installed, as a reference), on the same machine in
//! the same run.
//!
//! One process hosts the mock OpenAI upstream and a closed-loop load generator; weir and
//! nginx run as child processes. Rounds alternate between targets so every target sees the
//! same machine conditions. See `benches/README.md` for the knobs and what each number means.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark stops at the first broken setup step; it serves no requests"
)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use common::loadgen::{Load, Samples, cpu_time, round, run_round};
use common::ms;

#[derive(Debug, Clone)]
struct Params {
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    connections: usize,
    latency_duration: Duration,
    latency_connections: usize,
    chunks: usize,
    first_gap: Duration,
    gap: Duration,
    nginx: bool,
    nginx_workers: String,
    modes: Vec<Mode>,
}

impl Params {
    fn from_env() -> Params {
        let modes = match std::env::var("WEIR_BENCH_MODES").as_deref() {
            Ok("json") => vec![Mode::Json],
            Ok("stream") => vec![Mode::Stream],
            _ => vec![Mode::Json, Mode::Stream],
        };
        Params {
            duration: common::env_secs("WEIR_BENCH_DURATION", 3.0),
            warmup: common::env_secs("WEIR_BENCH_WARMUP", 1.0),
            rounds: common::env_or("WEIR_BENCH_ROUNDS", 3usize).max(1),
            connections: common::env_or("WEIR_BENCH_CONNECTIONS", 64usize).max(1),
            latency_duration: common::env_secs("WEIR_BENCH_LATENCY_DURATION", 1.0),
            latency_connections: common::env_or("WEIR_BENCH_LATENCY_CONNECTIONS", 1usize),
            chunks: common::env_or("WEIR_BENCH_CHUNKS", 20usize).max(2),
            first_gap: Duration::from_micros(common::env_or("WEIR_BENCH_FIRST_CHUNK_DELAY_US", 0u64)),
            gap: Duration::from_micros(common::env_or("WEIR_BENCH_CHUNK_GAP_US", 0u64)),
            nginx: common::env_or("WEIR_BENCH_NGINX", 1u8) != 0,
            nginx_workers: std::env::var("WEIR_BENCH_NGINX_WORKERS").unwrap_or_else(|_| "auto".into()),
            modes,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "duration_s": self.duration.as_secs_f64(),
            "warmup_s": self.warmup.as_secs_f64(),
            "rounds": self.rounds,
            "connections": self.connections,
            "latency_duration_s": self.latency_duration.as_secs_f64(),
            "latency_connections": self.latency_connections,
            "chunks_target": self.chunks,
            "first_chunk_delay_us": self.first_gap.as_micros() as u64,
            "chunk_gap_us": self.gap.as_micros() as u64,
            "nginx_workers": self.nginx_workers,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Json,
    Stream,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Json => "chat",
            Mode::Stream => "chat-stream",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Direct,
    Weir,
    /// A second weir build (`WEIR_BENCH_BIN_B`), for an A/B of two builds in one run.
    WeirB,
    Nginx,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Weir => "weir",
            Target::WeirB => "weir-b",
            Target::Nginx => "nginx",
        }
    }
}

struct Targets {
    addrs: Vec<(Target, SocketAddr)>,
}

struct Phase {
    name: &'static str,
    connections: usize,
    duration: Duration,
}

/// Runs `rounds` rounds of every mode over every target, rotating which target goes first.
async fn run_phase(
    phase: &Phase,
    params: &Params,
    targets: &Targets,
    bodies: &common::Bodies,
    weir_pid: u32,
) -> BTreeMap<(Mode, Target), (Samples, Vec<f64>)> {
    let mut results: BTreeMap<(Mode, Target), (Samples, Vec<f64>)> = BTreeMap::new();
    let mut weir_cpu: BTreeMap<Mode, Duration> = BTreeMap::new();
    for &mode in &params.modes {
        let load = match mode {
            Mode::Json => Load::chat(bodies.request_json.clone(), bodies.response_json.len()),
            Mode::Stream => Load::chat(bodies.request_stream.clone(), bodies.sse_len()),
        };
        for r in 0..params.rounds {
            let n = targets.addrs.len();
            for i in 0..n {
                let (target, addr) = targets.addrs[(i + r) % n];
                let cpu_before = cpu_time(weir_pid);
                let samples = run_round(addr, &load, phase.connections, phase.duration).await;
                if target == Target::Weir
                    && let (Some(before), Some(after)) = (cpu_before, cpu_time(weir_pid))
                {
                    *weir_cpu.entry(mode).or_default() += after.saturating_sub(before);
                }
                eprintln!(
                    "  {:<8} {:<12} round {} {:<7} {:>9.0} req/s  errors {}",
                    phase.name,
                    mode.name(),
                    r + 1,
                    target.name(),
                    samples.rps(),
                    samples.errors
                );
                let entry = results.entry((mode, target)).or_default();
                entry.1.push(samples.rps());
                entry.0.merge(samples);
            }
        }
    }
    for (mode, cpu) in weir_cpu {
        if let Some((samples, _)) = results.get(&(mode, Target::Weir))
            && samples.requests > 0
        {
            eprintln!(
                "  {:<8} {:<12} weir CPU {:.1} µs/request",
                phase.name,
                mode.name(),
                cpu.as_secs_f64() * 1e6 / samples.requests as f64
            );
        }
    }
    results
}

fn main() {
    let params = Params::from_env();
    common::raise_fd_limit();
    weir::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let report = runtime.block_on(run(params));
    common::write_results("load.json", &report);
}

async fn run(params: Params) -> Value {
    common::install_cleanup();
    let bodies = common::plan_bodies(params.chunks);
    let upstream = common::start_upstream(common::UpstreamConfig {
        response_json: bodies.response_json.clone(),
        sse_chunks: Arc::clone(&bodies.sse_chunks),
        first_gap: params.first_gap,
        gap: params.gap,
    })
    .await;
    let weir = common::start_weir(upstream).await;
    let weir_pid = weir.process.pid();
    let nginx = if params.nginx { common::start_nginx(upstream, &params.nginx_workers).await } else { None };
    if params.nginx && nginx.is_none() {
        eprintln!("nginx not found; running without the nginx reference (apt-get install -y nginx to add it)");
    }
    let mut addrs = vec![(Target::Direct, upstream), (Target::Weir, weir.addr)];
    let weir_b = match std::env::var("WEIR_BENCH_BIN_B") {
        Ok(binary) => Some(common::start_weir_bin(&common::plain_config(upstream), Some(binary)).await),
        Err(_) => None,
    };
    if let Some(weir_b) = &weir_b {
        addrs.push((Target::WeirB, weir_b.addr));
    }
    if let Some(nginx) = &nginx {
        addrs.push((Target::Nginx, nginx.addr));
    }
    let targets = Targets { addrs };

    println!(
        "weir load bench: {} connections, {} rounds x {:.1} s, request {} B, JSON answer {} B, \
         stream {} chunks / {} B (gap {} µs), {} cpus",
        params.connections,
        params.rounds,
        params.duration.as_secs_f64(),
        bodies.request_json.len(),
        bodies.response_json.len(),
        bodies.sse_chunks.len(),
        bodies.sse_len(),
        params.gap.as_micros(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    // Warm-up: connection pools, allocator arenas, page cache.
    if !params.warmup.is_zero() {
        let warm = Params { rounds: 1, ..params.clone() };
        let phase = Phase { name: "warm-up", connections: params.connections, duration: params.warmup };
        run_phase(&phase, &warm, &targets, &bodies, weir_pid).await;
    }

    let rss_reset = common::reset_peak_rss(weir_pid);
    let phase = Phase { name: "load", connections: params.connections, duration: params.duration };
    let mut load = run_phase(&phase, &params, &targets, &bodies, weir_pid).await;
    let peak_rss = common::proc_status_bytes(weir_pid, "VmHWM");
    let rss_now = common::proc_status_bytes(weir_pid, "VmRSS");

    let mut latency = BTreeMap::new();
    if params.latency_connections > 0 && !params.latency_duration.is_zero() {
        let phase =
            Phase { name: "latency", connections: params.latency_connections, duration: params.latency_duration };
        latency = run_phase(&phase, &params, &targets, &bodies, weir_pid).await;
    }

    let mut report = json!({
        "params": params.to_json(),
        "bodies": {
            "request_bytes": bodies.request_json.len(),
            "response_json_bytes": bodies.response_json.len(),
            "stream_chunks": bodies.sse_chunks.len(),
            "stream_bytes": bodies.sse_len(),
        },
    });
    let load_json = print_phase(
        &format!("{} concurrent connections (throughput)", params.connections),
        &mut load,
        &params,
        &targets,
    );
    report["load"] = load_json;
    if !latency.is_empty() {
        report["latency"] = print_phase(
            &format!("{} connection(s) (latency without queueing)", params.latency_connections),
            &mut latency,
            &params,
            &targets,
        );
    }
    let peak_mib = peak_rss.map(common::mib);
    println!(
        "\nweir RSS under the {}-connection load: peak (VmHWM) {} MiB{}, now {} MiB",
        params.connections,
        peak_mib.map_or("?".into(), |m| format!("{m:.1}")),
        if rss_reset { "" } else { " (peak since start: clear_refs unavailable)" },
        rss_now.map_or("?".into(), |b| format!("{:.1}", common::mib(b))),
    );
    report["weir_rss"] = json!({
        "peak_under_load_mib": peak_mib.map(|m| round(m, 2)),
        "peak_reset_before_load": rss_reset,
        "after_load_mib": rss_now.map(|b| round(common::mib(b), 2)),
    });
    report["targets"] = check_targets(&report, &params);
    drop(nginx);
    drop(weir_b);
    drop(weir);
    report
}

/// Prints one phase's table and returns it as JSON with the weir/direct and nginx/direct
/// ratios and the latency weir (and nginx) add over direct.
fn print_phase(
    title: &str,
    results: &mut BTreeMap<(Mode, Target), (Samples, Vec<f64>)>,
    params: &Params,
    targets: &Targets,
) -> Value {
    println!("\n== {title} ==");
    println!(
        "{:<12} {:<7} {:>10} {:>8} {:>9} {:>9} {:>10} {:>10} {:>7} {:>11}",
        "mode", "target", "req/s", "x direct", "p50 ms", "p99 ms", "ttfb p50", "ttfb p99", "errors", "rounds x"
    );
    let mut out = json!({});
    for &mode in &params.modes {
        let Some(direct) = results.get_mut(&(mode, Target::Direct)).map(|(s, r)| (s.summary(), r.clone())) else {
            continue;
        };
        let mut mode_json = json!({});
        for &(target, _) in &targets.addrs {
            let Some((samples, per_round)) = results.get_mut(&(mode, target)) else { continue };
            let s = samples.summary();
            let ratio = s.rps / direct.0.rps.max(1e-9);
            let round_ratios: Vec<f64> =
                per_round.iter().zip(&direct.1).map(|(t, d)| round(t / d.max(1e-9), 3)).collect();
            println!(
                "{:<12} {:<7} {:>10.0} {:>8.3} {:>9.3} {:>9.3} {:>10.3} {:>10.3} {:>7} {:>11}",
                mode.name(),
                target.name(),
                s.rps,
                ratio,
                ms(s.p50),
                ms(s.p99),
                ms(s.ttfb_p50),
                ms(s.ttfb_p99),
                s.errors,
                round_ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join("/"),
            );
            if let Some(err) = &samples.first_error {
                println!("    first error: {err}");
            }
            let mut t = s.to_json();
            if target != Target::Direct {
                t["ratio_vs_direct"] = json!(round(ratio, 4));
                t["round_ratios"] = json!(round_ratios);
                t["added_p50_ms"] = json!(round(ms(s.p50) - ms(direct.0.p50), 3));
                t["added_p99_ms"] = json!(round(ms(s.p99) - ms(direct.0.p99), 3));
                t["added_ttfb_p50_ms"] = json!(round(ms(s.ttfb_p50) - ms(direct.0.ttfb_p50), 3));
                t["added_ttfb_p99_ms"] = json!(round(ms(s.ttfb_p99) - ms(direct.0.ttfb_p99), 3));
            }
            mode_json[target.name()] = t;
        }
        for &(target, _) in &targets.addrs {
            if target == Target::Direct {
                continue;
            }
            if let Some(t) = mode_json.get(target.name()) {
                println!(
                    "  {} {} adds: p50 {:+.3} ms, p99 {:+.3} ms{}",
                    mode.name(),
                    target.name(),
                    t["added_p50_ms"].as_f64().unwrap_or(f64::NAN),
                    t["added_p99_ms"].as_f64().unwrap_or(f64::NAN),
                    if mode == Mode::Stream {
                        format!(
                            "; first byte p50 {:+.3} ms, p99 {:+.3} ms",
                            t["added_ttfb_p50_ms"].as_f64().unwrap_or(f64::NAN),
                            t["added_ttfb_p99_ms"].as_f64().unwrap_or(f64::NAN)
                        )
                    } else {
                        String::new()
                    }
                );
            }
        }
        out[mode.name()] = mode_json;
    }
    out
}

/// The targets, checked against this run.
fn check_targets(report: &Value, params: &Params) -> Value {
    let get = |path: &str| report.pointer(path).and_then(Value::as_f64);
    let mut checks = serde_json::Map::new();
    let mut check = |name: &str, value: Option<f64>, ok: fn(f64) -> bool, want: &str| {
        let pass = value.map(ok);
        checks.insert(name.into(), json!({"value": value, "target": want, "pass": pass}));
        println!(
            "  {:<44} {:>10} {:<10} {}",
            name,
            value.map_or("-".into(), |v| format!("{v:.3}")),
            want,
            match pass {
                Some(true) => "ok",
                Some(false) => "MISSED",
                None => "not measured",
            }
        );
    };
    println!("\n== targets ==");
    check("chat throughput ratio (weir/direct)", get("/load/chat/weir/ratio_vs_direct"), |v| v >= 0.60, ">= 0.60");
    check(
        "stream throughput ratio (weir/direct)",
        get("/load/chat-stream/weir/ratio_vs_direct"),
        |v| v >= 0.50,
        ">= 0.50",
    );
    check("chat added p99, unloaded (ms)", get("/latency/chat/weir/added_p99_ms"), |v| v < 1.0, "< 1 ms");
    check("stream added p99, unloaded (ms)", get("/latency/chat-stream/weir/added_p99_ms"), |v| v < 1.0, "< 1 ms");
    check(
        "stream added first byte p50, unloaded (ms)",
        get("/latency/chat-stream/weir/added_ttfb_p50_ms"),
        |v| v <= 0.2,
        "<= 0.2 ms",
    );
    check(
        &format!("weir peak RSS under {} connections (MiB)", params.connections),
        get("/weir_rss/peak_under_load_mib"),
        |v| v < 50.0,
        "< 50 MiB",
    );
    Value::Object(checks)
}
